package gateway

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
)

// tokenVerifier checks a compact JWS bearer token for the one algorithm the
// configuration pins and reads the registered claims flashgate uses, without
// reflection, encoding/json or allocation (the subject's string aside).
//
// It accepts exactly what golang-jwt/jwt/v5 (v5.3.1) accepts through the
// parser newVerifier used to build — jwt.WithValidMethods([alg]),
// WithExpirationRequired, WithLeeway, WithTimeFunc, and WithIssuer /
// WithAudience when configured — with the same subject and expiry; jwt/v5
// stays in the tests as the oracle (FuzzVerifyTokenMatchesJWT). What that
// means, byte by byte:
//
//	token    = header "." payload "." signature      exactly two dots
//	segment  = base64url without padding, as base64.RawURLEncoding decodes
//	           it (CR and LF ignored; "=" refused; loose trailing bits)
//	header   = one JSON object (encoding/json's grammar, surrounding
//	           whitespace allowed); its last member named exactly "alg" is
//	           the string of the pinned algorithm; other members any JSON
//	           whose numbers fit a float64 (it is decoded into a map[string]any)
//	signature = HMAC-SHA256 of header "." payload (raw bytes) with the
//	           secret, compared in constant time (hmac.Equal); or Ed25519
//	           (ed25519.Verify) over the same bytes
//	payload  = one JSON object; member names are matched to the registered
//	           claims as encoding/json matches struct fields — exact or
//	           case-insensitively under Unicode simple folding ("SUB",
//	           "\u017fub") — and the last occurrence wins:
//	  sub, iss, jti   a string, or null (changes nothing)
//	  aud             a string, an array of strings, or null (nothing)
//	  exp, nbf, iat   a number, a string holding a JSON number, or null
//	                  (unset); seconds as float64, Modf'd into a time and
//	                  truncated to jwt.TimePrecision
//	  others          any JSON
//	  any other type for these is refused (encoding/json's type error)
//	checks   = exp set and now < exp + leeway; if nbf set, now ≥ nbf − leeway
//	           (iat is not checked); iss equal to auth.issuer and aud (one of
//	           them) equal to auth.audience when configured
//
// Strings are compared after decoding as encoding/json decodes them: escapes,
// surrogate pairs, and U+FFFD for invalid UTF-8 and lone surrogates. The
// subject must then be 1..128 printable ASCII characters (validUserID).
//
// The signature is checked before the JSON is read (jwt/v5 reads first):
// the answer is the same, and unauthenticated bytes cost one MAC, no parse.
// (A payload of JSON null is refused by both: jwt/v5 decodes it into empty
// claims, which lack exp.)
//
// Safe for concurrent use: the only shared state is the pool of MACs.
type tokenVerifier struct {
	alg      string // "HS256" | "EdDSA"
	edKey    ed25519.PublicKey
	macs     sync.Pool // *tokenMAC, keyed with the HS256 secret
	issuer   string
	audience string
	leeway   time.Duration
}

// tokenMAC is a keyed HMAC-SHA256 with room for its sum, reused through
// tokenVerifier.macs (hmac.New costs allocations per call; Reset does not).
type tokenMAC struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// tokenDecodedLenMax bounds the decoded bytes of a token's three segments
// together: base64 turns 4 characters into at most 3 bytes.
const tokenDecodedLenMax = tokenLenMax / 4 * 3

var (
	errTokenMalformed = errors.New("token is malformed")
	errTokenSignature = errors.New("token signature is invalid")
	errTokenAlg       = errors.New("token signing method is not the configured one")
	errTokenNoExp     = errors.New("token has no exp")
	errTokenExpired   = errors.New("token is expired")
	errTokenNotYet    = errors.New("token is not valid yet")
	errTokenIssuer    = errors.New("token issuer is not accepted")
	errTokenAudience  = errors.New("token audience is not accepted")
)

