package gateway

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
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
		got, err := clientIP(a(tc.peer), []byte(tc.xff), trusted)
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

func FuzzVerifyToken(f *testing.F) {
	secret := "fuzz-secret-0123456789-0123456789-x"
	v, err := newVerifier(AuthConfig{HS256Secret: secret}, time.Now)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := MintHS256(secret, "user-1", time.Hour)
	f.Add([]byte("Bearer " + good))
	f.Add([]byte("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."))
	f.Add([]byte("Bearer ..."))
	f.Add([]byte("bearer x"))
	f.Fuzz(func(t *testing.T, authz []byte) {
		sub, err := v.verify(authz)
		if err == nil && !validUserID(sub) {
			t.Fatalf("accepted invalid subject %q", sub)
		}
	})
}

// TestTokenCacheHonoursExpiry: a cached token stops working at exp (+leeway),
// and a token differing in one byte is verified in full, not served from cache.
func TestTokenCacheHonoursExpiry(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	secret := "cache-secret-0123456789-0123456789-x"
	v, err := newVerifier(AuthConfig{HS256Secret: secret, Leeway: time.Second}, clock)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "bob", "exp": now.Add(time.Minute).Unix()}).SignedString([]byte(secret))
	for i := 0; i < 2; i++ { // miss, then hit
		if sub, err := v.verify([]byte("Bearer " + tok)); err != nil || sub != "bob" {
			t.Fatalf("verify %d: %q %v", i, sub, err)
		}
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
}
