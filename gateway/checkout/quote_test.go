package checkout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	t0   = time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	week = t0.AddDate(0, 0, 7)
)

// item is a one-line helper: sku in store at price × qty, category and brand
// from the sku's prefix ("shoe-1" is category shoe, brand b-shoe).
func item(store, sku string, price, qty int64) Item {
	cat, _, _ := strings.Cut(sku, "-")
	return Item{SKU: sku, StoreID: store, Category: cat, Brand: "b-" + cat, UnitPrice: price, Quantity: qty}
}

func order(items ...Item) Order { return Order{Items: items} }

func voucher(id, store string, amount int64) Coupon {
	return Coupon{GrantID: id, Kind: KindVoucher, Amount: amount, StoreID: store}
}

func threshold(id, store string, tiers ...Tier) Coupon {
	return Coupon{GrantID: id, Kind: KindThreshold, Tiers: tiers, StoreID: store}
}

func percent(id, store string, pct, maxOff int64) Coupon {
	return Coupon{GrantID: id, Kind: KindPercent, Percent: pct, MaxOff: maxOff, StoreID: store}
}

// summary renders a quotation's choice on one line: "g1=500 g2=1000 | g3:exclusive".
func summary(q *Quotation) string {
	var b strings.Builder
	for i, a := range q.Coupons {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", a.GrantID, a.Discount)
	}
	b.WriteString(" |")
	for _, n := range q.NotUsed {
		fmt.Fprintf(&b, " %s:%s", n.GrantID, n.Reason)
	}
	return b.String()
}

func mustQuote(t *testing.T, o Order, cs []Coupon, chosen ...string) *Quotation {
	t.Helper()
	q, err := Quote(o, cs, chosen, t0)
	if err != nil {
		t.Fatal(err)
	}
	checkQuotationInvariants(t, o, q)
	return q
}

// TestDiscountMath: the examples of each kind, alone.
func TestDiscountMath(t *testing.T) {
	tiers := []Tier{{Min: 10000, Off: 1000}, {Min: 20000, Off: 3000}}
	cases := []struct {
		name  string
		o     Order
		c     Coupon
		want  string
		total int64
	}{
		{"$5 voucher at $5.00", order(item("s1", "a-1", 500, 1)), voucher("v", "", 500), " | v:below_threshold", 0},
		{"$5 voucher at $5.01", order(item("s1", "a-1", 501, 1)), voucher("v", "", 500), "v=500 |", 500},
		{"tiers at $99.99", order(item("s1", "a-1", 9999, 1)), threshold("t", "", tiers...), " | t:below_threshold", 0},
		{"tiers at $100", order(item("s1", "a-1", 10000, 1)), threshold("t", "", tiers...), "t=1000 |", 1000},
		{"tiers at $150", order(item("s1", "a-1", 15000, 1)), threshold("t", "", tiers...), "t=1000 |", 1000},
		{"tiers at $250", order(item("s1", "a-1", 12500, 2)), threshold("t", "", tiers...), "t=3000 |", 3000},
		{"20% at $100", order(item("s1", "a-1", 10000, 1)), percent("p", "", 20, 5000), "p=2000 |", 2000},
		{"20% at $250: exactly the cap", order(item("s1", "a-1", 25000, 1)), percent("p", "", 20, 5000), "p=5000 |", 5000},
		{"20% at $300: capped at $50", order(item("s1", "a-1", 30000, 1)), percent("p", "", 20, 5000), "p=5000 |", 5000},
		{"20% of $0.04 rounds down to nothing", order(item("s1", "a-1", 4, 1)), percent("p", "", 20, 5000), " | p:below_threshold", 0},
		{"20% of $0.99 is 19 cents (rounded down)", order(item("s1", "a-1", 99, 1)), percent("p", "", 20, 5000), "p=19 |", 19},
		{"100% capped by what it applies to", order(item("s1", "a-1", 700, 1)), percent("p", "", 100, 5000), "p=700 |", 700},
		{"product: one unit free", order(item("s1", "a-1", 1000, 3)), Coupon{GrantID: "f", Kind: KindProduct, SKU: "a-1"}, "f=1000 |", 1000},
		{"product: the cheapest line of the sku", order(item("s1", "a-1", 1000, 1), item("s2", "a-1", 800, 2)), Coupon{GrantID: "f", Kind: KindProduct, SKU: "a-1"}, "f=800 |", 800},
		{"product: the sku is not ordered", order(item("s1", "a-1", 1000, 1)), Coupon{GrantID: "f", Kind: KindProduct, SKU: "z-9"}, " | f:out_of_scope", 0},
		{"product of a store: only its lines", order(item("s1", "a-1", 1000, 1), item("s2", "a-1", 800, 1)), Coupon{GrantID: "f", Kind: KindProduct, SKU: "a-1", StoreID: "s1"}, "f=1000 |", 1000},
		{"store coupon of a store not in the order", order(item("s1", "a-1", 1000, 1)), voucher("v", "s9", 100), " | v:out_of_scope", 0},
		{"store threshold counts only its store's lines", order(item("s1", "a-1", 6000, 1), item("s2", "a-2", 6000, 1)), threshold("t", "s1", tiers...), " | t:below_threshold", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := mustQuote(t, c.o, []Coupon{c.c})
			if got := summary(q); got != c.want || q.Discount != c.total {
				t.Errorf("got %q (discount %d), want %q (%d)", got, q.Discount, c.want, c.total)
			}
			if q.Payable != q.Items+q.Shipping-c.total {
				t.Errorf("payable %d, want %d", q.Payable, q.Items+q.Shipping-c.total)
			}
		})
	}
}

