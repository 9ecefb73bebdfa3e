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
//     writes nothing, and concurrent appends of one id are collapsed. Append
//     reads Pebble for the id first; AppendNew, for an id this process has
//     just minted, reads it only when the replay guard says that an Append of
//     the same id may have run since the id left the process (see AppendNew).
//
// Key space (all keys start with a one-byte table tag):
//
//	'g' grantID            -> encoded Record        (one per grant, never rewritten)
//	'o' seq (8 bytes, BE)  -> grantID               (append order: the outbox)
//	'c' name               -> seq (8 bytes, BE)     (a reader's cursor: "relay", "reconcile"; not synced on its own)
//	'm' "id"               -> 16 hex characters     (the ledger's identity, identity.go; synced)
//	'm' "seq"              -> seq (8 bytes, BE)     (the sequence floor written by Recover, identity.go; synced)
//
// Sequence numbers are assigned at append time from a counter recovered on
// Open from the larger of the last 'o' key and the sequence floor, so a
// number handed to an append that failed with the disk is never reused. Commits of concurrent appends may become
// visible out of sequence order; readers that need a gap-free prefix use
// DurableSeq.
//
// # When the disk fails
//
// Pebble cannot go on after a failed WAL write or sync: the state of the log
// is unknown (after a failed fsync the kernel may have dropped the dirty
// pages), so it calls Logger.Fatalf ("fatal commit error", "MANIFEST sync
// failed"), or panics while holding its commit mutex (a WAL writer with a
// sticky error, a failed WAL rotation — one of which ends in an unlock of an
// unlocked mutex, a runtime throw no recover catches). A full disk must not
// kill the gateway, and no append may return nil unless it is synced. So:
//
//   - Pebble never sees a write error. Each Pebble instance (an
//     "incarnation") runs on a fenceFS wrapping the real file system. The
//     first failed write, sync, create, rename, link or remove fences it: the
//     ledger is failed from that instant (Err, Failed), and the goroutine
//     that hit the error parks for good — it never returns to Pebble, so
//     nothing downstream of the failed step runs as if it had worked. Every
//     later mutating call on that file system parks too, so a dead instance
//     never touches the directory again. (Preallocate errors pass: Pebble
//     ignores them.)
//   - Fatalf (invariant violations, corruption) fences too, then unwinds a
//     goroutine of this package with a private panic that the entry point
//     recovers into ErrDiskFailed, and parks any goroutine of Pebble's own.
//   - Appends and cursor writes run Pebble in a goroutine of their own and
//     wait for it or for the fence, whichever is first: a commit parked in a
//     dead instance never holds its caller. The caller answers ErrDiskFailed
//     (wrapping the cause, e.g. "write 000004.log: no space left on device");
//     the grant may or may not be on disk and is not acknowledged. Its
//     sequence number stays open, so DurableSeq (and the relay) stop before
//     it until Recover has re-read the disk.
//   - While failed, every operation (Append, Get, Scan, Cursor, SetCursor)
//     answers ErrDiskFailed before touching Pebble: a failed instance's
//     memtable may show records whose sync failed, and nothing is answered
//     from it.
//   - Recover (called by the gateway's supervisor with a bounded backoff)
//     probes the directory — free space for the WAL to replay plus
//     headroom, then a small file written and fsynced — and opens a fresh
//     instance on it. WAL replay recovers every append that returned nil
//     (and perhaps some that failed: they were never acknowledged, and a
//     retry finds them by grant id). Then appends are let in again.
//   - A failed instance is never closed: Close would wait forever for its
//     parked goroutines (the WAL flusher, a flush), and nothing it could
//     still do is wanted. It stays parked with its memtables and cache (it
//     may still read a file; it never writes, renames or removes one);
//     incarnationsFailedMax bounds how many a process keeps before Recover
//     asks for a restart. The directory lock is the Ledger's, held on the
//     real file system across incarnations.
//
// Pebble's background errors that do not fence (read errors in a compaction,
// say) are logged and counted (Health); a flush or compaction that runs out
// of space fences like a WAL write, because the WAL on the same disk is about
// to fail too and a flush stuck retrying would stall every writer.
//
// Concurrency: every exported method is safe for concurrent use. Goroutines:
// each append and cursor write runs Pebble in a short-lived goroutine that
// ends with the commit (or parks with a failed instance); Pebble's own.
// Close waits for nothing but Pebble.
//
// This package imports no network package (see lint_test.go).
package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
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
	// hundred waiters already fill one group commit on a 2-core machine
	// (measured: 64–256 goroutines group to 85–190k records/s); more only
	// queue memory.
	appendsInflightMaxDefault = 4096
	// memTableSizeDefault keeps a burst of a few hundred thousand grants in
	// memory before a flush stalls writers.
	memTableSizeDefault = 64 << 20
	// replayGuardGenerationMax bounds the grant ids one generation of the
	// replay guard holds (two generations are kept: at most twice this many
	// ids, about 0.5 MiB). Only Append (replays of an attempt, the settler)
	// adds to it; those are rare beside fresh claims, so a generation lasts
	// far longer than any claim. When it does not, AppendNew reads Pebble.
	replayGuardGenerationMax = 4096
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
	// FS is the file system under Dir; nil is the operating system's. Tests
	// inject failures here (Pebble's vfs/errorfs, internal/faultfs).
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
	if o.FS == nil {
		o.FS = vfs.Default
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
	opts   Options
	base   vfs.FS    // the real file system (opts.FS)
	lock   io.Closer // Dir's lock, held across incarnations
	cur    atomic.Pointer[incarnation]
	slots  chan struct{}
	seq    atomic.Uint64 // last assigned
	closed atomic.Bool
	id     string // identity.go

	mu       sync.Mutex
	inflight map[string]*pendingAppend // grant id -> append in progress
	seqsOpen seqSet                    // assigned but not yet committed
	guard    replayGuard               // ids Append has been asked for (AppendNew)

	bufs   sync.Pool
	notify chan struct{} // signalled (non-blocking) after each commit

	recoverMu    sync.Mutex // one Recover (or Close) at a time
	incarnations atomic.Uint64
	failures     atomic.Uint64
	recoveries   atomic.Uint64
	bgErrors     atomic.Uint64
	bgMu         sync.Mutex
	bgLast       error
	bgLastAt     time.Time
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
	l := &Ledger{
		opts:     opts,
		base:     opts.FS,
		slots:    make(chan struct{}, opts.AppendsInflightMax),
		inflight: make(map[string]*pendingAppend),
		notify:   make(chan struct{}, 1),
	}
	l.bufs.New = func() any { b := make([]byte, 0, 256); return &b }
	if !opts.ReadOnly {
		if err := l.base.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("ledger: open %s: %w", opts.Dir, err)
		}
	}
	lock, err := l.base.Lock(l.base.PathJoin(opts.Dir, "LOCK")) // Pebble's own lock file name
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: lock: %w", opts.Dir, err)
	}
	l.lock = lock
	inc, last, err := l.openIncarnation()
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	l.cur.Store(inc)
	floor, err := seqFloor(inc.db)
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	l.seq.Store(max(last, floor))
	if err := l.loadID(); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

