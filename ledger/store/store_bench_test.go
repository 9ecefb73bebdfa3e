package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/pgtest"
)

// BenchmarkPut stores grants in batches the way the sink does (Put: one
// transaction per batch), on both drivers. One op is one batch of fresh
// grants (built outside the timer); the database grows during the run, as it
// does during a drop. Besides wall time (dominated by the commit's fsync and,
// on a shared machine, by neighbours) it reports CPU per op, steadier:
// cpu-µs/op of this process (the driver; all of SQLite) and, for PostgreSQL,
// pg-cpu-µs/op of the server backend (the pool is cut to one connection so
// that one backend does the work).
//
//	go test ./ledger/store -run '^$' -bench BenchmarkPut -benchmem -count 6
func BenchmarkPut(b *testing.B) {
	for _, driver := range []string{"sqlite", "postgres"} {
		for _, batch := range []int{1, 64, 256, BatchMax} {
			b.Run(fmt.Sprintf("driver=%s/batch=%d", driver, batch), func(b *testing.B) {
				s := openForBench(b, driver)
				ctx := context.Background()
				backend := 0
				if driver == "postgres" {
					s.db.SetMaxOpenConns(1)
					if err := s.db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
						b.Fatal(err)
					}
				}
				grants := make([]Grant, batch)
				next := 0
				var cpu, pgCPU time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					for k := range grants {
						grants[k] = grant(next, "bench", fmt.Sprintf("u%d", next%100000))
						next++
					}
					cpu0, pg0 := processCPU(b), backendCPU(b, backend)
					b.StartTimer()
					res, err := s.Put(ctx, grants)
					b.StopTimer()
					cpu += processCPU(b) - cpu0
					pgCPU += backendCPU(b, backend) - pg0
					if err != nil || res.Stored != batch {
						b.Fatalf("put: stored %d of %d: %v", res.Stored, batch, err)
					}
					b.StartTimer()
				}
				b.StopTimer()
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
				if backend != 0 {
					b.ReportMetric(float64(pgCPU.Microseconds())/float64(b.N), "pg-cpu-µs/op")
				}
			})
		}
	}
}

func openForBench(b *testing.B, driver string) *Store {
	dsn := filepath.Join(b.TempDir(), "grants.db")
	if driver == "postgres" {
		dsn = pgtest.Fresh(b)
	}
	s, err := Open(context.Background(), driver, dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// processCPU is this process's user + system CPU time.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU is a local PostgreSQL backend's CPU time (/proc/<pid>/schedstat,
// in nanoseconds; 0 when pid is 0).
func backendCPU(b *testing.B, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/schedstat")
	if err != nil {
		b.Fatalf("PostgreSQL backend's CPU (is the server local?): %v", err)
	}
	ns, err := strconv.ParseInt(strings.Fields(string(raw))[0], 10, 64)
	if err != nil {
		b.Fatalf("schedstat of %d: %q: %v", pid, raw, err)
	}
	return time.Duration(ns)
}
