package campaign

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func valid() Campaign {
	t0 := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	c := Campaign{ID: "d11", Name: "$5 off $30", Coupon: Coupon{Type: "threshold", Tiers: []Tier{{Min: 3000, Off: 500}}},
		Stock: 100000, StartsAt: t0, EndsAt: t0.Add(2 * time.Hour)}
	c.EnsureDefaults()
	return c
}

func TestValidateNamesTheField(t *testing.T) {
	from := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	before := from.Add(-time.Hour)
	cases := []struct {
		name   string
		mutate func(*Campaign)
		fields []string
	}{
		{"threshold discount ≥ minimum", func(c *Campaign) { c.Coupon.Tiers[0].Off = 3000 }, []string{"coupon.tiers[0].off"}},
		{"tiers not rising", func(c *Campaign) { c.Coupon.Tiers = append(c.Coupon.Tiers, Tier{Min: 2000, Off: 600}) }, []string{"coupon.tiers[1]"}},
		{"percent 0", func(c *Campaign) { c.Coupon = Coupon{Type: "percent", Percent: 0, MaxOff: 100} }, []string{"coupon.percent"}},
		{"percent 101", func(c *Campaign) { c.Coupon = Coupon{Type: "percent", Percent: 101, MaxOff: 100} }, []string{"coupon.percent"}},
		{"percent without cap", func(c *Campaign) { c.Coupon = Coupon{Type: "percent", Percent: 20} }, []string{"coupon.max_off"}},
		{"voucher without amount", func(c *Campaign) { c.Coupon = Coupon{Type: "voucher"} }, []string{"coupon.amount"}},
		{"product without sku", func(c *Campaign) { c.Coupon = Coupon{Type: "product"} }, []string{"coupon.sku"}},
		{"unknown coupon type", func(c *Campaign) { c.Coupon = Coupon{Type: "bogo"} }, []string{"coupon.type"}},
		{"ends before starts", func(c *Campaign) { c.EndsAt = c.StartsAt.Add(-time.Minute) }, []string{"ends_at"}},
		{"bad id", func(c *Campaign) { c.ID = "has space" }, []string{"id"}},
		{"zero stock", func(c *Campaign) { c.Stock = 0; c.Shards = 1 }, []string{"stock"}},
		{"more shards than stock", func(c *Campaign) { c.Stock = 4; c.Shards = 8 }, []string{"shards"}},
		{"per user limit too high", func(c *Campaign) { c.PerUserLimit = PerUserLimitMax + 1 }, []string{"per_user_limit"}},
		{"fixed validity backwards", func(c *Campaign) { c.Validity = Validity{Mode: "fixed", From: &from, Until: &before} }, []string{"validity.until"}},
		{"days_after_claim 0", func(c *Campaign) { c.Validity = Validity{Mode: "days_after_claim"} }, []string{"validity.days"}},
		{"unknown audience", func(c *Campaign) { c.Audience.Mode = "vip" }, []string{"audience.mode"}},
		{"code campaign with many shards", func(c *Campaign) { c.Audience.Mode = "code"; c.Shards = 4 }, []string{"shards"}},
		{"budget on a product coupon", func(c *Campaign) { c.Coupon = Coupon{Type: "product", SKU: "x"}; c.Budget = 1000 }, []string{"budget"}},
		{"budget below one coupon", func(c *Campaign) { c.Budget = 499 }, []string{"budget"}},
		{"store issuer without id", func(c *Campaign) { c.Coupon.Issuer = &Issuer{Type: "store"} }, []string{"coupon.issuer.store_id"}},
		{"unknown issuer", func(c *Campaign) { c.Coupon.Issuer = &Issuer{Type: "bank"} }, []string{"coupon.issuer.type"}},
		{"empty scope entry", func(c *Campaign) { c.Coupon.Scope = &Scope{Brands: []string{""}} }, []string{"coupon.scope.brands"}},
		{"unknown scope mode", func(c *Campaign) { c.Coupon.ScopeMode = "basket" }, []string{"coupon.scope_mode"}},
		{"unknown on_refund", func(c *Campaign) { c.OnRefund = "refund" }, []string{"on_refund"}},
		{"priority too high", func(c *Campaign) { c.Priority = PriorityMax + 1 }, []string{"priority"}},
		{"expiring notice on a permanent coupon", func(c *Campaign) { c.ExpiringNoticeHours = 24 }, []string{"expiring_notice_hours"}},
		{"negative expiring notice", func(c *Campaign) { c.ExpiringNoticeHours = -1 }, []string{"expiring_notice_hours"}},
		{"voucher beyond any order", func(c *Campaign) { c.Coupon = Coupon{Type: "voucher", Amount: AmountMax + 1} }, []string{"coupon.amount"}},
		{"tier minimum beyond any order", func(c *Campaign) { c.Coupon.Tiers[0].Min = AmountMax + 1 }, []string{"coupon.tiers[0].min"}},
		{"several at once", func(c *Campaign) { c.Name = ""; c.Stock = -1; c.Shards = 1; c.Coupon.Tiers[0].Min = 0 }, []string{"name", "stock", "coupon.tiers[0].min"}},
	}
	base := valid()
	if err := base.Validate(); err != nil {
		t.Fatalf("valid campaign refused: %v", err)
	}
	for _, tc := range cases {
		c := valid()
		c.Coupon.Tiers = slices.Clone(c.Coupon.Tiers)
		tc.mutate(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		got := Fields(err)
		for _, f := range tc.fields {
			if !slices.Contains(got, f) {
				t.Errorf("%s: fields %v do not name %s (%v)", tc.name, got, f, err)
			}
		}
	}
}

func TestStateAndValidityWindow(t *testing.T) {
	c := valid()
	for at, want := range map[time.Time]State{
		c.StartsAt.Add(-time.Second): StateNotStarted,
		c.StartsAt:                   StateActive,
		c.EndsAt:                     StateEnded,
	} {
		if got := c.StateAt(at); got != want {
			t.Errorf("at %v: %s, want %s", at, got, want)
		}
	}
	c.Paused = true
	if c.StateAt(c.StartsAt) != StatePaused {
		t.Error("paused campaign not paused")
	}
	c.Validity = Validity{Mode: "days_after_claim", Days: 7}
	from, until := c.Validity.Window(c.StartsAt)
	if !from.Equal(c.StartsAt) || !until.Equal(c.StartsAt.AddDate(0, 0, 7)) {
		t.Errorf("window %v %v", from, until)
	}
	if (&Coupon{Type: "percent", Percent: 20, MaxOff: 5000}).FaceValue() != 5000 {
		t.Error("percent face value is its cap")
	}
}

func TestUnitsAndPatch(t *testing.T) {
	c := valid() // $5 off $30: face value 500
	c.Stock, c.Budget = 1000, 100_000
	if c.Units() != 200 {
		t.Fatalf("budget 100000 / face 500 caps units at 200, got %d", c.Units())
	}
	n, err := c.Apply(&Patch{AddStock: 50, ChangeID: "add-50"})
	if err != nil || n.Stock != 1050 || n.Units() != 200 {
		t.Fatalf("add stock under a binding budget: %+v %v", n.Units(), err)
	}
	if again, err := n.Apply(&Patch{AddStock: 50, ChangeID: "add-50"}); err != nil || again.Stock != 1050 || len(again.Changes) != 1 {
		t.Fatalf("a retried change applied again: stock %d, changes %v, %v", again.Stock, again.Changes, err)
	}
	if _, err := c.Apply(&Patch{AddStock: 50}); !slices.Equal(Fields(err), []string{"change_id"}) {
		t.Fatalf("add_stock without change_id: %v", err)
	}
	b := int64(200_000)
	if n, err = c.Apply(&Patch{Budget: &b}); err != nil || n.Units() != 400 {
		t.Fatalf("raise budget: %d %v", n.Units(), err)
	}
	lower := int64(1000)
	draft := true
	if _, err := c.Apply(&Patch{AddStock: -1, Budget: &lower, Draft: &draft}); err == nil || len(Fields(err)) < 3 {
		t.Fatalf("bad patch: %v", err)
	}
	// A first budget on a campaign without one may cap future stock, never
	// the units already there.
	open := valid()
	open.Stock = 1000
	for budget, ok := range map[int64]bool{499_999: false, 500_000: true, 900_000: true} {
		_, err := open.Apply(&Patch{Budget: &budget})
		if (err == nil) != ok || (!ok && !slices.Equal(Fields(err), []string{"budget"})) {
			t.Errorf("budget %d on 1000 units of face 500: %v", budget, err)
		}
	}
	early := c.StartsAt.Add(-time.Hour)
	if _, err := c.Apply(&Patch{EndsAt: &early}); err == nil || !slices.Contains(Fields(err), "ends_at") {
		t.Fatalf("ends before starts: %v", err)
	}
}

// TestCheckoutFields: the checkout rules are optional, validated, and
// round-trip through the definition's JSON; absent ones read as defaults.
func TestCheckoutFields(t *testing.T) {
	c := valid()
	no := false
	c.Coupon.Scope = &Scope{Categories: []string{"tea"}}
	c.Coupon.ScopeMode = "whole_order"
	c.Exclusive, c.Stackable, c.Priority, c.OnRefund = true, &no, 7, "keep"
	c.Validity = Validity{Mode: "days_after_claim", Days: 7}
	c.ExpiringNoticeHours = 24
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	var back Campaign
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Coupon.ScopeMode != "whole_order" || !back.Exclusive || back.Stackable == nil || *back.Stackable || back.Priority != 7 || back.OnRefund != "keep" || back.ExpiringNoticeHours != 24 {
		t.Fatalf("round trip: %s", b)
	}
	plain := valid()
	b, _ = json.Marshal(&plain)
	for _, f := range []string{"scope_mode", "exclusive", "stackable", "priority", "on_refund", "expiring_notice_hours"} {
		if strings.Contains(string(b), f) {
			t.Errorf("a definition without checkout rules writes %s: %s", f, b)
		}
	}
}
