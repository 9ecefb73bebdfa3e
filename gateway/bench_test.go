package gateway_test

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/flashgate/flashgate/internal/stack"
)

// BenchmarkClaim measures the whole claim handler — parse, JWT verify, Lua
// script on a real redis-server, synced Pebble append, answer — over an
// in-memory listener, from b.RunParallel clients (GOMAXPROCS × 64 goroutines,
// so the ledger's group commit has company).
//
//	go test ./gateway -run '^$' -bench BenchmarkClaim -benchmem
func BenchmarkClaim(b *testing.B) {
	ln := fasthttputil.NewInmemoryListener()
	s := stack.Start(b, stack.Options{PublicListener: ln})
	for _, shards := range []int{1, 16} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			id := fmt.Sprintf("bench-%d-%d", shards, time.Now().UnixNano())
			s.CreateCampaign(stack.Campaign{ID: id, Stock: 1 << 40, Shards: shards, PerUserLimit: 1000})
			const users = 4096
			tokens := make([]string, users)
			for i := range tokens {
				tokens[i] = "Bearer " + stack.Token(fmt.Sprintf("bench-user-%d", i))
			}
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxConnsPerHost: 4096}
			uri := "http://gateway/v1/campaigns/" + id + "/claim"
			var n, failed atomic.Int64
			b.SetParallelism(64)
			b.ReportAllocs()
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
					req.Header.Set("X-Device-ID", "bench-device")
					if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						failed.Add(1)
					}
				}
			})
			b.StopTimer()
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d of %d claims not granted", f, n.Load())
			}
			b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "claims/s")
		})
	}
}
