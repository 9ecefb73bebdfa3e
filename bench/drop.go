package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// drainMax bounds how long a run waits for in-flight taps (and their
// retries) after the schedule ends.
const drainMax = 30 * time.Second

// DropOptions configure a scenario run against a deployment.
type DropOptions struct {
	Scenario   *Scenario
	PublicURL  string
	AdminURL   string
	AdminToken string
	// Mint returns a bearer token for a user id (HS256 or EdDSA).
	Mint func(user string) (string, error)
	// RunID suffixes campaign ids so runs do not collide; default from the clock.
	RunID    string
	Progress io.Writer // a live progress line when non-nil (a terminal)
	Client   *fasthttp.Client
}

// Observed is one granted answer as a client saw it.
type Observed struct {
	GrantID  string `json:"grant_id"`
	Campaign string `json:"campaign"`
	User     string `json:"user"`
	Key      string `json:"idempotency_key"`
}

// Meta describes where and how a run happened.
type Meta struct {
	Scenario   string    `json:"scenario"`
	Seed       int64     `json:"seed"`
	RunID      string    `json:"run_id"`
	Started    time.Time `json:"started"`
	Commit     string    `json:"commit"`
	GoVersion  string    `json:"go_version"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	CPU        string    `json:"cpu"`
	Target     string    `json:"target"`
}

// SeriesPoint is one second of a run.
type SeriesPoint struct {
	Second     int              `json:"second"`
	TargetRate float64          `json:"target_rate"`
	Sent       int64            `json:"sent"`
	P50Ms      float64          `json:"p50_ms"`
	P99Ms      float64          `json:"p99_ms"`
	MaxMs      float64          `json:"max_ms"`
	Outcomes   map[string]int64 `json:"outcomes"`
}

// DropResult is everything a run produced.
type DropResult struct {
	Meta      Meta              `json:"meta"`
	Summary   Summary           `json:"summary"`
	Taps      int64             `json:"taps"`
	Retries   int64             `json:"retries"`
	Series    []SeriesPoint     `json:"series"`
	Campaigns map[string]string `json:"campaigns"` // scenario id -> deployed id
	Observed  []Observed        `json:"-"`
	Oracle    *OracleReport     `json:"oracle,omitempty"`
}

type bucket struct {
	mu       sync.Mutex
	sent     int64
	hist     *hdrhistogram.Histogram
	outcomes map[string]int64
}

type population struct {
	tokens  []string // users then bots: "Bearer …"
	devices []string
	ips     []string
	users   int
}

func newPopulation(sc *Scenario, mint func(string) (string, error)) (*population, error) {
	n := sc.Users + sc.Bots.Count
	p := &population{tokens: make([]string, n), devices: make([]string, n), ips: make([]string, n), users: sc.Users}
	for i := 0; i < n; i++ {
		var id string
		if i < sc.Users {
			id = "user-" + strconv.Itoa(i)
			p.devices[i] = "device-" + strconv.Itoa(i)
			p.ips[i] = fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
		} else {
			b := i - sc.Users
			id = "bot-" + strconv.Itoa(b)
			p.devices[i] = "bot-device-" + strconv.Itoa(b%sc.Bots.Devices)
			p.ips[i] = "198.18.0." + strconv.Itoa(1+b%sc.Bots.IPs)
		}
		tok, err := mint(id)
		if err != nil {
			return nil, err
		}
		p.tokens[i] = "Bearer " + tok
	}
	return p, nil
}

func (p *population) user(i int) string {
	if i < p.users {
		return "user-" + strconv.Itoa(i)
	}
	return "bot-" + strconv.Itoa(i-p.users)
}

// RunDrop creates the scenario's campaigns and plays it against the target.
func RunDrop(ctx context.Context, o DropOptions) (*DropResult, error) {
	sc := o.Scenario
	if sc == nil || o.Mint == nil || o.PublicURL == "" {
		return nil, errors.New("bench: Scenario, Mint and PublicURL are required")
	}
	profile, err := sc.Profile()
	if err != nil {
		return nil, err
	}
	if o.RunID == "" {
		o.RunID = strconv.FormatInt(time.Now().Unix()%1_000_000, 36)
	}
	res := &DropResult{Campaigns: map[string]string{}, Meta: runMeta(sc, o)}
	for _, c := range sc.Campaigns {
		id := c.ID + "-" + o.RunID
		res.Campaigns[c.ID] = id
		def := map[string]any{"id": id, "name": c.ID, "coupon": c.Coupon, "stock": c.Stock, "per_user_limit": c.PerUserLimit}
		if c.Shards > 0 {
			def["shards"] = c.Shards
		}
		if err := CreateCampaign(o.AdminURL, o.AdminToken, def); err != nil {
			return nil, err
		}
	}
	pop, err := newPopulation(sc, o.Mint)
	if err != nil {
		return nil, err
	}
	client := o.Client
	if client == nil {
		client = &fasthttp.Client{MaxConnsPerHost: sc.Connections, ReadTimeout: sc.Timeout, WriteTimeout: sc.Timeout, MaxIdleConnDuration: time.Minute}
	}
	seconds := int(sc.Duration/time.Second) + int(drainMax/time.Second) + 2
	buckets := make([]*bucket, seconds)
	for i := range buckets {
		buckets[i] = &bucket{hist: hdrhistogram.New(1, latencyMax.Microseconds(), 2), outcomes: map[string]int64{}}
	}
	cum := make([]float64, len(sc.Campaigns))
	total := 0.0
	for i, c := range sc.Campaigns {
		total += c.Weight
		cum[i] = total
	}

	queue := make(chan time.Time, scheduleQueueMax)
	var late, taps, retries atomic.Int64
	start := time.Now()
	res.Meta.Started = start.UTC()
	runCtx, cancel := context.WithTimeout(ctx, sc.Duration)
	defer cancel()
	go schedule(runCtx, start, profile.RateAt, queue, &late)

	workers := make([]*worker, sc.Connections)
	observed := make([][]Observed, sc.Connections)
	var wg sync.WaitGroup
	for wi := range workers {
		w := newWorker()
		workers[wi] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(sc.Seed), uint64(wi)))
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for intended := range queue {
				tap := taps.Add(1)
				who := rng.IntN(pop.users)
				if sc.Bots.Count > 0 && rng.Float64() < sc.Bots.Share {
					who = pop.users + rng.IntN(sc.Bots.Count)
				}
				ci := 0
				for r := rng.Float64() * total; ci < len(cum)-1 && r >= cum[ci]; ci++ {
				}
				camp := res.Campaigns[sc.Campaigns[ci].ID]
				key := o.RunID + "-" + strconv.FormatInt(tap, 36)
				for attempt := 0; ; attempt++ {
					req.Reset()
					req.SetRequestURI(o.PublicURL + "/v1/campaigns/" + camp + "/claim")
					req.Header.SetMethod("POST")
					req.Header.Set("Authorization", pop.tokens[who])
					req.Header.Set("X-Device-ID", pop.devices[who])
					req.Header.Set("X-Forwarded-For", pop.ips[who])
					req.Header.Set("Idempotency-Key", key)
					sent := time.Now()
					err := client.DoTimeout(req, resp, sc.Timeout)
					done := time.Now()
					label := "error"
					if err == nil {
						label = ClassifyClaim(resp)
						if label == "" {
							label = "http_" + strconv.Itoa(resp.StatusCode())
						}
						_ = w.latency.RecordValue(max(1, done.Sub(intended).Microseconds()))
						_ = w.service.RecordValue(max(1, done.Sub(sent).Microseconds()))
						w.outcomes[label]++
					} else {
						w.errors++
					}
					b := buckets[min(len(buckets)-1, int(intended.Sub(start)/time.Second))]
					b.mu.Lock()
					b.sent++
					b.outcomes[label]++
					if err == nil {
						_ = b.hist.RecordValue(max(1, done.Sub(intended).Microseconds()))
					}
					b.mu.Unlock()
					if label == "granted" {
						observed[wi] = append(observed[wi], Observed{GrantID: grantID(resp.Body()), Campaign: sc.Campaigns[ci].ID, User: pop.user(who), Key: key})
					}
					retryable := err != nil || label == "unavailable"
					if !retryable || attempt >= sc.Retry.Max || ctx.Err() != nil {
						break
					}
					retries.Add(1)
					backoff := sc.Retry.Backoff << attempt
					time.Sleep(backoff + time.Duration(rng.Int64N(int64(backoff)/2+1)))
					intended = time.Now() // a retry is a new send, due now
				}
			}
		}()
	}
	stopProgress := make(chan struct{})
	if o.Progress != nil {
		go progress(o.Progress, start, &taps, buckets, stopProgress)
	}
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(sc.Duration + drainMax):
		close(stopProgress)
		return nil, errors.New("bench: in-flight taps did not finish within 30s of the schedule's end")
	}
	close(stopProgress)
	elapsed := time.Since(start)

	r := mergeWorkers(workers, elapsed, late.Load())
	for wi := range workers {
		res.Observed = append(res.Observed, observed[wi]...)
	}
	res.Summary = r.Summarize(profile.Expected(sc.Duration) / sc.Duration.Seconds())
	res.Summary.AchievedRate = float64(r.Sent) / sc.Duration.Seconds() // requests per second of schedule, drain included in the count
	res.Taps, res.Retries = taps.Load(), retries.Load()
	for i, b := range buckets {
		if b.sent == 0 && i >= int(sc.Duration/time.Second) {
			break
		}
		res.Series = append(res.Series, SeriesPoint{Second: i, TargetRate: profile.RateAt(time.Duration(i)*time.Second + 500*time.Millisecond), Sent: b.sent,
			P50Ms: float64(b.hist.ValueAtQuantile(50)) / 1000, P99Ms: float64(b.hist.ValueAtQuantile(99)) / 1000, MaxMs: float64(b.hist.Max()) / 1000, Outcomes: b.outcomes})
	}
	return res, nil
}

func grantID(body []byte) string {
	const key = `"grant_id":"`
	i := indexOf(body, key)
	if i < 0 {
		return ""
	}
	rest := body[i+len(key):]
	j := indexOf(rest, `"`)
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

func progress(w io.Writer, start time.Time, taps *atomic.Int64, buckets []*bucket, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			fmt.Fprintln(w)
			return
		case now := <-t.C:
			sec := int(now.Sub(start)/time.Second) - 1
			if sec < 0 || sec >= len(buckets) {
				continue
			}
			b := buckets[sec]
			b.mu.Lock()
			fmt.Fprintf(w, "\r  t=%3ds  taps %-9d last second: sent %-7d granted %-7d p99 %7.2fms   ", sec+1, taps.Load(), b.sent, b.outcomes["granted"], float64(b.hist.ValueAtQuantile(99))/1000)
			b.mu.Unlock()
		}
	}
}

func runMeta(sc *Scenario, o DropOptions) Meta {
	m := HostMeta(o.PublicURL)
	m.Scenario, m.Seed, m.RunID = sc.Name, sc.Seed, o.RunID
	return m
}

// HostMeta describes this machine and build (commit from FLASHBENCH_COMMIT
// or the binary's VCS stamp, Go version, GOMAXPROCS, CPU model × cores) for
// a run against target.
func HostMeta(target string) Meta {
	m := Meta{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), Target: target, Commit: "unknown", Started: time.Now().UTC()}
	if c := os.Getenv("FLASHBENCH_COMMIT"); c != "" {
		m.Commit = c
	} else if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				m.Commit = s.Value
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				if _, v, ok := strings.Cut(line, ":"); ok {
					m.CPU = strings.TrimSpace(v) + " × " + strconv.Itoa(runtime.NumCPU())
				}
				break
			}
		}
	}
	return m
}
