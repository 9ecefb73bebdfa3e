package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/ratelimit"
	"github.com/flashgate/flashgate/gateway/status"
)

const (
	// riskBucket holds the rules ("rules") and one key per blacklist entry
	// ("bl.<kind>.<base64url value>"); every gateway watches it.
	riskBucket = "flashgate-risk"
	// riskAuditStream keeps who changed which rule or entry, when, before → after.
	riskAuditStream  = "RISK_AUDIT"
	riskAuditSubject = "flashgate.risk.audit"
	// alertSubjectPrefix + kind is where alerts are published.
	alertSubjectPrefix = "flashgate.alerts."
	// alertsKeptMax bounds the alerts GET /admin/v1/risk/alerts can show.
	alertsKeptMax = 1000
	// webhookQueueMax bounds alerts waiting for the webhook; more are dropped
	// and counted (alerts are also on NATS).
	webhookQueueMax = 1024
	// webhookAttemptsMax bounds deliveries of one alert.
	webhookAttemptsMax = 3
	// overLimitCacheMax bounds the local cache of keys known over a limit.
	overLimitCacheMax = 1 << 20
	// auditListMax bounds one audit page.
	auditListMax = 500
)

// risk is a gateway's live risk state.
type risk struct {
	kv        jetstream.KeyValue
	rules     atomic.Pointer[compiledRules]
	blacklist *antifraud.Blacklist
	detector  atomic.Pointer[antifraud.Detector]
	synced    atomic.Bool
	downSince atomic.Int64
	ready     chan struct{}
	readyOnce sync.Once

	overLimit sync.Map // rule|window|value -> unix nanos until which it is over
	overN     atomic.Int64

	alertsMu sync.Mutex
	alerts   []antifraud.Alert // ring, newest last
	webhook  chan antifraud.Alert
}

type compiledRules struct {
	rules    antifraud.Rules
	limiters [][]*limiter.Limiter // [rule][window]
}

func (g *Gateway) openRisk(ctx context.Context) error {
	kv, err := g.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: riskBucket, History: 8, Storage: jetstream.FileStorage, Replicas: g.cfg.NATS.Replicas, MaxValueSize: 1 << 20,
	})
	if err != nil {
		return fmt.Errorf("gateway: risk bucket: %w", err)
	}
	if _, err := g.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: riskAuditStream, Subjects: []string{riskAuditSubject}, Storage: jetstream.FileStorage, Replicas: g.cfg.NATS.Replicas,
		MaxAge: 365 * 24 * time.Hour, MaxMsgs: 1_000_000,
	}); err != nil {
		return fmt.Errorf("gateway: risk audit stream: %w", err)
	}
	g.risk = &risk{kv: kv, blacklist: antifraud.NewBlacklist(), ready: make(chan struct{}), webhook: make(chan antifraud.Alert, webhookQueueMax)}
	g.risk.rules.Store(&compiledRules{})
	g.risk.detector.Store(antifraud.NewDetector(time.Minute))
	return nil
}

// watchRisk applies the risk bucket to this gateway until ctx ends.
func (g *Gateway) watchRisk(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := g.watchRiskOnce(ctx)
		g.risk.synced.Store(false)
		g.risk.downSince.CompareAndSwap(0, time.Now().UnixNano())
		if ctx.Err() != nil {
			return
		}
		g.log.Warn("risk watch ended; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (g *Gateway) watchRiskOnce(ctx context.Context) error {
	w, err := g.risk.kv.WatchAll(ctx)
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
			if e == nil {
				g.risk.synced.Store(true)
				g.risk.downSince.Store(0)
				g.risk.readyOnce.Do(func() { close(g.risk.ready) })
				continue
			}
			g.applyRisk(e)
		}
	}
}