func TestFreeShipping(t *testing.T) {
	o := order(item("s1", "a-1", 1000, 1), item("s2", "b-1", 1000, 1), item("s3", "c-1", 1000, 1))
	o.Shipping = map[string]int64{"s1": 300, "s2": 450}
	store := Coupon{GrantID: "fs1", Kind: KindFreeShipping, StoreID: "s1"}
	platform := Coupon{GrantID: "fsp", Kind: KindFreeShipping}
	s3 := Coupon{GrantID: "fs3", Kind: KindFreeShipping, StoreID: "s3"}

	if got := summary(mustQuote(t, o, []Coupon{store})); got != "fs1=300 |" {
		t.Errorf("store free shipping: %s", got)
	}
	q := mustQuote(t, o, []Coupon{platform})
	if got := summary(q); got != "fsp=750 |" {
		t.Errorf("platform free shipping: %s", got)
	}
	if got := fmt.Sprint(q.Coupons[0].Stores); got != "[{s1 300} {s2 450}]" {
		t.Errorf("platform free shipping per store: %s", got)
	}
	// Both: the store's coupon covers its fee first, the platform's what is left.
	if got := summary(mustQuote(t, o, []Coupon{store, platform}, "fsp", "fs1")); got != "fs1=300 fsp=450 |" {
		t.Errorf("store then platform free shipping: %s", got)
	}
	// A store without a fee: nothing to take off.
	if got := summary(mustQuote(t, o, []Coupon{s3})); got != " | fs3:below_threshold" {
		t.Errorf("free shipping without a fee: %s", got)
	}
	// Scoped: only the fees of stores with a line in scope.
	scoped := platform
	scoped.Scope = Scope{Categories: []string{"b"}}
	if got := summary(mustQuote(t, o, []Coupon{scoped})); got != "fsp=450 |" {
		t.Errorf("scoped platform free shipping: %s", got)
	}
}

