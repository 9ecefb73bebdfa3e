package ledger

// Disk failures: the fence, incarnations, recovery. The design is in the
// package comment ("When the disk fails"); this file is its code.

import (
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskFailed is returned (wrapped with its cause, e.g. "write 000004.log:
// no space left on device") by every operation while the ledger's Pebble
// instance is fenced off after a write, sync or Pebble-internal failure, until
// Recover has opened a fresh one.
var ErrDiskFailed = errors.New("ledger: disk failed")

const (
	// incarnationsFailedMax bounds the failed Pebble instances one process
	// keeps parked. A failed instance is never closed (see the package
	// comment) and pins its memtables (≤ 2 × memTableSizeDefault) and block
	// cache (8 MiB); past this many, Recover refuses and asks for a restart
	// instead of letting memory grow with every incident.
	incarnationsFailedMax = 8
	// probeBytes is written and fsynced in Dir before a re-open: two WAL
	// blocks' worth proves the disk takes writes and syncs again without
	// spending much of a disk that has only just been freed.
	probeBytes = 64 << 10
	// recoverHeadroomBytes is the free space a re-open wants beyond the WAL
	// bytes it replays (which it writes out again as a table): a fresh WAL's
	// first blocks, a MANIFEST, an OPTIONS file and the probe itself.
	recoverHeadroomBytes = 4 << 20
	// probeFileName is a name Pebble does not parse, so it never takes the
	// probe (or one left by a crash mid-probe) for one of its files.
	probeFileName = "flashgate-disk-probe"
	// callerFramesMax bounds the stack walked to find who called Fatalf;
	// Pebble's deepest read paths stay far below it.
	callerFramesMax = 256
)

// incarnation is one Pebble instance opened on Dir. The Ledger uses one at a
// time; Recover replaces a failed one with a fresh one.
type incarnation struct {
	n  uint64 // 1 for the instance Open made, then 2, 3, …
	db *pebble.DB
	fs *fenceFS
	// closing is set by Ledger.Close before the DB closes: a commit racing
	// it then fails with ErrClosed, not as a disk failure.
	closing atomic.Bool
	// retired is set (under Ledger.mu) when Recover replaced this instance.
	retired bool
}

// err is nil while the instance is healthy, and ErrDiskFailed wrapping the
// cause once fenced.
func (inc *incarnation) err() error { return inc.fs.err() }

// write runs fn against the instance in a goroutine of its own and waits for
// it or for the instance to fail, whichever comes first. A goroutine that a
// failed instance parked (in the fence, or in a Pebble lock that a parked
// goroutine holds) therefore never takes its caller along: the caller gets
// ErrDiskFailed and the parked goroutine stays where it is, harmless.
//
// fn returning nil is the truth even when the instance fails at the same
// moment: a synced Apply that returned nil is on disk.
func (inc *incarnation) write(fn func(db *pebble.DB) error) error {
	done := replies.Get().(chan error)
	go func() {
		defer inc.recoverInto(done)
		done <- fn(inc.db)
	}()
	return inc.wait(done)
}

// apply is write for the hot path: it commits b with a WAL sync and closes
// it, with one allocation fewer than a closure would cost.
func (inc *incarnation) apply(b *pebble.Batch) error {
	done := replies.Get().(chan error)
	go inc.applyBatch(b, done)
	return inc.wait(done)
}

func (inc *incarnation) applyBatch(b *pebble.Batch, done chan<- error) {
	defer inc.recoverInto(done)
	err := inc.db.Apply(b, pebble.Sync)
	_ = b.Close()
	done <- err
}

// replies recycles the one-slot channels on which write goroutines answer.
// A channel goes back only after its answer was received; one left with a
// parked goroutine is never reused.
var replies = sync.Pool{New: func() any { return make(chan error, 1) }}

func (inc *incarnation) wait(done chan error) error {
	select {
	case err := <-done:
		replies.Put(done)
		return err
	case <-inc.fs.dead:
		select {
		case err := <-done:
			replies.Put(done)
			return err
		default:
			return inc.err()
		}
	}
}

// recoverInto, deferred by a write goroutine, answers a panic on done.
func (inc *incarnation) recoverInto(done chan<- error) {
	if v := recover(); v != nil {
		done <- inc.panicked(v)
	}
}

// panicked turns a panic out of Pebble into an error. Pebble's commit path
// panics on errors it cannot handle, sometimes holding its commit mutex: the
// instance cannot be trusted after that, so it is fenced like any failure.
func (inc *incarnation) panicked(v any) error {
	if fu, ok := v.(fatalUnwind); ok {
		return fu.err
	}
	if inc.closing.Load() {
		return ErrClosed
	}
	inc.fs.fence(fmt.Errorf("pebble panicked: %v", v))
	return inc.err()
}

// fatalUnwind is the panic value with which Fatalf unwinds a goroutine of
// this package out of Pebble; recoverFatal catches it at the entry point.
type fatalUnwind struct{ err error }

// recoverFatal, deferred by every entry point that calls Pebble in its
// caller's goroutine, turns a Fatalf unwind into the returned error. Every
// other panic goes on.
func recoverFatal(errp *error) {
	if v := recover(); v != nil {
		fu, ok := v.(fatalUnwind)
		if !ok {
			panic(v)
		}
		*errp = fu.err
	}
}

// park blocks the calling goroutine for the rest of the process. It is what
// the fence does to a goroutine that would otherwise go on in a failed
// instance: never return, so nothing after it runs as if the write or sync
// had worked.
func park() { select {} }

// fenceFS is the file system one incarnation sees. It passes every operation
// to the real one; the first failed write, sync or directory change fences
// it, and from then on every mutating call on it parks its goroutine. A
// failure is never returned to Pebble, which cannot continue safely after a
// failed WAL write or sync (it calls Fatalf, or panics holding its commit
// mutex); parking keeps a dead instance from ever touching Dir again, so a
// fresh instance can own the directory while the old one stays in memory.
type fenceFS struct {
	vfs.FS
	fenced atomic.Bool
	once   sync.Once
	cause  error         // written once, before fenced is set
	dead   chan struct{} // closed when fenced
	// onFence runs once, in the goroutine that hit the failure (maybe a
	// Pebble goroutine holding Pebble's locks): it must not block.
	onFence func(error)
}

func newFenceFS(fs vfs.FS, onFence func(error)) *fenceFS {
	return &fenceFS{FS: fs, dead: make(chan struct{}), onFence: onFence}
}

func (f *fenceFS) fence(cause error) {
	f.once.Do(func() {
		f.cause = fmt.Errorf("%w: %w", ErrDiskFailed, cause)
		f.fenced.Store(true)
		close(f.dead)
		if f.onFence != nil {
			f.onFence(f.cause)
		}
	})
}

func (f *fenceFS) err() error {
	if f.fenced.Load() {
		return f.cause
	}
	return nil
}

// gate parks a mutating call once the fence is up.
func (f *fenceFS) gate() {
	if f.fenced.Load() {
		park()
	}
}

// fail fences with the failed operation as the cause and parks.
func (f *fenceFS) fail(op, name string, err error) {
	f.fence(fmt.Errorf("%s %s: %w", op, f.PathBase(name), err))
	park()
}

func (f *fenceFS) Unwrap() vfs.FS { return f.FS }

func (f *fenceFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f.gate()
	file, err := f.FS.Create(name, c)
	if err != nil {
		f.fail("create", name, err)
	}
	return &fenceFile{File: file, fs: f, name: name}, nil
}

func (f *fenceFS) Link(oldname, newname string) error {
	f.gate()
	if err := f.FS.Link(oldname, newname); err != nil {
		f.fail("link", newname, err)
	}
	return nil
}

func (f *fenceFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f.gate()
	file, err := f.FS.OpenReadWrite(name, c, opts...)
	if err != nil {
		f.fail("open for write", name, err)
	}
	return &fenceFile{File: file, fs: f, name: name}, nil
}

// OpenDir's errors are the caller's (a missing directory is an answer); the
// directory's Sync is fenced like a file's.
func (f *fenceFS) OpenDir(name string) (vfs.File, error) {
	file, err := f.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return &fenceFile{File: file, fs: f, name: name}, nil
}

// Remove passes "does not exist" through: Pebble removes obsolete files it
// may already have removed, and handles that answer.
func (f *fenceFS) Remove(name string) error {
	f.gate()
	err := f.FS.Remove(name)
	if err != nil && !errors.Is(err, iofs.ErrNotExist) {
		f.fail("remove", name, err)
	}
	return err
}

func (f *fenceFS) RemoveAll(name string) error {
	f.gate()
	if err := f.FS.RemoveAll(name); err != nil {
		f.fail("remove", name, err)
	}
	return nil
}

func (f *fenceFS) Rename(oldname, newname string) error {
	f.gate()
	if err := f.FS.Rename(oldname, newname); err != nil {
		f.fail("rename", newname, err)
	}
	return nil
}

func (f *fenceFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f.gate()
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	if err != nil {
		f.fail("reuse", newname, err)
	}
	return &fenceFile{File: file, fs: f, name: newname}, nil
}

func (f *fenceFS) MkdirAll(dir string, perm os.FileMode) error {
	f.gate()
	if err := f.FS.MkdirAll(dir, perm); err != nil {
		f.fail("mkdir", dir, err)
	}
	return nil
}

// Lock is a no-op: the Ledger holds Dir's lock on the real file system for
// its whole life, across incarnations (a parked one can never release it).
func (f *fenceFS) Lock(string) (io.Closer, error) { return nopCloser{}, nil }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// fenceFile fences its file system on a failed write or sync.
type fenceFile struct {
	vfs.File
	fs   *fenceFS
	name string
}

func (f *fenceFile) Write(p []byte) (int, error) {
	f.fs.gate()
	n, err := f.File.Write(p)
	if err != nil {
		f.fs.fail("write", f.name, err)
	}
	return n, nil
}

func (f *fenceFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.gate()
	n, err := f.File.WriteAt(p, off)
	if err != nil {
		f.fs.fail("write", f.name, err)
	}
	return n, nil
}

// Preallocate errors pass through: Pebble treats preallocation as advisory
// and ignores them (an 8 MiB disk refuses the WAL's 70 MiB preallocation
// while the writes themselves still fit).
func (f *fenceFile) Preallocate(off, length int64) error {
	f.fs.gate()
	return f.File.Preallocate(off, length)
}

func (f *fenceFile) Sync() error {
	f.fs.gate()
	if err := f.File.Sync(); err != nil {
		f.fs.fail("sync", f.name, err)
	}
	return nil
}

func (f *fenceFile) SyncData() error {
	f.fs.gate()
	if err := f.File.SyncData(); err != nil {
		f.fs.fail("sync", f.name, err)
	}
	return nil
}

func (f *fenceFile) SyncTo(length int64) (bool, error) {
	f.fs.gate()
	full, err := f.File.SyncTo(length)
	if err != nil {
		f.fs.fail("sync", f.name, err)
	}
	return full, nil
}

// pebbleLogger is one incarnation's Pebble logger.
type pebbleLogger struct {
	l   *Ledger
	inc *incarnation
}

func (p pebbleLogger) Infof(format string, args ...any) {}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.opts.Logger.Error("pebble: "+fmt.Sprintf(format, args...), "incarnation", p.inc.n)
}

// Fatalf must not return (Pebble goes on as if the failed step had worked).
// It fences the incarnation, then unwinds a goroutine of this package with a
// panic that the entry point recovers (the caller gets ErrDiskFailed), and
// parks any other goroutine — one of Pebble's own, which must neither go on
// nor panic the process.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.opts.Logger.Error("pebble fatal: this Pebble instance is fenced off; appends are refused until the ledger recovers",
		"incarnation", p.inc.n, "err", msg)
	p.inc.fs.fence(errors.New("pebble: " + msg))
	if calledFromLedger() {
		panic(fatalUnwind{p.inc.err()})
	}
	park()
}

