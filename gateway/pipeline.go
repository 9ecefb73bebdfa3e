package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/store"
)

// The grant pipeline behind the ledger (ledger → relay → JetStream → sink → store):
// openPipeline opens the grant store, the GRANTS stream, the relay and,
// when embedded, the sink; reconcile republishes ledger grants the store is
// missing; saveSnapshots copies changed campaign definitions into the store.

const (
	reconcileCursor = "reconcile"
	// reconcileChunk is grants checked against the store per query.
	reconcileChunk = store.BatchMax
	// reconcileChunksPerTick bounds one reconciliation pass.
	reconcileChunksPerTick = 200
	// snapshotQueueMax bounds campaign snapshots waiting to be stored; when
	// full, a change is skipped (the next change of the campaign writes it).
	snapshotQueueMax = 1024
)

type pipelineState struct {
	reconcileMissing atomic.Int64 // grants found missing in the last pass
	republished      atomic.Int64
	setAsidePassed   atomic.Int64 // grants the store cannot hold that the cursor passed
}

// Sink is the JetStream → store consumer a gateway runs inside serve when
// sink.embedded is true. Package ledger/sink implements it; cmd (and the
// test stack) wire it with WithSink, so that only cmd wires the sink
// (internal/lint) and the gateway does not depend on the consumer.
type Sink interface {
	Run(ctx context.Context) // until ctx ends
	Stored() int64           // grants inserted
	Duplicates() int64       // repeats skipped
	Poison() int64           // undecodable messages terminated
	SetAside() int64         // grants the store can never hold, set aside
}

// NewSinkFunc builds the embedded sink on the gateway's JetStream and store.
type NewSinkFunc func(js jetstream.JetStream, st *store.Store, log *slog.Logger) (Sink, error)

// WithSink wires the sink that runs inside the gateway when sink.embedded
// is true (the default); New refuses an embedded sink without it.
func WithSink(f NewSinkFunc) Option { return func(g *Gateway) { g.newSink = f } }

// openPipeline opens the store, the GRANTS stream, the relay and the
// embedded sink (New calls it; Run starts their loops).
func (g *Gateway) openPipeline(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var err error
	if g.store, err = store.Open(sctx, g.cfg.Store.Driver, g.cfg.StoreDSN()); err != nil {
		return err
	}
	streamCfg := relay.StreamConfig(g.cfg.NATS.Replicas, g.cfg.NATS.DedupWindow, g.cfg.NATS.StreamMaxAge)
	if _, err := g.js.CreateOrUpdateStream(sctx, streamCfg); err != nil {
		return fmt.Errorf("gateway: GRANTS stream: %w", err)
	}
	// The relay publishes under the ledger's identity, not node_id: message
	// ids (node:first:last) and the resume subject must be unique per
	// ledger, and two gateways may share a host name or a node_id.
	g.relay, err = relay.New(relay.Options{Ledger: g.ledger, JS: g.js, Node: g.ledger.ID(), Logger: g.log, Stream: streamCfg})
	if err != nil {
		return err
	}
	if g.cfg.Sink.Embedded {
		if g.newSink == nil {
			return errors.New("gateway: sink.embedded is true but no sink was wired (WithSink)")
		}
		if g.sink, err = g.newSink(g.js, g.store, g.log); err != nil {
			return err
		}
	}
	g.metrics.registerPipeline(g)
	return nil
}

// reconcile walks the ledger behind the relay and checks that every grant
// older than relay.reconcile_grace is in the store; missing ones are
// published again (JetStream dedups them if they were only late). The
// cursor stops before a chunk with a missing grant, so it is checked again.
// A grant the store can never hold (store.Put sets it aside in
// grants_set_aside, whether the sink or this pass found it) does not hold the
// cursor: it is counted (flashgate_reconcile_set_aside_total), logged, and
// reported by the audit, and the cursor moves past it.
func (g *Gateway) reconcile(ctx context.Context) {
	t := time.NewTicker(g.cfg.Relay.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.reconcileOnce(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("reconcile pass failed", "err", err)
		}
	}
}

var errChunkYoung = errors.New("chunk too young")

