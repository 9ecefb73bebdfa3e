package checkout

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// cart is an order indexed for the math.
type cart struct {
	o        *Order
	amount   []int64  // per line: unit price × quantity
	store    []int    // per line: index into stores
	stores   []string // store ids with lines, sorted
	fee      []int64  // per store: shipping fee
	items    int64    // Σ amount
	shipping int64    // Σ fee

	bySKU, byCategory, byBrand map[string][]int // value → lines
}

func newCart(o *Order) *cart {
	ct := &cart{
		o:          o,
		amount:     make([]int64, len(o.Items)),
		store:      make([]int, len(o.Items)),
		bySKU:      map[string][]int{},
		byCategory: map[string][]int{},
		byBrand:    map[string][]int{},
	}
	seen := map[string]bool{}
	for _, it := range o.Items {
		if !seen[it.StoreID] {
			seen[it.StoreID] = true
			ct.stores = append(ct.stores, it.StoreID)
		}
	}
	slices.Sort(ct.stores)
	ct.fee = make([]int64, len(ct.stores))
	for s, id := range ct.stores {
		ct.fee[s] = o.Shipping[id]
		ct.shipping += ct.fee[s]
	}
	for l, it := range o.Items {
		ct.amount[l] = it.Amount()
		ct.items += ct.amount[l]
		ct.store[l], _ = slices.BinarySearch(ct.stores, it.StoreID)
		ct.bySKU[it.SKU] = append(ct.bySKU[it.SKU], l)
		if it.Category != "" {
			ct.byCategory[it.Category] = append(ct.byCategory[it.Category], l)
		}
		if it.Brand != "" {
			ct.byBrand[it.Brand] = append(ct.byBrand[it.Brand], l)
		}
	}
	return ct
}

func (ct *cart) storeIndex(id string) (int, bool) { return slices.BinarySearch(ct.stores, id) }

// prepared is a coupon with what a quote knows of it before combining it
// with others.
type prepared struct {
	c        *Coupon
	idx      int    // position among the coupons offered
	lines    []int  // lines it applies to: its issuer's, in scope; ascending
	skuLines []int  // product: those of lines with its SKU
	stores   []int  // free_shipping: stores with a line in lines
	reason   Reason // why it cannot be used even alone ("" = it can)
	alone    int64  // its discount alone
}

func (p *prepared) store() bool { return p.c.StoreID != "" }

// prepare judges c alone against the order at now: state, validity, offers,
// scope (the condition is judged by the evaluator). mark is scratch, one
// entry per line.
func prepare(ct *cart, c *Coupon, idx int, now time.Time, mark []bool) *prepared {
	p := &prepared{c: c, idx: idx}
	switch {
	case c.State == StateUsed:
		p.reason = ReasonUsed
	case c.State == StateLocked:
		p.reason = ReasonLocked
	case !c.ValidUntil.IsZero() && !now.Before(c.ValidUntil):
		p.reason = ReasonExpired
	case now.Before(c.ValidFrom):
		p.reason = ReasonNotYetValid
	case c.NotStackable && len(ct.o.Offers) > 0:
		p.reason = ReasonNotStackable
	}
	if p.reason != "" {
		return p
	}
	issuer := -1
	if c.StoreID != "" {
		s, ok := ct.storeIndex(c.StoreID)
		if !ok {
			p.reason = ReasonOutOfScope
			return p
		}
		issuer = s
	}
	all := c.Scope.all()
	if !all {
		clear(mark)
		for _, list := range []struct {
			values []string
			by     map[string][]int
		}{{c.Scope.Products, ct.bySKU}, {c.Scope.Categories, ct.byCategory}, {c.Scope.Brands, ct.byBrand}} {
			for _, v := range list.values {
				for _, l := range list.by[v] {
					mark[l] = true
				}
			}
		}
	}
	outside := false
	for l := range ct.amount {
		if issuer >= 0 && ct.store[l] != issuer {
			continue
		}
		if all || mark[l] {
			p.lines = append(p.lines, l)
		} else {
			outside = true
		}
	}
	switch {
	case len(p.lines) == 0, outside && c.ScopeMode == ScopeWholeOrder:
		p.reason = ReasonOutOfScope
	case c.Kind == KindProduct:
		for _, l := range p.lines {
			if ct.o.Items[l].SKU == c.SKU {
				p.skuLines = append(p.skuLines, l)
			}
		}
		if len(p.skuLines) == 0 {
			p.reason = ReasonOutOfScope
		}
	case c.Kind == KindFreeShipping:
		for _, l := range p.lines {
			if len(p.stores) == 0 || p.stores[len(p.stores)-1] != ct.store[l] {
				p.stores = append(p.stores, ct.store[l])
			}
		}
		slices.Sort(p.stores)
		p.stores = slices.Compact(p.stores)
	}
	return p
}

