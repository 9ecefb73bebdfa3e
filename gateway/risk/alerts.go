package risk

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/campaign"
)

const (
	// alertSubjectPrefix + kind is where alerts are published.
	alertSubjectPrefix = "flashgate.alerts."
	// alertsKeptMax bounds the alerts GET /admin/v1/risk/alerts can show.
	alertsKeptMax = 1000
	// alertGateTimeout bounds the Redis cool-down gate of one alert.
	alertGateTimeout = 200 * time.Millisecond
	// webhookQueueMax bounds alerts waiting for the webhook; more are dropped
	// and counted (alerts are also on NATS).
	webhookQueueMax = 1024
	// webhookAttemptsMax bounds deliveries of one alert.
	webhookAttemptsMax = 3
	// webhookTimeout bounds one delivery.
	webhookTimeout = 2 * time.Second
	// webhookBackoffMin is the pause after the first failed delivery
	// (doubling after each).
	webhookBackoffMin = 100 * time.Millisecond
)

// WatchesStock reports whether a low-stock or low-budget alert is set: only
// then does the caller need to count stock for ObserveStock.
func (r *Risk) WatchesStock() bool {
	a := &r.rules.Load().rules.Alerts
	return a.LowStockPercent > 0 || a.LowBudgetPercent > 0
}

// ObserveStock raises the low-stock and low-budget alerts of an active
// campaign with remaining units and granted coupons at now.
func (r *Risk) ObserveStock(c *campaign.Campaign, remaining, granted int64, now time.Time) {
	alerts := r.rules.Load().rules.Alerts
	d := r.detector.Load()
	if al, fire := d.CheckStock(c.ID, remaining, c.Units(), alerts.LowStockPercent, now); fire {
		r.raise(al)
	}
	if c.Budget > 0 {
		if al, fire := d.CheckBudget(c.ID, granted*c.Coupon.FaceValue(), c.Budget, alerts.LowBudgetPercent, now); fire {
			r.raise(al)
		}
	}
}

// Alerts returns the alerts kept (from every gateway), newest first.
func (r *Risk) Alerts() []antifraud.Alert {
	r.alertsMu.Lock()
	defer r.alertsMu.Unlock()
	out := make([]antifraud.Alert, len(r.alerts))
	for i := range r.alerts {
		out[i] = r.alerts[len(r.alerts)-1-i]
	}
	return out
}

// raise publishes an alert once per kind and key per cool-down across all
// gateways (a Redis SET NX gate), on NATS and to the webhook queue.
func (r *Risk) raise(a antifraud.Alert) {
	if rc := r.redis.Load(); rc != nil {
		c := rc.c
		ctx, cancel := context.WithTimeout(context.Background(), alertGateTimeout)
		cooldown := r.rules.Load().rules.Alerts.CooldownOrDefault()
		err := c.Do(ctx, c.B().Set().Key("fg:alert:"+a.Kind+":"+a.Key).Value("1").Nx().Px(cooldown).Build()).Error()
		cancel()
		if rueidis.IsRedisNil(err) { // another gateway raised it within the cool-down
			return
		}
		// Any other error (Redis down): raise anyway — this gateway's own
		// cool-down still holds, and an alert matters most when things break.
	}
	if f := r.opts.Metrics.Alert; f != nil {
		f(a.Kind)
	}
	b, _ := json.Marshal(a)
	_ = r.nc.Publish(alertSubjectPrefix+a.Kind, b)
	if r.opts.WebhookURL != "" {
		select {
		case r.webhook <- a:
		default:
			r.webhookFailed()
		}
	}
}

func (r *Risk) webhookFailed() {
	if f := r.opts.Metrics.WebhookFailure; f != nil {
		f()
	}
}

// collectAlerts keeps the alerts of every gateway (NATS) for the admin API
// until ctx ends.
func (r *Risk) collectAlerts(ctx context.Context) {
	sub, err := r.nc.Subscribe(alertSubjectPrefix+">", func(m *nats.Msg) {
		var a antifraud.Alert
		if json.Unmarshal(m.Data, &a) != nil {
			return
		}
		r.alertsMu.Lock()
		if len(r.alerts) >= alertsKeptMax {
			r.alerts = append(r.alerts[:0], r.alerts[1:]...)
		}
		r.alerts = append(r.alerts, a)
		r.alertsMu.Unlock()
	})
	if err != nil {
		r.opts.Logger.Error("alerts: subscribe", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

// deliverWebhooks POSTs queued alerts to the webhook until ctx ends.
func (r *Risk) deliverWebhooks(ctx context.Context) {
	if r.opts.WebhookURL == "" {
		return // raise queues nothing
	}
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-r.webhook:
			if !r.deliver(ctx, a) {
				return
			}
		}
	}
}

// deliver POSTs one alert, at most webhookAttemptsMax times; false when ctx
// ended meanwhile.
func (r *Risk) deliver(ctx context.Context, a antifraud.Alert) bool {
	body, _ := json.Marshal(a)
	for attempt := 0; attempt < webhookAttemptsMax; attempt++ {
		req, _ := http.NewRequestWithContext(ctx, "POST", r.opts.WebhookURL, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return true
			}
		}
		if attempt == webhookAttemptsMax-1 {
			r.webhookFailed()
			r.opts.Logger.Warn("alert webhook failed", "kind", a.Kind, "key", a.Key, "err", err)
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(webhookBackoffMin << attempt):
		}
	}
	return true
}
