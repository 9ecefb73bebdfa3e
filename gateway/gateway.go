// Package gateway is flashgate's HTTP edge: the public claim listener, the
// admin listener, claim orchestration, health and configuration.
//
// A claim (claim.go) runs, in the handler goroutine fasthttp gives it, as a
// sequence of steps, each returning an outcome; the first decided outcome
// ends it and one writer (answerClaim) answers and counts it: parse and
// authenticate → the campaign from the local registry snapshot → the risk
// check (package risk: blacklist, then limits) → admit (campaign state,
// control-plane staleness, relay backlog, settlement, ledger disk, local
// sold-out flag) → one stock script on the user's home shard (stealing from
// another shard when that is empty; package stock), which also records the
// grant as unsettled for this node → a synced ledger append (package
// ledger) → the answer, and the grant's unsettled field is deleted in a
// batch. "granted" is written only after the append returned (I4); any
// dependency failure answers 503 "unavailable" with Retry-After (I7), and a
// grant its handler could not make durable is settled by settle.go. Every
// rule, window and staleness reads one clock, the gateway's (WithClock),
// which the campaign registry and package risk are given too.
//
// Both listeners dispatch through one route table (routes.go): method, path
// template, the least role that may call it, and the handler. The router
// checks the role (admin tokens by constant-time digest comparison) before
// any handler runs.
//
// Files, by what they serve:
//
//	gateway.go          New, Run, the graceful stop, Close; NATS and Redis connections
//	config.go           Config: defaults, file and environment, Validate
//	routes.go           the route table and the router (roles, 404, 405)
//	server.go           the fasthttp servers' error handler and logger
//	auth.go             authentication (JWT or trusted header), trusted proxies, the client IP
//	jwt.go              the JWT verifier for the pinned algorithm (HS256 or EdDSA; exp, nbf, iss, aud)
//	tokencache.go       verified end-user tokens
//	claim.go            POST /v1/campaigns/{campaign}/claim
//	shed.go             the claim's in-flight bound (claim.inflight_max): the excess answered 503 at once
//	codeguess.go        the claim's limit on wrong redemption codes
//	coupons.go          GET /v1/me/coupons: the wallet, each grant with its state and coupon
//	orders.go           checkout: POST /v1/checkout/quote, /v1/checkout/redeem, /v1/orders/{order_id}/…
//	couponevents.go     checkout's coupon events (outbox → COUPON_EVENTS), lock and expiring sweepers
//	settle.go           grants decided in Redis that their handler did not make durable
//	allot.go            committed campaign units onto the shards
//	stats.go            claim counters and trend per campaign (Redis)
//	pipeline.go         store, GRANTS stream, relay, embedded sink, reconciler, snapshots
//	ledgerdisk.go       a failed ledger disk: supervisor, readiness, metrics
//	health.go           GET /healthz, GET /readyz
//	redishealth.go      Redis masters holding live shards: readiness, gauge, warnings
//	metrics.go          GET /metrics and the metrics
//	admin.go            admin tokens and roles, admin answers, shared adapters
//	admin_campaigns.go  /admin/v1/campaigns[/{id}]: create, list, get, patch, delete
//	admin_audience.go   POST /admin/v1/campaigns/{id}/audience
//	admin_codes.go      /admin/v1/campaigns/{id}/codes: generate, export
//	admin_grants.go     GET /admin/v1/campaigns/{id}/grants
//	admin_audit.go      GET /admin/v1/audit, Audit, AuditLedgers, AuditSettled
//	admin_risk.go       /admin/v1/risk/…: rules, blacklist, alerts, risk audit log (package risk holds the state)
//	openapi.go          GET /admin/v1/openapi.json (openapi.json, embedded)
//	pprof.go            /debug/pprof/ (admin.pprof)
//	demo.go             make run's demo campaign, development tokens
//
// Goroutines. Run starts the background loops on their own context, which
// the graceful stop cancels only after the listeners drained (so settlement
// and relay go on while in-flight claims finish): the campaign watch
// (campaign.Registry.Run), the risk loops (risk.Run: bucket watch, alert
// collector, webhook deliverer, over-limit evictor), the Redis connector
// (which ends once connected), the stats flusher, the transfer sweeper
// (which also feeds the low-stock alerts), the allotment loop (allot.go),
// the settler and the marker of unsettled grants (settle.go), the relay
// (ledger → JetStream), the reconciler and the snapshot saver
// (pipeline.go), the ledger supervisor (ledgerdisk.go), the Redis master
// watch (redishealth.go), checkout's lock and expiring sweepers and
// coupon-event publisher (couponevents.go) and, when embedded, the sink
// (JetStream → SQL store; package ledger/sink, wired by cmd through
// WithSink). The two fasthttp servers end when the stop closes
// their listeners. Handler goroutines share the registry snapshot (atomic
// pointer), the risk state (package risk), the sold-out flags, stats
// counters and metrics (atomics), the marks queue of settled grants (a
// bounded channel), and the ledger, relay and Redis client (each safe for
// concurrent use). The audit (GET /admin/v1/audit) is package audit, fed
// this gateway's ledger, relay cursor, Redis, campaigns and store.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/risk"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/store"
)

