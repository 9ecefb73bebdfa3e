package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
)

// TestNATSClusterServerKilledUnderLoad (issue 12): two gateways on a cluster
// of three nats-server processes, with the GRANTS stream, the consumer and
// the KV buckets at three replicas (nats.replicas: 3). In the middle of a
// drop the server leading the GRANTS stream is killed (-9): the stream
// elects another leader, the gateways' connections move to the servers
// left, and nothing is lost — the audit of both ledgers finds every
// acknowledged grant in the store once, and the store holds exactly the
// grants the clients were told.
func TestNATSClusterServerKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("NATS cluster test skipped in -short")
	}
	skipUnderRace(t)
	began := time.Now()
	servers := natsserver.StartCluster(t, 3)
	dsn := pgtest.Fresh(t)
	tweak := func(node string) func(*gateway.Config) {
		return func(c *gateway.Config) {
			c.NodeID = node
			c.NATS.URL = natsserver.ClusterURL(servers)
			c.NATS.Replicas = 3
			c.Store.Driver, c.Store.DSN = "postgres", dsn
		}
	}
	a := stack.Start(t, stack.Options{Tweak: tweak("gw-a")})
	b := stack.Start(t, stack.Options{Redis: a.Redis, Tweak: tweak("gw-b")})
	t.Logf("3 NATS servers and 2 gateways up in %v", time.Since(began).Round(time.Millisecond))
	const id, units = "natsha", 2500
	a.CreateCampaign(stack.Campaign{ID: id, Stock: units, Shards: 8, PerUserLimit: 1})
	wait.For(t, 10*time.Second, "gw-b to see the campaign", func() bool {
		code, _ := b.Admin("GET", "/admin/v1/campaigns/"+id, nil)
		return code == 200
	})

	nc, err := nats.Connect(natsserver.ClusterURL(servers), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	streamInfo := func() (*jetstream.StreamInfo, error) {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err := js.Stream(ictx, relay.Stream)
		if err != nil {
			return nil, err
		}
		return s.Info(ictx)
	}
	info, err := streamInfo()
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("GRANTS stream: replicas %d, cluster %+v", info.Config.Replicas, info.Cluster)
	}
	leader := info.Cluster.Leader
	var victim *natsserver.Server
	for _, s := range servers {
		if s.Name == leader {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("stream leader %q is none of the servers", leader)
	}

	// 3,000 users over about 3 s through both gateways; the stream leader
	// dies after one second.
	o := newOutcomes()
	var killedAt atomic.Int64
	go func() {
		time.Sleep(time.Second)
		victim.Kill()
		killedAt.Store(time.Now().UnixNano())
	}()
	gws := []*stack.Stack{a, b}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	var afterKill atomic.Int64
	t0 := time.Now()
	for u := 0; u < 3000; u++ {
		time.Sleep(time.Until(t0.Add(time.Duration(u) * time.Millisecond)))
		user := fmt.Sprintf("n-%05d", u)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			after := killedAt.Load() != 0
			claimRetrying(ctx, gws[u%2], o, stack.ClaimRequest{Campaign: id, User: user, Device: "d-" + user, IdempotencyKey: user + "-tap"})
			if after {
				afterKill.Add(1)
			}
		}()
	}
	wg.Wait()
	if killedAt.Load() == 0 {
		t.Fatal("the stream leader was not killed during the load")
	}
	for _, err := range o.errs {
		t.Error(err)
	}
	if len(o.grants) != units {
		t.Fatalf("%d grants answered, want %d (statuses %v)", len(o.grants), units, o.byStatus)
	}
	newLeader := ""
	wait.For(t, 20*time.Second, "a new GRANTS leader", func() bool {
		info, err := streamInfo()
		if err != nil || info.Cluster == nil {
			return false
		}
		newLeader = info.Cluster.Leader
		return newLeader != "" && newLeader != leader
	})
	t.Logf("stream leader %s killed -9 at %v; %d taps after it; new leader %s; answers %v, %d retries of a 503",
		leader, time.Unix(0, killedAt.Load()).Sub(t0).Round(time.Millisecond), afterKill.Load(), newLeader, o.byStatus, o.retries)

	// Nothing lost: both ledgers, Redis and the store agree, every
	// acknowledged grant stored once.
	settled := time.Now()
	var rep audit.Report
	ok := wait.Until(ctx, 60*time.Second, func() bool {
		rep, err = a.Gateway.AuditLedgers(ctx, []*ledger.Ledger{b.Gateway.Ledger()})
		return err == nil && rep.Violations == 0
	})
	if !ok {
		out, _ := json.MarshalIndent(rep, "", "  ")
		t.Fatalf("audit of both ledgers not clean 60s after the load: %v\n%s", err, out)
	}
	ids, err := storeGrantIDs(t, a, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != units {
		t.Fatalf("store holds %d grants, want %d", len(ids), units)
	}
	for gid := range o.grants {
		if !ids[gid] {
			t.Errorf("acknowledged grant %s not in the store", gid)
		}
	}
	t.Logf("store complete %v after the load", time.Since(settled).Round(time.Millisecond))
}

// storeGrantIDs lists a campaign's grant ids in the store, through the admin
// API's pages; a grant id twice is an error.
func storeGrantIDs(t *testing.T, s *stack.Stack, campaign string) (map[string]bool, error) {
	t.Helper()
	ids := map[string]bool{}
	cursor := ""
	for page := 0; page < 1000; page++ {
		code, body := s.Admin("GET", "/admin/v1/campaigns/"+campaign+"/grants?limit=1000&cursor="+cursor, nil)
		var p struct {
			Grants []struct {
				GrantID string `json:"grant_id"`
			} `json:"grants"`
			Next string `json:"next_cursor"`
		}
		if code != 200 || json.Unmarshal(body, &p) != nil {
			return nil, fmt.Errorf("grants page: HTTP %d %s", code, body)
		}
		for _, g := range p.Grants {
			if ids[g.GrantID] {
				return nil, fmt.Errorf("grant %s twice in the store", g.GrantID)
			}
			ids[g.GrantID] = true
		}
		if cursor = p.Next; cursor == "" {
			break
		}
	}
	return ids, nil
}
