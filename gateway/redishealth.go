package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
)

// Redis health per master (issue 12): which masters hold a shard of a live
// campaign, and whether each answers. It feeds /readyz (health.go), the
// gauge flashgate_redis_master_up{master} and a rate-limited warning.
//
// Why a dead master does not make the gateway unready. Every gateway of a
// fleet talks to the same Redis masters, so when one master is down all of
// them lose the same shards at the same moment. Readiness is what a load
// balancer uses to move traffic to another gateway; here there is no better
// gateway to move it to, and if /readyz failed, every gateway would leave the
// balancer together and the whole drop would stop — although the shards on
// the other masters can serve, and their claims can steal from each other
// (package stock). So a dead master makes Redis "degraded": /readyz stays
// 200, names the master in checks.redis and in redis_masters, the claims
// for its shards answer 503 (nothing is granted on them, and nothing is
// declared sold out while they are unread), and the others are granted.
// /readyz fails for Redis only when no master holding a live shard answers
// (or no node answers at all): then this gateway can grant nothing, as a
// single Redis that is down. A campaign is live while it is active, not yet
// started or paused.
//
// "Answers" means the node replies to CLUSTER INFO within readyProbeTimeout
// and says cluster_state:ok — a master whose cluster is in the fail state
// (cluster-require-full-coverage yes with another master down, or a master
// restarted and not yet in agreement) refuses every key with CLUSTERDOWN. A
// single Redis (no cluster) is one master that must answer PING.

const (
	// readyProbeTimeout bounds the readiness probe of the Redis masters.
	readyProbeTimeout = 500 * time.Millisecond
	// redisWatchInterval is how often the masters are probed for the gauge
	// and the log.
	redisWatchInterval = time.Second
	// redisDownWarnEvery rate-limits the warning repeated while a master
	// holding live shards stays down.
	redisDownWarnEvery = 30 * time.Second
	// downShardsListed bounds the shards a warning names.
	downShardsListed = 16
)

// redisMaster is one master in /readyz's redis_masters.
type redisMaster struct {
	Addr string `json:"addr"`
	// Status is "ok", or why the master does not serve.
	Status string `json:"status"`
	// LiveShards counts the shards of live campaigns whose slot it serves.
	LiveShards int `json:"live_shards"`
	up         bool
	shards     []string // "<campaign>/<shard>", the first downShardsListed
}

// redisReport is what a probe of the masters found.
type redisReport struct {
	masters []redisMaster // by address
	err     error         // no node answered: masters is empty
}

// up counts the masters that answer, and those that answer and hold live
// shards; live is the number of live shards in all.
func (r redisReport) counts() (upAll, upLive, live int) {
	for _, m := range r.masters {
		live += m.LiveShards
		if m.up {
			upAll++
			if m.LiveShards > 0 {
				upLive++
			}
		}
	}
	return
}

// redisReadiness is the readiness line of Redis: ok, degraded (ready, with
// the masters that are down named) or failing.
func (r redisReport) readiness() (msg string, ok bool) {
	if r.err != nil {
		return r.err.Error(), false
	}
	upAll, upLive, live := r.counts()
	var down []string
	var downLive int
	for _, m := range r.masters {
		if !m.up {
			down = append(down, fmt.Sprintf("%s (%d live shards: %s)", m.Addr, m.LiveShards, m.Status))
			downLive += m.LiveShards
		}
	}
	switch {
	case upAll == 0:
		return "no Redis master answers: " + strings.Join(down, "; "), false
	case live > 0 && upLive == 0:
		return "no master holding a live shard answers: " + strings.Join(down, "; "), false
	case len(down) > 0:
		return fmt.Sprintf("degraded: %d of %d masters down, %d of %d live shards answer 503, the others are served: %s",
			len(down), len(r.masters), downLive, live, strings.Join(down, "; ")), true
	}
	return "ok", true
}

// liveCampaign: a campaign whose shards claims (or their replays) may need
// now or soon.
func liveCampaign(c *campaign.Campaign, now time.Time) bool {
	switch c.StateAt(now) {
	case campaign.StateActive, campaign.StateNotStarted, campaign.StatePaused:
		return true
	}
	return false
}

