package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/internal/stack"
)

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBadInputGetsTableStatus: each malformed request gets the status the
// API table names, never a 500 or a panic, and grants nothing.
func TestBadInputGetsTableStatus(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "bad", Stock: 10, Shards: 1})
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	exp := time.Now().Add(time.Hour).Unix()
	good := "Bearer " + stack.Token("u1")
	noneTok := signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "u1", "exp": exp})
	cases := []struct {
		name        string
		method      string
		path        string
		authz       string
		device      string
		idem        string
		body        []byte
		want        status.Status
		wantHTTP    int
		errContains string
	}{
		{name: "malformed body", body: []byte(`{"code":`), want: status.InvalidRequest, errContains: "body"},
		{name: "body not an object", body: []byte(`[1,2]`), want: status.InvalidRequest},
		{name: "unknown body field", body: []byte(`{"coupon":"x"}`), want: status.InvalidRequest, errContains: "unknown field"},
		{name: "trailing data", body: []byte(`{"code":"A"} {}`), want: status.InvalidRequest},
		{name: "body over 4 KiB", body: []byte(`{"code":"` + strings.Repeat("a", 5000) + `"}`), want: status.InvalidRequest, errContains: "4096"},
		{name: "missing device", device: "-", want: status.InvalidRequest, errContains: "X-Device-ID"},
		{name: "device with control chars", device: "a\tb", want: status.InvalidRequest},
		{name: "idempotency key too long", idem: strings.Repeat("k", 65), want: status.InvalidRequest, errContains: "Idempotency-Key"},
		{name: "missing token", authz: "-", want: status.Unauthenticated},
		{name: "not bearer", authz: "Basic dTpw", want: status.Unauthenticated},
		{name: "garbage token", authz: "Bearer abc.def.ghi", want: status.Unauthenticated},
		{name: "expired token", authz: "Bearer " + signed(t, jwt.SigningMethodHS256, []byte(stack.Secret), jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(-time.Hour).Unix()}), want: status.Unauthenticated},
		{name: "token without exp", authz: "Bearer " + signed(t, jwt.SigningMethodHS256, []byte(stack.Secret), jwt.MapClaims{"sub": "u1"}), want: status.Unauthenticated},
		{name: "alg none", authz: "Bearer " + noneTok, want: status.Unauthenticated},
		{name: "wrong secret", authz: "Bearer " + signed(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), jwt.MapClaims{"sub": "u1", "exp": exp}), want: status.Unauthenticated},
		{name: "HS384 refused (alg pinned)", authz: "Bearer " + signed(t, jwt.SigningMethodHS384, []byte(stack.Secret), jwt.MapClaims{"sub": "u1", "exp": exp}), want: status.Unauthenticated},
		{name: "EdDSA refused when HS256 pinned", authz: "Bearer " + signed(t, jwt.SigningMethodEdDSA, edKey, jwt.MapClaims{"sub": "u1", "exp": exp}), want: status.Unauthenticated},
		{name: "empty sub", authz: "Bearer " + signed(t, jwt.SigningMethodHS256, []byte(stack.Secret), jwt.MapClaims{"sub": "", "exp": exp}), want: status.Unauthenticated},
		{name: "huge token", authz: "Bearer " + strings.Repeat("x", 5000), want: status.Unauthenticated},
		{name: "unknown campaign", path: "/v1/campaigns/nope/claim", want: status.UnknownCampaign},
		{name: "campaign id with bad chars", path: "/v1/campaigns/a%7Bb%7D/claim", want: status.UnknownCampaign},
		{name: "GET on claim", method: "GET", want: status.InvalidRequest, wantHTTP: 405},
		{name: "no such endpoint", path: "/v2/whatever", want: status.InvalidRequest, wantHTTP: 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method, path := "POST", "/v1/campaigns/bad/claim"
			if tc.method != "" {
				method = tc.method
			}
			if tc.path != "" {
				path = tc.path
			}
			req, _ := http.NewRequest(method, s.PublicURL+path, bytes.NewReader(tc.body))
			if tc.authz != "-" {
				req.Header.Set("Authorization", good)
				if tc.authz != "" {
					req.Header.Set("Authorization", tc.authz)
				}
			}
			if tc.device != "-" {
				req.Header.Set("X-Device-ID", "dev-1")
				if tc.device != "" {
					req.Header.Set("X-Device-ID", tc.device)
				}
			}
			if tc.idem != "" {
				req.Header.Set("Idempotency-Key", tc.idem)
			}
			resp, err := s.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantHTTP := tc.want.HTTPCode()
			if tc.wantHTTP != 0 {
				wantHTTP = tc.wantHTTP
			}
			if resp.StatusCode != wantHTTP || !bytes.Contains(b, []byte(`"status":"`+tc.want.String()+`"`)) {
				t.Fatalf("HTTP %d %s, want %d %s", resp.StatusCode, b, wantHTTP, tc.want)
			}
			if tc.errContains != "" && !bytes.Contains(b, []byte(tc.errContains)) {
				t.Errorf("error %s does not mention %q", b, tc.errContains)
			}
		})
	}
	t.Run("body over server cap", func(t *testing.T) {
		// fasthttp answers from the headers and closes; read the answer on a
		// raw connection (a client still sending would see the reset).
		c, err := net.Dial("tcp", strings.TrimPrefix(s.PublicURL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/campaigns/bad/claim HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nX-Device-ID: d\r\nContent-Length: %d\r\n\r\n", good, 200<<10)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !bytes.Contains(b, []byte(`"status":"invalid_request"`)) || !bytes.Contains(b, []byte("too large")) {
			t.Fatalf("HTTP %d %s", resp.StatusCode, b)
		}
	})
	if st := s.CampaignStats("bad"); st.Granted != 0 || st.Remaining != 10 {
		t.Errorf("bad input changed stock: %+v", st)
	}
	// And a good request still works on the same server.
	a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "bad", User: "u1", Device: "d"})
	if err != nil || a.Status != "granted" {
		t.Fatalf("good claim: %+v %v", a, err)
	}
}
