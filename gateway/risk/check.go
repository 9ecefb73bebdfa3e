package risk

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/ulule/limiter/v3"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/status"
)

const (
	// overLimitCacheMax bounds the local cache of keys known over a limit.
	overLimitCacheMax = 1 << 20
	// overLimitEvictInterval is how often keys whose window has reset leave
	// the over-limit cache.
	overLimitEvictInterval = 2 * time.Second
)

var errRedisNotConnected = errors.New("risk: redis not connected")

// Claim is what Check needs to know of a claim.
type Claim struct {
	IP     netip.Addr
	Device string
	User   string
}

// Verdict is Check's answer. OK lets the claim go on; otherwise Status
// (blocked, rate_limited or unavailable) and Message are the answer.
type Verdict struct {
	OK      bool
	Status  status.Status
	Message string
	// RetryAfter is the Retry-After seconds of a rate_limited verdict.
	RetryAfter int
	// Which is the limit that refused (its key: ip, ip24, device, user,
	// user_devices) of a rate_limited verdict, the entry kind of a blocked one.
	Which string
}

var allowed = Verdict{OK: true}

// Check applies the blacklist and then every limit, in rule order, to a
// claim at now; it feeds the claim-rate alerts on the way.
func (r *Risk) Check(ctx context.Context, c Claim, now time.Time) Verdict {
	if e, blocked := r.blacklist.Match(c.IP, c.Device, c.User, now); blocked {
		count(r.opts.Metrics.Blocked, e.Kind)
		return Verdict{Status: status.Blocked, Message: "blacklisted " + e.Kind, Which: e.Kind}
	}
	set := r.rules.Load()
	d := r.detector.Load()
	for i, a := range set.rules.Alerts.ClaimRate {
		if al, fire := d.ObserveRate(set.rateKinds[i], antifraud.KeyValue(a.Key, c.IP, c.Device, c.User), a.Limit, time.Duration(a.Period), now); fire {
			r.raise(al)
		}
	}
	for i := range set.limits {
		l := &set.limits[i]
		value := antifraud.KeyValue(l.rule.Key, c.IP, c.Device, c.User)
		for wi := range l.windows {
			if v := r.checkWindow(ctx, set, l, &l.windows[wi], value, &c, now); !v.OK {
				return v
			}
		}
	}
	return allowed
}

// checkWindow applies one window of a limit: shadow rules only count, and a
// failed count refuses unless the rule fails open.
func (r *Risk) checkWindow(ctx context.Context, set *ruleSet, l *limit, w *window, value string, c *Claim, now time.Time) Verdict {
	reached, reset, err := r.reached(ctx, set, l, w, value, c, now)
	if err != nil {
		count(r.opts.Metrics.LimitError, l.rule.Name)
		if l.rule.FailOpen {
			return allowed
		}
		return Verdict{Status: status.Unavailable, Message: "rate limit store unavailable"}
	}
	if !reached {
		return allowed
	}
	if l.rule.Shadow {
		count(r.opts.Metrics.ShadowBlocked, l.rule.Name)
		if al, fire := r.detector.Load().Shadow(l.rule.Name, value, now); fire {
			r.raise(al)
		}
		return allowed
	}
	count(r.opts.Metrics.RateLimited, l.rule.Name)
	after := int(reset.Sub(now).Seconds() + 0.999)
	return Verdict{Status: status.RateLimited, Message: l.refusal, RetryAfter: max(1, after), Which: l.rule.Key}
}

// reached counts the claim against a window and reports whether the window's
// limit is reached, and when it resets. A key known to be over its limit is
// answered from the local cache without a Redis round trip. user_devices
// counts the claim's device among the user's devices and is never cached:
// a known device stays allowed while a new one is refused, so the answer
// depends on the device, not the user alone.
func (r *Risk) reached(ctx context.Context, set *ruleSet, l *limit, w *window, value string, c *Claim, now time.Time) (bool, time.Time, error) {
	distinct := l.rule.Key == antifraud.KeyUserDevices
	var cacheKey string
	if !distinct {
		cacheKey = w.cacheKey + value
		if until, ok := r.overLimit.Load(cacheKey); ok && now.UnixNano() < until.(int64) {
			return true, time.Unix(0, until.(int64)), nil
		}
	}
	var lctx limiter.Context
	var err error
	switch {
	case w.lim == nil:
		err = errRedisNotConnected
	case distinct:
		lctx, err = set.store.Distinct(ctx, w.redisKey+c.User, c.Device, w.rate)
	default:
		lctx, err = w.lim.Get(ctx, w.redisKey+value)
	}
	if err != nil || !lctx.Reached {
		return false, time.Time{}, err
	}
	reset := time.Unix(lctx.Reset, 0)
	if !distinct && r.overN.Load() < overLimitCacheMax {
		if _, loaded := r.overLimit.LoadOrStore(cacheKey, reset.UnixNano()); !loaded {
			r.overN.Add(1)
		}
	}
	return true, reset, nil
}

// evictOverLimit drops, every overLimitEvictInterval until ctx ends, the
// over-limit cache keys whose window has reset.
func (r *Risk) evictOverLimit(ctx context.Context) {
	t := time.NewTicker(overLimitEvictInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.evictOverLimitAt(r.opts.Clock())
		}
	}
}

// evictOverLimitAt drops the cache keys whose window has reset at now, so
// the cache holds only keys over a limit now.
func (r *Risk) evictOverLimitAt(now time.Time) {
	r.overLimit.Range(func(k, v any) bool {
		if v.(int64) <= now.UnixNano() {
			if _, loaded := r.overLimit.LoadAndDelete(k); loaded {
				r.overN.Add(-1)
			}
		}
		return true
	})
}

// ObserveOutcome feeds a claim's answer to the rejection-spike alert.
func (r *Risk) ObserveOutcome(campaign string, st status.Status, now time.Time) {
	s := r.rules.Load().rules.Alerts.RejectionSpike
	if s == nil {
		return
	}
	rejected := st != status.Granted && st != status.SoldOut && st != status.AlreadyClaimed
	if al, fire := r.detector.Load().ObserveOutcome(campaign, rejected, s.Ratio, s.MinRequests, time.Duration(s.Period), now); fire {
		r.raise(al)
	}
}

func count(f func(string), label string) {
	if f != nil {
		f(label)
	}
}
