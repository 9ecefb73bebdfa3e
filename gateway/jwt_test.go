package gateway

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The oracle: the jwt/v5 parser newVerifier built before tokenVerifier, with
// the same options, plus the subject check verify makes after it.

const (
	oracleSecret = "oracle-secret-0123456789-0123456789-x"
	oracleIss    = "https://id.shop.example"
	oracleAud    = "flashgate"
)

var (
	oracleNow     = time.Unix(1_800_000_000, 0)
	oracleEdPriv  = ed25519.NewKeyFromSeed([]byte("flashgate-oracle-ed25519-seed-32"))
	oracleEdPub   = oracleEdPriv.Public().(ed25519.PublicKey)
	oracleConfigs = []AuthConfig{
		{HS256Secret: oracleSecret, Leeway: 5 * time.Second},
		{HS256Secret: oracleSecret, Issuer: oracleIss, Audience: oracleAud},
		{Ed25519PublicKey: base64.StdEncoding.EncodeToString(oracleEdPub), Leeway: 5 * time.Second},
		{Ed25519PublicKey: base64.StdEncoding.EncodeToString(oracleEdPub), Issuer: oracleIss, Audience: oracleAud, Leeway: time.Minute},
	}
)

// jwtOracle is the verification verify made with jwt/v5 (cache aside).
type jwtOracle struct {
	parser *jwt.Parser
	key    any
}

func newOracle(c AuthConfig, now func() time.Time) *jwtOracle {
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithLeeway(c.Leeway), jwt.WithTimeFunc(now)}
	if c.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(c.Issuer))
	}
	if c.Audience != "" {
		opts = append(opts, jwt.WithAudience(c.Audience))
	}
	if c.HS256Secret != "" {
		return &jwtOracle{parser: jwt.NewParser(append(opts, jwt.WithValidMethods([]string{"HS256"}))...), key: []byte(c.HS256Secret)}
	}
	pk, err := parseEd25519PublicKey(c.Ed25519PublicKey)
	if err != nil {
		panic(err)
	}
	return &jwtOracle{parser: jwt.NewParser(append(opts, jwt.WithValidMethods([]string{"EdDSA"}))...), key: pk}
}

func (o *jwtOracle) verify(raw []byte) (string, time.Time, error) {
	var claims jwt.RegisteredClaims
	if _, err := o.parser.ParseWithClaims(string(raw), &claims, func(*jwt.Token) (any, error) { return o.key, nil }); err != nil {
		return "", time.Time{}, err
	}
	if !validUserID(claims.Subject) {
		return "", time.Time{}, errBadSubject
	}
	return claims.Subject, claims.ExpiresAt.Time, nil
}

func oracleVerify(c AuthConfig, now time.Time, raw string) (string, time.Time, error) {
	return newOracle(c, func() time.Time { return now }).verify([]byte(raw))
}

func fastVerifier(t testing.TB, c AuthConfig) *tokenVerifier {
	v, err := newVerifier(c, func() time.Time { return oracleNow })
	if err != nil {
		t.Fatal(err)
	}
	return v.tok
}

// sameAsOracle checks that tokenVerifier and jwt/v5 agree on raw: both
// refuse, or both accept with the same subject and expiry.
func sameAsOracle(t *testing.T, c AuthConfig, v *tokenVerifier, raw string) {
	t.Helper()
	wantSub, wantExp, wantErr := oracleVerify(c, oracleNow, raw)
	gotSub, gotExp, gotErr := v.verify([]byte(raw), oracleNow)
	if (wantErr == nil) != (gotErr == nil) || gotSub != wantSub || !gotExp.Equal(wantExp) {
		t.Fatalf("config %+v\ntoken %q\njwt/v5: sub %q exp %v err %v\nfast:   sub %q exp %v err %v",
			c, raw, wantSub, wantExp, wantErr, gotSub, gotExp, gotErr)
	}
}

