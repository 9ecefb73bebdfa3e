package antifraud

import (
	"fmt"
	"sync"
	"time"
)

// Alert kinds (the NATS subject is flashgate.alerts.<kind>).
const (
	AlertClaimRateIP     = "claim_rate_ip"
	AlertClaimRateDevice = "claim_rate_device"
	AlertClaimRateUser   = "claim_rate_user"
	AlertRejectionSpike  = "rejection_spike"
	AlertLowStock        = "low_stock"
	AlertLowBudget       = "low_budget"
	AlertShadowBlock     = "shadow_block"
)

// Alert is one raised alert.
type Alert struct {
	Kind      string    `json:"kind"`
	Key       string    `json:"key"`
	Observed  float64   `json:"observed"`
	Threshold float64   `json:"threshold"`
	At        time.Time `json:"at"`
	Message   string    `json:"message"`
}

// keysMax bounds the windows a detector keeps, and separately its
// cool-down records. Past it, each new key evicts the least recently
// observed one: a flood of fresh keys (a farm rotating device ids) ages out
// the flood's own oldest keys, never the counters of keys observed now.
// 1M windows are about 100 MB.
const keysMax = 1 << 20

// window is one key's fixed window (or, in the cool-down list, the time
// its last alert fired, in start). prev and next link it into its list, in
// the order keys were last observed.
type window struct {
	start      time.Time
	n          int64
	bad        int64
	key        string
	prev, next *window
}

// Detector counts events in fixed windows per key and raises an alert when a
// threshold is crossed, at most once per key per cool-down.
type Detector struct {
	mu       sync.Mutex
	cooldown time.Duration
	windows  map[string]*window
	fired    map[string]*window // start = when the key last alerted
	// windowsByUse and firedByUse are the sentinels of the recency lists
	// of windows and fired: next is the least recently observed.
	windowsByUse, firedByUse window
}

// NewDetector returns a detector with the given cool-down.
func NewDetector(cooldown time.Duration) *Detector {
	d := &Detector{cooldown: cooldown, windows: map[string]*window{}, fired: map[string]*window{}}
	d.windowsByUse.prev, d.windowsByUse.next = &d.windowsByUse, &d.windowsByUse
	d.firedByUse.prev, d.firedByUse.next = &d.firedByUse, &d.firedByUse
	return d
}

// Cooldown is the detector's cool-down.
func (d *Detector) Cooldown() time.Duration { return d.cooldown }

// slot returns key's entry in m, now the most recently observed of its list
// (sentinel byUse); fresh reports a new, zero entry. A new key past
// keysMax takes the place (and the memory) of the least recently observed.
func slot(m map[string]*window, byUse *window, key string) (w *window, fresh bool) {
	if w = m[key]; w != nil {
		w.prev.next, w.next.prev = w.next, w.prev
	} else {
		if len(m) >= keysMax {
			w = byUse.next
			w.prev.next, w.next.prev = w.next, w.prev
			delete(m, w.key)
			*w = window{}
		} else {
			w = new(window)
		}
		w.key, fresh = key, true
		m[key] = w
	}
	w.prev, w.next = byUse.prev, byUse
	byUse.prev.next, byUse.prev = w, w
	return w, fresh
}

func (d *Detector) win(key string, period time.Duration, now time.Time) *window {
	w, fresh := slot(d.windows, &d.windowsByUse, key)
	if fresh || now.Sub(w.start) >= period {
		w.start, w.n, w.bad = now, 0, 0
	}
	return w
}

// allow applies the cool-down to an alert key.
func (d *Detector) allow(key string, now time.Time) bool {
	f, fresh := slot(d.fired, &d.firedByUse, key)
	if !fresh && now.Sub(f.start) < d.cooldown {
		return false
	}
	f.start = now
	return true
}

// ObserveRate counts one claim for key and returns an alert if the key made
// more than limit claims in the current window of period.
func (d *Detector) ObserveRate(kind, key string, limit int64, period time.Duration, now time.Time) (Alert, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.win(kind+"|"+key, period, now)
	w.n++
	if w.n <= limit || !d.allow(kind+"|"+key, now) {
		return Alert{}, false
	}
	return Alert{Kind: kind, Key: key, Observed: float64(w.n), Threshold: float64(limit), At: now,
		Message: fmt.Sprintf("%s made %d claims in %v (threshold %d)", key, w.n, period, limit)}, true
}

// ObserveOutcome counts one claim of campaign (rejected or not); when a
// window of period closes with at least minRequests claims and a rejected
// share ≥ ratio, it returns a rejection-spike alert.
func (d *Detector) ObserveOutcome(campaign string, rejected bool, ratio float64, minRequests int64, period time.Duration, now time.Time) (Alert, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := AlertRejectionSpike + "|" + campaign
	w, fresh := slot(d.windows, &d.windowsByUse, key)
	var alert Alert
	fire := false
	if !fresh && now.Sub(w.start) >= period {
		if w.n >= minRequests && float64(w.bad) >= ratio*float64(w.n) && d.allow(key, now) {
			share := float64(w.bad) / float64(w.n)
			alert, fire = Alert{Kind: AlertRejectionSpike, Key: campaign, Observed: share, Threshold: ratio, At: now,
				Message: fmt.Sprintf("%s rejected %d of %d claims (%.0f%%) in %v", campaign, w.bad, w.n, 100*share, period)}, true
		}
		fresh = true
	}
	if fresh {
		w.start, w.n, w.bad = now, 0, 0
	}
	w.n++
	if rejected {
		w.bad++
	}
	return alert, fire
}

// CheckStock returns a low-stock alert when remaining is at or below percent
// of stock (at most once per campaign per cool-down).
func (d *Detector) CheckStock(campaign string, remaining, stock int64, percent float64, now time.Time) (Alert, bool) {
	return d.checkLeft(AlertLowStock, campaign, remaining, stock, percent, now, "%s has %d of %d left (%.1f%%)")
}

// CheckBudget returns a low-budget alert when the remaining budget is at or
// below percent of the budget (at most once per campaign per cool-down).
func (d *Detector) CheckBudget(campaign string, used, budget int64, percent float64, now time.Time) (Alert, bool) {
	return d.checkLeft(AlertLowBudget, campaign, budget-used, budget, percent, now, "%s has %d of its %d budget left (%.1f%%)")
}

func (d *Detector) checkLeft(kind, campaign string, left, total int64, percent float64, now time.Time, format string) (Alert, bool) {
	if percent <= 0 || total <= 0 || float64(left)*100 > percent*float64(total) {
		return Alert{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.allow(kind+"|"+campaign, now) {
		return Alert{}, false
	}
	share := 100 * float64(left) / float64(total)
	return Alert{Kind: kind, Key: campaign, Observed: share, Threshold: percent, At: now,
		Message: fmt.Sprintf(format, campaign, left, total, share)}, true
}

// Shadow records that a shadow rule would have blocked key, returning an
// alert at most once per rule and key per cool-down.
func (d *Detector) Shadow(rule, key string, now time.Time) (Alert, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.allow(AlertShadowBlock+"|"+rule+"|"+key, now) {
		return Alert{}, false
	}
	return Alert{Kind: AlertShadowBlock, Key: rule + ":" + key, At: now, Message: fmt.Sprintf("shadow rule %s would have blocked %s", rule, key)}, true
}
