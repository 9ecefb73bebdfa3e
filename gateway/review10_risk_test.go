package gateway_test

// Review 10: package risk against real servers — rules installed before
// Redis connects, rule PUTs racing the connect, risk writes in force when
// they answer, and limit windows under an injected clock away from the wall
// clock.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// review10GW is a gateway started like stack.Start, but without waiting for
// readiness (Redis may be down).
type review10GW struct {
	g        *gateway.Gateway
	public   string
	admin    string
	hc       *http.Client
	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan error
}

func review10Start(t *testing.T, redisAddr string, opts ...gateway.Option) *review10GW {
	t.Helper()
	cfg := gateway.DefaultConfig()
	cfg.PublicAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Redis.Addrs = []string{redisAddr}
	cfg.Auth.HS256Secret = stack.Secret
	cfg.Admin.Tokens = map[string]string{stack.AdminToken: "admin"}
	cfg.Log.Level = "warn"
	cfg.Shutdown.DrainDelay = 10 * time.Millisecond
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	g, err := gateway.New(context.Background(), cfg, append([]gateway.Option{gateway.WithLogger(log), gateway.WithSink(stack.NewSink)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Listen(); err != nil {
		g.Close()
		t.Fatal(err)
	}
	w := &review10GW{g: g, public: "http://" + g.PublicAddr(), admin: "http://" + g.AdminAddr(),
		hc: &http.Client{Timeout: 15 * time.Second}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() { w.done <- g.Run(ctx) }()
	t.Cleanup(w.stop)
	// Serving once the campaign and risk watches synced (Redis not needed).
	wait.For(t, 15*time.Second, "the admin listener to serve", func() bool {
		resp, err := w.hc.Get(w.admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return w
}

func (w *review10GW) stop() {
	w.stopOnce.Do(func() {
		w.cancel()
		<-w.done
		w.g.Close()
	})
}

func (w *review10GW) adminCall(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, w.admin+path, rd)
	req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (w *review10GW) ready(t *testing.T) {
	t.Helper()
	wait.For(t, 30*time.Second, "readiness", func() bool {
		code, _ := w.adminCall(t, "GET", "/readyz", nil)
		return code == 200
	})
}

func (w *review10GW) claim(t *testing.T, campaign, user, device string) stack.Answer {
	t.Helper()
	a, err := stack.Claim(context.Background(), w.hc, w.public, stack.ClaimRequest{Campaign: campaign, User: user, Device: device})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (w *review10GW) create(t *testing.T, id string, from, to time.Time) {
	t.Helper()
	def := map[string]any{"id": id, "name": id, "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 1000, "shards": 2,
		"per_user_limit": 100, "starts_at": from.UTC().Format(time.RFC3339), "ends_at": to.UTC().Format(time.RFC3339)}
	if code, b := w.adminCall(t, "POST", "/admin/v1/campaigns", def); code != 201 {
		t.Fatalf("create %s: %d %s", id, code, b)
	}
}

// TestReview10RulesInstalledBeforeRedisGetLimiters (passes; kept): a rule
// set that arrives while Redis is down is compiled without limiters; once
// Redis connects (SetRedis) its limits — per user and distinct devices —
// are enforced, not answered 503 "rate limit store unavailable".
func TestReview10RulesInstalledBeforeRedisGetLimiters(t *testing.T) {
	rs := redisserver.Start(t, redisserver.Options{})
	rs.Kill()
	w := review10Start(t, rs.Addr())
	rules := map[string]any{"limits": []any{
		map[string]any{"name": "per-user", "key": "user", "windows": []any{map[string]any{"limit": 2, "period": "1m"}}},
		map[string]any{"name": "one-device", "key": "user_devices", "windows": []any{map[string]any{"limit": 1, "period": "1m"}}},
	}}
	if code, b := w.adminCall(t, "PUT", "/admin/v1/risk/rules", rules); code != 200 {
		t.Fatalf("PUT rules with Redis down: %d %s", code, b)
	}
	rs.Restart()
	w.ready(t)
	w.create(t, "late", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if a := w.claim(t, "late", "u1", "d1"); a.Status != "granted" {
		t.Fatalf("first claim: %+v", a)
	}
	if a := w.claim(t, "late", "u1", "d2"); a.Status != "rate_limited" || a.Limit != "user_devices" {
		t.Fatalf("second device of u1: %+v, want rate_limited by user_devices", a)
	}
	if a := w.claim(t, "late", "u1", "d1"); a.Status != "rate_limited" || a.Limit != "user" {
		t.Fatalf("third claim of u1: %+v, want rate_limited by user", a)
	}
}

// TestReview10RulePutsRacingRedisConnect (passes; kept): rule sets PUT
// back to back, without pause, while Redis comes up and the gateway
// connects (installs and SetRedis serialized). Claims from readiness on,
// still during the PUTs, are never answered "rate limit store unavailable"
// (a set compiled without Redis replacing one compiled with it), and the
// last set is in force with its limiters.
func TestReview10RulePutsRacingRedisConnect(t *testing.T) {
	if testing.Short() {
		t.Skip("several gateways")
	}
	for iter := 0; iter < 3; iter++ {
		t.Run(fmt.Sprint(iter), func(t *testing.T) {
			rs := redisserver.Start(t, redisserver.Options{})
			rs.Kill()
			w := review10Start(t, rs.Addr())
			set := func(limit int) map[string]any {
				return map[string]any{"limits": []any{
					map[string]any{"name": "per-user", "key": "user", "windows": []any{map[string]any{"limit": limit, "period": "1m"}}},
					map[string]any{"name": "devs", "key": "user_devices", "windows": []any{map[string]any{"limit": 1000, "period": "1m"}}}}}
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var puts atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if code, b := w.adminCall(t, "PUT", "/admin/v1/risk/rules", set(1000+i)); code != 200 {
						t.Errorf("PUT rules: %d %s", code, b)
						return
					}
					puts.Add(1)
				}
			}()
			time.Sleep(time.Duration(30*iter) * time.Millisecond)
			rs.Restart()
			w.ready(t)
			atReady := puts.Load()
			w.create(t, "race", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
			for i := 0; i < 50; i++ {
				if a := w.claim(t, "race", fmt.Sprint("c-", i), "d"); a.Status != "granted" {
					t.Fatalf("claim %d after readiness, rule sets changing: %+v", i, a)
				}
			}
			close(stop)
			wg.Wait()
			if puts.Load() == atReady {
				t.Logf("no PUT after readiness (%d before)", atReady)
			}
			if code, b := w.adminCall(t, "PUT", "/admin/v1/risk/rules", set(1)); code != 200 {
				t.Fatalf("PUT rules: %d %s", code, b)
			}
			if a := w.claim(t, "race", "u1", "d1"); a.Status != "granted" {
				t.Fatalf("first claim: %+v", a)
			}
			if a := w.claim(t, "race", "u1", "d1"); a.Status != "rate_limited" {
				t.Fatalf("second claim under limit 1: %+v", a)
			}
		})
	}
}

// TestReview10RiskWritesInForceWhenAnswered (passes; kept): a blacklist PUT
// blocks the very next claim on this gateway, a DELETE unblocks it, and a
// rules PUT limits the very next claims — each write answers only once in
// force here, and well within the wait bound.
func TestReview10RiskWritesInForceWhenAnswered(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "bl", Stock: 100000, Shards: 2, PerUserLimit: 1000})
	ctx := context.Background()
	claim := func(user, dev string) stack.Answer {
		t.Helper()
		a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "bl", User: user, Device: dev})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	var slowest time.Duration
	timed := func(method, path string, body any) {
		t.Helper()
		t0 := time.Now()
		if code, b := s.Admin(method, path, body); code != 200 {
			t.Fatalf("%s %s: %d %s", method, path, code, b)
		}
		slowest = max(slowest, time.Since(t0))
	}
	for i := 0; i < 25; i++ {
		dev := fmt.Sprintf("dev-%d", i)
		timed("PUT", "/admin/v1/risk/blacklist/device/"+dev, map[string]string{"reason": "r10"})
		if a := claim(fmt.Sprint("bu-", i), dev); a.Status != "blocked" {
			t.Fatalf("iteration %d: claim right after the PUT answered: %+v", i, a)
		}
		// Re-PUT with a TTL: in force (still blocked) when answered.
		timed("PUT", "/admin/v1/risk/blacklist/device/"+dev, map[string]string{"reason": "r10 again", "ttl": "1h"})
		timed("DELETE", "/admin/v1/risk/blacklist/device/"+dev, nil)
		if a := claim(fmt.Sprint("bu2-", i), dev); a.Status != "granted" {
			t.Fatalf("iteration %d: claim right after the DELETE answered: %+v", i, a)
		}
	}
	for i := 0; i < 10; i++ {
		name := fmt.Sprint("lim-", i)
		timed("PUT", "/admin/v1/risk/rules", map[string]any{"limits": []any{
			map[string]any{"name": name, "key": "user", "windows": []any{map[string]any{"limit": 1, "period": "1m"}}}}})
		u := fmt.Sprint("ru-", i)
		if a := claim(u, "d"); a.Status != "granted" {
			t.Fatalf("iteration %d: first claim: %+v", i, a)
		}
		if a := claim(u, "d"); a.Status != "rate_limited" || a.Error != "limit "+name+" reached" {
			t.Fatalf("iteration %d: second claim right after rules %s answered: %+v", i, name, a)
		}
	}
	if slowest > time.Second {
		t.Fatalf("a risk write took %v to answer (it waits for its own watch, milliseconds)", slowest)
	}
}

// TestReview10LimitWindowResetsUnderInjectedClock (FAILS, on 4b8ccb8 too):
// the gateway's one clock (WithClock) is 30 minutes off the wall clock.
// Rules: per device 1 per 1m, then per user 1 per 1s. (a) Once Redis's 1s
// window has reset (and the evictor had its tick) the user may claim again;
// (b) a refusal by the 1m window says Retry-After ≈ 60. The over-limit
// cache stores the reset instant gateway/ratelimit computes on the wall
// clock and compares it with the injected clock's now (Check's now,
// evictOverLimitAt's Clock()): behind the wall clock a key stays "over" for
// 30 minutes (refused, Retry-After ≈ 1800, for a 1s window); ahead of it the
// cache never answers and every refusal says Retry-After: 1.
func TestReview10LimitWindowResetsUnderInjectedClock(t *testing.T) {
	for _, off := range []time.Duration{-30 * time.Minute, 30 * time.Minute} {
		t.Run(fmt.Sprint("offset=", off), func(t *testing.T) {
			clock := func() time.Time { return time.Now().Add(off) }
			s := stack.Start(t, stack.Options{GatewayOptions: []gateway.Option{gateway.WithClock(clock)}})
			def := map[string]any{"id": "win", "name": "win", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 1000, "shards": 1,
				"per_user_limit": 100, "starts_at": time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339), "ends_at": time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)}
			if code, b := s.Admin("POST", "/admin/v1/campaigns", def); code != 201 {
				t.Fatalf("create: %d %s", code, b)
			}
			if code, b := s.Admin("PUT", "/admin/v1/risk/rules", map[string]any{"limits": []any{
				map[string]any{"name": "per-device-1m", "key": "device", "windows": []any{map[string]any{"limit": 1, "period": "1m"}}},
				map[string]any{"name": "per-user-1s", "key": "user", "windows": []any{map[string]any{"limit": 1, "period": "1s"}}},
			}}); code != 200 {
				t.Fatalf("rules: %d %s", code, b)
			}
			ctx := context.Background()
			claim := func(user, dev string) stack.Answer {
				t.Helper()
				a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "win", User: user, Device: dev})
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			// (b) the 1m window's Retry-After.
			if a := claim("m1", "dm"); a.Status != "granted" {
				t.Fatalf("first claim on device dm: %+v", a)
			}
			time.Sleep(1100 * time.Millisecond) // m1's 1s user window passes
			if a := claim("m2", "dm"); a.Status != "rate_limited" || a.Limit != "device" {
				t.Fatalf("second claim on device dm: %+v", a)
			} else if ra, _ := strconv.Atoi(a.RetryAfter); ra < 50 || ra > 60 {
				t.Errorf("refused by a 1 per 1m window just opened: Retry-After %q, want about 60 (gateway clock %v from the wall clock)", a.RetryAfter, off)
			}
			// (a) the 1s window resets.
			if a := claim("w1", "d1"); a.Status != "granted" {
				t.Fatalf("first claim of w1: %+v", a)
			}
			if a := claim("w1", "d2"); a.Status != "rate_limited" || a.Limit != "user" {
				t.Fatalf("second claim of w1 within the 1s window: %+v", a)
			}
			time.Sleep(3 * time.Second) // the window reset in Redis; the evictor ticked (2s)
			if a := claim("w1", "d3"); a.Status != "granted" {
				t.Fatalf("claim 3s after a 1 per 1s window opened (gateway clock %v from the wall clock): %+v, want granted", off, a)
			}
		})
	}
}

// TestReview10ClaimsWhileRulesAndBlacklistChange (passes; kept, meant for
// -race): claims from several goroutines while rule sets are installed and
// blacklist entries put and deleted: every answer is one a claim may give
// under these rules (no 503, no 500, no panic), and a limit of the final set
// holds at once.
func TestReview10ClaimsWhileRulesAndBlacklistChange(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "churn", Stock: 1_000_000, Shards: 4, PerUserLimit: 1000})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var bad atomic.Value
	var n atomic.Int64
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "churn", User: fmt.Sprintf("cu-%d", i%7), Device: fmt.Sprintf("cd-%d-%d", g, i%3)})
				if err != nil {
					bad.Store(err.Error())
					return
				}
				n.Add(1)
				switch a.Status {
				case "granted", "rate_limited", "blocked":
				default:
					bad.Store(fmt.Sprintf("%+v", a))
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		lim := 3 + i%5
		if code, b := s.Admin("PUT", "/admin/v1/risk/rules", map[string]any{"limits": []any{
			map[string]any{"name": fmt.Sprint("u", i%2), "key": "user", "windows": []any{map[string]any{"limit": lim, "period": "2s"}}},
			map[string]any{"name": "ud", "key": "user_devices", "windows": []any{map[string]any{"limit": 10, "period": "1m"}}},
			map[string]any{"name": "sh", "key": "device", "shadow": true, "windows": []any{map[string]any{"limit": 1, "period": "1m"}}},
		}}); code != 200 {
			t.Fatalf("rules: %d %s", code, b)
		}
		dev := fmt.Sprintf("cd-%d-%d", i%6, i%3)
		if code, b := s.Admin("PUT", "/admin/v1/risk/blacklist/device/"+dev, map[string]string{"reason": "churn"}); code != 200 {
			t.Fatalf("blacklist: %d %s", code, b)
		}
		if code, b := s.Admin("DELETE", "/admin/v1/risk/blacklist/device/"+dev, nil); code != 200 {
			t.Fatalf("blacklist delete: %d %s", code, b)
		}
	}
	cancel()
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("unexpected answer under churn: %v", v)
	}
	if n.Load() == 0 {
		t.Fatal("no claims ran")
	}
	if code, b := s.Admin("PUT", "/admin/v1/risk/rules", map[string]any{"limits": []any{
		map[string]any{"name": "final", "key": "user", "windows": []any{map[string]any{"limit": 1, "period": "1m"}}}}}); code != 200 {
		t.Fatalf("rules: %d %s", code, b)
	}
	for i, want := range []string{"granted", "rate_limited"} {
		a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "churn", User: "final-user", Device: "fd"})
		if err != nil || a.Status != want {
			t.Fatalf("claim %d under the final set: %+v %v, want %s", i, a, err, want)
		}
	}
}
