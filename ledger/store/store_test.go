package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/flashgate/flashgate/internal/pgtest"
)

// drivers opens a fresh store of each driver; every test below runs on both.
func drivers(t *testing.T) map[string]func(t *testing.T) *Store {
	return map[string]func(t *testing.T) *Store{
		"sqlite": func(t *testing.T) *Store {
			s, err := Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "grants.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"postgres": func(t *testing.T) *Store {
			s, err := Open(context.Background(), "postgres", pgtest.Fresh(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

func grant(i int, campaign, user string) Grant {
	return Grant{GrantID: fmt.Sprintf("g%06d", i), Campaign: campaign, User: user, Device: "d", ClientIP: "203.0.113.1",
		Shard: uint32(i % 4), GrantedAtNanos: int64(1_000_000 + i), ValidUntil: 1800000000, FaceValue: 500, Node: "n1", LedgerSeq: uint64(i + 1)}
}

func TestConformance(t *testing.T) {
	for name, open := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			t.Run("upsert is idempotent", func(t *testing.T) { testUpsertIdempotent(t, open(t)) })
			t.Run("concurrent duplicate batches", func(t *testing.T) { testConcurrentDuplicates(t, open(t)) })
			t.Run("paging and queries", func(t *testing.T) { testQueries(t, open(t)) })
			t.Run("round trip of every field", func(t *testing.T) { testRoundTrip(t, open(t)) })
			t.Run("duplicates within and across batches", func(t *testing.T) { testDuplicatesInBatch(t, open(t)) })
		})
	}
}

func testUpsertIdempotent(t *testing.T, s *Store) {
	ctx := context.Background()
	batch := []Grant{grant(1, "c", "u1"), grant(2, "c", "u2")}
	if n, err := s.Upsert(ctx, batch); err != nil || n != 2 {
		t.Fatalf("first upsert: %d %v", n, err)
	}
	batch = append(batch, grant(3, "c", "u3"))
	if n, err := s.Upsert(ctx, batch); err != nil || n != 1 {
		t.Fatalf("second upsert inserted %d (want 1) %v", n, err)
	}
	counts, err := s.Counts(ctx)
	if err != nil || counts["c"].Grants != 3 {
		t.Fatalf("counts %v %v", counts, err)
	}
	if _, err := s.Upsert(ctx, make([]Grant, BatchMax+1)); err == nil {
		t.Fatal("oversized batch accepted")
	}
}

// Eight writers deliver overlapping batches at once (redeliveries racing):
// every grant is stored exactly once.
func testConcurrentDuplicates(t *testing.T, s *Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	inserted := 0
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < 10; b++ {
				batch := make([]Grant, 0, 100)
				for i := b * 100; i < (b+1)*100; i++ {
					batch = append(batch, grant(i, "dup", fmt.Sprintf("u%d", i%50)))
				}
				n, err := s.Upsert(ctx, batch)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inserted += n
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	counts, err := s.Counts(ctx)
	if err != nil || counts["dup"].Grants != 1000 || inserted != 1000 {
		t.Fatalf("stored %+v, inserted %d (want 1000 once) %v", counts["dup"], inserted, err)
	}
	if counts["dup"].MaxPerUser != 20 || counts["dup"].Users != 50 {
		t.Fatalf("per-user figures %+v", counts["dup"])
	}
}

func testQueries(t *testing.T, s *Store) {
	ctx := context.Background()
	var batch []Grant
	for i := 0; i < 250; i++ {
		batch = append(batch, grant(i, "page", fmt.Sprintf("u%d", i%10)))
	}
	if _, err := s.Upsert(ctx, batch); err != nil {
		t.Fatal(err)
	}
	var all []string
	cursor := ""
	for pages := 0; ; pages++ {
		gs, next, err := s.ByCampaign(ctx, "page", cursor, 100)
		if err != nil || pages > 3 {
			t.Fatalf("page %d: %v", pages, err)
		}
		for _, g := range gs {
			all = append(all, g.GrantID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(all) != 250 || !sort.StringsAreSorted(all) {
		t.Fatalf("paged %d ids, sorted %v", len(all), sort.StringsAreSorted(all))
	}
	mine, err := s.ByUser(ctx, "u3", 100)
	if err != nil || len(mine) != 25 || mine[0].GrantedAtNanos < mine[24].GrantedAtNanos {
		t.Fatalf("by user: %d %v", len(mine), err)
	}
	missing, err := s.Missing(ctx, []string{"g000001", "nope", "g000249", "nope2"})
	if err != nil || len(missing) != 2 || missing[0] != "nope" || missing[1] != "nope2" {
		t.Fatalf("missing %v %v", missing, err)
	}
	n := 0
	if err := s.IDs(ctx, "page", func(string) { n++ }); err != nil || n != 250 {
		t.Fatalf("IDs %d %v", n, err)
	}
	if err := s.SaveCampaign(ctx, "page", []byte(`{"id":"page"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveCampaign(ctx, "page", []byte(`{"id":"page","v":2}`)); err != nil {
		t.Fatal(err)
	}
}

func testRoundTrip(t *testing.T, s *Store) {
	ctx := context.Background()
	g := Grant{GrantID: "01a208b03d44c86638b0c0d1ea4df568", Campaign: "d11", User: "user:ü-1", Device: "dev", ClientIP: "2001:db8::1",
		IdempotencyKey: "tap-1", Shard: 15, GrantedAtNanos: 1795442083123456789, ValidFrom: 1795442083, ValidUntil: 1796046883,
		FaceValue: 500, Node: "gw-a", LedgerSeq: 1 << 40}
	if _, err := s.Upsert(ctx, []Grant{g}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ByUser(ctx, g.User, 10)
	if err != nil || len(got) != 1 || got[0] != g {
		t.Fatalf("round trip: %+v %v", got, err)
	}
}

// testDuplicatesInBatch: one Put holding grants already stored, grants
// repeated inside it (also across the statements a large batch is split
// into), new grants and one the store cannot hold stores each new grant once,
// reports exactly those as stored and the bad one as set aside — and its
// redelivery stores nothing and reports the same set-aside grant.
func testDuplicatesInBatch(t *testing.T, s *Store) {
	ctx := context.Background()
	if res, err := s.Put(ctx, []Grant{grant(1, "c", "u1"), grant(2, "c", "u2")}); err != nil || res.Stored != 2 {
		t.Fatalf("first put: %+v %v", res, err)
	}
	bad := grant(9, "c", "u9")
	bad.Device = "d\xff"
	batch := []Grant{grant(1, "c", "u1"), grant(3, "c", "u3"), grant(3, "c", "u3"), bad, grant(4, "c", "u4"), grant(2, "c", "u2"),
		grant(4, "c", "u4"), grant(5, "c", "u5"), grant(1, "c", "u1")}
	for round, want := range []int{3, 0} {
		res, err := s.Put(ctx, batch)
		if err != nil || res.Stored != want || len(res.SetAside) != 1 || res.SetAside[0].Grant.GrantID != bad.GrantID {
			t.Fatalf("round %d: stored %d (want %d), set aside %+v, err %v", round, res.Stored, want, res.SetAside, err)
		}
	}
	// A full batch: 300 new grants, then 200 repeats of its own first 200
	// (they land in other statements of the same transaction).
	big := make([]Grant, 0, BatchMax)
	for i := 100; i < 400; i++ {
		big = append(big, grant(i, "c", fmt.Sprintf("u%d", i%7)))
	}
	big = append(big, big[:200]...)
	if res, err := s.Put(ctx, big); err != nil || res.Stored != 300 || len(res.SetAside) != 0 {
		t.Fatalf("full batch: %+v %v, want 300 stored", res, err)
	}
	counts, err := s.Counts(ctx)
	if err != nil || counts["c"].Grants != 5+300 {
		t.Fatalf("stored %+v %v, want %d grants once each", counts["c"], err, 5+300)
	}
	if aside, err := s.SetAsideOf(ctx, []string{bad.GrantID, "g000003"}); err != nil || len(aside) != 1 || !aside[bad.GrantID] {
		t.Fatalf("set aside of: %v %v", aside, err)
	}
}
