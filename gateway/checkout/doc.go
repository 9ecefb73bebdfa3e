// Package checkout is the pure core of using coupons (issue 13): it prices
// an order with a user's coupons — which coupons may be used together, what
// each takes off, how each discount is spread over the lines and who bears
// it — and splits a discount over refunded units. It does no I/O and never
// reads the clock (internal/lint enforces both): now is a parameter. The
// HTTP endpoints and the grant store's states (lock, confirm, cancel,
// refund) build on it; it keeps no state, and every call allocates its own
// scratch, so it is safe for concurrent use.
//
//	Quote(order, coupons, chosen grant ids | none, now) → Quotation
//	Refund(quotation, units refunded earlier, units refunded now, now) → RefundQuotation
//
// Amounts are int64 cents, never negative. Inputs are bounded (order.go:
// ItemsMax, QuantityMax, UnitPriceMax, …) so no sum can overflow; products
// of two amounts are formed in 128 bits.
//
// # What a coupon takes off
//
// A coupon applies to its lines: those of its issuer's store (every line
// for a platform coupon) that are in its scope (SKU in products, or
// category in categories, or brand in brands; an empty scope is every
// line). With scope_mode whole_order, one line of the issuer's outside the
// scope makes the coupon unusable (out_of_scope). Its applicable subtotal is
// what the coupons applied before it left of those lines.
//
//	threshold      the off of the highest tier whose min the subtotal reaches
//	percent        ⌊subtotal × percent / 100⌋ (rounded down), at most max_off
//	voucher        its amount, only if the subtotal exceeds it ($5 needs $5.01)
//	product        one unit of its SKU: of the lines of that SKU it applies
//	               to, the lowest unit price that still has something left
//	               (a unit's price being its line's remainder ÷ quantity,
//	               rounded down)
//	free_shipping  the fee of its store, or for a platform coupon the fees
//	               of every store with a line it applies to; what earlier
//	               coupons left of them
//
// Never more than what it applies to. A coupon that would take nothing off
// (no tier reached, a fee of 0, …) is not used: below_threshold.
//
// # Order of application
//
// When several coupons touch the same line, each applies to what the ones
// before it left:
//
//	store coupons (by store id) → platform coupons
//	within one issuer: product → threshold → voucher → percent → free_shipping,
//	then by grant id
//
// Store coupons first, as marketplaces do: a platform coupon's threshold is
// judged on the price after the store's own discounts, and the platform
// pays only for what the store did not. A free unit is priced before money
// comes off, and a percentage is taken of what fixed amounts left.
//
// # Stacking
//
//   - At most one store coupon per store (one_per_store).
//   - Platform coupons combine with store coupons. At most one platform
//     discount coupon and one platform free-shipping coupon per order
//     (one_per_platform), as marketplaces allow one platform voucher beside
//     a shipping voucher.
//   - An exclusive coupon combines with no other coupon (exclusive).
//   - A coupon with stackable: false is refused on an order that declares
//     any offer (not_stackable).
//   - State and validity: used, locked; before valid_from not_yet_valid; at
//     or after valid_until expired.
//
// With chosen grant ids, the chosen coupons usable alone are taken in the
// order given, each kept if it combines with those kept before it (so the
// first of two coupons of one store wins, and an exclusive coupon named
// first shuts out the rest); then they are applied, and one whose condition
// fails on what the others left is reported below_threshold. Coupons not
// chosen are reported not_chosen.
//
// With none chosen, the best combination is chosen (best.go): every
// combination the rules allow of the BestCandidatesMax coupons ranked first
// (by discount alone, priority, earliest expiry, grant id; the rest are
// not_considered) in which each coupon takes something off, compared by
// total discount, then by priorities (highest first), then by expiries
// (earliest first), then by grant ids. The answer does not depend on the
// order coupons are offered in. A usable coupon left out says why:
// exclusive, one_per_store, below_threshold (what the chosen ones leave
// misses its condition) or not_best.
//
// # Allocation and rounding
//
// A discount is spread over the lines it applies to in proportion to what
// each had left, in whole cents, by the largest remainder: line i first gets
// ⌊d·wᵢ/W⌋, then the cents left over go one each to the lines with the
// largest remainders d·wᵢ mod W, ties to the lower line index. The lines sum
// to the discount exactly and none goes below zero. A platform coupon's
// discount per store is the sum of its shares of that store's lines and
// fee. Every share names its bearer: the store for a store coupon, the
// platform for a platform coupon (settled back to the store).
//
//	discount 100 over lines 100, 200, 400 (W = 700):
//	  quotas  14.29   28.57   57.14   floors 14 28 57 = 99, one cent left
//	  rems    200     400     100     → line 1 (largest remainder)
//	  shares  14      29      57      = 100
//
// # Refunds
//
// A line's discount D over its quantity Q is carried unit by unit: the u-th
// unit carries ⌊D·u/Q⌋ − ⌊D·(u−1)/Q⌋ cents (never more than its price),
// split among the line's coupons in proportion to what each has not yet
// carried (largest remainder, ties to the coupon applied first). Refunds
// take units in order, so successive partial refunds that end in the whole
// line carry exactly each coupon's share of it, and no refund pays back a
// negative amount. Fees follow the order: a coupon's discount on fees is
// reported by the refund that completes the order's. That refund also
// returns each coupon whose on_refund is return (the default) and whose
// validity has not ended; a partial refund keeps the coupons used.
//
// # From a campaign
//
// Coupon is this package's own input, built by the HTTP layer from a grant
// and its campaign (gateway/campaign links NATS, which this package may
// not): kind = coupon.type; tiers, percent, max_off, amount, sku as named;
// store_id = coupon.issuer.store_id when issuer.type is store, else "";
// scope = coupon.scope, scope_mode = coupon.scope_mode; exclusive,
// stackable (NotStackable = stackable == false), priority and on_refund are
// the campaign's (gateway/orders.go:couponOf); valid_from, valid_until and
// state come from the grant store.
package checkout
