package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// testClock is a gateway clock the test moves forward.
type testClock struct{ off atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *testClock) advance(d time.Duration) { c.off.Add(int64(d)) }

type walletAnswer struct {
	Status string `json:"status"`
	Grants []struct {
		GrantID    string          `json:"grant_id"`
		Campaign   string          `json:"campaign"`
		State      string          `json:"state"`
		OrderID    string          `json:"order_id"`
		ValidUntil *string         `json:"valid_until"`
		Coupon     json.RawMessage `json:"coupon"`
	} `json:"grants"`
}

func wallet(t *testing.T, s *stack.Stack, user, state string) walletAnswer {
	t.Helper()
	code, b, _ := s.AsUser("GET", "/v1/me/coupons?state="+state, user, "")
	var w walletAnswer
	if code != 200 || json.Unmarshal(b, &w) != nil {
		t.Fatalf("wallet %s %s: HTTP %d %s", user, state, code, b)
	}
	return w
}

// walletStates maps grant id → state/order of user's wallet.
func walletStates(t *testing.T, s *stack.Stack, user string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range wallet(t, s, user, "").Grants {
		out[g.GrantID] = g.State + "/" + g.OrderID
	}
	return out
}

// claimStored claims n grants of campaign for user and waits until the
// store holds them.
func claimStored(t *testing.T, s *stack.Stack, campaign, user string, n int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: campaign, User: user, Device: "dev-" + user, IdempotencyKey: fmt.Sprintf("%s-%d", campaign, i)})
		if err != nil || a.Status != "granted" {
			t.Fatalf("claim %s for %s: %+v %v", campaign, user, a, err)
		}
		ids = append(ids, a.GrantID)
	}
	wait.For(t, 15*time.Second, "the grants to reach the store", func() bool {
		st := walletStates(t, s, user)
		for _, id := range ids {
			if _, ok := st[id]; !ok {
				return false
			}
		}
		return true
	})
	return ids
}

// serviceCall is stack.Checkout for goroutines (no t.Fatal).
func serviceCall(s *stack.Stack, method, path, user, body string) (int, []byte, http.Header, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, s.PublicURL+path, rd)
	req.Header.Set("Authorization", "Bearer "+stack.CheckoutToken)
	req.Header.Set("X-User-ID", user)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header, err
}

func mustCheckout(t *testing.T, s *stack.Stack, path, user, body string, want int) []byte {
	t.Helper()
	code, b, _ := s.Checkout("POST", path, user, body)
	if code != want {
		t.Fatalf("POST %s: HTTP %d %s (want %d)", path, code, b, want)
	}
	return b
}

// An order of two stores (the example of package checkout): tea from s1,
// two cups from s2, shipping of s2.
const twoStores = `"items":[{"sku":"tea-1","store_id":"s1","category":"tea","unit_price":10000,"quantity":1},` +
	`{"sku":"cup-1","store_id":"s2","category":"cups","unit_price":6000,"quantity":2}],"shipping":{"s2":500}`

func redeemBody(order string, grants ...string) string {
	ids, _ := json.Marshal(grants)
	return fmt.Sprintf(`{"order_id":%q,%s,"grant_ids":%s}`, order, twoStores, ids)
}

type quotation struct {
	Coupons []struct {
		GrantID  string `json:"grant_id"`
		Bearer   string `json:"bearer"`
		Discount int64  `json:"discount"`
	} `json:"coupons"`
	Discount int64 `json:"discount"`
	Payable  int64 `json:"payable"`
	NotUsed  []struct {
		GrantID string `json:"grant_id"`
		Reason  string `json:"reason"`
	} `json:"not_used"`
}

type orderAnswer struct {
	Status    string    `json:"status"`
	OrderID   string    `json:"order_id"`
	State     string    `json:"state"`
	Quotation quotation `json:"quotation"`
	GrantIDs  []string  `json:"grant_ids"`
	Fields    []string  `json:"fields"`
	Refund    struct {
		Discount      int64 `json:"discount"`
		Refund        int64 `json:"refund"`
		OrderRefunded bool  `json:"order_refunded"`
		Coupons       []struct {
			GrantID  string `json:"grant_id"`
			Items    int64  `json:"items"`
			Returned bool   `json:"returned"`
		} `json:"coupons"`
	} `json:"refund"`
}

func decodeOrder(t *testing.T, b []byte) orderAnswer {
	t.Helper()
	var o orderAnswer
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatalf("answer %s: %v", b, err)
	}
	return o
}

// couponEvents collects the coupon events published on NATS.
type couponEvents struct {
	mu  sync.Mutex
	evs []map[string]any
}