// applyCmp is the order of application (doc.go): store coupons before
// platform coupons; then by store id; then by kind (kindRank); then by grant
// id. Grant ids are unique, so the order is total.
func applyCmp(a, b *prepared) int {
	if a.store() != b.store() {
		if a.store() {
			return -1
		}
		return 1
	}
	return cmp.Or(
		strings.Compare(a.c.StoreID, b.c.StoreID),
		cmp.Compare(kindRank(a.c.Kind), kindRank(b.c.Kind)),
		strings.Compare(a.c.GrantID, b.c.GrantID),
	)
}

// recorder receives every share a coupon takes: of a line (store is the
// line's), or of a store's fee (line = -1).
type recorder func(p *prepared, line, store int, amount int64)

// evaluator applies combinations of coupons to one cart, reusing its
// scratch. Its state (rem, fee) is what the coupons applied so far left;
// the search saves and restores it around each coupon it tries.
type evaluator struct {
	ct    *cart
	rem   []int64 // per line: what earlier coupons left
	fee   []int64 // per store: the fee earlier coupons left
	w     []int64
	share []int64
	ap    apportioner
	saved [][]int64 // per search depth: rem then fee
}

func newEvaluator(ct *cart) *evaluator {
	return &evaluator{
		ct:    ct,
		rem:   make([]int64, len(ct.amount)),
		fee:   make([]int64, len(ct.fee)),
		w:     make([]int64, 0, len(ct.amount)),
		share: make([]int64, len(ct.amount)),
	}
}

// reset puts the state back to the order as given.
func (e *evaluator) reset() {
	copy(e.rem, e.ct.amount)
	copy(e.fee, e.ct.fee)
}

// save keeps the state at depth; restore brings it back.
func (e *evaluator) save(depth int) {
	for len(e.saved) <= depth {
		e.saved = append(e.saved, make([]int64, len(e.rem)+len(e.fee)))
	}
	copy(e.saved[depth], e.rem)
	copy(e.saved[depth][len(e.rem):], e.fee)
}

func (e *evaluator) restore(depth int) {
	copy(e.rem, e.saved[depth])
	copy(e.fee, e.saved[depth][len(e.rem):])
}

// run applies combo, which must be in application order, to the order as
// given, and writes each coupon's discount into off (0: its condition
// failed on what the earlier ones left, and it took nothing). It returns
// the total.
func (e *evaluator) run(combo []*prepared, off []int64, rec recorder) int64 {
	e.reset()
	var total int64
	for i, p := range combo {
		off[i] = e.apply(p, rec)
		total += off[i]
	}
	return total
}

func (e *evaluator) apply(p *prepared, rec recorder) int64 {
	c := p.c
	switch c.Kind {
	case KindFreeShipping:
		var d int64
		for _, s := range p.stores {
			if f := e.fee[s]; f > 0 {
				d += f
				e.fee[s] = 0
				if rec != nil {
					rec(p, -1, s, f)
				}
			}
		}
		return d
	case KindProduct:
		// The lowest-priced unit of the SKU that has a price left: a
		// unit's price is its line's remainder over its quantity.
		line, unit := -1, int64(0)
		for _, l := range p.skuLines {
			u := e.rem[l] / e.ct.o.Items[l].Quantity
			if u > 0 && (line < 0 || u < unit) {
				line, unit = l, u
			}
		}
		if line < 0 {
			return 0
		}
		e.rem[line] -= unit
		if rec != nil {
			rec(p, line, e.ct.store[line], unit)
		}
		return unit
	}
	w := e.w[:0]
	var base int64
	for _, l := range p.lines {
		w = append(w, e.rem[l])
		base += e.rem[l]
	}
	d := amountOff(c, base)
	if d == 0 {
		return 0
	}
	share := e.share[:len(w)]
	e.ap.split(d, w, share)
	for i, l := range p.lines {
		if share[i] > 0 {
			e.rem[l] -= share[i]
			if rec != nil {
				rec(p, l, e.ct.store[l], share[i])
			}
		}
	}
	return d
}

// amountOff is what a threshold, percent or voucher coupon takes off an
// applicable subtotal base; never more than base.
func amountOff(c *Coupon, base int64) int64 {
	switch c.Kind {
	case KindThreshold:
		for i := len(c.Tiers) - 1; i >= 0; i-- {
			if base >= c.Tiers[i].Min {
				return min(c.Tiers[i].Off, base)
			}
		}
		return 0
	case KindPercent:
		return min(mulDiv(base, c.Percent, 100), c.MaxOff)
	case KindVoucher:
		if base > c.Amount {
			return c.Amount
		}
		return 0
	}
	panic("checkout: amountOff of kind " + string(c.Kind))
}
