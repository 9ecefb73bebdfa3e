package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
)

// Settlement: every grant decided in Redis ends in exactly one synced ledger.
//
// The claim script records each grant's ledger record in its shard's
// unsettled hash, tagged with this gateway's node id (the ledger's identity,
// ledger.ID). Two goroutines take grants out of it again:
//
//   - markSettled deletes the fields of grants whose ledger append returned
//     (handlers queue them on g.marks after the append; batched per shard).
//     A full queue or a Redis error leaves a field behind, which the settler
//     then finds in the ledger: marks are an optimisation, never a promise.
//   - settleUnsettled scans the hashes of every campaign. For each grant of
//     this node older than settleAgeMin (its handler has given up on it: the
//     append failed, the Redis reply was lost, or the process died) it appends
//     the recorded facts to the ledger — idempotent by grant id — then
//     deletes the field. The first pass runs before claims are taken (all
//     ages: no handler of this process is in flight yet) and claims answer
//     503 until it has succeeded, so a restarted gateway settles its own
//     window before taking traffic. Grants of other nodes are counted as
//     held and left alone: their node, or a replacement started on its data
//     directory, settles them.
const (
	// markQueueMax bounds grants waiting for their unsettled field to be
	// deleted (about a second of a drop at full speed); past it marks are
	// dropped and the settler cleans up.
	markQueueMax = 1 << 16
	// markBatchMax bounds grants deleted in one pipelined round.
	markBatchMax = 4096
	// settleInterval is the settler's period after its first pass.
	settleInterval = 2 * time.Second
	// settleFirstRetry is the wait between failed first passes (Redis or the
	// ledger not reachable yet).
	settleFirstRetry = 250 * time.Millisecond
	// settleAppendsMax bounds concurrent appends of the settler: enough to
	// fill a group commit (see ledger), few enough to leave claims room.
	settleAppendsMax = 256
	// settleBatchMax bounds grants appended before their fields are deleted.
	settleBatchMax = 1024
	// markFlushTimeout bounds the last flush of marks at shutdown.
	markFlushTimeout = 2 * time.Second
	// settlePassTimeout bounds one pass over every campaign.
	settlePassTimeout = 30 * time.Second
)

// settleAgeMin is how old a grant of this node must be before the settler
// takes it over from its handler: longer than any claim deadline.
func (g *Gateway) settleAgeMin() time.Duration { return g.cfg.Claim.Timeout + time.Second }

// mark queues a grant whose ledger append returned, for its unsettled field
// to be deleted.
func (g *Gateway) mark(campaign string, shard uint32, grantID string) {
	select {
	case g.marks <- stock.Settled{Campaign: campaign, Shard: int(shard), GrantID: grantID}:
	default:
		g.metrics.marksDropped.Inc()
	}
}

// markSettled deletes queued grants' unsettled fields in batches. Ends with
// ctx, after one last bounded flush of what is queued (handlers have
// finished by then: Run stops background loops after the servers drain).
func (g *Gateway) markSettled(ctx context.Context) {
	batch := make([]stock.Settled, 0, markBatchMax)
	for {
		select {
		case <-ctx.Done():
			g.flushMarks()
			return
		case m := <-g.marks:
			batch = append(batch, m)
		}
	fill:
		for len(batch) < markBatchMax {
			select {
			case m := <-g.marks:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if st := g.stock(); st != nil {
			// Not derived from ctx: a batch in flight at shutdown completes.
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := st.Settle(sctx, batch); err != nil {
				g.metrics.marksDropped.Add(float64(len(batch)))
			}
			cancel()
		}
		batch = batch[:0]
	}
}

// flushMarks deletes the fields of every grant still queued, within
// markFlushTimeout; what is left is cleaned up by the next start's settler.
func (g *Gateway) flushMarks() {
	st := g.stock()
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), markFlushTimeout)
	defer cancel()
	batch := make([]stock.Settled, 0, markBatchMax)
	for {
		select {
		case m := <-g.marks:
			batch = append(batch, m)
			if len(batch) < markBatchMax {
				continue
			}
		default:
		}
		if len(batch) == 0 || st.Settle(ctx, batch) != nil {
			return
		}
		batch = batch[:0]
	}
}