// token builds header.payload.signature from JSON texts, signed for c (or
// with sig as its signature segment when sig is not nil).
func token(c AuthConfig, header, payload string, sig []byte) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	if sig == nil {
		var err error
		if c.HS256Secret != "" {
			sig, err = jwt.SigningMethodHS256.Sign(signing, []byte(c.HS256Secret))
		} else {
			sig, err = jwt.SigningMethodEdDSA.Sign(signing, oracleEdPriv)
		}
		if err != nil {
			panic(err)
		}
	}
	return signing + "." + enc.EncodeToString(sig)
}

func algOf(c AuthConfig) string {
	if c.HS256Secret != "" {
		return "HS256"
	}
	return "EdDSA"
}

// edgeHeaders and edgePayloads are the seeds of the fuzzer and the table of
// TestTokenVerifierMatchesJWT: real shapes, and the corners of the JSON and
// claim rules jwt/v5 applies through encoding/json. ALG stands for the
// configured algorithm, EXP for a live expiry.
var edgeHeaders = []string{
	`{"alg":"ALG","typ":"JWT"}`, `{"typ":"JWT","alg":"ALG"}`, ` {"alg" : "ALG"} `, `{"alg":"ALG","kid":"k1","x":[1,{"y":null}]}`,
	`{"alg":"none"}`, `{"alg":"HS384"}`, `{"alg":"RS256"}`, `{"alg":"ALG","alg":"none"}`, `{"alg":"none","alg":"ALG"}`,
	`{"ALG":"ALG"}`, `{"\u0061lg":"ALG"}`, `{"alg":"\u0041LG"}`, `{"alg":5}`, `{"alg":null}`, `{}`, `null`, `[]`, `"ALG"`,
	`{"alg":"ALG"`, `{"alg":"ALG"}x`, `{"alg":"ALG",}`, `{"alg":"ALG","n":1e400}`, `{"alg":"ALG","n":1e-400}`,
	`{"alg":"ALG","n":-0.0e+1}`, `{"alg":"ALG","n":01}`, `{"alg":"ALG","s":"\ud800"}`, `{"alg":"ALG","s":"\x01"}`,
	`{"alg":"ALG","s":"\q"}`, "{\"alg\":\"ALG\",\"s\":\"\xff\"}", `{"alg":"ALG","b":tru}`, `{"alg":"ALG","b":true}`,
}

