package antifraud

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"
)

const (
	// LimitsMax bounds rules; each window costs a script run in Redis per
	// claim (all of a claim's windows share one round trip).
	LimitsMax = 16
	// WindowsMax bounds windows per rule.
	WindowsMax = 4
	// PeriodMax bounds a window.
	PeriodMax = 24 * time.Hour
)

// Duration is a time.Duration written as "1s", "30m" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"1s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Key kinds a limit can count by.
const (
	KeyIP     = "ip"
	KeyIP24   = "ip24" // the client's /24 (IPv4) or /64 (IPv6)
	KeyDevice = "device"
	KeyUser   = "user"
	// KeyUserDevices counts distinct devices per user (not claims): a
	// window's limit is how many devices one user may claim from.
	KeyUserDevices = "user_devices"
)

// Rules is the whole risk configuration; the gateway keeps the last valid one.
type Rules struct {
	Limits []Limit `json:"limits"`
	Alerts Alerts  `json:"alerts"`
}

// Limit is one rule: at most Windows[i].Limit claims per Windows[i].Period
// for each value of Key.
type Limit struct {
	Name     string   `json:"name"`
	Key      string   `json:"key"`
	Windows  []Window `json:"windows"`
	Shadow   bool     `json:"shadow,omitempty"`    // count what it would block, block nothing
	FailOpen bool     `json:"fail_open,omitempty"` // Redis down: skip the rule (default: refuse claims)
}

// Window of a limit.
type Window struct {
	Limit  int64    `json:"limit"`
	Period Duration `json:"period"`
}

// Alerts are the thresholds that raise alerts.
type Alerts struct {
	ClaimRate       []RateAlert `json:"claim_rate,omitempty"`
	RejectionSpike  *SpikeAlert `json:"rejection_spike,omitempty"`
	LowStockPercent float64     `json:"low_stock_percent,omitempty"`
	// LowBudgetPercent alerts when a campaign's remaining budget falls to
	// this share. (Overspending is impossible: the budget caps the units.)
	LowBudgetPercent float64  `json:"low_budget_percent,omitempty"`
	Cooldown         Duration `json:"cooldown,omitempty"` // one alert per key per cool-down (default 1m)
}

// RateAlert fires when one key makes more than Limit claims in Period.
type RateAlert struct {
	Key    string   `json:"key"`
	Limit  int64    `json:"limit"`
	Period Duration `json:"period"`
}

// SpikeAlert fires when, over Period, at least MinRequests claims of a
// campaign were made and at least Ratio of them were rejected.
type SpikeAlert struct {
	Ratio       float64  `json:"ratio"`
	MinRequests int64    `json:"min_requests"`
	Period      Duration `json:"period"`
}

var namePattern = regexp.MustCompile(`^[a-z0-9_-]{1,40}$`)

func validKey(k string) bool {
	return k == KeyIP || k == KeyIP24 || k == KeyDevice || k == KeyUser || k == KeyUserDevices
}

// CooldownOrDefault is the alert cool-down.
func (a *Alerts) CooldownOrDefault() time.Duration {
	if a.Cooldown <= 0 {
		return time.Minute
	}
	return time.Duration(a.Cooldown)
}

// Validate names every invalid field (e.g. "limits[1].windows[0].period").
func (r *Rules) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)})
	}
	if len(r.Limits) > LimitsMax {
		bad("limits", "at most %d rules", LimitsMax)
	}
	names := map[string]bool{}
	for i, l := range r.Limits {
		f := fmt.Sprintf("limits[%d]", i)
		if !namePattern.MatchString(l.Name) {
			bad(f+".name", "must be 1..40 of a-z 0-9 _ -")
		} else if names[l.Name] {
			bad(f+".name", "duplicate name %q", l.Name)
		}
		names[l.Name] = true
		if !validKey(l.Key) {
			bad(f+".key", "must be ip, ip24, device, user or user_devices")
		}
		if len(l.Windows) == 0 || len(l.Windows) > WindowsMax {
			bad(f+".windows", "need 1..%d windows", WindowsMax)
		}
		for j, w := range l.Windows {
			wf := fmt.Sprintf("%s.windows[%d]", f, j)
			if w.Limit < 1 {
				bad(wf+".limit", "must be positive")
			}
			if p := time.Duration(w.Period); p < 100*time.Millisecond || p > PeriodMax {
				bad(wf+".period", "must be 100ms..24h")
			}
		}
	}
	for i, a := range r.Alerts.ClaimRate {
		f := fmt.Sprintf("alerts.claim_rate[%d]", i)
		if a.Key != KeyIP && a.Key != KeyDevice && a.Key != KeyUser {
			bad(f+".key", "must be ip, device or user")
		}
		if a.Limit < 1 {
			bad(f+".limit", "must be positive")
		}
		if p := time.Duration(a.Period); p < 100*time.Millisecond || p > PeriodMax {
			bad(f+".period", "must be 100ms..24h")
		}
	}
	if s := r.Alerts.RejectionSpike; s != nil {
		if s.Ratio <= 0 || s.Ratio > 1 {
			bad("alerts.rejection_spike.ratio", "must be in (0, 1]")
		}
		if s.MinRequests < 1 {
			bad("alerts.rejection_spike.min_requests", "must be positive")
		}
		if p := time.Duration(s.Period); p < time.Second || p > PeriodMax {
			bad("alerts.rejection_spike.period", "must be 1s..24h")
		}
	}
	if p := r.Alerts.LowStockPercent; p < 0 || p >= 100 {
		bad("alerts.low_stock_percent", "must be 0..100 (0 = off)")
	}
	if p := r.Alerts.LowBudgetPercent; p < 0 || p >= 100 {
		bad("alerts.low_budget_percent", "must be 0..100 (0 = off)")
	}
	if c := time.Duration(r.Alerts.Cooldown); c < 0 || c > PeriodMax {
		bad("alerts.cooldown", "must be 0..24h")
	}
	return errors.Join(errs...)
}

// FieldError names the invalid field.
type FieldError struct{ Field, Msg string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Fields lists the fields named by a Validate error.
func Fields(err error) []string {
	var out []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			var fe *FieldError
			if errors.As(e, &fe) {
				out = append(out, fe.Field)
			}
		}
	}
	return out
}

// KeyValue is the value a limit of the given key counts for this request.
func KeyValue(key string, ip netip.Addr, device, user string) string {
	switch key {
	case KeyIP:
		return ip.String()
	case KeyIP24:
		bits := 24
		if ip.Is6() && !ip.Is4In6() {
			bits = 64
		}
		p, _ := ip.Unmap().Prefix(bits)
		return p.String()
	case KeyDevice:
		return device
	case KeyUser, KeyUserDevices:
		return user
	}
	return ""
}
