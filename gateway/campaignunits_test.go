package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// unitsView is what GET /admin/v1/campaigns/{id} says about a campaign's units.
type unitsView struct {
	Stock   int64    `json:"stock"`
	Budget  int64    `json:"budget"`
	Changes []string `json:"changes"`
	Stats   struct {
		Units     int64   `json:"units"`
		Remaining int64   `json:"remaining"`
		Granted   int64   `json:"granted"`
		Shards    []int64 `json:"shards"`
		Error     string  `json:"error"`
	} `json:"stats"`
}

func getUnits(t *testing.T, s *stack.Stack, id string) unitsView {
	t.Helper()
	var v unitsView
	if err := json.Unmarshal(adminOK(t, s, "GET", "/admin/v1/campaigns/"+id, nil, 200), &v); err != nil {
		t.Fatal(err)
	}
	if v.Stats.Error != "" {
		t.Fatalf("stats of %s: %s", id, v.Stats.Error)
	}
	return v
}

// requireUnitsAgree fails unless the units Redis holds for the campaign
// (remaining, pending transfers included, plus granted) are exactly the units
// its definition allows.
func requireUnitsAgree(t *testing.T, s *stack.Stack, id, when string) unitsView {
	t.Helper()
	v := getUnits(t, s, id)
	if redis := v.Stats.Remaining + v.Stats.Granted; redis != v.Stats.Units {
		t.Fatalf("%s: redis holds %d units (remaining %d + granted %d, shards %v), the definition allows %d (stock %d, budget %d)",
			when, redis, v.Stats.Remaining, v.Stats.Granted, v.Stats.Shards, v.Stats.Units, v.Stock, v.Budget)
	}
	// The shards' allotments (stealing moves stock, never allotments) add up
	// to the same total.
	rc := redisClient(t, s)
	defer rc.Close()
	if n, err := stock.New(rc).Allotted(context.Background(), id, len(v.Stats.Shards)); err != nil || n != v.Stats.Units {
		t.Fatalf("%s: shards allotted %d units (%v), the definition allows %d", when, n, err, v.Stats.Units)
	}
	return v
}

// patchSettled sends one PATCH the way a careful client does: the same body
// (and change_id) again after a 409 conflict or a 503, until a final answer.
func patchSettled(t *testing.T, s *stack.Stack, id string, body map[string]any) (int, []byte) {
	t.Helper()
	for try := 0; try < 50; try++ {
		code, b := s.Admin("PATCH", "/admin/v1/campaigns/"+id, body)
		if code == 200 || code == 400 {
			return code, b
		}
		if code != 409 && code != 503 {
			t.Errorf("PATCH %v: HTTP %d %s", body, code, b)
			return code, b
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
	t.Errorf("PATCH %v: no final answer after 50 tries", body)
	return 0, nil
}

var drainCalls atomic.Int64

// drain claims with fresh users until the campaign is sold out and returns
// how many were granted. A gateway answers sold_out from a local flag for up
// to a second before it re-probes, and a claim burst racing a PATCH may have
// set it just before the new units arrived, so the drain goes on in passes
// (a bounded number) until the shards are empty.
func drain(t *testing.T, s *stack.Stack, id string, users int) int64 {
	t.Helper()
	call := drainCalls.Add(1) // fresh users on every call
	var granted atomic.Int64
	var next atomic.Int64
	claimOne := func(i int64) {
		for try := 0; try < 20; try++ {
			a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: id, User: fmt.Sprintf("%s-drain%d-%d", id, call, i), Device: "d", IdempotencyKey: "k"})
			if err != nil || a.HTTP == 503 {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if a.Status == "granted" {
				granted.Add(1)
			} else if a.Status != "sold_out" {
				t.Errorf("drain claim: %+v", a)
			}
			return
		}
	}
	for pass := 0; pass < 8; pass++ {
		limit := next.Load() + int64(users)
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1); i <= limit; i = next.Add(1) {
					claimOne(i)
				}
			}()
		}
		wg.Wait()
		if getUnits(t, s, id).Stats.Remaining == 0 {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	return granted.Load()
}

