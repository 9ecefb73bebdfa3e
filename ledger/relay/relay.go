// Package relay forwards a gateway's ledger outbox to the JetStream stream
// GRANTS in batch messages: each message carries up to grantsPerMessageMax
// consecutive grants of one node's ledger, on subject flashgate.grants.<node>,
// with Nats-Msg-Id = "<node>:<first seq>:<last seq>".
//
// The message is this package's own, versioned type (Batch, Grant; the
// byte format is in message.go): a reader decodes it with Decode and maps it
// to its own rows. The relay imports the ledger and NATS only, never the
// store or a SQL driver (internal/lint).
//
// Batching is what makes the pipeline cheap: per message JetStream stores,
// acks, delivers and receives an ack, so one message per grant costs four
// NATS round trips per grant; 256 grants per message cost 1/256 of that.
//
// # Order of events
//
//  1. The claim path appends a grant to the ledger and syncs it (I4).
//  2. The relay reads the outbox after its cursor, up to DurableSeq (so it
//     never skips a sequence number that commits later), at most BatchMax
//     grants at a time, cuts them into messages and publishes them
//     asynchronously.
//  3. Only when every message of the batch is acked by JetStream does the
//     cursor move past it. A failed or timed-out batch is published again
//     from the cursor after a bounded backoff. The batch is read afresh, so
//     its full messages have the same ranges and message ids and JetStream
//     drops them within its duplicate window; its last, partial message may
//     have grown (more grants became durable meanwhile) and then carries a
//     new id. The sink's primary key drops every repeat JetStream keeps (I5).
//  4. On start the cursor is the larger of the ledger's stored cursor and
//     the last_seq of the node's last message in the stream, so a cursor
//     write lost in a crash does not re-publish what JetStream already has.
//
// While NATS is away the ledger holds the backlog and claims keep being
// granted; past BacklogMax un-relayed grants the gateway fails closed (it
// reads Backlog) rather than let the backlog grow without bound.
//
// # Durability choice
//
// JetStream with an fsync per message caps at about 3–4k msgs/s here, far
// below the claim path; async publishes reach about 80k/s. So the stream
// keeps JetStream's periodic sync and no per-message fsync sits on the claim
// path: the grant is already durable in the ledger before anyone is told.
// A NATS process killed with -9 loses nothing (its writes are in the page
// cache); a whole-machine crash may lose JetStream's unsynced tail, which the
// gateway's reconciler finds (ledger grants missing from the store) and
// publishes again.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/ledger"
)

const (
	// Stream is the JetStream stream of grants.
	Stream = "GRANTS"
	// SubjectPrefix + node (the ledger's identity) is a message's subject.
	SubjectPrefix = "flashgate.grants."
	// CursorName is the relay's cursor in the ledger.
	CursorName = "relay"

	batchMaxDefault    = 1024
	inflightMaxDefault = 4096
	// grantsPerMessageMax bounds one message (~256 × 400 B ≈ 100 KiB, well
	// under JetStream's 1 MiB default max payload).
	grantsPerMessageMax = 256
	// ackWaitMax bounds the wait for one batch's acks before it is retried.
	ackWaitMax = 10 * time.Second
	// backoffMax bounds the pause between failed batches.
	backoffMax = 2 * time.Second
	// pollInterval bounds the delay of a grant whose append signal was coalesced.
	pollInterval = 50 * time.Millisecond
)

// StreamConfig is the GRANTS stream: file storage, the duplicate window
// (must exceed the worst relay lag), replicas for a cluster, bounded age.
func StreamConfig(replicas int, dedupWindow, maxAge time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       Stream,
		Subjects:   []string{SubjectPrefix + ">"},
		Storage:    jetstream.FileStorage,
		Replicas:   replicas,
		Duplicates: dedupWindow,
		MaxAge:     maxAge,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
	}
}

// Options of a relay.
type Options struct {
	Ledger      *ledger.Ledger
	JS          jetstream.JetStream
	Stream      jetstream.StreamConfig
	Node        string // this gateway's id, carried in every message
	BatchMax    int
	InflightMax int
	Logger      *slog.Logger
}

// Relay is one ledger's forwarder. Run is its only goroutine.
type Relay struct {
	o         Options
	cursor    atomic.Uint64
	published atomic.Int64
	failures  atomic.Int64
}

