package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/internal/faultfs"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

// stallableStack runs a stack whose ledger's WAL syncs can be held.
func stallableStack(t *testing.T, tweak func(*gateway.Config), lopts func(*ledger.Options)) (*stack.Stack, *faultfs.FS) {
	fs := faultfs.New(nil)
	s := stack.Start(t, stack.Options{Tweak: tweak, GatewayOptions: []gateway.Option{gateway.WithLedgerOptions(func(o *ledger.Options) {
		o.FS = fs
		if lopts != nil {
			lopts(o)
		}
	})}})
	t.Cleanup(fs.Release) // never leave a goroutine blocked in a sync
	return s, fs
}

// TestReplayNeverAnswersFromAnUnsyncedRecord (issue 9 #6, I4): while the
// first request of an Idempotency-Key waits for its WAL sync, a retry with
// the same key is not answered "granted" (Pebble makes a batch readable
// before its sync; a crash then would lose an acknowledged grant). Once the
// sync is done, the retry gets the same grant.
func TestReplayNeverAnswersFromAnUnsyncedRecord(t *testing.T) {
	s, fs := stallableStack(t, func(c *gateway.Config) { c.Claim.Timeout = 500 * time.Millisecond }, nil)
	s.CreateCampaign(stack.Campaign{ID: "sync", Stock: 10, Shards: 1})
	req := stack.ClaimRequest{Campaign: "sync", User: "alice", Device: "d", IdempotencyKey: "tap-1"}

	fs.Hold()
	first := make(chan stack.Answer, 1)
	go func() {
		a, err := s.Claim(context.Background(), req)
		if err != nil {
			t.Error(err)
		}
		first <- a
	}()
	wait.For(t, 5*time.Second, "the first append to wait in fsync", func() bool { return fs.Waiting() > 0 })
	second, err := s.Claim(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if second.Status == "granted" {
		t.Fatalf("I4: retry answered granted (%s) while the grant's record was not synced", second.GrantID)
	}
	if second.HTTP != 503 {
		t.Errorf("retry during the stall: %+v, want 503 unavailable", second)
	}
	fs.Release()
	a := <-first
	third, err := s.Claim(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if third.Status != "granted" || (a.Status == "granted" && third.GrantID != a.GrantID) {
		t.Fatalf("after the sync: first %+v, retry %+v", a, third)
	}
	if _, ok := ledgerGrants(t, s.Gateway.Ledger())[third.GrantID]; !ok {
		t.Fatalf("I4: grant %s answered but not in the ledger", third.GrantID)
	}
	stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)
}

// TestGrantWhoseAppendFailedIsSettled (issue 9 #1, without a crash): the
// script grants, then the ledger append fails (ErrBusy: the in-flight bound
// is taken by an append stuck in fsync and the claim's deadline passes).
// The client gets 503; the grant is not lost: the settler appends it once
// the disk moves, and Redis, ledger, stream and store agree.
func TestGrantWhoseAppendFailedIsSettled(t *testing.T) {
	s, fs := stallableStack(t, func(c *gateway.Config) { c.Claim.Timeout = 300 * time.Millisecond },
		func(o *ledger.Options) { o.AppendsInflightMax = 1 })
	s.CreateCampaign(stack.Campaign{ID: "busy", Stock: 10, Shards: 2})

	fs.Hold()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = s.Claim(context.Background(), stack.ClaimRequest{Campaign: "busy", User: "holder", Device: "d"})
	}()
	wait.For(t, 5*time.Second, "the first append to wait in fsync", func() bool { return fs.Waiting() > 0 })
	b, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "busy", User: "bob", Device: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if b.HTTP != 503 {
		t.Fatalf("bob during the stall: %+v, want 503", b)
	}
	if st := s.CampaignStats("busy"); st.Granted != 2 {
		t.Fatalf("redis granted %d, want 2 (holder and bob decided in Redis)", st.Granted)
	}
	fs.Release()
	wg.Wait()

	rep := stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)
	if row := rep.Campaigns[0]; row.RedisGranted != 2 || row.Ledger != 2 || row.Store != 2 || row.Unsettled != 0 {
		t.Fatalf("audit row %+v, want 2 grants everywhere", row)
	}
	// bob holds the grant: a new tap is answered already_claimed with an id
	// that the ledger holds.
	again, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "busy", User: "bob", Device: "d"})
	if err != nil || again.Status != "already_claimed" || len(again.GrantIDs) != 1 {
		t.Fatalf("bob again: %+v %v", again, err)
	}
	if _, ok := ledgerGrants(t, s.Gateway.Ledger())[again.GrantIDs[0]]; !ok {
		t.Fatalf("already_claimed names %s, which no ledger holds", again.GrantIDs[0])
	}
}

