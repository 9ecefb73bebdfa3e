package gateway

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestClientIP(t *testing.T) {
	trusted, err := parsePrefixes([]string{"10.0.0.0/8", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	cases := []struct {
		name string
		peer string
		xff  string
		want string
		bad  bool
	}{
		{"untrusted peer: header ignored", "198.51.100.9", "1.2.3.4", "198.51.100.9", false},
		{"untrusted peer: even malformed header ignored", "198.51.100.9", "garbage", "198.51.100.9", false},
		{"trusted peer, one hop", "10.1.1.1", "203.0.113.5", "203.0.113.5", false},
		{"trusted chain: right-most untrusted hop", "10.1.1.1", "6.6.6.6, 203.0.113.5, 10.2.2.2, 192.0.2.1", "203.0.113.5", false},
		{"spoofed left entries do not win", "192.0.2.1", "1.1.1.1, 203.0.113.7", "203.0.113.7", false},
		{"all hops trusted: left-most", "10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3", false},
		{"trusted peer, no header", "10.1.1.1", "", "10.1.1.1", false},
		{"ipv6 hop", "10.1.1.1", "2001:db8::1", "2001:db8::1", false},
		{"malformed hop from trusted proxy", "10.1.1.1", "203.0.113.5, nonsense", "", true},
	}
	for _, tc := range cases {
		var lines [][]byte
		if tc.xff != "" {
			lines = [][]byte{[]byte(tc.xff)}
		}
		got, err := clientIP(a(tc.peer), lines, trusted)
		if tc.bad {
			if err == nil {
				t.Errorf("%s: accepted, got %v", tc.name, got)
			}
			continue
		}
		if err != nil || got != a(tc.want) {
			t.Errorf("%s: got %v %v, want %s", tc.name, got, err, tc.want)
		}
	}
}

// TestClientIPReadsEveryForwardedLine (issue 9 #10): a proxy that appends its own
// X-Forwarded-For line (HAProxy "option forwardfor") leaves the client's
// line first; the lines are one list, read right to left, so the hop the
// trusted proxy saw wins over whatever the client wrote.
func TestClientIPReadsEveryForwardedLine(t *testing.T) {
	trusted, err := parsePrefixes([]string{"10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	lines := func(ss ...string) [][]byte {
		out := make([][]byte, len(ss))
		for i, s := range ss {
			out[i] = []byte(s)
		}
		return out
	}
	cases := []struct {
		name  string
		lines [][]byte
		want  string
		bad   bool
	}{
		{"client's spoofed line first, proxy's line last", lines("1.1.1.1", "203.0.113.9"), "203.0.113.9", false},
		{"trusted hops span lines", lines("1.1.1.1, 203.0.113.9", "10.2.2.2", "10.3.3.3"), "203.0.113.9", false},
		{"empty line is no hop", lines("203.0.113.9", ""), "203.0.113.9", false},
		{"all trusted over lines: left-most", lines("10.9.9.9", "10.8.8.8"), "10.9.9.9", false},
		{"malformed hop in a later line", lines("203.0.113.9", "garbage"), "", true},
	}
	for _, tc := range cases {
		got, err := clientIP(a("10.1.1.1"), tc.lines, trusted)
		if tc.bad {
			if err == nil {
				t.Errorf("%s: accepted, got %v", tc.name, got)
			}
			continue
		}
		if err != nil || got != a(tc.want) {
			t.Errorf("%s: got %v %v, want %s", tc.name, got, err, tc.want)
		}
	}
	// The hop bound counts hops over every line, not per line.
	many := make([][]byte, 2*forwardedHopsMax)
	for i := range many {
		many[i] = []byte("10.0.0.7")
	}
	many[0] = []byte("203.0.113.9") // beyond the bound: never examined
	if got, err := clientIP(a("10.1.1.1"), many, trusted); err != nil || got != a("10.0.0.7") {
		t.Fatalf("bound over lines: got %v %v", got, err)
	}
}

// TestIPv6ZoneDroppedInClientIP: a zone names the sender's interface, not a
// client; it is dropped (otherwise one client is many to the rate limits and
// blacklists, and a 70-byte zone overflows the store's client_ip field).
func TestIPv6ZoneDroppedInClientIP(t *testing.T) {
	trusted, _ := parsePrefixes([]string{"10.0.0.0/8", "fd00::/8"})
	zone := "%" + strings.Repeat("z", 70)
	got, err := clientIP(netip.MustParseAddr("10.1.1.1"), [][]byte{[]byte("fe80::1" + zone)}, trusted)
	if err != nil || got != netip.MustParseAddr("fe80::1") || len(got.String()) > 45 {
		t.Fatalf("zoned hop: %v %v", got, err)
	}
	// A zoned trusted proxy is still recognised as trusted.
	got, err = clientIP(netip.MustParseAddr("10.1.1.1"), [][]byte{[]byte("2001:db8::5, fd00::1%eth0")}, trusted)
	if err != nil || got != netip.MustParseAddr("2001:db8::5") {
		t.Fatalf("zoned trusted hop: %v %v", got, err)
	}
}

// FuzzClientIP: any X-Forwarded-For lines from a trusted peer give an error
// or an address without a zone that the peer or one of the lines named; an
// untrusted peer's lines are never read.
func FuzzClientIP(f *testing.F) {
	trusted, _ := parsePrefixes([]string{"10.0.0.0/8", "fd00::/8"})
	f.Add("10.1.1.1", "6.6.6.6\n203.0.113.9")
	f.Add("10.1.1.1", "1.1.1.1, 203.0.113.9\n10.2.2.2\n\n10.3.3.3")
	f.Add("10.1.1.1", "fe80::1%"+strings.Repeat("z", 70))
	f.Add("198.51.100.7", "garbage")
	f.Add("10.1.1.1", "::ffff:10.9.9.9, fd00::1%eth0")
	f.Fuzz(func(t *testing.T, peerText, xff string) {
		peer, err := netip.ParseAddr(peerText)
		if err != nil {
			return
		}
		var lines [][]byte
		if xff != "" {
			for _, l := range strings.Split(xff, "\n") {
				lines = append(lines, []byte(l))
			}
		}
		got, err := clientIP(peer, lines, trusted)
		if err != nil {
			return
		}
		if got.Zone() != "" || got.Is4In6() {
			t.Fatalf("client %v keeps a zone or an IPv4-in-IPv6 form", got)
		}
		if bare := peer.Unmap().WithZone(""); !trusted.contains(bare) && got != bare {
			t.Fatalf("untrusted peer %v: client %v taken from its header", peer, got)
		}
		if got == peer.Unmap().WithZone("") {
			return
		}
		for _, l := range lines {
			for _, h := range strings.Split(string(l), ",") {
				if a, err := netip.ParseAddr(strings.TrimSpace(h)); err == nil && a.Unmap().WithZone("") == got {
					return
				}
			}
		}
		t.Fatalf("client %v named by neither the peer nor a hop of %q", got, xff)
	})
}

func TestEdDSAVerifier(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	v, err := newVerifier(AuthConfig{Ed25519PublicKey: pemKey, Leeway: time.Second}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Minute).Unix()}).SignedString(priv)
	if sub, err := v.verify([]byte("Bearer " + tok)); err != nil || sub != "alice" {
		t.Fatalf("EdDSA token: %q %v", sub, err)
	}
	hs, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Minute).Unix()}).SignedString(der)
	if _, err := v.verify([]byte("Bearer " + hs)); err == nil {
		t.Fatal("HS256 token signed with the public key bytes accepted by an EdDSA verifier (key confusion)")
	}
}

