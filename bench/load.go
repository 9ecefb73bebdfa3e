// Package bench is the load-generation library behind flashbench: an
// open-model load (requests leave on a schedule, whether or not earlier ones
// have answered), latency counted from each request's intended send time
// (no coordinated omission) next to service time, HDR histograms merged across
// workers, and outcomes counted by the claim status table.
//
// Goroutines: one scheduler emits intended send times into a bounded queue;
// Connections workers take them and send. When the queue is full the send is
// counted as late-dropped (it could not leave on time), never queued without
// bound. Everything stops when the run's duration or context ends: requests
// in flight finish, sends still queued are counted late-dropped, not sent.
package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
)

const (
	// scheduleQueueMax bounds sends waiting for a free connection: one
	// second of schedule at 100k/s; beyond that the target is far past
	// saturation and more queue only hides it.
	scheduleQueueMax = 100_000
	// latencyMax is the histogram's upper bound.
	latencyMax = time.Minute
	// recordersMax bounds the histograms of one run: connections share
	// them (each with a lock), so thousands of connections do not cost
	// thousands of histograms.
	recordersMax = 16
)

// Options of one run.
type Options struct {
	Rate        float64       // requests per second (constant)
	Duration    time.Duration // of the run
	Connections int           // concurrent connections (= workers)
	Timeout     time.Duration // per request
	// Prepare fills req for the i-th request (URI, method, headers, body).
	Prepare func(i int64, req *fasthttp.Request)
	// Classify maps a response to a status; nil counts by HTTP code only.
	Classify func(resp *fasthttp.Response) string
	// Observe, when set, sees every answered request (its index, response
	// and label) in the worker that sent it; it must be safe for concurrent use.
	Observe func(i int64, resp *fasthttp.Response, label string)
	Client  *fasthttp.Client
}

// Validate reports every invalid field.
func (o *Options) Validate() error {
	var errs []error
	if o.Rate <= 0 || o.Rate > 10_000_000 {
		errs = append(errs, fmt.Errorf("bench: Rate %.0f outside (0, 1e7]", o.Rate))
	}
	if o.Duration <= 0 || o.Duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("bench: Duration %v outside (0, 24h]", o.Duration))
	}
	if o.Connections < 1 || o.Connections > 65536 {
		errs = append(errs, fmt.Errorf("bench: Connections %d outside 1..65536", o.Connections))
	}
	if o.Prepare == nil {
		errs = append(errs, errors.New("bench: Prepare is nil"))
	}
	return errors.Join(errs...)
}

// Result of a run.
type Result struct {
	Sent, Errors, LateDropped int64
	Elapsed                   time.Duration
	Outcomes                  map[string]int64
	Latency                   *hdrhistogram.Histogram // from intended send time, µs
	Service                   *hdrhistogram.Histogram // from actual send time, µs
	// ByOutcome is the latency of each outcome's answers (bench.Run only).
	ByOutcome map[string]*OutcomeHist
}

// OutcomeHist is the latency of one outcome's answers, µs, with two
// significant digits.
type OutcomeHist struct {
	Latency, Service *hdrhistogram.Histogram
}

func newOutcomeHist() *OutcomeHist {
	return &OutcomeHist{Latency: hdrhistogram.New(1, latencyMax.Microseconds(), 2), Service: hdrhistogram.New(1, latencyMax.Microseconds(), 2)}
}

// AchievedRate is completed requests per second.
func (r *Result) AchievedRate() float64 { return float64(r.Sent) / r.Elapsed.Seconds() }

type worker struct {
	mu               sync.Mutex // bench.Run: connections share a worker's figures
	latency, service *hdrhistogram.Histogram
	outcomes         map[string]int64
	byOutcome        map[string]*OutcomeHist
	errors           int64
}

// Run executes one open-model run.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Client == nil {
		o.Client = &fasthttp.Client{MaxConnsPerHost: o.Connections, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout, MaxIdleConnDuration: time.Minute}
	}
	queue := make(chan time.Time, scheduleQueueMax)
	var late atomic.Int64
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	go schedule(runCtx, start, Constant(o.Rate).RateAt, queue, &late)

	workers := make([]*worker, min(o.Connections, recordersMax))
	for i := range workers {
		workers[i] = newWorker()
		workers[i].byOutcome = map[string]*OutcomeHist{}
	}
	var seq atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < o.Connections; i++ {
		w := workers[i%len(workers)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(runCtx, o, queue, &seq, &late)
		}()
	}
	wg.Wait()
	return mergeWorkers(workers, time.Since(start), late.Load()), nil
}

