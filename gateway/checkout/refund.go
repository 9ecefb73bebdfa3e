package checkout

import (
	"errors"
	"fmt"
	"time"
)

// LineQty is a number of units of one order line.
type LineQty struct {
	Line     int   `json:"line"` // index into the order's items
	Quantity int64 `json:"quantity"`
}

// RefundQuotation is a refund's answer: the refunded units' share of each
// coupon's discount, and what the buyer paid for them.
type RefundQuotation struct {
	// Lines are the lines of this refund, in the order given.
	Lines []RefundedLine `json:"lines"`
	// Coupons are every coupon of the quotation, in its order.
	Coupons  []RefundedCoupon `json:"coupons"`
	Amount   int64            `json:"amount"`   // Σ unit price × units refunded
	Discount int64            `json:"discount"` // Σ the refunded units' shares of the discounts
	Refund   int64            `json:"refund"`   // Amount − Discount: what the buyer paid for these units
	// OrderRefunded: with this refund, every unit of the order is refunded.
	OrderRefunded bool `json:"order_refunded"`
}

// RefundedLine is one line's part of a refund.
type RefundedLine struct {
	Line      int     `json:"line"`
	Quantity  int64   `json:"quantity"`
	Amount    int64   `json:"amount"`
	Discount  int64   `json:"discount"`
	Refund    int64   `json:"refund"` // Amount − Discount, never negative
	Discounts []Share `json:"discounts,omitempty"`
}

// RefundedCoupon is one coupon's part of a refund.
type RefundedCoupon struct {
	GrantID string `json:"grant_id"`
	Bearer  Bearer `json:"bearer"`
	// Items is the refunded units' share of its discount.
	Items int64 `json:"items"`
	// Shipping is its discount on fees, reported by the refund that
	// completes the order's (fees follow the order, not its units; whether
	// a fee is paid back is the order service's policy).
	Shipping int64 `json:"shipping"`
	// Stores splits Items + Shipping per store, sorted by store id.
	Stores []StoreAmount `json:"stores"`
	// Returned: the order is now fully refunded, the campaign's on_refund
	// is return and the coupon's validity has not ended, so the coupon
	// becomes usable again. Otherwise it stays used.
	Returned bool `json:"returned"`
}

// Refund computes the share of each coupon's discount carried by the units
// refunded now, given the units of each line refunded earlier (both lists
// name each line at most once). Summed over successive refunds that end in
// the whole order, each coupon's shares are exactly its discount.
//
// Rounding (doc.go): a line's discount D over its quantity Q is carried
// unit by unit, the u-th unit carrying ⌊D·u/Q⌋ − ⌊D·(u−1)/Q⌋ cents (never
// more than the unit price), split among the line's coupons in proportion
// to what each has not yet carried (largest remainder, ties to the coupon
// applied first). Units are refunded in order: the earlier refunds took the
// first ones.
func Refund(q *Quotation, earlier, now []LineQty, at time.Time) (*RefundQuotation, error) {
	before, this, err := refundQty(q, earlier, now)
	if err != nil {
		return nil, err
	}
	r := &RefundQuotation{Lines: []RefundedLine{}, Coupons: make([]RefundedCoupon, len(q.Coupons)), OrderRefunded: true}
	pos := make(map[string]int, len(q.Coupons))
	stores := make(map[string]int)
	for _, st := range q.Stores {
		stores[st.StoreID] = len(stores)
	}
	perStore := make([][]int64, len(q.Coupons))
	for i, a := range q.Coupons {
		pos[a.GrantID] = i
		r.Coupons[i] = RefundedCoupon{GrantID: a.GrantID, Bearer: a.Bearer, Stores: []StoreAmount{}}
		perStore[i] = make([]int64, len(stores))
	}
	for l := range q.Lines {
		if before[l]+this[l] != q.Lines[l].Quantity {
			r.OrderRefunded = false
		}
	}
	var ap apportioner
	for _, n := range now {
		ln := &q.Lines[n.Line]
		shares := lineRefund(&ap, ln, before[n.Line], n.Quantity)
		rl := RefundedLine{Line: n.Line, Quantity: n.Quantity, Amount: ln.UnitPrice * n.Quantity}
		for i, d := range ln.Discounts {
			if shares[i] == 0 {
				continue
			}
			rl.Discount += shares[i]
			rl.Discounts = append(rl.Discounts, Share{GrantID: d.GrantID, Bearer: d.Bearer, Amount: shares[i]})
			c := pos[d.GrantID]
			r.Coupons[c].Items += shares[i]
			perStore[c][stores[ln.StoreID]] += shares[i]
		}
		rl.Refund = rl.Amount - rl.Discount
		if rl.Refund < 0 {
			panic("checkout: refunded units carry more discount than their price")
		}
		r.Lines = append(r.Lines, rl)
		r.Amount += rl.Amount
		r.Discount += rl.Discount
	}
	r.Refund = r.Amount - r.Discount
	for i := range r.Coupons {
		rc := &r.Coupons[i]
		if r.OrderRefunded {
			for _, st := range q.Stores {
				for _, sh := range st.ShippingDiscounts {
					if sh.GrantID == rc.GrantID {
						rc.Shipping += sh.Amount
						perStore[i][stores[st.StoreID]] += sh.Amount
					}
				}
			}
			a := &q.Coupons[i]
			rc.Returned = a.OnRefund != RefundKeep && (a.ValidUntil.IsZero() || at.Before(a.ValidUntil))
		}
		for _, st := range q.Stores {
			if amt := perStore[i][stores[st.StoreID]]; amt > 0 {
				rc.Stores = append(rc.Stores, StoreAmount{StoreID: st.StoreID, Amount: amt})
			}
		}
	}
	return r, nil
}

