package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/flashgate/flashgate/gateway/status"
)

func (g *Gateway) handlePublic(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	if id, ok := parseClaimPath(path); ok {
		g.handleClaim(ctx, id)
		return
	}
	if g.handleOps(ctx, path) {
		return
	}
	writeError(ctx, status.InvalidRequest, "no such endpoint")
	ctx.SetStatusCode(fasthttp.StatusNotFound)
}

// handleOps serves /healthz, /readyz and /metrics on both listeners.
func (g *Gateway) handleOps(ctx *fasthttp.RequestCtx, path []byte) bool {
	switch string(path) {
	case "/healthz":
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
	case "/readyz":
		checks, ok := g.readiness()
		code := fasthttp.StatusOK
		if !ok {
			code = fasthttp.StatusServiceUnavailable
			ctx.Response.Header.Set("Retry-After", "1")
		}
		adminJSON(ctx, code, map[string]any{"ready": ok, "checks": checks})
	case "/metrics":
		g.metrics.handler(ctx)
	default:
		return false
	}
	return true
}

// readiness checks every dependency a claim needs.
func (g *Gateway) readiness() (map[string]string, bool) {
	checks := map[string]string{}
	ok := true
	fail := func(name, msg string) { checks[name] = msg; ok = false }
	if g.draining.Load() {
		fail("process", "draining")
	} else {
		checks["process"] = "ok"
	}
	if c := g.redisC.Load(); c == nil {
		fail("redis", "not connected")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := (*c).Do(ctx, (*c).B().Ping().Build()).Error()
		cancel()
		if err != nil {
			fail("redis", err.Error())
		} else {
			checks["redis"] = "ok"
		}
	}
	if !g.nc.IsConnected() {
		fail("nats", "not connected")
	} else if !g.reg.Synced() {
		fail("nats", "campaign watch not synced")
	} else {
		checks["nats"] = "ok"
	}
	checks["ledger"] = "ok"
	return checks, ok
}

// errorHandler answers requests fasthttp could not parse (too large, bad
// headers, timeouts) in the API's JSON shape: 400 invalid_request.
func (g *Gateway) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	msg := "malformed request"
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		msg = "request body too large"
	case errors.As(err, &small):
		msg = "request headers too large"
	}
	writeError(ctx, status.InvalidRequest, msg)
	g.metrics.observeClaim(status.InvalidRequest, 0)
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp: " + fmt.Sprintf(format, args...))
}

// metrics of one gateway, in a registry of its own (several gateways may run
// in one test process).
type metrics struct {
	reg              *prometheus.Registry
	claims           [status.N]prometheus.Counter
	claimSeconds     prometheus.Histogram
	redisSeconds     prometheus.Histogram
	ledgerSeconds    prometheus.Histogram
	dependencyErrors *prometheus.CounterVec
	transfersSwept   prometheus.Counter
	unknownSettled   prometheus.Counter
	unknownDropped   prometheus.Counter
	handler          fasthttp.RequestHandler
}

// latencyBuckets: 100µs .. ~3.3s, doubling.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 16)

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	claims := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_claims_total", Help: "Claims answered, by status."}, []string{"status"})
	for _, s := range status.All() {
		m.claims[s] = claims.WithLabelValues(s.String())
	}
	m.claimSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashgate_claim_duration_seconds", Help: "Claim handling time.", Buckets: latencyBuckets})
	m.redisSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashgate_redis_claim_duration_seconds", Help: "Time in the stock scripts of one claim.", Buckets: latencyBuckets})
	m.ledgerSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashgate_ledger_append_duration_seconds", Help: "Synced ledger append time.", Buckets: latencyBuckets})
	m.dependencyErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_dependency_errors_total", Help: "Claims failed closed, by dependency."}, []string{"dependency"})
	m.transfersSwept = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_stock_transfers_swept_total", Help: "Orphaned stock transfers landed by the sweeper."})
	m.unknownSettled = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_unknown_outcomes_settled_total", Help: "Claims answered 503 whose script had granted; the grant was recorded afterwards."})
	m.unknownDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_unknown_outcomes_dropped_total", Help: "Claims of unknown outcome not queued for settlement (queue full)."})
	m.reg.MustRegister(m.unknownSettled, m.unknownDropped)
	m.reg.MustRegister(claims, m.claimSeconds, m.redisSeconds, m.ledgerSeconds, m.dependencyErrors, m.transfersSwept,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return m
}

func (m *metrics) observeClaim(s status.Status, d time.Duration) {
	m.claims[s].Inc()
	if d > 0 {
		m.claimSeconds.Observe(d.Seconds())
	}
}

// MetricsText returns the metrics in Prometheus text format (tests).
func (g *Gateway) MetricsText() string {
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/metrics")
	g.metrics.handler(&ctx)
	return string(ctx.Response.Body())
}
