package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"
)

// Health of the process and its dependencies: GET /healthz (up) and
// GET /readyz (every dependency a claim needs; 503 while one is missing or
// while draining), on both listeners.

// serveHealthz: the process is up.
func serveHealthz(_ *Gateway, ctx *fasthttp.RequestCtx, _ *request) {
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"status":"ok"}`)
}

// serveReadyz: every dependency a claim needs, 503 when one is missing.
// redis_masters lists every Redis master, whether it answers and how many
// shards of live campaigns it holds (redishealth.go).
func serveReadyz(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) {
	checks, masters, ok := g.readiness()
	code := fasthttp.StatusOK
	if !ok {
		code = fasthttp.StatusServiceUnavailable
		ctx.Response.Header.Set("Retry-After", "1")
	}
	adminJSON(ctx, code, map[string]any{"ready": ok, "checks": checks, "redis_masters": masters})
}

// readiness checks every dependency a claim needs. Redis is per master: a
// master that is down while others serve makes it "degraded", not failing
// (see redishealth.go for why).
func (g *Gateway) readiness() (map[string]string, []redisMaster, bool) {
	checks := map[string]string{}
	ok := true
	fail := func(name, msg string) { checks[name] = msg; ok = false }
	if g.draining.Load() {
		fail("process", "draining")
	} else {
		checks["process"] = "ok"
	}
	rep := g.probeRedis(context.Background())
	if msg, redisOK := rep.readiness(); redisOK {
		checks["redis"] = msg
	} else {
		fail("redis", msg)
	}
	if !g.risk.Synced() {
		checks["risk"] = "degraded: risk rules watch not live; the last rules stay in force"
	} else {
		checks["risk"] = "ok"
	}
	switch stale := g.reg.StaleFor(g.now()); {
	case stale == 0:
		checks["nats"] = "ok"
	case stale <= g.cfg.NATS.ControlPlaneStaleMax:
		checks["nats"] = fmt.Sprintf("degraded: campaign watch down for %s; granting from the last snapshot", stale.Round(time.Second))
	default:
		fail("nats", "campaign watch down")
	}
	if msg, ledgerOK := g.ledgerReadiness(); ledgerOK {
		checks["ledger"] = msg
	} else {
		fail("ledger", msg)
	}
	if g.settled.Load() {
		checks["settlement"] = "ok"
	} else {
		fail("settlement", "this node's unsettled grants not yet settled (waiting for Redis)")
	}
	checks["relay_backlog"] = fmt.Sprint(g.relay.Backlog())
	if g.relay.Backlog() > uint64(g.cfg.Relay.BacklogMax) {
		fail("relay_backlog", fmt.Sprintf("%d grants not yet in JetStream (max %d)", g.relay.Backlog(), g.cfg.Relay.BacklogMax))
	}
	if rep.masters == nil {
		rep.masters = []redisMaster{}
	}
	return checks, rep.masters, ok
}
