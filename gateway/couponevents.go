package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashgate/flashgate/ledger/store"
)

// Checkout's background half: the coupon events (flashgate.coupons.used,
// .released, .returned, .expiring) and the sweepers that release expired
// locks and record expiring notices. Each runs on every gateway; the store's
// conditional updates let one of them win each change.
//
// Events are at least once. A transition and its event are one row written
// in the step's transaction (the outbox); after the commit the handler
// pokes publishCouponEvents, which publishes the pending rows to the
// JetStream stream COUPON_EVENTS with Nats-Msg-Id = the event id (the
// transition id, or expiring:<grant id>) and marks them published once the
// stream acknowledged them. A crash in between publishes them again: the
// stream's duplicate window drops a repeat within nats.dedup_window, and a
// consumer dedups by event_id beyond it. Core NATS subscribers of
// flashgate.coupons.> see every message the stream takes.
//
// One grant's events go out in the order its transitions committed, not in
// the order of their at_ns (each gateway's clock): the store numbers a
// grant's transitions in commit order (grant_seq, carried in the event),
// PendingEvents returns them grant by grant in that order, and a round
// stops at its first failed publish, so no event of a grant is published
// before an earlier one still pending. A repeat published after the
// stream's duplicate window (another gateway's round that read it before
// it was marked) may come late: a consumer ignores a grant's event whose
// grant_seq is not above the last one it applied.

const (
	// CouponStream is the JetStream stream of coupon events.
	CouponStream = "COUPON_EVENTS"
	// CouponSubjectPrefix + type is an event's subject.
	CouponSubjectPrefix = "flashgate.coupons."
	// lockSweepBatch bounds the expired orders one sweep ends.
	lockSweepBatch = 100
	// expiringBatch bounds the expiring notices one sweep records per campaign.
	expiringBatch = 500
	// eventBatch bounds the events one publishing round reads; rounds
	// repeat while full ones come back.
	eventBatch = 256
	// eventPublishTimeout bounds one event's publish and acknowledgement.
	eventPublishTimeout = 5 * time.Second
	// usageTrendDays is the daily trend of a campaign's usage statistics.
	usageTrendDays = 30
)

type checkoutState struct {
	poke         chan struct{} // a step committed events: publish now
	quotes       atomic.Int64
	redeemed     atomic.Int64
	notYetStored atomic.Int64
	published    atomic.Int64
	expired      atomic.Int64
	noticed      atomic.Int64
	publishFails atomic.Int64
}

// openCheckout creates the coupon events stream and registers the
// checkout metrics (New calls it after the pipeline).
func (g *Gateway) openCheckout(ctx context.Context) error {
	g.co.poke = make(chan struct{}, 1)
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := g.js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name:       CouponStream,
		Subjects:   []string{CouponSubjectPrefix + ">"},
		Storage:    jetstream.FileStorage,
		Replicas:   g.cfg.NATS.Replicas,
		Duplicates: g.cfg.NATS.DedupWindow,
		MaxAge:     g.cfg.NATS.StreamMaxAge,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
	}); err != nil {
		return fmt.Errorf("gateway: %s stream: %w", CouponStream, err)
	}
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	g.metrics.reg.MustRegister(
		counter("flashgate_checkout_quotes_total", "Quotes answered.", &g.co.quotes),
		counter("flashgate_checkout_redeemed_total", "Orders that locked their coupons.", &g.co.redeemed),
		counter("flashgate_checkout_not_yet_stored_total", "Checkout requests naming a grant not yet in the store (answered 503 not_yet_stored).", &g.co.notYetStored),
		counter("flashgate_coupon_events_published_total", "Coupon events acknowledged by the COUPON_EVENTS stream.", &g.co.published),
		counter("flashgate_coupon_event_publish_failures_total", "Coupon event publishing rounds that failed (retried).", &g.co.publishFails),
		counter("flashgate_checkout_locks_expired_total", "Orders whose coupon lock expired, ended by this gateway's sweeper.", &g.co.expired),
		counter("flashgate_coupon_expiring_noticed_total", "Expiring notices recorded by this gateway's sweeper.", &g.co.noticed),
	)
	return nil
}

