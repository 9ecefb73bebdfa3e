// Package sink moves grants from the JetStream stream GRANTS into the SQL
// grant store, exactly once in effect (I5): a durable pull consumer fetches
// up to fetchMessagesMax messages, their grants are upserted keyed by grant
// id in transactions of at most store.BatchMax, and only after every grant
// of the fetched messages is committed are the messages acked. A crash
// before the ack redelivers them; the primary key makes the repeat a no-op.
//
// Messages are the relay's: ledger/relay owns the versioned wire format. The
// sink decodes them with relay.Decode and maps each grant to a store.Grant
// row. A message that does not decode (bad JSON, unknown fields, an unknown
// version, no grants or too many) is terminated (never redelivered), logged
// and counted: it cannot become valid by retrying, and it must not block the
// grants behind it. (A message of a newer version than this sink reads is
// terminated too: upgrade sinks before relays; the reconciler publishes the
// grants again once they are missing from the store.)
// Inside a decoded message each grant stands alone: a grant the store can
// never hold (store.Put: it fails store.Grant.Validate, or the database
// refuses it for good) is set aside in the store's grants_set_aside table
// with the reason, logged and counted (SetAside), and the message's other
// grants are stored and the message acked. Transient store errors are not
// acked: the batch is redelivered after a bounded backoff.
//
// One goroutine: Run. Several sinks may share the durable consumer (each
// message goes to one of them).
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/store"
)

const (
	// Durable is the consumer's name.
	Durable = "flashgate-sink"
	// fetchMessagesMax bounds messages per fetch (each up to 256 grants).
	fetchMessagesMax = 16
	// ackPendingMax bounds messages delivered and not yet acked.
	ackPendingMax = 8 * fetchMessagesMax
	// fetchWait bounds how long one fetch waits for a full batch.
	fetchWait  = 100 * time.Millisecond
	backoffMax = 2 * time.Second
)

// Options of a sink.
type Options struct {
	JS     jetstream.JetStream
	Store  *store.Store
	Logger *slog.Logger
}

// Sink is a running consumer.
type Sink struct {
	o                  Options
	stored, duplicates atomic.Int64
	poison             atomic.Int64
	setAside           atomic.Int64
	lastStored         atomic.Int64 // unix nanos of the last commit that stored something
}

// New returns a sink.
func New(o Options) (*Sink, error) {
	if o.JS == nil || o.Store == nil {
		return nil, errors.New("sink: JS and Store are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Sink{o: o}, nil
}

// Stored, Duplicates and Poison count grants inserted, repeats skipped and
// undecodable messages terminated.
func (s *Sink) Stored() int64     { return s.stored.Load() }
func (s *Sink) Duplicates() int64 { return s.duplicates.Load() }
func (s *Sink) Poison() int64     { return s.poison.Load() }

// SetAside counts grants the store can never hold, set aside instead of stored.
func (s *Sink) SetAside() int64 { return s.setAside.Load() }

// Decode parses one stream message (relay.Decode: untrusted bytes, fuzzed)
// and maps its grants to the store's rows. It refuses a message that is not
// a known version of a batch of 1..relay.DecodeGrantsMax grants; each
// grant's content is the store's to judge (store.Put), so that one bad grant
// never takes the message's other grants with it.
func Decode(data []byte) ([]store.Grant, error) {
	b, err := relay.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	grants := make([]store.Grant, len(b.Grants))
	for i := range b.Grants {
		grants[i] = storeGrant(&b.Grants[i])
	}
	return grants, nil
}

// storeGrant maps a grant of the wire message to the store's row. The two
// types have the same fields today, so this is a conversion the compiler
// checks: a field added to either stops it compiling, and the mapping must
// then be written out here (the reconciler in gateway/pipeline.go makes the
// same conversion).
func storeGrant(g *relay.Grant) store.Grant { return store.Grant(*g) }

// Run consumes until ctx ends, re-binding the consumer after errors.
func (s *Sink) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s.o.Logger.Info("sink: waiting for the GRANTS stream (created by the first gateway)", "retry_in", backoff)
		} else {
			s.o.Logger.Warn("sink: consumer interrupted; retrying", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func (s *Sink) consume(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := s.o.JS.CreateOrUpdateConsumer(cctx, relay.Stream, jetstream.ConsumerConfig{
		Durable:       Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: ackPendingMax,
		FilterSubject: relay.SubjectPrefix + ">",
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("sink: consumer: %w", err)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(fetchMessagesMax, jetstream.FetchMaxWait(fetchWait))
		if err != nil {
			return fmt.Errorf("sink: fetch: %w", err)
		}
		var msgs []jetstream.Msg
		var grants []store.Grant
		for m := range batch.Messages() {
			gs, err := Decode(m.Data())
			if err != nil {
				s.poison.Add(1)
				s.o.Logger.Error("sink: undecodable grant message terminated", "subject", m.Subject(), "err", err)
				_ = m.Term()
				continue
			}
			msgs = append(msgs, m)
			grants = append(grants, gs...)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && len(msgs) == 0 {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoHeartbeat) {
				continue
			}
			return fmt.Errorf("sink: batch: %w", err)
		}
		if len(grants) == 0 {
			continue
		}
		if err := s.store(ctx, msgs, grants); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *Sink) store(ctx context.Context, msgs []jetstream.Msg, grants []store.Grant) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, aside := 0, 0
	for lo := 0; lo < len(grants); lo += store.BatchMax {
		res, err := s.o.Store.Put(wctx, grants[lo:min(lo+store.BatchMax, len(grants))])
		if err != nil {
			for _, m := range msgs {
				_ = m.NakWithDelay(time.Second)
			}
			return fmt.Errorf("sink: store: %w", err)
		}
		n += res.Stored
		aside += len(res.SetAside)
		for _, a := range res.SetAside {
			s.o.Logger.Error("sink: grant the store cannot hold set aside (grants_set_aside)", "grant_id", clip(a.Grant.GrantID),
				"campaign", clip(a.Grant.Campaign), "node", clip(a.Grant.Node), "ledger_seq", a.Grant.LedgerSeq, "reason", a.Reason)
		}
	}
	s.stored.Add(int64(n))
	s.setAside.Add(int64(aside))
	s.duplicates.Add(int64(len(grants) - n - aside))
	if n > 0 {
		s.lastStored.Store(time.Now().UnixNano())
	}
	for _, m := range msgs {
		_ = m.Ack() // a lost ack redelivers; the primary key absorbs it
	}
	return nil
}

// logFieldLenMax bounds a field of an untrusted grant written to the log.
const logFieldLenMax = 128

func clip(s string) string {
	if len(s) > logFieldLenMax {
		return s[:logFieldLenMax] + "…"
	}
	return s
}
