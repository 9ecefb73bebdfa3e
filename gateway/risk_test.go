package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/stack"
)

func putRules(t *testing.T, s *stack.Stack, rules string) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(rules), &v); err != nil {
		t.Fatal(err)
	}
	if code, body := s.Admin("PUT", "/admin/v1/risk/rules", v); code != 200 {
		t.Fatalf("PUT rules: %d %s", code, body)
	}
}

// TestBotsAgainstRealUsersOnTwoGateways: 50 bots sharing 3 IPs and 5 devices
// hammer two gateways that share Redis, NATS and the store, next to 2000
// real users; stock 500. Limits per IP (10/min) and per device (6/min) bound
// the bots to min(3×10, 5×6) = 30 grants however many taps they send; the
// real users get the rest. A blacklist entry and a rule change made through
// gateway A take effect on gateway B within a second.
func TestBotsAgainstRealUsersOnTwoGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("two-gateway risk test skipped in -short")
	}
	ns := natsserver.Start(t)
	dsn := pgtest.Fresh(t)
	var a, b *stack.Stack
	tweak := func(node string) func(*gateway.Config) {
		return func(c *gateway.Config) {
			c.NodeID = node
			c.NATS.URL = ns.URL()
			c.Store.Driver, c.Store.DSN = "postgres", dsn
			c.Auth.TrustedProxies = []string{"127.0.0.1"}
		}
	}
	a = stack.Start(t, stack.Options{Tweak: tweak("gw-a")})
	b = stack.Start(t, stack.Options{Redis: a.Redis, Tweak: tweak("gw-b")})
	putRules(t, a, `{"limits":[
		{"name":"per-ip","key":"ip","windows":[{"limit":10,"period":"1m"}]},
		{"name":"per-device","key":"device","windows":[{"limit":6,"period":"1m"}]}]}`)
	a.CreateCampaign(stack.Campaign{ID: "bots", Stock: 500, Shards: 4})

	var botGrants, userGrants, limited, blocked atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	gws := []*stack.Stack{a, b}
	for i := 0; i < 50; i++ { // bots: 20 taps each, alternating gateways
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				ans, err := gws[k%2].ClaimFrom(ctx, stack.ClaimRequest{Campaign: "bots", User: fmt.Sprintf("bot-%d-%d", i, k), Device: fmt.Sprintf("bot-device-%d", i%5)}, fmt.Sprintf("198.18.0.%d", 1+i%3))
				if err != nil {
					t.Error(err)
					return
				}
				switch ans.Status {
				case "granted":
					botGrants.Add(1)
				case "rate_limited":
					limited.Add(1)
					if ans.RetryAfter == "" || (ans.Limit != "ip" && ans.Limit != "device") {
						t.Errorf("rate_limited answer without Retry-After or limit: %+v", ans)
					}
				}
			}
		}()
	}
	sem := make(chan struct{}, 64)
	for u := 0; u < 2000; u++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ans, err := gws[u%2].ClaimFrom(ctx, stack.ClaimRequest{Campaign: "bots", User: fmt.Sprintf("user-%d", u), Device: fmt.Sprintf("phone-%d", u)},
				fmt.Sprintf("10.1.%d.%d", u/250, u%250))
			if err != nil {
				t.Error(err)
				return
			}
			switch ans.Status {
			case "granted":
				userGrants.Add(1)
			case "rate_limited", "blocked":
				blocked.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := botGrants.Load(); n > 30 {
		t.Fatalf("bots got %d grants, limits allow at most 30", n)
	}
	if blocked.Load() != 0 {
		t.Fatalf("%d real users were limited", blocked.Load())
	}
	if botGrants.Load()+userGrants.Load() != 500 {
		t.Fatalf("bots %d + users %d ≠ stock 500", botGrants.Load(), userGrants.Load())
	}
	t.Logf("bots: %d grants, %d rate-limited answers; real users: %d grants", botGrants.Load(), limited.Load(), userGrants.Load())

	// A blacklist entry made through A blocks on B within a second.
	start := time.Now()
	if code, body := a.Admin("PUT", "/admin/v1/risk/blacklist/ip/203.0.113.99", map[string]string{"reason": "bot farm"}); code != 200 {
		t.Fatalf("blacklist: %d %s", code, body)
	}
	for {
		ans, err := b.ClaimFrom(ctx, stack.ClaimRequest{Campaign: "bots", User: "late-user", Device: "late"}, "203.0.113.99")
		if err == nil && ans.Status == "blocked" && ans.HTTP == 403 {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("blacklist not in force on B after 1s (last answer %+v %v)", ans, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("blacklist reached gateway B in %v", time.Since(start))
	// A rule change made through A is in force on B within a second.
	start = time.Now()
	putRules(t, a, `{"limits":[{"name":"per-user","key":"user","windows":[{"limit":1,"period":"1m"}]}]}`)
	for {
		_, body := b.Admin("GET", "/admin/v1/risk/rules", nil)
		if strings.Contains(string(body), `"per-user"`) {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("rules not in force on B after 1s: %s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// And the audit log says who changed what.
	_, body := b.Admin("GET", "/admin/v1/risk/audit", nil)
	var audit struct {
		Entries []struct {
			Actor, Action, Target string
			Before, After         json.RawMessage
		} `json:"entries"`
	}
	json.Unmarshal(body, &audit)
	if len(audit.Entries) < 3 || audit.Entries[0].Action != "rules.put" || !strings.HasPrefix(audit.Entries[0].Actor, "admin:") ||
		!strings.Contains(string(audit.Entries[0].Before), "per-ip") || !strings.Contains(string(audit.Entries[0].After), "per-user") {
		t.Fatalf("audit log: %s", body)
	}
}

// TestShadowRuleBlocksNothing: a rule in shadow mode lets every claim
// through and reports what it would have blocked (metric and alert).
func TestShadowRuleBlocksNothing(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth.TrustedProxies = []string{"127.0.0.1"} }})
	putRules(t, s, `{"limits":[{"name":"per-ip-shadow","key":"ip","windows":[{"limit":2,"period":"1m"}],"shadow":true}]}`)
	s.CreateCampaign(stack.Campaign{ID: "shadow", Stock: 100, Shards: 1})
	for i := 0; i < 10; i++ {
		ans, err := s.ClaimFrom(context.Background(), stack.ClaimRequest{Campaign: "shadow", User: fmt.Sprint("s", i), Device: fmt.Sprint("d", i)}, "203.0.113.5")
		if err != nil || ans.Status != "granted" {
			t.Fatalf("claim %d under a shadow rule: %+v %v", i, ans, err)
		}
	}
	if n := metric(t, s.Gateway, `flashgate_risk_shadow_would_block_total{rule="per-ip-shadow"}`); n != 8 {
		t.Fatalf("shadow count %v, want 8", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, body := s.Admin("GET", "/admin/v1/risk/alerts", nil)
		if strings.Contains(string(body), `"kind":"shadow_block"`) && strings.Contains(string(body), "203.0.113.5") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no shadow alert: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestForwardedForOnlyFromTrustedProxies: an X-Forwarded-For header from an
// untrusted peer is ignored; behind a trusted proxy the right-most untrusted
// hop is the client.
func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		trusted []string
		xff     string
		blocked bool
	}{
		{"untrusted peer: spoofed header ignored", nil, "203.0.113.9", false},
		{"trusted proxy: client is the right-most untrusted hop", []string{"127.0.0.1"}, "6.6.6.6, 203.0.113.9", true},
		{"trusted proxy: a spoofed left entry does not win", []string{"127.0.0.1"}, "203.0.113.9, 198.51.100.1", false},
		{"trusted chain: trusted hops are skipped", []string{"127.0.0.1", "10.0.0.0/8"}, "203.0.113.9, 10.9.9.9", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth.TrustedProxies = tc.trusted }})
			s.CreateCampaign(stack.Campaign{ID: "xff", Stock: 10, Shards: 1})
			if code, body := s.Admin("PUT", "/admin/v1/risk/blacklist/ip/203.0.113.9", map[string]string{"reason": "test"}); code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			ans, err := s.ClaimFrom(ctx, stack.ClaimRequest{Campaign: "xff", User: "u1", Device: "d1"}, tc.xff)
			if err != nil {
				t.Fatal(err)
			}
			if (ans.Status == "blocked") != tc.blocked {
				t.Fatalf("answer %+v, want blocked=%v", ans, tc.blocked)
			}
		})
	}
	// The peer itself can be blacklisted.
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "peer", Stock: 10, Shards: 1})
	s.Admin("PUT", "/admin/v1/risk/blacklist/cidr/127.0.0.0%2F8", map[string]string{"reason": "loopback", "ttl": "1h"})
	if ans, _ := s.ClaimFrom(ctx, stack.ClaimRequest{Campaign: "peer", User: "u", Device: "d"}, "203.0.113.1"); ans.Status != "blocked" {
		t.Fatalf("peer in a blacklisted CIDR: %+v", ans)
	}
}

