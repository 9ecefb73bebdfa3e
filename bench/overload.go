package bench

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/internal/procstat"
)

// memSampleEvery is how often RunOverload reads the gateway's memory.
const memSampleEvery = 100 * time.Millisecond

// OverloadOptions configure RunOverload.
type OverloadOptions struct {
	PublicURL, AdminURL, AdminToken string
	Mint                            func(user string) (string, error)
	Campaign                        string        // created with Stock, one per user
	Stock                           int64         // units; the run must grant exactly these
	Shards                          int           // default 16
	Users                           int           // population (> Stock: one grant each)
	Rate                            float64       // offered claims per second (open model)
	Duration                        time.Duration // of the run
	Connections                     int
	Timeout                         time.Duration // per request; default 5 s
	// GatewayPid, when set, is the gateway process whose resident memory
	// is sampled during the run (/proc/<pid>/status).
	GatewayPid int
	// Settle bounds the wait for the store to catch up (the oracle).
	Settle time.Duration
}

// OverloadResult is what an overload run saw.
type OverloadResult struct {
	Meta     Meta    `json:"meta"`
	Campaign string  `json:"campaign"`
	Stock    int64   `json:"stock"`
	Users    int     `json:"users"`
	Summary  Summary `json:"summary"`
	// Excess is the latency of the answers that refused for load or limits
	// (503 unavailable and 429 rate_limited together).
	Excess OutcomeLatency `json:"excess"`
	// Memory of the gateway: resident before the run, the highest sample
	// during it, and the kernel's high-water mark at its end.
	RSSBeforeBytes int64 `json:"rss_before_bytes,omitempty"`
	RSSMaxBytes    int64 `json:"rss_max_bytes,omitempty"`
	HWMBytes       int64 `json:"hwm_bytes,omitempty"`
	// SoldOutAfter is when the first sold_out answer came, from the start.
	SoldOutAfterSeconds float64       `json:"sold_out_after_seconds,omitempty"`
	Oracle              *OracleReport `json:"oracle"`
}