const (
	// retryAfterSeconds is the Retry-After of a 503: long enough for Redis or
	// a disk hiccup to pass, short enough for a drop.
	retryAfterSeconds = 1
	// redisConnectBackoffMax bounds the wait between Redis connection attempts.
	redisConnectBackoffMax = 2 * time.Second
	// statsFlushInterval is how often per-gateway claim counters reach Redis.
	statsFlushInterval = time.Second
	// sweepInterval is how often orphaned stock transfers are landed.
	sweepInterval = 2 * time.Second
	// soldOutRecheck is how long a local sold-out flag answers without Redis
	// before one request re-probes (stock may be added by PATCH).
	soldOutRecheck = time.Second
	// publicBodyLenMax bounds a claim body (it holds at most a redemption code).
	publicBodyLenMax = 4 << 10
	// serverBodyLenMax is the server-level cap; bigger bodies are refused by
	// fasthttp before the handler (answered by errorHandler as 400).
	serverBodyLenMax = 64 << 10
	// adminBodyLenMax bounds admin request bodies: 100,000 audience user ids
	// of up to 128 bytes fit (POST …/audience), and nothing else comes close.
	adminBodyLenMax = 16 << 20
	// settleAtStopTimeout bounds the last settlement pass of a graceful stop.
	settleAtStopTimeout = 10 * time.Second
	// headerBufLen bounds request line + headers.
	headerBufLen = 8 << 10
)

// Gateway is one gateway process's state.
type Gateway struct {
	cfg        Config
	ledgerOpts func(*ledger.Options)
	log        *slog.Logger
	now        func() time.Time
	ledger     *ledger.Ledger
	stockP     atomic.Pointer[stock.Store]
	redisC     atomic.Pointer[rueidis.Client]
	ns         *server.Server // embedded NATS, nil with nats.url
	nc         *nats.Conn
	js         jetstream.JetStream
	reg        *campaign.Registry
	store      *store.Store
	relay      *relay.Relay
	newSink    NewSinkFunc // WithSink: builds the embedded sink
	sink       Sink        // embedded (sink.embedded), nil otherwise
	pipe       pipelineState
	risk       *risk.Risk
	// snapshots carries ids of changed campaigns to saveSnapshots.
	snapshots chan string
	verify    *verifier
	proxies   proxySet
	tokens    adminTokens // admin.tokens as digests; the admin router checks them
	metrics   *metrics
	stats     statsCounters
	marks     chan stock.Settled // grants whose unsettled field can go (settle.go)
	settled   atomic.Bool        // the first settlement pass succeeded: claims may be taken
	soldOut   sync.Map           // campaign id -> *atomic.Int64 (unix nanos until which sold_out is answered locally)
	allot     allotState         // units of committed definitions onto the shards (allot.go)
	co        checkoutState      // coupon use: events, sweepers, counters (couponevents.go)
	// ledgerRecoverErr is the last failed recovery attempt of a failed
	// ledger (readiness), nil while healthy.
	ledgerRecoverErr atomic.Pointer[string]

	public, admin     *fasthttp.Server
	publicLn, adminLn net.Listener
	draining          atomic.Bool
	claimsInFlight    atomic.Int64 // claims holding a slot (shed.go)
	closeOnce         sync.Once
}

// Option adjusts New for tests and embedding.
type Option func(*Gateway)

// WithClock sets the one clock of every rule, window and staleness: campaign
// windows, tokens, the control plane's staleness and the risk rules.
func WithClock(now func() time.Time) Option { return func(g *Gateway) { g.now = now } }

// WithLedgerOptions adjusts the ledger's options before it opens (tests:
// fault-injecting file systems, small in-flight bounds).
func WithLedgerOptions(f func(*ledger.Options)) Option { return func(g *Gateway) { g.ledgerOpts = f } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(g *Gateway) { g.log = l } }