// TestOneStoreCouponPerStore: two stores in one order, two coupons of the
// first store and one of the second.
func TestOneStoreCouponPerStore(t *testing.T) {
	o := order(item("s1", "a-1", 3000, 2), item("s1", "a-2", 1000, 1), item("s2", "b-1", 4000, 1))
	cs := []Coupon{
		voucher("s1-five", "s1", 500),
		threshold("s1-ten", "s1", Tier{Min: 5000, Off: 1000}),
		percent("s2-10pc", "s2", 10, 1000),
	}
	q := mustQuote(t, o, cs)
	if got, want := summary(q), "s1-ten=1000 s2-10pc=400 | s1-five:one_per_store"; got != want {
		t.Errorf("best: %s, want %s", got, want)
	}
	for _, st := range q.Stores {
		if st.PlatformBorne != 0 || st.StoreBorne != map[string]int64{"s1": 1000, "s2": 400}[st.StoreID] {
			t.Errorf("store %s bears %d, platform %d", st.StoreID, st.StoreBorne, st.PlatformBorne)
		}
	}
	// Chosen: the first of a store's coupons named wins.
	q = mustQuote(t, o, cs, "s1-five", "s1-ten", "s2-10pc")
	if got, want := summary(q), "s1-five=500 s2-10pc=400 | s1-ten:one_per_store"; got != want {
		t.Errorf("chosen: %s, want %s", got, want)
	}
	q = mustQuote(t, o, cs, "s2-10pc")
	if got, want := summary(q), "s2-10pc=400 | s1-five:not_chosen s1-ten:not_chosen"; got != want {
		t.Errorf("chosen one: %s, want %s", got, want)
	}
}

// TestPlatformWithTwoStoreCoupons: the store coupons apply first, the
// platform coupon to what they left; each line says who bears what; the
// platform's discount is split per store.
func TestPlatformWithTwoStoreCoupons(t *testing.T) {
	o := order(item("s1", "a-1", 10000, 1), item("s2", "b-1", 6000, 2))
	cs := []Coupon{
		threshold("p-tiers", "", Tier{Min: 10000, Off: 1000}, Tier{Min: 20000, Off: 3000}),
		voucher("s1-v", "s1", 1000),
		voucher("s2-v", "s2", 500),
	}
	// Items $220; the store coupons take $15, leaving $205: still the
	// platform's $30 tier.
	q := mustQuote(t, o, cs)
	if got, want := summary(q), "s1-v=1000 s2-v=500 p-tiers=3000 |"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// The platform's $30 over what is left, $90 and $115: 1317.07 and
	// 1682.93 → 1317 and 1683 (the left-over cent to the larger remainder).
	want := [][]Share{
		{{"s1-v", BearerStore, 1000}, {"p-tiers", BearerPlatform, 1317}},
		{{"s2-v", BearerStore, 500}, {"p-tiers", BearerPlatform, 1683}},
	}
	for l, ln := range q.Lines {
		if !slices.Equal(ln.Discounts, want[l]) {
			t.Errorf("line %d: %v, want %v", l, ln.Discounts, want[l])
		}
	}
	if got := fmt.Sprint(q.Coupons[2].Stores); got != "[{s1 1317} {s2 1683}]" {
		t.Errorf("platform per store: %s", got)
	}
	s1, s2 := q.Stores[0], q.Stores[1]
	if s1.StoreBorne != 1000 || s1.PlatformBorne != 1317 || s2.StoreBorne != 500 || s2.PlatformBorne != 1683 {
		t.Errorf("bearers: %+v %+v", s1, s2)
	}
	if q.Discount != 4500 || q.Payable != 22000-4500 || s1.Payable != 10000-2317 || s2.Payable != 12000-2183 {
		t.Errorf("discount %d payable %d (%d + %d)", q.Discount, q.Payable, s1.Payable, s2.Payable)
	}
	// The same three chosen, in any order, give the same quotation.
	if got := summary(mustQuote(t, o, cs, "p-tiers", "s2-v", "s1-v")); got != summary(q) {
		t.Errorf("chosen: %s", got)
	}
}

// TestStoreCouponCanLowerPlatformTier: when a store coupon pushes the
// platform coupon under its tier, the best choice leaves the store coupon
// out (not_best), and a chosen combination reports the platform coupon
// below its threshold.
func TestStoreCouponCanLowerPlatformTier(t *testing.T) {
	o := order(item("s1", "a-1", 20500, 1))
	cs := []Coupon{
		threshold("p", "", Tier{Min: 20000, Off: 3000}),
		voucher("s1-v", "s1", 1000),
	}
	if got, want := summary(mustQuote(t, o, cs)), "p=3000 | s1-v:not_best"; got != want {
		t.Errorf("best: %s, want %s", got, want)
	}
	if got, want := summary(mustQuote(t, o, cs, "p", "s1-v")), "s1-v=1000 | p:below_threshold"; got != want {
		t.Errorf("chosen: %s, want %s", got, want)
	}
}

