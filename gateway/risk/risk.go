package risk

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"
	"github.com/ulule/limiter/v3"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/ratelimit"
)

const (
	// Bucket holds the rules and the blacklist; every gateway watches it.
	Bucket = "flashgate-risk"
	// rulesKey is the bucket key of the rules.
	rulesKey = "rules"
	// blacklistKeyPrefix + kind + "." + base64url(value) is an entry's key.
	blacklistKeyPrefix = "bl."
	// bucketValueMax bounds one bucket value (a rule set is far smaller).
	bucketValueMax = 1 << 20
	// bucketHistory keeps a few revisions of each key for operators.
	bucketHistory = 8
	// openTimeout bounds creating the bucket and the audit stream.
	openTimeout = 10 * time.Second
	// watchBackoffMin and watchBackoffMax bound the pause before the watch
	// is set up again after it ended.
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 2 * time.Second
	// applyWaitMax bounds how long a write waits to see itself in force on
	// this gateway (others follow through the same watch within a second).
	applyWaitMax = 2 * time.Second
	// limiterPrefix is the Redis key prefix of limit counts (gateway/ratelimit).
	limiterPrefix = "fg:rl"
)

// Metrics receives what Risk counts; a nil field counts nothing. The gateway
// passes its Prometheus counters.
type Metrics struct {
	Blocked        func(kind string) // a claim refused by the blacklist, by entry kind
	RateLimited    func(rule string) // a claim refused by a limit
	ShadowBlocked  func(rule string) // a claim a shadow rule would have refused
	LimitError     func(rule string) // a limit check that failed (Redis)
	Alert          func(kind string) // an alert raised by this gateway
	WebhookFailure func()            // an alert the webhook did not take
}

// Options configure Open.
type Options struct {
	// Replicas is the JetStream replication factor of the bucket and the
	// audit stream.
	Replicas int
	// Clock is the time every rule, window and staleness reads when no now
	// is passed: the gateway's clock. Default time.Now.
	Clock func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// WebhookURL, when set, receives every alert raised here (POST, JSON).
	WebhookURL string
	Metrics    Metrics
}

// Risk is a gateway's live risk state. Open it, Run it, and hand it Redis
// (SetRedis) once connected; until then every limit check fails (closed,
// or open for fail_open rules).
type Risk struct {
	opts Options
	js   jetstream.JetStream
	nc   *nats.Conn
	kv   jetstream.KeyValue
	hc   *http.Client

	// installMu serializes compiling and installing rule sets (the watch
	// and SetRedis).
	installMu sync.Mutex
	redis     atomic.Pointer[redisConn]
	rules     atomic.Pointer[ruleSet]
	blacklist *antifraud.Blacklist
	detector  atomic.Pointer[antifraud.Detector]
	applied   atomic.Uint64 // highest bucket revision the watch has applied
	synced    atomic.Bool   // initial values applied and the watch alive
	downSince atomic.Int64  // Clock's unix nanos when the watch was lost; 0 while live
	ready     chan struct{} // closed at the first sync
	readyOnce sync.Once

	overLimit sync.Map     // cache key -> unix nanos until which it is over its limit
	overN     atomic.Int64 // entries in overLimit

	alertsMu sync.Mutex
	alerts   []antifraud.Alert // ring, newest last, at most alertsKeptMax
	webhook  chan antifraud.Alert
}

// redisConn is the Redis client and the limit store on it.
type redisConn struct {
	c     rueidis.Client
	store *ratelimit.Store
}

// Open creates (or binds to) the bucket and the audit stream. It reads
// nothing yet: Run applies the bucket, and Ready is closed once it has.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Risk, error) {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, History: bucketHistory, Storage: jetstream.FileStorage, Replicas: o.Replicas, MaxValueSize: bucketValueMax,
	})
	if err != nil {
		return nil, fmt.Errorf("risk: bucket: %w", err)
	}
	if err := openAuditStream(ctx, js, o.Replicas); err != nil {
		return nil, err
	}
	r := &Risk{
		opts: o, js: js, nc: js.Conn(), kv: kv, hc: &http.Client{Timeout: webhookTimeout},
		blacklist: antifraud.NewBlacklist(), ready: make(chan struct{}), webhook: make(chan antifraud.Alert, webhookQueueMax),
	}
	r.rules.Store(&ruleSet{})
	r.detector.Store(antifraud.NewDetector(time.Minute))
	return r, nil
}

// Run watches the bucket, collects every gateway's alerts, delivers alerts
// to the webhook and evicts reset over-limit keys, until ctx ends.
func (r *Risk) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){r.watch, r.collectAlerts, r.deliverWebhooks, r.evictOverLimit} {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	wg.Wait()
}

// Ready is closed once the bucket's initial values are applied.
func (r *Risk) Ready() <-chan struct{} { return r.ready }

// Synced reports whether the watch is live (if not, the last rules and
// blacklist stay in force).
func (r *Risk) Synced() bool { return r.synced.Load() }

// StaleFor is how long the rules have gone without a live watch at now (0
// while live); before the first sync, very stale.
func (r *Risk) StaleFor(now time.Time) time.Duration {
	if r.synced.Load() {
		return 0
	}
	since := r.downSince.Load()
	if since == 0 {
		return time.Duration(1 << 62)
	}
	return now.Sub(time.Unix(0, since))
}

// SetRedis gives the limits and the alert gate their Redis client: the rule
// set in force is compiled again with its limiters.
func (r *Risk) SetRedis(c rueidis.Client) {
	r.installMu.Lock()
	defer r.installMu.Unlock()
	rc := &redisConn{c: c, store: ratelimit.New(c, limiterPrefix, r.opts.Clock)}
	r.redis.Store(rc)
	r.rules.Store(compile(r.rules.Load().rules, rc))
}