var ledgerPkgPrefix = reflect.TypeOf(pebbleLogger{}).PkgPath() + "."

// calledFromLedger reports whether the current goroutine runs code of this
// package below its Pebble frames: an entry point (Get, Scan, …) or one of
// its write goroutines, all of which recover a fatalUnwind. Pebble's own
// goroutines (the WAL flusher, flushes, compactions) never do. Test code is
// not an entry point (it reaches Pebble only through them), so a test can
// stand in for a Pebble goroutine.
func calledFromLedger() bool {
	var pcs [callerFramesMax]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs[:])])
	for {
		fr, more := frames.Next()
		if fn, ok := strings.CutPrefix(fr.Function, ledgerPkgPrefix); ok &&
			!strings.HasPrefix(fn, "pebbleLogger.") && fn != "calledFromLedger" && !strings.HasSuffix(fr.File, "_test.go") {
			return true
		}
		if !more {
			return false
		}
	}
}

// probe checks that Dir can take a re-open: enough free space for the WAL it
// replays plus headroom, and a small file written and fsynced.
func (l *Ledger) probe() error {
	dir := l.opts.Dir
	names, err := l.base.List(dir)
	if err != nil {
		return fmt.Errorf("ledger: probe: %w", err)
	}
	var walBytes uint64
	for _, n := range names {
		if strings.HasSuffix(n, ".log") {
			if fi, err := l.base.Stat(l.base.PathJoin(dir, n)); err == nil {
				walBytes += uint64(fi.Size())
			}
		}
	}
	if du, err := l.base.GetDiskUsage(dir); err == nil && du.AvailBytes < walBytes+recoverHeadroomBytes {
		return fmt.Errorf("ledger: probe: %d bytes free in %s; a re-open wants %d (WAL to replay %d + headroom %d)",
			du.AvailBytes, dir, walBytes+recoverHeadroomBytes, walBytes, recoverHeadroomBytes)
	}
	path := l.base.PathJoin(dir, probeFileName)
	f, err := l.base.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("ledger: probe: %w", err)
	}
	buf := make([]byte, probeBytes)
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	err = errors.Join(err, l.base.Remove(path))
	if err != nil {
		return fmt.Errorf("ledger: probe: %w", err)
	}
	return nil
}

