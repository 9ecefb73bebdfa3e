package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/ulule/limiter/v3"
	"github.com/ulule/limiter/v3/drivers/store/tests"

	"github.com/flashgate/flashgate/internal/redisserver"
)

func newStore(t *testing.T) (*Store, *redisserver.Server) {
	srv := redisserver.Start(t, redisserver.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return New(c, "limiter", nil), srv
}

// The library's own store suites, against a real redis-server.
func TestUluleStoreSequentialAccess(t *testing.T) {
	s, _ := newStore(t)
	tests.TestStoreSequentialAccess(t, s)
}

func TestUluleStoreConcurrentAccess(t *testing.T) {
	s, _ := newStore(t)
	tests.TestStoreConcurrentAccess(t, s)
}

// TestRedisDownIsAnError: a stopped Redis gives an error, never a panic, so
// the caller can apply the rule's fail-closed or fail-open choice.
func TestRedisDownIsAnError(t *testing.T) {
	s, srv := newStore(t)
	l := limiter.New(s, limiter.Rate{Period: time.Second, Limit: 5})
	if _, err := l.Get(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := l.Get(ctx, "k"); err == nil {
		t.Fatal("no error with Redis down")
	}
}

// TestDistinctAdmitsKnownMembers: at most 2 devices per user per window; a
// third is refused and does not lock out the two admitted ones.
func TestDistinctAdmitsKnownMembers(t *testing.T) {
	s, _ := newStore(t)
	rate := limiter.Rate{Period: time.Minute, Limit: 2}
	ctx := context.Background()
	for _, c := range []struct {
		device  string
		reached bool
	}{{"d1", false}, {"d2", false}, {"d3", true}, {"d1", false}, {"d3", true}, {"d2", false}} {
		lc, err := s.Distinct(ctx, "u1", c.device, rate)
		if err != nil {
			t.Fatal(err)
		}
		if lc.Reached != c.reached {
			t.Fatalf("device %s: reached=%v, want %v (%+v)", c.device, lc.Reached, c.reached, lc)
		}
	}
}