func newHS256Verifier(secret []byte) *tokenVerifier {
	v := &tokenVerifier{alg: "HS256"}
	key := bytes.Clone(secret)
	v.macs.New = func() any { return &tokenMAC{h: hmac.New(sha256.New, key)} }
	return v
}

func newEdDSAVerifier(pk ed25519.PublicKey) *tokenVerifier {
	return &tokenVerifier{alg: "EdDSA", edKey: pk}
}

// verify checks raw (the token, without "Bearer ") at now and returns its
// subject and expiry.
func (v *tokenVerifier) verify(raw []byte, now time.Time) (string, time.Time, error) {
	var buf [tokenDecodedLenMax]byte
	if len(raw) > tokenLenMax {
		return "", time.Time{}, errTokenTooLong
	}
	dot1 := bytes.IndexByte(raw, '.')
	if dot1 < 0 {
		return "", time.Time{}, errTokenMalformed
	}
	dot2 := bytes.IndexByte(raw[dot1+1:], '.')
	if dot2 < 0 {
		return "", time.Time{}, errTokenMalformed
	}
	dot2 += dot1 + 1
	if bytes.IndexByte(raw[dot2+1:], '.') >= 0 {
		return "", time.Time{}, errTokenMalformed
	}
	header, rest, ok := decodeSegment(buf[:], raw[:dot1])
	if !ok {
		return "", time.Time{}, errTokenMalformed
	}
	payload, rest, ok := decodeSegment(rest, raw[dot1+1:dot2])
	if !ok {
		return "", time.Time{}, errTokenMalformed
	}
	sig, _, ok := decodeSegment(rest, raw[dot2+1:])
	if !ok {
		return "", time.Time{}, errTokenMalformed
	}
	if !v.signed(raw[:dot2], sig) {
		return "", time.Time{}, errTokenSignature
	}
	alg, ok := headerAlgIs(header, v.alg)
	if !ok {
		return "", time.Time{}, errTokenMalformed
	}
	if !alg {
		return "", time.Time{}, errTokenAlg
	}
	var c tokenClaims
	if !c.parse(payload, v.issuer, v.audience) {
		return "", time.Time{}, errTokenMalformed
	}
	switch {
	case !c.expSet:
		return "", time.Time{}, errTokenNoExp
	case !now.Before(c.exp.Add(v.leeway)):
		return "", time.Time{}, errTokenExpired
	case c.nbfSet && now.Before(c.nbf.Add(-v.leeway)):
		return "", time.Time{}, errTokenNotYet
	case v.issuer != "" && !c.issMatch:
		return "", time.Time{}, errTokenIssuer
	case v.audience != "" && !c.audMatch:
		return "", time.Time{}, errTokenAudience
	case !c.subOK || !printableTokenBytes(c.sub[:c.subLen], userIDLenMax):
		return "", time.Time{}, errBadSubject
	}
	return string(c.sub[:c.subLen]), c.exp, nil
}

// decodeSegment decodes one base64url segment into the front of dst and
// returns it and the rest of dst.
func decodeSegment(dst, seg []byte) (out, rest []byte, ok bool) {
	if base64.RawURLEncoding.DecodedLen(len(seg)) > len(dst) {
		return nil, nil, false // cannot happen within tokenLenMax
	}
	n, err := base64.RawURLEncoding.Decode(dst, seg)
	if err != nil {
		return nil, nil, false
	}
	return dst[:n], dst[n:], true
}

// signed verifies sig over signing (header "." payload, as sent).
func (v *tokenVerifier) signed(signing, sig []byte) bool {
	if v.edKey != nil {
		return ed25519.Verify(v.edKey, signing, sig)
	}
	m := v.macs.Get().(*tokenMAC)
	m.h.Write(signing)
	ok := hmac.Equal(sig, m.h.Sum(m.sum[:0]))
	m.h.Reset()
	v.macs.Put(m)
	return ok
}

