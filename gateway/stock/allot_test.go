package stock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func shardStocks(t *testing.T, s *Store, campaign string, shards int) []int64 {
	t.Helper()
	c, err := s.Count(context.Background(), campaign, shards)
	if err != nil {
		t.Fatal(err)
	}
	return c.Shards
}

// TestAllotIsAbsoluteIdempotentAndMonotone: Allot raises each shard to its
// share of an absolute total once, in any order, never backwards, and
// stealing between shards leaves the allotments alone.
func TestAllotIsAbsoluteIdempotentAndMonotone(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Init(ctx, "al", 100, 4); err != nil {
		t.Fatal(err)
	}
	for _, units := range []int64{150, 120, 150, 101, 150} { // late, smaller and repeated totals
		if err := s.Allot(ctx, "al", 4, units); err != nil {
			t.Fatal(err)
		}
	}
	if got := fmt.Sprint(shardStocks(t, s, "al", 4)); got != "[38 38 37 37]" {
		t.Fatalf("shards %s, want Split(150)", got)
	}
	// Concurrent totals: the shards end at the largest.
	var wg sync.WaitGroup
	for _, units := range []int64{160, 199, 170, 199, 151} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Allot(ctx, "al", 4, units) }()
	}
	wg.Wait()
	// Claims by users homed on shard 0 steal from the others.
	for _, u := range usersHomedOn(0, 4, 80) {
		if r, err := claim(s, "al", 4, 1, u, "a"); err != nil || r.Outcome != Granted {
			t.Fatalf("claim %s: %+v %v", u, r, err)
		}
	}
	c, _ := s.Count(ctx, "al", 4)
	n, err := s.Allotted(ctx, "al", 4)
	if err != nil || n != 199 || c.Granted != 80 || c.Remaining != 119 {
		t.Fatalf("allotted %d %v, counts %+v; want 199 = 80 granted + 119 remaining", n, err, c)
	}
	if err := s.Allot(ctx, "al", 4, 199); err != nil {
		t.Fatal(err)
	}
	if c2, _ := s.Count(ctx, "al", 4); c2.Remaining != 119 {
		t.Fatalf("a repeated Allot after steals changed the stock: %+v", c2)
	}
	if err := s.Allot(ctx, "never", 2, 10); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Allot of a campaign never initialised: %v", err)
	}
}

// TestAllotAdoptsShardsWithoutAllotment: a shard created before allotments
// were recorded adopts the committed total it is given first, then grows.
func TestAllotAdoptsShardsWithoutAllotment(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	for i, u := range Split(100, 4) { // what the earlier Init wrote
		if err := c.Do(ctx, c.B().Set().Key(StockKey("legacy", i)).Value(fmt.Sprint(u)).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Allot(ctx, "legacy", 4, 100); err != nil {
		t.Fatal(err)
	}
	if err := s.Allot(ctx, "legacy", 4, 140); err != nil {
		t.Fatal(err)
	}
	n, err := s.Allotted(ctx, "legacy", 4)
	if got := fmt.Sprint(shardStocks(t, s, "legacy", 4)); err != nil || n != 140 || got != "[35 35 35 35]" {
		t.Fatalf("allotted %d %v, shards %s", n, err, got)
	}
}

// TestInitRefusesAnyOtherState: Init writes nothing over state it did not
// write itself, names what it found, and of two concurrent creates of one
// id with different shards exactly one wins.
func TestInitRefusesAnyOtherState(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if err := s.Init(ctx, "x", 1000, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Init(ctx, "x", 1000, 4); err != nil { // the retry of a create that failed after Init
		t.Fatalf("identical re-Init: %v", err)
	}
	for _, u := range usersHomedOn(2, 4, 3) {
		if _, err := claim(s, "x", 4, 1, u, "a"); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Init(ctx, "x", 1000, 4)
	var lo *LeftoverError
	if !errors.As(err, &lo) || !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), "3 grants on 4 shards (0-3), 997 units remaining") {
		t.Fatalf("Init over used shards: %v", err)
	}
	// Audience or codes alone are state too, on any shard index.
	if _, err := s.AddAudience(ctx, "aud", 700, []string{"u1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Init(ctx, "aud", 10, 1); !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), "an audience of 1 user") {
		t.Fatalf("Init over an audience: %v", err)
	}
	if _, err := s.AddCodes(ctx, "codes", []string{"A", "B"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Init(ctx, "codes", 10, 1); !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), "2 redemption codes") {
		t.Fatalf("Init over codes: %v", err)
	}
	for trial := 0; trial < 20; trial++ {
		id := fmt.Sprint("race-", trial)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for k, def := range [][2]int64{{1000, 4}, {10, 2}} {
			wg.Add(1)
			go func() { defer wg.Done(); errs[k] = s.Init(ctx, id, def[0], int(def[1])) }()
		}
		wg.Wait()
		won := -1
		for k, err := range errs {
			if err == nil {
				if won >= 0 {
					t.Fatalf("trial %d: both creates initialised", trial)
				}
				won = k
			} else if !errors.Is(err, ErrLeftover) {
				t.Fatal(err)
			}
		}
		want := map[int]string{0: "[250 250 250 250]", 1: "[5 5]"}[won]
		if got := fmt.Sprint(shardStocks(t, s, id, []int{4, 2}[max(won, 0)])); won < 0 || got != want {
			t.Fatalf("trial %d: winner %d, shards %s", trial, won, got)
		}
	}
}
