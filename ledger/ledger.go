// Package ledger is flashgate's local write-ahead grant log, kept in Pebble.
//
// A gateway answers "granted" only after the grant's record is in this log
// and the log is synced (invariant I4). The ledger owns:
//
//   - the record codec (record.go), versioned by its first byte and fuzzed;
//   - durable append with group commit: every Append is a Pebble batch applied
//     with Sync; Pebble's commit pipeline coalesces the WAL syncs of
//     concurrent appends, so N handler goroutines waiting at once cost about
//     one fsync, not N. appendsInflightMax bounds the goroutines waiting;
//   - idempotence by grant id: appending a grant id already present (a retry
//     whose first attempt did commit) returns the stored sequence number and
//     writes nothing, and concurrent appends of one id are collapsed.
//
// Key space (all keys start with a one-byte table tag):
//
//	'g' grantID            -> encoded Record        (one per grant, never rewritten)
//	'o' seq (8 bytes, BE)  -> grantID               (append order: the outbox)
//	'c' name               -> seq (8 bytes, BE)     (a reader's cursor, e.g. the relay's)
//	'm' "id"               -> 16 hex characters     (the ledger's identity, identity.go)
//
// Sequence numbers are assigned at append time from a counter recovered on
// Open from the last 'o' key. Commits of concurrent appends may become
// visible out of sequence order; readers that need a gap-free prefix use
// DurableSeq.
//
// Concurrency: every exported method is safe for concurrent use. The ledger
// starts no goroutine of its own; Close waits for nothing but Pebble.
//
// This package imports no network package (see lint_test.go).
package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

const (
	tagGrant  = 'g'
	tagOutbox = 'o'
	tagCursor = 'c'

	// appendsInflightMaxDefault bounds appends waiting for a sync. A few
	// hundred waiters already fill one group commit on this class of machine
	// (see DESIGN §8: 64–256 goroutines group to 85–190k records/s); more only
	// queue memory.
	appendsInflightMaxDefault = 4096
	// memTableSizeDefault keeps a burst of a few hundred thousand grants in
	// memory before a flush stalls writers.
	memTableSizeDefault = 64 << 20
)

// ErrBusy is returned when the bound on in-flight appends is reached and the
// caller's context ends before a slot frees. Nothing was written.
var ErrBusy = errors.New("ledger: too many appends in flight")

// ErrClosed is returned by operations on a closed ledger.
var ErrClosed = errors.New("ledger: closed")

// Options configure a Ledger.
type Options struct {
	Dir                string
	ReadOnly           bool
	AppendsInflightMax int
	// SyncIntervalMin, when > 0, lets a WAL sync wait up to this long for
	// more appends to join it: fewer fsyncs, at most this much more latency.
	SyncIntervalMin time.Duration
	Logger          *slog.Logger
	// FS is the file system (nil = the real one); tests inject faults here.
	FS vfs.FS
}

// EnsureDefaults fills unset fields.
func (o *Options) EnsureDefaults() {
	if o.AppendsInflightMax == 0 {
		o.AppendsInflightMax = appendsInflightMaxDefault
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports every invalid field at once.
func (o *Options) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("ledger: Dir is empty"))
	}
	if o.SyncIntervalMin < 0 || o.SyncIntervalMin > 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("ledger: SyncIntervalMin %v outside 0..10ms", o.SyncIntervalMin))
	}
	if o.AppendsInflightMax < 1 {
		errs = append(errs, fmt.Errorf("ledger: AppendsInflightMax %d < 1", o.AppendsInflightMax))
	}
	return errors.Join(errs...)
}

// Ledger is an open grant log.
type Ledger struct {
	db     *pebble.DB
	opts   Options
	slots  chan struct{}
	seq    atomic.Uint64 // last assigned
	closed atomic.Bool
	id     string // identity.go

	mu       sync.Mutex
	inflight map[string]*pendingAppend // grant id -> append in progress
	seqsOpen seqSet                    // assigned but not yet committed

	bufs   sync.Pool
	notify chan struct{} // signalled (non-blocking) after each commit
}

type pendingAppend struct {
	done chan struct{}
	seq  uint64
	err  error
}

