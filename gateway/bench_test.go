package gateway_test

import (
	"encoding/json"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/flashgate/flashgate/internal/procstat"
	"github.com/flashgate/flashgate/internal/stack"
)

// benchRules are three limit windows (per IP, per device, per user) that
// honest traffic never reaches: every claim of the rules=3windows run pays
// for counting them, none is refused. (Every benchmark request comes from
// the one in-memory peer, hence the per-IP limit.)
const benchRules = `{"limits":[
	{"name":"bench-ip","key":"ip","windows":[{"limit":1000000000,"period":"1m"}]},
	{"name":"bench-device","key":"device","windows":[{"limit":1000000,"period":"1m"}]},
	{"name":"bench-user","key":"user","windows":[{"limit":1000000,"period":"1m"}]}]}`

// BenchmarkClaim measures the whole claim handler — parse, JWT verify, Lua
// script on a real redis-server, synced Pebble append, answer — over an
// in-memory listener, from b.RunParallel clients (GOMAXPROCS × 64 goroutines,
// so the ledger's group commit has company). rules=3windows runs with
// benchRules in force (each user on its own device). Besides ns/op it
// reports CPU per claim — steadier than throughput on a shared machine —
// of this process (gateway and clients: user+system from getrusage) and of
// redis-server (/proc/<pid>/stat, 10 ms ticks).
//
//	go test ./gateway -run '^$' -bench BenchmarkClaim -benchmem
func BenchmarkClaim(b *testing.B) {
	ln := fasthttputil.NewInmemoryListener()
	s := stack.Start(b, stack.Options{PublicListener: ln})
	for _, bc := range []struct {
		name   string
		shards int
		rules  string
	}{{"shards=1", 1, ""}, {"shards=16", 16, ""}, {"rules=3windows", 16, benchRules}} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.rules != "" {
				var v any
				if err := json.Unmarshal([]byte(bc.rules), &v); err != nil {
					b.Fatal(err)
				}
				if code, body := s.Admin("PUT", "/admin/v1/risk/rules", v); code != 200 {
					b.Fatalf("PUT rules: %d %s", code, body)
				}
				defer s.Admin("PUT", "/admin/v1/risk/rules", map[string]any{})
			}
			id := fmt.Sprintf("bench-%d-%d", bc.shards, time.Now().UnixNano())
			s.CreateCampaign(stack.Campaign{ID: id, Stock: 1 << 40, Shards: bc.shards, PerUserLimit: 1000})
			const users = 4096
			tokens, devices := make([]string, users), make([]string, users)
			for i := range tokens {
				tokens[i] = "Bearer " + stack.Token(fmt.Sprintf("bench-user-%d", i))
				devices[i] = "bench-device"
				if bc.rules != "" {
					devices[i] = fmt.Sprintf("bench-device-%d", i)
				}
			}
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxConnsPerHost: 4096}
			uri := "http://gateway/v1/campaigns/" + id + "/claim"
			var n, failed atomic.Int64
			var lastFailure atomic.Value
			b.SetParallelism(64)
			b.ReportAllocs()
			cpu0, redis0 := selfCPU(b), redisCPU(b, s)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					i := n.Add(1)
					req.Reset()
					req.SetRequestURI(uri)
					req.Header.SetMethod("POST")
					req.Header.Set("Authorization", tokens[i%users])
					req.Header.Set("X-Device-ID", devices[i%users])
					if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						failed.Add(1)
						lastFailure.Store(fmt.Sprintf("%v %d %s", err, resp.StatusCode(), resp.Body()))
					}
				}
			})
			b.StopTimer()
			claims := float64(n.Load())
			b.ReportMetric(float64((selfCPU(b)-cpu0).Microseconds())/claims, "proc-cpu-µs/claim")
			b.ReportMetric(float64((redisCPU(b, s)-redis0).Microseconds())/claims, "redis-cpu-µs/claim")
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d of %d claims not granted (last: %v)", f, n.Load(), lastFailure.Load())
			}
			b.ReportMetric(claims/b.Elapsed().Seconds(), "claims/s")
		})
	}
}

// selfCPU is this process's user + system CPU time so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func redisCPU(b *testing.B, s *stack.Stack) time.Duration {
	d, err := procstat.CPU(s.Redis.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return d
}