// headerAlgIs parses a JOSE header: ok is false unless it is one JSON
// object that encoding/json decodes into a map[string]any; alg reports
// whether its last "alg" member is the string want.
func headerAlgIs(b []byte, want string) (alg, ok bool) {
	s := jsonScan{b: b, floats: true}
	s.ws()
	if !s.byte('{') {
		return false, false
	}
	s.ws()
	if s.byte('}') {
		return false, s.end()
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false, false
		}
		s.ws()
		if !s.byte(':') {
			return false, false
		}
		s.ws()
		switch {
		case jsonStringEquals(key, "alg") && s.at('"'):
			v, ok := s.str()
			if !ok {
				return false, false
			}
			alg = jsonStringEquals(v, want)
		case jsonStringEquals(key, "alg"):
			alg = false // not a string: refused by jwt/v5's alg lookup
			if !s.value(0) {
				return false, false
			}
		default:
			if !s.value(0) {
				return false, false
			}
		}
		s.ws()
		if s.byte('}') {
			return alg, s.end()
		}
		if !s.byte(',') {
			return false, false
		}
	}
}

// tokenClaims is what the payload says about the claims flashgate checks.
type tokenClaims struct {
	sub      [userIDLenMax]byte
	subLen   int
	subOK    bool // the last sub decoded to at most userIDLenMax bytes
	issMatch bool // the last iss equals the configured issuer
	audMatch bool // the last aud is, or lists, the configured audience
	expSet   bool
	nbfSet   bool
	exp, nbf time.Time
}

// The registered claims RegisteredClaims decodes, folded as encoding/json
// folds names for matching (ASCII upper case).
const (
	claimNone = iota
	claimSub
	claimIss
	claimAud
	claimExp
	claimNbf
	claimIat
	claimJti
)

var claimNames = [...]string{claimSub: "SUB", claimIss: "ISS", claimAud: "AUD", claimExp: "EXP", claimNbf: "NBF", claimIat: "IAT", claimJti: "JTI"}

// parse reads a JWT payload; false means jwt/v5 would refuse it as malformed
// (bad JSON, not an object, a registered claim of the wrong type).
func (c *tokenClaims) parse(b []byte, issuer, audience string) bool {
	s := jsonScan{b: b}
	s.ws()
	if !s.byte('{') {
		return false
	}
	s.ws()
	if s.byte('}') {
		return s.end()
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.byte(':') {
			return false
		}
		s.ws()
		if !c.member(&s, claimOf(key), issuer, audience) {
			return false
		}
		s.ws()
		if s.byte('}') {
			return s.end()
		}
		if !s.byte(',') {
			return false
		}
	}
}

// member reads one member's value at s.
func (c *tokenClaims) member(s *jsonScan, claim int, issuer, audience string) bool {
	if claim == claimNone {
		return s.value(0)
	}
	if s.literal("null") {
		switch claim {
		case claimExp:
			c.expSet = false
		case claimNbf:
			c.nbfSet = false
		} // a string or aud left as it was, as encoding/json does
		return true
	}
	switch claim {
	case claimSub, claimIss, claimJti:
		v, ok := s.str()
		if !ok {
			return false
		}
		switch claim {
		case claimSub:
			c.subLen, c.subOK = jsonStringDecode(v, c.sub[:])
		case claimIss:
			c.issMatch = jsonStringEquals(v, issuer)
		}
		return true
	case claimAud:
		return c.aud(s, audience)
	default: // exp, nbf, iat
		t, ok := numericDate(s)
		if !ok {
			return false
		}
		switch claim {
		case claimExp:
			c.exp, c.expSet = t, true
		case claimNbf:
			c.nbf, c.nbfSet = t, true
		}
		return true
	}
}

// aud reads a string or an array of strings (jwt.ClaimStrings).
func (c *tokenClaims) aud(s *jsonScan, audience string) bool {
	if s.at('"') {
		v, ok := s.str()
		c.audMatch = ok && jsonStringEquals(v, audience)
		return ok
	}
	if !s.byte('[') {
		return false
	}
	match := false
	s.ws()
	if !s.byte(']') {
		for {
			s.ws()
			v, ok := s.str()
			if !ok {
				return false
			}
			match = match || jsonStringEquals(v, audience)
			s.ws()
			if s.byte(']') {
				break
			}
			if !s.byte(',') {
				return false
			}
		}
	}
	c.audMatch = match
	return true
}

