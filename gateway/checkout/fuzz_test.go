package checkout

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

// gen turns fuzz bytes into small choices; past the end every choice is 0.
type gen struct {
	b []byte
	i int
}

func (g *gen) n(k int) int {
	if g.i >= len(g.b) {
		return 0
	}
	v := int(g.b[g.i]) % k
	g.i++
	return v
}

func (g *gen) pick(vs ...int64) int64 { return vs[g.n(len(vs))] }

var (
	fuzzStores = []string{"s1", "s2", "s3"}
	fuzzSKUs   = []string{"a-1", "a-2", "b-1", "b-2", "c-1"}
)

// price: the edges and awkward values, or anything up to $655.35.
func (g *gen) price() int64 {
	if g.n(3) == 0 {
		return int64(g.n(256)<<8 | g.n(256))
	}
	return g.pick(0, 1, 99, 100, 333, 499, 500, 501, 1000, 2500, 5000, 9999, 10000, 15000, 20000, 30000)
}

// fuzzCase builds a valid order and up to fuzzCouponsMax coupons from b.
func fuzzCase(b []byte) (Order, []Coupon) {
	g := &gen{b: b}
	var o Order
	for range 1 + g.n(5) {
		sku := fuzzSKUs[g.n(len(fuzzSKUs))]
		it := item(fuzzStores[g.n(len(fuzzStores))], sku, g.price(), 1+int64(g.n(4)))
		o.Items = append(o.Items, it)
	}
	for _, it := range o.Items {
		if g.n(2) == 0 {
			if o.Shipping == nil {
				o.Shipping = map[string]int64{}
			}
			o.Shipping[it.StoreID] = g.pick(0, 1, 300, 500, 999)
		}
	}
	if g.n(5) == 0 {
		o.Offers = []string{"bundle"}
	}
	var cs []Coupon
	for i := range g.n(fuzzCouponsMax + 1) {
		c := Coupon{GrantID: fmt.Sprintf("g%d", i), Campaign: "c"}
		switch g.n(5) {
		case 0:
			c.Kind = KindThreshold
			lo := g.price()%20000 + 2
			c.Tiers = []Tier{{Min: lo, Off: 1 + g.price()%(lo-1)}}
			if g.n(2) == 0 {
				c.Tiers = append(c.Tiers, Tier{Min: 2 * lo, Off: c.Tiers[0].Off + 1 + int64(g.n(int(lo)))})
			}
		case 1:
			c.Kind, c.Percent, c.MaxOff = KindPercent, g.pick(1, 5, 10, 20, 33, 50, 100), g.pick(1, 100, 999, 5000, 100000)
		case 2:
			c.Kind, c.Amount = KindVoucher, g.pick(1, 100, 500, 1000, 2500, 9999)
		case 3:
			c.Kind, c.SKU = KindProduct, fuzzSKUs[g.n(len(fuzzSKUs))]
		case 4:
			c.Kind = KindFreeShipping
		}
		if g.n(2) == 0 {
			c.StoreID = fuzzStores[g.n(len(fuzzStores))]
		}
		switch g.n(6) {
		case 0:
			c.Scope.Categories = []string{string(rune('a' + g.n(3)))}
		case 1:
			c.Scope.Products = []string{fuzzSKUs[g.n(len(fuzzSKUs))]}
		case 2:
			c.Scope.Brands = []string{"b-" + string(rune('a'+g.n(3)))}
		}
		if g.n(3) == 0 {
			c.ScopeMode = ScopeWholeOrder
		}
		c.Exclusive = g.n(6) == 0
		c.NotStackable = g.n(6) == 0
		c.Priority = g.n(3)
		switch g.n(8) {
		case 0:
			c.ValidUntil = t0
		case 1:
			c.ValidFrom = t0.Add(time.Hour)
		case 2, 3:
			c.ValidUntil = t0.Add(time.Duration(1+g.n(3)) * time.Hour)
		}
		switch g.n(10) {
		case 0:
			c.State = StateUsed
		case 1:
			c.State = StateLocked
		}
		if g.n(2) == 0 {
			c.OnRefund = RefundKeep
		}
		cs = append(cs, c)
	}
	return o, cs
}

