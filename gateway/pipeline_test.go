package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
)

// loadDistinctUsers sends n claims from n distinct users with parallel
// clients, retrying 503s like an app; it returns the granted answers.
func loadDistinctUsers(t *testing.T, s *stack.Stack, campaign string, n, parallel int) map[string]string {
	t.Helper()
	var mu sync.Mutex
	granted := map[string]string{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				user := fmt.Sprintf("%s-u%06d", campaign, i)
				for try := 0; try < 50; try++ {
					a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: campaign, User: user, Device: "d", IdempotencyKey: "k"})
					if err != nil {
						t.Error(err)
						return
					}
					if a.HTTP == 503 {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					if a.Status == "granted" {
						mu.Lock()
						granted[a.GrantID] = user
						mu.Unlock()
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	return granted
}

// TestPipeline20000GrantsThenAudit (I5, I6): 20,000 grants through ledger →
// JetStream → sink → SQLite; the audit finds store == ledger == Redis.
func TestPipeline20000GrantsThenAudit(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000-grant pipeline run skipped in -short")
	}
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "p20k", Stock: 20000, Shards: 8})
	granted := loadDistinctUsers(t, s, "p20k", 20000, 128)
	if len(granted) != 20000 {
		t.Fatalf("granted %d, want 20000", len(granted))
	}
	rep := stack.RequireCleanAudit(t, s.Gateway, 60*time.Second)
	r := rep.Campaigns[0]
	if r.Store != 20000 || r.Ledger != 20000 || r.RedisGranted != 20000 || r.Stream != 20000 {
		t.Fatalf("audit row %+v", r)
	}
	// Every granted answer is in the store.
	ids := map[string]bool{}
	if err := s.Gateway.Store().IDs(context.Background(), "p20k", func(id string) { ids[id] = true }); err != nil {
		t.Fatal(err)
	}
	for id := range granted {
		if !ids[id] {
			t.Fatalf("granted %s not in the store", id)
		}
	}
	// The user sees it in /v1/me/coupons; the admin pages through it.
	var user, gid string
	for gid, user = range granted {
		break
	}
	req, _ := http.NewRequest("GET", s.PublicURL+"/v1/me/coupons", nil)
	req.Header.Set("Authorization", "Bearer "+stack.Token(user))
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var mine struct {
		Grants []struct {
			GrantID string `json:"grant_id"`
		} `json:"grants"`
	}
	json.NewDecoder(resp.Body).Decode(&mine)
	resp.Body.Close()
	if len(mine.Grants) != 1 || mine.Grants[0].GrantID != gid {
		t.Fatalf("/v1/me/coupons of %s: %+v, want %s", user, mine, gid)
	}
	seen, cursor := 0, ""
	for page := 0; page < 30; page++ {
		code, body := s.Admin("GET", "/admin/v1/campaigns/p20k/grants?limit=1000&cursor="+cursor, nil)
		var p struct {
			Grants []json.RawMessage `json:"grants"`
			Next   string            `json:"next_cursor"`
		}
		if code != 200 || json.Unmarshal(body, &p) != nil {
			t.Fatalf("grants page: %d %s", code, body)
		}
		seen += len(p.Grants)
		if cursor = p.Next; cursor == "" {
			break
		}
	}
	if seen != 20000 {
		t.Fatalf("admin paging saw %d grants", seen)
	}
	// The admin audit endpoint agrees.
	code, body := s.Admin("GET", "/admin/v1/audit", nil)
	if code != 200 {
		t.Fatalf("audit endpoint: %d %s", code, body)
	}
}

