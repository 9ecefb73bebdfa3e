package checkout

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Quotation is a quote's answer: what the order costs with the coupons used.
type Quotation struct {
	// Coupons are the coupons used, in the order they were applied.
	Coupons []Applied `json:"coupons"`
	// Lines are the order's lines, in order, each with its discounts.
	Lines []Line `json:"lines"`
	// Stores are the per-store totals, sorted by store id.
	Stores   []StoreTotal `json:"stores"`
	Items    int64        `json:"items"`    // Σ line amounts
	Shipping int64        `json:"shipping"` // Σ fees
	Discount int64        `json:"discount"` // Σ coupon discounts
	Payable  int64        `json:"payable"`  // Items + Shipping − Discount
	// NotUsed lists every coupon offered and not used, in the order offered.
	NotUsed []NotUsed `json:"not_used"`
}

// Applied is one coupon used by a quotation.
type Applied struct {
	GrantID  string `json:"grant_id"`
	Campaign string `json:"campaign,omitempty"`
	Kind     Kind   `json:"kind"`
	StoreID  string `json:"store_id,omitempty"` // the issuer; "" = the platform
	Bearer   Bearer `json:"bearer"`
	Discount int64  `json:"discount"`
	// Stores splits the discount per store (its shares of that store's
	// lines and fee), sorted by store id: what the platform settles back to
	// each store for a platform coupon.
	Stores     []StoreAmount `json:"stores"`
	ValidUntil time.Time     `json:"valid_until,omitzero"`
	OnRefund   OnRefund      `json:"on_refund,omitempty"`
}

// StoreAmount is an amount for one store.
type StoreAmount struct {
	StoreID string `json:"store_id"`
	Amount  int64  `json:"amount"`
}

// Share is one coupon's share of a line or of a store's fee, and who bears it.
type Share struct {
	GrantID string `json:"grant_id"`
	Bearer  Bearer `json:"bearer"`
	Amount  int64  `json:"amount"`
}

// Line is one order line of a quotation.
type Line struct {
	Line      int     `json:"line"` // index into the order's items
	SKU       string  `json:"sku"`
	StoreID   string  `json:"store_id"`
	UnitPrice int64   `json:"unit_price"`
	Quantity  int64   `json:"quantity"`
	Amount    int64   `json:"amount"`   // unit price × quantity
	Discount  int64   `json:"discount"` // Σ Discounts
	Payable   int64   `json:"payable"`  // Amount − Discount, never negative
	Discounts []Share `json:"discounts,omitempty"`
}

// StoreTotal is one store's part of a quotation.
type StoreTotal struct {
	StoreID          string `json:"store_id"`
	Items            int64  `json:"items"`
	Shipping         int64  `json:"shipping"`
	ItemsDiscount    int64  `json:"items_discount"`
	ShippingDiscount int64  `json:"shipping_discount"`
	StoreBorne       int64  `json:"store_borne"`    // discount borne by the store
	PlatformBorne    int64  `json:"platform_borne"` // discount borne by the platform (settled back to the store)
	Payable          int64  `json:"payable"`        // Items + Shipping − ItemsDiscount − ShippingDiscount
	// ShippingDiscounts are the coupons' shares of the store's fee.
	ShippingDiscounts []Share `json:"shipping_discounts,omitempty"`
}

// NotUsed is a coupon offered to a quote and not used, and why.
type NotUsed struct {
	GrantID  string `json:"grant_id"`
	Campaign string `json:"campaign,omitempty"`
	Reason   Reason `json:"reason"`
}