// fuzzCouponsMax keeps the brute force over every subset small (2^6).
const fuzzCouponsMax = 6

// FuzzQuote: for random orders and coupon sets, the quotation's
// invariants hold; the best choice is itself a valid choice, never worse
// than any valid subset of the coupons (brute force), and the same whatever
// order the coupons come in; and refunds, unit by unit or in any steps, sum
// to each coupon's discount exactly without a negative refund.
func FuzzQuote(f *testing.F) {
	seeds := [][]byte{
		{},
		{0, 0, 0, 0, 0, 0, 0, 0, 0},
		{2, 1, 5, 3, 1, 2, 3, 0, 4, 1, 6, 2, 0, 7, 9, 3},
		{4, 0, 1, 1, 2, 3, 4, 0, 1, 2, 6, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
		[]byte("two stores, a platform coupon and two store coupons"),
		[]byte("an exclusive coupon among others, whole_order scope"),
		[]byte{255, 254, 253, 252, 251, 250, 249, 248, 247, 246, 245, 244, 243, 242, 241, 240, 239, 238, 237, 236, 235, 234},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, cs := fuzzCase(b)
		best, err := Quote(o, cs, nil, t0)
		if err != nil {
			t.Fatalf("quote: %v\norder %+v\ncoupons %+v", err, o, cs)
		}
		bestNotUsed := best.NotUsed
		checkQuotationInvariants(t, o, best)
		if len(best.Coupons)+len(best.NotUsed) != len(cs) {
			t.Fatalf("%d used + %d not used of %d", len(best.Coupons), len(best.NotUsed), len(cs))
		}

		// Brute force: every subset chosen explicitly; those the rules
		// allow whole are valid choices, and none beats the best.
		for mask := 1; mask < 1<<len(cs); mask++ {
			var ids []string
			for i := range cs {
				if mask&(1<<i) != 0 {
					ids = append(ids, cs[i].GrantID)
				}
			}
			q, err := Quote(o, cs, ids, t0)
			if err != nil {
				t.Fatal(err)
			}
			checkQuotationInvariants(t, o, q)
			if len(q.Coupons) == len(ids) && q.Discount > best.Discount {
				t.Fatalf("best %s (%d) is worse than the valid choice %v (%d)", summary(best), best.Discount, ids, q.Discount)
			}
		}

		// The best, chosen explicitly, is the same quotation.
		if len(best.Coupons) > 0 {
			var ids []string
			for _, a := range best.Coupons {
				ids = append(ids, a.GrantID)
			}
			slices.Reverse(ids)
			again, err := Quote(o, cs, ids, t0)
			if err != nil {
				t.Fatal(err)
			}
			again.NotUsed, best.NotUsed = nil, nil
			if !reflect.DeepEqual(again, best) {
				t.Fatalf("best chosen again differs:\n%s\n%s", summary(again), summary(best))
			}
		}

		// The coupons offered in another order: the same choice.
		rev := slices.Clone(cs)
		slices.Reverse(rev)
		other, err := Quote(o, rev, nil, t0)
		if err != nil {
			t.Fatal(err)
		}
		reasons := func(q *Quotation) map[string]Reason {
			m := map[string]Reason{}
			for _, n := range q.NotUsed {
				m[n.GrantID] = n.Reason
			}
			return m
		}
		if !reflect.DeepEqual(reasons(other), reasons(&Quotation{NotUsed: bestNotUsed})) {
			t.Fatalf("the order of the coupons changed the reasons:\n%s\n%s", summary(other), summary(best))
		}
		other.NotUsed, best.NotUsed = nil, nil
		if !reflect.DeepEqual(other, best) {
			t.Fatalf("the order of the coupons changed the best:\n%s\n%s", summary(other), summary(best))
		}

		checkRefunds(t, best, b)
	})
}