// lastSeq reads the last sequence number of the outbox.
func lastSeq(db *pebble.DB) (uint64, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagOutbox}, UpperBound: []byte{tagOutbox + 1}})
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
// A failed Pebble instance is not closed (see the package comment); Close
// then releases the directory lock and returns the failure.
func (l *Ledger) Close() error {
	l.recoverMu.Lock()
	defer l.recoverMu.Unlock()
	if l.closed.Swap(true) {
		return nil
	}
	inc := l.cur.Load()
	err := inc.err()
	if err == nil {
		inc.closing.Store(true)
		err = inc.write(func(db *pebble.DB) error { return db.Close() })
	}
	return errors.Join(err, l.lock.Close())
}

// Append makes r durable and returns its sequence number. It is idempotent by
// r.GrantID: a grant id already in the ledger is not written again. It returns
// only after the record is synced, or with an error, in which case the grant
// may or may not be durable and must not be acknowledged.
//
// Append reads Pebble for the id before writing: it is the append of a grant
// that may already be here (a retried attempt, the settler). A grant id the
// caller has just minted goes through AppendNew instead.
func (l *Ledger) Append(ctx context.Context, r *Record) (uint64, error) {
	return l.append(ctx, r, true, 0)
}

// Epoch is a reading of the replay guard's generation, taken by a caller
// before a freshly minted grant id leaves it (see AppendNew).
type Epoch uint64

