package checkout_test

import (
	"fmt"
	"time"

	"github.com/flashgate/flashgate/gateway/checkout"
)

// A platform coupon with two store coupons: the stores' apply first, the
// platform's to what they left, split over both stores.
func ExampleQuote() {
	now := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	order := checkout.Order{
		Items: []checkout.Item{
			{SKU: "tea-1", StoreID: "s1", Category: "tea", UnitPrice: 10000, Quantity: 1},
			{SKU: "cup-1", StoreID: "s2", Category: "cups", UnitPrice: 6000, Quantity: 2},
		},
		Shipping: map[string]int64{"s2": 500},
	}
	coupons := []checkout.Coupon{
		{GrantID: "g-platform", Kind: checkout.KindThreshold, Tiers: []checkout.Tier{{Min: 10000, Off: 1000}, {Min: 20000, Off: 3000}}},
		{GrantID: "g-s1", Kind: checkout.KindVoucher, Amount: 1000, StoreID: "s1"},
		{GrantID: "g-s2", Kind: checkout.KindFreeShipping, StoreID: "s2"},
		{GrantID: "g-s2-bis", Kind: checkout.KindVoucher, Amount: 300, StoreID: "s2"},
	}
	q, err := checkout.Quote(order, coupons, nil, now)
	if err != nil {
		panic(err)
	}
	for _, a := range q.Coupons {
		fmt.Printf("%s %s %d %v\n", a.GrantID, a.Bearer, a.Discount, a.Stores)
	}
	for _, n := range q.NotUsed {
		fmt.Printf("%s not used: %s\n", n.GrantID, n.Reason)
	}
	fmt.Printf("items %d + shipping %d - discount %d = %d\n", q.Items, q.Shipping, q.Discount, q.Payable)
	// Output:
	// g-s1 store 1000 [{s1 1000}]
	// g-s2 store 500 [{s2 500}]
	// g-platform platform 3000 [{s1 1286} {s2 1714}]
	// g-s2-bis not used: one_per_store
	// items 22000 + shipping 500 - discount 4500 = 18000
}