func (g *Gateway) applyRisk(e jetstream.KeyValueEntry) {
	key := e.Key()
	if key == "rules" {
		if e.Operation() != jetstream.KeyValuePut {
			g.installRules(antifraud.Rules{})
			return
		}
		var r antifraud.Rules
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			g.log.Error("risk: undecodable rules in the bucket; the last good set stays in force", "err", err)
			return
		}
		if err := r.Validate(); err != nil {
			g.log.Error("risk: invalid rules in the bucket; the last good set stays in force", "err", err)
			return
		}
		g.installRules(r)
		return
	}
	kind, value, ok := parseBlacklistKey(key)
	if !ok {
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		g.risk.blacklist.Delete(kind, value)
		return
	}
	var ent antifraud.Entry
	if err := json.Unmarshal(e.Value(), &ent); err != nil || ent.Kind != kind || ent.Value != value {
		g.log.Error("risk: bad blacklist entry in the bucket; ignored", "key", key, "err", err)
		return
	}
	if err := g.risk.blacklist.Put(ent); err != nil {
		g.log.Error("risk: bad blacklist entry in the bucket; ignored", "key", key, "err", err)
	}
}

func (g *Gateway) installRules(r antifraud.Rules) {
	c := &compiledRules{rules: r, limiters: make([][]*limiter.Limiter, len(r.Limits))}
	var store limiter.Store
	if rc := g.redisC.Load(); rc != nil {
		store = ratelimit.New(*rc, "fg:rl")
	}
	for i, l := range r.Limits {
		for _, w := range l.Windows {
			if store == nil {
				c.limiters[i] = append(c.limiters[i], nil)
				continue
			}
			c.limiters[i] = append(c.limiters[i], limiter.New(store, limiter.Rate{Period: time.Duration(w.Period), Limit: w.Limit}))
		}
	}
	g.risk.rules.Store(c)
	if cd := r.Alerts.CooldownOrDefault(); cd != g.risk.detector.Load().Cooldown() {
		g.risk.detector.Store(antifraud.NewDetector(cd))
	}
	g.risk.overLimit.Range(func(k, _ any) bool { g.risk.overLimit.Delete(k); return true })
	g.risk.overN.Store(0)
}

func (g *Gateway) riskCooldown() time.Duration {
	if c := g.risk.rules.Load(); c != nil {
		return c.rules.Alerts.CooldownOrDefault()
	}
	return time.Minute
}

func blacklistKey(kind, value string) string {
	return "bl." + kind + "." + base64.RawURLEncoding.EncodeToString([]byte(value))
}