// settleUnsettled runs the settler until ctx ends (see the comment above).
func (g *Gateway) settleUnsettled(ctx context.Context) {
	if g.reg.WaitReady(ctx) != nil {
		return
	}
	for !g.settled.Load() {
		if g.stock() != nil {
			if err := g.settlePass(ctx, 0); err == nil {
				g.settled.Store(true)
				g.log.Info("unsettled grants of this node settled; taking claims", "node", g.ledger.ID())
				break
			} else if ctx.Err() == nil {
				g.log.Warn("first settlement pass failed; claims answer 503 until it succeeds", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(settleFirstRetry):
		}
	}
	t := time.NewTicker(settleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.settlePass(ctx, g.settleAgeMin()); err != nil && ctx.Err() == nil {
			g.log.Warn("settlement pass failed", "err", err)
		}
	}
}

// settlePass settles this node's unsettled grants older than minAge.
// Records are appended concurrently, settleAppendsMax at a time, so that a
// window of thousands of grants shares fsyncs (group commit) instead of
// paying one each.
func (g *Gateway) settlePass(ctx context.Context, minAge time.Duration) error {
	st := g.stock()
	if st == nil {
		return stock.ErrUnavailable
	}
	pctx, cancel := context.WithTimeout(ctx, settlePassTimeout)
	defer cancel()
	me := g.ledger.ID()
	cutoff := g.now().Add(-minAge).UnixNano()
	var held, settled int64
	recs := make([]ledger.Record, 0, settleBatchMax)
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		defer func() { recs = recs[:0] }()
		if err := g.appendAll(pctx, recs); err != nil {
			return err
		}
		done := make([]stock.Settled, len(recs))
		for i := range recs {
			done[i] = stock.Settled{Campaign: recs[i].Campaign, Shard: int(recs[i].Shard), GrantID: recs[i].GrantID}
		}
		settled += int64(len(recs))
		return st.Settle(pctx, done)
	}
	for _, c := range g.reg.List() {
		err := st.ScanUnsettled(pctx, c.ID, c.Shards, func(u stock.Unsettled) error {
			if u.Node != me {
				held++
				if u.Node == "" {
					g.log.Error("malformed unsettled grant left for an operator", "campaign", c.ID, "grant_id", u.GrantID)
				}
				return nil
			}
			var rec ledger.Record
			if err := rec.Decode([]byte(u.Facts)); err != nil || rec.GrantID != u.GrantID || rec.Campaign != c.ID || int(rec.Shard) != u.Shard {
				held++
				g.log.Error("unsettled grant with corrupt facts left for an operator", "campaign", c.ID, "grant_id", u.GrantID, "err", err)
				return nil
			}
			if minAge > 0 && rec.GrantedAtNanos > cutoff {
				return nil // its handler may still be appending it
			}
			rec.Seq = 0
			recs = append(recs, rec)
			if len(recs) == settleBatchMax {
				return flush()
			}
			return nil
		})
		if err == nil {
			err = flush()
		}
		if err != nil {
			return err
		}
	}
	g.metrics.grantsHeld.Set(float64(held))
	if settled > 0 {
		g.metrics.grantsSettled.Add(float64(settled))
		g.log.Info("settled grants decided in Redis but not yet in this ledger", "count", settled)
	}
	return nil
}

// appendAll appends records concurrently (at most settleAppendsMax at once)
// and returns the first error.
func (g *Gateway) appendAll(ctx context.Context, recs []ledger.Record) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, settleAppendsMax)
	for i := range recs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := g.ledger.Append(ctx, &recs[i]); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("gateway: settle %s: %w", recs[i].GrantID, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// settleAtStop runs after the servers drained: the marks still queued are
// applied, then one pass settles every grant of this node (no handler is in
// flight to wait for), so a graceful stop leaves nothing of its own held.
// Bounded by ctx; what is left is logged and settled by the next start on
// this data dir.
func (g *Gateway) settleAtStop(ctx context.Context) {
	g.flushMarks()
	if g.stock() == nil || !g.settled.Load() {
		return
	}
	if err := g.settlePass(ctx, 0); err != nil {
		g.log.Error("grants of this node left unsettled at stop; the next start on this data dir settles them", "err", err)
	}
}
