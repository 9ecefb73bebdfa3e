package risk

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/ratelimit"
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
	if len(set.limits) == 0 {
		return allowed
	}
	return r.checkLimits(ctx, set, &c, now)
}

// claimWindowsInline windows of a claim are checked in buffers on the
// stack; a rule set with more (up to LimitsMax × WindowsMax) spills to the heap.
const claimWindowsInline = 8

// pendingWindow is one limit window of a claim being checked.
type pendingWindow struct {
	l       *limit
	w       *window
	value   string // the limit's key value for this claim
	req     int    // index of its count in the Redis batch; -1 when answered locally
	reached bool
	reset   time.Time
	err     error
}

// checkLimits decides as if every window were checked one after the other
// in rule order — the first window that refuses answers — but counts all
// the windows that need Redis in one round trip (ratelimit.Store.GetMulti),
// not one round trip each. Windows are collected up to the first one known
// to refuse without Redis (an over-limit cache hit of an enforced rule, or
// no Redis for a fail-closed rule): the windows after it are not counted,
// as before. A claim refused by a window counted in Redis has been counted
// in the later windows of its batch too (they went together); a fixed
// window counts refused claims anyway.
func (r *Risk) checkLimits(ctx context.Context, set *ruleSet, c *Claim, now time.Time) Verdict {
	var pbuf [claimWindowsInline]pendingWindow
	var qbuf [claimWindowsInline]ratelimit.Request
	ps, reqs := pbuf[:0], qbuf[:0]
collect:
	for i := range set.limits {
		l := &set.limits[i]
		value := antifraud.KeyValue(l.rule.Key, c.IP, c.Device, c.User)
		distinct := l.rule.Key == antifraud.KeyUserDevices
		for wi := range l.windows {
			p := pendingWindow{l: l, w: &l.windows[wi], value: value, req: -1}
			switch {
			case !distinct && r.cachedOver(&p, now):
				ps = append(ps, p)
				if !l.rule.Shadow {
					break collect
				}
			case p.w.lim == nil:
				p.err = errRedisNotConnected
				ps = append(ps, p)
				if !l.rule.FailOpen {
					break collect
				}
			default:
				// user_devices: the key is the user's (value), the member the device.
				p.req = len(reqs)
				reqs = append(reqs, ratelimit.Request{KeyPrefix: p.w.redisKey, Key: value, Rate: p.w.rate, Distinct: distinct, Member: c.Device})
				ps = append(ps, p)
			}
		}
	}
	r.countWindows(ctx, set, ps, reqs, now)
	for i := range ps {
		if v := r.verdictOf(&ps[i], now); !v.OK {
			return v
		}
	}
	return allowed
}

// cachedOver reports whether the window's key is known over its limit at
// now (the local cache: no Redis round trip), and if so marks p reached
// until the window's reset. user_devices is never cached: a known device
// stays allowed while a new one is refused, so the answer depends on the
// device, not the user alone.
func (r *Risk) cachedOver(p *pendingWindow, now time.Time) bool {
	if r.overN.Load() == 0 {
		// Nothing cached (honest traffic, mostly): skip building the key.
		// An entry stored but not yet counted is missed once and counted
		// in Redis, which answers the same.
		return false
	}
	until, ok := r.overLimit.Load(p.w.cacheKey + p.value)
	if !ok || now.UnixNano() >= until.(int64) {
		return false
	}
	p.reached, p.reset = true, time.Unix(0, until.(int64))
	return true
}

// countWindows counts the windows of ps that need Redis (reqs, in one round
// trip; a single one through its ulule limiter) and records in each whether
// its limit is reached and when it resets; a key found over its limit joins
// the over-limit cache.
func (r *Risk) countWindows(ctx context.Context, set *ruleSet, ps []pendingWindow, reqs []ratelimit.Request, now time.Time) {
	var rbuf [claimWindowsInline]ratelimit.Result
	res := rbuf[:0]
	switch len(reqs) {
	case 0:
		return
	case 1: // one window: through its ulule limiter (or Distinct)
		q, lc := &reqs[0], ratelimit.Result{}
		if q.Distinct {
			lc.Context, lc.Err = set.store.Distinct(ctx, q.KeyPrefix+q.Key, q.Member, q.Rate)
		} else {
			for i := range ps {
				if ps[i].req == 0 {
					lc.Context, lc.Err = ps[i].w.lim.Get(ctx, q.KeyPrefix+q.Key)
				}
			}
		}
		res = append(res, lc)
	default:
		if len(reqs) > cap(res) {
			res = make([]ratelimit.Result, 0, len(reqs))
		}
		res = res[:len(reqs)]
		set.store.GetMulti(ctx, reqs, res)
	}
	for i := range ps {
		p := &ps[i]
		if p.req < 0 {
			continue
		}
		lc := &res[p.req]
		if p.err = lc.Err; p.err != nil || !lc.Context.Reached {
			continue
		}
		p.reached, p.reset = true, time.Unix(lc.Context.Reset, 0)
		if !reqs[p.req].Distinct && r.overN.Load() < overLimitCacheMax {
			if _, loaded := r.overLimit.LoadOrStore(p.w.cacheKey+p.value, p.reset.UnixNano()); !loaded {
				r.overN.Add(1)
			}
		}
	}
}

// verdictOf is one window's verdict: shadow rules only count, and a failed
// count refuses unless the rule fails open.
func (r *Risk) verdictOf(p *pendingWindow, now time.Time) Verdict {
	l := p.l
	if p.err != nil {
		count(r.opts.Metrics.LimitError, l.rule.Name)
		if l.rule.FailOpen {
			return allowed
		}
		return Verdict{Status: status.Unavailable, Message: "rate limit store unavailable"}
	}
	if !p.reached {
		return allowed
	}
	if l.rule.Shadow {
		count(r.opts.Metrics.ShadowBlocked, l.rule.Name)
		if al, fire := r.detector.Load().Shadow(l.rule.Name, p.value, now); fire {
			r.raise(al)
		}
		return allowed
	}
	count(r.opts.Metrics.RateLimited, l.rule.Name)
	after := int(p.reset.Sub(now).Seconds() + 0.999)
	return Verdict{Status: status.RateLimited, Message: l.refusal, RetryAfter: max(1, after), Which: l.rule.Key}
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
