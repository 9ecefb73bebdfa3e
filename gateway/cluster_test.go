package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/rediscluster"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

// Tests of a fleet on a Redis Cluster (issue 12): three gateways, each with
// its own node_id and data dir, sharing a 3-master Redis Cluster (package
// rediscluster: real redis-server processes), the first gateway's embedded
// JetStream and one PostgreSQL store. They run the drop invariants across
// the gateways, kill a master in the middle of a drop, and move slots
// holding campaign shards while claims run.

// fleet is several gateways on one Redis Cluster.
type fleet struct {
	cl  *rediscluster.Cluster
	gws []*stack.Stack
}

// startFleet starts n gateways on cl; tweak (may be nil) adjusts each config.
func startFleet(t *testing.T, cl *rediscluster.Cluster, n int, tweak func(i int, c *gateway.Config)) *fleet {
	t.Helper()
	f := &fleet{cl: cl}
	dsn := pgtest.Fresh(t)
	for i := 0; i < n; i++ {
		var natsURL string
		if i > 0 {
			natsURL = f.gws[0].Gateway.NATSURL()
		}
		f.gws = append(f.gws, stack.Start(t, stack.Options{RedisAddrs: cl.Addrs(), Tweak: func(c *gateway.Config) {
			c.NodeID = "gw-" + strconv.Itoa(i)
			c.NATS.URL = natsURL
			c.Store.Driver, c.Store.DSN = "postgres", dsn
			if tweak != nil {
				tweak(i, c)
			}
		}}))
	}
	return f
}

// create makes a campaign through the first gateway and waits until every
// gateway of the fleet knows it.
func (f *fleet) create(t *testing.T, c stack.Campaign) {
	t.Helper()
	f.gws[0].CreateCampaign(c)
	for _, g := range f.gws[1:] {
		wait.For(t, 10*time.Second, g.Config.NodeID+" to see campaign "+c.ID, func() bool {
			code, _ := g.Admin("GET", "/admin/v1/campaigns/"+c.ID, nil)
			return code == 200
		})
	}
}

