package ledger

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// processCPU is this process's user + system CPU time.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAppend measures a synced append of a fresh grant from 64
// goroutines per CPU (the claim path's shape: group commit has company),
// with the existence read (Append) and without it (AppendNew), on the real
// disk and on an in-memory file system (where a sync costs nothing, so the
// figure is the append's CPU). The ledger holds prefill records first, so the
// read meets a realistic memtable. cpu-ns/op is the process's CPU (every
// goroutine, Pebble's too) per append: steadier than wall time on a shared
// machine.
//
//	go test ./ledger -run '^$' -bench BenchmarkAppend -benchmem -count 6
func BenchmarkAppend(b *testing.B) {
	const prefill = 50_000
	for _, fs := range []string{"mem", "disk"} {
		for _, mode := range []string{"Append", "AppendNew"} {
			b.Run(fmt.Sprintf("fs=%s/mode=%s", fs, mode), func(b *testing.B) {
				o := Options{Dir: b.TempDir()}
				if fs == "mem" {
					o.FS, o.Dir = vfs.NewMem(), "/ledger"
				}
				l, err := Open(o)
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				ctx := context.Background()
				var wg sync.WaitGroup
				for w := 0; w < 64; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := w; i < prefill; i += 64 {
							if _, err := l.AppendNew(ctx, &Record{GrantID: fmt.Sprintf("%032x", i), Campaign: "c", User: "u"}, l.Epoch()); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				var next sync.Mutex
				n := prefill
				b.SetParallelism(64)
				b.ReportAllocs()
				cpu0 := processCPU(b)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					r := Record{Campaign: "d11", User: "user-123456", Device: "device-1", ClientIP: "203.0.113.7", Shard: 3,
						GrantedAtNanos: 1795442083123456789, ValidUntil: 1796046883, FaceValue: 500}
					for pb.Next() {
						next.Lock()
						id := fmt.Sprintf("%032x", n)
						n++
						next.Unlock()
						r.GrantID, r.Seq = id, 0
						var err error
						if mode == "Append" {
							_, err = l.Append(ctx, &r)
						} else {
							_, err = l.AppendNew(ctx, &r, l.Epoch())
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