// numericDate reads a jwt.NumericDate: a number, or a string holding one,
// parsed as a float64 of seconds and converted exactly as jwt/v5 does.
func numericDate(s *jsonScan) (time.Time, bool) {
	var num []byte
	if s.at('"') {
		v, ok := s.str()
		if !ok {
			return time.Time{}, false
		}
		// Decode in place: the escapes of a number (ASCII only) never
		// lengthen it, and v is not read again.
		n, ok := jsonStringDecode(v, v)
		if !ok || !jsonNumber(v[:n]) {
			return time.Time{}, false
		}
		num = v[:n]
	} else {
		start := s.i
		if !s.number() {
			return time.Time{}, false
		}
		num = s.b[start:s.i]
	}
	f, err := strconv.ParseFloat(bytesString(num), 64)
	if err != nil {
		return time.Time{}, false
	}
	round, frac := math.Modf(f)
	return time.Unix(int64(round), int64(frac*1e9)).Truncate(jwt.TimePrecision), true
}

// claimOf names the registered claim a member name decodes and folds to.
func claimOf(key []byte) int {
	var folded [3]byte
	it := jsonRunes{s: key}
	for n := 0; ; n++ {
		r, more := it.next()
		if !more {
			if n != len(folded) {
				return claimNone
			}
			break
		}
		if n == len(folded) {
			return claimNone
		}
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
		} else {
			r = foldRune(r)
		}
		if r >= utf8.RuneSelf {
			return claimNone
		}
		folded[n] = byte(r)
	}
	for c, name := range claimNames {
		if name != "" && string(folded[:]) == name {
			return c
		}
	}
	return claimNone
}

// foldRune is the smallest rune of r's simple case-folding orbit
// (encoding/json's fold.go).
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// jsonScan reads JSON text by encoding/json's grammar. Every method leaves i
// after what it read, or somewhere inside it on failure (then the whole text
// is refused). With floats set, a number must also convert to a float64
// (strconv.ParseFloat: no overflow), as encoding/json requires when it
// decodes a number into an interface value (the header is a map[string]any).
type jsonScan struct {
	b      []byte
	i      int
	floats bool
}

func (s *jsonScan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end reports whether only whitespace is left.
func (s *jsonScan) end() bool {
	s.ws()
	return s.i == len(s.b)
}

func (s *jsonScan) byte(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *jsonScan) literal(lit string) bool {
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// at reports whether the next byte is c.
func (s *jsonScan) at(c byte) bool { return s.i < len(s.b) && s.b[s.i] == c }

// str reads a string and returns its content between the quotes, escapes
// undecoded (well formed: jsonRunes may decode it).
func (s *jsonScan) str() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c < 0x20:
			return nil, false
		case c == '\\':
			if s.i+1 >= len(s.b) {
				return nil, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if len(s.b)-s.i < 6 || !isHex(s.b[s.i+2]) || !isHex(s.b[s.i+3]) || !isHex(s.b[s.i+4]) || !isHex(s.b[s.i+5]) {
					return nil, false
				}
				s.i += 6
			default:
				return nil, false
			}
		default:
			s.i++ // any other byte, valid UTF-8 or not
		}
	}
	return nil, false
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// number reads a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScan) number() bool {
	n := jsonNumberPrefix(s.b[s.i:])
	if n == 0 {
		return false
	}
	num := s.b[s.i : s.i+n]
	s.i += n
	if s.floats {
		if _, err := strconv.ParseFloat(bytesString(num), 64); err != nil {
			return false
		}
	}
	return true
}