// TestConcurrentBudgetPatchesNeverOverspend (issue 9, item 2): concurrent
// budget raises, add_stock changes and retries of the same change_id, in
// every interleaving the rounds happen to produce, never leave Redis holding
// more (or fewer) units than the definition allows; after a drain exactly
// the definition's units are granted.
func TestConcurrentBudgetPatchesNeverOverspend(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	// A $1 voucher, budget $100 → 100 units of a stock of 120: the budget
	// caps the units in the first rounds, the stock in the later ones.
	createRaw(t, s, map[string]any{"id": "money", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 120, "shards": 4, "budget": 10000})
	requireUnitsAgree(t, s, "money", "after create")
	budget := int64(10000)
	var wantStock int64 = 120
	var claimed, refused atomic.Int64
	const rounds = 50
	for r := 0; r < rounds; r++ {
		// Two budget raises (the issue's +100 and +200 units, scaled down)
		// and one add_stock, each sent twice with its change_id, all at once.
		bodies := []map[string]any{
			{"budget": budget + 100*int64(1+r%3), "change_id": fmt.Sprintf("r%d-budget-a", r)},
			{"budget": budget + 100*int64(2+r%3), "change_id": fmt.Sprintf("r%d-budget-b", r)},
			{"add_stock": int64(1 + r%2), "change_id": fmt.Sprintf("r%d-stock", r)},
		}
		var wg sync.WaitGroup
		for _, b := range bodies {
			for copy := 0; copy < 2; copy++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if code, body := patchSettled(t, s, "money", b); code == 400 {
						if !strings.Contains(string(body), "may only grow") {
							t.Errorf("PATCH %v: %s", b, body)
						}
						refused.Add(1) // the larger raise committed first
					}
				}()
			}
		}
		// Claims at the same time, more than a round adds: shards run empty,
		// units are stolen between them, the campaign sells out and refills.
		for c := 0; c < 4; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "money", User: fmt.Sprintf("r%d-c%d", r, c), Device: "d"})
				if err == nil && a.Status == "granted" {
					claimed.Add(1)
				}
			}()
		}
		wg.Wait()
		wantStock += int64(1 + r%2)
		v := requireUnitsAgree(t, s, "money", fmt.Sprintf("round %d", r))
		if v.Stock != wantStock {
			t.Fatalf("round %d: stock %d, want %d (each add_stock applies exactly once)", r, v.Stock, wantStock)
		}
		if want := budget + 100*int64(2+r%3); v.Budget != want {
			t.Fatalf("round %d: budget %d, want the larger raise %d", r, v.Budget, want)
		}
		budget = v.Budget
	}
	v := requireUnitsAgree(t, s, "money", "before the drain")
	got := claimed.Load() + drain(t, s, "money", int(v.Stats.Remaining)+40)
	after := requireUnitsAgree(t, s, "money", "after the drain")
	if got != v.Stats.Units || after.Stats.Granted != v.Stats.Units || after.Stats.Remaining != 0 {
		t.Fatalf("granted %d (stats %d, remaining %d), the definition allows %d units (budget %d)", got, after.Stats.Granted, after.Stats.Remaining, v.Stats.Units, v.Budget)
	}
	stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)
	t.Logf("%d rounds: %d PATCHes refused because a larger budget committed first, %d grants during the rounds, %d units in the end", rounds, refused.Load(), claimed.Load(), v.Stats.Units)
	if got*100 > v.Budget {
		t.Fatalf("budget overspent: %d grants × 100 > %d", got, v.Budget)
	}
}

// TestOldChangeIDRetryDoesNotDiverge (issue 9, item 3): a retried add_stock
// whose change_id the definition no longer remembers (64 other changes
// since) is a new change for the definition and the shards alike — they
// never disagree about whether a change applied.
func TestOldChangeIDRetryDoesNotDiverge(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "old", Stock: 100, Shards: 4})
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/old", map[string]any{"add_stock": 50, "change_id": "restock-old"}, 200)
	requireUnitsAgree(t, s, "old", "after the first add")
	for i := 0; i < 64; i++ {
		adminOK(t, s, "PATCH", "/admin/v1/campaigns/old", map[string]any{"paused": false, "change_id": fmt.Sprint("other-", i)}, 200)
	}
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/old", map[string]any{"add_stock": 50, "change_id": "restock-old"}, 200)
	v := requireUnitsAgree(t, s, "old", "after the late retry")
	if got := drain(t, s, "old", int(v.Stats.Units)+20); got != v.Stats.Units {
		t.Fatalf("granted %d, the definition allows %d", got, v.Stats.Units)
	}
	// A retry still remembered adds nothing, in either place.
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/old", map[string]any{"add_stock": 7, "change_id": "restock-new"}, 200)
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/old", map[string]any{"add_stock": 7, "change_id": "restock-new"}, 200)
	if w := requireUnitsAgree(t, s, "old", "after a remembered retry"); w.Stock != v.Stock+7 {
		t.Fatalf("stock %d after a retried +7 on %d", w.Stock, v.Stock)
	}
}