// FuzzVerifyToken: any Authorization header value gives a valid user id or
// an error, and past the "Bearer " prefix the answer is jwt/v5's (the oracle,
// see jwt_test.go; FuzzVerifyTokenMatchesJWT reaches the claims of signed
// tokens).
func FuzzVerifyToken(f *testing.F) {
	c := AuthConfig{HS256Secret: "fuzz-secret-0123456789-0123456789-x", Leeway: 5 * time.Second}
	now := time.Now()
	v, err := newVerifier(c, func() time.Time { return now })
	if err != nil {
		f.Fatal(err)
	}
	good, _ := MintHS256(c.HS256Secret, "user-1", time.Hour)
	f.Add([]byte("Bearer " + good))
	f.Add([]byte("bearer " + good))
	f.Add([]byte("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."))
	f.Add([]byte("Bearer ..."))
	f.Add([]byte("bearer x"))
	f.Fuzz(func(t *testing.T, authz []byte) {
		sub, err := v.verify(authz)
		if err == nil && !validUserID(sub) {
			t.Fatalf("accepted invalid subject %q", sub)
		}
		if len(authz) <= len("Bearer ") || !strings.EqualFold(string(authz[:len("Bearer ")]), "Bearer ") || len(authz)-len("Bearer ") > tokenLenMax {
			if err == nil {
				t.Fatalf("accepted %q", authz)
			}
			return
		}
		wantSub, _, wantErr := oracleVerify(c, now, string(authz[len("Bearer "):]))
		if (err == nil) != (wantErr == nil) || sub != wantSub {
			t.Fatalf("%q: sub %q err %v; jwt/v5: sub %q err %v", authz, sub, err, wantSub, wantErr)
		}
	})
}

// TestTokenCacheHonoursExpiry: a cached token stops working at exp (+leeway),
// and a token differing in one byte is verified in full, not served from
// cache. Only Ed25519 verifiers cache (an HS256 check is cheaper than a miss).
func TestTokenCacheHonoursExpiry(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	v, err := newVerifier(AuthConfig{Ed25519PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), Leeway: time.Second}, clock)
	if err != nil {
		t.Fatal(err)
	}
	if v.cache == nil {
		t.Fatal("Ed25519 verifier without a token cache")
	}
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"sub": "bob", "exp": now.Add(time.Minute).Unix()}).SignedString(priv)
	for i := 0; i < 2; i++ { // miss, then hit
		if sub, err := v.verify([]byte("Bearer " + tok)); err != nil || sub != "bob" {
			t.Fatalf("verify %d: %q %v", i, sub, err)
		}
	}
	if _, ok := v.cache.get([]byte(tok), now); !ok {
		t.Fatal("verified token not cached")
	}
	forged := []byte("Bearer " + tok)
	forged[len(forged)-2] ^= 1
	if _, err := v.verify(forged); err == nil {
		t.Fatal("token with an altered signature accepted")
	}
	now = now.Add(2 * time.Minute)
	if _, err := v.verify([]byte("Bearer " + tok)); err == nil {
		t.Fatal("expired token served from the cache")
	}
	hs, err := newVerifier(AuthConfig{HS256Secret: "cache-secret-0123456789-0123456789-x"}, clock)
	if err != nil || hs.cache != nil {
		t.Fatalf("HS256 verifier: cache %v, err %v; want no cache", hs.cache != nil, err)
	}
}