func TestExclusive(t *testing.T) {
	o := order(item("s1", "a-1", 10000, 1), item("s2", "b-1", 10000, 1))
	excl := percent("excl", "", 15, 10000)
	excl.Exclusive = true
	cs := []Coupon{excl, voucher("s1-v", "s1", 500), voucher("s2-v", "s2", 500), voucher("p-v", "", 1000)}

	// $30 exclusive beats $5 + $5 + $10.
	if got, want := summary(mustQuote(t, o, cs)), "excl=3000 | s1-v:exclusive s2-v:exclusive p-v:exclusive"; got != want {
		t.Errorf("best: %s, want %s", got, want)
	}
	// A smaller exclusive coupon loses to the others together.
	cs[0].Percent = 5
	if got, want := summary(mustQuote(t, o, cs)), "s1-v=500 s2-v=500 p-v=1000 | excl:exclusive"; got != want {
		t.Errorf("best: %s, want %s", got, want)
	}
	// Chosen: whichever is named first wins.
	if got, want := summary(mustQuote(t, o, cs, "excl", "s1-v", "p-v")), "excl=1000 | s1-v:exclusive s2-v:not_chosen p-v:exclusive"; got != want {
		t.Errorf("exclusive first: %s, want %s", got, want)
	}
	if got, want := summary(mustQuote(t, o, cs, "s1-v", "excl", "p-v")), "s1-v=500 p-v=1000 | excl:exclusive s2-v:not_chosen"; got != want {
		t.Errorf("exclusive second: %s, want %s", got, want)
	}
	// An exclusive coupon whose companions cannot be used is used alone.
	cs[1].State = StateUsed
	if got, want := summary(mustQuote(t, o, cs, "s1-v", "excl")), "excl=1000 | s1-v:used s2-v:not_chosen p-v:not_chosen"; got != want {
		t.Errorf("exclusive with an unusable companion: %s, want %s", got, want)
	}
}

func TestScope(t *testing.T) {
	o := order(item("s1", "shoe-1", 8000, 1), item("s1", "shoe-2", 4000, 1), item("s1", "hat-1", 3000, 1))
	line := percent("p", "", 10, 100000)
	line.Scope = Scope{Categories: []string{"shoe"}}
	whole := line
	whole.ScopeMode = ScopeWholeOrder

	// Line scope: 10% of the shoes only, the hat untouched.
	q := mustQuote(t, o, []Coupon{line})
	if q.Discount != 1200 || q.Lines[0].Discount != 800 || q.Lines[1].Discount != 400 || q.Lines[2].Discount != 0 {
		t.Errorf("line scope: %s %+v", summary(q), q.Lines)
	}
	// whole_order with one excluded line: not usable at all.
	if got := summary(mustQuote(t, o, []Coupon{whole})); got != " | p:out_of_scope" {
		t.Errorf("whole_order with a hat: %s", got)
	}
	// whole_order without it: usable.
	if got := summary(mustQuote(t, order(o.Items[0], o.Items[1]), []Coupon{whole})); got != "p=1200 |" {
		t.Errorf("whole_order, shoes only: %s", got)
	}
	// A scope is a union of products, categories and brands.
	union := percent("u", "", 10, 100000)
	union.Scope = Scope{Products: []string{"shoe-2"}, Brands: []string{"b-hat"}}
	if got := summary(mustQuote(t, o, []Coupon{union})); got != "u=700 |" {
		t.Errorf("union scope: %s", got)
	}
	// The threshold counts only lines in scope.
	th := threshold("t", "", Tier{Min: 13000, Off: 1000})
	th.Scope = Scope{Categories: []string{"shoe"}}
	if got := summary(mustQuote(t, o, []Coupon{th})); got != " | t:below_threshold" {
		t.Errorf("threshold over the scope: %s", got)
	}
	// A store's whole_order coupon looks only at that store's lines.
	two := order(item("s1", "shoe-1", 8000, 1), item("s2", "hat-1", 3000, 1))
	sw := whole
	sw.StoreID = "s1"
	if got := summary(mustQuote(t, two, []Coupon{sw})); got != "p=800 |" {
		t.Errorf("store whole_order: %s", got)
	}
}