// New validates options.
func New(o Options) (*Relay, error) {
	if o.BatchMax == 0 {
		o.BatchMax = batchMaxDefault
	}
	if o.InflightMax == 0 {
		o.InflightMax = inflightMaxDefault
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var errs []error
	if o.Ledger == nil || o.JS == nil {
		errs = append(errs, errors.New("relay: Ledger and JS are required"))
	}
	if o.Node == "" {
		errs = append(errs, errors.New("relay: Node is required"))
	}
	if o.BatchMax < 1 || o.BatchMax > 10000 || o.InflightMax < o.BatchMax {
		errs = append(errs, fmt.Errorf("relay: BatchMax %d must be 1..10000 and ≤ InflightMax %d", o.BatchMax, o.InflightMax))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	r := &Relay{o: o}
	c, err := o.Ledger.Cursor(CursorName)
	if err != nil {
		return nil, err
	}
	r.cursor.Store(c)
	return r, nil
}

// Cursor is the highest sequence number known published.
func (r *Relay) Cursor() uint64 { return r.cursor.Load() }

// Backlog is how many appended grants are not yet acknowledged by JetStream.
func (r *Relay) Backlog() uint64 {
	last, c := r.o.Ledger.LastSeq(), r.cursor.Load()
	if last < c {
		return 0
	}
	return last - c
}

// Published counts grants whose messages JetStream acknowledged (repeats
// included).
func (r *Relay) Published() int64 { return r.published.Load() }

// Failures counts batches that had to be retried.
func (r *Relay) Failures() int64 { return r.failures.Load() }

// Run forwards until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	streamReady := false
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for ctx.Err() == nil {
		if !streamReady {
			// Look the stream up and create it only when missing: an update of
			// an existing stream racing a consumer create trips a data race
			// inside nats-server's file store (v2.15, seen under -race).
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := r.o.JS.Stream(sctx, r.o.Stream.Name)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				_, err = r.o.JS.CreateStream(sctx, r.o.Stream)
				if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
					err = nil
				}
			}
			cancel()
			if err != nil {
				r.o.Logger.Warn("relay: stream not available", "err", err, "retry_in", backoff)
				if !sleep(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, backoffMax)
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			last, err := r.resumeFromStream(rctx)
			cancel()
			if err != nil {
				r.o.Logger.Warn("relay: cannot read the node's last message; keeping the ledger cursor", "err", err)
			} else if last > r.cursor.Load() && last <= r.o.Ledger.LastSeq() {
				r.o.Logger.Info("relay: resuming after the stream's last message", "from", r.cursor.Load(), "to", last)
				r.cursor.Store(last)
				_ = r.o.Ledger.SetCursor(CursorName, last)
			}
			streamReady = true
		}
		n, err := r.forwardBatch(ctx)
		if err != nil {
			r.failures.Add(1)
			if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
				streamReady = false
			}
			r.o.Logger.Warn("relay: batch not acknowledged; retrying", "err", err, "cursor", r.cursor.Load(), "retry_in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, backoffMax)
			continue
		}
		backoff = 50 * time.Millisecond
		if n > 0 {
			continue
		}
		select {
		case <-ctx.Done():
		case <-r.o.Ledger.Appended():
		case <-tick.C:
		}
	}
}

// resumeFromStream returns the last_seq of the node's last message in the
// stream (0 if none).
func (r *Relay) resumeFromStream(ctx context.Context) (uint64, error) {
	s, err := r.o.JS.Stream(ctx, Stream)
	if err != nil {
		return 0, err
	}
	m, err := s.GetLastMsgForSubject(ctx, Subject(r.o.Node))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	b, err := Decode(m.Data)
	if err != nil {
		return 0, fmt.Errorf("relay: last message of %s: %w", r.o.Node, err)
	}
	return b.LastSeq, nil
}

func (r *Relay) forwardBatch(ctx context.Context) (int, error) {
	from := r.cursor.Load()
	upto := min(r.o.Ledger.DurableSeq(), from+uint64(r.o.BatchMax))
	if upto <= from {
		return 0, nil
	}
	recs := make([]ledger.Record, 0, upto-from)
	if err := r.o.Ledger.Scan(from, upto, func(rec *ledger.Record) error {
		recs = append(recs, *rec)
		return nil
	}); err != nil {
		return 0, err
	}
	futures := make([]jetstream.PubAckFuture, 0, len(recs)/grantsPerMessageMax+1)
	for lo := 0; lo < len(recs); lo += grantsPerMessageMax {
		f, err := r.o.JS.PublishMsgAsync(Message(r.o.Node, recs[lo:min(lo+grantsPerMessageMax, len(recs))]))
		if err != nil {
			return 0, fmt.Errorf("relay: publish: %w", err)
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(ackWaitMax)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return 0, fmt.Errorf("relay: ack: %w", err)
		case <-timeout.C:
			return 0, errors.New("relay: acks not received within 10s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if err := r.o.Ledger.SetCursor(CursorName, upto); err != nil {
		return 0, err
	}
	r.cursor.Store(upto)
	r.published.Add(int64(len(recs)))
	return len(recs), nil
}

// Republish publishes grants again (reconciliation), synchronously, one per
// message under a "reconcile:" id so it is not taken for the original batch.
func Republish(ctx context.Context, js jetstream.JetStream, node string, recs []ledger.Record) error {
	for i := range recs {
		m := Message(node, recs[i:i+1])
		m.Header.Set(jetstream.MsgIDHeader, "reconcile:"+recs[i].GrantID)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("relay: republish %s: %w", recs[i].GrantID, err)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
