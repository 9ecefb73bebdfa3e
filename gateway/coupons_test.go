package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

func adminOK(t *testing.T, s *stack.Stack, method, path string, body any, want int) []byte {
	t.Helper()
	code, b := s.Admin(method, path, body)
	if code != want {
		t.Fatalf("%s %s: HTTP %d %s", method, path, code, b)
	}
	return b
}

func createRaw(t *testing.T, s *stack.Stack, def map[string]any) {
	t.Helper()
	def["starts_at"] = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	if _, ok := def["ends_at"]; !ok {
		def["ends_at"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	}
	if _, ok := def["name"]; !ok {
		def["name"] = def["id"]
	}
	adminOK(t, s, "POST", "/admin/v1/campaigns", def, 201)
}

// TestTargetedCampaign: only users on the campaign's list can claim.
func TestTargetedCampaign(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "vip", "coupon": map[string]any{"type": "voucher", "amount": 1000}, "stock": 100, "shards": 4, "audience": map[string]any{"mode": "targeted"}})
	users := make([]string, 50)
	for i := range users {
		users[i] = fmt.Sprintf("vip-%d", i)
	}
	b := adminOK(t, s, "POST", "/admin/v1/campaigns/vip/audience", map[string]any{"users": users}, 200)
	if !strings.Contains(string(b), `"added":50`) {
		t.Fatalf("audience: %s", b)
	}
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "vip", User: fmt.Sprintf("outsider-%d", i), Device: "d"}); a.Status != "not_eligible" || a.HTTP != 403 {
			t.Fatalf("outsider answered %+v", a)
		}
		if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "vip", User: users[i], Device: "d"}); a.Status != "granted" {
			t.Fatalf("insider answered %+v", a)
		}
	}
	if st := s.CampaignStats("vip"); st.Granted != 50 || st.Rejected["not_eligible"] < 0 {
		t.Fatalf("stats %+v", st)
	}
	// A full batch of 100,000 ids in one request.
	bulk := make([]string, 100000)
	for i := range bulk {
		bulk[i] = fmt.Sprintf("bulk-user-%07d", i)
	}
	if b := adminOK(t, s, "POST", "/admin/v1/campaigns/vip/audience", map[string]any{"users": bulk}, 200); !strings.Contains(string(b), `"added":100000`) || !strings.Contains(string(b), `"audience_size":100050`) {
		t.Fatalf("bulk audience: %s", b)
	}
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "vip", User: "bulk-user-0099999", Device: "d"}); a.Status != "granted" {
		t.Fatalf("bulk member: %+v", a)
	}
	// A code operation on a targeted campaign is refused.
	if code, _ := s.Admin("POST", "/admin/v1/campaigns/vip/codes", map[string]any{"count": 5}); code != 400 {
		t.Fatalf("codes on a targeted campaign: %d", code)
	}
}

// TestCodeGrantsOnceUnderConcurrency: each code grants once under 100
// concurrent tries of it; wrong or used codes get not_eligible; guessing is
// rate-limited; the CSV export shows each code's state.
// claimRetriesMax bounds a test client's retries of a 503 (unknown outcome).
const claimRetriesMax = 20