func parseBlacklistKey(key string) (kind, value string, ok bool) {
	rest, found := strings.CutPrefix(key, "bl.")
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

// --- claim path ---------------------------------------------------------------

// checkRisk applies the blacklist and the limits to a parsed claim. It returns
// status.Granted to go on, or the status to answer with a message and, for
// rate_limited, the Retry-After seconds and which limit.
func (g *Gateway) checkRisk(ctx context.Context, in *claimInput, now time.Time) (status.Status, string, int, string) {
	if e, blocked := g.risk.blacklist.Match(in.ip, in.device, in.user, now); blocked {
		g.metrics.riskBlocked.WithLabelValues(e.Kind).Inc()
		return status.Blocked, "blacklisted " + e.Kind, 0, e.Kind
	}
	c := g.risk.rules.Load()
	d := g.risk.detector.Load()
	for _, a := range c.rules.Alerts.ClaimRate {
		if al, fire := d.ObserveRate("claim_rate_"+a.Key, antifraud.KeyValue(a.Key, in.ip, in.device, in.user), a.Limit, time.Duration(a.Period), now); fire {
			g.raise(al)
		}
	}
	for i, rule := range c.rules.Limits {
		value := antifraud.KeyValue(rule.Key, in.ip, in.device, in.user)
		for wi, lim := range c.limiters[i] {
			cacheKey := rule.Name + "|" + strconv.Itoa(wi) + "|" + value
			reached, reset := false, time.Time{}
			if until, ok := g.risk.overLimit.Load(cacheKey); ok && now.UnixNano() < until.(int64) {
				reached, reset = true, time.Unix(0, until.(int64)) // known over: no Redis round trip
			} else {
				if lim == nil {
					lim = g.lazyLimiter(i, wi)
				}
				var lctx limiter.Context
				var err error
				switch {
				case lim == nil:
					err = errors.New("redis not connected")
				case rule.Key == antifraud.KeyUserDevices: // distinct devices, not claims
					lctx, err = g.distinctDevices(ctx, rule, wi, in)
				default:
					lctx, err = lim.Get(ctx, "rl:"+rule.Name+":"+strconv.Itoa(wi)+":"+value)
				}
				if err != nil {
					g.metrics.riskLimitErrors.WithLabelValues(rule.Name).Inc()
					if rule.FailOpen {
						continue
					}
					return status.Unavailable, "rate limit store unavailable", 0, ""
				}
				if lctx.Reached {
					reached, reset = true, time.Unix(lctx.Reset, 0)
					if rule.Key != antifraud.KeyUserDevices && g.risk.overN.Load() < overLimitCacheMax {
						if _, loaded := g.risk.overLimit.LoadOrStore(cacheKey, reset.UnixNano()); !loaded {
							g.risk.overN.Add(1)
						}
					}
				}
			}
			if !reached {
				continue
			}
			if rule.Shadow {
				g.metrics.riskShadow.WithLabelValues(rule.Name).Inc()
				if al, fire := d.Shadow(rule.Name, value, now); fire {
					g.raise(al)
				}
				continue
			}
			g.metrics.riskRateLimited.WithLabelValues(rule.Name).Inc()
			after := int(reset.Sub(now).Seconds() + 0.999)
			return status.RateLimited, "limit " + rule.Name + " reached", max(1, after), rule.Key
		}
	}
	return status.Granted, "", 0, ""
}

// distinctDevices counts the claim's device among the user's devices in the
// rule's window. Not cached locally: a known device stays allowed while a
// new one is refused, so the verdict depends on the device, not the user alone.
func (g *Gateway) distinctDevices(ctx context.Context, rule antifraud.Limit, wi int, in *claimInput) (limiter.Context, error) {
	rc := g.redisC.Load()
	if rc == nil {
		return limiter.Context{}, errors.New("redis not connected")
	}
	w := rule.Windows[wi]
	rate := limiter.Rate{Period: time.Duration(w.Period), Limit: w.Limit}
	return ratelimit.New(*rc, "fg:rl").Distinct(ctx, "ud:"+rule.Name+":"+strconv.Itoa(wi)+":"+in.user, in.device, rate)
}

// lazyLimiter builds limiters of rules installed before Redis connected.
func (g *Gateway) lazyLimiter(rule, window int) *limiter.Limiter {
	rc := g.redisC.Load()
	if rc == nil {
		return nil
	}
	c := g.risk.rules.Load()
	w := c.rules.Limits[rule].Windows[window]
	return limiter.New(ratelimit.New(*rc, "fg:rl"), limiter.Rate{Period: time.Duration(w.Period), Limit: w.Limit})
}

// observeOutcome feeds the rejection-spike detector.
func (g *Gateway) observeOutcome(campaign string, st status.Status, now time.Time) {
	s := g.risk.rules.Load().rules.Alerts.RejectionSpike
	if s == nil {
		return
	}
	rejected := st != status.Granted && st != status.SoldOut && st != status.AlreadyClaimed
	if al, fire := g.risk.detector.Load().ObserveOutcome(campaign, rejected, s.Ratio, s.MinRequests, time.Duration(s.Period), now); fire {
		g.raise(al)
	}
}

// checkLowStock is run by the sweeper loop for each active campaign: low
// stock and low budget alerts.
func (g *Gateway) checkLowStock(ctx context.Context, c *campaign.Campaign) {
	alerts := g.risk.rules.Load().rules.Alerts
	st := g.stock()
	if (alerts.LowStockPercent <= 0 && alerts.LowBudgetPercent <= 0) || st == nil {
		return
	}
	n, err := st.Count(ctx, c.ID, c.Shards)
	if err != nil {
		return
	}
	d := g.risk.detector.Load()
	if al, fire := d.CheckStock(c.ID, n.Remaining, c.Units(), alerts.LowStockPercent, g.now()); fire {
		g.raise(al)
	}
	if c.Budget > 0 {
		if al, fire := d.CheckBudget(c.ID, n.Granted*c.Coupon.FaceValue(), c.Budget, alerts.LowBudgetPercent, g.now()); fire {
			g.raise(al)
		}
	}
}

// raise publishes an alert once per kind and key per cool-down across all
// gateways (a Redis SET NX gate), on NATS and to the webhook queue.
func (g *Gateway) raise(a antifraud.Alert) {
	if rc := g.redisC.Load(); rc != nil {
		c := *rc
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Do(ctx, c.B().Set().Key("fg:alert:"+a.Kind+":"+a.Key).Value("1").Nx().Px(g.riskCooldown()).Build()).Error()
		cancel()
		if rueidis.IsRedisNil(err) { // another gateway raised it within the cool-down
			return
		}
		// Any other error (Redis down): raise anyway — this gateway's own
		// cool-down still holds, and an alert matters most when things break.
	}
	g.metrics.alerts.WithLabelValues(a.Kind).Inc()
	b, _ := json.Marshal(a)
	_ = g.nc.Publish(alertSubjectPrefix+a.Kind, b)
	if g.cfg.Alerts.WebhookURL != "" {
		select {
		case g.risk.webhook <- a:
		default:
			g.metrics.webhookFailures.Inc()
		}
	}
}

// collectAlerts keeps the alerts of every gateway (NATS) for the admin API.
func (g *Gateway) collectAlerts(ctx context.Context) {
	sub, err := g.nc.Subscribe(alertSubjectPrefix+">", func(m *nats.Msg) {
		var a antifraud.Alert
		if json.Unmarshal(m.Data, &a) != nil {
			return
		}
		g.risk.alertsMu.Lock()
		if len(g.risk.alerts) >= alertsKeptMax {
			g.risk.alerts = append(g.risk.alerts[:0], g.risk.alerts[1:]...)
		}
		g.risk.alerts = append(g.risk.alerts, a)
		g.risk.alertsMu.Unlock()
	})
	if err != nil {
		g.log.Error("alerts: subscribe", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

// deliverWebhooks POSTs queued alerts to alerts.webhook_url.
func (g *Gateway) deliverWebhooks(ctx context.Context) {
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		var a antifraud.Alert
		select {
		case <-ctx.Done():
			return
		case a = <-g.risk.webhook:
		}
		body, _ := json.Marshal(a)
		for attempt := 0; attempt < webhookAttemptsMax; attempt++ {
			req, _ := http.NewRequestWithContext(ctx, "POST", g.cfg.Alerts.WebhookURL, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode < 300 {
					break
				}
			}
			if attempt == webhookAttemptsMax-1 {
				g.metrics.webhookFailures.Inc()
				g.log.Warn("alert webhook failed", "kind", a.Kind, "key", a.Key, "err", err)
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
			}
		}
	}
}

// --- audit log ----------------------------------------------------------------

type riskAuditEntry struct {
	At     time.Time       `json:"at"`
	Actor  string          `json:"actor"`
	Action string          `json:"action"`
	Target string          `json:"target"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
}

func (g *Gateway) auditRisk(ctx context.Context, e riskAuditEntry) error {
	if e.Before == nil {
		e.Before = json.RawMessage("null")
	}
	if e.After == nil {
		e.After = json.RawMessage("null")
	}
	b, _ := json.Marshal(e)
	if _, err := g.js.Publish(ctx, riskAuditSubject, b); err != nil {
		return fmt.Errorf("gateway: risk audit: %w", err)
	}
	return nil
}

func (g *Gateway) riskAuditLog(ctx context.Context, limit int) ([]riskAuditEntry, error) {
	s, err := g.js.Stream(ctx, riskAuditStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := []riskAuditEntry{}
	for seq := info.State.LastSeq; seq >= info.State.FirstSeq && seq > 0 && len(out) < limit; seq-- {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var e riskAuditEntry
		if json.Unmarshal(m.Data, &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// actorOf names an admin token without revealing it: role and the first
// 4 bytes of its SHA-256.
func actorOf(d tokenDigest, r Role) string {
	return r.String() + ":" + hex.EncodeToString(d[:4])
}

// evictOverLimit drops cache entries whose window has reset (run by the
// sweeper loop), so the cache holds only keys that are over a limit now.
func (g *Gateway) evictOverLimit(now time.Time) {
	g.risk.overLimit.Range(func(k, v any) bool {
		if v.(int64) <= now.UnixNano() {
			if _, loaded := g.risk.overLimit.LoadAndDelete(k); loaded {
				g.risk.overN.Add(-1)
			}
		}
		return true
	})
}