// New opens the ledger and the control plane and prepares the servers. Redis
// may be down: claims answer 503 until it is reachable (I7).
func New(ctx context.Context, cfg Config, opts ...Option) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, now: time.Now, log: slog.Default()}
	for _, o := range opts {
		o(g)
	}
	var err error
	if g.proxies, err = parsePrefixes(cfg.Auth.TrustedProxies); err != nil {
		return nil, err
	}
	if cfg.Auth.Mode == "jwt" {
		if g.verify, err = newVerifier(cfg.Auth, g.now); err != nil {
			return nil, err
		}
	}
	g.tokens = newAdminTokens(cfg.Admin.Tokens)
	g.metrics = newMetrics()
	g.marks = make(chan stock.Settled, markQueueMax)
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("gateway: data dir: %w", err)
	}
	lopts := ledger.Options{Dir: filepath.Join(cfg.DataDir, "ledger"), Logger: g.log, SyncIntervalMin: cfg.Ledger.SyncIntervalMin}
	if g.ledgerOpts != nil {
		g.ledgerOpts(&lopts)
	}
	if g.ledger, err = ledger.Open(lopts); err != nil {
		return nil, err
	}
	g.metrics.registerLedger(g)
	if err := g.openNATS(ctx); err != nil {
		g.Close()
		return nil, err
	}
	g.risk, err = risk.Open(ctx, g.js, risk.Options{
		Replicas: cfg.NATS.Replicas, Clock: g.now, Logger: g.log, WebhookURL: cfg.Alerts.WebhookURL, Metrics: g.metrics.riskMetrics(),
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	g.snapshots = make(chan string, snapshotQueueMax)
	g.allot.queue = make(chan string, allotQueueMax)
	g.reg.OnChange = func(id string) {
		g.definitionChanged(id) // units may have grown: allot, then re-probe at once
		select {
		case g.snapshots <- id: // reporting snapshot, written by saveSnapshots
		default:
		}
	}
	if err := g.openPipeline(ctx); err != nil {
		g.Close()
		return nil, err
	}
	if err := g.openCheckout(ctx); err != nil {
		g.Close()
		return nil, err
	}
	g.public = g.newServer("flashgate-public", newRouter(g, false).serve, serverBodyLenMax)
	g.admin = g.newServer("flashgate-admin", newRouter(g, true).serve, adminBodyLenMax)
	return g, nil
}

// EmbeddedNATSOptions are the options of the JetStream server a gateway
// embeds when nats.url is empty: loopback, a random port, its store under
// <data_dir>/nats. The offline audit starts one on a stopped gateway's data
// dir to read its campaigns.
func EmbeddedNATSOptions(dataDir string) *server.Options {
	return &server.Options{
		ServerName: "flashgate-embedded",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(dataDir, "nats"),
		NoSigs:     true,
		NoLog:      true,
	}
}

func (g *Gateway) openNATS(ctx context.Context) error {
	var err error
	if g.cfg.NATS.URL == "" {
		g.ns, err = server.NewServer(EmbeddedNATSOptions(g.cfg.DataDir))
		if err != nil {
			return fmt.Errorf("gateway: embedded nats: %w", err)
		}
		g.ns.Start()
		if !g.ns.ReadyForConnections(10 * time.Second) {
			return errors.New("gateway: embedded nats did not start within 10s")
		}
		g.nc, err = nats.Connect("", nats.InProcessServer(g.ns), nats.Name("flashgate-gateway"))
	} else {
		g.nc, err = nats.Connect(g.cfg.NATS.URL, nats.Name("flashgate-gateway"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	}
	if err != nil {
		return fmt.Errorf("gateway: nats connect: %w", err)
	}
	if g.js, err = jetstream.New(g.nc); err != nil {
		return fmt.Errorf("gateway: jetstream: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if g.reg, err = campaign.OpenRegistry(octx, g.js, g.cfg.NATS.Replicas, g.log); err != nil {
		return err
	}
	g.reg.Connected = g.nc.IsConnected // a lost connection makes the snapshot stale (I7)
	g.reg.Clock = g.now                // stamps the loss on the clock claims compare it with
	return nil
}

func (g *Gateway) newServer(name string, h fasthttp.RequestHandler, bodyMax int) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:               h,
		ErrorHandler:          g.errorHandler,
		Name:                  name,
		NoDefaultServerHeader: true,
		Concurrency:           g.cfg.HTTP.Concurrency,
		MaxConnsPerIP:         g.cfg.HTTP.MaxConnsPerIP,
		MaxRequestsPerConn:    0, // unlimited: apps keep connections alive through a drop; IdleTimeout reaps them
		ReadTimeout:           g.cfg.HTTP.ReadTimeout,
		WriteTimeout:          g.cfg.HTTP.WriteTimeout,
		IdleTimeout:           g.cfg.HTTP.IdleTimeout,
		MaxIdleWorkerDuration: 10 * time.Second,
		MaxRequestBodySize:    bodyMax,
		ReadBufferSize:        headerBufLen,
		WriteBufferSize:       headerBufLen,
		TCPKeepalive:          true,
		CloseOnShutdown:       true,
		Logger:                fasthttpLogger{g.log},
	}
}

// Listen binds both listeners (":0" picks a free port; see PublicAddr).
func (g *Gateway) Listen() error {
	var err error
	if g.publicLn == nil {
		if g.publicLn, err = net.Listen("tcp", g.cfg.PublicAddr); err != nil {
			return fmt.Errorf("gateway: public listener: %w", err)
		}
	}
	if g.adminLn == nil {
		if g.adminLn, err = net.Listen("tcp", g.cfg.AdminAddr); err != nil {
			return fmt.Errorf("gateway: admin listener: %w", err)
		}
	}
	return nil
}

// UseListeners makes Run serve on the given listeners (tests: in-memory).
func (g *Gateway) UseListeners(public, admin net.Listener) { g.publicLn, g.adminLn = public, admin }

// PublicAddr and AdminAddr are the bound addresses after Listen.
func (g *Gateway) PublicAddr() string { return g.publicLn.Addr().String() }
func (g *Gateway) AdminAddr() string  { return g.adminLn.Addr().String() }

// Run serves until ctx ends, then stops (stop): /readyz turns 503 at once,
// claims are still answered for shutdown.drain_delay, then the listeners
// close, in-flight requests finish, the last settlement pass and stats
// flush run, and every goroutine ends — all within shutdown.timeout, less
// the part left for Close.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.Listen(); err != nil {
		return err
	}
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	loops := []func(context.Context){g.reg.Run, g.connectRedis, g.flushStats, g.sweepTransfers, g.allotLoop, g.settleUnsettled, g.markSettled, g.relay.Run, g.reconcile,
		g.risk.Run, g.saveSnapshots, g.superviseLedger, g.watchRedisMasters}
	if g.sink != nil {
		loops = append(loops, g.sink.Run)
	}
	loops = append(loops, g.checkoutLoops()...)
	for _, f := range loops {
		wg.Add(1)
		go func() { defer wg.Done(); f(bg) }()
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := g.reg.WaitReady(rctx)
	if err == nil {
		select {
		case <-g.risk.Ready():
		case <-rctx.Done():
			err = fmt.Errorf("gateway: risk rules not synced: %w", rctx.Err())
		}
	}
	cancel()
	if err != nil {
		stopBG()
		wg.Wait()
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- g.public.Serve(g.publicLn) }()
	go func() { errc <- g.admin.Serve(g.adminLn) }()
	g.log.Info("flashgate serving", "public", g.PublicAddr(), "admin", g.AdminAddr())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	g.stop(serveErr == nil, func() { stopBG(); wg.Wait() })
	return serveErr
}

// stop is Run's graceful end. With delay (the context ended, as opposed to a
// listener failing) the servers keep answering for shutdown.drain_delay
// while /readyz says 503. Each later step is bounded by what is left of
// shutdown.timeout; stopLoops ends the background goroutines.
func (g *Gateway) stop(delay bool, stopLoops func()) {
	began := time.Now()
	g.draining.Store(true)
	// Close (NATS, Pebble) runs after Run returns: leave it the last tenth.
	sctx, cancel := context.WithDeadline(context.Background(), began.Add(g.cfg.Shutdown.Timeout-g.cfg.Shutdown.Timeout/10))
	defer cancel()
	if delay && g.cfg.Shutdown.DrainDelay > 0 {
		g.log.Info("draining: not ready, still serving", "drain_delay", g.cfg.Shutdown.DrainDelay)
		select {
		case <-time.After(g.cfg.Shutdown.DrainDelay):
		case <-sctx.Done():
		}
	}
	dctx, dcancel := context.WithTimeout(sctx, g.cfg.HTTP.DrainTimeout)
	_ = g.public.ShutdownWithContext(dctx)
	_ = g.admin.ShutdownWithContext(dctx)
	dcancel()
	settleCtx, scancel := context.WithTimeout(sctx, settleAtStopTimeout)
	g.settleAtStop(settleCtx)
	scancel()
	stopLoops()
	g.flushStatsOnce(sctx)
	g.log.Info("stopped", "after", time.Since(began).Round(time.Millisecond))
}

// Close releases every resource. Safe to call more than once.
func (g *Gateway) Close() {
	g.closeOnce.Do(func() {
		if c := g.redisC.Load(); c != nil {
			(*c).Close()
		}
		if g.nc != nil {
			g.nc.Close()
		}
		if g.ns != nil {
			g.ns.Shutdown()
			g.ns.WaitForShutdown()
		}
		if g.ledger != nil {
			_ = g.ledger.Close()
		}
		if g.store != nil {
			_ = g.store.Close()
		}
	})
}

// Ledger exposes the gateway's ledger (audit, tests).
func (g *Gateway) Ledger() *ledger.Ledger { return g.ledger }

// connectRedis creates the Redis client, retrying with a bounded backoff
// until it succeeds or ctx ends. Once created, rueidis reconnects by itself.
func (g *Gateway) connectRedis(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		c, err := NewRedisClient(g.cfg.Redis)
		if err == nil {
			g.redisC.Store(&c)
			g.stockP.Store(stock.New(c))
			g.risk.SetRedis(c) // limiters and the alert gate need the client
			g.log.Info("redis connected", "addrs", g.cfg.Redis.Addrs)
			return
		}
		g.log.Warn("redis not reachable; claims answer 503 until it is", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, redisConnectBackoffMax)
	}
}