var edgePayloads = []string{
	`{"sub":"user-1","exp":EXP}`,
	`{"sub":"user-1","exp":EXP,"iat":1799999000,"iss":"https://id.shop.example","aud":"flashgate"}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":["other","flashgate"]}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":[]}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":[""]}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":["flashgate",5]}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":["flashgate",null]}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":"flashgate","aud":null}`,
	`{"sub":"user-1","exp":EXP,"iss":"https://id.shop.example","aud":{"x":1}}`,
	`{"sub":"user-1","exp":EXP,"ISS":"https://id.shop.example","Aud":"flashgate"}`,
	`{"sub":"user-1","exp":EXP,"iss":"https:\/\/id.shop.example","aud":"fl\u0061shgate"}`,
	`{"sub":"user-1","exp":EXP,"iss":"","aud":"flashgate"}`,
	`{"sub":"user-1","exp":EXP,"iss":null,"aud":"flashgate"}`,
	`{"sub":"user-1","exp":EXP,"iss":5,"aud":"flashgate"}`,
	`{"sub":"user-1"}`, `{"sub":"user-1","exp":null}`, `{"sub":"user-1","exp":EXP,"exp":null}`, `{"sub":"user-1","exp":null,"exp":EXP}`,
	`{"sub":"user-1","exp":1800000000}`, `{"sub":"user-1","exp":1799999996}`, `{"sub":"user-1","exp":1799999995}`,
	`{"sub":"user-1","exp":1799999995.5}`, `{"sub":"user-1","exp":1.8e9}`, `{"sub":"user-1","exp":1.8000000005e9}`,
	`{"sub":"user-1","exp":"1900000000"}`, `{"sub":"user-1","exp":"\u0031900000000"}`, `{"sub":"user-1","exp":"19e8x"}`,
	`{"sub":"user-1","exp":""}`, `{"sub":"user-1","exp":true}`, `{"sub":"user-1","exp":[1900000000]}`, `{"sub":"user-1","exp":{}}`,
	`{"sub":"user-1","exp":1e400}`, `{"sub":"user-1","exp":-1e400}`, `{"sub":"user-1","exp":1e300}`, `{"sub":"user-1","exp":-5}`,
	`{"sub":"user-1","exp":9223372036854775807}`, `{"sub":"user-1","exp":-9.3e18}`, `{"sub":"user-1","exp":EXP,"nbf":1800000004}`,
	`{"sub":"user-1","exp":EXP,"nbf":1800000006}`, `{"sub":"user-1","exp":EXP,"nbf":1800000005.9}`, `{"sub":"user-1","exp":EXP,"nbf":"x"}`,
	`{"sub":"user-1","exp":EXP,"nbf":null}`, `{"sub":"user-1","exp":EXP,"iat":1900000000}`, `{"sub":"user-1","exp":EXP,"iat":"1"}`,
	`{"sub":"user-1","exp":EXP,"iat":false}`, `{"sub":"user-1","exp":EXP,"jti":"j"}`, `{"sub":"user-1","exp":EXP,"jti":7}`,
	`{"SUB":"user-2","exp":EXP}`, `{"Sub":"user-2","EXP":EXP}`, `{"\u017fub":"user-3","exp":EXP}`, `{"ſub":"user-3","exp":EXP}`,
	`{"sub":"user-1","ſub":"user-4","exp":EXP}`, `{"sub":"a","sub":null,"exp":EXP}`, `{"sub":null,"exp":EXP}`,
	`{"sub":"","exp":EXP}`, `{"sub":"has space","exp":EXP}`, `{"sub":"\u0041\/b","exp":EXP}`, `{"sub":"\u00e9","exp":EXP}`,
	`{"sub":"\ud83d\ude00","exp":EXP}`, `{"sub":"` + strings.Repeat("x", 128) + `","exp":EXP}`,
	`{"sub":"` + strings.Repeat("x", 129) + `","exp":EXP}`, `{"sub":"` + strings.Repeat("x", 200) + `","sub":"ok","exp":EXP}`,
	`{"sub":5,"exp":EXP}`, `{"sub":["a"],"exp":EXP}`, `{"sub":"user-1","exp":EXP,"other":{"exp":1}}`,
	`{"sub":"user-1","exp":EXP,"n":1e400}`, `{"sub":"user-1","exp":EXP,"K":1}`, `{"sub":"user-1","exp":EXP,"subx":5}`,
	`{"sub":"user-1","exp":EXP,}`, `{"sub":"user-1","exp":EXP}}`, `{"sub":"user-1" "exp":EXP}`, ` {"sub":"user-1","exp":EXP} `,
	`null`, `[]`, `5`, `"x"`, `{}`, ``, "{\"sub\":\"u\xff\",\"exp\":EXP}", "{\"s\xffb\":\"u\",\"exp\":EXP}",
}

func expand(c AuthConfig, s string) string {
	return strings.NewReplacer("ALG", algOf(c), "EXP", "1900000000").Replace(s)
}