func subscribeEvents(t *testing.T, url string) *couponEvents {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ce := &couponEvents{}
	if _, err := nc.Subscribe("flashgate.coupons.>", func(m *nats.Msg) {
		var e map[string]any
		if json.Unmarshal(m.Data, &e) == nil && "flashgate.coupons."+fmt.Sprint(e["type"]) == m.Subject && m.Header.Get("Nats-Msg-Id") == e["event_id"] {
			ce.mu.Lock()
			ce.evs = append(ce.evs, e)
			ce.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ce
}

// of returns the distinct events (by event id) of a type.
func (ce *couponEvents) of(typ string) []map[string]any {
	ce.mu.Lock()
	defer ce.mu.Unlock()
	seen := map[any]bool{}
	var out []map[string]any
	for _, e := range ce.evs {
		if e["type"] == typ && !seen[e["event_id"]] {
			seen[e["event_id"]] = true
			out = append(out, e)
		}
	}
	return out
}

func (ce *couponEvents) waitFor(t *testing.T, typ string, n int) []map[string]any {
	t.Helper()
	wait.For(t, 10*time.Second, fmt.Sprintf("%d %s events", n, typ), func() bool { return len(ce.of(typ)) >= n })
	return ce.of(typ)
}

// TestCheckoutWalkThrough: claim three coupons of three issuers, let the
// gateway choose the best combination, redeem it, retry the redeem,
// confirm; the wallet, the events and the campaign statistics follow.
func TestCheckoutWalkThrough(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	ce := subscribeEvents(t, s.Gateway.NATSURL())
	createRaw(t, s, map[string]any{"id": "plat", "coupon": map[string]any{"type": "threshold", "tiers": []map[string]int{{"min": 10000, "off": 1000}, {"min": 20000, "off": 3000}}}, "stock": 100})
	createRaw(t, s, map[string]any{"id": "s1v", "coupon": map[string]any{"type": "voucher", "amount": 1000, "issuer": map[string]any{"type": "store", "store_id": "s1"}}, "stock": 100})
	createRaw(t, s, map[string]any{"id": "s2fs", "coupon": map[string]any{"type": "free_shipping", "issuer": map[string]any{"type": "store", "store_id": "s2"}}, "stock": 100})
	createRaw(t, s, map[string]any{"id": "vip", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100, "exclusive": true, "priority": 5})
	plat := claimStored(t, s, "plat", "buyer", 1)[0]
	s1v := claimStored(t, s, "s1v", "buyer", 1)[0]
	s2fs := claimStored(t, s, "s2fs", "buyer", 1)[0]
	vip := claimStored(t, s, "vip", "buyer", 1)[0]

	// The best combination, asked with the user's own token.
	code, b, _ := s.AsUser("POST", "/v1/checkout/quote", "buyer", "{"+twoStores+"}")
	var qa struct {
		Status    string    `json:"status"`
		Quotation quotation `json:"quotation"`
	}
	if code != 200 || json.Unmarshal(b, &qa) != nil {
		t.Fatalf("quote: HTTP %d %s", code, b)
	}
	q := qa.Quotation
	if q.Discount != 4500 || q.Payable != 18000 || len(q.Coupons) != 3 || len(q.NotUsed) != 1 || q.NotUsed[0].GrantID != vip || q.NotUsed[0].Reason != "exclusive" {
		t.Fatalf("best quote: %s", b)
	}
	// Redeem what the quote chose, as the order service.
	body := redeemBody("order-1", plat, s1v, s2fs)
	code, first, h := s.Checkout("POST", "/v1/checkout/redeem", "buyer", body)
	o := decodeOrder(t, first)
	if code != 200 || o.State != "locked" || o.Quotation.Discount != 4500 || h.Get("Idempotent-Replayed") != "" {
		t.Fatalf("redeem: HTTP %d %s", code, first)
	}
	code, again, h := s.Checkout("POST", "/v1/checkout/redeem", "buyer", strings.ReplaceAll(body, ",", " , "))
	if code != 200 || !bytes.Equal(again, first) || h.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("redeem retried: HTTP %d %s\nfirst %s", code, again, first)
	}
	if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "buyer", redeemBody("order-1", plat)); code != 409 || !strings.Contains(string(b), `"order_conflict"`) {
		t.Fatalf("another body under the same order id: HTTP %d %s", code, b)
	}
	if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "buyer", redeemBody("order-2", plat, vip)); code != 409 || !strings.Contains(string(b), `"coupon_in_use"`) || !strings.Contains(string(b), plat) {
		t.Fatalf("a locked coupon in another order: HTTP %d %s", code, b)
	}
	if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "buyer", redeemBody("order-3", vip, s1v)); code != 409 {
		t.Fatalf("exclusive with a locked coupon: HTTP %d %s", code, b)
	}
	if st := walletStates(t, s, "buyer"); st[plat] != "locked/order-1" || st[vip] != "unused/" {
		t.Fatalf("wallet while locked: %v", st)
	}
	if n := len(wallet(t, s, "buyer", "locked").Grants); n != 3 {
		t.Fatalf("%d locked grants", n)
	}
	// A quote naming a locked coupon says so.
	code, b, _ = s.AsUser("POST", "/v1/checkout/quote", "buyer", fmt.Sprintf(`{%s,"grant_ids":[%q,%q]}`, twoStores, plat, vip))
	if code != 200 || !strings.Contains(string(b), `{"grant_id":"`+plat+`","campaign":"plat","reason":"locked"}`) {
		t.Fatalf("quote of a locked coupon: HTTP %d %s", code, b)
	}
	// Paid.
	b = mustCheckout(t, s, "/v1/orders/order-1/confirm", "buyer", "", 200)
	if o := decodeOrder(t, b); o.State != "confirmed" {
		t.Fatalf("confirm: %s", b)
	}
	mustCheckout(t, s, "/v1/orders/order-1/confirm", "buyer", "", 200)
	if code, b, _ := s.Checkout("POST", "/v1/orders/order-1/cancel", "buyer", ""); code != 409 || !strings.Contains(string(b), `"state":"confirmed"`) {
		t.Fatalf("cancel a confirmed order: HTTP %d %s", code, b)
	}
	if code, _, _ := s.Checkout("POST", "/v1/orders/order-1/confirm", "someone-else", ""); code != 404 {
		t.Fatalf("another user's order: HTTP %d", code)
	}
	// A coupon that does not apply refuses the redeem, with its reason.
	cheap := fmt.Sprintf(`{"order_id":"cheap","items":[{"sku":"gum","store_id":"s1","unit_price":100,"quantity":1}],"grant_ids":[%q]}`, vip)
	if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "buyer", cheap); code != 409 || !strings.Contains(string(b), `"not_applicable"`) || !strings.Contains(string(b), `"reason":"below_threshold"`) {
		t.Fatalf("a $1 voucher on a $1 order: HTTP %d %s", code, b)
	}
	if st := walletStates(t, s, "buyer"); st[vip] != "unused/" {
		t.Fatalf("a refused redeem locked %s: %v", vip, st)
	}
	if n := len(wallet(t, s, "buyer", "used").Grants); n != 3 {
		t.Fatalf("%d used grants", n)
	}
	used := ce.waitFor(t, "used", 3)
	for _, e := range used {
		if e["order_id"] != "order-1" || e["user"] != "buyer" || e["from"] != "locked" || e["to"] != "used" {
			t.Fatalf("used event %v", e)
		}
	}
	// The campaign statistics.
	_, vb := s.Admin("GET", "/admin/v1/campaigns/plat", nil)
	var view struct {
		Stats struct {
			Usage struct {
				Used             int64   `json:"used"`
				UsageRate        float64 `json:"usage_rate"`
				DiscountTotal    int64   `json:"discount_total"`
				OrdersWithCoupon int64   `json:"orders_with_coupon"`
				UsersWithCoupon  int64   `json:"users_with_coupon"`
				AOV              float64 `json:"aov_with_coupon"`
				Conversion       float64 `json:"conversion"`
				ROI              float64 `json:"roi"`
				Daily            []struct {
					Day    string `json:"day"`
					Orders int64  `json:"orders"`
				} `json:"daily"`
			} `json:"usage"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(vb, &view); err != nil {
		t.Fatal(err)
	}
	u := view.Stats.Usage
	if u.Used != 1 || u.UsageRate != 1 || u.DiscountTotal != 3000 || u.OrdersWithCoupon != 1 || u.UsersWithCoupon != 1 || u.AOV != 18000 || u.Conversion != 1 || u.ROI != 6 ||
		len(u.Daily) != 30 || u.Daily[29].Orders != 1 || u.Daily[29].Day != time.Now().UTC().Format(time.DateOnly) {
		t.Fatalf("usage: %s", vb)
	}
}

// TestCheckoutConcurrentRedeems, on SQLite and on PostgreSQL behind a real
// gateway: one grant redeemed by 50 concurrent orders → exactly one wins,
// the others 409 coupon_in_use; one order redeemed 50 times at once → one
// lock and the same answer to all.
func TestCheckoutConcurrentRedeems(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
				if driver == "postgres" {
					c.Store.Driver, c.Store.DSN = "postgres", pgtest.Fresh(t)
				}
			}})
			createRaw(t, s, map[string]any{"id": "hot", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 2})
			ids := claimStored(t, s, "hot", "racer", 2)
			type result struct {
				code     int
				body     []byte
				replayed bool
			}
			run := func(n int, body func(i int) string) []result {
				out := make([]result, n)
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i := 0; i < n; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						code, b, h, err := serviceCall(s, "POST", "/v1/checkout/redeem", "racer", body(i))
						if err != nil {
							t.Error(err)
						}
						out[i] = result{code, b, h.Get("Idempotent-Replayed") == "true"}
					}()
				}
				close(start)
				wg.Wait()
				return out
			}
			won, inUse := 0, 0
			for _, r := range run(50, func(i int) string { return redeemBody(fmt.Sprintf("race-%d", i), ids[0]) }) {
				switch {
				case r.code == 200:
					won++
				case r.code == 409 && strings.Contains(string(r.body), `"coupon_in_use"`):
					inUse++
				default:
					t.Errorf("HTTP %d %s", r.code, r.body)
				}
			}
			if won != 1 || inUse != 49 {
				t.Fatalf("50 orders on one grant: %d won, %d coupon_in_use", won, inUse)
			}
			res := run(50, func(int) string { return redeemBody("same-order", ids[1]) })
			fresh := 0
			for _, r := range res {
				if r.code != 200 || !bytes.Equal(r.body, res[0].body) {
					t.Fatalf("HTTP %d %s\nvs %s", r.code, r.body, res[0].body)
				}
				if !r.replayed {
					fresh++
				}
			}
			if fresh != 1 {
				t.Fatalf("%d of 50 redeems of one order locked (want 1)", fresh)
			}
			for _, id := range ids {
				ts, err := s.Gateway.Store().Transitions(context.Background(), id)
				if err != nil || len(ts) != 1 || ts[0].To != "locked" {
					t.Fatalf("transitions of %s: %+v %v", id, ts, err)
				}
			}
		})
	}
}

// TestCheckoutCancelAndLockExpiry: cancel releases the coupons; a lock not
// confirmed within checkout.lock_ttl expires (the gateway's clock is moved
// 16 minutes on): the sweeper releases it, a late confirm is refused, and
// the coupon serves another order.
func TestCheckoutCancelAndLockExpiry(t *testing.T) {
	clk := &testClock{}
	s := stack.Start(t, stack.Options{GatewayOptions: []gateway.Option{gateway.WithClock(clk.now)},
		Tweak: func(c *gateway.Config) { c.Checkout.SweepInterval = 50 * time.Millisecond }})
	ce := subscribeEvents(t, s.Gateway.NATSURL())
	createRaw(t, s, map[string]any{"id": "exp", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100})
	g := claimStored(t, s, "exp", "slowpoke", 1)[0]

	mustCheckout(t, s, "/v1/checkout/redeem", "slowpoke", redeemBody("to-cancel", g), 200)
	if o := decodeOrder(t, mustCheckout(t, s, "/v1/orders/to-cancel/cancel", "slowpoke", "", 200)); o.State != "cancelled" {
		t.Fatalf("cancel: %+v", o)
	}
	mustCheckout(t, s, "/v1/orders/to-cancel/cancel", "slowpoke", "", 200)
	if code, b, _ := s.Checkout("POST", "/v1/orders/to-cancel/confirm", "slowpoke", ""); code != 409 || !strings.Contains(string(b), `"state":"cancelled"`) {
		t.Fatalf("confirm a cancelled order: HTTP %d %s", code, b)
	}
	if st := walletStates(t, s, "slowpoke"); st[g] != "unused/" {
		t.Fatalf("after cancel: %v", st)
	}
	ce.waitFor(t, "released", 1)

	mustCheckout(t, s, "/v1/checkout/redeem", "slowpoke", redeemBody("abandoned", g), 200)
	clk.advance(14 * time.Minute)
	if st := walletStates(t, s, "slowpoke"); st[g] != "locked/abandoned" {
		t.Fatalf("at 14 min: %v", st)
	}
	clk.advance(2 * time.Minute)
	wait.For(t, 5*time.Second, "the sweeper to expire the order", func() bool {
		o, _, err := s.Gateway.Store().Order(context.Background(), "abandoned")
		return err == nil && o.State == "expired"
	})
	if st := walletStates(t, s, "slowpoke"); st[g] != "unused/" {
		t.Fatalf("after expiry: %v", st)
	}
	if code, b, _ := s.Checkout("POST", "/v1/orders/abandoned/confirm", "slowpoke", ""); code != 409 || !strings.Contains(string(b), `"state":"expired"`) {
		t.Fatalf("late confirm: HTTP %d %s", code, b)
	}
	// A retried redeem of the expired order answers its stored outcome, now expired.
	if o := decodeOrder(t, mustCheckout(t, s, "/v1/checkout/redeem", "slowpoke", redeemBody("abandoned", g), 200)); o.State != "expired" {
		t.Fatalf("replay of an expired order: %+v", o)
	}
	// The coupon serves a new order; and a lock that expired before any
	// sweep is free to a redeem at once (the store ends the old order).
	mustCheckout(t, s, "/v1/checkout/redeem", "slowpoke", redeemBody("second", g), 200)
	rel := ce.waitFor(t, "released", 2)
	if rel[1]["cause"] != "lock_expired" || rel[1]["order_id"] != "abandoned" {
		t.Fatalf("released events %v", rel)
	}
}

// TestCheckoutRefunds: a partial refund keeps the coupons used and reports
// the refunded units' share; the refund completing the order returns the
// on_refund: return coupon and keeps the keep one; after the coupon's
// validity ended a return leaves it used. Idempotent by refund_id.
func TestCheckoutRefunds(t *testing.T) {
	clk := &testClock{}
	s := stack.Start(t, stack.Options{GatewayOptions: []gateway.Option{gateway.WithClock(clk.now)}})
	ce := subscribeEvents(t, s.Gateway.NATSURL())
	until := time.Now().Add(30 * time.Minute).UTC().Format(time.RFC3339)
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	createRaw(t, s, map[string]any{"id": "ret", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 2,
		"validity": map[string]any{"mode": "fixed", "from": from, "until": until}})
	createRaw(t, s, map[string]any{"id": "keep", "coupon": map[string]any{"type": "voucher", "amount": 300, "issuer": map[string]any{"type": "store", "store_id": "s1"}},
		"stock": 100, "on_refund": "keep"})
	ret := claimStored(t, s, "ret", "shopper", 2)
	keep := claimStored(t, s, "keep", "shopper", 1)[0]
	order := `"items":[{"sku":"a","store_id":"s1","unit_price":1000,"quantity":2},{"sku":"b","store_id":"s1","unit_price":3000,"quantity":1}]`
	redeem := func(id string, grants ...string) {
		ids, _ := json.Marshal(grants)
		mustCheckout(t, s, "/v1/checkout/redeem", "shopper", fmt.Sprintf(`{"order_id":%q,%s,"grant_ids":%s}`, id, order, ids), 200)
	}
	redeem("r-order", ret[0], keep)
	if code, b, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", `{"refund_id":"early"}`); code != 409 || !strings.Contains(string(b), `"state":"locked"`) {
		t.Fatalf("refund before confirm: HTTP %d %s", code, b)
	}
	mustCheckout(t, s, "/v1/orders/r-order/confirm", "shopper", "", 200)

	partial := `{"refund_id":"r1","lines":[{"line":0,"quantity":1}]}`
	code, first, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", partial)
	p := decodeOrder(t, first)
	// 800 off 5000: line 0 (2000) carries 320, one unit of it 160.
	if code != 200 || p.State != "partially_refunded" || p.Refund.Discount != 160 || p.Refund.Refund != 840 || p.Refund.OrderRefunded {
		t.Fatalf("partial refund: HTTP %d %s", code, first)
	}
	if st := walletStates(t, s, "shopper"); st[ret[0]] != "used/r-order" || st[keep] != "used/r-order" {
		t.Fatalf("after a partial refund: %v", st)
	}
	code, again, h := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", partial)
	if code != 200 || !bytes.Equal(again, first) || h.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("refund retried: HTTP %d %s", code, again)
	}
	if code, b, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", `{"refund_id":"r1","lines":[{"line":1,"quantity":1}]}`); code != 409 || !strings.Contains(string(b), `"order_conflict"`) {
		t.Fatalf("refund id with another body: HTTP %d %s", code, b)
	}
	if code, b, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", `{"refund_id":"r2","lines":[{"line":0,"quantity":2}]}`); code != 400 || !strings.Contains(string(b), `"fields"`) {
		t.Fatalf("over-refund: HTTP %d %s", code, b)
	}
	code, b, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", `{"refund_id":"rest"}`)
	full := decodeOrder(t, b)
	if code != 200 || full.State != "refunded" || !full.Refund.OrderRefunded || full.Refund.Discount != 800-160 {
		t.Fatalf("full refund: HTTP %d %s", code, b)
	}
	returned := map[string]bool{}
	for _, c := range full.Refund.Coupons {
		returned[c.GrantID] = c.Returned
	}
	if !returned[ret[0]] || returned[keep] {
		t.Fatalf("returned %v", returned)
	}
	if st := walletStates(t, s, "shopper"); st[ret[0]] != "unused/" || st[keep] != "used/r-order" {
		t.Fatalf("after the full refund: %v", st)
	}
	if code, b, _ := s.Checkout("POST", "/v1/orders/r-order/refund", "shopper", `{"refund_id":"more"}`); code != 409 || !strings.Contains(string(b), `"state":"refunded"`) {
		t.Fatalf("refund after full refund: HTTP %d %s", code, b)
	}
	if ev := ce.waitFor(t, "returned", 1); ev[0]["grant_id"] != ret[0] {
		t.Fatalf("returned event %v", ev)
	}

	// on_refund return, but the validity has ended by the refund: stays used.
	redeem("late-order", ret[1])
	mustCheckout(t, s, "/v1/orders/late-order/confirm", "shopper", "", 200)
	clk.advance(31 * time.Minute)
	b = mustCheckout(t, s, "/v1/orders/late-order/refund", "shopper", `{"refund_id":"all"}`, 200)
	if late := decodeOrder(t, b); late.State != "refunded" || len(late.Refund.Coupons) != 1 || late.Refund.Coupons[0].Returned {
		t.Fatalf("refund after validity ended: %s", b)
	}
	if st := walletStates(t, s, "shopper"); st[ret[1]] != "used/late-order" {
		t.Fatalf("coupon after validity ended: %v", st)
	}
}

// TestCheckoutClaimThenQuoteImmediately: a quote naming a grant just
// claimed, before the pipeline stored it, is a retryable 503
// not_yet_stored, never "no such coupon". On one gateway its ledger knows
// the grant; through a second gateway (shared Redis and NATS, stores that
// never receive it) Redis's grant sets do. An id nobody granted, or
// another user's grant, is 404 not_found.
func TestCheckoutClaimThenQuoteImmediately(t *testing.T) {
	t.Run("one gateway, the pipeline running", func(t *testing.T) {
		s := stack.Start(t, stack.Options{})
		createRaw(t, s, map[string]any{"id": "fresh", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 1000})
		lagged, stored := 0, 0
		for i := 0; i < 20; i++ {
			user := fmt.Sprintf("quick-%d", i)
			a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "fresh", User: user, Device: "d"})
			if err != nil || a.Status != "granted" {
				t.Fatalf("claim: %+v %v", a, err)
			}
			body := fmt.Sprintf(`{%s,"grant_ids":[%q]}`, twoStores, a.GrantID)
			for {
				code, b, h := s.AsUser("POST", "/v1/checkout/quote", user, body)
				if code == 200 {
					stored++
					break
				}
				if code != 503 || !strings.Contains(string(b), `"not_yet_stored"`) || h.Get("Retry-After") == "" {
					t.Fatalf("quote right after the claim: HTTP %d %s", code, b)
				}
				lagged++
				time.Sleep(5 * time.Millisecond)
			}
		}
		t.Logf("%d claims quoted: 200 once stored, after %d not_yet_stored answers in all", stored, lagged)
		if code, b, _ := s.AsUser("POST", "/v1/checkout/quote", "quick-0", fmt.Sprintf(`{%s,"grant_ids":["0000000000000000deadbeefdeadbeef"]}`, twoStores)); code != 404 || !strings.Contains(string(b), `"not_found"`) {
			t.Fatalf("unknown grant: HTTP %d %s", code, b)
		}
	})
	t.Run("two gateways, no sink", func(t *testing.T) {
		redis := redisserver.Start(t, redisserver.Options{})
		ns := natsserver.Start(t)
		noSink := func(c *gateway.Config) { c.NATS.URL, c.Sink.Embedded = ns.URL(), false }
		a := stack.Start(t, stack.Options{Redis: redis, Tweak: noSink})
		b := stack.Start(t, stack.Options{Redis: redis, Tweak: noSink})
		createRaw(t, a, map[string]any{"id": "lag", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100})
		wait.For(t, 5*time.Second, "b to see the campaign", func() bool {
			code, _ := b.Admin("GET", "/admin/v1/campaigns/lag", nil)
			return code == 200
		})
		ans, err := a.Claim(context.Background(), stack.ClaimRequest{Campaign: "lag", User: "early", Device: "d"})
		if err != nil || ans.Status != "granted" {
			t.Fatalf("claim: %+v %v", ans, err)
		}
		quote := func(s *stack.Stack, user, grant string) (int, []byte, http.Header) {
			return s.AsUser("POST", "/v1/checkout/quote", user, fmt.Sprintf(`{%s,"grant_ids":[%q]}`, twoStores, grant))
		}
		for name, s := range map[string]*stack.Stack{"a (its ledger)": a, "b (Redis)": b} {
			code, body, h := quote(s, "early", ans.GrantID)
			if code != 503 || !strings.Contains(string(body), `"not_yet_stored"`) || h.Get("Retry-After") != "1" || !strings.Contains(string(body), ans.GrantID) {
				t.Errorf("gateway %s: HTTP %d %s", name, code, body)
			}
			if code, body, _ := quote(s, "someone-else", ans.GrantID); code != 404 || !strings.Contains(string(body), `"not_found"`) {
				t.Errorf("gateway %s, another user: HTTP %d %s", name, code, body)
			}
			if code, body, _ := quote(s, "early", "0000000000000000deadbeefdeadbeef"); code != 404 {
				t.Errorf("gateway %s, unknown id: HTTP %d %s", name, code, body)
			}
			if code, body, _ := s.Checkout("POST", "/v1/checkout/redeem", "early", redeemBody("too-early", ans.GrantID)); code != 503 || !strings.Contains(string(body), `"not_yet_stored"`) {
				t.Errorf("gateway %s, redeem: HTTP %d %s", name, code, body)
			}
		}
	})
}

// TestCheckoutBadInputNever500: malformed bodies, wrong callers and
// unknown orders get their table status, with the fields named.
func TestCheckoutBadInputNever500(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	item := `{"sku":"a","store_id":"s","unit_price":100,"quantity":1}`
	cases := []struct {
		name, path, authz, user, body string
		code                          int
		status                        string
		field                         string
	}{
		{"empty quote", "/v1/checkout/quote", "user", "", "", 400, "invalid_request", ""},
		{"not JSON", "/v1/checkout/quote", "user", "", "{", 400, "invalid_request", ""},
		{"unknown field", "/v1/checkout/quote", "user", "", `{"items":[` + item + `],"bogus":1}`, 400, "invalid_request", "bogus"},
		{"wrong type", "/v1/checkout/quote", "user", "", `{"items":[{"sku":"a","store_id":"s","unit_price":"1","quantity":1}]}`, 400, "invalid_request", "items.unit_price"},
		{"no lines", "/v1/checkout/quote", "user", "", `{"items":[]}`, 400, "invalid_request", "items"},
		{"negative price", "/v1/checkout/quote", "user", "", `{"items":[{"sku":"a","store_id":"s","unit_price":-1,"quantity":1}]}`, 400, "invalid_request", "items[0].unit_price"},
		{"fee of no store", "/v1/checkout/quote", "user", "", `{"items":[` + item + `],"shipping":{"x":1}}`, 400, "invalid_request", "shipping.x"},
		{"trailing data", "/v1/checkout/quote", "user", "", `{"items":[` + item + `]} {}`, 400, "invalid_request", ""},
		{"grant chosen twice", "/v1/checkout/quote", "user", "", `{"items":[` + item + `],"grant_ids":["a","a"]}`, 400, "invalid_request", "grant_ids[1]"},
		{"bad grant id", "/v1/checkout/quote", "user", "", `{"items":[` + item + `],"grant_ids":["a b"]}`, 400, "invalid_request", "grant_ids[0]"},
		{"order id in a quote", "/v1/checkout/quote", "user", "", `{"order_id":"o","items":[` + item + `]}`, 400, "invalid_request", "order_id"},
		{"quote without a token", "/v1/checkout/quote", "", "", `{"items":[` + item + `]}`, 401, "unauthenticated", ""},
		{"quote with an admin token", "/v1/checkout/quote", "admin", "", `{"items":[` + item + `]}`, 401, "unauthenticated", ""},
		{"checkout token without X-User-ID", "/v1/checkout/quote", "checkout", "", `{"items":[` + item + `]}`, 400, "invalid_request", "X-User-ID"},
		{"redeem without order id", "/v1/checkout/redeem", "checkout", "u", `{"items":[` + item + `],"grant_ids":["g"]}`, 400, "invalid_request", "order_id"},
		{"redeem without grants", "/v1/checkout/redeem", "checkout", "u", `{"order_id":"o","items":[` + item + `]}`, 400, "invalid_request", "grant_ids"},
		{"redeem with the user's token", "/v1/checkout/redeem", "user", "", `{"order_id":"o","items":[` + item + `],"grant_ids":["g"]}`, 403, "forbidden", ""},
		{"redeem with an admin token", "/v1/checkout/redeem", "admin", "", `{"order_id":"o","items":[` + item + `],"grant_ids":["g"]}`, 403, "forbidden", ""},
		{"redeem without a token", "/v1/checkout/redeem", "", "", `{}`, 401, "unauthenticated", ""},
		{"redeem of an unknown grant", "/v1/checkout/redeem", "checkout", "u", `{"order_id":"o","items":[` + item + `],"grant_ids":["0000000000000000deadbeefdeadbeef"]}`, 404, "not_found", ""},
		{"confirm an unknown order", "/v1/orders/nope/confirm", "checkout", "u", "", 404, "not_found", ""},
		{"cancel an unknown order", "/v1/orders/nope/cancel", "checkout", "u", "", 404, "not_found", ""},
		{"order id too long", "/v1/orders/" + strings.Repeat("o", 129) + "/confirm", "checkout", "u", "", 400, "invalid_request", "order_id"},
		{"order id with an encoded slash", "/v1/orders/a%2F..%2Fnope/cancel", "checkout", "u", "", 400, "invalid_request", "order_id"},
		{"redeem of an order id the path cannot carry", "/v1/checkout/redeem", "checkout", "u", `{"order_id":"a/b","items":[` + item + `],"grant_ids":["g"]}`, 400, "invalid_request", "order_id"},
		{"refund without id", "/v1/orders/nope/refund", "checkout", "u", `{}`, 400, "invalid_request", "refund_id"},
		{"refund of a bad line", "/v1/orders/nope/refund", "checkout", "u", `{"refund_id":"r","lines":[{"line":-1,"quantity":1}]}`, 400, "invalid_request", "lines[0].line"},
		{"refund of an unknown order", "/v1/orders/nope/refund", "checkout", "u", `{"refund_id":"r"}`, 404, "not_found", ""},
		{"wallet of an unknown state", "/v1/me/coupons?state=lost", "user", "", "", 400, "invalid_request", "state"},
	}
	for _, c := range cases {
		method := "POST"
		if strings.HasPrefix(c.path, "/v1/me/") {
			method = "GET"
		}
		req, _ := http.NewRequest(method, s.PublicURL+c.path, strings.NewReader(c.body))
		switch c.authz {
		case "user":
			req.Header.Set("Authorization", "Bearer "+stack.Token("u"))
		case "admin":
			req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
		case "checkout":
			req.Header.Set("Authorization", "Bearer "+stack.CheckoutToken)
		}
		if c.user != "" {
			req.Header.Set("X-User-ID", c.user)
		}
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var a struct {
			Status string   `json:"status"`
			Fields []string `json:"fields"`
		}
		_ = json.Unmarshal(b, &a)
		if resp.StatusCode != c.code || a.Status != c.status || (c.field != "" && !slices.Contains(a.Fields, c.field)) {
			t.Errorf("%s: HTTP %d %s (want %d %s naming %q)", c.name, resp.StatusCode, b, c.code, c.status, c.field)
		}
	}
	// A body over the server's limit, and a GET of a POST route.
	code, b, _ := s.AsUser("POST", "/v1/checkout/quote", "u", `{"items":[`+strings.Repeat(item+",", 1000)+item+`]}`)
	if code != 400 {
		t.Errorf("oversized body: HTTP %d %s", code, b)
	}
	if code, _, _ := s.AsUser("GET", "/v1/checkout/quote", "u", ""); code != 405 {
		t.Errorf("GET quote: HTTP %d", code)
	}
}

// TestCheckoutExpiringEvents: a campaign with expiring_notice_hours
// publishes flashgate.coupons.expiring once per unused grant entering that
// window before its valid_until, however many sweeps pass; a used grant,
// and a campaign without the field, get none. The gateway's clock is moved
// a day on.
func TestCheckoutExpiringEvents(t *testing.T) {
	clk := &testClock{}
	s := stack.Start(t, stack.Options{GatewayOptions: []gateway.Option{gateway.WithClock(clk.now)},
		Tweak: func(c *gateway.Config) { c.Checkout.SweepInterval = 50 * time.Millisecond }})
	ce := subscribeEvents(t, s.Gateway.NATSURL())
	createRaw(t, s, map[string]any{"id": "later", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100, "per_user_limit": 2,
		"validity": map[string]any{"mode": "days_after_claim", "days": 2}, "expiring_notice_hours": 24})
	createRaw(t, s, map[string]any{"id": "quiet", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 100,
		"validity": map[string]any{"mode": "days_after_claim", "days": 2}})
	ids := claimStored(t, s, "later", "forgetful", 2)
	claimStored(t, s, "quiet", "forgetful", 1)
	mustCheckout(t, s, "/v1/checkout/redeem", "forgetful", redeemBody("spent", ids[0]), 200)
	mustCheckout(t, s, "/v1/orders/spent/confirm", "forgetful", "", 200)
	time.Sleep(300 * time.Millisecond) // six sweeps: nothing is within 24 h of its end yet
	if n := len(ce.of("expiring")); n != 0 {
		t.Fatalf("%d expiring events two days before the end", n)
	}
	clk.advance(25 * time.Hour)
	evs := ce.waitFor(t, "expiring", 1)
	time.Sleep(500 * time.Millisecond) // ten more sweeps
	used := len(ce.of("used"))
	ce.mu.Lock()
	total := len(ce.evs) - used
	ce.mu.Unlock()
	if total != 1 || len(ce.of("expiring")) != 1 {
		t.Fatalf("%d expiring messages (want one, for the unused grant): %v", total, ce.of("expiring"))
	}
	if e := evs[0]; e["grant_id"] != ids[1] || e["event_id"] != "expiring:"+ids[1] || e["campaign"] != "later" || e["user"] != "forgetful" || e["valid_until"] == nil {
		t.Fatalf("expiring event %v", e)
	}
}
