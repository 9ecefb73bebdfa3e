package checkout

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestReview13LargeAmountsNeverPanic: random orders at the limits' edges
// (prices up to UnitPriceMax, quantities up to QuantityMax, fees up to
// ShippingFeeMax) with coupons at the campaign maxima (amounts up to 2^60):
// Quote and Refund (through a JSON round trip, as the store keeps the
// quotation) never panic, never go negative, and sum exactly. A panic here
// would take the whole gateway down (fasthttp does not recover handlers).
func TestReview13LargeAmountsNeverPanic(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 13))
	big := func() int64 {
		switch r.IntN(4) {
		case 0:
			return UnitPriceMax - r.Int64N(3)
		case 1:
			return r.Int64N(UnitPriceMax + 1)
		case 2:
			return r.Int64N(1000)
		}
		return 1<<60 - r.Int64N(3)
	}
	for iter := 0; iter < 3000; iter++ {
		var o Order
		nl := 1 + r.IntN(8)
		for i := 0; i < nl; i++ {
			p := big()
			if p > UnitPriceMax {
				p = UnitPriceMax
			}
			q := int64(QuantityMax - r.IntN(3))
			if r.IntN(2) == 0 {
				q = 1 + r.Int64N(5)
			}
			o.Items = append(o.Items, item(fuzzStores[r.IntN(3)], fuzzSKUs[r.IntN(len(fuzzSKUs))], p, q))
		}
		o.Shipping = map[string]int64{}
		for _, it := range o.Items {
			o.Shipping[it.StoreID] = ShippingFeeMax - r.Int64N(2)
		}
		var cs []Coupon
		for i := 0; i < 1+r.IntN(6); i++ {
			c := Coupon{GrantID: fmt.Sprintf("g%d", i), Campaign: "c"}
			switch r.IntN(5) {
			case 0:
				lo := 2 + r.Int64N(1<<60-2)
				if r.IntN(2) == 0 {
					lo = 2 + r.Int64N(UnitPriceMax)
				}
				c.Kind, c.Tiers = KindThreshold, []Tier{{Min: lo, Off: lo - 1}}
			case 1:
				c.Kind, c.Percent, c.MaxOff = KindPercent, 1+r.Int64N(100), 1+r.Int64N(1<<60)
			case 2:
				c.Kind, c.Amount = KindVoucher, 1+r.Int64N(1<<60)
				if r.IntN(2) == 0 {
					c.Amount = 1 + r.Int64N(UnitPriceMax)
				}
			case 3:
				c.Kind, c.SKU = KindProduct, fuzzSKUs[r.IntN(len(fuzzSKUs))]
			case 4:
				c.Kind = KindFreeShipping
			}
			if r.IntN(2) == 0 {
				c.StoreID = fuzzStores[r.IntN(3)]
			}
			cs = append(cs, c)
		}
		var chosen []string
		if r.IntN(2) == 0 {
			for _, c := range cs {
				chosen = append(chosen, c.GrantID)
			}
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					b, _ := json.Marshal(map[string]any{"order": o, "coupons": cs, "chosen": chosen})
					t.Fatalf("iteration %d: panic %v\n%s", iter, p, b)
				}
			}()
			q, err := Quote(o, cs, chosen, t0)
			if err != nil {
				t.Fatalf("iteration %d: %v", iter, err)
			}
			if q.Payable < 0 || q.Discount < 0 || q.Items+q.Shipping-q.Discount != q.Payable {
				t.Fatalf("iteration %d: amounts %d %d %d %d", iter, q.Items, q.Shipping, q.Discount, q.Payable)
			}
			b, _ := json.Marshal(q)
			var back Quotation
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			var half, rest []LineQty
			for _, ln := range back.Lines {
				if ln.Quantity > 1 {
					half = append(half, LineQty{Line: ln.Line, Quantity: ln.Quantity / 2})
					rest = append(rest, LineQty{Line: ln.Line, Quantity: ln.Quantity - ln.Quantity/2})
				} else {
					rest = append(rest, LineQty{Line: ln.Line, Quantity: ln.Quantity})
				}
			}
			var sum int64
			if len(half) > 0 {
				r1, err := Refund(&back, nil, half, t0)
				if err != nil {
					t.Fatalf("iteration %d: refund: %v", iter, err)
				}
				sum += r1.Discount
			}
			r2, err := Refund(&back, half, rest, t0)
			if err != nil {
				t.Fatalf("iteration %d: refund rest: %v", iter, err)
			}
			sum += r2.Discount
			var items int64
			for _, c := range r2.Coupons {
				items += c.Shipping
			}
			if !r2.OrderRefunded || sum+items != q.Discount {
				t.Fatalf("iteration %d: refunds carry %d + fees %d of discount %d", iter, sum, items, q.Discount)
			}
		}()
	}
}