func TestStateValidityAndOffers(t *testing.T) {
	o := order(item("s1", "a-1", 10000, 1))
	mk := func(id string, f func(*Coupon)) Coupon {
		c := voucher(id, "", 100)
		f(&c)
		return c
	}
	cs := []Coupon{
		mk("used", func(c *Coupon) { c.State = StateUsed }),
		mk("locked", func(c *Coupon) { c.State = StateLocked }),
		mk("expired", func(c *Coupon) { c.ValidUntil = t0 }),
		mk("early", func(c *Coupon) { c.ValidFrom = t0.Add(time.Second) }),
		mk("fine", func(c *Coupon) { c.ValidFrom, c.ValidUntil = t0, t0.Add(time.Second) }),
		mk("nostack", func(c *Coupon) { c.NotStackable = true; c.StoreID = "s1" }),
	}
	q := mustQuote(t, o, cs)
	if got, want := summary(q), "nostack=100 fine=100 | used:used locked:locked expired:expired early:not_yet_valid"; got != want {
		t.Errorf("no offers: %s, want %s", got, want)
	}
	o.Offers = []string{"bundle-3-for-2"}
	if got, want := summary(mustQuote(t, o, cs)), "fine=100 | used:used locked:locked expired:expired early:not_yet_valid nostack:not_stackable"; got != want {
		t.Errorf("with an offer: %s, want %s", got, want)
	}
}

// TestAllocationUneven: three lines whose shares do not divide evenly; the
// lines sum to the discount exactly, the left-over cents going to the
// largest remainders, ties to the lower line.
func TestAllocationUneven(t *testing.T) {
	cases := []struct {
		prices []int64
		off    int64
		want   []int64
	}{
		{[]int64{100, 100, 100}, 100, []int64{34, 33, 33}},    // 33.33 each: the tie goes to line 0
		{[]int64{100, 200, 400}, 100, []int64{14, 29, 57}},    // 14.29, 28.57, 57.14
		{[]int64{1001, 1001, 1001}, 200, []int64{67, 67, 66}}, // 66.67 each
		{[]int64{333, 333, 334}, 101, []int64{34, 33, 34}},    // 33.633, 33.633, 33.734
		{[]int64{9999, 1, 1}, 9000, []int64{8998, 1, 1}},      // 8998.2, 0.9, 0.9
		{[]int64{10001, 10001, 10001}, 10000, []int64{3334, 3333, 3333}},
	}
	for _, c := range cases {
		var items []Item
		var total int64
		for i, p := range c.prices {
			items = append(items, item("s1", fmt.Sprintf("a-%d", i), p, 1))
			total += p
		}
		v := voucher("v", "", c.off)
		q := mustQuote(t, order(items...), []Coupon{v})
		var got []int64
		var sum int64
		for _, ln := range q.Lines {
			got = append(got, ln.Discount)
			sum += ln.Discount
		}
		if !slices.Equal(got, c.want) || sum != c.off || q.Payable != total-c.off {
			t.Errorf("%d over %v: %v (sum %d), want %v", c.off, c.prices, got, sum, c.want)
		}
	}
}