// TestLimitRuleWithRedisDown: a fail-closed rule refuses claims (503) when
// its counts cannot be read; a fail-open rule is skipped.
func TestLimitRuleWithRedisDown(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprint("fail_open=", failOpen), func(t *testing.T) {
			s := stack.Start(t, stack.Options{})
			putRules(t, s, fmt.Sprintf(`{"limits":[{"name":"per-user","key":"user","windows":[{"limit":5,"period":"1m"}],"fail_open":%v}]}`, failOpen))
			s.CreateCampaign(stack.Campaign{ID: "rd", Stock: 10, Shards: 1})
			s.Redis.Kill()
			ans, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "rd", User: "u1", Device: "d"})
			if err != nil || ans.HTTP != 503 || ans.RetryAfter == "" {
				t.Fatalf("answer %+v %v", ans, err)
			}
			// Closed: refused at the limit. Open: the limit is skipped and the
			// claim fails at the stock, which needs Redis too.
			want := "rate limit store unavailable"
			if failOpen {
				want = "stock unavailable"
			}
			if ans.Error != want {
				t.Fatalf("error %q, want %q", ans.Error, want)
			}
		})
	}
}

// TestAlertWebhookOncePerCooldown: a webhook receiver gets each alert once
// per cool-down, and invalid rules are refused with the field named while
// the last good set stays in force.
func TestAlertWebhookOncePerCooldown(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var a struct{ Kind, Key string }
		json.Unmarshal(b, &a)
		mu.Lock()
		got[a.Kind+" "+a.Key]++
		mu.Unlock()
	}))
	defer hook.Close()
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		c.Auth.TrustedProxies = []string{"127.0.0.1"}
		c.Alerts.WebhookURL = hook.URL
	}})
	putRules(t, s, `{"alerts":{"claim_rate":[{"key":"ip","limit":3,"period":"1s"}],"cooldown":"2s"}}`)
	s.CreateCampaign(stack.Campaign{ID: "al", Stock: 1000, Shards: 1})
	burst := func(n int) {
		for i := 0; i < n; i++ {
			s.ClaimFrom(context.Background(), stack.ClaimRequest{Campaign: "al", User: fmt.Sprintf("a%d-%d", n, i), Device: "d"}, "203.0.113.50")
		}
	}
	burst(20) // one alert, then the cool-down holds the rest
	time.Sleep(500 * time.Millisecond)
	burst(10)
	time.Sleep(2100 * time.Millisecond)
	burst(10) // after the cool-down: a second alert
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		n := got["claim_rate_ip 203.0.113.50"]
		mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			if n != 2 {
				t.Fatalf("webhook got %d alerts for the IP, want 2 (%v)", n, got)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Invalid rules: refused, the field named, the last good set kept.
	code, body := s.Admin("PUT", "/admin/v1/risk/rules", map[string]any{"limits": []any{map[string]any{"name": "x", "key": "planet", "windows": []any{}}}})
	if code != 400 || !strings.Contains(string(body), "limits[0].key") || !strings.Contains(string(body), "limits[0].windows") {
		t.Fatalf("invalid rules: %d %s", code, body)
	}
	if _, body := s.Admin("GET", "/admin/v1/risk/rules", nil); !strings.Contains(string(body), `"claim_rate"`) {
		t.Fatalf("last good rules not in force: %s", body)
	}
}

// TestDevicesPerUserLimit: a user may claim from at most 2 devices per
// window; a third device is refused (429, limit user_devices) while the
// first two keep working.
func TestDevicesPerUserLimit(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	putRules(t, s, `{"limits":[{"name":"devices-per-user","key":"user_devices","windows":[{"limit":2,"period":"1m"}]}]}`)
	s.CreateCampaign(stack.Campaign{ID: "dpu", Stock: 100, Shards: 1, PerUserLimit: 10})
	ctx := context.Background()
	for i, c := range []struct{ device, want string }{{"phone", "granted"}, {"tablet", "granted"}, {"farm-1", "rate_limited"}, {"phone", "granted"}, {"farm-2", "rate_limited"}} {
		a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "dpu", User: "sharer", Device: c.device, IdempotencyKey: fmt.Sprint("k", i)})
		if err != nil || a.Status != c.want || (a.Status == "rate_limited" && a.Limit != "user_devices") {
			t.Fatalf("claim %d from %s: %+v %v, want %s", i, c.device, a, err, c.want)
		}
	}
}