// checkRefunds refunds the whole order in steps drawn from b: every step's
// shares and refund are non-negative, and the steps sum to each coupon's
// discount and each line's discount exactly.
func checkRefunds(t *testing.T, q *Quotation, b []byte) {
	g := &gen{b: b, i: len(b) / 2}
	done := make([]int64, len(q.Lines))
	items := map[string]int64{}
	var shipping map[string]int64
	for steps := 0; ; steps++ {
		var earlier, now []LineQty
		for l, ln := range q.Lines {
			if done[l] > 0 {
				earlier = append(earlier, LineQty{Line: l, Quantity: done[l]})
			}
			if left := ln.Quantity - done[l]; left > 0 && (g.n(2) == 0 || steps > 8) {
				now = append(now, LineQty{Line: l, Quantity: 1 + int64(g.n(int(left)))})
			}
		}
		if len(now) == 0 {
			if slices.Equal(done, quantities(q)) {
				break
			}
			continue
		}
		r, err := Refund(q, earlier, now, t0)
		if err != nil {
			t.Fatalf("refund %v after %v: %v", now, earlier, err)
		}
		for i, n := range now {
			done[n.Line] += n.Quantity
			rl := r.Lines[i]
			if rl.Refund < 0 || rl.Discount < 0 || rl.Refund != rl.Amount-rl.Discount {
				t.Fatalf("refund line %+v", rl)
			}
		}
		for _, c := range r.Coupons {
			if c.Items < 0 || c.Shipping < 0 {
				t.Fatalf("negative share %+v", c)
			}
			items[c.GrantID] += c.Items
		}
		if r.OrderRefunded != slices.Equal(done, quantities(q)) {
			t.Fatalf("order_refunded %v with %v of %v", r.OrderRefunded, done, quantities(q))
		}
		if r.OrderRefunded {
			shipping = map[string]int64{}
			for _, c := range r.Coupons {
				shipping[c.GrantID] = c.Shipping
			}
		}
	}
	for _, a := range q.Coupons {
		if items[a.GrantID]+shipping[a.GrantID] != a.Discount {
			t.Fatalf("coupon %s: refunds carried %d + %d of %d", a.GrantID, items[a.GrantID], shipping[a.GrantID], a.Discount)
		}
	}
}

func quantities(q *Quotation) []int64 {
	out := make([]int64, len(q.Lines))
	for l, ln := range q.Lines {
		out[l] = ln.Quantity
	}
	return out
}

// FuzzApportion: the shares sum to the amount exactly, each is the floor
// or the ceiling of its exact quota, the left-over cents go to the largest
// remainders (ties to the lower position), and none exceeds its weight.
func FuzzApportion(f *testing.F) {
	f.Add(int64(100), []byte{1, 1, 1})
	f.Add(int64(10000), []byte{0, 1, 0, 1, 0, 1})
	f.Add(int64(9000), []byte{255, 255, 1, 1, 1})
	f.Add(int64(7), []byte{3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3})
	f.Add(int64(1<<50), []byte{200, 7, 0, 0, 99, 13, 250, 250, 251, 252, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Fuzz(func(t *testing.T, d int64, ws []byte) {
		if len(ws) > 1<<apportionPosBits {
			ws = ws[:1<<apportionPosBits]
		}
		// Weights from the bytes, some small (ties), some spread over 39 bits.
		w := make([]int64, len(ws))
		var total int64
		for i, b := range ws {
			w[i] = int64(b)
			if b%3 == 0 {
				w[i] = int64(b) << (b % 32)
			}
			total += w[i]
		}
		if d < 0 {
			d = -(d + 1)
		}
		if total == 0 {
			d = 0
		} else {
			d %= total + 1
		}
		var a apportioner
		out := make([]int64, len(w))
		a.split(d, w, out)
		var sum int64
		// Check against the rule written out plainly: floors, then the
		// left-over cents by (remainder desc, position asc).
		rem := make([]int64, len(w))
		order := make([]int, len(w))
		want := make([]int64, len(w))
		left := d
		for i := range w {
			order[i] = i
			if total > 0 {
				want[i], rem[i] = mulDivRem(d, w[i], total)
			}
			left -= want[i]
		}
		slices.SortStableFunc(order, func(x, y int) int { return cmp.Compare(rem[y], rem[x]) })
		for _, i := range order[:left] {
			want[i]++
		}
		for i := range w {
			if out[i] != want[i] || out[i] > w[i] {
				t.Fatalf("%d over %v: share %d of %d, want %d", d, w, i, out[i], want[i])
			}
			sum += out[i]
		}
		if sum != d {
			t.Fatalf("%d over %v: %v sums to %d", d, w, out, sum)
		}
	})
}
