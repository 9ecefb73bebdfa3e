package stock

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/internal/redisserver"
)

func newStore(t *testing.T) (*Store, rueidis.Client) {
	t.Helper()
	srv := redisserver.Start(t, redisserver.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return New(c), c
}

// usersHomedOn returns n user ids whose home shard is shard.
func usersHomedOn(shard, shards, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		u := fmt.Sprintf("u%d", i)
		if HomeShard(u, shards) == shard {
			out = append(out, u)
		}
	}
	return out
}

func claim(s *Store, campaign string, shards, limit int, user, attempt string) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Claim(ctx, &Claim{Campaign: campaign, Shards: shards, PerUserLimit: limit, User: user,
		AttemptKey: attempt, AttemptTTL: time.Minute, GrantID: NewGrantID(time.Now())})
}

// TestStealingDrainsEveryShard (I3): all users homed on one shard still get
// the whole stock, concurrently; every shard ends at 0; then sold out.
func TestStealingDrainsEveryShard(t *testing.T) {
	s, _ := newStore(t)
	const stock, shards = 64, 16
	if err := s.Init(context.Background(), "skew", stock, shards); err != nil {
		t.Fatal(err)
	}
	users := usersHomedOn(0, shards, 200)
	var mu sync.Mutex
	granted := map[string]bool{}
	soldOut := 0
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for try := 0; try < 20; try++ {
				r, err := claim(s, "skew", shards, 1, u, "a-"+u)
				if err != nil { // lost every steal round: an app would retry
					continue
				}
				mu.Lock()
				if r.Outcome == Granted {
					granted[r.GrantID] = true
				} else if r.Outcome == SoldOut {
					soldOut++
				}
				mu.Unlock()
				return
			}
			t.Errorf("user %s: no answer after 20 tries", u)
		}()
	}
	wg.Wait()
	if len(granted) != stock || soldOut != len(users)-stock {
		t.Fatalf("granted %d (want %d), sold out %d (want %d)", len(granted), stock, soldOut, len(users)-stock)
	}
	c, err := s.Count(context.Background(), "skew", shards)
	if err != nil {
		t.Fatal(err)
	}
	if c.Granted != stock || c.Remaining != 0 || c.Pending != 0 {
		t.Fatalf("counts %+v", c)
	}
	for i, n := range c.Shards {
		if n != 0 {
			t.Errorf("shard %d holds %d", i, n)
		}
	}
}

// TestSweepLandsOrphanedTransfer: a unit taken by a gateway that died before
// crediting it is landed by Sweep, exactly once, and can then be claimed.
func TestSweepLandsOrphanedTransfer(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Init(ctx, "orph", 2, 2); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute).UnixMilli()
	r, err := s.run(ctx, takeScript, []string{StockKey("orph", 1), xferKey("orph", 1)}, []string{"x1", "1", "0", fmt.Sprint(old)})
	if err != nil || r.status != replyTaken || r.n != 1 {
		t.Fatalf("take: %+v %v", r, err)
	}
	// Re-running the take with the same id moves nothing more.
	if r, err = s.run(ctx, takeScript, []string{StockKey("orph", 1), xferKey("orph", 1)}, []string{"x1", "1", "0", fmt.Sprint(old)}); err != nil || r.n != 1 {
		t.Fatalf("re-take: %+v %v", r, err)
	}
	c, _ := s.Count(ctx, "orph", 2)
	if c.Remaining != 2 || c.Pending != 1 || c.Shards[1] != 0 {
		t.Fatalf("before sweep %+v", c)
	}
	if n, err := s.Sweep(ctx, "orph", 2, time.Now()); err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if n, err := s.Sweep(ctx, "orph", 2, time.Now()); err != nil || n != 0 {
		t.Fatalf("second sweep: %d %v", n, err)
	}
	c, _ = s.Count(ctx, "orph", 2)
	if c.Remaining != 2 || c.Pending != 0 || c.Shards[0] != 2 {
		t.Fatalf("after sweep %+v", c)
	}
	// A young transfer (its gateway may be alive) is left alone.
	young := time.Now().UnixMilli()
	if _, err := s.run(ctx, takeScript, []string{StockKey("orph", 0), xferKey("orph", 0)}, []string{"x2", "1", "1", fmt.Sprint(young)}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Sweep(ctx, "orph", 2, time.Now()); n != 0 {
		t.Fatalf("swept a young transfer")
	}
}

// TestClaimReplayAfterUnknownOutcome: re-running a claim with the same
// attempt key (what Store does after a timeout) returns the first grant.
func TestClaimReplayAfterUnknownOutcome(t *testing.T) {
	s, _ := newStore(t)
	if err := s.Init(context.Background(), "rep", 10, 1); err != nil {
		t.Fatal(err)
	}
	a, err := claim(s, "rep", 1, 5, "alice", "tap")
	if err != nil || a.Outcome != Granted || a.Replay {
		t.Fatalf("%+v %v", a, err)
	}
	b, err := claim(s, "rep", 1, 5, "alice", "tap")
	if err != nil || !b.Replay || b.GrantID != a.GrantID {
		t.Fatalf("replay %+v, first %+v, %v", b, a, err)
	}
	if c, _ := s.Count(context.Background(), "rep", 1); c.Granted != 1 {
		t.Fatalf("granted %d", c.Granted)
	}
	if _, err := claim(s, "missing", 1, 1, "bob", "x"); err != ErrNotInitialized {
		t.Fatalf("uninitialised campaign: %v", err)
	}
}