func (g *Gateway) reconcileOnce(ctx context.Context) error {
	cursor, err := g.ledger.Cursor(reconcileCursor)
	if err != nil {
		return err
	}
	upto := g.relay.Cursor()
	cutoff := g.now().Add(-g.cfg.Relay.ReconcileGrace).UnixNano()
	missingTotal := int64(0)
	for chunk := 0; chunk < reconcileChunksPerTick && cursor < upto; chunk++ {
		end := min(upto, cursor+reconcileChunk)
		var recs []ledger.Record
		scanErr := g.ledger.Scan(cursor, end, func(r *ledger.Record) error {
			if r.GrantedAtNanos > cutoff {
				return errChunkYoung
			}
			recs = append(recs, *r)
			return nil
		})
		if scanErr != nil && !errors.Is(scanErr, errChunkYoung) {
			return scanErr
		}
		if len(recs) == 0 {
			break
		}
		ids := make([]string, len(recs))
		for i := range recs {
			ids[i] = recs[i].GrantID
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		missing, err := g.store.Missing(qctx, ids)
		cancel()
		if err != nil {
			return err
		}
		again, setAside, err := g.unstored(ctx, recs, missing)
		if err != nil {
			return err
		}
		if len(again) > 0 {
			missingTotal += int64(len(again))
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := relay.Republish(pctx, g.js, g.ledger.ID(), again)
			cancel()
			g.pipe.republished.Add(int64(len(again)))
			g.log.Warn("reconcile: grants missing from the store were published again", "count", len(again), "first", again[0].GrantID)
			if err != nil {
				return err
			}
			break // check this chunk again next pass
		}
		cursor = recs[len(recs)-1].Seq
		if err := g.ledger.SetCursor(reconcileCursor, cursor); err != nil {
			return err
		}
		if len(setAside) > 0 {
			g.pipe.setAsidePassed.Add(int64(len(setAside)))
			g.log.Error("reconcile: ledger grants the store cannot hold are set aside (grants_set_aside); the cursor passed them",
				"count", len(setAside), "first", setAside[0], "cursor", cursor)
		}
		if errors.Is(scanErr, errChunkYoung) {
			break // the rest is younger than the grace period
		}
	}
	g.pipe.reconcileMissing.Store(missingTotal)
	return nil
}

// unstored sorts a chunk's grants missing from the store: those the store
// set aside (it can never hold them) are returned in setAside; one that fails
// the store's validation and is not yet set aside is set aside now (a ledger
// written before the edge refused such input); the rest are returned in
// again, to be published again.
func (g *Gateway) unstored(ctx context.Context, recs []ledger.Record, missing []string) (again []ledger.Record, setAside []string, err error) {
	if len(missing) == 0 {
		return nil, nil, nil
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	aside, err := g.store.SetAsideOf(qctx, missing)
	if err != nil {
		return nil, nil, err
	}
	want := make(map[string]bool, len(missing))
	for _, id := range missing {
		want[id] = true
	}
	var refused []store.Grant
	node := g.ledger.ID() // as the relay publishes it
	for i := range recs {
		r := &recs[i]
		if !want[r.GrantID] {
			continue
		}
		if aside[r.GrantID] {
			setAside = append(setAside, r.GrantID)
			continue
		}
		// The stream's grant as the sink would map it to the store's row
		// (ledger/sink: the same compiler-checked conversion).
		if gr := store.Grant(relay.GrantOf(node, r)); gr.Validate() != nil {
			refused = append(refused, gr)
			continue
		}
		again = append(again, *r)
	}
	if len(refused) > 0 {
		res, err := g.store.Put(qctx, refused)
		if err != nil {
			return nil, nil, err
		}
		for _, a := range res.SetAside {
			g.log.Error("reconcile: ledger grant the store cannot hold set aside", "grant_id", a.Grant.GrantID, "ledger_seq", a.Grant.LedgerSeq, "reason", a.Reason)
			setAside = append(setAside, a.Grant.GrantID)
		}
	}
	return again, setAside, nil
}

// Store exposes the grant store (tests, audit).
func (g *Gateway) Store() *store.Store { return g.store }

// Relay exposes the relay (tests, metrics).
func (g *Gateway) Relay() *relay.Relay { return g.relay }

// saveSnapshots writes the definition of each changed campaign into the
// store's campaigns table, for reporting next to the grants.
func (g *Gateway) saveSnapshots(ctx context.Context) {
	for {
		var id string
		select {
		case <-ctx.Done():
			return
		case id = <-g.snapshots:
		}
		c, ok := g.reg.Get(id)
		if !ok {
			continue
		}
		b, err := json.Marshal(c)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := g.store.SaveCampaign(sctx, id, b); err != nil {
			g.log.Warn("campaign snapshot not stored", "campaign", id, "err", err)
		}
		cancel()
	}
}