// audit audits the union of every gateway's ledger against Redis and the
// store, until it is clean or wait ends, and fails the test on a violation.
func (f *fleet) audit(t *testing.T, wait time.Duration) audit.Report {
	t.Helper()
	others := make([]*ledger.Ledger, 0, len(f.gws)-1)
	for _, g := range f.gws[1:] {
		others = append(others, g.Gateway.Ledger())
	}
	ctx := context.Background()
	deadline := time.Now().Add(wait)
	for {
		rep, err := f.gws[0].Gateway.AuditLedgers(ctx, others)
		if err == nil && rep.Violations == 0 {
			return rep
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(rep, "", "  ")
			t.Fatalf("fleet audit: %v\n%s", err, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// shardMasters maps each shard of a campaign to the master serving its slot.
func shardMasters(t *testing.T, cl *rediscluster.Cluster, campaign string, shards int) map[int]*rediscluster.Node {
	t.Helper()
	owners := cl.SlotOwners()
	out := map[int]*rediscluster.Node{}
	for i := 0; i < shards; i++ {
		out[i] = cl.Node(owners[rediscluster.KeySlot(stock.StockKey(campaign, i))])
	}
	return out
}

// requireExact checks I1–I3 on a campaign that sold out: exactly units
// distinct grants were answered, none twice to different users, nobody above
// the per-user limit, and Redis agrees (every shard 0, nothing pending).
func requireExact(t *testing.T, s *stack.Stack, o *outcomes, id string, units, perUser int) {
	t.Helper()
	for _, err := range o.errs {
		t.Error(err)
	}
	if got := len(o.grants); got != units {
		t.Errorf("I1/I3: %d distinct grants answered, want exactly %d (statuses %v)", got, units, o.byStatus)
	}
	for user, ids := range o.userGrant {
		if len(ids) > perUser {
			t.Errorf("I2: user %s holds %d grants: %v", user, len(ids), ids)
		}
	}
	st := s.CampaignStats(id)
	if st.Granted != int64(units) || st.Remaining != 0 || st.PendingTransfers != 0 || st.Error != "" {
		t.Errorf("stats disagree: %+v", st)
	}
	for i, n := range st.Shards {
		if n != 0 {
			t.Errorf("shard %d ends with %d units", i, n)
		}
	}
}

// TestClusterDropAcrossThreeGateways: 4,000 users each tap twice at once,
// through two different gateways of three, on a campaign of 1,000 units over
// 32 shards spread over the three masters of a Redis Cluster: exactly 1,000
// grants, every shard 0, nobody above the limit, the stats and the audit of
// the three ledgers agree. Then one Idempotency-Key sent 100 times at once
// across the three gateways gives one grant id.
func TestClusterDropAcrossThreeGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("Redis Cluster drop skipped in -short")
	}
	began := time.Now()
	cl := rediscluster.Start(t, rediscluster.Options{})
	f := startFleet(t, cl, 3, nil)
	t.Logf("cluster and 3 gateways up in %v", time.Since(began).Round(time.Millisecond))
	const id, units, shards = "cdrop", 1000, 32
	f.create(t, stack.Campaign{ID: id, Stock: units, Shards: shards, PerUserLimit: 1})
	perMaster := map[*rediscluster.Node]int{}
	for _, m := range shardMasters(t, cl, id, shards) {
		perMaster[m]++
	}
	if len(perMaster) != 3 {
		t.Fatalf("the 32 shards sit on %d masters, want all 3", len(perMaster))
	}

	const users, parallel = 4000, 192
	o := newOutcomes()
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	ctx := context.Background()
	t0 := time.Now()
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("user-%05d", u)
		for k := 0; k < 2; k++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				claimRetrying(ctx, f.gws[(u+k)%3], o, stack.ClaimRequest{Campaign: id, User: user, Device: "dev-" + user, IdempotencyKey: fmt.Sprintf("%s-tap-%d", user, k)})
			}()
		}
	}
	wg.Wait()
	t.Logf("8000 claims in %v: %v, %d retries of a 503", time.Since(t0).Round(time.Millisecond), o.byStatus, o.retries)
	requireExact(t, f.gws[1], o, id, units, 1)
	for st := range o.byStatus {
		if st != "granted" && st != "sold_out" && st != "already_claimed" {
			t.Errorf("unexpected status %q ×%d", st, o.byStatus[st])
		}
	}
	rep := f.audit(t, 30*time.Second)
	for _, row := range rep.Campaigns {
		if row.Campaign == id && (row.Ledger != units || row.Store != units) {
			t.Errorf("audit row: %+v", row)
		}
	}

	// One tap retried 100 times at once through the three gateways.
	const idem = "cidem"
	f.create(t, stack.Campaign{ID: idem, Stock: 100, Shards: shards, PerUserLimit: 5})
	ids := map[string]int{}
	var mu sync.Mutex
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := stack.ClaimRequest{Campaign: idem, User: "hot-user", Device: "hot-device", IdempotencyKey: "the-one-tap"}
			var a stack.Answer
			var err error
			// A retry through another gateway answers 503 while the grant's
			// own gateway has not yet recorded it: retry as an app would.
			wait.Until(ctx, 10*time.Second, func() bool {
				a, err = f.gws[i%3].Claim(ctx, r)
				return err != nil || a.HTTP != 503
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil || a.Status != "granted" {
				t.Errorf("tap %d: %+v %v", i, a, err)
				return
			}
			ids[a.GrantID]++
		}()
	}
	wg.Wait()
	if len(ids) != 1 {
		t.Fatalf("one Idempotency-Key × 100 across 3 gateways gave %d grant ids: %v", len(ids), ids)
	}
	if st := f.gws[2].CampaignStats(idem); st.Granted != 1 {
		t.Fatalf("Redis counts %d grants for the one tap", st.Granted)
	}
	f.audit(t, 30*time.Second)
}

// sortedKeys lists a map's keys in order (stable test output).
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
