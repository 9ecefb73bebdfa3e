package gateway

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/gateway/status"
)

// statsCounters are this gateway's claim counts by campaign and status not
// yet flushed to Redis. Handlers add with atomics; flushStatsOnce moves them
// to the campaign's stats hash (fg:{<campaign>}:stats, field = status) once a
// second, so admin stats cover every gateway with at most a second of lag.
type statsCounters struct{ m sync.Map } // campaign id -> *campaignCounts

type campaignCounts struct{ n [status.N]atomic.Int64 }

func (s *statsCounters) of(id string) *campaignCounts {
	if c, ok := s.m.Load(id); ok {
		return c.(*campaignCounts)
	}
	c, _ := s.m.LoadOrStore(id, new(campaignCounts))
	return c.(*campaignCounts)
}

func (c *campaignCounts) add(s status.Status, n int64) { c.n[s].Add(n) }

func statsKey(id string) string { return "fg:{" + id + "}:stats" }

func (g *Gateway) flushStatsOnce(ctx context.Context) {
	cp := g.redisC.Load()
	if cp == nil {
		return
	}
	c := *cp
	g.stats.m.Range(func(k, v any) bool {
		id, counts := k.(string), v.(*campaignCounts)
		var taken [status.N]int64
		cmds := make(rueidis.Commands, 0, status.N)
		for i := range counts.n {
			if n := counts.n[i].Swap(0); n != 0 {
				taken[i] = n
				cmds = append(cmds, c.B().Hincrby().Key(statsKey(id)).Field(status.Status(i).String()).Increment(n).Build())
			}
		}
		if len(cmds) == 0 {
			return true
		}
		for _, r := range c.DoMulti(ctx, cmds...) {
			if r.Error() != nil {
				// Outcome unknown for some increments: give the counts back
				// rather than lose them; stats may then over-count by one
				// flush, never under-count. Retried next tick.
				for i, n := range taken {
					counts.n[i].Add(n)
				}
				return false
			}
		}
		return true
	})
}

// readStats returns the campaign's flushed counts plus this gateway's unflushed ones.
func (g *Gateway) readStats(ctx context.Context, id string) (map[string]int64, error) {
	out := map[string]int64{}
	if v, ok := g.stats.m.Load(id); ok {
		counts := v.(*campaignCounts)
		for i := range counts.n {
			if n := counts.n[i].Load(); n != 0 {
				out[status.Status(i).String()] += n
			}
		}
	}
	cp := g.redisC.Load()
	if cp == nil {
		return out, nil
	}
	m, err := (*cp).Do(ctx, (*cp).B().Hgetall().Key(statsKey(id)).Build()).AsIntMap()
	if err != nil {
		return out, err
	}
	for k, n := range m {
		out[k] += n
	}
	return out, nil
}
