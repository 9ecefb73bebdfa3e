package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/wait"
)

// Allocation budgets of one granted claim through the whole handler
// (handleClaim: parse → JWT verify → risk keys and counts → claim script
// args and run → ledger record and synced append → answer), each claim a new
// user with a new token (as in a drop: the token cache never hits), against
// a real redis-server and Pebble ledger, the relay publishing to embedded
// JetStream meanwhile (no sink). Measured with testing.AllocsPerRun over
// claimAllocRuns claims, one after another. AllocsPerRun counts the whole
// process, so the goroutines serving the claim are counted with it:
// rueidis, the ledger's commit, markSettled's HDEL and the relay, which
// with claims arriving one at a time publishes one JetStream message per
// grant (its worst case; under load it batches up to 256). The figures when
// the budgets were set (go1.26.8, 2 cores):
//
//	                                      first (jwt/v5,     with the pinned-
//	                                      Get before append)  alg verifier and
//	                                                          AppendNew
//	no rules                              171-174            130
//	3 limit windows (ip, device, user)    188                146
//
// A change that allocates more per claim fails here: look for what it
// allocates (go test ./gateway -run ClaimHandlerAllocs -memprofile m.prof
// -memprofilerate 1) before raising a budget; a change that allocates less
// should lower it. Under -race the figures are logged, not enforced.
const (
	claimAllocRuns           = 2000
	claimAllocsBudget        = 130 + 6 + invariantsAllocs
	claimAllocsBudgetWindows = 146 + 6 + invariantsAllocs
)

// TestClaimHandlerAllocs: every claim of the run is granted, and a claim
// allocates within its budget.
func TestClaimHandlerAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("claim allocation budget skipped in -short")
	}
	g, admin := allocGateway(t)
	for _, tc := range []struct {
		name   string
		rules  string
		budget float64
	}{
		{"no rules", `{}`, claimAllocsBudget},
		{"3 windows", `{"limits":[
			{"name":"a-ip","key":"ip","windows":[{"limit":1000000000,"period":"1m"}]},
			{"name":"a-device","key":"device","windows":[{"limit":1000000,"period":"1m"}]},
			{"name":"a-user","key":"user","windows":[{"limit":1000000,"period":"1m"}]}]}`, claimAllocsBudgetWindows},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin("PUT", "/admin/v1/risk/rules", tc.rules, 200)
			id := fmt.Sprintf("allocs-%d", time.Now().UnixNano())
			admin("POST", "/admin/v1/campaigns", fmt.Sprintf(`{"id":%q,"name":"allocs","coupon":{"type":"voucher","amount":500},"stock":1000000,"shards":4,
				"starts_at":%q,"ends_at":%q}`, id, time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)), 201)
			wait.For(t, 5*time.Second, "the campaign in the local registry", func() bool { _, ok := g.reg.Get(id); return ok })

			n := claimAllocRuns + 1 // AllocsPerRun runs the function once more to warm up
			authz, devices, keys := make([][]byte, n), make([][]byte, n), make([][]byte, n)
			for i := range authz {
				tok, err := MintHS256(g.cfg.Auth.HS256Secret, fmt.Sprintf("alloc-user-%s-%d", tc.name[:1], i), time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				authz[i], devices[i], keys[i] = []byte("Bearer "+tok), []byte(fmt.Sprintf("alloc-device-%d", i)), []byte(fmt.Sprintf("tap-%d", i))
			}
			var req fasthttp.Request
			req.Header.SetMethod("POST")
			req.SetRequestURI("/v1/campaigns/" + id + "/claim")
			var ctx fasthttp.RequestCtx
			ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 40000}, nil)
			campaign := []byte(id)
			i, failed := 0, 0
			claim := func() {
				ctx.Request.Header.SetBytesV("Authorization", authz[i])
				ctx.Request.Header.SetBytesV("X-Device-ID", devices[i])
				ctx.Request.Header.SetBytesV("Idempotency-Key", keys[i])
				ctx.Response.Reset()
				g.handleClaim(&ctx, campaign)
				if ctx.Response.StatusCode() != 200 {
					failed++
				}
				i++
			}
			allocs := testing.AllocsPerRun(claimAllocRuns, claim)
			if failed > 0 {
				t.Fatalf("%d of %d claims not granted; last answer %d %s", failed, i, ctx.Response.StatusCode(), ctx.Response.Body())
			}
			t.Logf("%s: %.0f allocations per granted claim (budget %.0f)", tc.name, allocs, tc.budget)
			if allocs > tc.budget && !raceEnabled {
				t.Fatalf("%s: %.0f allocations per claim, budget %.0f", tc.name, allocs, tc.budget)
			}
		})
	}
}

// allocGateway runs a gateway (embedded JetStream, no sink) on a real
// redis-server until the test ends, and returns it with an admin caller
// that fails the test on an unexpected HTTP code.
func allocGateway(t *testing.T) (*Gateway, func(method, path, body string, want int)) {
	t.Helper()
	redis := redisserver.Start(t, redisserver.Options{})
	cfg := DefaultConfig()
	cfg.PublicAddr, cfg.AdminAddr, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	cfg.Redis.Addrs = []string{redis.Addr()}
	cfg.Auth.HS256Secret = "alloc-secret-0123456789-0123456789-abcdef"
	const adminToken = "alloc-admin-token-0123456789"
	cfg.Admin.Tokens = map[string]string{adminToken: "admin"}
	cfg.Shutdown.DrainDelay = 10 * time.Millisecond
	cfg.Sink.Embedded = false // the handler's cost, not the store's
	g, err := New(context.Background(), cfg, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Listen(); err != nil {
		g.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; g.Close() })
	hc := &http.Client{Timeout: 10 * time.Second}
	adminURL := "http://" + g.AdminAddr()
	wait.For(t, 15*time.Second, "the gateway to be ready", func() bool {
		resp, err := hc.Get(adminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	call := func(method, path, body string, want int) {
		t.Helper()
		if !json.Valid([]byte(body)) {
			t.Fatalf("%s %s: invalid JSON body", method, path)
		}
		req, _ := http.NewRequest(method, adminURL+path, bytes.NewReader([]byte(body)))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != want {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s %s: HTTP %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
	}
	return g, call
}