// NewRedisClient builds the rueidis client flashgate uses: auto-pipelined,
// client-side caching off, and retries off — every script is idempotent and
// re-run explicitly by package stock, never blindly by the client.
func NewRedisClient(c RedisConfig) (rueidis.Client, error) {
	return rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       c.Addrs,
		DisableRetry:      true,
		DisableCache:      true,
		ConnWriteTimeout:  max(c.Timeout, time.Second),
		Dialer:            net.Dialer{Timeout: c.Timeout, KeepAlive: 10 * time.Second},
		BlockingPoolSize:  64,
		PipelineMultiplex: 2,
		// Let concurrent claims share a write syscall: at most this much
		// added latency (rueidis issue 156 measured ~20µs as nearly free).
		MaxFlushDelay: c.MaxFlushDelay,
	})
}

func (g *Gateway) stock() *stock.Store { return g.stockP.Load() }

func (g *Gateway) flushStats(ctx context.Context) {
	t := time.NewTicker(statsFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.flushStatsOnce(ctx)
		}
	}
}

func (g *Gateway) sweepTransfers(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := g.stock()
		if st == nil {
			continue
		}
		for _, c := range g.reg.List() {
			if c.Deleted {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			n, err := st.Sweep(sctx, c.ID, c.Shards, g.now())
			if c.StateAt(g.now()) == campaign.StateActive {
				g.observeStock(sctx, st, c)
			}
			cancel()
			if n > 0 {
				g.metrics.transfersSwept.Add(float64(n))
				g.log.Info("landed orphaned stock transfers", "campaign", c.ID, "count", n)
			}
			if err != nil {
				break
			}
		}
	}
}