// TestBestTieBreaks: equal discounts → higher priority, then earlier
// expiry, then fewer coupons, then grant id; independent of the order the
// coupons are offered in.
func TestBestTieBreaks(t *testing.T) {
	o := order(item("s1", "a-1", 10000, 1), item("s2", "b-1", 10000, 1))
	a := voucher("a", "", 1000)
	b := voucher("b", "", 1000)
	cases := []struct {
		name string
		a, b func(*Coupon)
		want string
	}{
		{"grant id", func(*Coupon) {}, func(*Coupon) {}, "a"},
		{"priority", func(*Coupon) {}, func(c *Coupon) { c.Priority = 1 }, "b"},
		{"expiry", func(c *Coupon) { c.ValidUntil = week }, func(c *Coupon) { c.ValidUntil = week.Add(-time.Hour) }, "b"},
		{"expiry over none", func(*Coupon) {}, func(c *Coupon) { c.ValidUntil = week }, "b"},
		{"priority before expiry", func(c *Coupon) { c.Priority = 2 }, func(c *Coupon) { c.ValidUntil = week }, "a"},
	}
	for _, c := range cases {
		ca, cb := a, b
		ca.Exclusive, cb.Exclusive = true, true // one or the other
		c.a(&ca)
		c.b(&cb)
		for _, cs := range [][]Coupon{{ca, cb}, {cb, ca}} {
			q := mustQuote(t, o, cs)
			if len(q.Coupons) != 1 || q.Coupons[0].GrantID != c.want {
				t.Errorf("%s: %s, want %s", c.name, summary(q), c.want)
			}
		}
	}
	// Fewer coupons for the same discount: one $10 platform voucher rather
	// than two $5 store vouchers.
	cs := []Coupon{voucher("s1", "s1", 500), voucher("s2", "s2", 500), func() Coupon { c := voucher("p", "", 1000); c.Exclusive = true; return c }()}
	if got := summary(mustQuote(t, o, cs)); got != "p=1000 | s1:exclusive s2:exclusive" {
		t.Errorf("fewer coupons: %s", got)
	}
}

// TestNotConsidered: beyond BestCandidatesMax usable coupons, the lowest
// ranked are reported not_considered; the search stays exact over the rest.
func TestNotConsidered(t *testing.T) {
	var items []Item
	var cs []Coupon
	for i := range BestCandidatesMax + 3 {
		st := fmt.Sprintf("s%02d", i)
		items = append(items, item(st, "a-"+st, 100000, 1))
		cs = append(cs, voucher(fmt.Sprintf("v%02d", i), st, int64(100+i)))
	}
	o := order(items...)
	q := mustQuote(t, o, cs)
	var nc []string
	for _, n := range q.NotUsed {
		if n.Reason == ReasonNotConsidered {
			nc = append(nc, n.GrantID)
		}
	}
	if !slices.Equal(nc, []string{"v00", "v01", "v02"}) || len(q.Coupons) != BestCandidatesMax {
		t.Errorf("%s", summary(q))
	}
}

// TestOnePlatformCouponPerSlot: two platform discount coupons never stack;
// a platform free-shipping coupon stacks with one of them.
func TestOnePlatformCouponPerSlot(t *testing.T) {
	o := order(item("s1", "a-1", 10000, 1))
	o.Shipping = map[string]int64{"s1": 500}
	cs := []Coupon{voucher("p1", "", 300), voucher("p2", "", 200), {GrantID: "fs", Kind: KindFreeShipping}}
	q := mustQuote(t, o, cs)
	if got := summary(q); got != "fs=500 p1=300 | p2:one_per_platform" && got != "p1=300 fs=500 | p2:one_per_platform" {
		t.Errorf("best: %s", got)
	}
	q = mustQuote(t, o, cs, "p2", "p1")
	for _, n := range q.NotUsed {
		if n.GrantID == "p1" && n.Reason != ReasonOnePerPlatform {
			t.Errorf("p1 chosen after p2: %s, want one_per_platform", n.Reason)
		}
	}
}

