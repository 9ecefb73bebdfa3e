package gateway_test

// Adversarial review of issue 13 (I9) through a real gateway.

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestReview13OrderIDsTheOrderRoutesCannotReach: confirm, cancel and
// refund take the order id from the path, which the server percent-decodes
// and normalizes. An order id the path cannot carry as itself ("a/b",
// "..", ".", "x/../y") was redeemed — its coupons locked — and then no
// confirm could ever reach it, percent-encoded or not: the buyer paid, the
// order service could not confirm, the lock expired and the coupon was
// released under a paid order. Now redeem refuses such an id (400
// invalid_request naming order_id) and locks nothing; no request on the
// order routes reaches an order of that name; an id of the path-safe
// alphabet goes through every step, percent-encoded or not.
func TestReview13OrderIDsTheOrderRoutesCannotReach(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "slash", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 20})
	bad := []string{"shop/2026/0001", "..", ".", "x/../y", "a%2Fb", "a b", "a?b", "a#b", "é", strings.Repeat("o", 129)}
	ids := claimStored(t, s, "slash", "pathy", len(bad)+1)
	for i, id := range bad {
		code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "pathy", redeemBody(id, ids[i]))
		if code != 400 || !strings.Contains(string(b), `"invalid_request"`) || !strings.Contains(string(b), `"fields":["order_id"]`) {
			t.Errorf("redeem of order id %q: HTTP %d %s (want 400 invalid_request naming order_id)", id, code, b)
		}
		if st := walletStates(t, s, "pathy")[ids[i]]; st != "unused/" {
			t.Errorf("order id %q refused, yet coupon %s is %q", id, ids[i], st)
		}
		for _, step := range []string{"confirm", "cancel", "refund"} {
			path := "/v1/orders/" + url.PathEscape(id) + "/" + step
			if code, b, _ := s.Checkout("POST", path, "pathy", `{"refund_id":"r1"}`); code == 200 {
				t.Errorf("POST %s answered HTTP 200 for an order that cannot exist: %s", path, b)
			}
		}
	}
	// Every character of the alphabet, through every step; ':' sent as %3A
	// (as encodeURIComponent writes it) reaches the same order.
	const good = "Shop_2026:0001.a-B9"
	mustCheckout(t, s, "/v1/checkout/redeem", "pathy", redeemBody(good, ids[len(bad)]), 200)
	for _, path := range []string{"/v1/orders/" + good + "/confirm", "/v1/orders/" + strings.ReplaceAll(good, ":", "%3A") + "/confirm"} {
		if o := decodeOrder(t, mustCheckout(t, s, path, "pathy", "", 200)); o.OrderID != good || o.State != "confirmed" {
			t.Fatalf("POST %s: %+v", path, o)
		}
	}
	b := mustCheckout(t, s, "/v1/orders/"+url.PathEscape(good)+"/refund", "pathy", `{"refund_id":"r1"}`, 200)
	if !strings.Contains(string(b), `"order_id":"`+good+`"`) || !strings.Contains(string(b), `"state":"refunded"`) {
		t.Fatalf("refund of %s: %s", good, b)
	}
}

// dotPaths are the paths a client could send to step ("confirm", "cancel",
// "refund") on order id: percent-encoded as url.PathEscape does, or not,
// with the dots encoded or not.
func dotPaths(id, step string) []string {
	return []string{
		"/v1/orders/" + url.PathEscape(id) + "/" + step,
		"/v1/orders/" + id + "/" + step,
		"/v1/orders/" + strings.ReplaceAll(id, ".", "%2E") + "/" + step,
		"/v1/orders/" + strings.ReplaceAll(url.PathEscape(id), ".", "%2E") + "/" + step,
	}
}

