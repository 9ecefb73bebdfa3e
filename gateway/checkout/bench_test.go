package checkout

import (
	"fmt"
	"testing"
)

// benchCase is the search's worst case: ItemsMax lines over 20 stores and
// BestCandidatesMax platform coupons that all combine (2^12 combinations,
// each over every line), plus a wallet of CouponsMax coupons in all.
func benchCase(coupons int) (Order, []Coupon) {
	var o Order
	o.Shipping = map[string]int64{}
	for l := range ItemsMax {
		s := fmt.Sprintf("s%02d", l%20)
		o.Items = append(o.Items, item(s, fmt.Sprintf("a-%d", l), int64(1000+l*37), 1+int64(l%3)))
		o.Shipping[s] = 500
	}
	var cs []Coupon
	for i := range coupons {
		var c Coupon
		switch i % 3 {
		case 0:
			c = threshold("", "", Tier{Min: 10000, Off: 1000}, Tier{Min: 100000, Off: 5000})
		case 1:
			c = percent("", "", 5, 3000)
		case 2:
			c = voucher("", "", 700)
		}
		if i >= BestCandidatesMax {
			c.StoreID = fmt.Sprintf("s%02d", i%20)
		}
		c.GrantID = fmt.Sprintf("g%03d", i)
		cs = append(cs, c)
	}
	return o, cs
}

func BenchmarkQuoteBest(b *testing.B) {
	for _, n := range []int{1, 4, BestCandidatesMax, CouponsMax} {
		b.Run(fmt.Sprintf("coupons=%d", n), func(b *testing.B) {
			o, cs := benchCase(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Quote(o, cs, nil, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRefund: the slowest refund, all but the last unit of every line
// of the largest order (a refund completing a line is O(1)).
func BenchmarkRefund(b *testing.B) {
	o, cs := benchCase(4)
	for l := range o.Items {
		o.Items[l].Quantity = QuantityMax
	}
	q, err := Quote(o, cs, nil, t0)
	if err != nil {
		b.Fatal(err)
	}
	all := make([]LineQty, len(o.Items))
	for l := range all {
		all[l] = LineQty{Line: l, Quantity: QuantityMax - 1}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Refund(q, nil, all, t0); err != nil {
			b.Fatal(err)
		}
	}
}
