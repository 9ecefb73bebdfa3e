package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// Tokens of the three admin roles in the role tests (the admin one is
// stack.AdminToken).
const (
	riskToken   = "test-risk-token-0123456789"
	viewerToken = "test-viewer-token-0123456789"
	// webhookSecret rides in alerts.webhook_url, as a chat webhook's does.
	webhookSecret = "webhook-secret-0123456789"
)

// roleTokens adds a risk and a viewer token to the stack's admin and
// checkout tokens.
func roleTokens(c *gateway.Config) {
	c.Admin.Tokens = map[string]string{stack.AdminToken: "admin", riskToken: "risk", viewerToken: "viewer", stack.CheckoutToken: "checkout"}
}

// codeCampaign creates code campaign id with n codes, claims the first one,
// and returns every code.
func codeCampaign(t *testing.T, s *stack.Stack, id string, n int) []string {
	t.Helper()
	createRaw(t, s, map[string]any{"id": id, "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 10, "audience": map[string]any{"mode": "code"}})
	var gen struct {
		Codes []string `json:"codes"`
	}
	if err := json.Unmarshal(adminOK(t, s, "POST", "/admin/v1/campaigns/"+id+"/codes", map[string]any{"count": n, "prefix": "SEC"}, 201), &gen); err != nil || len(gen.Codes) != n {
		t.Fatalf("codes: %v %v", gen, err)
	}
	body, _ := json.Marshal(map[string]string{"code": gen.Codes[0]})
	if a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: id, User: "code-user", Device: "d", Body: body}); err != nil || a.Status != "granted" {
		t.Fatalf("claim with a code: %+v %v", a, err)
	}
	return gen.Codes
}

// TestViewerCannotExportCodes: GET …/codes?format=csv streams every unused
// redemption code, so it needs role admin, like generating them; a viewer
// (and a risk token) gets 403 and not one code.
func TestViewerCannotExportCodes(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: roleTokens})
	codes := codeCampaign(t, s, "vault", 5)
	url := s.AdminURL + "/admin/v1/campaigns/vault/codes?format=csv"
	for _, tok := range []string{viewerToken, riskToken} {
		code, body := call(t, s, "GET", url, "Bearer "+tok, nil)
		if code != 403 {
			t.Errorf("token %s…: HTTP %d, want 403", tok[:9], code)
		}
		for _, c := range codes {
			if bytes.Contains(body, []byte(c)) {
				t.Fatalf("token %s… read code %s: %.200s", tok[:9], c, body)
			}
		}
	}
	code, body := call(t, s, "GET", url, "Bearer "+stack.AdminToken, nil)
	if code != 200 || !bytes.Contains(body, []byte(codes[4]+",unused,")) {
		t.Fatalf("admin export: HTTP %d %.300s", code, body)
	}
}

// TestViewerReadsNoSecrets: every GET of the admin listener, called with a
// viewer token, answers without a redemption code (used or unused), an admin
// token, the JWT secret or the alert webhook's secret.
func TestViewerReadsNoSecrets(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		roleTokens(c)
		c.Admin.Pprof = true
		c.Alerts.WebhookURL = "http://127.0.0.1:9/hook?key=" + webhookSecret
	}})
	codes := codeCampaign(t, s, "vault", 5)
	if code, b := call(t, s, "PUT", s.AdminURL+"/admin/v1/risk/blacklist/device/emulator-1", "Bearer "+riskToken, []byte(`{"reason":"farm"}`)); code != 200 {
		t.Fatalf("blacklist: %d %s", code, b)
	}
	if code, b := call(t, s, "PUT", s.AdminURL+"/admin/v1/risk/rules", "Bearer "+riskToken, []byte(`{"limits":[{"name":"per-ip","key":"ip","windows":[{"limit":100,"period":"1m"}]}]}`)); code != 200 {
		t.Fatalf("rules: %d %s", code, b)
	}
	secrets := append([]string{stack.AdminToken, riskToken, viewerToken, stack.Secret, webhookSecret}, codes...)
	fill := strings.NewReplacer("{id}", "vault", "{profile}", "cmdline")
	walked := 0
	for _, r := range gateway.Routes() {
		if r.Method != "GET" || !r.Admin {
			continue
		}
		for _, query := range []string{"", "?format=csv"} {
			code, body := call(t, s, "GET", s.AdminURL+fill.Replace(r.Path)+query, "Bearer "+viewerToken, nil)
			if code >= 500 {
				t.Errorf("GET %s%s as viewer: HTTP %d %.200s", r.Path, query, code, body)
			}
			for _, sec := range secrets {
				if bytes.Contains(body, []byte(sec)) {
					t.Errorf("GET %s%s as viewer (HTTP %d) reveals secret %.12s…", r.Path, query, code, sec)
				}
			}
			walked++
		}
	}
	if walked < 20 {
		t.Fatalf("walked only %d GETs", walked)
	}
}

// TestMetricsNotOnPublicListenerByDefault: /metrics is served on the admin
// listener, and on the public one only when metrics.public is set.
func TestMetricsNotOnPublicListenerByDefault(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	if code, body := call(t, s, "GET", s.PublicURL+"/metrics", "", nil); code != 404 || bytes.Contains(body, []byte("flashgate_claims_total")) {
		t.Errorf("public /metrics: HTTP %d %.100s, want 404", code, body)
	}
	if code, body := call(t, s, "GET", s.AdminURL+"/metrics", "", nil); code != 200 || !bytes.Contains(body, []byte("flashgate_claims_total")) {
		t.Errorf("admin /metrics: HTTP %d %.100s", code, body)
	}
	for _, p := range []string{"/healthz", "/readyz"} { // the load balancer's probes stay public
		for _, m := range []string{"GET", "HEAD"} {
			if code, _ := call(t, s, m, s.PublicURL+p, "", nil); code != 200 {
				t.Errorf("public %s %s: HTTP %d", m, p, code)
			}
		}
	}
}

// TestMetricsPublicWhenConfigured: metrics.public (or
// FLASHGATE_METRICS_PUBLIC) puts /metrics back on the public listener.
func TestMetricsPublicWhenConfigured(t *testing.T) {
	cfg, err := gateway.LoadConfig("", []string{"FLASHGATE_AUTH_HS256_SECRET=" + stack.Secret, "FLASHGATE_METRICS_PUBLIC=true"})
	if err != nil {
		t.Fatal(err)
	}
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Metrics = cfg.Metrics }})
	if code, body := call(t, s, "GET", s.PublicURL+"/metrics", "", nil); code != 200 || !bytes.Contains(body, []byte("flashgate_claims_total")) {
		t.Errorf("public /metrics with metrics.public: HTTP %d %.100s", code, body)
	}
	if _, err := gateway.LoadConfig("", []string{"FLASHGATE_AUTH_HS256_SECRET=" + stack.Secret, "FLASHGATE_METRICS_PUBLIC=sometimes"}); err == nil || !strings.Contains(err.Error(), "metrics.public") {
		t.Errorf("metrics.public=sometimes: %v", err)
	}
}