// observeStock feeds an active campaign's counts to the low-stock and
// low-budget alerts, when either is set.
func (g *Gateway) observeStock(ctx context.Context, st *stock.Store, c *campaign.Campaign) {
	if !g.risk.WatchesStock() {
		return
	}
	n, err := st.Count(ctx, c.ID, c.Shards)
	if err != nil {
		return
	}
	g.risk.ObserveStock(c, n.Remaining, n.Granted, g.now())
}

// riskMetrics is what package risk counts, on this gateway's counters.
func (m *metrics) riskMetrics() risk.Metrics {
	return risk.Metrics{
		Blocked:        func(kind string) { m.riskBlocked.WithLabelValues(kind).Inc() },
		RateLimited:    func(rule string) { m.riskRateLimited.WithLabelValues(rule).Inc() },
		ShadowBlocked:  func(rule string) { m.riskShadow.WithLabelValues(rule).Inc() },
		LimitError:     func(rule string) { m.riskLimitErrors.WithLabelValues(rule).Inc() },
		Alert:          func(kind string) { m.alerts.WithLabelValues(kind).Inc() },
		WebhookFailure: m.webhookFailures.Inc,
	}
}

// NATSURL is the client URL of the NATS server the gateway uses (the
// embedded one listens on a random loopback port).
func (g *Gateway) NATSURL() string {
	if g.ns != nil {
		return g.ns.ClientURL()
	}
	return g.cfg.NATS.URL
}