// mergeWorkers sums the workers' histograms and counts into one result.
func mergeWorkers(workers []*worker, elapsed time.Duration, late int64) *Result {
	r := &Result{Elapsed: elapsed, LateDropped: late, Outcomes: map[string]int64{},
		Latency: hdrhistogram.New(1, latencyMax.Microseconds(), 3), Service: hdrhistogram.New(1, latencyMax.Microseconds(), 3)}
	for _, w := range workers {
		r.Latency.Merge(w.latency)
		r.Service.Merge(w.service)
		r.Errors += w.errors
		for k, v := range w.outcomes {
			r.Outcomes[k] += v
			r.Sent += v
		}
		for k, h := range w.byOutcome {
			if r.ByOutcome == nil {
				r.ByOutcome = map[string]*OutcomeHist{}
			}
			if r.ByOutcome[k] == nil {
				r.ByOutcome[k] = newOutcomeHist()
			}
			r.ByOutcome[k].Latency.Merge(h.Latency)
			r.ByOutcome[k].Service.Merge(h.Service)
		}
	}
	r.Sent += r.Errors
	return r
}

func newWorker() *worker {
	return &worker{latency: hdrhistogram.New(1, latencyMax.Microseconds(), 3), service: hdrhistogram.New(1, latencyMax.Microseconds(), 3), outcomes: map[string]int64{}}
}

// schedule emits intended send times following rateAt (requests per second
// at an offset from start), integrated every millisecond, into queue; a full
// queue counts the send as late (it could not leave on time). It closes queue
// when ctx ends.
func schedule(ctx context.Context, start time.Time, rateAt func(time.Duration) float64, queue chan<- time.Time, late *atomic.Int64) {
	defer close(queue)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var due float64 // requests owed so far
	var sent int64
	last := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t := now.Sub(start)
			due += rateAt(t) * (t - last).Seconds()
			last = t
			for ; float64(sent) < due; sent++ {
				// spread the tick's sends over the millisecond they belong to
				intended := now.Add(-time.Duration((due - float64(sent)) / rateAt(t) * float64(time.Second)))
				select {
				case queue <- intended:
				default:
					late.Add(1)
				}
			}
		}
	}
}

// loop sends requests from queue until it closes, recording into w (which
// other connections share: under its lock). Sends still queued when the
// run's time is up (ctx) are not sent: they could not leave on time, and
// are counted late.
func (w *worker) loop(ctx context.Context, o Options, queue <-chan time.Time, seq *atomic.Int64, late *atomic.Int64) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	for intended := range queue {
		if ctx.Err() != nil {
			late.Add(1)
			continue
		}
		req.Reset()
		i := seq.Add(1) - 1
		o.Prepare(i, req)
		sent := time.Now()
		err := o.Client.DoTimeout(req, resp, o.Timeout)
		done := time.Now()
		if err != nil {
			w.mu.Lock()
			w.errors++
			w.mu.Unlock()
			continue
		}
		label := ""
		if o.Classify != nil {
			label = o.Classify(resp)
		}
		if label == "" {
			label = "http_" + strconv.Itoa(resp.StatusCode())
		}
		if o.Observe != nil {
			o.Observe(i, resp, label)
		}
		lat, svc := max(1, done.Sub(intended).Microseconds()), max(1, done.Sub(sent).Microseconds())
		w.mu.Lock()
		_ = w.latency.RecordValue(lat)
		_ = w.service.RecordValue(svc)
		w.outcomes[label]++
		h := w.byOutcome[label]
		if h == nil {
			h = newOutcomeHist()
			w.byOutcome[label] = h
		}
		_ = h.Latency.RecordValue(lat)
		_ = h.Service.RecordValue(svc)
		w.mu.Unlock()
	}
}

