package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flashgate/flashgate/internal/wait"
)

// MintHS256 returns an HS256 token for sub, expiring after ttl (development
// and tests; production tokens come from the platform's identity service).
func MintHS256(secret, sub string, ttl time.Duration) (string, error) {
	return MintHS256For(secret, sub, "", "", ttl)
}

// MintHS256For is MintHS256 with an iss and an aud (each omitted when
// empty), for a gateway configured with auth.issuer / auth.audience.
func MintHS256For(secret, sub, issuer, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	c := jwt.RegisteredClaims{
		Subject:   sub,
		Issuer:    issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
}

// SetUpDemo waits for the gateway to be ready, creates the demo campaign
// through the admin API (skipped if it exists) and prints how to claim.
func SetUpDemo(ctx context.Context, cfg Config, publicAddr, adminAddr string, out io.Writer) error {
	var adminToken, checkoutToken string
	for tok, r := range cfg.Admin.Tokens {
		switch r {
		case "admin":
			adminToken = tok
		case "checkout":
			checkoutToken = tok
		}
	}
	if adminToken == "" || cfg.Auth.HS256Secret == "" {
		return fmt.Errorf("demo needs an admin token and auth.hs256_secret in the config")
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	ready := wait.Until(ctx, 30*time.Second, func() bool {
		resp, err := hc.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !ready {
		return fmt.Errorf("gateway not ready after 30s (is redis running?)")
	}
	id, note, err := createDemo(ctx, hc, adminAddr, adminToken)
	if err != nil {
		return err
	}
	tok, err := MintHS256For(cfg.Auth.HS256Secret, "demo-user-1", cfg.Auth.Issuer, cfg.Auth.Audience, 24*time.Hour)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `
flashgate is running: public http://%[1]s  admin http://%[2]s
%[5]sA demo campaign %[6]q (1000 × $5 off $30, one per user) is live. Claim one:

  curl -s -X POST http://%[1]s/v1/campaigns/%[6]s/claim \
    -H 'Authorization: Bearer %[3]s' \
    -H 'X-Device-ID: demo-device-1' -H 'Idempotency-Key: tap-1'

Its live figures:

  curl -s -H 'Authorization: Bearer %[4]s' http://%[2]s/admin/v1/campaigns/%[6]s
%[7]s
Ctrl-C stops the gateway.
`, publicAddr, adminAddr, tok, adminToken, note, id, demoCheckout(publicAddr, tok, checkoutToken))
	return nil
}

// demoCheckout is the demo's next step, using the coupon (README, "Using a
// coupon"), when a checkout token is configured.
func demoCheckout(publicAddr, userToken, checkoutToken string) string {
	if checkoutToken == "" {
		return ""
	}
	return fmt.Sprintf(`
Price an order with it (the user's token), then the order service (role checkout) locks and uses it:

  curl -s -X POST http://%[1]s/v1/checkout/quote -H 'Authorization: Bearer %[2]s' \
    -d '{"items":[{"sku":"tea-1","store_id":"s1","unit_price":1800,"quantity":2}]}'
  curl -s -X POST http://%[1]s/v1/checkout/redeem -H 'Authorization: Bearer %[3]s' -H 'X-User-ID: demo-user-1' \
    -d '{"order_id":"o-1","items":[{"sku":"tea-1","store_id":"s1","unit_price":1800,"quantity":2}],"grant_ids":["<grant_id>"]}'
  curl -s -X POST http://%[1]s/v1/orders/o-1/confirm -H 'Authorization: Bearer %[3]s' -H 'X-User-ID: demo-user-1'
`, publicAddr, userToken, checkoutToken)
}

// demoIDsMax bounds the ids tried for the demo campaign.
const demoIDsMax = 20

// createDemo creates the demo campaign (an existing one is reused). Redis may
// hold the state of an earlier demo whose definition is gone (a fresh clone
// or data dir against a redis-server that kept running); ids are never
// reused over another campaign's state, so the next free id is taken:
// demo, demo-2, demo-3, …
func createDemo(ctx context.Context, hc *http.Client, adminAddr, adminToken string) (id, note string, err error) {
	now := time.Now().UTC()
	for n := 1; n <= demoIDsMax; n++ {
		id = "demo"
		if n > 1 {
			id = fmt.Sprintf("demo-%d", n)
		}
		body := fmt.Sprintf(`{"id":%q,"name":"$5 off $30","coupon":{"type":"threshold","tiers":[{"min":3000,"off":500}]},
"stock":1000,"per_user_limit":1,"shards":4,"starts_at":%q,"ends_at":%q,"validity":{"mode":"days_after_claim","days":7}}`,
			id, now.Add(-time.Minute).Format(time.RFC3339), now.Add(30*24*time.Hour).Format(time.RFC3339))
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+adminAddr+"/admin/v1/campaigns", bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err != nil {
			return "", "", err
		}
		var answer struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&answer)
		resp.Body.Close()
		switch {
		case resp.StatusCode == 409 && answer.Status == "leftover_state":
			note = "(Redis keeps the state of an earlier demo whose definition is gone — a new data dir against a\n" +
				"redis-server that kept running — so this run's demo has a new id.)\n"
			continue
		case resp.StatusCode != 201 && resp.StatusCode != 409:
			return "", "", fmt.Errorf("creating the demo campaign: HTTP %d %s", resp.StatusCode, answer.Error)
		}
		return id, note, nil
	}
	return "", "", fmt.Errorf("the demo campaign cannot be created: Redis holds earlier demos' state under demo … demo-%d; "+
		"restart that redis-server empty or delete its fg:{demo* keys", demoIDsMax)
}
