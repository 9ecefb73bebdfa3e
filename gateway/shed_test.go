package gateway

import (
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// TestClaimBeyondInflightMaxIsShedAtOnce: with claim.inflight_max claims in
// progress, one more is answered 503 with Retry-After before any step runs
// (this gateway has no verifier, registry or Redis: a step would panic),
// and counted; once a slot is free, claims are admitted again.
func TestClaimBeyondInflightMaxIsShedAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Claim.InflightMax = 2
	g := &Gateway{cfg: cfg, metrics: newMetrics()}
	for i := 0; i < 2; i++ {
		if !g.claimSlot() {
			t.Fatalf("slot %d of 2 refused", i+1)
		}
	}
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/v1/campaigns/c1/claim")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 7)}, nil)
	g.handleClaim(&ctx, []byte("c1"))
	if ctx.Response.StatusCode() != 503 || string(ctx.Response.Header.Peek("Retry-After")) != "1" ||
		!strings.Contains(string(ctx.Response.Body()), `"status":"unavailable","error":"overloaded`) {
		t.Fatalf("shed claim answered %d Retry-After %q %s", ctx.Response.StatusCode(), ctx.Response.Header.Peek("Retry-After"), ctx.Response.Body())
	}
	var mctx fasthttp.RequestCtx
	g.metrics.handler(&mctx)
	if !strings.Contains(string(mctx.Response.Body()), "\nflashgate_claims_shed_total 1\n") {
		t.Fatalf("shed counter not 1:\n%s", mctx.Response.Body())
	}
	if g.claimsInFlight.Load() != 2 {
		t.Fatalf("%d slots held after the shed claim, want 2", g.claimsInFlight.Load())
	}
	g.releaseClaimSlot()
	if !g.claimSlot() {
		t.Fatal("a freed slot was not taken")
	}
	if g.claimSlot() {
		t.Fatal("a third slot was taken")
	}
}