// TestGrantPublishedTwiceOneRow (I5): every grant published again (a relay
// restarted after publishing, before its cursor moved) — with the same
// message id, and again with new ids past JetStream's dedup — gives one row.
func TestGrantPublishedTwiceOneRow(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "twice", Stock: 300, Shards: 2})
	if n := len(loadDistinctUsers(t, s, "twice", 300, 32)); n != 300 {
		t.Fatalf("granted %d", n)
	}
	stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)

	nc, err := nats.Connect(s.Gateway.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var recs []ledger.Record
	s.Gateway.Ledger().Scan(0, ^uint64(0), func(r *ledger.Record) error { recs = append(recs, *r); return nil })
	if err := relay.Republish(context.Background(), js, s.Gateway.Ledger().ID(), recs); err != nil {
		t.Fatal(err)
	}
	// The relay's last message again, with its own id (a relay restarted
	// after publishing, before its cursor moved): JetStream drops it.
	stream, err := js.Stream(context.Background(), relay.Stream)
	if err != nil {
		t.Fatal(err)
	}
	last, err := stream.GetLastMsgForSubject(context.Background(), relay.Subject(s.Gateway.Ledger().ID()))
	if err != nil {
		t.Fatal(err)
	}
	again := nats.NewMsg(last.Subject)
	again.Data, again.Header = last.Data, last.Header
	ack, err := js.PublishMsg(context.Background(), again)
	if err != nil || !ack.Duplicate {
		t.Fatalf("re-published batch %s not dropped as a duplicate: %+v %v", last.Header.Get(jetstream.MsgIDHeader), ack, err)
	}
	// And again under a new id, past the dedup window: the primary key holds.
	m := relay.Message(s.Gateway.Ledger().ID(), recs)
	m.Header.Set(jetstream.MsgIDHeader, "again")
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	wait.Until(context.Background(), 20*time.Second, func() bool { return metric(t, s.Gateway, "flashgate_sink_duplicates_total") >= 600 })
	if d := metric(t, s.Gateway, "flashgate_sink_duplicates_total"); d != 600 {
		t.Fatalf("sink saw %v duplicates, want 600 (300 reconcile + 300 under a new id; the same-id batch dropped by JetStream)", d)
	}
	rep := stack.RequireCleanAudit(t, s.Gateway, 10*time.Second)
	if rep.Campaigns[0].Store != 300 {
		t.Fatalf("store holds %d, want 300", rep.Campaigns[0].Store)
	}
}

// TestRelayResumesAfterCrashBetweenCommitAndPublish: grants committed to the
// ledger by a gateway that died before relaying them reach the store when a
// gateway restarts on that data dir.
func TestRelayResumesAfterCrashBetweenCommitAndPublish(t *testing.T) {
	dataDir := t.TempDir()
	s := stack.Start(t, stack.Options{DataDir: dataDir})
	s.CreateCampaign(stack.Campaign{ID: "crash", Stock: 1000, Shards: 2})
	stack.RequireCleanAudit(t, s.Gateway, 10*time.Second)
	redis := s.Redis
	s.Stop()

	// What a gateway leaves when killed after the ledger commit and before
	// the relay: grants in the ledger, none in the stream. (Redis counters
	// are made to match, as the claim script would have.)
	l, err := ledger.Open(ledger.Options{Dir: filepath.Join(dataDir, "ledger")})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 250; i++ {
		if _, err := l.Append(context.Background(), &ledger.Record{GrantID: fmt.Sprintf("crash-%04d", i), Campaign: "crash", User: fmt.Sprintf("u%d", i), Device: "d", ClientIP: "127.0.0.1", GrantedAtNanos: time.Now().UnixNano()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := redisCLI(redis.Addr(), "DECRBY", "fg:{crash.0}:stock", "250")
	if err != nil {
		t.Fatal(err, out)
	}
	redisCLI(redis.Addr(), "INCRBY", "fg:{crash.0}:granted", "250")

	s2 := stack.Start(t, stack.Options{DataDir: dataDir, Redis: redis})
	rep := stack.RequireCleanAudit(t, s2.Gateway, 20*time.Second)
	if rep.Campaigns[0].Store != 250 || rep.Campaigns[0].Ledger != 250 {
		t.Fatalf("after restart: %+v", rep.Campaigns[0])
	}
}

func metric(t *testing.T, g *gateway.Gateway, name string) float64 {
	t.Helper()
	var v float64
	for _, line := range splitLines(g.MetricsText()) {
		if len(line) > len(name) && line[:len(name)] == name && line[len(name)] == ' ' {
			fmt.Sscan(line[len(name)+1:], &v)
		}
	}
	return v
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}