// openIncarnation opens a fresh Pebble instance on Dir (WAL replay recovers
// every synced append) and reads its last sequence number. An instance that
// fails while opening is parked like any other and counted.
func (l *Ledger) openIncarnation() (*incarnation, uint64, error) {
	inc := &incarnation{n: l.incarnations.Add(1)}
	inc.fs = newFenceFS(l.base, func(err error) { l.onFence(inc, err) })
	popts := &pebble.Options{
		FS:           inc.fs,
		ReadOnly:     l.opts.ReadOnly,
		MemTableSize: memTableSizeDefault,
		Logger:       pebbleLogger{l: l, inc: inc},
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) { l.onBackgroundError(inc, err) },
			// Pebble's default answer to corruption is Fatalf; fence instead.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				inc.fs.fence(fmt.Errorf("data corruption: %s", info))
			},
		},
	}
	if d := l.opts.SyncIntervalMin; d > 0 {
		popts.WALMinSyncInterval = func() time.Duration { return d }
	}
	var last uint64
	err := inc.write(func(*pebble.DB) error {
		db, err := pebble.Open(l.opts.Dir, popts)
		if err != nil {
			return err
		}
		if last, err = lastSeq(db); err != nil {
			return errors.Join(err, db.Close())
		}
		inc.db = db
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("ledger: open %s: %w", l.opts.Dir, err)
	}
	return inc, last, nil
}