// Quote prices order with coupons at now. With chosen grant ids, it uses
// those that the rules allow, judged in the order given; with none, it
// chooses the best combination (best.go). Every coupon not used is listed
// with its reason. Errors are the caller's: a malformed input (ErrInvalid,
// every wrong field named) or a chosen id not among coupons
// (ErrUnknownGrant).
func Quote(order Order, coupons []Coupon, chosen []string, now time.Time) (*Quotation, error) {
	if err := validate(&order, coupons, chosen); err != nil {
		return nil, err
	}
	ct := newCart(&order)
	e := newEvaluator(ct)
	ps := make([]*prepared, len(coupons))
	mark := make([]bool, len(order.Items))
	off := make([]int64, 1)
	for i := range coupons {
		p := prepare(ct, &coupons[i], i, now, mark)
		if p.reason == "" {
			p.alone = e.run([]*prepared{p}, off, nil)
			if p.alone == 0 {
				p.reason = ReasonBelowThreshold
			}
		}
		ps[i] = p
	}
	reasons := make([]Reason, len(coupons))
	var combo []*prepared
	if len(chosen) > 0 {
		combo = chooseGiven(ps, chosen, reasons, e)
	} else {
		combo = chooseBest(ps, reasons, e)
	}
	return build(ct, e, combo, ps, reasons), nil
}