// checkoutLoops are the goroutines Run starts for checkout.
func (g *Gateway) checkoutLoops() []func(context.Context) {
	return []func(context.Context){g.sweepCheckout, g.publishCouponEvents}
}

// pokeEvents asks the publisher to publish now (never blocks).
func (g *Gateway) pokeEvents() {
	select {
	case g.co.poke <- struct{}{}:
	default:
	}
}

// sweepCheckout, every checkout.sweep_interval: ends orders whose lock
// expired (≤ lockSweepBatch a pass) and records expiring notices for the
// campaigns that ask for them (≤ expiringBatch per campaign a pass).
func (g *Gateway) sweepCheckout(ctx context.Context) {
	t := time.NewTicker(g.cfg.Checkout.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.sweepCheckoutOnce(ctx)
	}
}

func (g *Gateway) sweepCheckoutOnce(ctx context.Context) {
	now := g.now()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := g.store.ExpireLocks(sctx, now, lockSweepBatch)
	if err != nil && ctx.Err() == nil {
		g.log.Warn("checkout: lock sweep", "err", err)
	}
	g.co.expired.Add(int64(n))
	total := n
	for _, c := range g.reg.List() {
		if c.ExpiringNoticeHours <= 0 {
			continue
		}
		k, err := g.store.NoticeExpiring(sctx, c.ID, now, now.Add(time.Duration(c.ExpiringNoticeHours)*time.Hour).Unix(), expiringBatch)
		if err != nil {
			if ctx.Err() == nil {
				g.log.Warn("checkout: expiring notices", "campaign", c.ID, "err", err)
			}
			break
		}
		g.co.noticed.Add(int64(k))
		total += k
	}
	if total > 0 {
		g.pokeEvents()
	}
}

// publishCouponEvents publishes the outbox when poked, and every sweep
// interval (events a crashed or failed round left).
func (g *Gateway) publishCouponEvents(ctx context.Context) {
	t := time.NewTicker(g.cfg.Checkout.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.co.poke:
		case <-t.C:
		}
		if err := g.publishPendingEvents(ctx); err != nil && ctx.Err() == nil {
			g.co.publishFails.Add(1)
			g.log.Debug("checkout: publishing coupon events", "err", err)
		}
	}
}

// publishPendingEvents publishes pending events until none are left (or a
// round fails), each acknowledged by the stream before it is marked.
func (g *Gateway) publishPendingEvents(ctx context.Context) error {
	for {
		evs, err := g.store.PendingEvents(ctx, eventBatch)
		if err != nil || len(evs) == 0 {
			return err
		}
		done := make([]string, 0, len(evs))
		var perr error
		for i := range evs {
			b, _ := json.Marshal(&evs[i])
			pctx, cancel := context.WithTimeout(ctx, eventPublishTimeout)
			_, perr = g.js.Publish(pctx, CouponSubjectPrefix+evs[i].Type, b, jetstream.WithMsgID(evs[i].ID))
			cancel()
			if perr != nil {
				break
			}
			done = append(done, evs[i].ID)
		}
		if len(done) > 0 {
			if err := g.store.MarkPublished(ctx, done, g.now()); err != nil {
				return err
			}
			g.co.published.Add(int64(len(done)))
		}
		if perr != nil {
			return perr
		}
		if len(evs) < eventBatch {
			return nil
		}
	}
}

// campaignUsage reads a campaign's coupon usage for its admin view.
func (g *Gateway) campaignUsage(ctx context.Context, id string) (*store.Usage, error) {
	u, err := g.store.CampaignUsage(ctx, id, g.now(), usageTrendDays)
	if err != nil {
		return nil, err
	}
	return &u, nil
}