// TestReview13DotSegmentOrderIDMovesAnotherOrder: the order service
// confirmed (or cancelled) order "x/../y", percent-encoded as the path
// requires; the gateway normalized the path and moved order "y" instead —
// another order of the same user, whose coupon was then used (or released)
// by a step nobody asked for, while "x/../y" stayed locked. Now "x/../y"
// cannot be redeemed, and a request whose path, as sent, names anything
// but the order the normalized path routes to is refused (400
// invalid_request naming order_id): no form of it moves order "y".
func TestReview13DotSegmentOrderIDMovesAnotherOrder(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "dots", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 10})
	refused := func(path, user, body string) {
		t.Helper()
		code, b, _ := s.Checkout("POST", path, user, body)
		if code != 400 || !strings.Contains(string(b), `"invalid_request"`) || !strings.Contains(string(b), `"fields":["order_id"]`) {
			t.Errorf("POST %s: HTTP %d %s (want 400 invalid_request naming order_id)", path, code, b)
		}
	}
	ids := claimStored(t, s, "dots", "buyer2", 2)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer2", redeemBody("y", ids[0]), 200)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer2", redeemBody("x/../y", ids[1]), 400)
	// The order service cancels the abandoned order "x/../y", however it
	// writes the path.
	for _, path := range dotPaths("x/../y", "cancel") {
		refused(path, "buyer2", "")
	}
	st := walletStates(t, s, "buyer2")
	if st[ids[0]] != "locked/y" || st[ids[1]] != "unused/" {
		t.Errorf("after cancels of \"x/../y\": wallet %v (want %s locked by y, %s unused)", st, ids[0], ids[1])
	}
	// Order y is still locked: its own confirm goes through.
	if o := decodeOrder(t, mustCheckout(t, s, "/v1/orders/y/confirm", "buyer2", "", 200)); o.OrderID != "y" || o.State != "confirmed" {
		t.Errorf("confirm of y: %+v", o)
	}
	// The same with confirm and refund: the order service confirms and then
	// refunds "p/../q"; order "q" (locked, never paid) must not move.
	more := claimStored(t, s, "dots", "buyer3", 2)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer3", redeemBody("q", more[0]), 200)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer3", redeemBody("p/../q", more[1]), 400)
	other := map[string]string{"confirm": "cancel", "refund": "cancel", "cancel": "confirm"}
	for _, step := range []string{"confirm", "refund", "cancel"} {
		paths := append(dotPaths("p/../q", step), "/v1/orders/q/./"+step, "/v1/orders/q/%2E/"+step, "/v1/orders/q/x/../"+step,
			"/v1/orders/q/"+other[step]+"/../"+step, "/v1/orders//q/"+step)
		for _, path := range paths {
			refused(path, "buyer3", `{"refund_id":"r1"}`)
		}
	}
	if st := walletStates(t, s, "buyer3"); st[more[0]] != "locked/q" || st[more[1]] != "unused/" {
		t.Errorf("after steps on \"p/../q\": wallet %v (want %s locked by q, %s unused)", st, more[0], more[1])
	}
	// Order q was neither confirmed nor refunded: its own cancel goes through.
	if o := decodeOrder(t, mustCheckout(t, s, "/v1/orders/q/cancel", "buyer3", "", 200)); o.OrderID != "q" || o.State != "cancelled" {
		t.Errorf("cancel of q: %+v", o)
	}
}

// TestReview13ExtremeOrder: the largest order the limits allow (200 lines
// of 9,999 units at $10,000,000.00, 200 stores' fees at the maximum) with
// coupons at the campaign maxima: a quote, a redeem, a confirm and a full
// refund answer 200 with non-negative amounts that add up.
func TestReview13ExtremeOrder(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "pct", "coupon": map[string]any{"type": "percent", "percent": 100, "max_off": int64(1) << 60}, "stock": 10})
	createRaw(t, s, map[string]any{"id": "thr", "coupon": map[string]any{"type": "threshold", "tiers": []map[string]int64{{"min": 1000, "off": 999}, {"min": int64(1) << 60, "off": int64(1)<<60 - 1}}}, "stock": 10})
	createRaw(t, s, map[string]any{"id": "fs", "coupon": map[string]any{"type": "free_shipping"}, "stock": 10})
	pct := claimStored(t, s, "pct", "whale", 1)[0]
	thr := claimStored(t, s, "thr", "whale", 1)[0]
	fs := claimStored(t, s, "fs", "whale", 1)[0]
	var items []string
	ship := map[string]int64{}
	for i := 0; i < 200; i++ {
		st := fmt.Sprintf("s%03d", i)
		items = append(items, fmt.Sprintf(`{"sku":"k%d","store_id":%q,"unit_price":1000000000,"quantity":9999}`, i, st))
		ship[st] = 100_000_000
	}
	sb, _ := json.Marshal(ship)
	order := fmt.Sprintf(`"items":[%s],"shipping":%s`, strings.Join(items, ","), sb)
	for n, combo := range [][]string{{thr, fs}, {pct, fs}} {
		gids, _ := json.Marshal(combo)
		oid := fmt.Sprintf("big-%d", n)
		code, b, _ := s.Checkout("POST", "/v1/checkout/quote", "whale", fmt.Sprintf(`{%s,"grant_ids":%s}`, order, gids))
		var qa struct {
			Quotation struct {
				Items, Shipping, Discount, Payable int64
				NotUsed                            []any `json:"not_used"`
			} `json:"quotation"`
		}
		_ = json.Unmarshal(b, &qa)
		q := qa.Quotation
		if code != 200 || len(q.NotUsed) != 0 {
			t.Fatalf("quote %v: HTTP %d %.400s", combo, code, b)
		}
		if q.Payable < 0 || q.Discount < 0 || q.Items+q.Shipping-q.Discount != q.Payable {
			t.Fatalf("quote amounts %+v", q)
		}
		t.Logf("quote %v: %+v", combo, q)
		code, b, _ = s.Checkout("POST", "/v1/checkout/redeem", "whale", fmt.Sprintf(`{"order_id":%q,%s,"grant_ids":%s}`, oid, order, gids))
		if code != 200 {
			t.Fatalf("redeem: HTTP %d %.600s", code, b)
		}
		mustCheckout(t, s, "/v1/orders/"+oid+"/confirm", "whale", "", 200)
		code, b, _ = s.Checkout("POST", "/v1/orders/"+oid+"/refund", "whale", `{"refund_id":"half","lines":[{"line":0,"quantity":4999}]}`)
		if code != 200 {
			t.Fatalf("partial refund: HTTP %d %.400s", code, b)
		}
		code, b, _ = s.Checkout("POST", "/v1/orders/"+oid+"/refund", "whale", `{"refund_id":"rest"}`)
		if code != 200 || !strings.Contains(string(b), `"order_refunded":true`) {
			t.Fatalf("full refund: HTTP %d %.400s", code, b)
		}
	}
}