// Open opens (creating if needed) the ledger in opts.Dir. A directory left by
// a killed process is recovered by Pebble's WAL replay: every append that
// returned nil before the kill is present.
func Open(opts Options) (*Ledger, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	popts := &pebble.Options{
		ReadOnly:     opts.ReadOnly,
		MemTableSize: memTableSizeDefault,
		Logger:       pebbleLogger{opts.Logger},
	}
	if opts.FS != nil {
		popts.FS = opts.FS
	}
	if d := opts.SyncIntervalMin; d > 0 {
		popts.WALMinSyncInterval = func() time.Duration { return d }
	}
	db, err := pebble.Open(opts.Dir, popts)
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", opts.Dir, err)
	}
	l := &Ledger{
		db:       db,
		opts:     opts,
		slots:    make(chan struct{}, opts.AppendsInflightMax),
		inflight: make(map[string]*pendingAppend),
		notify:   make(chan struct{}, 1),
	}
	l.bufs.New = func() any { b := make([]byte, 0, 256); return &b }
	last, err := l.lastSeq()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	l.seq.Store(last)
	if err := l.loadID(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return l, nil
}

func (l *Ledger) lastSeq() (uint64, error) {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagOutbox}, UpperBound: []byte{tagOutbox + 1}})
	if err != nil {
		return 0, fmt.Errorf("ledger: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		return 0, it.Error()
	}
	k := it.Key()
	if len(k) != 9 {
		return 0, fmt.Errorf("ledger: corrupt outbox key %x", k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

// Close closes the ledger. Appends racing with Close fail with ErrClosed.
func (l *Ledger) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	return l.db.Close()
}

// Append makes r durable and returns its sequence number. It is idempotent by
// r.GrantID: a grant id already in the ledger is not written again. It returns
// only after the record is synced, or with an error, in which case the grant
// may or may not be durable and must not be acknowledged.
//
// The existence check is never skipped, not even for a grant "just minted":
// a retry of the same attempt can reach the ledger before the first attempt
// does, and only the check keeps the record single.
func (l *Ledger) Append(ctx context.Context, r *Record) (uint64, error) {
	if l.closed.Load() {
		return 0, ErrClosed
	}
	if r.GrantID == "" || len(r.GrantID) > stringLenMax {
		return 0, fmt.Errorf("ledger: bad grant id length %d", len(r.GrantID))
	}
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		return 0, ErrBusy
	}
	defer func() { <-l.slots }()

	l.mu.Lock()
	if p, ok := l.inflight[r.GrantID]; ok {
		l.mu.Unlock()
		select {
		case <-p.done:
			return p.seq, p.err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	p := &pendingAppend{done: make(chan struct{})}
	l.inflight[r.GrantID] = p
	l.mu.Unlock()

	p.seq, p.err = l.appendOnce(r)

	l.mu.Lock()
	delete(l.inflight, r.GrantID)
	l.mu.Unlock()
	close(p.done)
	return p.seq, p.err
}

func (l *Ledger) appendOnce(r *Record) (uint64, error) {
	bp := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(bp)
	key := append((*bp)[:0], tagGrant)
	key = append(key, r.GrantID...)
	v, closer, err := l.db.Get(key)
	if err == nil {
		var old Record
		derr := old.Decode(v)
		closer.Close()
		if derr != nil {
			return 0, derr
		}
		return old.Seq, nil
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("ledger: get: %w", err)
	}
	l.mu.Lock()
	seq := l.seq.Add(1)
	l.seqsOpen.add(seq)
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.seqsOpen.remove(seq)
		l.mu.Unlock()
	}()

	r.Seq = seq
	keyLen := len(key)
	buf := r.AppendEncode(key) // key then value in one buffer
	if invariantsOn {
		var back Record
		if err := back.Decode(buf[keyLen:]); err != nil || back != *r {
			panic(fmt.Sprintf("ledger: record does not survive its own codec: %+v -> %+v (%v)", *r, back, err))
		}
	}
	var okey [9]byte
	okey[0] = tagOutbox
	binary.BigEndian.PutUint64(okey[1:], seq)

	b := l.db.NewBatch()
	defer b.Close()
	if err := b.Set(buf[:keyLen], buf[keyLen:], nil); err != nil {
		return 0, fmt.Errorf("ledger: batch: %w", err)
	}
	if err := b.Set(okey[:], []byte(r.GrantID), nil); err != nil {
		return 0, fmt.Errorf("ledger: batch: %w", err)
	}
	if err := l.db.Apply(b, pebble.Sync); err != nil {
		return 0, fmt.Errorf("ledger: commit: %w", err)
	}
	*bp = buf[:0]
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return seq, nil
}

// Appended is signalled after appends commit (coalesced: one signal may
// stand for many appends). Readers of the outbox wait on it.
func (l *Ledger) Appended() <-chan struct{} { return l.notify }

// Cursor returns the named reader's position (0 if never set).
func (l *Ledger) Cursor(name string) (uint64, error) {
	v, closer, err := l.db.Get(append([]byte{tagCursor}, name...))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ledger: cursor %s: %w", name, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("ledger: cursor %s: corrupt value %x", name, v)
	}
	return binary.BigEndian.Uint64(v), nil
}

// SetCursor stores the named reader's position. It is not synced on its own:
// it becomes durable with the next synced append, and a cursor lost in a
// crash only makes its reader repeat work it must already tolerate (the relay
// re-publishes; JetStream drops duplicates by message id).
func (l *Ledger) SetCursor(name string, seq uint64) error {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], seq)
	if err := l.db.Set(append([]byte{tagCursor}, name...), v[:], pebble.NoSync); err != nil {
		return fmt.Errorf("ledger: set cursor %s: %w", name, err)
	}
	return nil
}

