package risk

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/wait"
)

// fakeClock is an injected clock tests move by hand.
type fakeClock struct{ nanos atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.nanos.Store(t.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.nanos.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.nanos.Add(int64(d)) }

// embeddedJS starts an in-process JetStream server for the test.
func embeddedJS(t testing.TB) jetstream.JetStream {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// running opens a Risk on its own JetStream and runs it until the test
// ends (or stop is called); it returns once the bucket is applied.
func running(t *testing.T, o Options) (r *Risk, stop func()) {
	t.Helper()
	r, err := Open(context.Background(), embeddedJS(t), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("risk bucket not applied within 10s")
	}
	return r, stop
}

func redisClient(t testing.TB) rueidis.Client {
	t.Helper()
	srv := redisserver.Start(t, redisserver.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestStaleForFollowsTheInjectedClock: the watch's loss is stamped with
// Options.Clock, so staleness is measured on the caller's clock — here a
// fake one years away from the wall clock, moved without waiting.
func TestStaleForFollowsTheInjectedClock(t *testing.T) {
	clock := newFakeClock(time.Date(2031, 11, 11, 10, 0, 0, 0, time.UTC))
	r, stop := running(t, Options{Clock: clock.Now})
	if !r.Synced() || r.StaleFor(clock.Now()) != 0 {
		t.Fatalf("live watch: synced=%v stale for %v", r.Synced(), r.StaleFor(clock.Now()))
	}
	stop() // the watch ends: down from the fake clock's now
	clock.Advance(90 * time.Second)
	if got := r.StaleFor(clock.Now()); r.Synced() || got != 90*time.Second {
		t.Fatalf("90s after the watch ended on the injected clock: synced=%v stale for %v, want 1m30s", r.Synced(), got)
	}
}

// TestOverLimitCacheEvictsResetWindows: the cache of keys over a limit keeps
// only those whose window has not reset.
func TestOverLimitCacheEvictsResetWindows(t *testing.T) {
	r := &Risk{}
	now := time.Now()
	for i, until := range []time.Time{now.Add(-time.Second), now.Add(time.Minute), now.Add(-time.Millisecond)} {
		r.overLimit.Store(i, until.UnixNano())
		r.overN.Add(1)
	}
	r.evictOverLimitAt(now)
	if r.overN.Load() != 1 {
		t.Fatalf("%d entries left, want 1", r.overN.Load())
	}
	if _, ok := r.overLimit.Load(1); !ok {
		t.Fatal("the live entry was evicted")
	}
}

// TestLimitersBuiltOncePerRuleSet: a rule set's limiters are built when it
// is installed — without Redis none, and the rule fails closed; SetRedis
// compiles the set again with them — and Check builds none: every claim of
// a set uses the same limiters.
func TestLimitersBuiltOncePerRuleSet(t *testing.T) {
	clock := newFakeClock(time.Now())
	var limited atomic.Int64
	r, _ := running(t, Options{Clock: clock.Now, Metrics: Metrics{RateLimited: func(string) { limited.Add(1) }}})
	rules := antifraud.Rules{Limits: []antifraud.Limit{
		{Name: "per-user", Key: antifraud.KeyUser, Windows: []antifraud.Window{{Limit: 2, Period: antifraud.Duration(time.Minute)}, {Limit: 100, Period: antifraud.Duration(time.Hour)}}},
	}}
	if err := r.PutRules(context.Background(), "test", rules); err != nil {
		t.Fatal(err)
	}
	set := r.rules.Load()
	if len(set.limits) != 1 || len(set.limits[0].windows) != 2 || set.limits[0].windows[0].lim != nil {
		t.Fatalf("rules installed before Redis: %+v", set.limits)
	}
	ctx := context.Background()
	claim := Claim{IP: netip.MustParseAddr("192.0.2.1"), Device: "d", User: "u1"}
	if v := r.Check(ctx, claim, clock.Now()); v.OK || v.Status != status.Unavailable || v.Message != "rate limit store unavailable" {
		t.Fatalf("fail-closed rule without Redis: %+v", v)
	}

	r.SetRedis(redisClient(t))
	set = r.rules.Load()
	lims := []any{set.limits[0].windows[0].lim, set.limits[0].windows[1].lim}
	if lims[0] == nil || lims[1] == nil {
		t.Fatal("SetRedis did not build the limiters")
	}
	for i, want := range []bool{true, true, false, false} { // the third and fourth claim are over 2/min
		v := r.Check(ctx, claim, clock.Now())
		if v.OK != want || (!v.OK && (v.Status != status.RateLimited || v.Which != antifraud.KeyUser || v.RetryAfter < 1 || v.Message != "limit per-user reached")) {
			t.Fatalf("claim %d: %+v, want OK=%v", i, v, want)
		}
	}
	if r.rules.Load() != set || set.limits[0].windows[0].lim != lims[0] || set.limits[0].windows[1].lim != lims[1] {
		t.Fatal("Check rebuilt the rule set or its limiters")
	}
	if r.overN.Load() != 1 || limited.Load() != 2 {
		t.Fatalf("over-limit cache holds %d keys, %d refusals counted; want 1 and 2", r.overN.Load(), limited.Load())
	}
	if v := r.Check(ctx, Claim{IP: claim.IP, Device: "d", User: "u2"}, clock.Now()); !v.OK {
		t.Fatalf("another user: %+v", v)
	}
}

// TestBlacklistWriteIsInForceOnReturn: a put answers once the entry blocks
// here, a delete once it no longer does, and both are in the audit log.
func TestBlacklistWriteIsInForceOnReturn(t *testing.T) {
	clock := newFakeClock(time.Date(2031, 11, 11, 10, 0, 0, 0, time.UTC))
	r, _ := running(t, Options{Clock: clock.Now})
	ctx := context.Background()
	ip := netip.MustParseAddr("203.0.113.9")
	e, err := r.PutBlacklist(ctx, "risk:0000", antifraud.Entry{Kind: antifraud.KindIP, Value: ip.String(), Reason: "farm"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !e.CreatedAt.Equal(clock.Now()) || e.ExpiresAt == nil || !e.ExpiresAt.Equal(clock.Now().Add(time.Hour)) || e.Author != "risk:0000" {
		t.Fatalf("entry %+v: created and expiring on the injected clock, by its author", e)
	}
	if v := r.Check(ctx, Claim{IP: ip, Device: "d", User: "u"}, clock.Now()); v.OK || v.Status != status.Blocked || v.Which != antifraud.KindIP {
		t.Fatalf("after the put: %+v", v)
	}
	// A second put of the same entry (a new reason) is in force on return too.
	if _, err := r.PutBlacklist(ctx, "risk:0000", antifraud.Entry{Kind: antifraud.KindIP, Value: ip.String(), Reason: "farm, confirmed"}, 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Blacklist(clock.Now(), 10); len(got) != 1 || got[0].Reason != "farm, confirmed" || got[0].ExpiresAt != nil {
		t.Fatalf("after the second put: %+v", got)
	}
	if err := r.DeleteBlacklist(ctx, "risk:0000", antifraud.KindIP, ip.String()); err != nil {
		t.Fatal(err)
	}
	if v := r.Check(ctx, Claim{IP: ip, Device: "d", User: "u"}, clock.Now()); !v.OK {
		t.Fatalf("after the delete: %+v", v)
	}
	if err := r.DeleteBlacklist(ctx, "risk:0000", antifraud.KindIP, ip.String()); err != ErrNotFound {
		t.Fatalf("deleting a missing entry: %v", err)
	}
	var log []AuditEntry
	wait.For(t, 5*time.Second, "three audit entries", func() bool {
		log, err = r.AuditLog(ctx, 10)
		return err == nil && len(log) == 3
	})
	if log[0].Action != "blacklist.delete" || log[2].Action != "blacklist.put" || !log[2].At.Equal(clock.Now()) || string(log[2].Before) != "null" {
		t.Fatalf("audit log: %+v", log)
	}
}