// probeRedis asks every node the client knows for its cluster state and the
// slot map, and places the shards of every live campaign on their masters.
func (g *Gateway) probeRedis(ctx context.Context) redisReport {
	cp := g.redisC.Load()
	if cp == nil {
		return redisReport{err: errors.New("not connected")}
	}
	c := *cp
	ctx, cancel := context.WithTimeout(ctx, readyProbeTimeout)
	defer cancel()
	if c.Mode() != rueidis.ClientModeCluster {
		return g.probeSingle(ctx, c)
	}
	answers := probeNodes(ctx, c.Nodes())
	slots, err := slotMap(answers)
	if err != nil {
		return redisReport{err: err}
	}
	masters := map[string]*redisMaster{}
	for _, addr := range slots {
		if masters[addr] != nil {
			continue
		}
		m := &redisMaster{Addr: addr, Status: "not known to the client", up: false}
		if a := answers[addr]; a != nil {
			m.Status, m.up = a.status, a.status == "ok"
		}
		masters[addr] = m
	}
	unassigned := &redisMaster{Addr: "(no master)", Status: "slot not served by any master"}
	g.placeShards(masters, func(key string) string {
		if addr, ok := slots[keySlot(key)]; ok {
			return addr
		}
		masters[unassigned.Addr] = unassigned
		return unassigned.Addr
	})
	out := make([]redisMaster, 0, len(masters))
	for _, m := range masters {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return redisReport{masters: out}
}

// probeSingle: one Redis (no cluster) holds every shard; it answers PING.
func (g *Gateway) probeSingle(ctx context.Context, c rueidis.Client) redisReport {
	m := redisMaster{Status: "ok", up: true}
	for addr, n := range c.Nodes() {
		m.Addr = addr
		if err := n.Do(ctx, n.B().Ping().Build()).Error(); err != nil {
			m.Status, m.up = err.Error(), false
		}
	}
	g.placeShards(map[string]*redisMaster{m.Addr: &m}, func(string) string { return m.Addr })
	return redisReport{masters: []redisMaster{m}}
}

// nodeAnswer is what one cluster node said.
type nodeAnswer struct {
	status string            // "ok" or why the node does not serve
	slots  map[uint16]string // its slot map
	err    error             // CLUSTER SLOTS failed
}

// probeNodes asks every node, concurrently, for CLUSTER INFO and CLUSTER
// SLOTS.
func probeNodes(ctx context.Context, nodes map[string]rueidis.Client) map[string]*nodeAnswer {
	answers := make(map[string]*nodeAnswer, len(nodes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for addr, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &nodeAnswer{}
			res := n.DoMulti(ctx, n.B().ClusterInfo().Build(), n.B().ClusterSlots().Build())
			if info, err := res[0].ToString(); err != nil {
				a.status = err.Error()
			} else if st := clusterState(info); st != "ok" {
				a.status = "cluster_state:" + st + " (refuses keys: CLUSTERDOWN)"
			} else {
				a.status = "ok"
			}
			a.slots, a.err = parseClusterSlots(res[1], addr)
			mu.Lock()
			answers[addr] = a
			mu.Unlock()
		}()
	}
	wg.Wait()
	return answers
}

// slotMap is the slot map of the first node (by address) that gave one:
// every node of a healthy cluster gives the same, and a dead master's slots
// stay listed under it until a replica takes them over.
func slotMap(answers map[string]*nodeAnswer) (map[uint16]string, error) {
	addrs := make([]string, 0, len(answers))
	for addr := range answers {
		addrs = append(addrs, addr)
	}
	sort.Strings(addrs)
	lastErr := errors.New("no node known")
	for _, addr := range addrs {
		if a := answers[addr]; a.err == nil && len(a.slots) > 0 {
			return a.slots, nil
		} else if a.err != nil {
			lastErr = a.err
		}
	}
	return nil, fmt.Errorf("no Redis node gives the slot map: %w", lastErr)
}

// placeShards counts every live shard on the master that serves its slot
// (masterOf: a key of the shard → master address; it may add a master).
func (g *Gateway) placeShards(masters map[string]*redisMaster, masterOf func(key string) string) {
	now := g.now()
	for _, c := range g.reg.List() {
		if !liveCampaign(c, now) {
			continue
		}
		for i := 0; i < c.Shards; i++ {
			m := masters[masterOf(stock.StockKey(c.ID, i))]
			m.LiveShards++
			if len(m.shards) < downShardsListed {
				m.shards = append(m.shards, c.ID+"/"+strconv.Itoa(i))
			}
		}
	}
}

// clusterState reads cluster_state from CLUSTER INFO (RESP3 gives it as a
// verbatim string with a "txt:" prefix).
func clusterState(info string) string {
	for _, line := range strings.Split(strings.TrimPrefix(info, "txt:"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster_state:"); ok {
			return v
		}
	}
	return "unknown"
}

// parseClusterSlots turns a CLUSTER SLOTS reply into slot → master address;
// a master announced without an IP is on the host that answered.
func parseClusterSlots(res rueidis.RedisResult, asked string) (map[uint16]string, error) {
	ranges, err := res.ToArray()
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(asked)
	out := make(map[uint16]string, 16384)
	for _, r := range ranges {
		f, err := r.ToArray()
		if err != nil || len(f) < 3 {
			return nil, errors.New("malformed CLUSTER SLOTS entry")
		}
		lo, err1 := f[0].AsInt64()
		hi, err2 := f[1].AsInt64()
		m, err3 := f[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(m) < 2 || lo < 0 || hi >= 16384 || lo > hi {
			return nil, errors.New("malformed CLUSTER SLOTS entry")
		}
		ip, _ := m[0].ToString()
		port, err := m[1].AsInt64()
		if err != nil {
			return nil, errors.New("malformed CLUSTER SLOTS master")
		}
		if ip == "" || ip == "?" {
			ip = host
		}
		addr := net.JoinHostPort(ip, strconv.FormatInt(port, 10))
		for s := lo; s <= hi; s++ {
			out[uint16(s)] = addr
		}
	}
	return out, nil
}

// keySlot is the Redis Cluster hash slot of a key: CRC16 (XMODEM) of its
// hash tag, mod 16384.
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

// watchRedisMasters probes the masters every redisWatchInterval until ctx
// ends: it sets flashgate_redis_master_up{master} and
// flashgate_redis_live_shards_down (and registers
// flashgate_redis_tryagain_total), warns when a master holding live shards
// is found down by two probes in a row (again every redisDownWarnEvery while
// it stays down; the claims for its shards answer 503), and says when it is
// back.
func (g *Gateway) watchRedisMasters(ctx context.Context) {
	w, err := g.newMasterWatch()
	if err != nil {
		g.log.Error("redis master metrics not registered", "err", err)
		return
	}
	t := time.NewTicker(redisWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if g.redisC.Load() == nil {
			continue
		}
		rep := g.probeRedis(ctx)
		if rep.err != nil {
			if ctx.Err() == nil {
				g.log.Warn("redis: no node answers", "err", rep.err)
			}
			continue
		}
		w.observe(rep, time.Now())
	}
}

// masterWatch is watchRedisMasters' state: its metrics and the masters it
// has seen down.
type masterWatch struct {
	g          *Gateway
	up         *prometheus.GaugeVec
	shardsDown prometheus.Gauge
	downs      map[string]*masterDown
}

// masterDown: since when a master is down, when it was last warned about,
// and how many probes in a row found it down.
type masterDown struct {
	since, warned time.Time
	probes        int
}

func (g *Gateway) newMasterWatch() (*masterWatch, error) {
	w := &masterWatch{g: g, downs: map[string]*masterDown{}}
	w.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flashgate_redis_master_up",
		Help: "1 while the Redis master answers (cluster_state ok), 0 while it does not; one series per master of the slot map."}, []string{"master"})
	w.shardsDown = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flashgate_redis_live_shards_down",
		Help: "Shards of live campaigns whose Redis master does not answer: their claims answer 503."})
	tryAgains := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_redis_tryagain_total",
		Help: "Stock scripts refused with TRYAGAIN because their shard's hash slot was being moved (resharding), and sent again."},
		func() float64 {
			if st := g.stock(); st != nil {
				return float64(st.TryAgains())
			}
			return 0
		})
	for _, c := range []prometheus.Collector{w.up, w.shardsDown, tryAgains} {
		if err := g.metrics.reg.Register(c); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// observe sets the gauges from one probe and logs what changed.
func (w *masterWatch) observe(rep redisReport, now time.Time) {
	w.up.Reset()
	var down int
	for _, m := range rep.masters {
		d := w.downs[m.Addr]
		if m.up {
			w.up.WithLabelValues(m.Addr).Set(1)
			if d != nil {
				delete(w.downs, m.Addr)
				if !d.warned.IsZero() {
					w.g.log.Info("redis master answers again; its shards are served", "master", m.Addr, "live_shards", m.LiveShards, "down_for", now.Sub(d.since).Round(time.Second).String())
				}
			}
			continue
		}
		w.up.WithLabelValues(m.Addr).Set(0)
		down += m.LiveShards
		if d == nil {
			d = &masterDown{since: now}
			w.downs[m.Addr] = d
		}
		d.probes++
		// Two probes in a row: one slow answer on a starved machine is not
		// an outage worth a warning (the gauge shows it anyway).
		if m.LiveShards > 0 && d.probes >= 2 && now.Sub(d.warned) >= redisDownWarnEvery {
			d.warned = now
			w.g.log.Warn("redis master down: claims on its shards answer 503, the other shards are served",
				"master", m.Addr, "status", m.Status, "live_shards", m.LiveShards, "shards", strings.Join(m.shards, ","),
				"down_for", now.Sub(d.since).Round(time.Second).String())
		}
	}
	for addr := range w.downs { // masters no longer in the slot map
		if !rep.has(addr) {
			delete(w.downs, addr)
		}
	}
	w.shardsDown.Set(float64(down))
}

func (r redisReport) has(addr string) bool {
	for _, m := range r.masters {
		if m.Addr == addr {
			return true
		}
	}
	return false
}
