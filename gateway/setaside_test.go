package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

// TestOneUnstorableGrantDoesNotBlockThePipeline (issue 9 #11, I5): a ledger
// holds grants the store cannot hold (written before the edge refused such
// input: a client_ip with a 70-byte IPv6 zone, a 200-byte device). Each used
// to take its whole stream message (up to 256 grants) down with it, and the
// reconciler republished it forever without its cursor ever passing it, so
// nothing later was reconciled. Now the sink stores the good grants of the
// message and sets the bad one aside with its reason; the reconciler passes
// it, counts it and reconciles what follows; the audit reports it.
func TestOneUnstorableGrantDoesNotBlockThePipeline(t *testing.T) {
	dataDir := t.TempDir()
	tweak := func(c *gateway.Config) {
		c.Relay.ReconcileInterval, c.Relay.ReconcileGrace = time.Second, time.Second
	}
	s := stack.Start(t, stack.Options{DataDir: dataDir, Tweak: tweak})
	s.CreateCampaign(stack.Campaign{ID: "unst", Stock: 1000, Shards: 1})
	stack.RequireCleanAudit(t, s.Gateway, 10*time.Second)
	redis := s.Redis
	s.Stop()

	// 300 grants in the ledger, two of them unstorable; they span the
	// relay's two messages (256 + 44). Redis counters are made to match.
	const legacy = 300
	bad := map[int]string{
		100: "client_ip",
		280: "device",
	}
	l, err := ledger.Open(ledger.Options{Dir: dataDir + "/ledger"})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute).UnixNano()
	for i := 1; i <= legacy; i++ {
		r := &ledger.Record{GrantID: fmt.Sprintf("unst-%04d", i), Campaign: "unst", User: fmt.Sprintf("u%d", i), Device: "d",
			ClientIP: "127.0.0.1", GrantedAtNanos: old}
		switch bad[i] {
		case "client_ip":
			r.ClientIP = "fe80::1%" + strings.Repeat("z", 70)
		case "device":
			r.Device = strings.Repeat("d", 200)
		}
		if _, err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := redisCLI(redis.Addr(), "DECRBY", "fg:{unst.0}:stock", fmt.Sprint(legacy)); err != nil {
		t.Fatal(err, out)
	}
	redisCLI(redis.Addr(), "INCRBY", "fg:{unst.0}:granted", fmt.Sprint(legacy))

	s2 := stack.Start(t, stack.Options{DataDir: dataDir, Redis: redis, Tweak: tweak})
	// Grants made after the bad ones must be reconciled too.
	const live = 20
	if n := len(loadDistinctUsers(t, s2, "unst", live, 4)); n != live {
		t.Fatalf("granted %d of %d live claims", n, live)
	}
	g := s2.Gateway
	last := g.Ledger().LastSeq()
	if last != legacy+live {
		t.Fatalf("ledger last seq %d, want %d", last, legacy+live)
	}

	var row audit.Row
	wait.For(t, 30*time.Second, "every storable grant stored, the two others set aside", func() bool {
		rep, err := g.Audit(context.Background())
		if err != nil || len(rep.Campaigns) != 1 {
			t.Fatalf("audit: %+v %v", rep, err)
		}
		row = rep.Campaigns[0]
		return row.Store == legacy+live-2 && row.SetAside == 2 && row.MissingInStore == 0
	})
	if row.Ledger != legacy+live || row.ExtraInStore != 0 || !strings.Contains(strings.Join(row.Violations, "\n"), "set aside") {
		b, _ := json.MarshalIndent(row, "", "  ")
		t.Fatalf("audit row does not report the set-aside grants:\n%s", b)
	}
	wait.For(t, 30*time.Second, "the reconcile cursor passes every grant", func() bool {
		c, err := g.Ledger().Cursor("reconcile")
		return err == nil && c == last
	})
	if p := metric(t, g, "flashgate_sink_poison_total"); p != 0 {
		t.Fatalf("%v messages terminated: a bad grant took its message down", p)
	}
	if n := metric(t, g, "flashgate_sink_set_aside_total"); n < 2 {
		t.Fatalf("flashgate_sink_set_aside_total %v, want ≥ 2", n)
	}
	if n := metric(t, g, "flashgate_reconcile_set_aside_total"); n != 2 {
		t.Fatalf("flashgate_reconcile_set_aside_total %v, want 2 (each counted once, when passed)", n)
	}
	// Nothing is published again once the cursor is past: no endless loop.
	before := metric(t, g, "flashgate_reconcile_republished_total")
	time.Sleep(3500 * time.Millisecond) // three reconcile intervals
	if after := metric(t, g, "flashgate_reconcile_republished_total"); after != before {
		t.Fatalf("reconciler keeps republishing: %v → %v", before, after)
	}
	// The store keeps each with the reason.
	reasons := map[string]string{}
	if err := g.Store().SetAsideIDs(context.Background(), "unst", func(id, reason string) { reasons[id] = reason }); err != nil {
		t.Fatal(err)
	}
	for i, field := range bad {
		id := fmt.Sprintf("unst-%04d", i)
		if !strings.Contains(reasons[id], field) {
			t.Fatalf("set aside %v: %s should be there with a reason naming %s", reasons, id, field)
		}
	}
}
