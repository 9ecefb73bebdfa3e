package ledger

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// records returns every record of l by grant id, failing on a grant stored twice.
func records(t *testing.T, l *Ledger) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	if err := l.Scan(0, ^uint64(0), func(r *Record) error {
		if _, dup := out[r.GrantID]; dup {
			return fmt.Errorf("grant %s stored twice", r.GrantID)
		}
		out[r.GrantID] = r.Seq
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAppendNewStaysIdempotentAgainstReplays: AppendNew skips the read of
// Pebble, yet a grant is stored once when a replayed Append of its id comes
// first (a retry that overtook the fresh append, or the settler), also after
// the replay guard has turned over many times since the id was minted, and
// when fresh and replayed appends of one id race.
func TestAppendNewStaysIdempotentAgainstReplays(t *testing.T) {
	l, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	rec := func(id string) *Record { return &Record{GrantID: id, Campaign: "c", User: "u"} }

	// Fresh ids: written once each.
	for i := 0; i < 10; i++ {
		if seq, err := l.AppendNew(ctx, rec(fmt.Sprint("fresh-", i)), l.Epoch()); err != nil || seq != uint64(i+1) {
			t.Fatalf("fresh %d: seq %d %v", i, seq, err)
		}
	}

	// A replay overtakes the fresh append of its id.
	since := l.Epoch()
	first, err := l.Append(ctx, rec("overtaken"))
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := l.AppendNew(ctx, rec("overtaken"), since); err != nil || seq != first {
		t.Fatalf("fresh append after its replay: seq %d (want %d) %v", seq, first, err)
	}

	// The guard turns over twice before the fresh append: it no longer holds
	// the id, and AppendNew falls back to reading Pebble.
	since = l.Epoch()
	first, err = l.Append(ctx, rec("old-replay"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2*replayGuardGenerationMax; i++ {
		l.mu.Lock()
		l.guard.note(fmt.Sprint("other-", i))
		l.mu.Unlock()
	}
	if l.Epoch() < since+2 {
		t.Fatalf("guard did not turn over twice: epoch %d since %d", l.Epoch(), since)
	}
	if seq, err := l.AppendNew(ctx, rec("old-replay"), since); err != nil || seq != first {
		t.Fatalf("fresh append after its replay left the guard: seq %d (want %d) %v", seq, first, err)
	}

	// Fresh and replayed appends of one id race: one record each.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		id := fmt.Sprint("race-", i)
		since := l.Epoch()
		for k := 0; k < 4; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if k == 0 {
					_, err = l.AppendNew(ctx, rec(id), since)
				} else {
					_, err = l.Append(ctx, rec(id))
				}
				if err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	got := records(t, l)
	if want := 10 + 2 + 50; len(got) != want || l.LastSeq() != uint64(want) {
		t.Fatalf("%d records, last seq %d; want %d of each", len(got), l.LastSeq(), want)
	}
}

// TestReplayGuardGenerations: an id noted after `since` is held until the
// guard has turned over twice, and from then on mayHave says "maybe" for
// every id.
func TestReplayGuardGenerations(t *testing.T) {
	var g replayGuard
	since := Epoch(g.epoch.Load())
	if g.mayHave("x", since) {
		t.Fatal("empty guard holds x")
	}
	g.note("x")
	for i := 0; i < replayGuardGenerationMax; i++ { // fills the generation x is in, then turns over
		g.note(fmt.Sprint(i))
	}
	if g.epoch.Load() != uint64(since)+1 || !g.mayHave("x", since) {
		t.Fatalf("after one turn: epoch %d, holds x %v", g.epoch.Load(), g.mayHave("x", since))
	}
	if g.mayHave("y", since) {
		t.Fatal("after one turn: holds y, never noted")
	}
	for i := 0; i < replayGuardGenerationMax; i++ {
		g.note(fmt.Sprint("b", i))
	}
	if g.epoch.Load() != uint64(since)+2 || !g.mayHave("y", since) {
		t.Fatalf("after two turns: epoch %d; an old since must always say maybe", g.epoch.Load())
	}
	if g.mayHave("y", Epoch(g.epoch.Load())) {
		t.Fatal("a fresh since: y held though never noted")
	}
}