// TestReview13ValidityEndsBetweenQuoteAndRedeem: a grant whose validity
// ends after the quote and before the redeem is refused at redeem
// (not_applicable, expired), and nothing is locked.
func TestReview13ValidityEndsBetweenQuoteAndRedeem(t *testing.T) {
	clk := &testClock{}
	s := stack.Start(t, stack.Options{GatewayOptions: []gateway.Option{gateway.WithClock(clk.now)}})
	until := time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	createRaw(t, s, map[string]any{"id": "brief", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 10,
		"validity": map[string]any{"mode": "fixed", "from": from, "until": until}})
	g := claimStored(t, s, "brief", "late", 1)[0]
	code, b, _ := s.Checkout("POST", "/v1/checkout/quote", "late", fmt.Sprintf(`{%s,"grant_ids":[%q]}`, twoStores, g))
	if code != 200 || strings.Contains(string(b), `"reason"`) {
		t.Fatalf("quote: HTTP %d %s", code, b)
	}
	clk.advance(11 * time.Minute)
	code, b, _ = s.Checkout("POST", "/v1/checkout/redeem", "late", redeemBody("too-late", g))
	if code != 409 || !strings.Contains(string(b), `"not_applicable"`) || !strings.Contains(string(b), `"expired"`) {
		t.Fatalf("redeem after validity ended: HTTP %d %s", code, b)
	}
	if st := walletStates(t, s, "late"); st[g] != "expired/" {
		t.Fatalf("state %v", st)
	}
	// Another user's grant through the service token's X-User-ID: not found.
	if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "mallory", redeemBody("steal", g)); code != 404 {
		t.Fatalf("another user's grant: HTTP %d %s", code, b)
	}
}

// TestReview13DeletedPausedEndedCampaignGrants: the README says a
// soft-deleted, paused or ended campaign's grants stay usable until their
// valid_until: quote and redeem answer 200 for each.
func TestReview13DeletedPausedEndedCampaignGrants(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	for _, id := range []string{"gone", "held", "over"} {
		createRaw(t, s, map[string]any{"id": id, "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 10,
			"validity": map[string]any{"mode": "days_after_claim", "days": 3}})
	}
	gone := claimStored(t, s, "gone", "keeper", 1)[0]
	held := claimStored(t, s, "held", "keeper", 1)[0]
	over := claimStored(t, s, "over", "keeper", 1)[0]
	if code, b := s.Admin("DELETE", "/admin/v1/campaigns/gone", nil); code >= 300 {
		t.Fatalf("delete: HTTP %d %s", code, b)
	}
	if code, b := s.Admin("PATCH", "/admin/v1/campaigns/held", map[string]any{"paused": true}); code >= 300 {
		t.Fatalf("pause: HTTP %d %s", code, b)
	}
	if code, b := s.Admin("PATCH", "/admin/v1/campaigns/over", map[string]any{"ends_at": time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)}); code >= 300 {
		t.Logf("end: HTTP %d %s", code, b)
	}
	time.Sleep(300 * time.Millisecond)
	for i, g := range []string{gone, held, over} {
		code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "keeper", redeemBody(fmt.Sprintf("k%d", i), g))
		if code != 200 {
			t.Errorf("redeem of grant %s: HTTP %d %s", g, code, b)
		}
	}
}