// watch applies the bucket until ctx ends, setting the watch up again with
// a bounded backoff whenever it ends.
func (r *Risk) watch(ctx context.Context) {
	backoff := watchBackoffMin
	for ctx.Err() == nil {
		err := r.watchOnce(ctx)
		r.synced.Store(false)
		r.downSince.CompareAndSwap(0, r.opts.Clock().UnixNano())
		if ctx.Err() != nil {
			return
		}
		r.opts.Logger.Warn("risk watch ended; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

func (r *Risk) watchOnce(ctx context.Context) error {
	w, err := r.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("risk watcher closed")
			}
			if e == nil { // end of the initial values
				r.synced.Store(true)
				r.downSince.Store(0)
				r.readyOnce.Do(func() { close(r.ready) })
				continue
			}
			r.apply(e)
			r.markApplied(e.Revision())
		}
	}
}

// apply puts one bucket update in force.
func (r *Risk) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	if key == rulesKey {
		if e.Operation() != jetstream.KeyValuePut {
			r.install(antifraud.Rules{})
			return
		}
		var rs antifraud.Rules
		if err := json.Unmarshal(e.Value(), &rs); err != nil {
			r.opts.Logger.Error("risk: undecodable rules in the bucket; the last good set stays in force", "err", err)
			return
		}
		if err := rs.Validate(); err != nil {
			r.opts.Logger.Error("risk: invalid rules in the bucket; the last good set stays in force", "err", err)
			return
		}
		r.install(rs)
		return
	}
	kind, value, ok := parseBlacklistKey(key)
	if !ok {
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		r.blacklist.Delete(kind, value)
		return
	}
	var ent antifraud.Entry
	if err := json.Unmarshal(e.Value(), &ent); err != nil || ent.Kind != kind || ent.Value != value {
		r.opts.Logger.Error("risk: bad blacklist entry in the bucket; ignored", "key", key, "err", err)
		return
	}
	if err := r.blacklist.Put(ent); err != nil {
		r.opts.Logger.Error("risk: bad blacklist entry in the bucket; ignored", "key", key, "err", err)
	}
}

// markApplied records that the watch has applied the bucket up to rev (a
// resync may replay lower revisions: the mark never goes back).
func (r *Risk) markApplied(rev uint64) {
	for cur := r.applied.Load(); rev > cur; cur = r.applied.Load() {
		if r.applied.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// install compiles a validated rule set and puts it in force: its limiters
// are built now, the detector follows its cool-down, and keys cached as
// over the previous set's limits are forgotten.
func (r *Risk) install(rs antifraud.Rules) {
	r.installMu.Lock()
	defer r.installMu.Unlock()
	r.rules.Store(compile(rs, r.redis.Load()))
	if cd := rs.Alerts.CooldownOrDefault(); cd != r.detector.Load().Cooldown() {
		r.detector.Store(antifraud.NewDetector(cd))
	}
	r.overLimit.Range(func(k, _ any) bool {
		if _, loaded := r.overLimit.LoadAndDelete(k); loaded {
			r.overN.Add(-1)
		}
		return true
	})
}

// ruleSet is a rule set compiled for the claim path: immutable once built.
type ruleSet struct {
	rules     antifraud.Rules
	limits    []limit
	rateKinds []string // alert kind of each Rules.Alerts.ClaimRate entry
	store     *ratelimit.Store
}

type limit struct {
	rule    *antifraud.Limit
	refusal string // the rate_limited message
	windows []window
}

type window struct {
	rate     limiter.Rate
	lim      *limiter.Limiter // nil until Redis is connected
	cacheKey string           // over-limit cache key prefix: "<rule>|<window>|"
	redisKey string           // limit key prefix: "rl:<rule>:<window>:", "ud:…" for user_devices
}

// compile builds a rule set's limiters on rc (none while rc is nil).
func compile(rs antifraud.Rules, rc *redisConn) *ruleSet {
	s := &ruleSet{rules: rs, limits: make([]limit, len(rs.Limits))}
	if rc != nil {
		s.store = rc.store
	}
	for i := range rs.Limits {
		rule := &s.rules.Limits[i]
		l := limit{rule: rule, refusal: "limit " + rule.Name + " reached", windows: make([]window, len(rule.Windows))}
		prefix := "rl:"
		if rule.Key == antifraud.KeyUserDevices {
			prefix = "ud:"
		}
		for wi, w := range rule.Windows {
			win := window{
				rate:     limiter.Rate{Period: time.Duration(w.Period), Limit: w.Limit},
				cacheKey: rule.Name + "|" + strconv.Itoa(wi) + "|",
				redisKey: prefix + rule.Name + ":" + strconv.Itoa(wi) + ":",
			}
			if s.store != nil {
				win.lim = limiter.New(s.store, win.rate)
			}
			l.windows[wi] = win
		}
		s.limits[i] = l
	}
	for _, a := range rs.Alerts.ClaimRate {
		s.rateKinds = append(s.rateKinds, "claim_rate_"+a.Key)
	}
	return s
}

func blacklistKey(kind, value string) string {
	return blacklistKeyPrefix + kind + "." + base64.RawURLEncoding.EncodeToString([]byte(value))
}

func parseBlacklistKey(key string) (kind, value string, ok bool) {
	rest, found := strings.CutPrefix(key, blacklistKeyPrefix)
	if !found {
		return "", "", false
	}
	kind, enc, found := strings.Cut(rest, ".")
	if !found {
		return "", "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return "", "", false
	}
	return kind, string(b), true
}
