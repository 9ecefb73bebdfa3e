package risk

import (
	"context"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/flashgate/flashgate/antifraud"
)

// BenchmarkCheck: one claim's risk check with three limit windows (per IP,
// per device, per user; none binds) against a real redis-server, one claim
// after another: ns/op is mostly Redis round trips.
//
//	go test ./gateway/risk -run '^$' -bench BenchmarkCheck -benchmem
func BenchmarkCheck(b *testing.B) {
	r, err := Open(context.Background(), embeddedJS(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	<-r.Ready()
	r.SetRedis(redisClient(b))
	hour := antifraud.Duration(time.Hour)
	rules := antifraud.Rules{Limits: []antifraud.Limit{
		{Name: "ip", Key: antifraud.KeyIP, Windows: []antifraud.Window{{Limit: 1 << 40, Period: hour}}},
		{Name: "device", Key: antifraud.KeyDevice, Windows: []antifraud.Window{{Limit: 1 << 40, Period: hour}}},
		{Name: "user", Key: antifraud.KeyUser, Windows: []antifraud.Window{{Limit: 1 << 40, Period: hour}}},
	}}
	if err := r.PutRules(ctx, "bench", rules); err != nil {
		b.Fatal(err)
	}
	const users = 4096
	claims := make([]Claim, users)
	for i := range claims {
		claims[i] = Claim{IP: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), Device: "device-" + strconv.Itoa(i), User: "user-" + strconv.Itoa(i)}
	}
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if v := r.Check(ctx, claims[i%users], now); !v.OK {
			b.Fatalf("claim %d refused: %+v", i, v)
		}
	}
}