// TestPatchWithoutChangeIDRetryRefused (issue 9, item 3): add_stock without a
// change_id is refused (400 naming change_id) and changes nothing, because
// a client's retry of it after a 503 could not be told from a new change.
// A budget is an absolute value, so its retry without change_id is
// idempotent by value.
func TestPatchWithoutChangeIDRetryRefused(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "nocid", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100, "shards": 4, "budget": 5000})
	for try := 0; try < 2; try++ { // the client's retry after a 503
		code, body := s.Admin("PATCH", "/admin/v1/campaigns/nocid", map[string]any{"add_stock": 10})
		if code != 400 || !strings.Contains(string(body), `"change_id"`) || !strings.Contains(string(body), "retry") {
			t.Fatalf("add_stock without change_id: HTTP %d %s", code, body)
		}
	}
	if v := requireUnitsAgree(t, s, "nocid", "after refused add_stock"); v.Stock != 100 || v.Stats.Units != 50 {
		t.Fatalf("a refused PATCH changed the campaign: stock %d, units %d", v.Stock, v.Stats.Units)
	}
	for try := 0; try < 2; try++ {
		adminOK(t, s, "PATCH", "/admin/v1/campaigns/nocid", map[string]any{"budget": 7000}, 200)
	}
	if v := requireUnitsAgree(t, s, "nocid", "after a retried budget"); v.Budget != 7000 || v.Stats.Units != 70 {
		t.Fatalf("budget retried: budget %d, units %d", v.Budget, v.Stats.Units)
	}
	if got := drain(t, s, "nocid", 90); got != 70 {
		t.Fatalf("granted %d, want 70", got)
	}
}

// TestBudgetOnUnbudgetedCampaignNeverShrinksUnits: units already on the
// shards cannot be taken back, so a budget that would allow fewer units than
// the campaign has is refused (400 naming budget) and changes nothing.
func TestBudgetOnUnbudgetedCampaignNeverShrinksUnits(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "nocap", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100, "shards": 4})
	code, body := s.Admin("PATCH", "/admin/v1/campaigns/nocap", map[string]any{"budget": 5000, "change_id": "cap-1"})
	if code != 400 || !strings.Contains(string(body), `"budget"`) {
		t.Fatalf("a budget below the units on the shards: HTTP %d %s", code, body)
	}
	if v := requireUnitsAgree(t, s, "nocap", "after the refused budget"); v.Budget != 0 || v.Stats.Units != 100 {
		t.Fatalf("refused budget changed the campaign: budget %d, units %d", v.Budget, v.Stats.Units)
	}
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/nocap", map[string]any{"budget": 10000, "change_id": "cap-2"}, 200)
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/nocap", map[string]any{"add_stock": 50, "change_id": "more"}, 200) // capped by the budget
	if v := requireUnitsAgree(t, s, "nocap", "after budget and add"); v.Stock != 150 || v.Stats.Units != 100 {
		t.Fatalf("stock %d, units %d", v.Stock, v.Stats.Units)
	}
	if got := drain(t, s, "nocap", 120); got != 100 {
		t.Fatalf("granted %d, want 100", got)
	}
}

func redisClient(t *testing.T, s *stack.Stack) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Redis.Addr()}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func shardStock(t *testing.T, c rueidis.Client, id string, shards int) []string {
	t.Helper()
	out := make([]string, shards)
	for i := range out {
		v, err := c.Do(context.Background(), c.B().Get().Key(stock.StockKey(id, i)).Build()).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			t.Fatal(err)
		}
		out[i] = v
	}
	return out
}

