package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/flashgate/flashgate/gateway/status"
)

// GET /metrics and the gateway's Prometheus metrics: the claim outcomes,
// latencies, risk, settlement and pipeline figures. The ledger's disk
// metrics are registered in ledgerdisk.go, next to what they measure.

// serveMetrics: Prometheus text format. Always on the admin listener; on
// the public one only with metrics.public (its figures — claim rates,
// rejections by rule, backlog — help whoever tunes a bot farm).
func serveMetrics(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.metrics.handler(ctx) }

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
	riskBlocked      *prometheus.CounterVec
	riskRateLimited  *prometheus.CounterVec
	riskShadow       *prometheus.CounterVec
	riskLimitErrors  *prometheus.CounterVec
	alerts           *prometheus.CounterVec
	webhookFailures  prometheus.Counter
	grantsSettled    prometheus.Counter
	grantsHeld       prometheus.Gauge
	marksDropped     prometheus.Counter
	claimsShed       prometheus.Counter
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
	m.grantsSettled = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_grants_settled_total", Help: "Grants decided in Redis whose handler did not make them durable (append failed, reply lost, process died), appended to the ledger by the settler."})
	m.grantsHeld = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flashgate_grants_held", Help: "Unsettled grants of other nodes seen in the last settlement pass: held until their node (or a replacement on its data dir) settles them."})
	m.marksDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_settle_marks_dropped_total", Help: "Settled grants whose unsettled field was not deleted at once (queue full or Redis error); the settler deletes it later."})
	m.claimsShed = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_claims_shed_total", Help: "Claims answered 503 at once because claim.inflight_max claims were in progress (also counted in flashgate_claims_total as unavailable)."})
	m.reg.MustRegister(m.grantsSettled, m.grantsHeld, m.marksDropped, m.claimsShed)
	m.riskBlocked = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_risk_blocked_total", Help: "Claims refused by the blacklist, by entry kind."}, []string{"kind"})
	m.riskRateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_risk_rate_limited_total", Help: "Claims refused by a limit, by rule."}, []string{"rule"})
	m.riskShadow = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_risk_shadow_would_block_total", Help: "Claims a shadow rule would have refused, by rule."}, []string{"rule"})
	m.riskLimitErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_risk_limit_errors_total", Help: "Limit checks that failed (Redis), by rule."}, []string{"rule"})
	m.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashgate_alerts_total", Help: "Alerts raised by this gateway, by kind."}, []string{"kind"})
	m.webhookFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "flashgate_alert_webhook_failures_total", Help: "Alerts the webhook did not take (queue full or failed deliveries)."})
	m.reg.MustRegister(m.riskBlocked, m.riskRateLimited, m.riskShadow, m.riskLimitErrors, m.alerts, m.webhookFailures)
	m.reg.MustRegister(claims, m.claimSeconds, m.redisSeconds, m.ledgerSeconds, m.dependencyErrors, m.transfersSwept,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return m
}

func (m *metrics) registerPipeline(g *Gateway) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flashgate_relay_backlog", Help: "Ledger grants not yet acknowledged by JetStream."},
			func() float64 { return float64(g.relay.Backlog()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_relay_published_total", Help: "Grant messages acknowledged by JetStream."},
			func() float64 { return float64(g.relay.Published()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_relay_failed_batches_total", Help: "Relay batches retried."},
			func() float64 { return float64(g.relay.Failures()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flashgate_reconcile_missing", Help: "Ledger grants found missing from the store in the last reconciliation pass."},
			func() float64 { return float64(g.pipe.reconcileMissing.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_reconcile_republished_total", Help: "Grants published again by reconciliation."},
			func() float64 { return float64(g.pipe.republished.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_reconcile_set_aside_total", Help: "Ledger grants the store cannot hold (set aside in grants_set_aside) that reconciliation passed."},
			func() float64 { return float64(g.pipe.setAsidePassed.Load()) }),
	)
	if g.sink != nil {
		m.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_sink_stored_total", Help: "Grants inserted into the store."},
				func() float64 { return float64(g.sink.Stored()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_sink_duplicates_total", Help: "Grant deliveries already stored (skipped)."},
				func() float64 { return float64(g.sink.Duplicates()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_sink_poison_total", Help: "Undecodable grant messages terminated."},
				func() float64 { return float64(g.sink.Poison()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flashgate_sink_set_aside_total", Help: "Grant deliveries the store cannot hold, set aside in grants_set_aside instead of stored."},
				func() float64 { return float64(g.sink.SetAside()) }),
		)
	}
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