// RunOverload creates a campaign of Stock units and offers Rate claims per
// second for Duration from Users users (open model: requests leave on
// schedule whatever the answers), samples the gateway's memory, and judges
// the outcome: the oracle of a drop (no oversell, no duplicate, per-user
// limit, every grant stored, the gateway's audit) plus exactness — the
// clients were answered exactly Stock distinct grants and the deployment
// counts and stores exactly Stock.
func RunOverload(ctx context.Context, o OverloadOptions) (*OverloadResult, error) {
	if o.Mint == nil || o.PublicURL == "" || o.Campaign == "" || o.Stock < 1 || o.Users < 1 {
		return nil, errors.New("bench: overload needs Mint, PublicURL, Campaign, Stock and Users")
	}
	if o.Shards == 0 {
		o.Shards = 16
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	err := CreateCampaign(o.AdminURL, o.AdminToken, map[string]any{
		"id": o.Campaign, "name": "overload", "coupon": map[string]any{"type": "voucher", "amount": 500},
		"stock": o.Stock, "per_user_limit": 1, "shards": o.Shards,
	})
	if err != nil {
		return nil, err
	}
	target, err := NewClaimTarget(o.PublicURL, o.Campaign, o.Users, o.Mint)
	if err != nil {
		return nil, err
	}
	target.Run = "o"
	res := &OverloadResult{Meta: HostMeta(o.PublicURL), Campaign: o.Campaign, Stock: o.Stock, Users: o.Users}

	var mu sync.Mutex
	var observed []Observed
	var firstSoldOut time.Time
	start := time.Now()
	observe := func(i int64, resp *fasthttp.Response, label string) {
		switch label {
		case "granted":
			ob := Observed{GrantID: grantID(resp.Body()), Campaign: "overload", User: UserID(target.User(i)), Key: target.Key(i)}
			mu.Lock()
			observed = append(observed, ob)
			mu.Unlock()
		case "sold_out":
			mu.Lock()
			if firstSoldOut.IsZero() {
				firstSoldOut = time.Now()
			}
			mu.Unlock()
		}
	}
	stopMem := make(chan struct{})
	memDone := make(chan struct{})
	if o.GatewayPid > 0 {
		if m, err := procstat.Memory(o.GatewayPid); err == nil {
			res.RSSBeforeBytes = m.RSS
		}
		go func() {
			defer close(memDone)
			t := time.NewTicker(memSampleEvery)
			defer t.Stop()
			for {
				select {
				case <-stopMem:
					return
				case <-t.C:
					if m, err := procstat.Memory(o.GatewayPid); err == nil {
						res.RSSMaxBytes = max(res.RSSMaxBytes, m.RSS)
					}
				}
			}
		}()
	} else {
		close(memDone)
	}
	r, err := Run(ctx, Options{Rate: o.Rate, Duration: o.Duration, Connections: o.Connections, Timeout: o.Timeout,
		Prepare: target.Prepare, Classify: ClassifyClaim, Observe: observe})
	close(stopMem)
	<-memDone
	if err != nil {
		return nil, err
	}
	if o.GatewayPid > 0 {
		if m, err := procstat.Memory(o.GatewayPid); err == nil {
			res.HWMBytes = m.HWM
			res.RSSMaxBytes = max(res.RSSMaxBytes, m.RSS)
		}
	}
	res.Summary = r.Summarize(o.Rate)
	res.Excess = excessLatency(r)
	if !firstSoldOut.IsZero() {
		res.SoldOutAfterSeconds = firstSoldOut.Sub(start).Seconds()
	}

	sc := &Scenario{Campaigns: []CampaignSpec{{ID: "overload", Stock: o.Stock, PerUserLimit: 1}}}
	drop := &DropResult{Campaigns: map[string]string{"overload": o.Campaign}, Observed: observed}
	res.Oracle = RunOracle(ctx, drop, sc, o.AdminURL, o.AdminToken, o.Settle)
	for _, c := range res.Oracle.Campaigns {
		if c.ClientGranted != o.Stock || c.RedisGranted != o.Stock || c.Stored != o.Stock {
			res.Oracle.Violations = append(res.Oracle.Violations, fmt.Sprintf(
				"exactness: stock %d, but %d distinct grants answered, %d counted in Redis, %d stored", o.Stock, c.ClientGranted, c.RedisGranted, c.Stored))
		}
	}
	sort.Strings(res.Oracle.Violations)
	res.Oracle.OK = len(res.Oracle.Violations) == 0
	return res, nil
}

// excessLatency merges the latency of 503 and 429 answers.
func excessLatency(r *Result) OutcomeLatency {
	lat, svc := hdrhistogram.New(1, latencyMax.Microseconds(), 2), hdrhistogram.New(1, latencyMax.Microseconds(), 2)
	for _, k := range []string{"unavailable", "rate_limited"} {
		if h := r.ByOutcome[k]; h != nil {
			lat.Merge(h.Latency)
			svc.Merge(h.Service)
		}
	}
	ms := func(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	return OutcomeLatency{Count: lat.TotalCount(), P50Ms: ms(lat, 50), P99Ms: ms(lat, 99), MaxMs: float64(lat.Max()) / 1000, ServiceP50Ms: ms(svc, 50), ServiceP99Ms: ms(svc, 99)}
}

// Table renders an overload result.
func (r *OverloadResult) Table(title string) string {
	var b strings.Builder
	b.WriteString(r.Summary.Table(title))
	b.WriteString(r.Summary.OutcomeTable())
	fmt.Fprintf(&b, "  excess answers (503 + 429): %d, from intended send p50 %.2fms p99 %.2fms; service p50 %.2fms p99 %.2fms\n",
		r.Excess.Count, r.Excess.P50Ms, r.Excess.P99Ms, r.Excess.ServiceP50Ms, r.Excess.ServiceP99Ms)
	if r.SoldOutAfterSeconds > 0 {
		fmt.Fprintf(&b, "  sold out %.1fs into the run\n", r.SoldOutAfterSeconds)
	}
	if r.RSSMaxBytes > 0 {
		fmt.Fprintf(&b, "  gateway memory: RSS %.0f MiB before, max %.0f MiB during the run (sampled every %v); VmHWM %.0f MiB\n",
			mib(r.RSSBeforeBytes), mib(r.RSSMaxBytes), memSampleEvery, mib(r.HWMBytes))
	}
	for _, c := range r.Oracle.Campaigns {
		fmt.Fprintf(&b, "  stock %d: distinct grants answered %d, counted in Redis %d, stored %d\n", c.Stock, c.ClientGranted, c.RedisGranted, c.Stored)
	}
	if r.Oracle.OK {
		b.WriteString("  oracle: OK — granted exactly the stock; no oversell, no duplicate, every grant stored\n")
	} else {
		b.WriteString("  oracle: VIOLATIONS\n")
		for _, v := range r.Oracle.Violations {
			b.WriteString("    " + v + "\n")
		}
	}
	return b.String()
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// OutcomeTable renders each outcome's latency, most frequent first.
func (s Summary) OutcomeTable() string {
	keys := make([]string, 0, len(s.ByOutcome))
	for k := range s.ByOutcome {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return s.ByOutcome[keys[i]].Count > s.ByOutcome[keys[j]].Count })
	var b strings.Builder
	b.WriteString("  by outcome        count   from intended: p50      p99   service: p50      p99\n")
	for _, k := range keys {
		l := s.ByOutcome[k]
		fmt.Fprintf(&b, "    %-15s %8d   %12.2fms %8.2fms %12.2fms %8.2fms\n", k, l.Count, l.P50Ms, l.P99Ms, l.ServiceP50Ms, l.ServiceP99Ms)
	}
	return b.String()
}
