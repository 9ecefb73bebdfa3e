package gateway_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// TestClaimsGoOnWhileNATSAwayThenFailClosed pins I7's control-plane half:
// with NATS gone, claims are still granted from the last campaign
// definitions for nats.control_plane_stale_max (the ledger holds them; the
// relay catches up later), then answer 503 unavailable with Retry-After, and
// grant again by themselves once NATS is back.
func TestClaimsGoOnWhileNATSAwayThenFailClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("NATS stop/start test skipped in -short")
	}
	const staleMax = 2 * time.Second
	ns := natsserver.Start(t)
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		c.NATS.URL = ns.URL()
		c.NATS.ControlPlaneStaleMax = staleMax
	}})
	s.CreateCampaign(stack.Campaign{ID: "away", Stock: 1000, Shards: 2})
	ctx := context.Background()
	n := 0
	claim := func() stack.Answer {
		t.Helper()
		n++
		a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "away", User: fmt.Sprintf("away-%d", n), Device: "d"})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := claim(); a.Status != "granted" {
		t.Fatalf("with NATS: %+v", a)
	}
	ns.Kill()
	down := time.Now()
	// Within stale_max: granted from the last definitions.
	for time.Since(down) < staleMax/2 {
		if a := claim(); a.Status != "granted" {
			t.Fatalf("%v after NATS went away (stale max %v): %+v", time.Since(down), staleMax, a)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Past stale_max: fail closed.
	time.Sleep(time.Until(down.Add(staleMax + 500*time.Millisecond)))
	if a := claim(); a.HTTP != 503 || a.Status != "unavailable" || a.RetryAfter == "" {
		t.Fatalf("%v after NATS went away (stale max %v): %+v, want 503 unavailable with Retry-After", time.Since(down), staleMax, a)
	}
	// NATS back: claims resume by themselves.
	ns.Restart()
	var last stack.Answer
	if !wait.Until(context.Background(), 30*time.Second, func() bool { last = claim(); return last.Status == "granted" }) {
		t.Fatalf("claims did not resume within 30s of NATS returning: %+v", last)
	}
	stack.RequireCleanAudit(t, s.Gateway, 30*time.Second)
}

// TestStalenessFollowsTheGatewayClock: the control plane's staleness is
// measured on the gateway's one clock (WithClock), the clock the campaign
// watch stamps its loss with. The clock here runs half an hour ahead of the
// wall clock: after NATS goes away claims are still granted, and once the
// clock is moved past nats.control_plane_stale_max they answer 503 at once,
// without waiting for real time to pass. (With the loss stamped on the wall
// clock, the half hour read as staleness and the first claim was refused.)
func TestStalenessFollowsTheGatewayClock(t *testing.T) {
	if testing.Short() {
		t.Skip("NATS stop/start test skipped in -short")
	}
	const staleMax = time.Minute
	var ahead atomic.Int64
	ahead.Store(int64(30 * time.Minute))
	clock := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	ns := natsserver.Start(t)
	s := stack.Start(t, stack.Options{
		Tweak: func(c *gateway.Config) {
			c.NATS.URL = ns.URL()
			c.NATS.ControlPlaneStaleMax = staleMax
		},
		GatewayOptions: []gateway.Option{gateway.WithClock(clock)},
	})
	s.CreateCampaign(stack.Campaign{ID: "clock", Stock: 1000, Shards: 1})
	ctx := context.Background()
	n := 0
	claim := func() stack.Answer {
		t.Helper()
		n++
		a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "clock", User: fmt.Sprintf("clock-%d", n), Device: "d"})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := claim(); a.Status != "granted" {
		t.Fatalf("with NATS: %+v", a)
	}
	ns.Kill()
	wait.For(t, 10*time.Second, "the gateway to see the campaign watch down", func() bool {
		_, body := s.Admin("GET", "/readyz", nil)
		return strings.Contains(string(body), "campaign watch down")
	})
	if a := claim(); a.Status != "granted" {
		t.Fatalf("NATS away for less than %v on the gateway's clock: %+v, want granted", staleMax, a)
	}
	ahead.Add(int64(staleMax + time.Second))
	if a := claim(); a.HTTP != 503 || a.Status != "unavailable" || a.Error != "control plane unavailable" || a.RetryAfter == "" {
		t.Fatalf("the gateway's clock past stale max: %+v, want 503 control plane unavailable with Retry-After", a)
	}
	ns.Restart()
	var last stack.Answer
	if !wait.Until(ctx, 30*time.Second, func() bool { last = claim(); return last.Status == "granted" }) {
		t.Fatalf("claims did not resume within 30s of NATS returning: %+v", last)
	}
}

// TestREADMEStatesControlPlaneContract: the README states I7 as the code
// keeps it — while NATS is away claims go on from the last definitions for
// nats.control_plane_stale_max, then 503 — and stands on its own (no links
// into ../shared, which readers of the repository do not have).
func TestREADMEStatesControlPlaneContract(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	if strings.Contains(readme, "../shared") {
		t.Error("README points at ../shared")
	}
	i7 := regexp.MustCompile(`(?s)\*\*Fail closed \(I7\)\.\*\*(.*?)(?:\n- |\n\n)`).FindStringSubmatch(readme)
	if i7 == nil {
		t.Fatal("README has no **Fail closed (I7).** bullet")
	}
	for _, want := range []string{"nats.control_plane_stale_max", "last", "503", "TestClaimsGoOnWhileNATSAwayThenFailClosed"} {
		if !strings.Contains(i7[1], want) {
			t.Errorf("README's I7 bullet does not mention %q:\n%s", want, i7[1])
		}
	}
}