// bytesString views b as a string for a call that does not keep it.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// jsonNumber reports whether b is exactly one JSON number (encoding/json's
// isValidNumber, for a string decoded into a json.Number).
func jsonNumber(b []byte) bool {
	n := jsonNumberPrefix(b)
	return n > 0 && n == len(b)
}

// jsonNumberPrefix returns the length of the JSON number b starts with, 0 if
// none. A number must not be followed by a digit, '.', 'e' or a sign that
// would continue it: the caller's next byte check refuses those.
func jsonNumberPrefix(b []byte) int {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return 0
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return 0
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return 0
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	return i
}

// value reads any JSON value. Nesting cannot reach encoding/json's limit
// (10000) within tokenLenMax, so none is checked beyond that bound.
func (s *jsonScan) value(depth int) bool {
	if depth > tokenLenMax {
		return false
	}
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{':
		s.i++
		s.ws()
		if s.byte('}') {
			return true
		}
		for {
			s.ws()
			if _, ok := s.str(); !ok {
				return false
			}
			s.ws()
			if !s.byte(':') {
				return false
			}
			s.ws()
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			if s.byte('}') {
				return true
			}
			if !s.byte(',') {
				return false
			}
		}
	case c == '[':
		s.i++
		s.ws()
		if s.byte(']') {
			return true
		}
		for {
			s.ws()
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			if s.byte(']') {
				return true
			}
			if !s.byte(',') {
				return false
			}
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

// jsonRunes yields the runes a well-formed JSON string content decodes to,
// as encoding/json's unquote decodes them: escapes, UTF-16 surrogate pairs,
// U+FFFD for a lone surrogate and for each byte of invalid UTF-8.
type jsonRunes struct {
	s []byte
	i int
}

func (it *jsonRunes) next() (rune, bool) {
	if it.i >= len(it.s) {
		return 0, false
	}
	c := it.s[it.i]
	if c == '\\' {
		e := it.s[it.i+1]
		it.i += 2
		switch e {
		case 'b':
			return '\b', true
		case 'f':
			return '\f', true
		case 'n':
			return '\n', true
		case 'r':
			return '\r', true
		case 't':
			return '\t', true
		case 'u':
			r := getu4(it.s[it.i-2:])
			it.i += 4
			if utf16.IsSurrogate(r) {
				if dec := utf16.DecodeRune(r, getu4(it.s[it.i:])); dec != unicode.ReplacementChar {
					it.i += 6
					return dec, true
				}
				return unicode.ReplacementChar, true
			}
			return r, true
		default: // '"', '\\', '/'
			return rune(e), true
		}
	}
	if c < utf8.RuneSelf {
		it.i++
		return rune(c), true
	}
	r, size := utf8.DecodeRune(it.s[it.i:])
	it.i += size
	return r, true
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// jsonStringEquals reports whether the string content v decodes to want.
func jsonStringEquals(v []byte, want string) bool {
	it := jsonRunes{s: v}
	var enc [utf8.UTFMax]byte
	w := 0
	for {
		r, more := it.next()
		if !more {
			return w == len(want)
		}
		n := utf8.EncodeRune(enc[:], r)
		if len(want)-w < n || string(enc[:n]) != want[w:w+n] {
			return false
		}
		w += n
	}
}

// jsonStringDecode decodes the string content v into dst (which may be v
// itself when v holds only ASCII: no rune then takes more bytes than its
// source). ok is false if dst is too short or, when decoding in place, a rune
// is not ASCII.
func jsonStringDecode(v, dst []byte) (n int, ok bool) {
	inPlace := len(v) > 0 && len(dst) > 0 && &v[0] == &dst[0]
	it := jsonRunes{s: v}
	for {
		r, more := it.next()
		if !more {
			return n, true
		}
		if r >= utf8.RuneSelf && inPlace {
			return n, false
		}
		if l := utf8.RuneLen(r); l < 0 || l > len(dst)-n {
			return n, false // (l < 0 cannot happen: jsonRunes yields valid runes)
		}
		n += utf8.EncodeRune(dst[n:], r)
	}
}
