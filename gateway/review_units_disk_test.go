package gateway_test

// Defects found by the second adversarial review of issue 9 (allotments,
// definition size, ledger disk recovery). Each test failed while its defect
// was present.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
)

// openRegistry opens the campaign bucket of a stack's embedded NATS, as
// another gateway of the fleet would.
func openRegistry(t *testing.T, s *stack.Stack) *campaign.Registry {
	t.Helper()
	nc, err := nats.Connect(s.Gateway.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := campaign.OpenRegistry(context.Background(), js, 1, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestUnitsCommittedBeforeDeleteReachTheShards: a PATCH commits add_stock
// (compare-and-swap in the bucket) while Redis is unreachable — the PATCH
// answers 503 "committed … every gateway keeps putting them there", or its
// gateway dies right after the CAS — and the operator then DELETEs the
// campaign (DELETE needs no Redis). Once Redis is back no gateway ever puts
// the committed units on the shards: allotNeeded skips deleted campaigns and
// DELETE allots nothing. The audit then reports "I6 redis granted + remaining
// ≠ units" for ever (flashgate audit exits non-zero), contrary to "Redis
// always converges on the definition's units, whatever the interleaving".
func TestUnitsCommittedBeforeDeleteReachTheShards(t *testing.T) {
	s := stack.Start(t, stack.Options{AOF: true})
	s.CreateCampaign(stack.Campaign{ID: "gone", Stock: 40, Shards: 4})
	for i := 0; i < 5; i++ {
		if a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "gone", User: fmt.Sprint("early-", i), Device: "d"}); err != nil || a.Status != "granted" {
			t.Fatalf("claim: %+v %v", a, err)
		}
	}
	stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)

	reg := openRegistry(t, s)
	s.Redis.Stop() // Redis unreachable (a failover, a network cut)

	// The PATCH's compare-and-swap commits; its allotment cannot reach Redis.
	old, rev, err := reg.Revision(context.Background(), "gone")
	if err != nil {
		t.Fatal(err)
	}
	n, err := old.Apply(&campaign.Patch{AddStock: 25, ChangeID: "restock-during-outage"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(context.Background(), &n, rev); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the gateway's watch sees it and fails to allot
	// The operator deletes the campaign during the outage.
	if code, b := s.Admin("DELETE", "/admin/v1/campaigns/gone", nil); code != 200 {
		t.Fatalf("DELETE during the Redis outage: HTTP %d %s", code, b)
	}
	s.Redis.Restart()
	time.Sleep(6 * time.Second) // three ticks of every gateway's allotment loop

	rep, err := s.Gateway.AuditSettled(context.Background(), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Violations != 0 {
		b, _ := json.MarshalIndent(rep.Campaigns, "", "  ")
		t.Fatalf("units committed before a DELETE never reach the shards; the audit stays dirty:\n%s", b)
	}
}

// TestOversizedDefinitionRefusedBeforeRedis: a create whose definition
// is valid by Validate (scope lists of up to 3 × 1000 entries of ≤ 128
// characters) but larger than the campaign bucket's 64 KiB value limit is
// answered 503 "unavailable" (not a 4xx naming the field) after Init has
// written the shards: a half-applied change from bad input that no retry can
// complete. The corrected create (smaller scope, another stock) is then
// refused 409 leftover_state, "an earlier campaign … its definition is gone",
// so the id is lost until an operator deletes Redis keys by hand.
func TestOversizedDefinitionRefusedBeforeRedis(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	brands := make([]string, 1000)
	for i := range brands {
		brands[i] = fmt.Sprintf("brand-%03d-%s", i, strings.Repeat("x", 100))
	}
	def := map[string]any{"id": "big", "name": "big", "stock": 100, "shards": 4,
		"coupon":    map[string]any{"type": "voucher", "amount": 100, "scope": map[string]any{"brands": brands}},
		"starts_at": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), "ends_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	code, body := s.Admin("POST", "/admin/v1/campaigns", def)
	t.Logf("create with a %d-entry scope: HTTP %d %.300s", len(brands), code, body)
	if code >= 500 {
		rc := redisClient(t, s)
		t.Errorf("valid-looking bad input answered %d; redis shards after the refused create: %v", code, shardStock(t, rc, "big", 4))
	}
	// The operator corrects the request (smaller scope, and another stock).
	def["coupon"] = map[string]any{"type": "voucher", "amount": 100, "scope": map[string]any{"brands": brands[:10]}}
	def["stock"] = 120
	if code, body := s.Admin("POST", "/admin/v1/campaigns", def); code != 201 {
		t.Fatalf("the corrected create: HTTP %d %.400s", code, body)
	}
}

// fullDisk is an errorfs injector: while on, every write-kind operation but
// Close and Lock fails with ENOSPC.
type fullDisk struct{ on atomic.Bool }

func (d *fullDisk) String() string { return "disk-full" }

func (d *fullDisk) MaybeError(op errorfs.Op) error {
	if !d.on.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsWrite || op.Kind == errorfs.OpFileClose || op.Kind == errorfs.OpLock {
		return nil
	}
	return fmt.Errorf("%s: %w", op.Path, syscall.ENOSPC)
}

// TestSequenceNumbersNeverReusedAfterDiskRecoveryAndRestart: appends in flight
// when the ledger disk fails take sequence numbers that never reach the disk.
// Recover keeps the counter past them and the relay, finding nothing there,
// moves (and stores) its cursor past them. After a restart (kill -9 within the
// settler's first seconds, or any restart before another append), Open takes
// the counter from the last record on disk, so the next appends — the
// settler re-appending exactly those failed grants — reuse those numbers,
// all at or below the stored relay cursor: the relay never publishes them and
// reports no backlog. Only the reconciler (after reconcile_grace) gets them to
// the store, and the audit's stream column counts them as acknowledged by
// JetStream although they were never published.
func TestSequenceNumbersNeverReusedAfterDiskRecoveryAndRestart(t *testing.T) {
	ns := natsserver.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.StreamConfig(1, time.Hour, 24*time.Hour)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	full := &fullDisk{}
	l, err := ledger.Open(ledger.Options{Dir: dir, FS: errorfs.Wrap(vfs.Default, full)})
	if err != nil {
		t.Fatal(err)
	}
	node := l.ID()
	r, err := relay.New(relay.Options{Ledger: l, JS: js, Node: node, Stream: cfg})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan struct{})
	go func() { r.Run(rctx); close(rdone) }()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
		}
	}
	rec := func(id string) *ledger.Record { return &ledger.Record{GrantID: id, Campaign: "c", User: "u-" + id} }
	for i := 0; i < 10; i++ {
		if _, err := l.Append(ctx, rec(fmt.Sprint("ok-", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil("relay publishes the first 10", func() bool { return r.Cursor() == 10 })

	// The disk fills with 5 claims' appends in flight: none is acknowledged.
	full.on.Store(true)
	var wg sync.WaitGroup
	failed := make([]string, 5)
	for i := range failed {
		failed[i] = fmt.Sprint("failed-", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.Append(ctx, rec(failed[i])); err == nil {
				t.Errorf("append %s acknowledged on a full disk", failed[i])
			}
		}()
	}
	wg.Wait()
	full.on.Store(false)
	if err := l.Recover(); err != nil {
		t.Fatal(err)
	}
	waitUntil("relay passes the failed appends", func() bool { return r.Cursor() == l.LastSeq() })
	t.Logf("after Recover: last seq %d, relay cursor %d", l.LastSeq(), r.Cursor())
	rcancel()
	<-rdone
	_ = l.Close() // the process ends (a deploy, or kill -9 before the settler ran)

	l2, err := ledger.Open(ledger.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	stored, _ := l2.Cursor(relay.CursorName)
	t.Logf("after restart: last seq %d, stored relay cursor %d", l2.LastSeq(), stored)
	r2, err := relay.New(relay.Options{Ledger: l2, JS: js, Node: node, Stream: cfg})
	if err != nil {
		t.Fatal(err)
	}
	r2ctx, r2cancel := context.WithCancel(ctx)
	defer r2cancel()
	go r2.Run(r2ctx)
	// The first settlement pass appends the grants whose appends failed.
	for _, id := range failed {
		if _, err := l2.Append(ctx, rec(id)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	var seqs []uint64
	_ = l2.Scan(10, ^uint64(0), func(r *ledger.Record) error { seqs = append(seqs, r.Seq); return nil })
	t.Logf("settled grants took seqs %v; relay cursor %d, backlog %d, published %d", seqs, r2.Cursor(), r2.Backlog(), r2.Published())
	if r2.Published() != int64(len(failed)) {
		t.Fatalf("the relay published %d of the %d grants appended after the restart (backlog reported %d): they reused sequence numbers at or below its stored cursor",
			r2.Published(), len(failed), r2.Backlog())
	}
}

// TestDefinitionNearSizeLimitKeepsTakingChanges: a campaign whose definition
// is valid and stored, but within a few KiB of the bucket's 64 KiB value
// limit, can never take an add_stock again: add_stock requires a change_id,
// each change_id grows the stored definition (Changes keeps 64), and the
// compare-and-swap of the grown definition is refused by NATS — answered 503
// "unavailable" on every retry, a permanent condition reported as transient.
func TestDefinitionNearSizeLimitKeepsTakingChanges(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	brands := make([]string, 1000)
	for i := range brands {
		brands[i] = fmt.Sprintf("brand-%03d-%s", i, strings.Repeat("x", 100))
	}
	create := func(id string, n int) int {
		def := map[string]any{"id": id, "name": id, "stock": 100, "shards": 4,
			"coupon":    map[string]any{"type": "voucher", "amount": 100, "scope": map[string]any{"brands": brands[:n]}},
			"starts_at": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), "ends_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
		code, _ := s.Admin("POST", "/admin/v1/campaigns", def)
		return code
	}
	lo, hi := 100, 1000 // lo fits, hi does not
	for try := 0; hi-lo > 1; try++ {
		mid := (lo + hi) / 2
		if create(fmt.Sprintf("probe-%d", try), mid) == 201 {
			lo = mid
		} else {
			hi = mid
		}
	}
	if code := create("near", lo); code != 201 {
		t.Fatalf("create with %d brands: HTTP %d", lo, code)
	}
	t.Logf("a definition with %d scope entries fits the bucket, %d does not", lo, hi)
	for i := 0; i < 3; i++ {
		body := map[string]any{"add_stock": 10, "change_id": fmt.Sprintf("restock-%d-%s", i, strings.Repeat("r", 50))}
		code, b := s.Admin("PATCH", "/admin/v1/campaigns/near", body)
		for retry := 0; retry < 3 && code == 503; retry++ { // the client retries a 503 with the same change_id
			code, b = s.Admin("PATCH", "/admin/v1/campaigns/near", body)
		}
		if code != 200 {
			t.Fatalf("add_stock #%d on a stored campaign: HTTP %d %.300s", i, code, b)
		}
	}
}
