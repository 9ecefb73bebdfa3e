package checkout

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestRefundPartialUnits: a line of 3 units carrying $6 of a store coupon
// and $4 of a platform coupon; refunded one unit at a time, each unit
// carries a third of the $10 (333, 333, 334 cents), split in proportion to
// what each coupon has left, and the shares sum to each discount exactly.
func TestRefundPartialUnits(t *testing.T) {
	o := order(item("s1", "a-1", 5000, 3), item("s1", "a-2", 1000, 1))
	o.Shipping = map[string]int64{"s1": 500}
	store := percent("st", "s1", 10, 600)
	store.Scope = Scope{Products: []string{"a-1"}}
	plat := voucher("pl", "", 400)
	plat.Scope = Scope{Products: []string{"a-1"}}
	fs := Coupon{GrantID: "fs", Kind: KindFreeShipping}
	q := mustQuote(t, o, []Coupon{store, plat, fs})
	if got := summary(q); got != "st=600 pl=400 fs=500 |" {
		t.Fatalf("quote: %s", got)
	}
	want := [][2]int64{{200, 133}, {200, 133}, {200, 134}}
	var earlier []LineQty
	var st, pl int64
	for u, w := range want {
		r, err := Refund(q, earlier, []LineQty{{Line: 0, Quantity: 1}}, t0)
		if err != nil {
			t.Fatal(err)
		}
		got := [2]int64{r.Coupons[0].Items, r.Coupons[1].Items}
		if got != w || r.Amount != 5000 || r.Refund != 5000-w[0]-w[1] || r.OrderRefunded {
			t.Errorf("unit %d: shares %v, want %v; %+v", u+1, got, w, r)
		}
		st += got[0]
		pl += got[1]
		earlier = []LineQty{{Line: 0, Quantity: int64(u + 1)}}
	}
	if st != 600 || pl != 400 {
		t.Errorf("shares sum to %d and %d, want 600 and 400", st, pl)
	}
	// The last line completes the order: fees' discounts are reported and
	// the coupons return (on_refund defaults to return; still valid).
	r, err := Refund(q, earlier, []LineQty{{Line: 1, Quantity: 1}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OrderRefunded || r.Discount != 0 || r.Refund != 1000 || r.Coupons[2].Shipping != 500 {
		t.Errorf("last line: %+v", r)
	}
	for _, c := range r.Coupons {
		if !c.Returned {
			t.Errorf("%s not returned", c.GrantID)
		}
	}
	// Two units at once carry what the two units carried one by one.
	r, err = Refund(q, nil, []LineQty{{Line: 0, Quantity: 2}}, t0)
	if err != nil || r.Coupons[0].Items != 400 || r.Coupons[1].Items != 266 {
		t.Errorf("two units: %+v %v", r, err)
	}
}

func TestRefundReturnsCoupon(t *testing.T) {
	o := order(item("s1", "a-1", 5000, 2))
	ret := voucher("ret", "s1", 500)
	ret.ValidUntil = week
	keep := voucher("keep", "", 500)
	keep.OnRefund = RefundKeep
	q := mustQuote(t, o, []Coupon{ret, keep})
	all := []LineQty{{Line: 0, Quantity: 2}}
	cases := []struct {
		name     string
		earlier  []LineQty
		now      []LineQty
		at       time.Time
		ret      bool
		complete bool
	}{
		{"full, valid", nil, all, t0, true, true},
		{"full, validity ended", nil, all, week, false, true},
		{"partial keeps it used", nil, []LineQty{{Line: 0, Quantity: 1}}, t0, false, false},
		{"partial completing the order", []LineQty{{Line: 0, Quantity: 1}}, []LineQty{{Line: 0, Quantity: 1}}, t0, true, true},
	}
	for _, c := range cases {
		r, err := Refund(q, c.earlier, c.now, c.at)
		if err != nil {
			t.Fatal(err)
		}
		if r.OrderRefunded != c.complete || r.Coupons[0].Returned != c.ret || r.Coupons[1].Returned {
			t.Errorf("%s: order refunded %v, ret %v, keep %v", c.name, r.OrderRefunded, r.Coupons[0].Returned, r.Coupons[1].Returned)
		}
	}
}

func TestRefundErrors(t *testing.T) {
	q := mustQuote(t, order(item("s1", "a-1", 5000, 2), item("s1", "a-2", 100, 1)), []Coupon{voucher("v", "", 500)})
	cases := []struct {
		name         string
		earlier, now []LineQty
	}{
		{"nothing", nil, nil},
		{"no such line", nil, []LineQty{{Line: 2, Quantity: 1}}},
		{"line twice", nil, []LineQty{{Line: 0, Quantity: 1}, {Line: 0, Quantity: 1}}},
		{"too many units", nil, []LineQty{{Line: 0, Quantity: 3}}},
		{"more than is left", []LineQty{{Line: 0, Quantity: 2}}, []LineQty{{Line: 0, Quantity: 1}}},
		{"zero units", nil, []LineQty{{Line: 1, Quantity: 0}}},
	}
	for _, c := range cases {
		if _, err := Refund(q, c.earlier, c.now, t0); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	bad := *q
	bad.Lines = slices.Clone(q.Lines)
	bad.Lines[0].Discounts = []Share{{GrantID: "ghost", Amount: 1}}
	if _, err := Refund(&bad, nil, []LineQty{{Line: 0, Quantity: 1}}, t0); !errors.Is(err, ErrInvalid) {
		t.Errorf("a quotation naming an unknown coupon: %v", err)
	}
}