// DurableSeq returns the highest sequence number s such that every append
// with a sequence number ≤ s has finished (committed or failed). A reader of
// the outbox that stops at DurableSeq never skips a record that commits later.
func (l *Ledger) DurableSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m, ok := l.seqsOpen.min(); ok {
		return m - 1
	}
	return l.seq.Load()
}

// Get returns the record of grantID, or ok=false.
func (l *Ledger) Get(grantID string) (r Record, ok bool, err error) {
	v, closer, err := l.db.Get(append([]byte{tagGrant}, grantID...))
	if errors.Is(err, pebble.ErrNotFound) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("ledger: get: %w", err)
	}
	defer closer.Close()
	if err := r.Decode(v); err != nil {
		return r, false, err
	}
	return r, true, nil
}

// Scan calls fn for each record with afterSeq < Seq ≤ uptoSeq, in sequence
// order, stopping early when fn returns an error (which Scan returns).
func (l *Ledger) Scan(afterSeq, uptoSeq uint64, fn func(*Record) error) error {
	var lo, hi [9]byte
	lo[0], hi[0] = tagOutbox, tagOutbox
	binary.BigEndian.PutUint64(lo[1:], afterSeq+1)
	if uptoSeq == ^uint64(0) {
		hi[0] = tagOutbox + 1
	} else {
		binary.BigEndian.PutUint64(hi[1:], uptoSeq+1)
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: hi[:]})
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	defer it.Close()
	var r Record
	for ok := it.First(); ok; ok = it.Next() {
		gid := it.Value()
		v, closer, err := l.db.Get(append([]byte{tagGrant}, gid...))
		if err != nil {
			return fmt.Errorf("ledger: outbox %x points to missing grant %q: %w", it.Key(), gid, err)
		}
		err = r.Decode(v)
		closer.Close()
		if err != nil {
			return err
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return it.Error()
}

// LastSeq returns the last sequence number assigned.
func (l *Ledger) LastSeq() uint64 { return l.seq.Load() }

// seqSet is the set of sequence numbers assigned but not yet committed. It
// stays small (≤ appendsInflightMax) so a map with a lazily kept minimum is
// enough.
type seqSet struct {
	m map[uint64]struct{}
}

func (s *seqSet) add(v uint64) {
	if s.m == nil {
		s.m = make(map[uint64]struct{})
	}
	s.m[v] = struct{}{}
}

func (s *seqSet) remove(v uint64) { delete(s.m, v) }

func (s *seqSet) min() (uint64, bool) {
	var m uint64
	ok := false
	for v := range s.m {
		if !ok || v < m {
			m, ok = v, true
		}
	}
	return m, ok
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error("pebble: " + fmt.Sprintf(format, args...))
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	p.l.Error(msg)
	panic(msg) // Pebble requires Fatalf not to return; the process must die rather than ack.
}