func TestQuoteErrors(t *testing.T) {
	o := order(item("s1", "a-1", 1000, 1))
	ok := voucher("v", "", 100)
	cases := []struct {
		name   string
		o      Order
		cs     []Coupon
		chosen []string
		fields []string
		is     error
	}{
		{"empty order", Order{}, nil, nil, []string{"items"}, ErrInvalid},
		{"bad line", order(Item{SKU: "", StoreID: "s1", UnitPrice: -1, Quantity: 0}), nil, nil, []string{"items[0].sku", "items[0].unit_price", "items[0].quantity"}, ErrInvalid},
		{"fee of a store without lines", Order{Items: o.Items, Shipping: map[string]int64{"s9": 1}}, nil, nil, []string{"shipping.s9"}, ErrInvalid},
		{"bad coupons", o, []Coupon{{GrantID: "x", Kind: "gift"}, {GrantID: "y", Kind: KindPercent, Percent: 101}, {GrantID: "z", Kind: KindThreshold, Tiers: []Tier{{Min: 100, Off: 100}}}}, nil, []string{"coupons[0].kind", "coupons[1].percent", "coupons[1].max_off", "coupons[2].tiers[0].off"}, ErrInvalid},
		{"a grant offered twice", o, []Coupon{ok, ok}, nil, []string{"coupons[1].grant_id"}, ErrInvalid},
		{"a grant chosen twice", o, []Coupon{ok}, []string{"v", "v"}, []string{"grant_ids[1]"}, ErrInvalid},
		{"unknown grant", o, []Coupon{ok}, []string{"nope"}, nil, ErrUnknownGrant},
	}
	for _, c := range cases {
		_, err := Quote(c.o, c.cs, c.chosen, t0)
		if !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", c.name, err, c.is)
			continue
		}
		var got []string
		var walk func(error)
		walk = func(e error) {
			if fe, ok := e.(*FieldError); ok {
				got = append(got, fe.Field)
			}
			if j, ok := e.(interface{ Unwrap() []error }); ok {
				for _, x := range j.Unwrap() {
					walk(x)
				}
			}
		}
		walk(err)
		if !slices.Equal(got, c.fields) {
			t.Errorf("%s: fields %v, want %v (%v)", c.name, got, c.fields, err)
		}
	}
}

// checkQuotationInvariants: no line negative, every coupon's shares sum to
// its discount, the lines and fees to the total, payable = total − discount.
func checkQuotationInvariants(t testing.TB, o Order, q *Quotation) {
	t.Helper()
	var items, shipping, lineDiscounts, feeDiscounts int64
	perCoupon := map[string]int64{}
	for l, ln := range q.Lines {
		it := o.Items[l]
		if ln.Amount != it.UnitPrice*it.Quantity || ln.Payable < 0 || ln.Discount < 0 || ln.Payable != ln.Amount-ln.Discount {
			t.Fatalf("line %d: %+v", l, ln)
		}
		var sum int64
		for _, d := range ln.Discounts {
			if d.Amount <= 0 {
				t.Fatalf("line %d: a share of %d", l, d.Amount)
			}
			sum += d.Amount
			perCoupon[d.GrantID] += d.Amount
		}
		if sum != ln.Discount {
			t.Fatalf("line %d: shares %d, discount %d", l, sum, ln.Discount)
		}
		items += ln.Amount
		lineDiscounts += ln.Discount
	}
	for _, st := range q.Stores {
		var sum int64
		for _, d := range st.ShippingDiscounts {
			sum += d.Amount
			perCoupon[d.GrantID] += d.Amount
		}
		if sum != st.ShippingDiscount || st.ShippingDiscount > st.Shipping || st.StoreBorne+st.PlatformBorne != st.ItemsDiscount+st.ShippingDiscount {
			t.Fatalf("store %+v", st)
		}
		shipping += st.Shipping
		feeDiscounts += st.ShippingDiscount
	}
	var total int64
	for _, a := range q.Coupons {
		var sum int64
		for _, s := range a.Stores {
			sum += s.Amount
		}
		if a.Discount <= 0 || perCoupon[a.GrantID] != a.Discount || sum != a.Discount {
			t.Fatalf("coupon %s: discount %d, shares %d, per store %d", a.GrantID, a.Discount, perCoupon[a.GrantID], sum)
		}
		total += a.Discount
	}
	if items != q.Items || shipping != q.Shipping || total != q.Discount || lineDiscounts+feeDiscounts != q.Discount ||
		q.Payable != q.Items+q.Shipping-q.Discount || q.Payable < 0 {
		t.Fatalf("totals: items %d/%d shipping %d/%d discount %d/%d/%d payable %d", items, q.Items, shipping, q.Shipping, total, lineDiscounts+feeDiscounts, q.Discount, q.Payable)
	}
}