// refundQty checks a refund's quantities against the quotation and returns
// the units refunded earlier and now, per line.
func refundQty(q *Quotation, earlier, now []LineQty) (before, this []int64, err error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if err := checkQuotation(q); err != nil {
		return nil, nil, err
	}
	if len(now) == 0 {
		bad("lines", "a refund names at least one line")
	}
	before, this = make([]int64, len(q.Lines)), make([]int64, len(q.Lines))
	for _, list := range []struct {
		name string
		qty  []LineQty
		into []int64
	}{{"earlier", earlier, before}, {"lines", now, this}} {
		seen := map[int]bool{}
		for i, n := range list.qty {
			f := fmt.Sprintf("%s[%d]", list.name, i)
			switch {
			case n.Line < 0 || n.Line >= len(q.Lines):
				bad(f+".line", "no such line")
			case seen[n.Line]:
				bad(f+".line", "named twice")
			case n.Quantity < 1 || n.Quantity > q.Lines[n.Line].Quantity:
				bad(f+".quantity", "must be 1..%d", q.Lines[n.Line].Quantity)
			default:
				seen[n.Line] = true
				list.into[n.Line] = n.Quantity
			}
		}
	}
	for l, ln := range q.Lines {
		if before[l]+this[l] > ln.Quantity {
			bad(fmt.Sprintf("lines[%d]", l), "refunds %d units of %d, %d of them refunded earlier", this[l], ln.Quantity, before[l])
		}
	}
	return before, this, errors.Join(errs...)
}

// checkQuotation checks what Refund relies on in a quotation read back
// from storage.
func checkQuotation(q *Quotation) error {
	bad := func(field, msg string) error {
		return &FieldError{Field: "quotation." + field, Msg: msg}
	}
	if len(q.Lines) == 0 || len(q.Lines) > ItemsMax {
		return bad("lines", "must have 1..ItemsMax lines")
	}
	known := map[string]bool{}
	for _, a := range q.Coupons {
		known[a.GrantID] = true
	}
	for l, ln := range q.Lines {
		if ln.Line != l || ln.Quantity < 1 || ln.Quantity > QuantityMax || ln.UnitPrice < 0 || ln.UnitPrice > UnitPriceMax {
			return bad(fmt.Sprintf("lines[%d]", l), "malformed")
		}
		var sum int64
		seen := map[string]bool{}
		for _, d := range ln.Discounts {
			if !known[d.GrantID] || seen[d.GrantID] || d.Amount < 0 {
				return bad(fmt.Sprintf("lines[%d].discounts", l), "malformed")
			}
			seen[d.GrantID] = true
			sum += d.Amount
		}
		if sum > ln.UnitPrice*ln.Quantity {
			return bad(fmt.Sprintf("lines[%d].discounts", l), "exceed the line's amount")
		}
	}
	return nil
}

// lineRefund returns, per entry of ln.Discounts, the share carried by units
// prior+1 .. prior+k of the line. It walks the units one by one up to the
// last refunded, except that the line's last units carry whatever the
// earlier ones left: a refund completing a line costs O(prior).
func lineRefund(ap *apportioner, ln *Line, prior, k int64) []int64 {
	n := len(ln.Discounts)
	out := make([]int64, n)
	if n == 0 {
		return out
	}
	var total int64
	left := make([]int64, n) // what each coupon has not yet carried
	for i, d := range ln.Discounts {
		left[i] = d.Amount
		total += d.Amount
	}
	carried := func(u int64) int64 { return mulDiv(total, u, ln.Quantity) }
	last := prior + k
	if last == ln.Quantity {
		last = prior
	}
	unit := make([]int64, n)
	for u := int64(1); u <= last; u++ {
		ap.split(carried(u)-carried(u-1), left, unit)
		for i := range left {
			left[i] -= unit[i]
			if u > prior {
				out[i] += unit[i]
			}
		}
	}
	if prior+k == ln.Quantity {
		copy(out, left)
	}
	return out
}