// Epoch returns the replay guard's current generation.
func (l *Ledger) Epoch() Epoch { return Epoch(l.guard.epoch.Load()) }

// AppendNew is Append for a grant id that the caller minted itself (unique
// by construction: stock.NewGrantID, 80 random bits) and that it read since
// from Epoch before the id could reach anyone else — before the claim script
// that records it in Redis, where a retry of the same attempt finds it.
//
// Such an id can already be in the ledger only if an Append of it came first:
// a retry answered from Redis that overtook this append, or the settler
// taking over a grant whose handler stalled. Every Append notes its id in the
// replay guard (two generations of at most replayGuardGenerationMax ids), and
// AppendNew reads Pebble only when the guard holds the id or has turned over
// more than once since `since` (then it cannot tell). Otherwise it writes
// without the read. Concurrent appends of one id are collapsed as in Append.
// Built with -tags invariants, AppendNew reads Pebble anyway and panics if the
// guard let a present id through.
func (l *Ledger) AppendNew(ctx context.Context, r *Record, since Epoch) (uint64, error) {
	return l.append(ctx, r, false, since)
}

func (l *Ledger) append(ctx context.Context, r *Record, replay bool, since Epoch) (uint64, error) {
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
	check := true
	if replay {
		l.guard.note(r.GrantID)
	} else {
		check = l.guard.mayHave(r.GrantID, since)
	}
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

	p.seq, p.err = l.appendOnce(r, check)

	l.mu.Lock()
	delete(l.inflight, r.GrantID)
	l.mu.Unlock()
	close(p.done)
	return p.seq, p.err
}

// replayGuard holds the grant ids Append was asked for, in two generations:
// an id noted in generation e is held through generation e+1. Guarded by
// Ledger.mu; epoch is also read without it (Ledger.Epoch).
type replayGuard struct {
	epoch     atomic.Uint64
	cur, prev map[string]struct{}
}

// note records id; a full generation turns over (the oldest is dropped).
func (g *replayGuard) note(id string) {
	if g.cur == nil {
		g.cur = make(map[string]struct{})
	}
	if len(g.cur) >= replayGuardGenerationMax {
		g.prev, g.cur = g.cur, make(map[string]struct{}, replayGuardGenerationMax)
		g.epoch.Add(1)
	}
	g.cur[strings.Clone(id)] = struct{}{} // never pins a larger buffer the id was cut from
}

// mayHave reports whether an Append of id may have run since `since`: the
// guard holds id, or an id noted at or after since may have been dropped.
// An Append that follows the reading of since is noted in a generation
// ≥ since, and is held until generation since+2.
func (g *replayGuard) mayHave(id string, since Epoch) bool {
	if g.epoch.Load() > uint64(since)+1 {
		return true
	}
	_, inCur := g.cur[id]
	_, inPrev := g.prev[id]
	return inCur || inPrev
}

// appendOnce writes r unless check finds its id already stored.
func (l *Ledger) appendOnce(r *Record, check bool) (uint64, error) {
	inc := l.cur.Load()
	if err := inc.err(); err != nil {
		return 0, err
	}
	bp := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(bp)
	key := append((*bp)[:0], tagGrant)
	key = append(key, r.GrantID...)
	if check || invariantsOn {
		seq, found, err := storedSeq(inc, key)
		if found && !check {
			panic(fmt.Sprintf("ledger: AppendNew of grant %q already stored at seq %d: the replay guard let it through", r.GrantID, seq))
		}
		if err != nil || found {
			return seq, err
		}
	}
	l.mu.Lock()
	seq := l.seq.Add(1)
	l.seqsOpen.add(seq, inc)
	l.mu.Unlock()

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

	b := inc.db.NewBatch() // Set copies: buf is free again once both are set
	err := b.Set(buf[:keyLen], buf[keyLen:], nil)
	if err == nil {
		err = b.Set(okey[:], []byte(r.GrantID), nil)
	}
	*bp = buf[:0]
	if err != nil {
		_ = b.Close()
		err = fmt.Errorf("ledger: batch: %w", err)
	} else {
		err = inc.apply(b)
	}

	l.mu.Lock()
	if err == nil || inc.err() == nil || inc.retired {
		l.seqsOpen.remove(seq)
	} // else: in flight on a failed instance; open until Recover re-reads the disk
	l.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrDiskFailed) && !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("ledger: commit: %w", err)
		}
		return 0, err
	}
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return seq, nil
}

