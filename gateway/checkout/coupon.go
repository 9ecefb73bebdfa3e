package checkout

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind of a coupon; the names are campaign.Coupon's types.
type Kind string

const (
	KindThreshold    Kind = "threshold"     // the highest tier whose min the applicable subtotal reaches
	KindPercent      Kind = "percent"       // percent of the applicable subtotal, capped by max_off
	KindVoucher      Kind = "voucher"       // a face value, when the applicable subtotal exceeds it
	KindProduct      Kind = "product"       // one unit of a SKU free
	KindFreeShipping Kind = "free_shipping" // the shipping fee of the issuer's store, or every store's for the platform
)

// kindRank orders coupons of one issuer for application (see doc.go): a
// free unit is priced before money comes off, fixed amounts before a
// percentage of what is left; free shipping touches only fees.
func kindRank(k Kind) int {
	switch k {
	case KindProduct:
		return 0
	case KindThreshold:
		return 1
	case KindVoucher:
		return 2
	case KindPercent:
		return 3
	}
	return 4
}

// ScopeMode says what a scope does to lines outside it.
type ScopeMode string

const (
	// ScopeLine (the default, also ""): lines outside the scope neither
	// count toward the coupon's condition nor receive its discount.
	ScopeLine ScopeMode = "line"
	// ScopeWholeOrder: an order with any line outside the scope (among the
	// lines the coupon's issuer sells) cannot use the coupon at all.
	ScopeWholeOrder ScopeMode = "whole_order"
)

// State of a grant in the grant store. "Expired" is not a state: it is
// judged against now and valid_until.
type State string

const (
	StateUnused State = "unused" // also ""
	StateLocked State = "locked" // reserved by an order not yet confirmed
	StateUsed   State = "used"
)

// OnRefund says what a full refund of the order does to the coupon.
type OnRefund string

const (
	// RefundReturn (the default, also ""): the coupon becomes usable again
	// if its validity has not ended.
	RefundReturn OnRefund = "return"
	// RefundKeep: the coupon stays used.
	RefundKeep OnRefund = "keep"
)

// Bearer is who pays for a discount: the platform settles its share back to
// the store.
type Bearer string

const (
	BearerPlatform Bearer = "platform"
	BearerStore    Bearer = "store"
)

// Tier of a threshold coupon: an applicable subtotal of at least Min takes
// Off off.
type Tier struct {
	Min int64 `json:"min"`
	Off int64 `json:"off"`
}

// Scope limits a coupon to lines whose SKU is in Products, or whose category
// is in Categories, or whose brand is in Brands (a union). All three empty:
// every line.
type Scope struct {
	Products   []string `json:"products,omitempty"`
	Categories []string `json:"categories,omitempty"`
	Brands     []string `json:"brands,omitempty"`
}

func (s *Scope) all() bool {
	return len(s.Products) == 0 && len(s.Categories) == 0 && len(s.Brands) == 0
}

// Coupon is one granted coupon offered to a quote: the grant (id, validity,
// state) and its campaign's rules. The HTTP layer builds it from the grant
// store's row and the campaign definition.
type Coupon struct {
	GrantID  string `json:"grant_id"`
	Campaign string `json:"campaign"`

	Kind    Kind   `json:"kind"`
	Tiers   []Tier `json:"tiers,omitempty"`   // threshold: rising in min and off, each off < its min
	Percent int64  `json:"percent,omitempty"` // percent: 1..100
	MaxOff  int64  `json:"max_off,omitempty"` // percent: the cap, ≥ 1
	Amount  int64  `json:"amount,omitempty"`  // voucher: the face value
	SKU     string `json:"sku,omitempty"`     // product: the SKU of the free unit

	// StoreID is the issuer: a store id, or "" for the platform. A store
	// coupon applies only to that store's lines and fee, and the store
	// bears its discount; the platform bears a platform coupon's.
	StoreID   string    `json:"store_id,omitempty"`
	Scope     Scope     `json:"scope,omitzero"`
	ScopeMode ScopeMode `json:"scope_mode,omitempty"`

	// Exclusive: combines with no other coupon.
	Exclusive bool `json:"exclusive,omitempty"`
	// NotStackable is the campaign's "stackable": false: the coupon is
	// refused on an order that declares any offer.
	NotStackable bool `json:"not_stackable,omitempty"`
	// Priority breaks ties between combinations of equal discount when the
	// best one is chosen: higher first.
	Priority int `json:"priority,omitempty"`

	ValidFrom  time.Time `json:"valid_from,omitzero"`  // usable from this instant (zero: always)
	ValidUntil time.Time `json:"valid_until,omitzero"` // usable before this instant (zero: never ends)
	State      State     `json:"state,omitempty"`
	OnRefund   OnRefund  `json:"on_refund,omitempty"`
}

