package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/risk"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/ledger"
)

// testRisk opens package risk on an in-process JetStream (not run: no
// rules, so it only counts).
func testRisk(t *testing.T) *risk.Risk {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := risk.Open(context.Background(), js, risk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestClaimAnswersByteForByte: answerClaim, the one writer of a claim's
// answer, writes each kind of outcome exactly as the API states it — HTTP
// code, Retry-After and body bytes — and counts the outcomes of a known
// campaign in its stats.
func TestClaimAnswersByteForByte(t *testing.T) {
	g := &Gateway{metrics: newMetrics(), risk: testRisk(t)}
	c := &campaign.Campaign{ID: "d11", CouponJSON: []byte(`{"type":"voucher","amount":500}`)}
	ok := granted(&ledger.Record{GrantID: "01a208b03d44c86638b0c0d1ea4df570", ValidFrom: 1793700000})
	ok.c = c
	taken := outcome{decided: true, status: status.AlreadyClaimed, grantIDs: []string{"g1", "g2"}, c: c}
	for _, tc := range []struct {
		out        outcome
		code       int
		retryAfter string
		body       string
	}{
		{ok, 200, "", `{"status":"granted","grant_id":"01a208b03d44c86638b0c0d1ea4df570","campaign":"d11","coupon":{"type":"voucher","amount":500},"valid_from":"2026-11-03T10:00:00Z","valid_until":null}`},
		{taken, 409, "", `{"status":"already_claimed","grant_ids":["g1","g2"]}`},
		{rateLimited("limit per-ip reached", 7, "ip"), 429, "7", `{"status":"rate_limited","limit":"ip","error":"limit per-ip reached"}`},
		{unavailable("ledger unavailable"), 503, "1", `{"status":"unavailable","error":"ledger unavailable"}`},
		{refuse(status.Blocked, "blacklisted ip"), 403, "", `{"status":"blocked","error":"blacklisted ip"}`},
		{refuse(status.NotEligible, `this campaign needs a redemption code: body {"code": "…"}`), 403, "",
			`{"status":"not_eligible","error":"this campaign needs a redemption code: body {\"code\": \"…\"}"}`},
		{refuse(status.UnknownCampaign, "no such campaign"), 404, "", `{"status":"unknown_campaign","error":"no such campaign"}`},
	} {
		var ctx fasthttp.RequestCtx
		g.answerClaim(&ctx, &tc.out, time.Now())
		if got := ctx.Response.StatusCode(); got != tc.code {
			t.Errorf("%s: HTTP %d, want %d", tc.out.status, got, tc.code)
		}
		if got := string(ctx.Response.Header.Peek("Retry-After")); got != tc.retryAfter {
			t.Errorf("%s: Retry-After %q, want %q", tc.out.status, got, tc.retryAfter)
		}
		if got := string(ctx.Response.Header.ContentType()); got != "application/json" {
			t.Errorf("%s: Content-Type %q", tc.out.status, got)
		}
		if got := string(ctx.Response.Body()); got != tc.body {
			t.Errorf("%s: body\n%s\nwant\n%s", tc.out.status, got, tc.body)
		}
	}
	counts := g.stats.of(c.ID)
	if counts.n[status.Granted].Load() != 1 || counts.n[status.AlreadyClaimed].Load() != 1 || counts.n[status.RateLimited].Load() != 0 {
		t.Error("the campaign's stats do not count exactly its two outcomes")
	}
}

// TestUndecidedClaimIsABug: an outcome no step decided is never answered
// (as "granted", the zero status, or anything else).
func TestUndecidedClaimIsABug(t *testing.T) {
	g := &Gateway{metrics: newMetrics()}
	defer func() {
		if recover() == nil {
			t.Fatal("an undecided outcome was answered")
		}
	}()
	var ctx fasthttp.RequestCtx
	g.answerClaim(&ctx, &outcome{}, time.Now())
}