// onFence records an incarnation's failure. It runs in the failing goroutine
// (see fenceFS.onFence): log and count, nothing more.
func (l *Ledger) onFence(inc *incarnation, err error) {
	l.failures.Add(1)
	l.opts.Logger.Error("ledger: disk failed; appends are refused (503) until the disk takes writes again and the ledger re-opens",
		"incarnation", inc.n, "err", err)
}

// onBackgroundError records an error of Pebble's flushes or compactions that
// did not fence the instance (a failed write or sync always fences it, so
// these are read errors and the like). A parked instance's leftovers are
// ignored: they say nothing about the disk the current one uses.
func (l *Ledger) onBackgroundError(inc *incarnation, err error) {
	if l.cur.Load() != inc || inc.err() != nil {
		return
	}
	l.bgErrors.Add(1)
	l.bgMu.Lock()
	l.bgLast, l.bgLastAt = err, time.Now()
	l.bgMu.Unlock()
	l.opts.Logger.Error("ledger: pebble background error", "incarnation", inc.n, "err", err)
}

// Recover replaces a failed Pebble instance with a fresh one once Dir takes
// writes again: it probes the disk (free space for the replay, a small write
// and fsync), opens Pebble on Dir — WAL replay brings back every append that
// returned nil, and perhaps some that failed, never fewer — and then lets
// appends in. It returns nil at once when the ledger is healthy, and an error
// (retry later) while the disk still fails. It never blocks on a parked
// instance. Callers retry it with a backoff of their own (package gateway
// supervises it).
func (l *Ledger) Recover() error {
	l.recoverMu.Lock()
	defer l.recoverMu.Unlock()
	if l.closed.Load() {
		return ErrClosed
	}
	old := l.cur.Load()
	if old.err() == nil {
		return nil
	}
	if n := l.failures.Load(); n >= incarnationsFailedMax {
		return fmt.Errorf("ledger: %d Pebble instances failed in this process and stay parked in memory; restart it to recover: %w", n, old.err())
	}
	if err := l.probe(); err != nil {
		return err
	}
	inc, last, err := l.openIncarnation()
	if err != nil {
		return err
	}
	l.mu.Lock()
	// Appends that were in flight on a failed instance are over: their
	// records are on disk (replayed) or not, and a parked instance writes
	// nothing more. Their sequence numbers no longer hold DurableSeq back.
	old.retired = true
	for s, owner := range l.seqsOpen.m {
		if owner != inc {
			delete(l.seqsOpen.m, s)
		}
	}
	if last > l.seq.Load() {
		l.seq.Store(last) // cannot happen (every record's number was assigned here or found at Open); keep order anyway
	}
	// Numbers handed out to appends that failed are gone for good: a
	// reader may have moved past them, so a restart must not reuse them.
	if err := writeSeqFloor(inc, l.seq.Load()); err != nil {
		l.mu.Unlock()
		return err
	}
	l.cur.Store(inc)
	l.mu.Unlock()
	l.recoveries.Add(1)
	select {
	case l.notify <- struct{}{}: // the relay may go on past the failed appends
	default:
	}
	l.opts.Logger.Info("ledger: recovered on a fresh Pebble instance; appends accepted again", "incarnation", inc.n, "last_seq", last)
	return nil
}

