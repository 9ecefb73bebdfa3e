package gateway

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

const (
	// tokenLenMax bounds a bearer token; real ones are a few hundred bytes.
	tokenLenMax = 4096
	// userIDLenMax bounds a user id (it becomes part of Redis keys).
	userIDLenMax = 128
	// deviceIDLenMax bounds X-Device-ID.
	deviceIDLenMax = 128
	// idempotencyKeyLenMax bounds Idempotency-Key (it becomes part of a Redis key).
	idempotencyKeyLenMax = 64
	// forwardedHopsMax bounds the X-Forwarded-For entries examined.
	forwardedHopsMax = 16
	// claimValueLenMax bounds auth.issuer and auth.audience (URLs or names).
	claimValueLenMax = 256
)

var (
	errNoToken      = errors.New("missing bearer token")
	errTokenTooLong = errors.New("token too long")
	errBadSubject   = errors.New("token sub must be 1..128 printable characters")
)

// verifier turns a bearer token into a user id. Exactly one algorithm is
// accepted, pinned by configuration; alg "none" and every other algorithm are
// refused. With auth.issuer / auth.audience the token must also carry that
// iss and aud. The checks are tokenVerifier's (jwt.go): jwt/v5's, without
// its reflection and allocations; jwt/v5 is the oracle in the tests.
type verifier struct {
	tok    *tokenVerifier
	now    func() time.Time
	leeway time.Duration
	cache  *tokenCache // nil for HS256 (see newVerifier)
}

func newVerifier(c AuthConfig, now func() time.Time) (*verifier, error) {
	var tok *tokenVerifier
	switch {
	case c.HS256Secret != "":
		tok = newHS256Verifier([]byte(c.HS256Secret))
	case c.Ed25519PublicKey != "":
		pk, err := parseEd25519PublicKey(c.Ed25519PublicKey)
		if err != nil {
			return nil, err
		}
		tok = newEdDSAVerifier(pk)
	default:
		return nil, errors.New("gateway: no JWT key configured")
	}
	tok.issuer, tok.audience, tok.leeway = c.Issuer, c.Audience, c.Leeway // required when set
	v := &verifier{tok: tok, now: now, leeway: c.Leeway}
	if tok.edKey != nil {
		// Worth a cache: an Ed25519 check costs ~60 µs, a hit under 1 µs. An
		// HS256 check (~1.2 µs) costs less than what a miss adds (~1.9 µs:
		// the key's copy, the map), and in a drop most tokens are new.
		v.cache = newTokenCache()
	}
	return v, nil
}

// verify checks a raw "Bearer <token>" Authorization header value and returns
// the subject.
func (v *verifier) verify(authz []byte) (string, error) {
	const prefix = "Bearer "
	if len(authz) <= len(prefix) || !bytes.EqualFold(authz[:len(prefix)], []byte(prefix)) {
		return "", errNoToken
	}
	raw := authz[len(prefix):]
	if len(raw) > tokenLenMax {
		return "", errTokenTooLong
	}
	now := v.now()
	if v.cache != nil {
		if sub, ok := v.cache.get(raw, now.Add(-v.leeway)); ok {
			return sub, nil
		}
	}
	sub, exp, err := v.tok.verify(raw, now)
	if err != nil {
		return "", err
	}
	if v.cache != nil {
		v.cache.put(raw, sub, exp)
	}
	return sub, nil
}

// validUserID: 1..128 bytes of printable ASCII without space.
func validUserID(s string) bool { return printableToken(s, userIDLenMax) }

func printableToken(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func printableTokenBytes(b []byte, maxLen int) bool {
	if len(b) == 0 || len(b) > maxLen {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func parseEd25519PublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-----BEGIN") {
		blk, _ := pem.Decode([]byte(s))
		if blk == nil {
			return nil, errors.New("not a PEM block")
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		pk, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("PEM key is %T, not Ed25519", k)
		}
		return pk, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not PEM and not base64: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("key is %d bytes, want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// proxySet is the configured trusted proxies.
type proxySet []netip.Prefix

func parsePrefixes(ss []string) (proxySet, error) {
	out := make(proxySet, 0, len(ss))
	var errs []error
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%q is neither an IP nor a CIDR", s))
			continue
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, errors.Join(errs...)
}

func (ps proxySet) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

var errBadForwarded = errors.New("malformed X-Forwarded-For")

// clientIP is the TCP peer, or — when the peer is a trusted proxy — the
// right-most hop of X-Forwarded-For that is not itself a trusted proxy. A
// header from an untrusted peer is never read.
//
// xff is every X-Forwarded-For line of the request, in the order received
// (fasthttp's PeekAll), read as one comma-separated list: a proxy may append
// its own line (HAProxy "option forwardfor") instead of extending the
// client's, and reading only the first line would let the client choose its
// own address. At most forwardedHopsMax hops are examined, over all lines.
//
// A hop's IPv6 zone ("fe80::1%eth0") is dropped: a zone names an interface of
// the sender, not a client, and keeping it would let one client appear as
// many (rate limits, blacklists) and make an address too long to store.
func clientIP(peer netip.Addr, xff [][]byte, trusted proxySet) (netip.Addr, error) {
	peer = peer.Unmap().WithZone("")
	if len(xff) == 0 || !trusted.contains(peer) {
		return peer, nil
	}
	hop := peer
	examined := 0
	for line := len(xff) - 1; line >= 0; line-- {
		rest := xff[line]
		for len(rest) > 0 {
			if examined == forwardedHopsMax {
				return hop, nil // the bound: the left-most hop examined stands for the client
			}
			examined++
			var part []byte
			if j := bytes.LastIndexByte(rest, ','); j >= 0 {
				part, rest = rest[j+1:], rest[:j]
			} else {
				part, rest = rest, nil
			}
			a, err := netip.ParseAddr(string(bytes.TrimSpace(part)))
			if err != nil {
				return netip.Addr{}, errBadForwarded
			}
			hop = a.Unmap().WithZone("")
			if !trusted.contains(hop) {
				return hop, nil
			}
		}
	}
	return hop, nil // every hop examined is a trusted proxy: the left-most one is the client
}

// clientIPFromSlice is clientIP for the peer address fasthttp gives.
func clientIPFromSlice(peer []byte, xff [][]byte, trusted proxySet) (netip.Addr, error) {
	a, _ := netip.AddrFromSlice(peer)
	return clientIP(a, xff, trusted)
}