// Bearer of the coupon's discount.
func (c *Coupon) Bearer() Bearer {
	if c.StoreID == "" {
		return BearerPlatform
	}
	return BearerStore
}

// validate reports every invalid field of c, named under prefix f.
func (c *Coupon) validate(f string) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	checkID(bad, f+".grant_id", c.GrantID, true)
	checkID(bad, f+".campaign", c.Campaign, false)
	checkID(bad, f+".store_id", c.StoreID, false)
	switch c.Kind {
	case KindThreshold:
		if len(c.Tiers) == 0 || len(c.Tiers) > TiersMax {
			bad(f+".tiers", "must have 1..%d tiers", TiersMax)
		}
		for i, t := range c.Tiers {
			tf := fmt.Sprintf("%s.tiers[%d]", f, i)
			if t.Min < 1 || t.Min > amountMax {
				bad(tf+".min", "must be 1..%d", int64(amountMax))
			}
			if t.Off < 1 || t.Off >= t.Min {
				bad(tf+".off", "must be 1..min-1")
			}
			if i > 0 && (t.Min <= c.Tiers[i-1].Min || t.Off <= c.Tiers[i-1].Off) {
				bad(tf, "tiers must rise in both min and off")
			}
		}
	case KindPercent:
		if c.Percent < 1 || c.Percent > 100 {
			bad(f+".percent", "must be 1..100")
		}
		if c.MaxOff < 1 || c.MaxOff > amountMax {
			bad(f+".max_off", "must be 1..%d", int64(amountMax))
		}
	case KindVoucher:
		if c.Amount < 1 || c.Amount > amountMax {
			bad(f+".amount", "must be 1..%d", int64(amountMax))
		}
	case KindProduct:
		checkID(bad, f+".sku", c.SKU, true)
	case KindFreeShipping:
	default:
		bad(f+".kind", "must be threshold, percent, voucher, product or free_shipping")
	}
	for _, sc := range []struct {
		name string
		list []string
	}{{"products", c.Scope.Products}, {"categories", c.Scope.Categories}, {"brands", c.Scope.Brands}} {
		if len(sc.list) > ScopeEntriesMax {
			bad(f+".scope."+sc.name, "at most %d entries", ScopeEntriesMax)
		}
		for i, v := range sc.list {
			if strings.TrimSpace(v) == "" || len(v) > IDLenMax {
				bad(fmt.Sprintf("%s.scope.%s[%d]", f, sc.name, i), "must be 1..%d bytes", IDLenMax)
				break
			}
		}
	}
	switch c.ScopeMode {
	case "", ScopeLine, ScopeWholeOrder:
	default:
		bad(f+".scope_mode", "must be line or whole_order")
	}
	switch c.State {
	case "", StateUnused, StateLocked, StateUsed:
	default:
		bad(f+".state", "must be unused, locked or used")
	}
	switch c.OnRefund {
	case "", RefundReturn, RefundKeep:
	default:
		bad(f+".on_refund", "must be return or keep")
	}
	if !c.ValidFrom.IsZero() && !c.ValidUntil.IsZero() && !c.ValidUntil.After(c.ValidFrom) {
		bad(f+".valid_until", "must be after valid_from")
	}
	return errors.Join(errs...)
}

// amountMax bounds a coupon's amounts (tier minimums, caps, face values):
// more than any order can reach (ItemsMax × QuantityMax × UnitPriceMax).
const amountMax = 1 << 60

// Reason says why a coupon offered to a quote is not used.
type Reason string

// The reasons of the issue, then three for the choice itself.
const (
	ReasonBelowThreshold Reason = "below_threshold"  // the applicable subtotal (what earlier coupons left of it) does not reach the condition, or the coupon would take nothing off
	ReasonOutOfScope     Reason = "out_of_scope"     // no line (or SKU, or fee) of the order it applies to; or a whole_order coupon with a line outside its scope
	ReasonNotYetValid    Reason = "not_yet_valid"    // now is before valid_from
	ReasonExpired        Reason = "expired"          // now is at or after valid_until
	ReasonNotStackable   Reason = "not_stackable"    // stackable: false, and the order declares offers
	ReasonExclusive      Reason = "exclusive"        // it is exclusive and other coupons are used, or an exclusive coupon is used
	ReasonOnePerStore    Reason = "one_per_store"    // another coupon of the same store is used
	ReasonOnePerPlatform Reason = "one_per_platform" // another platform coupon of the same slot is used (one discount and one free-shipping platform coupon per order)
	ReasonLocked         Reason = "locked"           // locked to another order
	ReasonUsed           Reason = "used"             // already used
	ReasonNotChosen      Reason = "not_chosen"       // the caller chose grant ids and not this one
	ReasonNotBest        Reason = "not_best"         // usable, but the best combination is better without it
	ReasonNotConsidered  Reason = "not_considered"   // usable alone, but beyond the BestCandidatesMax best coupons searched
)
