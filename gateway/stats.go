package gateway

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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

// trendKey holds one minute's counts by status; kept trendTTL.
func trendKey(id string, minute int64) string {
	return "fg:{" + id + "}:trend:" + strconv.FormatInt(minute, 10)
}

const (
	trendTTL     = 48 * time.Hour
	trendMinutes = 10 // minutes shown in stats
)

func (g *Gateway) flushStatsOnce(ctx context.Context) {
	cp := g.redisC.Load()
	if cp == nil {
		return
	}
	c := *cp
	g.stats.m.Range(func(k, v any) bool {
		id, counts := k.(string), v.(*campaignCounts)
		var taken [status.N]int64
		cmds := make(rueidis.Commands, 0, 2*status.N+1)
		minute := g.now().Unix() / 60
		for i := range counts.n {
			if n := counts.n[i].Swap(0); n != 0 {
				taken[i] = n
				cmds = append(cmds, c.B().Hincrby().Key(statsKey(id)).Field(status.Status(i).String()).Increment(n).Build())
				cmds = append(cmds, c.B().Hincrby().Key(trendKey(id, minute)).Field(status.Status(i).String()).Increment(n).Build())
			}
		}
		if len(cmds) > 0 {
			cmds = append(cmds, c.B().Expire().Key(trendKey(id, minute)).Seconds(int64(trendTTL.Seconds())).Build())
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

// TrendPoint is one minute of a campaign's claims.
type TrendPoint struct {
	Minute   time.Time `json:"minute"`
	Attempts int64     `json:"attempts"`
	Granted  int64     `json:"granted"`
}

// readTrend returns the last trendMinutes minutes, oldest first.
func (g *Gateway) readTrend(ctx context.Context, id string) ([]TrendPoint, error) {
	cp := g.redisC.Load()
	if cp == nil {
		return nil, nil
	}
	c := *cp
	now := g.now().Unix() / 60
	cmds := make(rueidis.Commands, 0, trendMinutes)
	for m := now - trendMinutes + 1; m <= now; m++ {
		cmds = append(cmds, c.B().Hgetall().Key(trendKey(id, m)).Build())
	}
	out := make([]TrendPoint, 0, trendMinutes)
	for i, r := range c.DoMulti(ctx, cmds...) {
		m, err := r.AsIntMap()
		if err != nil {
			return out, err
		}
		p := TrendPoint{Minute: time.Unix((now-trendMinutes+1+int64(i))*60, 0).UTC(), Granted: m[status.Granted.String()]}
		for _, n := range m {
			p.Attempts += n
		}
		out = append(out, p)
	}
	return out, nil
}