func TestCodeGrantsOnceUnderConcurrency(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "codes", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "audience": map[string]any{"mode": "code"}})
	var gen struct {
		Generated int      `json:"generated"`
		Bits      int      `json:"bits_per_code"`
		Codes     []string `json:"codes"`
	}
	json.Unmarshal(adminOK(t, s, "POST", "/admin/v1/campaigns/codes/codes", map[string]any{"count": 20, "prefix": "D11"}, 201), &gen)
	format := regexp.MustCompile(`^D11-[0-9A-HJKMNP-TV-Z]{16}$`)
	if gen.Generated != 20 || gen.Bits < 60 || len(gen.Codes) != 20 || !format.MatchString(gen.Codes[0]) {
		t.Fatalf("generated %+v", gen)
	}
	ctx := context.Background()
	var granted atomic.Int64
	winners := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for ci, code := range gen.Codes {
		for try := 0; try < 100; try++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body, _ := json.Marshal(map[string]string{"code": code})
				// 2,000 claims at once can outlast claim.timeout on a loaded
				// machine (-race): a 503 is an unknown outcome, and the client
				// retries it with the same Idempotency-Key, as apps must.
				req := stack.ClaimRequest{Campaign: "codes", User: fmt.Sprintf("c%d-u%d", ci, try), Device: "d", Body: body, IdempotencyKey: fmt.Sprintf("k%d-%d", ci, try)}
				var a stack.Answer
				for attempt := 0; ; attempt++ {
					var err error
					if a, err = s.Claim(ctx, req); err != nil {
						t.Error(err)
						return
					}
					if a.HTTP != 503 || attempt == claimRetriesMax {
						break
					}
				}
				switch a.Status {
				case "granted":
					granted.Add(1)
					mu.Lock()
					if prev, dup := winners[code]; dup {
						t.Errorf("code %s granted twice (%s, %s)", code, prev, a.GrantID)
					}
					winners[code] = a.GrantID
					mu.Unlock()
				case "not_eligible":
				default:
					t.Errorf("unexpected answer %+v", a)
				}
			}()
		}
	}
	wg.Wait()
	if granted.Load() != 20 || len(winners) != 20 {
		t.Fatalf("%d grants for 20 codes", granted.Load())
	}
	// CSV: every code used, by the grant that won it.
	code, body := s.Admin("GET", "/admin/v1/campaigns/codes/codes?format=csv", nil)
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if code != 200 || lines[0] != "code,state,grant_id" || len(lines) != 21 {
		t.Fatalf("csv: %d %q", code, body)
	}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) != 3 || f[1] != "used" || winners[f[0]] != f[2] {
			t.Fatalf("csv line %q (winner %s)", l, winners[f[0]])
		}
	}
	// Missing, wrong and guessed codes.
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "codes", User: "guesser", Device: "d"}); a.Status != "not_eligible" {
		t.Fatalf("no code: %+v", a)
	}
	for i := 0; i < 10; i++ {
		a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "codes", User: "guesser", Device: "d", Body: []byte(fmt.Sprintf(`{"code":"D11-GUESS%d"}`, i))})
		if a.Status != "not_eligible" || a.Error != "unknown code" {
			t.Fatalf("wrong code %d: %+v", i, a)
		}
	}
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "codes", User: "guesser", Device: "d", Body: []byte(`{"code":"D11-GUESS99"}`)}); a.Status != "rate_limited" || a.Limit != "code" || a.RetryAfter == "" {
		t.Fatalf("11th wrong code: %+v", a)
	}
}

// TestBudgetCapHoldsUnderConcurrency: a 70,500-cent budget of $7 vouchers
// grants exactly 100 (not a cent over), whatever the stock and concurrency.
func TestBudgetCapHoldsUnderConcurrency(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	putRules(t, s, `{"alerts":{"low_stock_percent":20,"low_budget_percent":5}}`)
	createRaw(t, s, map[string]any{"id": "budget", "coupon": map[string]any{"type": "voucher", "amount": 700}, "stock": 1000, "shards": 8, "budget": 70500})
	var granted atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < 400; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for try := 0; try < 20; try++ {
				a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "budget", User: fmt.Sprint("b", i), Device: "d", IdempotencyKey: "k"})
				if err == nil && a.HTTP == 503 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if err == nil && a.Status == "granted" {
					granted.Add(1)
				}
				return
			}
		}()
	}
	wg.Wait()
	code, body := s.Admin("GET", "/admin/v1/campaigns/budget", nil)
	var v struct {
		Stats struct {
			Granted         int64 `json:"granted"`
			Units           int64 `json:"units"`
			BudgetUsed      int64 `json:"budget_used"`
			BudgetRemaining int64 `json:"budget_remaining"`
			Remaining       int64 `json:"remaining"`
		} `json:"stats"`
	}
	json.Unmarshal(body, &v)
	if code != 200 || granted.Load() != 100 || v.Stats.Granted != 100 || v.Stats.Units != 100 || v.Stats.BudgetUsed != 70000 || v.Stats.BudgetUsed > 70500 || v.Stats.Remaining != 0 {
		t.Fatalf("granted %d, stats %s", granted.Load(), body)
	}
	// The audit judges a budgeted campaign against its units, not its stock.
	if rep := stack.RequireCleanAudit(t, s.Gateway, 20*time.Second); rep.Campaigns[0].Units != 100 || rep.Campaigns[0].Store != 100 {
		t.Fatalf("audit row %+v", rep.Campaigns[0])
	}
	// The sweeper loop raises the low-stock and low-budget alerts.
	var alerts []byte
	if !wait.Until(context.Background(), 6*time.Second, func() bool {
		_, alerts = s.Admin("GET", "/admin/v1/risk/alerts", nil)
		return strings.Contains(string(alerts), `"kind":"low_stock"`) && strings.Contains(string(alerts), `"kind":"low_budget"`)
	}) {
		t.Fatalf("alerts: %s", alerts)
	}
}