func validate(o *Order, coupons []Coupon, chosen []string) error {
	errs := []error{o.Validate()}
	if len(coupons) > CouponsMax {
		errs = append(errs, &FieldError{Field: "coupons", Msg: fmt.Sprintf("at most %d", CouponsMax)})
	}
	ids := make(map[string]bool, len(coupons))
	for i := range coupons {
		if i >= CouponsMax {
			break
		}
		f := fmt.Sprintf("coupons[%d]", i)
		errs = append(errs, coupons[i].validate(f))
		if ids[coupons[i].GrantID] {
			errs = append(errs, &FieldError{Field: f + ".grant_id", Msg: "offered twice"})
		}
		ids[coupons[i].GrantID] = true
	}
	if len(chosen) > CouponsMax {
		errs = append(errs, &FieldError{Field: "grant_ids", Msg: fmt.Sprintf("at most %d", CouponsMax)})
	}
	var unknown []string
	seen := make(map[string]bool, len(chosen))
	for i, id := range chosen {
		if seen[id] {
			errs = append(errs, &FieldError{Field: fmt.Sprintf("grant_ids[%d]", i), Msg: "chosen twice"})
		}
		seen[id] = true
		if !ids[id] {
			unknown = append(unknown, id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(unknown) > 0 {
		return fmt.Errorf("checkout: chosen grants %q: %w", unknown, ErrUnknownGrant)
	}
	return nil
}

// conflict says why p cannot join the coupons kept ("" = it can).
func conflict(kept []*prepared, p *prepared) Reason {
	for _, q := range kept {
		if q.c.Exclusive || p.c.Exclusive {
			return ReasonExclusive
		}
		if p.store() && q.c.StoreID == p.c.StoreID {
			return ReasonOnePerStore
		}
		if !p.store() && !q.store() && (p.c.Kind == KindFreeShipping) == (q.c.Kind == KindFreeShipping) {
			return ReasonOnePerPlatform
		}
	}
	return ""
}

// chooseGiven keeps the chosen coupons usable alone, in the order given,
// each if it combines with those kept before it; then applies them and
// drops those whose condition fails on what the earlier ones left (a coupon
// that takes nothing leaves the others' shares unchanged).
func chooseGiven(ps []*prepared, chosen []string, reasons []Reason, e *evaluator) []*prepared {
	byID := make(map[string]*prepared, len(ps))
	for _, p := range ps {
		byID[p.c.GrantID] = p
		reasons[p.idx] = ReasonNotChosen
	}
	var kept []*prepared
	for _, id := range chosen {
		p := byID[id]
		reasons[p.idx] = p.reason
		if p.reason != "" {
			continue
		}
		if r := conflict(kept, p); r != "" {
			reasons[p.idx] = r
			continue
		}
		kept = append(kept, p)
	}
	slices.SortFunc(kept, applyCmp)
	off := make([]int64, len(kept))
	e.run(kept, off, nil)
	combo := make([]*prepared, 0, len(kept))
	for i, p := range kept {
		if off[i] == 0 {
			reasons[p.idx] = ReasonBelowThreshold
			continue
		}
		combo = append(combo, p)
	}
	return combo
}

// build applies combo (in application order) once more, recording every
// share, and checks the invariants of the result.
//
// long: one pass that fills the lines, stores and coupons of the answer
// together and asserts their sums at the end; split, each part would need
// the others' running totals.
func build(ct *cart, e *evaluator, combo []*prepared, ps []*prepared, reasons []Reason) *Quotation {
	o := ct.o
	q := &Quotation{
		Coupons:  make([]Applied, len(combo)),
		Lines:    make([]Line, len(o.Items)),
		Stores:   make([]StoreTotal, len(ct.stores)),
		Items:    ct.items,
		Shipping: ct.shipping,
		NotUsed:  []NotUsed{},
	}
	for l, it := range o.Items {
		q.Lines[l] = Line{Line: l, SKU: it.SKU, StoreID: it.StoreID, UnitPrice: it.UnitPrice, Quantity: it.Quantity, Amount: ct.amount[l]}
	}
	for s, id := range ct.stores {
		q.Stores[s] = StoreTotal{StoreID: id, Shipping: ct.fee[s]}
	}
	for l := range o.Items {
		q.Stores[ct.store[l]].Items += ct.amount[l]
	}
	pos := make(map[*prepared]int, len(combo))
	perStore := make([][]int64, len(combo))
	for i, p := range combo {
		pos[p] = i
		perStore[i] = make([]int64, len(ct.stores))
		q.Coupons[i] = Applied{
			GrantID: p.c.GrantID, Campaign: p.c.Campaign, Kind: p.c.Kind, StoreID: p.c.StoreID,
			Bearer: p.c.Bearer(), ValidUntil: p.c.ValidUntil, OnRefund: p.c.OnRefund,
		}
	}
	rec := func(p *prepared, line, s int, amount int64) {
		i := pos[p]
		a := &q.Coupons[i]
		a.Discount += amount
		perStore[i][s] += amount
		sh := Share{GrantID: a.GrantID, Bearer: a.Bearer, Amount: amount}
		st := &q.Stores[s]
		if line < 0 {
			st.ShippingDiscount += amount
			st.ShippingDiscounts = append(st.ShippingDiscounts, sh)
		} else {
			ln := &q.Lines[line]
			ln.Discount += amount
			ln.Discounts = append(ln.Discounts, sh)
			st.ItemsDiscount += amount
		}
		if a.Bearer == BearerStore {
			st.StoreBorne += amount
		} else {
			st.PlatformBorne += amount
		}
	}
	off := make([]int64, len(combo))
	q.Discount = e.run(combo, off, rec)
	q.Payable = q.Items + q.Shipping - q.Discount
	for i := range combo {
		a := &q.Coupons[i]
		a.Stores = []StoreAmount{}
		for s, amt := range perStore[i] {
			if amt > 0 {
				a.Stores = append(a.Stores, StoreAmount{StoreID: ct.stores[s], Amount: amt})
			}
		}
		if off[i] <= 0 || off[i] != a.Discount {
			panic("checkout: a used coupon's shares do not sum to its discount")
		}
	}
	for l := range q.Lines {
		ln := &q.Lines[l]
		ln.Payable = ln.Amount - ln.Discount
		if ln.Payable < 0 {
			panic("checkout: a line's discount exceeds its amount")
		}
	}
	var payable int64
	for s := range q.Stores {
		st := &q.Stores[s]
		st.Payable = st.Items + st.Shipping - st.ItemsDiscount - st.ShippingDiscount
		if st.ShippingDiscount > st.Shipping || st.Payable < 0 {
			panic("checkout: a store's discount exceeds what it applies to")
		}
		payable += st.Payable
	}
	if payable != q.Payable || q.Payable < 0 {
		panic("checkout: the stores' payable does not sum to the order's")
	}
	for _, p := range ps {
		if _, used := pos[p]; used {
			continue
		}
		if reasons[p.idx] == "" {
			panic("checkout: a coupon neither used nor given a reason")
		}
		q.NotUsed = append(q.NotUsed, NotUsed{GrantID: p.c.GrantID, Campaign: p.c.Campaign, Reason: reasons[p.idx]})
	}
	return q
}