// storedSeq returns the sequence number of the record stored under key, if
// there is one.
func storedSeq(inc *incarnation, key []byte) (seq uint64, found bool, err error) {
	defer recoverFatal(&err)
	v, closer, err := inc.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("ledger: get: %w", err)
	}
	defer closer.Close()
	var old Record
	if err := old.Decode(v); err != nil {
		return 0, false, err
	}
	return old.Seq, true, nil
}

// Appended is signalled after appends commit (coalesced: one signal may
// stand for many appends). Readers of the outbox wait on it.
func (l *Ledger) Appended() <-chan struct{} { return l.notify }

// Cursor returns the named reader's position (0 if never set).
func (l *Ledger) Cursor(name string) (seq uint64, err error) {
	inc := l.cur.Load()
	if err := inc.err(); err != nil {
		return 0, err
	}
	defer recoverFatal(&err)
	v, closer, err := inc.db.Get(append([]byte{tagCursor}, name...))
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
	inc := l.cur.Load()
	if err := inc.err(); err != nil {
		return err
	}
	v := binary.BigEndian.AppendUint64(nil, seq)
	key := append([]byte{tagCursor}, name...)
	if err := inc.write(func(db *pebble.DB) error { return db.Set(key, v, pebble.NoSync) }); err != nil {
		return fmt.Errorf("ledger: set cursor %s: %w", name, err)
	}
	return nil
}

// DurableSeq returns the highest sequence number s such that every append
// with a sequence number ≤ s has finished (committed or failed; an append in
// flight when the disk failed counts as finished only once Recover has
// re-read the disk). A reader of the outbox that stops at DurableSeq never
// skips a record that commits, or reappears from the WAL, later.
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
	inc := l.cur.Load()
	if err := inc.err(); err != nil {
		return r, false, err
	}
	defer recoverFatal(&err)
	v, closer, err := inc.db.Get(append([]byte{tagGrant}, grantID...))
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
	if err := inc.err(); err != nil {
		return Record{}, false, err // failed meanwhile: the record may be one whose sync failed
	}
	return r, true, nil
}

// Scan calls fn for each record with afterSeq < Seq ≤ uptoSeq, in sequence
// order, stopping early when fn returns an error (which Scan returns).
func (l *Ledger) Scan(afterSeq, uptoSeq uint64, fn func(*Record) error) (err error) {
	inc := l.cur.Load()
	if err := inc.err(); err != nil {
		return err
	}
	defer recoverFatal(&err)
	var lo, hi [9]byte
	lo[0], hi[0] = tagOutbox, tagOutbox
	binary.BigEndian.PutUint64(lo[1:], afterSeq+1)
	if uptoSeq == ^uint64(0) {
		hi[0] = tagOutbox + 1
	} else {
		binary.BigEndian.PutUint64(hi[1:], uptoSeq+1)
	}
	it, err := inc.db.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: hi[:]})
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	defer it.Close()
	var r Record
	for ok := it.First(); ok; ok = it.Next() {
		gid := it.Value()
		v, closer, err := inc.db.Get(append([]byte{tagGrant}, gid...))
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

// seqSet is the set of sequence numbers assigned but not yet committed, each
// with the incarnation it was appended to. It stays small
// (≤ appendsInflightMax, plus those in flight when an instance failed, until
// Recover) so a map with a lazily kept minimum is enough.
type seqSet struct {
	m map[uint64]*incarnation
}

func (s *seqSet) add(v uint64, inc *incarnation) {
	if s.m == nil {
		s.m = make(map[uint64]*incarnation)
	}
	s.m[v] = inc
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