// Failed returns a channel closed when the current Pebble instance fails.
// After Recover succeeds, call it again for the new instance's channel.
func (l *Ledger) Failed() <-chan struct{} { return l.cur.Load().fs.dead }

// Err is nil while the ledger takes appends, ErrClosed after Close, and
// ErrDiskFailed wrapping the cause while its disk has failed. One atomic
// load: cheap enough to ask before every claim.
func (l *Ledger) Err() error {
	if l.closed.Load() {
		return ErrClosed
	}
	return l.cur.Load().err()
}

// Health is a snapshot of the ledger's disk state, for readiness and
// metrics.
type Health struct {
	Err                   error  // as Err
	Failures              uint64 // Pebble instances fenced since Open
	Recoveries            uint64 // successful Recover calls
	BackgroundErrors      uint64 // Pebble background errors that did not fence
	LastBackgroundError   error
	LastBackgroundErrorAt time.Time
}

// Health returns the ledger's disk state.
func (l *Ledger) Health() Health {
	h := Health{Err: l.Err(), Failures: l.failures.Load(), Recoveries: l.recoveries.Load(), BackgroundErrors: l.bgErrors.Load()}
	l.bgMu.Lock()
	h.LastBackgroundError, h.LastBackgroundErrorAt = l.bgLast, l.bgLastAt
	l.bgMu.Unlock()
	return h
}