// TestCreateOverLeftoverKeysRefused (issue 9, item 4): creating a campaign
// whose id still has another campaign's state in Redis (its definition gone,
// e.g. a fresh data dir against a Redis that kept running) is refused with
// 409 leftover_state naming that state, and touches nothing; the same id is
// never given two campaigns' shards or grant sets.
func TestCreateOverLeftoverKeysRefused(t *testing.T) {
	first := stack.Start(t, stack.Options{})
	first.CreateCampaign(stack.Campaign{ID: "demo", Stock: 1000, Shards: 4})
	first.CreateCampaign(stack.Campaign{ID: "wide", Stock: 1000, Shards: 8})
	for i := 0; i < 3; i++ {
		if a, err := first.Claim(context.Background(), stack.ClaimRequest{Campaign: "demo", User: fmt.Sprint("early-", i), Device: "d"}); err != nil || a.Status != "granted" {
			t.Fatalf("claim: %+v %v", a, err)
		}
	}
	first.Stop()
	// A new deployment (fresh data dir, so a fresh campaign bucket) on the same Redis.
	s := stack.Start(t, stack.Options{Redis: first.Redis})
	rc := redisClient(t, s)
	before := shardStock(t, rc, "demo", 4)
	code, body := s.Admin("POST", "/admin/v1/campaigns", stack.Campaign{ID: "demo", Name: "demo", Stock: 1000, Shards: 4,
		Coupon: map[string]any{"type": "free_shipping"}, StartsAt: time.Now().Add(-time.Minute), EndsAt: time.Now().Add(time.Hour)})
	if code != 409 || !strings.Contains(string(body), `"status":"leftover_state"`) || !strings.Contains(string(body), "3 grants") {
		t.Fatalf("create over leftover keys: HTTP %d %s", code, body)
	}
	if after := shardStock(t, rc, "demo", 4); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused create changed the shards: %v → %v", before, after)
	}
	if code, _ := s.Admin("GET", "/admin/v1/campaigns/demo", nil); code != 404 {
		t.Fatalf("refused create left a definition: HTTP %d", code)
	}
	// Fewer shards than the leftover: the shards beyond are found too.
	code, body = s.Admin("POST", "/admin/v1/campaigns", stack.Campaign{ID: "wide", Name: "wide", Stock: 10, Shards: 2,
		Coupon: map[string]any{"type": "free_shipping"}, StartsAt: time.Now().Add(-time.Minute), EndsAt: time.Now().Add(time.Hour)})
	if code != 409 || !strings.Contains(string(body), `"status":"leftover_state"`) {
		t.Fatalf("create over a wider leftover: HTTP %d %s", code, body)
	}
	// A fresh id is fine, and the campaign is whole.
	s.CreateCampaign(stack.Campaign{ID: "demo-2", Stock: 1000, Shards: 4})
	if v := requireUnitsAgree(t, s, "demo-2", "fresh id"); fmt.Sprint(v.Stats.Shards) != "[250 250 250 250]" {
		t.Fatalf("shards %v", v.Stats.Shards)
	}
}

// TestCreateRetryAfterInitCompletes: a create that initialised the shards but
// failed before the definition was stored (nothing could claim from them) is
// completed by its retry; shards initialised for a different campaign are
// leftover state.
func TestCreateRetryAfterInitCompletes(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	rc := redisClient(t, s)
	st := stock.New(rc)
	if err := st.Init(context.Background(), "again", 1000, 4); err != nil {
		t.Fatal(err)
	}
	s.CreateCampaign(stack.Campaign{ID: "again", Stock: 1000, Shards: 4})
	requireUnitsAgree(t, s, "again", "after the retried create")
	if err := st.Init(context.Background(), "other", 999, 4); err != nil {
		t.Fatal(err)
	}
	code, body := s.Admin("POST", "/admin/v1/campaigns", stack.Campaign{ID: "other", Name: "other", Stock: 1000, Shards: 4,
		Coupon: map[string]any{"type": "free_shipping"}, StartsAt: time.Now().Add(-time.Minute), EndsAt: time.Now().Add(time.Hour)})
	if code != 409 || !strings.Contains(string(body), `"status":"leftover_state"`) {
		t.Fatalf("create over another campaign's fresh shards: HTTP %d %s", code, body)
	}
}

// TestCommittedUnitsReachShardsWithoutThePatch (issue 9, items 2 and 3): a
// PATCH that dies after committing the definition, before its units are on
// the shards, does not leave the two disagreeing: every gateway puts a
// committed definition's units on the shards, and claims get them.
func TestCommittedUnitsReachShardsWithoutThePatch(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "died", Stock: 40, Shards: 4})
	if got := drain(t, s, "died", 50); got != 40 {
		t.Fatalf("granted %d of 40", got)
	}
	// The dead PATCH's compare-and-swap, straight into the bucket.
	nc, err := nats.Connect(s.Gateway.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reg, err := campaign.OpenRegistry(ctx, js, 1, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	old, rev, err := reg.Revision(ctx, "died")
	if err != nil {
		t.Fatal(err)
	}
	n, err := old.Apply(&campaign.Patch{AddStock: 25, ChangeID: "died-mid-patch"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, &n, rev); err != nil {
		t.Fatal(err)
	}
	var v unitsView
	if !wait.Until(context.Background(), 5*time.Second, func() bool {
		v = getUnits(t, s, "died")
		return v.Stats.Units == 65 && v.Stats.Remaining+v.Stats.Granted == 65
	}) {
		t.Fatalf("the committed units never reached the shards: %+v", v.Stats)
	}
	requireUnitsAgree(t, s, "died", "after convergence")
	// The client's retry of the PATCH finds it applied and adds nothing.
	adminOK(t, s, "PATCH", "/admin/v1/campaigns/died", map[string]any{"add_stock": 25, "change_id": "died-mid-patch"}, 200)
	if got := drain(t, s, "died", 40); got != 25 {
		t.Fatalf("granted %d of the 25 added", got)
	}
	requireUnitsAgree(t, s, "died", "after the drain")
}