// TestTokenVerifierMatchesJWT: on real tokens and on every corner above,
// signed and with broken signatures, tokenVerifier answers as jwt/v5 does.
func TestTokenVerifierMatchesJWT(t *testing.T) {
	for _, c := range oracleConfigs {
		v := fastVerifier(t, c)
		accepted := 0
		for _, h := range edgeHeaders {
			for _, p := range edgePayloads {
				tok := token(c, expand(c, h), expand(c, p), nil)
				sameAsOracle(t, c, v, tok)
				if _, _, err := v.verify([]byte(tok), oracleNow); err == nil {
					accepted++
				}
				sameAsOracle(t, c, v, tok[:len(tok)-2]+"AA")                             // signature altered
				sameAsOracle(t, c, v, token(c, expand(c, h), expand(c, p), []byte("x"))) // signature of the wrong length
			}
		}
		if accepted == 0 {
			t.Fatalf("config %+v: no token accepted; the table tests nothing", c)
		}
	}
	// Minted tokens, and the encodings of their segments.
	c := oracleConfigs[1]
	v := fastVerifier(t, c)
	tok, err := MintHS256For(oracleSecret, "user-9", oracleIss, oracleAud, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{tok, tok + "=", tok + "\n", "\r" + tok, strings.Replace(tok, ".", "\n.", 1), strings.Replace(tok, ".", "..", 1),
		tok + ".", strings.TrimSuffix(tok, tok[strings.LastIndexByte(tok, '.'):]), strings.ReplaceAll(tok, "-", "+"), "", ".", "..", "a.b.c"} {
		sameAsOracle(t, c, v, raw)
	}
}

// FuzzVerifyTokenMatchesJWT: tokenVerifier accepts exactly what jwt/v5
// accepts, with the same subject and expiry — for arbitrary token bytes
// (raw), and for tokens built from arbitrary header and payload JSON that
// are signed properly (or, with the flag, carry arbitrary signature bytes),
// so that the claim rules are reached past the signature.
func FuzzVerifyTokenMatchesJWT(f *testing.F) {
	for i, c := range oracleConfigs {
		for _, p := range edgePayloads[:8] {
			f.Add(uint8(i), []byte(expand(c, edgeHeaders[0])), []byte(expand(c, p)), []byte(nil), false)
		}
	}
	for _, h := range edgeHeaders {
		f.Add(uint8(0), []byte(expand(oracleConfigs[0], h)), []byte(expand(oracleConfigs[0], edgePayloads[0])), []byte(nil), false)
	}
	for _, p := range edgePayloads {
		f.Add(uint8(1), []byte(`{"alg":"HS256"}`), []byte(expand(oracleConfigs[1], p)), []byte(nil), false)
	}
	tok, _ := MintHS256For(oracleSecret, "user-9", oracleIss, oracleAud, time.Hour)
	f.Add(uint8(1), []byte(nil), []byte(nil), []byte(tok), true)
	f.Add(uint8(0), []byte(nil), []byte(nil), []byte("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), true)
	f.Add(uint8(2), []byte(`{"alg":"EdDSA"}`), []byte(`{"sub":"u","exp":1900000000}`), []byte("sig"), false)
	verifiers := make([]*tokenVerifier, len(oracleConfigs))
	for i, c := range oracleConfigs {
		verifiers[i] = fastVerifier(f, c)
	}
	f.Fuzz(func(t *testing.T, which uint8, header, payload, sigOrRaw []byte, raw bool) {
		i := int(which) % len(oracleConfigs)
		c, v := oracleConfigs[i], verifiers[i]
		if raw {
			sameAsOracle(t, c, v, string(sigOrRaw))
			return
		}
		var sig []byte
		if len(sigOrRaw) > 0 {
			sig = sigOrRaw
		}
		sameAsOracle(t, c, v, token(c, string(header), string(payload), sig))
	})
}

// TestTokenVerifierAllocs: verifying a token allocates the subject's string
// and nothing else (HS256, the configured default); Ed25519's own
// verification is budgeted at what crypto/ed25519 needs.
func TestTokenVerifierAllocs(t *testing.T) {
	for _, tc := range []struct {
		c      AuthConfig
		budget float64
	}{
		{oracleConfigs[0], 1},
		{oracleConfigs[1], 1},
		{oracleConfigs[3], 1},
	} {
		v := fastVerifier(t, tc.c)
		tok := token(tc.c, `{"alg":"`+algOf(tc.c)+`","typ":"JWT"}`,
			`{"sub":"user-1234567","iss":"https://id.shop.example","aud":["flashgate"],"iat":1799999000,"exp":1900000000}`, nil)
		raw := []byte(tok)
		if _, _, err := v.verify(raw, oracleNow); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(200, func() {
			if _, _, err := v.verify(raw, oracleNow); err != nil {
				t.Fatal(err)
			}
		}); n > tc.budget && !raceEnabled {
			t.Errorf("%s: %.1f allocations per verified token, budget %.0f (the subject)", algOf(tc.c), n, tc.budget)
		}
	}
	// The whole header check of an HS256 gateway (no token cache): the same.
	v, err := newVerifier(oracleConfigs[1], func() time.Time { return oracleNow })
	if err != nil {
		t.Fatal(err)
	}
	authz := []byte("Bearer " + token(oracleConfigs[1], `{"alg":"HS256"}`, `{"sub":"u1","iss":"https://id.shop.example","aud":"flashgate","exp":1900000000}`, nil))
	if n := testing.AllocsPerRun(200, func() {
		if _, err := v.verify(authz); err != nil {
			t.Fatal(err)
		}
	}); n > 1 && !raceEnabled {
		t.Errorf("verify: %.1f allocations per Authorization header, budget 1 (the subject)", n)
	}
}

// BenchmarkVerifyToken: one token check, cache aside — jwt/v5's parser as the
// gateway used it (impl=jwt) against tokenVerifier (impl=fast). Each user taps
// once in a drop, so the cache never hits and this is the cost per claim.
//
//	go test ./gateway -run '^$' -bench BenchmarkVerifyToken -benchmem -count 6
func BenchmarkVerifyToken(b *testing.B) {
	for _, ci := range []int{0, 1, 2} {
		c := oracleConfigs[ci]
		name := algOf(c)
		if c.Issuer != "" {
			name += "+iss+aud"
		}
		tok, err := MintHS256For(oracleSecret, "user-1234567", oracleIss, oracleAud, 100000*time.Hour)
		if c.Ed25519PublicKey != "" {
			tok = token(c, `{"alg":"EdDSA","typ":"JWT"}`, `{"sub":"user-1234567","iat":1799999000,"exp":1900000000}`, nil)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Run("alg="+name+"/impl=jwt", func(b *testing.B) {
			o := newOracle(c, func() time.Time { return oracleNow })
			raw := []byte(tok)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, _, err := o.verify(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("alg="+name+"/impl=fast", func(b *testing.B) {
			v := fastVerifier(b, c)
			raw := []byte(tok)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, _, err := v.verify(raw, oracleNow); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyBearer: the whole verify of an Authorization header with
// the token cache and without it, when every token is new (a drop: each user
// taps once; cache=miss) and when every token was seen (cache=hit).
//
//	go test ./gateway -run '^$' -bench BenchmarkVerifyBearer -benchmem -count 6
func BenchmarkVerifyBearer(b *testing.B) {
	const distinct = 1 << 16
	for _, ci := range []int{0, 2} {
		c := oracleConfigs[ci]
		headers := make([][]byte, distinct)
		for i := range headers {
			headers[i] = []byte("Bearer " + token(c, `{"alg":"`+algOf(c)+`","typ":"JWT"}`,
				fmt.Sprintf(`{"sub":"user-%07d","iat":1799999000,"exp":1900000000}`, i), nil))
		}
		for _, mode := range []string{"off", "miss", "hit"} {
			b.Run("alg="+algOf(c)+"/cache="+mode, func(b *testing.B) {
				fresh := func() *verifier {
					v, err := newVerifier(c, func() time.Time { return oracleNow })
					if err != nil {
						b.Fatal(err)
					}
					switch mode {
					case "off":
						v.cache = nil
					default:
						v.cache = newTokenCache()
					}
					return v
				}
				v := fresh()
				if mode == "hit" {
					for _, h := range headers {
						if _, err := v.verify(h); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if i%distinct == 0 && i > 0 && mode == "miss" {
						b.StopTimer()
						v = fresh()
						b.StartTimer()
					}
					if _, err := v.verify(headers[i%distinct]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