// TestSoldOutFlagAnswersReplayFirst (issue 9 #7): with stock 1, alice is
// granted with key tap-1, bob is told sold_out (the local flag is set), and
// alice's retry of tap-1 still gets her grant, not sold_out. The same holds
// once the campaign is paused.
func TestSoldOutFlagAnswersReplayFirst(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "one", Stock: 1, Shards: 1})
	ctx := context.Background()
	alice := stack.ClaimRequest{Campaign: "one", User: "alice", Device: "d", IdempotencyKey: "tap-1"}
	a, err := s.Claim(ctx, alice)
	if err != nil || a.Status != "granted" {
		t.Fatalf("alice: %+v %v", a, err)
	}
	for i := 0; i < 2; i++ { // the second answer comes from the local flag
		if b, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "one", User: fmt.Sprintf("bob%d", i), Device: "d"}); err != nil || b.Status != "sold_out" {
			t.Fatalf("bob: %+v %v", b, err)
		}
	}
	r, err := s.Claim(ctx, alice)
	if err != nil || r.Status != "granted" || r.GrantID != a.GrantID {
		t.Fatalf("alice's retry after sold out: %+v %v, want her grant %s", r, err, a.GrantID)
	}
	if code, body := s.Admin("PATCH", "/admin/v1/campaigns/one", map[string]any{"paused": true}); code != 200 {
		t.Fatalf("pause: %d %s", code, body)
	}
	wait.For(t, 5*time.Second, "the pause to reach the gateway", func() bool {
		x, _ := s.Claim(ctx, stack.ClaimRequest{Campaign: "one", User: "carol", Device: "d"})
		return x.Status == "paused"
	})
	if r, err = s.Claim(ctx, alice); err != nil || r.Status != "granted" || r.GrantID != a.GrantID {
		t.Fatalf("alice's retry while paused: %+v %v", r, err)
	}
}

// TestReplayThroughSecondGatewayWritesNoSecondRecord (issue 9 #9): a retry
// of an attempt that gateway 1 granted, sent to gateway 2, is answered with
// the same grant and writes nothing to gateway 2's ledger: one grant, one
// record. While gateway 1 has not yet made the grant durable, gateway 2
// answers 503 (retry) rather than writing its own copy.
func TestReplayThroughSecondGatewayWritesNoSecondRecord(t *testing.T) {
	ns := natsserver.Start(t)
	dsn := pgtest.Fresh(t)
	shared := func(c *gateway.Config) {
		c.NATS.URL = ns.URL()
		c.Store.Driver, c.Store.DSN = "postgres", dsn
	}
	s1, fs := stallableStack(t, shared, nil)
	s2 := stack.Start(t, stack.Options{Redis: s1.Redis, Tweak: shared})
	s1.CreateCampaign(stack.Campaign{ID: "two", Stock: 10, Shards: 2})
	ctx := context.Background()
	wait.For(t, 5*time.Second, "gateway 2 to see the campaign", func() bool {
		a, _ := s2.Claim(ctx, stack.ClaimRequest{Campaign: "two", User: "probe", Device: "d"})
		return a.Status == "granted"
	})

	tap1 := stack.ClaimRequest{Campaign: "two", User: "alice", Device: "d1", IdempotencyKey: "tap-1"}
	a, err := s1.Claim(ctx, tap1)
	if err != nil || a.Status != "granted" {
		t.Fatalf("gateway 1: %+v %v", a, err)
	}
	wait.For(t, 5*time.Second, "gateway 1 to mark the grant settled", func() bool { return s1.CampaignStats("two").Unsettled == 0 })
	tap1.Device = "d2" // the retry may come from elsewhere; the answer is the original grant
	r, err := s2.Claim(ctx, tap1)
	if err != nil || r.Status != "granted" || r.GrantID != a.GrantID {
		t.Fatalf("retry through gateway 2: %+v %v, want %s", r, err, a.GrantID)
	}

	// The same while gateway 1's append waits for its fsync.
	tap2 := stack.ClaimRequest{Campaign: "two", User: "bob", Device: "d1", IdempotencyKey: "tap-2"}
	fs.Hold()
	first := make(chan stack.Answer, 1)
	go func() { x, _ := s1.Claim(ctx, tap2); first <- x }()
	wait.For(t, 5*time.Second, "gateway 1's append to wait in fsync", func() bool { return fs.Waiting() > 0 })
	if r, err := s2.Claim(ctx, tap2); err != nil || r.Status == "granted" || r.HTTP != 503 {
		t.Fatalf("retry through gateway 2 while unsettled: %+v %v, want 503", r, err)
	}
	fs.Release()
	b := <-first
	if b.Status != "granted" {
		t.Fatalf("gateway 1 after the stall: %+v", b)
	}
	wait.For(t, 5*time.Second, "gateway 1 to mark bob's grant settled", func() bool { return s1.CampaignStats("two").Unsettled == 0 })
	if r, err := s2.Claim(ctx, tap2); err != nil || r.Status != "granted" || r.GrantID != b.GrantID {
		t.Fatalf("retry through gateway 2 after settlement: %+v %v", r, err)
	}

	in2 := ledgerGrants(t, s2.Gateway.Ledger())
	for _, id := range []string{a.GrantID, b.GrantID} {
		if _, dup := in2[id]; dup {
			t.Errorf("grant %s written to gateway 2's ledger by a replay", id)
		}
	}
	var rep audit.Report
	wait.Until(ctx, 20*time.Second, func() bool {
		rep, err = s1.Gateway.AuditLedgers(ctx, []*ledger.Ledger{s2.Gateway.Ledger()})
		return err != nil || rep.Violations == 0
	})
	if err != nil || rep.Violations != 0 {
		t.Fatalf("audit over both ledgers: %v %+v", err, rep)
	}
}
