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

// TestGetMultiCountsLikeGetInOneRoundTrip: a batch of counts and a distinct
// admission answers exactly what the same calls one by one answer (on
// another prefix), its scripts are re-sent after Redis lost them (NOSCRIPT),
// and a stopped Redis gives every request an error.
func TestGetMultiCountsLikeGetInOneRoundTrip(t *testing.T) {
	srv := redisserver.Start(t, redisserver.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	batch, single := New(c, "batch", nil), New(c, "single", nil)
	ctx := context.Background()
	perSec, perMin := limiter.Rate{Period: time.Second, Limit: 3}, limiter.Rate{Period: time.Minute, Limit: 2}
	reqs := []Request{
		{Key: "ip:1", Rate: perSec},
		{Key: "ip:1:m", Rate: perMin},
		{Key: "ud:u1", Rate: perMin, Distinct: true, Member: "d1"},
	}
	for round, dev := range []string{"d1", "d2", "d3", "d1"} {
		reqs[2].Member = dev
		if round == 2 {
			// Redis forgets the scripts: the batch re-sends them as EVAL.
			if err := c.Do(ctx, c.B().ScriptFlush().Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
		out := make([]Result, len(reqs))
		batch.GetMulti(ctx, reqs, out)
		for i, q := range reqs {
			var want limiter.Context
			if q.Distinct {
				want, err = single.Distinct(ctx, q.Key, q.Member, q.Rate)
			} else {
				want, err = single.Get(ctx, q.Key, q.Rate)
			}
			if err != nil || out[i].Err != nil {
				t.Fatalf("round %d request %d: %v / %v", round, i, out[i].Err, err)
			}
			got := out[i].Context
			if got.Limit != want.Limit || got.Remaining != want.Remaining || got.Reached != want.Reached || got.Reset < want.Reset-1 || got.Reset > want.Reset+1 {
				t.Fatalf("round %d request %d: batch %+v, one by one %+v", round, i, got, want)
			}
		}
	}
	srv.Kill()
	tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	out := make([]Result, len(reqs))
	batch.GetMulti(tctx, reqs, out)
	for i := range out {
		if out[i].Err == nil {
			t.Fatalf("request %d: no error with Redis down", i)
		}
	}
}