// TestAddStockMidDrop: stock added during a drop reaches the shards without
// a pause; exactly old + new are granted; a retried PATCH adds once; pause,
// resume, extend and delete change future claims only.
func TestAddStockMidDrop(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "grow", Stock: 300, Shards: 4})
	ctx := context.Background()
	var granted atomic.Int64
	var next atomic.Int64
	wave := func(n int) {
		var wg sync.WaitGroup
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > int64(n) {
						return
					}
					a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "grow", User: fmt.Sprint("g", i), Device: "d"})
					if err == nil && a.Status == "granted" {
						granted.Add(1)
					}
				}
			}()
		}
		wg.Wait()
	}
	var mid sync.WaitGroup
	mid.Add(1)
	go func() { defer mid.Done(); wave(1500) }()
	time.Sleep(30 * time.Millisecond)
	patch := map[string]any{"add_stock": 200, "change_id": "restock-1"}
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/grow", patch, 200)
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/grow", patch, 200) // a retry: adds nothing
	mid.Wait()
	next.Store(1500)
	wave(2500) // users after the drop drained: the extra 200 must all be claimable
	st := s.CampaignStats("grow")
	if granted.Load() != 500 || st.Granted != 500 || st.Stock != 500 || st.Remaining != 0 {
		t.Fatalf("granted %d, stats %+v (want exactly 300 + 200)", granted.Load(), st)
	}
	for i, n := range st.Shards {
		if n != 0 {
			t.Fatalf("shard %d holds %d", i, n)
		}
	}
	// Pause, resume, extend, delete.
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/grow", map[string]any{"add_stock": 5, "paused": true, "change_id": "restock-2"}, 200)
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "grow", User: "late-1", Device: "d"}); a.Status != "paused" || a.HTTP != 409 {
		t.Fatalf("paused: %+v", a)
	}
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/grow", map[string]any{"paused": false, "ends_at": time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)}, 200)
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "grow", User: "late-1", Device: "d"}); a.Status != "granted" {
		t.Fatalf("resumed: %+v", a)
	}
	if code, body := s.Admin("PATCH", "/admin/v1/campaigns/grow", map[string]any{"add_stock": -5}); code != 400 || !strings.Contains(string(body), "add_stock") {
		t.Fatalf("negative add: %d %s", code, body)
	}
	adminOK(t, s, "DELETE", "/admin/v1/campaigns/grow", nil, 200)
	if a, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "grow", User: "late-2", Device: "d"}); a.Status != "ended" {
		t.Fatalf("deleted: %+v", a)
	}
	rep := stack.RequireCleanAudit(t, s.Gateway, 20*time.Second) // grants kept, counts agree
	if rep.Campaigns[0].Store != 501 {
		t.Fatalf("store after delete: %+v", rep.Campaigns[0])
	}
	// The store keeps a snapshot of the definition for reporting.
	var (
		def []byte
		ok  bool
		err error
	)
	if !wait.Until(context.Background(), 3*time.Second, func() bool {
		def, ok, err = s.Gateway.Store().Campaign(context.Background(), "grow")
		return err == nil && ok && strings.Contains(string(def), `"deleted":true`) && strings.Contains(string(def), `"stock":505`)
	}) {
		t.Fatalf("campaign snapshot in the store: %s %v %v", def, ok, err)
	}
}

// TestGenerate100kCodes: 100,000 codes in one request, all distinct, exported
// as CSV (the time is logged, not asserted).
func TestGenerate100kCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("100k codes skipped in -short")
	}
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "bulk", "coupon": map[string]any{"type": "free_shipping"}, "stock": 100000, "audience": map[string]any{"mode": "code"}})
	start := time.Now()
	b := adminOK(t, s, "POST", "/admin/v1/campaigns/bulk/codes", map[string]any{"count": 100000, "prefix": "BULK"}, 201)
	took := time.Since(start)
	if !strings.Contains(string(b), `"generated":100000`) {
		t.Fatalf("generate: %.200s", b)
	}
	code, body := s.Admin("GET", "/admin/v1/campaigns/bulk/codes?format=csv", nil)
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		seen[strings.SplitN(l, ",", 2)[0]] = true
	}
	if code != 200 || len(lines) != 100001 || len(seen) != 100000 {
		t.Fatalf("csv: HTTP %d, %d lines, %d distinct", code, len(lines), len(seen))
	}
	t.Logf("100,000 codes generated in %v, exported in %v", took, time.Since(start)-took)
}
