package ledger

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// flakyDisk fails write-kind operations (EIO) at random while armed: WAL
// syncs most often, any other write, create, rename or sync now and then.
type flakyDisk struct {
	armed atomic.Bool
	mu    sync.Mutex
	rng   *rand.Rand
}

func (d *flakyDisk) String() string { return "flaky" }

func (d *flakyDisk) MaybeError(op errorfs.Op) error {
	if !d.armed.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsWrite || op.Kind == errorfs.OpFileClose || op.Kind == errorfs.OpLock || op.Kind == errorfs.OpFilePreallocate {
		return nil
	}
	d.mu.Lock()
	p := d.rng.Float64()
	d.mu.Unlock()
	limit := 0.002
	if op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo {
		limit = 0.02
	}
	if p < limit {
		return fmt.Errorf("%s %s: %w", "injected", op.Path, syscall.EIO)
	}
	return nil
}

// TestFlakyDiskThenPowerLossKeepsEveryAck (passes: evidence, not a
// defect): appends under load on a
// disk that fails writes and syncs at random; each failure is recovered
// (Recover on the same directory) and the failed grants are appended again
// (as the settler does). A power loss at the end (only synced bytes
// survive) must keep every append that returned nil, each once.
func TestFlakyDiskThenPowerLossKeepsEveryAck(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			flaky := &flakyDisk{rng: rand.New(rand.NewSource(seed))}
			l, err := Open(Options{Dir: "/ledger", FS: errorfs.Wrap(mem, flaky)})
			if err != nil {
				t.Fatal(err)
			}
			var (
				mu     sync.Mutex
				acked  = map[string]bool{}
				failed = map[string]Record{}
			)
			appendAll := func(recs []Record) {
				var wg sync.WaitGroup
				ch := make(chan Record)
				for w := 0; w < 16; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for r := range ch {
							r := r
							_, err := l.Append(context.Background(), &r)
							mu.Lock()
							if err == nil {
								acked[r.GrantID] = true
								delete(failed, r.GrantID)
							} else {
								if !errors.Is(err, ErrDiskFailed) {
									t.Errorf("append %s: %v", r.GrantID, err)
								}
								r.Seq = 0
								failed[r.GrantID] = r
							}
							mu.Unlock()
						}
					}()
				}
				for _, r := range recs {
					ch <- r
				}
				close(ch)
				wg.Wait()
			}
			incidents := 0
			for round := 0; round < 40 && incidents < incarnationsFailedMax-1; round++ {
				recs := make([]Record, 200)
				for i := range recs {
					recs[i] = Record{GrantID: fmt.Sprintf("r%02d-%03d", round, i), Campaign: "c", User: fmt.Sprint(i)}
				}
				flaky.armed.Store(true)
				appendAll(recs)
				flaky.armed.Store(false)
				if l.Err() != nil {
					incidents++
					if err := l.Recover(); err != nil {
						t.Fatalf("round %d: Recover: %v", round, err)
					}
				}
				// the settler: append what failed, on a healthy disk
				mu.Lock()
				again := make([]Record, 0, len(failed))
				for _, r := range failed {
					again = append(again, r)
				}
				mu.Unlock()
				appendAll(again)
				if l.Err() != nil || len(failed) != 0 {
					t.Fatalf("round %d: %d failed on a healthy disk: %v", round, len(failed), l.Err())
				}
			}
			t.Logf("%d incidents, %d acked, last seq %d, durable %d", incidents, len(acked), l.LastSeq(), l.DurableSeq())
			if l.DurableSeq() != l.LastSeq() {
				t.Errorf("DurableSeq %d != LastSeq %d with nothing in flight", l.DurableSeq(), l.LastSeq())
			}
			// Power loss: only what was synced survives.
			crashed := mem.CrashClone(vfs.CrashCloneCfg{})
			l2, err := Open(Options{Dir: "/ledger", FS: crashed})
			if err != nil {
				t.Fatalf("open after power loss: %v", err)
			}
			defer l2.Close()
			seen := map[string]bool{}
			var last uint64
			if err := l2.Scan(0, ^uint64(0), func(r *Record) error {
				if seen[r.GrantID] || r.Seq <= last {
					return fmt.Errorf("grant %s (seq %d after %d) twice or out of order", r.GrantID, r.Seq, last)
				}
				seen[r.GrantID], last = true, r.Seq
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			lost := 0
			for id := range acked {
				if !seen[id] {
					lost++
					if lost < 5 {
						t.Errorf("acknowledged grant %s lost in the power loss", id)
					}
				}
			}
			if lost > 0 {
				t.Fatalf("%d of %d acknowledged grants lost", lost, len(acked))
			}
		})
	}
}
