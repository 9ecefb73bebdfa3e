package gateway_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestJWTIssuerAndAudienceChecked: with auth.issuer and auth.audience set, a
// claim token must carry that iss and that aud; without them, or with
// others, it is 401. Bad values are refused at start with the key named.
func TestJWTIssuerAndAudienceChecked(t *testing.T) {
	const iss, aud = "https://id.shop.example", "flashgate"
	cfg, err := gateway.LoadConfig("", []string{"FLASHGATE_AUTH_HS256_SECRET=" + stack.Secret,
		"FLASHGATE_AUTH_ISSUER=" + iss, "FLASHGATE_AUTH_AUDIENCE=" + aud})
	if err != nil {
		t.Fatal(err)
	}
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth = cfg.Auth }})
	s.CreateCampaign(stack.Campaign{ID: "aud", Stock: 100, Shards: 1})
	exp := time.Now().Add(time.Hour).Unix()
	cases := []struct {
		name   string
		claims jwt.MapClaims
		want   int
	}{
		{"right iss and aud", jwt.MapClaims{"sub": "u-ok", "exp": exp, "iss": iss, "aud": aud}, 200},
		{"aud as a list holding ours", jwt.MapClaims{"sub": "u-list", "exp": exp, "iss": iss, "aud": []string{"other", aud}}, 200},
		{"no iss", jwt.MapClaims{"sub": "u1", "exp": exp, "aud": aud}, 401},
		{"other iss", jwt.MapClaims{"sub": "u2", "exp": exp, "iss": "https://evil.example", "aud": aud}, 401},
		{"no aud", jwt.MapClaims{"sub": "u3", "exp": exp, "iss": iss}, 401},
		{"other aud", jwt.MapClaims{"sub": "u4", "exp": exp, "iss": iss, "aud": "another-service"}, 401},
		{"neither", jwt.MapClaims{"sub": "u5", "exp": exp}, 401},
	}
	for _, tc := range cases {
		tok := signed(t, jwt.SigningMethodHS256, []byte(stack.Secret), tc.claims)
		code, body := call(t, s, "POST", s.PublicURL+"/v1/campaigns/aud/claim", "Bearer "+tok, nil)
		if code != tc.want {
			t.Errorf("%s: HTTP %d %s, want %d", tc.name, code, body, tc.want)
		}
		if tc.want == 401 && !bytes.Contains(body, []byte(`"status":"unauthenticated"`)) {
			t.Errorf("%s: %s", tc.name, body)
		}
	}
	for _, env := range [][]string{
		{"FLASHGATE_AUTH_ISSUER=has space"},
		{"FLASHGATE_AUTH_AUDIENCE=" + strings.Repeat("a", 300)},
		{"FLASHGATE_AUTH_MODE=trusted-header", "FLASHGATE_AUTH_TRUSTED_PROXIES=10.0.0.1", "FLASHGATE_AUTH_ISSUER=" + iss},
	} {
		_, err := gateway.LoadConfig("", append([]string{"FLASHGATE_AUTH_HS256_SECRET=" + stack.Secret}, env...))
		key := "auth.issuer"
		if strings.Contains(env[0], "AUDIENCE") {
			key = "auth.audience"
		}
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%v: %v, want an error naming %s", env, err, key)
		}
	}
}
