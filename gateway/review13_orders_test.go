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

// TestReview13OrderIDsTheOrderRoutesCannotReach: redeem accepts any order_id
// of 1..128 printable characters, but confirm, cancel and refund take it
// from the path. An order id the path cannot carry ("a/b", "..", ".",
// "x/../y") is redeemed — its coupons locked — and then no confirm can
// ever reach it, percent-encoded or not: the buyer pays, the order service
// cannot confirm, the lock expires and the coupon is released under a
// paid order.
func TestReview13OrderIDsTheOrderRoutesCannotReach(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "slash", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 10})
	ids := claimStored(t, s, "slash", "pathy", 4)
	for i, id := range []string{"shop/2026/0001", "..", ".", "x/../y"} {
		code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "pathy", redeemBody(id, ids[i]))
		if code != 200 {
			t.Logf("order id %q refused at redeem (fine): HTTP %d %s", id, code, b)
			continue
		}
		o := decodeOrder(t, b)
		if o.State != "locked" || o.OrderID != id {
			t.Fatalf("redeem %q: %s", id, b)
		}
		code, b, _ = s.Checkout("POST", "/v1/orders/"+url.PathEscape(id)+"/confirm", "pathy", "")
		if code != 200 {
			t.Errorf("order id %q was redeemed (coupon %s locked to it) but cannot be confirmed: POST /v1/orders/%s/confirm → HTTP %d %s",
				id, ids[i], url.PathEscape(id), code, b)
		}
	}
}

// TestReview13DotSegmentOrderIDMovesAnotherOrder: the order service
// confirms (or cancels) order "x/../y", percent-encoded as the path
// requires; the gateway normalizes the path and moves order "y" instead —
// another order of the same user, whose coupon is now used (or released)
// by a step nobody asked for, while "x/../y" stays locked.
func TestReview13DotSegmentOrderIDMovesAnotherOrder(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	createRaw(t, s, map[string]any{"id": "dots", "coupon": map[string]any{"type": "voucher", "amount": 500}, "stock": 100, "per_user_limit": 10})
	ids := claimStored(t, s, "dots", "buyer2", 2)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer2", redeemBody("y", ids[0]), 200)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer2", redeemBody("x/../y", ids[1]), 200)
	// The order service cancels the abandoned order "x/../y".
	code, b, _ := s.Checkout("POST", "/v1/orders/"+url.PathEscape("x/../y")+"/cancel", "buyer2", "")
	o := decodeOrder(t, b)
	st := walletStates(t, s, "buyer2")
	if code == 200 && o.OrderID != "x/../y" {
		t.Errorf("cancel of order %q answered HTTP 200 for order %q (state %s): wallet %v", "x/../y", o.OrderID, o.State, st)
	}
	if st[ids[0]] != "locked/y" {
		t.Errorf("order y's coupon %s is %q after a cancel of another order", ids[0], st[ids[0]])
	}
	// The same with confirm and refund: the order service confirms and then
	// refunds "p/../q"; order "q" (locked, never paid) is confirmed and refunded.
	more := claimStored(t, s, "dots", "buyer3", 4)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer3", redeemBody("q", more[0]), 200)
	mustCheckout(t, s, "/v1/checkout/redeem", "buyer3", redeemBody("p/../q", more[1]), 200)
	code, b, _ = s.Checkout("POST", "/v1/orders/"+url.PathEscape("p/../q")+"/confirm", "buyer3", "")
	if o := decodeOrder(t, b); code == 200 && o.OrderID != "p/../q" {
		t.Errorf("confirm of order %q answered HTTP 200 for order %q (state %s)", "p/../q", o.OrderID, o.State)
	}
	code, b, _ = s.Checkout("POST", "/v1/orders/"+url.PathEscape("p/../q")+"/refund", "buyer3", `{"refund_id":"r1"}`)
	if o := decodeOrder(t, b); code == 200 && o.OrderID != "p/../q" {
		t.Errorf("refund of order %q answered HTTP 200 for order %q (state %s): %s", "p/../q", o.OrderID, o.State, b)
	}
	t.Logf("wallet after: %v", walletStates(t, s, "buyer3"))
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
