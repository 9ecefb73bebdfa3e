package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// diskFull is an errorfs injector: while on, every write-kind operation but
// Close and Lock fails with ENOSPC, as on a full disk.
type diskFull struct{ on atomic.Bool }

func (d *diskFull) String() string { return "disk-full" }

func (d *diskFull) MaybeError(op errorfs.Op) error {
	if !d.on.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsWrite || op.Kind == errorfs.OpFileClose || op.Kind == errorfs.OpLock {
		return nil
	}
	return fmt.Errorf("%s: %w", op.Path, syscall.ENOSPC)
}

// appendMany appends n records per worker; it returns the grant ids whose
// Append returned nil and every error.
func appendMany(t *testing.T, l *Ledger, prefix string, workers, n int) (acked []string, errs []error) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				r := Record{GrantID: fmt.Sprintf("%s-%02d-%03d", prefix, w, i), Campaign: "c", User: fmt.Sprint(w)}
				_, err := l.Append(context.Background(), &r)
				mu.Lock()
				if err == nil {
					acked = append(acked, r.GrantID)
				} else {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return acked, errs
}

// TestLedgerDiskFullAnswersErrDiskFailedAndRecovers: on ccdf315 a WAL write
// that fails (ENOSPC) reached Pebble, which called Fatalf, which panicked the
// process. Now every append answers ErrDiskFailed wrapping ENOSPC, nothing
// that failed is acknowledged, DurableSeq holds before the failed appends,
// every read refuses, Recover refuses while the disk is full and, once it is
// not, re-opens with every acknowledged grant present.
func TestLedgerDiskFullAnswersErrDiskFailedAndRecovers(t *testing.T) {
	dir := t.TempDir()
	full := &diskFull{}
	l, err := Open(Options{Dir: dir, FS: errorfs.Wrap(vfs.Default, full)})
	if err != nil {
		t.Fatal(err)
	}
	acked, errs := appendMany(t, l, "before", 16, 20)
	if len(errs) != 0 || len(acked) != 320 {
		t.Fatalf("healthy disk: %d acked, errors %v", len(acked), errs)
	}
	durableBefore := l.DurableSeq()

	full.on.Store(true)
	during, errs := appendMany(t, l, "during", 16, 20)
	if len(errs) == 0 {
		t.Fatalf("a full disk failed no append (%d acked)", len(during))
	}
	for _, err := range errs {
		if !errors.Is(err, ErrDiskFailed) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("append on a full disk: %v, want ErrDiskFailed wrapping ENOSPC", err)
		}
	}
	acked = append(acked, during...) // an append that returned nil before the fence is synced
	if err := l.Err(); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("Err() = %v", err)
	}
	select {
	case <-l.Failed():
	default:
		t.Fatal("Failed() not closed")
	}
	if _, _, err := l.Get(acked[0]); !errors.Is(err, ErrDiskFailed) {
		t.Errorf("Get while failed: %v", err)
	}
	if err := l.Scan(0, ^uint64(0), func(*Record) error { return nil }); !errors.Is(err, ErrDiskFailed) {
		t.Errorf("Scan while failed: %v", err)
	}
	if _, err := l.Cursor("relay"); !errors.Is(err, ErrDiskFailed) {
		t.Errorf("Cursor while failed: %v", err)
	}
	if err := l.SetCursor("relay", 1); !errors.Is(err, ErrDiskFailed) {
		t.Errorf("SetCursor while failed: %v", err)
	}
	if d := l.DurableSeq(); d < durableBefore || d >= l.LastSeq() {
		t.Errorf("DurableSeq %d while failed: want ≥ %d and below the failed appends (last %d)", d, durableBefore, l.LastSeq())
	}
	if err := l.Recover(); err == nil || l.Err() == nil {
		t.Fatalf("Recover on a full disk: %v", err)
	}

	full.on.Store(false)
	if err := l.Recover(); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err() after Recover: %v", err)
	}
	for _, id := range acked {
		if _, ok, err := l.Get(id); err != nil || !ok {
			t.Fatalf("acknowledged grant %s after Recover: ok=%v err=%v", id, ok, err)
		}
	}
	after, errs := appendMany(t, l, "after", 8, 10)
	if len(errs) != 0 {
		t.Fatalf("appends after Recover: %v", errs[0])
	}
	acked = append(acked, after...)
	if l.DurableSeq() != l.LastSeq() {
		t.Errorf("DurableSeq %d != LastSeq %d after Recover", l.DurableSeq(), l.LastSeq())
	}
	if h := l.Health(); h.Failures != 1 || h.Recoveries != 1 || h.Err != nil {
		t.Errorf("health %+v", h)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// A fresh process sees the same: every acknowledged grant, once, in order.
	l, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := map[string]bool{}
	var last uint64
	if err := l.Scan(0, ^uint64(0), func(r *Record) error {
		if seen[r.GrantID] || r.Seq <= last {
			return fmt.Errorf("grant %s (seq %d after %d) twice or out of order", r.GrantID, r.Seq, last)
		}
		seen[r.GrantID], last = true, r.Seq
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range acked {
		if !seen[id] {
			t.Fatalf("acknowledged grant %s lost", id)
		}
	}
}

// TestPebbleFatalfFencesInsteadOfKillingProcess: on ccdf315 the ledger's
// Pebble logger panicked on Fatalf, killing the process from whatever
// goroutine Pebble called it in. Now a Fatalf from Pebble's own goroutine
// parks that goroutine (it must not go on as if the step had worked) and
// fails the ledger; one from a goroutine of the ledger unwinds to the entry
// point as ErrDiskFailed; and Recover brings the ledger back.
func TestPebbleFatalfFencesInsteadOfKillingProcess(t *testing.T) {
	l, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := Record{GrantID: "g1", Campaign: "c", User: "u"}
	if _, err := l.Append(context.Background(), &r); err != nil {
		t.Fatal(err)
	}

	inc := l.cur.Load()
	log := pebbleLogger{l: l, inc: inc}
	var returned atomic.Bool
	go func() { // stands in for a Pebble goroutine (flush, WAL flusher)
		log.Fatalf("MANIFEST sync failed: %s", "injected")
		returned.Store(true)
	}()
	select {
	case <-l.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("Fatalf did not fail the ledger")
	}
	if err := l.Err(); !errors.Is(err, ErrDiskFailed) || !strings.Contains(err.Error(), "MANIFEST sync failed: injected") {
		t.Fatalf("Err() = %v", err)
	}
	if _, err := l.Append(context.Background(), &Record{GrantID: "g2", Campaign: "c", User: "u"}); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("append after Fatalf: %v", err)
	}
	// Fatalf inside a ledger goroutine unwinds to it instead of parking.
	err = inc.write(func(*pebble.DB) error { log.Fatalf("fatal commit error: %s", "injected"); return nil })
	if !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("write through Fatalf: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if returned.Load() {
		t.Fatal("Fatalf returned to a Pebble goroutine")
	}

	if err := l.Recover(); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := l.Get("g1"); err != nil || !ok || got.GrantID != "g1" {
		t.Fatalf("g1 after Recover: %+v %v %v", got, ok, err)
	}
	if _, err := l.Append(context.Background(), &Record{GrantID: "g2", Campaign: "c", User: "u"}); err != nil {
		t.Fatalf("append after Recover: %v", err)
	}
}
