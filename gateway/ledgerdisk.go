package gateway

// The ledger's disk: a supervisor that brings a failed ledger back, its
// readiness line and its metrics. The ledger side (fence, re-open) is in
// package ledger ("When the disk fails").

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// ledgerRecoverBackoffMin is the first pause between recovery attempts: a
	// disk freed at once (a log rotated away) is back in use within a tenth
	// of a second.
	ledgerRecoverBackoffMin = 100 * time.Millisecond
	// ledgerRecoverBackoffMax bounds the pause: a disk an operator frees is
	// used again within two seconds. An attempt on a still-full disk costs a
	// directory listing, a statfs and at most one small write, so polling
	// at this pace for hours costs nothing.
	ledgerRecoverBackoffMax = 2 * time.Second
	// ledgerBackgroundErrorShown is how long readiness names Pebble's last
	// background error (readiness stays true: such errors do not stop appends).
	ledgerBackgroundErrorShown = time.Minute
)

// superviseLedger waits for the ledger to fail (its disk refused a write or
// sync: claims answer 503 from that instant, readiness is false) and then
// calls Recover with a bounded backoff until the disk takes writes again and
// a fresh Pebble instance has replayed the WAL. Ends with ctx.
func (g *Gateway) superviseLedger(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.ledger.Failed():
		}
		g.log.Error("ledger failed: claims answer 503 until it recovers", "err", g.ledger.Err())
		backoff := ledgerRecoverBackoffMin
		for {
			err := g.ledger.Recover()
			if err == nil {
				g.ledgerRecoverErr.Store(nil)
				g.log.Info("ledger recovered: claims are granted again")
				break
			}
			msg := err.Error()
			g.ledgerRecoverErr.Store(&msg)
			g.log.Warn("ledger recovery attempt failed", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, ledgerRecoverBackoffMax)
		}
	}
}

// ledgerReadiness is the ledger's readiness line: failed while its disk is
// failed, degraded (still ready) for a while after a Pebble background error.
func (g *Gateway) ledgerReadiness() (msg string, ok bool) {
	h := g.ledger.Health()
	if h.Err != nil {
		msg = h.Err.Error()
		if r := g.ledgerRecoverErr.Load(); r != nil {
			msg += "; last recovery attempt: " + *r
		}
		return msg, false
	}
	if h.LastBackgroundError != nil && time.Since(h.LastBackgroundErrorAt) < ledgerBackgroundErrorShown {
		return fmt.Sprintf("degraded: %d pebble background errors, the last %s ago: %v",
			h.BackgroundErrors, time.Since(h.LastBackgroundErrorAt).Round(time.Second), h.LastBackgroundError), true
	}
	return "ok", true
}

func (m *metrics) registerLedger(g *Gateway) {
	health := func() float64 {
		if g.ledger.Err() != nil {
			return 1
		}
		return 0
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flashgate_ledger_failed", Help: "1 while the ledger's disk has failed and claims answer 503."}, health),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_ledger_failures_total", Help: "Ledger Pebble instances fenced off after a failed write, sync or Pebble fatal error."},
			func() float64 { return float64(g.ledger.Health().Failures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_ledger_recoveries_total", Help: "Ledger re-opens after a disk failure."},
			func() float64 { return float64(g.ledger.Health().Recoveries) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_ledger_background_errors_total", Help: "Pebble background errors (flush, compaction) that did not fail the ledger."},
			func() float64 { return float64(g.ledger.Health().BackgroundErrors) }),
	)
}