// ClassifyClaim reads the status field of a claim answer without decoding
// the whole body; unknown statuses are reported by HTTP code.
func ClassifyClaim(resp *fasthttp.Response) string {
	b := resp.Body()
	const key = `"status":"`
	i := indexOf(b, key)
	if i < 0 {
		return ""
	}
	rest := b[i+len(key):]
	j := indexOf(rest, `"`)
	if j < 0 {
		return ""
	}
	if st, ok := status.Parse(string(rest[:j])); ok {
		return st.String()
	}
	return ""
}

func indexOf(b []byte, s string) int {
	for i := 0; i+len(s) <= len(b); i++ {
		if string(b[i:i+len(s)]) == s {
			return i
		}
	}
	return -1
}

// Summary is the one-line-per-figure view printed and saved.
type Summary struct {
	TargetRate   float64          `json:"target_rate"`
	AchievedRate float64          `json:"achieved_rate"`
	Sent         int64            `json:"sent"`
	Errors       int64            `json:"errors"`
	LateDropped  int64            `json:"late_dropped"`
	P50Ms        float64          `json:"p50_ms"`
	P90Ms        float64          `json:"p90_ms"`
	P99Ms        float64          `json:"p99_ms"`
	P999Ms       float64          `json:"p999_ms"`
	MaxMs        float64          `json:"max_ms"`
	ServiceP50Ms float64          `json:"service_p50_ms"`
	ServiceP99Ms float64          `json:"service_p99_ms"`
	Outcomes     map[string]int64 `json:"outcomes"`
	// ByOutcome is each outcome's latency (runs of bench.Run).
	ByOutcome map[string]OutcomeLatency `json:"by_outcome,omitempty"`
}

// OutcomeLatency is the latency of one outcome's answers, ms.
type OutcomeLatency struct {
	Count        int64   `json:"count"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	ServiceP50Ms float64 `json:"service_p50_ms"`
	ServiceP99Ms float64 `json:"service_p99_ms"`
}

// Summarize turns a result into figures.
func (r *Result) Summarize(target float64) Summary {
	ms := func(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	s := Summary{
		TargetRate: target, AchievedRate: r.AchievedRate(), Sent: r.Sent, Errors: r.Errors, LateDropped: r.LateDropped,
		P50Ms: ms(r.Latency, 50), P90Ms: ms(r.Latency, 90), P99Ms: ms(r.Latency, 99), P999Ms: ms(r.Latency, 99.9),
		MaxMs: float64(r.Latency.Max()) / 1000, ServiceP50Ms: ms(r.Service, 50), ServiceP99Ms: ms(r.Service, 99),
		Outcomes: r.Outcomes,
	}
	for k, h := range r.ByOutcome {
		if s.ByOutcome == nil {
			s.ByOutcome = map[string]OutcomeLatency{}
		}
		s.ByOutcome[k] = OutcomeLatency{Count: h.Latency.TotalCount(), P50Ms: ms(h.Latency, 50), P99Ms: ms(h.Latency, 99), MaxMs: float64(h.Latency.Max()) / 1000,
			ServiceP50Ms: ms(h.Service, 50), ServiceP99Ms: ms(h.Service, 99)}
	}
	return s
}

// Table renders a summary as text.
func (s Summary) Table(title string) string {
	out := fmt.Sprintf("%s\n  target %.0f/s  achieved %.0f/s  sent %d  errors %d  late-dropped %d\n", title, s.TargetRate, s.AchievedRate, s.Sent, s.Errors, s.LateDropped)
	out += fmt.Sprintf("  latency from intended send: p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms\n", s.P50Ms, s.P90Ms, s.P99Ms, s.P999Ms, s.MaxMs)
	out += fmt.Sprintf("  service time:               p50 %.2fms  p99 %.2fms\n", s.ServiceP50Ms, s.ServiceP99Ms)
	out += "  outcomes:"
	for _, st := range status.All() {
		if n := s.Outcomes[st.String()]; n > 0 {
			out += fmt.Sprintf(" %s=%d", st, n)
		}
	}
	for k, n := range s.Outcomes {
		if _, ok := status.Parse(k); !ok {
			out += fmt.Sprintf(" %s=%d", k, n)
		}
	}
	return out + "\n"
}
