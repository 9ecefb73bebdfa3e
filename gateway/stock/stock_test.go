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
		AttemptKey: attempt, AttemptTTL: time.Minute, GrantID: NewGrantID(time.Now()), Node: "n1", Facts: "facts of " + user})
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
	r, err := s.run(ctx, takeScript, []string{StockKey("orph", 1), xferKey("orph", 1), xdoneKey("orph", 1, "x1")}, []string{"x1", "1", "0", fmt.Sprint(old)})
	if err != nil || r.status != replyTaken || r.n != 1 {
		t.Fatalf("take: %+v %v", r, err)
	}
	// Re-running the take with the same id moves nothing more.
	if r, err = s.run(ctx, takeScript, []string{StockKey("orph", 1), xferKey("orph", 1), xdoneKey("orph", 1, "x1")}, []string{"x1", "1", "0", fmt.Sprint(old)}); err != nil || r.n != 1 {
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
	if _, err := s.run(ctx, takeScript, []string{StockKey("orph", 0), xferKey("orph", 0), xdoneKey("orph", 0, "x2")}, []string{"x2", "1", "1", fmt.Sprint(young)}); err != nil {
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
	// The replay names the node that decided the grant and, until that node
	// settles it, the grant's recorded facts.
	if b.Prior.Node != "n1" || !b.Prior.Unsettled || b.Prior.Facts != "facts of alice" {
		t.Fatalf("replay before settlement: %+v", b.Prior)
	}
	if err := s.Settle(context.Background(), []Settled{{Campaign: "rep", Shard: 0, GrantID: a.GrantID}}); err != nil {
		t.Fatal(err)
	}
	if b, err = claim(s, "rep", 1, 5, "alice", "tap"); err != nil || !b.Replay || b.Prior.Unsettled || b.GrantID != a.GrantID {
		t.Fatalf("replay after settlement: %+v %v", b, err)
	}
	if c, _ := s.Count(context.Background(), "rep", 1); c.Granted != 1 {
		t.Fatalf("granted %d", c.Granted)
	}
	if _, err := claim(s, "missing", 1, 1, "bob", "x"); err != ErrNotInitialized {
		t.Fatalf("uninitialised campaign: %v", err)
	}
}

// TestAttemptRecordKeyIsUnambiguous (issue 9 #8): user "shop" with attempt
// "42:k" and user "shop:42" with attempt "k" are different attempts; the
// second is never answered with the first one's grant.
func TestAttemptRecordKeyIsUnambiguous(t *testing.T) {
	s, _ := newStore(t)
	if err := s.Init(context.Background(), "amb", 10, 1); err != nil {
		t.Fatal(err)
	}
	a, err := claim(s, "amb", 1, 5, "shop", "42:k")
	if err != nil || a.Outcome != Granted || a.Replay {
		t.Fatalf("shop: %+v %v", a, err)
	}
	b, err := claim(s, "amb", 1, 5, "shop:42", "k")
	if err != nil || b.Outcome != Granted || b.Replay || b.GrantID == a.GrantID {
		t.Fatalf("shop:42 answered %+v (shop's grant %s)", b, a.GrantID)
	}
	if _, found, err := s.LookupAttempt(context.Background(), "amb", 1, "shop:4", "2:k"); err != nil || found {
		t.Fatalf("attempt of user shop:4 found: %v %v", found, err)
	}
}

// TestLateDuplicateTakeTakesNothing (issue 9 #5): a take that arrives after
// its transfer finished (a re-sent command delivered late) moves no unit.
func TestLateDuplicateTakeTakesNothing(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Init(ctx, "dup", 4, 2); err != nil {
		t.Fatal(err)
	}
	takeKeys := []string{StockKey("dup", 1), xferKey("dup", 1), xdoneKey("dup", 1, "x1")}
	takeArgs := []string{"x1", "1", "0", fmt.Sprint(time.Now().UnixMilli())}
	if r, err := s.run(ctx, takeScript, takeKeys, takeArgs); err != nil || r.n != 1 {
		t.Fatalf("take: %+v %v", r, err)
	}
	c := &Claim{Campaign: "dup", Shards: 2, PerUserLimit: 1, User: usersHomedOn(0, 2, 1)[0], AttemptKey: "a", AttemptTTL: time.Minute,
		GrantID: NewGrantID(time.Now()), Node: "n1", Facts: "f"}
	if _, err := s.land(ctx, c, 0, 1, "x1", 1); err != nil {
		t.Fatal(err)
	}
	// The late duplicate of the take.
	if r, err := s.run(ctx, takeScript, takeKeys, takeArgs); err != nil || r.status != replyTaken || r.n != 0 {
		t.Fatalf("late take: %+v %v", r, err)
	}
	cnt, _ := s.Count(ctx, "dup", 2)
	if cnt.Shards[1] != 1 || cnt.Pending != 0 || cnt.Granted+cnt.Remaining != 4 {
		t.Fatalf("after a late duplicate take: %+v (want donor 1, nothing pending, 4 units)", cnt)
	}
}

// TestTransferNotDroppedWhenRecipientUninitialised (issue 9 #5): a transfer
// whose credit found the recipient shard missing ("not initialised") stays
// pending; it is never deleted without its unit being credited.
func TestTransferNotDroppedWhenRecipientUninitialised(t *testing.T) {
	s, rc := newStore(t)
	ctx := context.Background()
	if err := s.Init(ctx, "lost", 4, 2); err != nil {
		t.Fatal(err)
	}
	if r, err := s.run(ctx, takeScript, []string{StockKey("lost", 1), xferKey("lost", 1), xdoneKey("lost", 1, "x1")},
		[]string{"x1", "1", "0", fmt.Sprint(time.Now().UnixMilli())}); err != nil || r.n != 1 {
		t.Fatalf("take: %+v %v", r, err)
	}
	if err := rc.Do(ctx, rc.B().Del().Key(StockKey("lost", 0)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	c := &Claim{Campaign: "lost", Shards: 2, PerUserLimit: 1, User: usersHomedOn(0, 2, 1)[0], AttemptKey: "a", AttemptTTL: time.Minute,
		GrantID: NewGrantID(time.Now()), Node: "n1", Facts: "f"}
	if _, err := s.land(ctx, c, 0, 1, "x1", 1); err != ErrNotInitialized {
		t.Fatalf("land on a missing shard: %v", err)
	}
	if n, err := rc.Do(ctx, rc.B().Hlen().Key(xferKey("lost", 1)).Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("pending transfers on the donor: %d %v (want the transfer kept)", n, err)
	}
}

// FuzzParseAttempt: attempt-record and unsettled values come from Redis
// (persisted bytes); their decoders never panic and round-trip.
func FuzzParseAttempt(f *testing.F) {
	f.Add(EncodeAttempt("0190a1b2c3d4e5f60718293a4b5c6d7e", "a1b2c3d4e5f60718", 1700000000, 0), "a1b2c3d4e5f60718|\x01\x00abc")
	f.Add("x||1|2", "|")
	f.Fuzz(func(t *testing.T, attempt, unsettled string) {
		if a, err := ParseAttempt(attempt); err == nil {
			back, err := ParseAttempt(EncodeAttempt(a.GrantID, a.Node, a.ValidFrom, a.ValidUntil))
			if err != nil || back != a {
				t.Fatalf("attempt %q does not round-trip: %+v %+v %v", attempt, a, back, err)
			}
		}
		if node, facts, err := ParseUnsettled(unsettled); err == nil && EncodeUnsettled(node, facts) != unsettled {
			t.Fatalf("unsettled %q does not round-trip", unsettled)
		}
	})
}
