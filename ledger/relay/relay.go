// Package relay forwards a gateway's ledger outbox to the JetStream stream
// GRANTS, one message per grant, with Nats-Msg-Id = grant id.
//
// # Order of events
//
//  1. The claim path appends a grant to the ledger and syncs it (I4).
//  2. The relay reads the outbox after its cursor, up to DurableSeq (so it
//     never skips a sequence number that commits later), in batches of at
//     most BatchMax, and publishes them asynchronously (at most InflightMax
//     un-acked messages).
//  3. Only when every message of the batch is acked by JetStream does the
//     cursor move past it. A failed or timed-out batch is published again
//     after a bounded backoff; JetStream drops the repeats by message id
//     within the stream's duplicate window, and the sink's primary key drops
//     any repeat older than that (I5).
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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/store"
)

const (
	// Stream is the JetStream stream of grants.
	Stream = "GRANTS"
	// SubjectPrefix + campaign id is a grant's subject.
	SubjectPrefix = "flashgate.grants."
	// CursorName is the relay's cursor in the ledger.
	CursorName = "relay"

	batchMaxDefault    = 1000
	inflightMaxDefault = 4096
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

// Published counts messages acknowledged (repeats included).
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
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := r.o.JS.CreateOrUpdateStream(sctx, r.o.Stream)
			cancel()
			if err != nil {
				r.o.Logger.Warn("relay: stream not available", "err", err, "retry_in", backoff)
				if !sleep(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, backoffMax)
				continue
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

// Message encodes one ledger record as the stream's JSON message.
func Message(node string, rec *ledger.Record) *nats.Msg {
	g := store.Grant{GrantID: rec.GrantID, Campaign: rec.Campaign, User: rec.User, Device: rec.Device, ClientIP: rec.ClientIP,
		IdempotencyKey: rec.IdempotencyKey, Shard: rec.Shard, GrantedAtNanos: rec.GrantedAtNanos, ValidFrom: rec.ValidFrom,
		ValidUntil: rec.ValidUntil, FaceValue: rec.FaceValue, Node: node, LedgerSeq: rec.Seq}
	data, _ := json.Marshal(&g) // fixed struct of strings and integers: cannot fail
	m := nats.NewMsg(SubjectPrefix + rec.Campaign)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, rec.GrantID)
	return m
}

func (r *Relay) forwardBatch(ctx context.Context) (int, error) {
	from := r.cursor.Load()
	upto := min(r.o.Ledger.DurableSeq(), from+uint64(r.o.BatchMax))
	if upto <= from {
		return 0, nil
	}
	futures := make([]jetstream.PubAckFuture, 0, upto-from)
	err := r.o.Ledger.Scan(from, upto, func(rec *ledger.Record) error {
		f, err := r.o.JS.PublishMsgAsync(Message(r.o.Node, rec))
		if err != nil {
			return err
		}
		futures = append(futures, f)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("relay: publish: %w", err)
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
	r.published.Add(int64(len(futures)))
	return len(futures), nil
}

// Republish publishes grants again (reconciliation), synchronously.
func Republish(ctx context.Context, js jetstream.JetStream, node string, recs []ledger.Record) error {
	for i := range recs {
		if _, err := js.PublishMsg(ctx, Message(node, &recs[i])); err != nil {
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
