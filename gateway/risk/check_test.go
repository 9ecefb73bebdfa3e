package risk

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/internal/redisserver"
)

// roundTrips counts the calls a client makes to Redis for limit counts (a
// script): one Do or DoMulti is one round trip. (The alert gate's calls
// are not counted.)
type roundTrips struct {
	rueidis.Client
	do, multi atomic.Int64
}

func (c *roundTrips) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if name := cmd.Commands()[0]; name == "EVALSHA" || name == "EVAL" {
		c.do.Add(1)
	}
	return c.Client.Do(ctx, cmd)
}

func (c *roundTrips) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.multi.Add(1)
	return c.Client.DoMulti(ctx, cmds...)
}

func (c *roundTrips) take() (do, multi int64) { return c.do.Swap(0), c.multi.Swap(0) }

// TestClaimWindowsInOneRoundTrip: the windows of every rule of a claim are
// counted in one round trip, and the verdict is the one of checking them
// one after the other in rule order: the first window that refuses
// answers, shadow rules only count, a known-over key answers from the
// cache (and the windows after it are not counted), user_devices admits
// known devices.
func TestClaimWindowsInOneRoundTrip(t *testing.T) {
	clock := newFakeClock(time.Now())
	var limited, shadowed atomic.Int64
	r, _ := running(t, Options{Clock: clock.Now, Metrics: Metrics{
		RateLimited:   func(string) { limited.Add(1) },
		ShadowBlocked: func(string) { shadowed.Add(1) },
	}})
	rt := &roundTrips{Client: redisClient(t)}
	r.SetRedis(rt)
	minute := antifraud.Duration(time.Minute)
	rules := antifraud.Rules{Limits: []antifraud.Limit{
		{Name: "ip-shadow", Key: antifraud.KeyIP, Windows: []antifraud.Window{{Limit: 1, Period: minute}}, Shadow: true},
		{Name: "per-device", Key: antifraud.KeyDevice, Windows: []antifraud.Window{{Limit: 3, Period: minute}, {Limit: 100, Period: antifraud.Duration(time.Hour)}}},
		{Name: "devices", Key: antifraud.KeyUserDevices, Windows: []antifraud.Window{{Limit: 2, Period: minute}}},
		{Name: "per-user", Key: antifraud.KeyUser, Windows: []antifraud.Window{{Limit: 2, Period: minute}}},
	}}
	if err := r.PutRules(context.Background(), "test", rules); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.7")
	rt.take()
	for i, c := range []struct {
		user, device string
		ok           bool
		which        string
		multi        int64 // DoMulti round trips (and no Do)
	}{
		{"u1", "phone", true, "", 2},                       // 5 windows, one DoMulti; Redis has no script yet: a second one with EVAL
		{"u1", "tablet", true, "", 1},                      // the IP's shadow rule reached: counted (and cached), not refused
		{"u1", "farm", false, antifraud.KeyUserDevices, 1}, // a third device of u1; per-user, after it, counted too (u1 at 3)
		{"u2", "phone", true, "", 1},                       // phone at 2 of 3
		{"u3", "phone", true, "", 1},                       // phone at 3 of 3
		{"u4", "phone", false, antifraud.KeyDevice, 1},     // phone over: refused by per-device, and cached
		{"u5", "phone", false, antifraud.KeyDevice, 0},     // both the IP and the device cached: no round trip, nothing after counted
		{"u6", "watch", true, "", 1},                       //
		{"u6", "watch", true, "", 1},                       // u6 at 2 of 2
		{"u6", "watch", false, antifraud.KeyUser, 1},       // u6 at 3
		{"u1", "phone", false, antifraud.KeyDevice, 0},     // cached
	} {
		v := r.Check(ctx, Claim{IP: ip, Device: c.device, User: c.user}, clock.Now())
		do, multi := rt.take()
		if v.OK != c.ok || v.Which != c.which || (!v.OK && v.Status != status.RateLimited) {
			t.Fatalf("claim %d (%s on %s): %+v, want ok=%v which=%q", i, c.user, c.device, v, c.ok, c.which)
		}
		if do != 0 || multi != c.multi {
			t.Fatalf("claim %d: %d Do + %d DoMulti round trips, want 0 + %d", i, do, multi, c.multi)
		}
	}
	if limited.Load() != 5 || shadowed.Load() != 10 {
		t.Fatalf("%d refusals counted (want 5), %d shadow blocks (want 10)", limited.Load(), shadowed.Load())
	}
	// One window: through its ulule limiter, one Do.
	rules.Limits = rules.Limits[3:]
	if err := r.PutRules(ctx, "test", rules); err != nil {
		t.Fatal(err)
	}
	rt.take()
	if v := r.Check(ctx, Claim{IP: ip, Device: "d", User: "u7"}, clock.Now()); !v.OK {
		t.Fatalf("one window: %+v", v)
	}
	if do, multi := rt.take(); do != 1 || multi != 0 {
		t.Fatalf("one window: %d Do + %d DoMulti, want 1 + 0", do, multi)
	}
}

// TestBatchedWindowsFailOpenOrClosed: with Redis down, every window of the
// batch fails; fail_open rules are skipped and the first fail-closed one
// answers 503.
func TestBatchedWindowsFailOpenOrClosed(t *testing.T) {
	var failed atomic.Int64
	r, _ := running(t, Options{Metrics: Metrics{LimitError: func(string) { failed.Add(1) }}})
	srv := redisserver.Start(t, redisserver.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	r.SetRedis(c)
	minute := antifraud.Duration(time.Minute)
	open := antifraud.Limit{Name: "ip-open", Key: antifraud.KeyIP, Windows: []antifraud.Window{{Limit: 5, Period: minute}, {Limit: 50, Period: antifraud.Duration(time.Hour)}}, FailOpen: true}
	closed := antifraud.Limit{Name: "user-closed", Key: antifraud.KeyUser, Windows: []antifraud.Window{{Limit: 5, Period: minute}}}
	ctx := context.Background()
	claim := Claim{IP: netip.MustParseAddr("192.0.2.8"), Device: "d", User: "u"}
	if err := r.PutRules(ctx, "test", antifraud.Rules{Limits: []antifraud.Limit{open, closed}}); err != nil {
		t.Fatal(err)
	}
	if v := r.Check(ctx, claim, time.Now()); !v.OK {
		t.Fatalf("Redis up: %+v", v)
	}
	srv.Kill()
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if v := r.Check(tctx, claim, time.Now()); v.OK || v.Status != status.Unavailable || v.Message != "rate limit store unavailable" {
		t.Fatalf("a fail-closed rule with Redis down: %+v", v)
	}
	if failed.Load() != 3 {
		t.Fatalf("%d limit errors counted, want 3 (two fail-open windows, then the fail-closed one)", failed.Load())
	}
	closed.FailOpen = true
	if err := r.PutRules(ctx, "test", antifraud.Rules{Limits: []antifraud.Limit{open, closed}}); err != nil {
		t.Fatal(err)
	}
	if v := r.Check(tctx, claim, time.Now()); !v.OK {
		t.Fatalf("every rule fails open: %+v", v)
	}
}
