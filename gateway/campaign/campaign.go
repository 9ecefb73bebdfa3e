// Package campaign owns campaign and coupon definitions: their JSON shape,
// their validation (every wrong field named at once), the state a campaign is
// in at a given instant, and the control-plane copy kept in a NATS KV bucket
// that every gateway watches (registry.go).
//
// Amounts are integers in minor units (cents); times are RFC 3339 in JSON.
// A definition never changes a grant already made: grants snapshot what they
// need (coupon, validity) when they are minted.
package campaign

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

const (
	// IDLenMax bounds a campaign id; ids appear in Redis keys and URLs.
	IDLenMax = 64
	// NameLenMax bounds a display name.
	NameLenMax = 200
	// StockMax bounds one campaign's stock (and what one PATCH may add).
	StockMax = 1 << 40
	// PerUserLimitMax bounds per_user_limit: a user's grants are one Redis set.
	PerUserLimitMax = 1000
	// ShardsMax mirrors stock.ShardsMax.
	ShardsMax = 1024
	// TiersMax bounds the tiers of a threshold coupon.
	TiersMax = 20
	// ValidityDaysMax bounds days_after_claim validity.
	ValidityDaysMax = 3650
	// AmountMax bounds every amount of a coupon (tier minimums and
	// discounts, caps, face values, budgets): more than any order can reach,
	// and what package checkout accepts.
	AmountMax = 1 << 60
	// PriorityMax bounds |priority|.
	PriorityMax = 1_000_000
	// ExpiringNoticeHoursMax bounds expiring_notice_hours (a year).
	ExpiringNoticeHoursMax = 8760
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidID reports whether s is a well-formed campaign id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// Coupon is what a grant entitles the user to. Exactly the fields of its type are set.
type Coupon struct {
	Type    string  `json:"type"` // threshold | percent | voucher | product | free_shipping
	Tiers   []Tier  `json:"tiers,omitempty"`
	Percent int64   `json:"percent,omitempty"`
	MaxOff  int64   `json:"max_off,omitempty"`
	Amount  int64   `json:"amount,omitempty"`
	SKU     string  `json:"sku,omitempty"`
	Issuer  *Issuer `json:"issuer,omitempty"` // who pays for the discount (default platform)
	Scope   *Scope  `json:"scope,omitempty"`  // what it applies to at checkout (default everything)
	// ScopeMode says what the scope does at checkout: line (the default,
	// also ""): lines outside it neither count nor get the discount;
	// whole_order: an order with any line of the issuer's outside the scope
	// cannot use the coupon at all.
	ScopeMode string `json:"scope_mode,omitempty"`
}

// Issuer of a coupon: the platform, or one store.
type Issuer struct {
	Type    string `json:"type"` // platform | store
	StoreID string `json:"store_id,omitempty"`
}

// Scope limits a coupon at checkout to products, categories or brands.
type Scope struct {
	Products   []string `json:"products,omitempty"`
	Categories []string `json:"categories,omitempty"`
	Brands     []string `json:"brands,omitempty"`
}

// ChangesKeptMax bounds the change ids remembered per campaign: a retry is
// recognised while its change is among the campaign's last ChangesKeptMax
// changes that carried a change_id (a client retries within seconds or
// minutes; the bound keeps the definition small).
const ChangesKeptMax = 64

// ScopeEntriesMax bounds each scope list.
const ScopeEntriesMax = 1000

// Tier of a threshold coupon: spend at least Min, get Off off.
type Tier struct {
	Min int64 `json:"min"`
	Off int64 `json:"off"`
}

// FaceValue is the most one coupon can take off an order, in minor units (0
// when not monetary, e.g. a product or free shipping).
func (c *Coupon) FaceValue() int64 {
	switch c.Type {
	case "threshold":
		var m int64
		for _, t := range c.Tiers {
			m = max(m, t.Off)
		}
		return m
	case "percent":
		return c.MaxOff
	case "voucher":
		return c.Amount
	}
	return 0
}

// Validity says when a granted coupon may be used.
type Validity struct {
	Mode  string     `json:"mode"` // fixed | days_after_claim | permanent
	From  *time.Time `json:"from,omitempty"`
	Until *time.Time `json:"until,omitempty"`
	Days  int        `json:"days,omitempty"`
}

// Window computes a grant's valid_from / valid_until (zero = unbounded).
func (v *Validity) Window(grantedAt time.Time) (from, until time.Time) {
	switch v.Mode {
	case "fixed":
		return *v.From, *v.Until
	case "days_after_claim":
		return grantedAt, grantedAt.AddDate(0, 0, v.Days)
	}
	return grantedAt, time.Time{}
}

// Audience says who may claim: everyone (public), users added to the
// campaign's list (targeted), or holders of a redemption code (code).
type Audience struct {
	Mode string `json:"mode"` // public | targeted | code
}

// Campaign is one drop.
type Campaign struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Coupon       Coupon    `json:"coupon"`
	Stock        int64     `json:"stock"`
	PerUserLimit int       `json:"per_user_limit"`
	Shards       int       `json:"shards"`
	StartsAt     time.Time `json:"starts_at"`
	EndsAt       time.Time `json:"ends_at"`
	Validity     Validity  `json:"validity"`
	Audience     Audience  `json:"audience"`
	Budget       int64     `json:"budget,omitempty"` // cap on total face value granted (cents); 0 = none
	Draft        bool      `json:"draft,omitempty"`  // created but not published: not claimable
	Paused       bool      `json:"paused,omitempty"`
	Deleted      bool      `json:"deleted,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// Changes lists the change ids of applied PATCHes (the last
	// ChangesKeptMax), so a retried PATCH changes nothing more. The units
	// on the shards follow the definition (package stock), so the
	// definition alone decides whether a change applied.
	Changes []string `json:"changes,omitempty"`

	// Checkout rules (issue 13; package checkout applies them). Absent
	// fields take the defaults, so definitions written before them read
	// unchanged.
	//
	// Exclusive: the coupon combines with no other coupon at checkout.
	Exclusive bool `json:"exclusive,omitempty"`
	// Stackable (default true): false refuses the coupon on an order that
	// declares other offers (a bundle promotion, …).
	Stackable *bool `json:"stackable,omitempty"`
	// Priority breaks ties between equally good combinations when the best
	// one is chosen: higher first.
	Priority int `json:"priority,omitempty"`
	// OnRefund is what a full refund of the order does to the coupon:
	// return (the default, also "": usable again if its validity has not
	// ended) or keep (stays used).
	OnRefund string `json:"on_refund,omitempty"`
	// ExpiringNoticeHours > 0 publishes flashgate.coupons.expiring once per
	// unused grant this many hours before its valid_until (0: none).
	ExpiringNoticeHours int `json:"expiring_notice_hours,omitempty"`

	// CouponJSON is Coupon encoded once when the definition is loaded, for
	// the claim answer (the hot path does not marshal it per grant).
	CouponJSON []byte `json:"-"`
	// Revision is the KV revision this copy was read at (0 if not read from
	// the bucket); a later change has a higher one.
	Revision uint64 `json:"-"`
}

// State of a campaign at an instant.
type State string

const (
	StateDraft      State = "draft"
	StateNotStarted State = "not_started"
	StateActive     State = "active"
	StatePaused     State = "paused"
	StateEnded      State = "ended"
	StateDeleted    State = "deleted"
)

// StateAt returns the campaign's state at now.
func (c *Campaign) StateAt(now time.Time) State {
	switch {
	case c.Deleted:
		return StateDeleted
	case c.Draft:
		return StateDraft
	case !now.Before(c.EndsAt):
		return StateEnded
	case c.Paused:
		return StatePaused
	case now.Before(c.StartsAt):
		return StateNotStarted
	}
	return StateActive
}

// EnsureDefaults fills fields a creator may leave out.
func (c *Campaign) EnsureDefaults() {
	if c.PerUserLimit == 0 {
		c.PerUserLimit = 1
	}
	if c.Shards == 0 {
		c.Shards = defaultShards(c.Stock)
		if c.Audience.Mode == "code" {
			c.Shards = 1
		}
	}
	if c.Validity.Mode == "" {
		c.Validity.Mode = "permanent"
	}
	if c.Audience.Mode == "" {
		c.Audience.Mode = "public"
	}
}

// defaultShards: one shard per ~1000 units, at most 16; enough to spread a
// hot campaign over a cluster without making the sold-out survey expensive.
func defaultShards(stock int64) int {
	n := stock / 1000
	switch {
	case n < 1:
		return 1
	case n > 16:
		return 16
	}
	return int(n)
}

// Validate reports every invalid field at once, each error naming the field.
//
// long: one flat check per field, in the order of the definition, so every
// rule a campaign must meet reads in one place.
func (c *Campaign) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if !ValidID(c.ID) {
		bad("id", "must be 1..%d of A-Z a-z 0-9 _ -", IDLenMax)
	}
	if strings.TrimSpace(c.Name) == "" || len(c.Name) > NameLenMax {
		bad("name", "must be 1..%d characters", NameLenMax)
	}
	c.Coupon.validate(bad)
	if c.Stock < 1 || c.Stock > StockMax {
		bad("stock", "must be 1..%d", int64(StockMax))
	}
	if c.PerUserLimit < 1 || c.PerUserLimit > PerUserLimitMax {
		bad("per_user_limit", "must be 1..%d", PerUserLimitMax)
	}
	if c.Shards < 1 || c.Shards > ShardsMax {
		bad("shards", "must be 1..%d", ShardsMax)
	} else if int64(c.Shards) > c.Stock && c.Stock >= 1 {
		bad("shards", "must not exceed stock (%d)", c.Stock)
	}
	if c.StartsAt.IsZero() {
		bad("starts_at", "is required")
	}
	if c.EndsAt.IsZero() {
		bad("ends_at", "is required")
	} else if !c.StartsAt.IsZero() && !c.EndsAt.After(c.StartsAt) {
		bad("ends_at", "must be after starts_at")
	}
	switch c.Validity.Mode {
	case "permanent":
	case "days_after_claim":
		if c.Validity.Days < 1 || c.Validity.Days > ValidityDaysMax {
			bad("validity.days", "must be 1..%d", ValidityDaysMax)
		}
	case "fixed":
		if c.Validity.From == nil {
			bad("validity.from", "is required for mode fixed")
		}
		if c.Validity.Until == nil {
			bad("validity.until", "is required for mode fixed")
		}
		if c.Validity.From != nil && c.Validity.Until != nil && !c.Validity.Until.After(*c.Validity.From) {
			bad("validity.until", "must be after validity.from")
		}
	default:
		bad("validity.mode", "must be fixed, days_after_claim or permanent")
	}
	switch c.Audience.Mode {
	case "public", "targeted":
	case "code":
		// A code, the user's grants and the stock must share one Redis slot
		// for "a code grants once" to be one atomic script.
		if c.Shards != 1 {
			bad("shards", "a code campaign has exactly 1 shard")
		}
	default:
		bad("audience.mode", "must be public, targeted or code")
	}
	if c.Priority < -PriorityMax || c.Priority > PriorityMax {
		bad("priority", "must be -%d..%d", PriorityMax, PriorityMax)
	}
	switch c.OnRefund {
	case "", "return", "keep":
	default:
		bad("on_refund", "must be return or keep")
	}
	if c.ExpiringNoticeHours < 0 || c.ExpiringNoticeHours > ExpiringNoticeHoursMax {
		bad("expiring_notice_hours", "must be 0..%d", ExpiringNoticeHoursMax)
	} else if c.ExpiringNoticeHours > 0 && c.Validity.Mode == "permanent" {
		bad("expiring_notice_hours", "a permanent coupon never expires: needs validity fixed or days_after_claim")
	}
	if c.Budget > AmountMax {
		bad("budget", "must be at most %d", int64(AmountMax))
	}
	if c.Budget < 0 {
		bad("budget", "must not be negative")
	} else if c.Budget > 0 {
		if c.Coupon.FaceValue() == 0 {
			bad("budget", "a budget needs a monetary coupon (threshold, percent or voucher)")
		} else if c.Budget < c.Coupon.FaceValue() {
			bad("budget", "budget %d is below one coupon's face value %d", c.Budget, c.Coupon.FaceValue())
		}
	}
	if len(errs) == 0 {
		if n, field := c.encodedLenWorst(); n > DefinitionLenMax {
			bad(field, "the definition would take %d bytes encoded (with room for %d change ids), over the %d a definition may hold: shorten it", n, ChangesKeptMax, DefinitionLenMax)
		}
	}
	return errors.Join(errs...)
}

// DefinitionLenMax bounds one stored definition (the KV bucket's value
// limit). Validate refuses a definition that could outgrow it, so nothing is
// written to Redis for a definition the bucket would refuse, and a stored one
// always has room for its change ids.
const DefinitionLenMax = 64 << 10

// changeIDLenMax bounds a PATCH's change_id.
const changeIDLenMax = 64

// encodedLenWorst is the definition's encoded size once Changes holds the
// most and longest change ids it can keep, and the field most to blame.
func (c *Campaign) encodedLenWorst() (int, string) {
	w := *c
	w.CouponJSON = nil
	w.Changes = make([]string, ChangesKeptMax)
	for i := range w.Changes {
		w.Changes[i] = strings.Repeat("x", changeIDLenMax)
	}
	b, _ := json.Marshal(&w)
	field := "name"
	if c.Coupon.Scope != nil {
		if sb, _ := json.Marshal(c.Coupon.Scope); len(sb) > len(b)/2 {
			field = "coupon.scope"
		}
	}
	return len(b), field
}

func (cp *Coupon) validate(bad func(field, format string, args ...any)) {
	switch cp.Type {
	case "threshold":
		if len(cp.Tiers) == 0 || len(cp.Tiers) > TiersMax {
			bad("coupon.tiers", "must have 1..%d tiers", TiersMax)
		}
		for i, t := range cp.Tiers {
			f := fmt.Sprintf("coupon.tiers[%d]", i)
			if t.Min < 1 || t.Min > AmountMax {
				bad(f+".min", "must be 1..%d", int64(AmountMax))
			}
			if t.Off < 1 {
				bad(f+".off", "must be positive")
			} else if t.Off >= t.Min {
				bad(f+".off", "discount %d must be less than its minimum %d", t.Off, t.Min)
			}
			if i > 0 && (t.Min <= cp.Tiers[i-1].Min || t.Off <= cp.Tiers[i-1].Off) {
				bad(f, "tiers must rise in both min and off")
			}
		}
	case "percent":
		if cp.Percent < 1 || cp.Percent > 100 {
			bad("coupon.percent", "must be 1..100")
		}
		if cp.MaxOff < 1 || cp.MaxOff > AmountMax {
			bad("coupon.max_off", "must be 1..%d (the cap of a percent coupon)", int64(AmountMax))
		}
	case "voucher":
		if cp.Amount < 1 || cp.Amount > AmountMax {
			bad("coupon.amount", "must be 1..%d", int64(AmountMax))
		}
	case "product":
		if strings.TrimSpace(cp.SKU) == "" || len(cp.SKU) > 128 {
			bad("coupon.sku", "must be 1..128 characters")
		}
	case "free_shipping":
	default:
		bad("coupon.type", "must be threshold, percent, voucher, product or free_shipping")
	}
	if is := cp.Issuer; is != nil {
		switch is.Type {
		case "platform":
			if is.StoreID != "" {
				bad("coupon.issuer.store_id", "only for issuer type store")
			}
		case "store":
			if strings.TrimSpace(is.StoreID) == "" || len(is.StoreID) > 64 {
				bad("coupon.issuer.store_id", "is required for issuer type store (1..64 characters)")
			}
		default:
			bad("coupon.issuer.type", "must be platform or store")
		}
	}
	switch cp.ScopeMode {
	case "", "line", "whole_order":
	default:
		bad("coupon.scope_mode", "must be line or whole_order")
	}
	if sc := cp.Scope; sc != nil {
		for name, list := range map[string][]string{"products": sc.Products, "categories": sc.Categories, "brands": sc.Brands} {
			if len(list) > ScopeEntriesMax {
				bad("coupon.scope."+name, "at most %d entries", ScopeEntriesMax)
			}
			for _, v := range list {
				if strings.TrimSpace(v) == "" || len(v) > 128 {
					bad("coupon.scope."+name, "entries must be 1..128 characters")
					break
				}
			}
		}
	}
}

// Units is how many coupons the shards hold: the stock, capped by the budget
// (each grant commits the coupon's face value, its most it can take off an
// order, so the budget can never be overspent, not by a cent).
func (c *Campaign) Units() int64 {
	face := c.Coupon.FaceValue()
	if c.Budget <= 0 || face <= 0 {
		return c.Stock
	}
	return min(c.Stock, c.Budget/face)
}

// Patch is an operator's change to a live campaign. It never touches a grant
// already made: stock only grows, units (Units) never shrink, and windows and
// states apply to future claims.
type Patch struct {
	AddStock int64      `json:"add_stock,omitempty"`
	Budget   *int64     `json:"budget,omitempty"`
	Paused   *bool      `json:"paused,omitempty"`
	Draft    *bool      `json:"draft,omitempty"` // false publishes a draft
	EndsAt   *time.Time `json:"ends_at,omitempty"`
	// ChangeID makes a PATCH retry-safe: a change whose id the campaign
	// remembers (Changes) is not applied again. Required with add_stock, the
	// one field that is a delta: without an id its retry would add again.
	ChangeID string `json:"change_id,omitempty"`
}

// HasChange reports whether a PATCH with this change id has been applied
// (among the last ChangesKeptMax).
func (c *Campaign) HasChange(id string) bool {
	for _, x := range c.Changes {
		if x == id {
			return true
		}
	}
	return false
}

// Apply returns the patched copy, validated. A patch whose change id the
// campaign already holds is a retry: the copy is unchanged. The copy's
// Units() is never below c.Units(): units on the shards cannot be taken back.
func (c *Campaign) Apply(p *Patch) (Campaign, error) {
	n := *c
	n.CouponJSON = nil
	n.Changes = append([]string(nil), c.Changes...)
	if p.ChangeID != "" && c.HasChange(p.ChangeID) {
		return n, nil // a retry of an applied change: nothing more to do
	}
	var errs []error
	if p.ChangeID != "" {
		n.Changes = append(n.Changes, p.ChangeID)
		if len(n.Changes) > ChangesKeptMax {
			n.Changes = n.Changes[len(n.Changes)-ChangesKeptMax:]
		}
	}
	if p.AddStock < 0 || p.AddStock > StockMax {
		errs = append(errs, &FieldError{Field: "add_stock", Msg: "must be 0..2^40 (stock only grows; unclaimed units are never taken back)"})
	} else if p.AddStock > 0 && p.ChangeID == "" {
		errs = append(errs, &FieldError{Field: "change_id", Msg: "is required with add_stock: send one id per change and reuse it on every retry, so a retry (after a timeout or a 503) adds once"})
	}
	n.Stock += max(p.AddStock, 0)
	if p.Budget != nil {
		if *p.Budget < c.Budget {
			errs = append(errs, &FieldError{Field: "budget", Msg: fmt.Sprintf("may only grow (it is %d)", c.Budget)})
		}
		n.Budget = *p.Budget
	}
	if p.Paused != nil {
		n.Paused = *p.Paused
	}
	if p.Draft != nil {
		if *p.Draft && !c.Draft {
			errs = append(errs, &FieldError{Field: "draft", Msg: "a published campaign cannot go back to draft; pause it"})
		}
		n.Draft = *p.Draft
	}
	if p.EndsAt != nil {
		n.EndsAt = *p.EndsAt
	}
	if c.Deleted {
		errs = append(errs, &FieldError{Field: "id", Msg: "campaign is deleted"})
	}
	if len(p.ChangeID) > changeIDLenMax {
		errs = append(errs, &FieldError{Field: "change_id", Msg: fmt.Sprintf("at most %d characters", changeIDLenMax)})
	}
	if err := n.Validate(); err != nil {
		errs = append(errs, err)
	} else if n.Units() < c.Units() {
		// Only a budget can lower the units (stock only grows): one set on a
		// campaign that had none, below what its stock already put on the shards.
		errs = append(errs, &FieldError{Field: "budget", Msg: fmt.Sprintf(
			"%d allows %d units, fewer than the %d already on the shards (units are never taken back): at least %d",
			n.Budget, n.Units(), c.Units(), c.Units()*n.Coupon.FaceValue())})
	}
	return n, errors.Join(errs...)
}

// FieldError is a validation error naming its field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Fields lists the fields named in err (a joined error of FieldErrors).
func Fields(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		var fe *FieldError
		if errors.As(e, &fe) && fe == e {
			out = append(out, fe.Field)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}
