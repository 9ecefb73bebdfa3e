package gateway

import (
	"testing"
	"time"

	"github.com/flashgate/flashgate/antifraud"
)

// TestOverLimitCacheEvictsResetWindows: the cache of keys over a limit keeps
// only those whose window has not reset.
func TestOverLimitCacheEvictsResetWindows(t *testing.T) {
	g := &Gateway{risk: &risk{blacklist: antifraud.NewBlacklist()}}
	now := time.Now()
	for i, until := range []time.Time{now.Add(-time.Second), now.Add(time.Minute), now.Add(-time.Millisecond)} {
		g.risk.overLimit.Store(i, until.UnixNano())
		g.risk.overN.Add(1)
	}
	g.evictOverLimit(now)
	if g.risk.overN.Load() != 1 {
		t.Fatalf("%d entries left, want 1", g.risk.overN.Load())
	}
	if _, ok := g.risk.overLimit.Load(1); !ok {
		t.Fatal("the live entry was evicted")
	}
}
