package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/risk"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
)

// A claim is a short sequence of steps, each returning an outcome; the
// first decided outcome ends it, and answerClaim, the one writer, answers it:
//
//	parseClaim (request, identity) → campaign → risk.Check → admit (this
//	gateway's own state) → takeStock (the claim script) → recordGrant (ledger)
//
// No step writes to the response. Risk comes before admit, as the README
// states ("blacklist → limits → campaign window"): a blocked or limited
// caller is told so whatever the campaign's state.

// claimInput is what a claim request carries once parsed and authenticated.
type claimInput struct {
	campaignID string
	user       string
	device     string
	ip         netip.Addr
	idemKey    string // client's Idempotency-Key, "" if none
	code       string
}

// claimBody is the optional JSON body of a claim.
type claimBody struct {
	Code string `json:"code"`
}

// outcome is how a claim ends, or, undecided (the zero value), that it goes
// on to the next step.
type outcome struct {
	decided    bool
	status     status.Status
	msg        string
	retryAfter int            // rate_limited: Retry-After seconds
	limit      string         // rate_limited: which limit
	grantIDs   []string       // already_claimed: the user's grants
	grant      *ledger.Record // granted: the grant answered (id, validity)
	// c is the campaign once known: a granted answer names it, and its
	// stats and rejection-spike alert count the outcome (at its now, at).
	c  *campaign.Campaign
	at time.Time
}

func refuse(st status.Status, msg string) outcome {
	return outcome{decided: true, status: st, msg: msg}
}

func unavailable(msg string) outcome { return refuse(status.Unavailable, msg) }

func rateLimited(msg string, retryAfter int, limit string) outcome {
	return outcome{decided: true, status: status.RateLimited, msg: msg, retryAfter: retryAfter, limit: limit}
}

func granted(rec *ledger.Record) outcome {
	return outcome{decided: true, status: status.Granted, grant: rec}
}

// handleClaim serves POST /v1/campaigns/{campaign}/claim. The router admits
// only POST and a {campaign} of one non-empty segment.
func (g *Gateway) handleClaim(ctx *fasthttp.RequestCtx, id []byte) {
	start := time.Now()
	if !g.claimSlot() {
		out := overloaded()
		g.answerClaim(ctx, &out, start)
		return
	}
	defer g.releaseClaimSlot()
	out := g.claim(ctx, id)
	g.answerClaim(ctx, &out, start)
}

// claim runs the steps of one claim until one decides it.
func (g *Gateway) claim(ctx *fasthttp.RequestCtx, id []byte) outcome {
	in, out := g.parseClaim(ctx, id)
	if out.decided {
		return out
	}
	c, ok := g.reg.Get(in.campaignID)
	if !ok {
		return refuse(status.UnknownCampaign, "no such campaign")
	}
	now := g.now()
	rctx, cancel := context.WithTimeout(context.Background(), g.cfg.Claim.Timeout)
	defer cancel()
	out = g.decide(rctx, c, &in, now)
	out.c, out.at = c, now
	return out
}

// decide runs the steps after the campaign is known.
func (g *Gateway) decide(rctx context.Context, c *campaign.Campaign, in *claimInput, now time.Time) outcome {
	if v := g.risk.Check(rctx, risk.Claim{IP: in.ip, Device: in.device, User: in.user}, now); !v.OK {
		return outcome{decided: true, status: v.Status, msg: v.Message, retryAfter: v.RetryAfter, limit: v.Which}
	}
	if out := g.admit(rctx, c, in, now); out.decided {
		return out
	}
	out, rec, since := g.takeStock(rctx, c, in, now)
	if out.decided {
		return out
	}
	return g.recordGrant(rctx, rec, since)
}

// answerClaim is the one writer of a claim's answer: the outcome's status
// code, body and Retry-After; then it counts the outcome (metrics, and the
// campaign's stats and rejection-spike alert once the campaign is known).
func (g *Gateway) answerClaim(ctx *fasthttp.RequestCtx, out *outcome, start time.Time) {
	if !out.decided {
		panic("gateway: a claim ended undecided") // a step returned without deciding: a bug
	}
	switch out.status {
	case status.Granted:
		writeGranted(ctx, out.c, out.grant)
	case status.RateLimited:
		writeRateLimited(ctx, out.msg, out.retryAfter, out.limit)
	case status.Unavailable:
		writeUnavailable(ctx, out.msg)
	case status.AlreadyClaimed:
		writeAlreadyClaimed(ctx, out.grantIDs)
	default:
		writeError(ctx, out.status, out.msg)
	}
	if out.c != nil {
		g.stats.of(out.c.ID).add(out.status, 1)
		g.risk.ObserveOutcome(out.c.ID, out.status, out.at)
	}
	g.metrics.observeClaim(out.status, time.Since(start))
}

// parseClaim validates everything a claim request carries; a refusal is a
// decided outcome.
func (g *Gateway) parseClaim(ctx *fasthttp.RequestCtx, id []byte) (claimInput, outcome) {
	var in claimInput
	peer, _ := netip.AddrFromSlice(ctx.RemoteIP())
	peer = peer.Unmap()
	// Every X-Forwarded-For line, in order: Peek would return only the first.
	ip, err := clientIP(peer, ctx.Request.Header.PeekAll("X-Forwarded-For"), g.proxies)
	if err != nil {
		return in, refuse(status.InvalidRequest, err.Error())
	}
	in.ip = ip
	if in.user, err = g.identify(ctx); err != nil {
		return in, refuse(status.Unauthenticated, err.Error())
	}
	dev := ctx.Request.Header.Peek("X-Device-ID")
	if len(dev) == 0 {
		return in, refuse(status.InvalidRequest, "X-Device-ID header is required")
	}
	if !printableTokenBytes(dev, deviceIDLenMax) {
		return in, refuse(status.InvalidRequest, "X-Device-ID must be 1..128 printable characters")
	}
	in.device = string(dev)
	if k := ctx.Request.Header.Peek("Idempotency-Key"); len(k) > 0 {
		if !printableTokenBytes(k, idempotencyKeyLenMax) {
			return in, refuse(status.InvalidRequest, "Idempotency-Key must be 1..64 printable characters")
		}
		in.idemKey = string(k)
	}
	if in.code, err = parseClaimBody(ctx.Request.Body()); err != nil {
		return in, refuse(status.InvalidRequest, err.Error())
	}
	if !campaign.ValidID(string(id)) {
		return in, refuse(status.UnknownCampaign, "no such campaign")
	}
	in.campaignID = string(id)
	return in, outcome{} // undecided: the claim goes on
}

// parseClaimBody returns the code of an optional {"code": "…"} body.
func parseClaimBody(body []byte) (string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", nil
	}
	if len(body) > publicBodyLenMax {
		return "", errors.New("body exceeds 4096 bytes")
	}
	var b claimBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return "", errors.New("body: " + err.Error())
	}
	if dec.More() {
		return "", errors.New("body: trailing data after JSON object")
	}
	if len(b.Code) > 64 {
		return "", errors.New("body: code longer than 64 characters")
	}
	return b.Code, nil
}

var (
	errNoBearer      = errors.New("missing Authorization: Bearer token")
	errUntrustedPeer = errors.New("X-User-ID accepted only from a trusted proxy")
	errBadUserHeader = errors.New("missing or malformed X-User-ID")
	errNoAuthMode    = errors.New("no authentication mode")
)

// identify returns the caller's user id (JWT or trusted header), or why it
// is refused (401 unauthenticated, the error's text the message).
func (g *Gateway) identify(ctx *fasthttp.RequestCtx) (string, error) {
	switch g.cfg.Auth.Mode {
	case "jwt":
		authz := ctx.Request.Header.Peek("Authorization")
		if len(authz) == 0 {
			return "", errNoBearer
		}
		sub, err := g.verify.verify(authz)
		if err != nil {
			return "", fmt.Errorf("bad token: %w", err)
		}
		return sub, nil
	case "trusted-header":
		peer, _ := netip.AddrFromSlice(ctx.RemoteIP())
		if !g.proxies.contains(peer.Unmap()) {
			return "", errUntrustedPeer
		}
		u := ctx.Request.Header.Peek("X-User-ID")
		if !printableTokenBytes(u, userIDLenMax) {
			return "", errBadUserHeader
		}
		return string(u), nil
	}
	return "", errNoAuthMode
}

// authenticate is identify in the shape GET /v1/me/coupons (pipeline.go)
// uses, where status.Granted means "authenticated". It goes once that
// handler calls identify.
func (g *Gateway) authenticate(ctx *fasthttp.RequestCtx) (string, status.Status, string) {
	user, err := g.identify(ctx)
	if err != nil {
		return "", status.Unauthenticated, err.Error()
	}
	return user, status.Granted, ""
}

// admit checks, from this gateway's own state, that the campaign takes
// claims now and that a grant could be made and recorded: the campaign's
// state, the control plane's staleness, the relay's backlog, the settlement
// of this node's last run, the ledger's disk and the local sold-out flag.
// A refusal a retried attempt may have outrun (ended, paused, sold out)
// answers the attempt's grant instead (refuseUnlessReplay).
func (g *Gateway) admit(rctx context.Context, c *campaign.Campaign, in *claimInput, now time.Time) outcome {
	switch c.StateAt(now) {
	case campaign.StateNotStarted:
		return refuse(status.NotStarted, "campaign starts at "+c.StartsAt.Format(time.RFC3339))
	case campaign.StateDraft:
		return refuse(status.UnknownCampaign, "no such campaign")
	case campaign.StateEnded, campaign.StateDeleted:
		return g.refuseUnlessReplay(rctx, c, in, status.Ended, "campaign has ended")
	case campaign.StatePaused:
		return g.refuseUnlessReplay(rctx, c, in, status.Paused, "campaign is paused")
	}
	switch {
	case g.reg.StaleFor(now) > g.cfg.NATS.ControlPlaneStaleMax:
		return unavailable("control plane unavailable")
	case g.relay.Backlog() > uint64(g.cfg.Relay.BacklogMax):
		return unavailable("grant pipeline backlog full")
	case !g.settled.Load():
		return unavailable("settling the grants of this node's last run")
	case g.ledger.Err() != nil: // disk failed: take no stock that could not be recorded
		g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
		return unavailable("ledger unavailable")
	}
	// Sold out here until the flag's time; past it, one request re-probes
	// (the compare-and-swap) while the others still answer sold out.
	flag := g.soldOutFlag(c.ID)
	if until := flag.Load(); now.UnixNano() < until || (until != 0 && !flag.CompareAndSwap(until, now.Add(soldOutRecheck).UnixNano())) {
		return g.refuseUnlessReplay(rctx, c, in, status.SoldOut, "sold out")
	}
	return outcome{} // undecided: the claim goes on
}

// takeStock runs the claim script on the user's home shard (package stock
// steals from another shard when that one is empty). It decides every
// outcome but a fresh grant, which it leaves undecided with the grant's
// ledger record for recordGrant.
func (g *Gateway) takeStock(rctx context.Context, c *campaign.Campaign, in *claimInput, now time.Time) (outcome, *ledger.Record, ledger.Epoch) {
	store := g.stock()
	if store == nil {
		return unavailable("redis unavailable"), nil, 0
	}
	aud, out := g.audience(rctx, c, in, now)
	if out.decided {
		return out, nil, 0
	}
	attempt, ttl := in.idemKey, g.cfg.Claim.IdempotencyTTL
	if attempt == "" {
		// No client key: a per-request id still makes a re-run after an
		// unknown outcome idempotent. Prefixed so it cannot collide with a client key.
		attempt, ttl = "~"+stock.NewGrantID(now), 10*time.Minute
	}
	rec := newGrantRecord(c, in, stock.NewGrantID(now), now)
	since := g.ledger.Epoch() // before the script can hand rec.GrantID to a retry (ledger.AppendNew)
	t0 := time.Now()
	res, err := store.Claim(rctx, &stock.Claim{
		Campaign: c.ID, Shards: c.Shards, PerUserLimit: c.PerUserLimit, User: in.user,
		AttemptKey: attempt, AttemptTTL: ttl, GrantID: rec.GrantID, Audience: aud, Code: in.code,
		Node: g.ledger.ID(), Facts: string(rec.AppendEncode(nil)), ValidFrom: rec.ValidFrom, ValidUntil: rec.ValidUntil,
	})
	g.metrics.redisSeconds.Observe(time.Since(t0).Seconds())
	if err != nil {
		// The script may have run: if it granted, the grant waits in the
		// unsettled hash and the settler appends it (settle.go).
		g.metrics.dependencyErrors.WithLabelValues("redis").Inc()
		g.log.Debug("claim: stock", "campaign", c.ID, "err", err)
		return unavailable("stock unavailable"), nil, 0
	}
	flag := g.soldOutFlag(c.ID)
	switch res.Outcome {
	case stock.SoldOut:
		flag.Store(now.Add(soldOutRecheck).UnixNano())
		return refuse(status.SoldOut, "sold out"), nil, 0
	case stock.AlreadyClaimed:
		return outcome{decided: true, status: status.AlreadyClaimed, grantIDs: res.GrantIDs}, nil, 0
	case stock.NotEligible:
		if aud == stock.AudienceCode {
			g.countCodeGuess(rctx, in.user)
		}
		return refuse(status.NotEligible, res.Reason), nil, 0
	}
	if flag.Load() != 0 {
		flag.Store(0) // stock came back (PATCH): clear the local flag
	}
	if res.Replay {
		return g.replay(rctx, c, &res.Prior), nil, 0
	}
	return outcome{}, rec, since
}

// audience is the campaign's audience for the claim script. A code
// campaign needs a code, and a user out of wrong-code guesses is refused
// before the script runs.
func (g *Gateway) audience(rctx context.Context, c *campaign.Campaign, in *claimInput, now time.Time) (string, outcome) {
	switch c.Audience.Mode {
	case "targeted":
		return stock.AudienceTargeted, outcome{}
	case "code":
		if in.code == "" {
			return stock.AudienceCode, refuse(status.NotEligible, "this campaign needs a redemption code: body {\"code\": \"…\"}")
		}
		if g.codeGuessesOver(rctx, in.user, now) {
			return stock.AudienceCode, rateLimited("too many wrong codes", int(codeGuessWindow.Seconds()), "code")
		}
		return stock.AudienceCode, outcome{}
	}
	return stock.AudiencePublic, outcome{}
}

// recordGrant makes a fresh grant durable: "granted" only once the append
// returned (I4). A failed append is not acknowledged; the settler appends
// the grant later.
func (g *Gateway) recordGrant(rctx context.Context, rec *ledger.Record, since ledger.Epoch) outcome {
	if err := g.appendNewGrant(rctx, rec, since); err != nil {
		g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
		g.log.Warn("claim: ledger append failed; not acknowledged, the settler appends it", "grant_id", rec.GrantID, "err", err)
		return unavailable("ledger unavailable")
	}
	return granted(rec)
}

// refuseUnlessReplay refuses a claim that a local check refuses (sold-out
// flag, paused, ended) — unless the request retries an attempt that granted:
// the same Idempotency-Key always gets its original answer.
func (g *Gateway) refuseUnlessReplay(rctx context.Context, c *campaign.Campaign, in *claimInput, st status.Status, msg string) outcome {
	if in.idemKey == "" {
		return refuse(st, msg)
	}
	store := g.stock()
	if store == nil {
		return unavailable("redis unavailable: cannot tell whether this Idempotency-Key granted; retry")
	}
	prior, found, err := store.LookupAttempt(rctx, c.ID, c.Shards, in.user, in.idemKey)
	if err != nil {
		// Not knowing is not a refusal: a final answer here could hide a grant.
		return unavailable("cannot tell whether this Idempotency-Key granted; retry")
	}
	if found {
		return g.replay(rctx, c, &prior)
	}
	return refuse(st, msg)
}

// replay answers a retried attempt with the grant it made. A settled grant
// is in its node's synced ledger: answered from the attempt record. An
// unsettled grant of this node is appended first (coalescing with its first
// append if that is still in flight, so the answer never precedes the sync);
// an unsettled grant of another node is not written here — one grant, one
// record — and the client is asked to retry.
func (g *Gateway) replay(rctx context.Context, c *campaign.Campaign, prior *stock.Attempt) outcome {
	rec := &ledger.Record{GrantID: prior.GrantID, ValidFrom: prior.ValidFrom, ValidUntil: prior.ValidUntil}
	if !prior.Unsettled {
		return granted(rec)
	}
	if prior.Node != g.ledger.ID() {
		return unavailable("this grant is being recorded by another gateway; retry with the same Idempotency-Key")
	}
	var facts ledger.Record
	if err := facts.Decode([]byte(prior.Facts)); err != nil || facts.GrantID != prior.GrantID {
		g.log.Error("claim: unsettled grant with corrupt facts", "grant_id", prior.GrantID, "err", err)
		return unavailable("grant record unreadable")
	}
	facts.Seq = 0
	if err := g.appendGrant(rctx, &facts); err != nil {
		g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
		return unavailable("ledger unavailable")
	}
	return granted(rec)
}

// newGrantRecord is the ledger record of a grant about to be decided: its
// facts travel with the claim script (the unsettled hash) before the append.
func newGrantRecord(c *campaign.Campaign, in *claimInput, grantID string, now time.Time) *ledger.Record {
	from, until := c.Validity.Window(now)
	return &ledger.Record{
		GrantID: grantID, Campaign: c.ID, User: in.user, Device: in.device, ClientIP: in.ip.String(),
		IdempotencyKey: in.idemKey, Shard: uint32(stock.HomeShard(in.user, c.Shards)), GrantedAtNanos: now.UnixNano(),
		ValidFrom: unixOrZero(from), ValidUntil: unixOrZero(until), FaceValue: c.Coupon.FaceValue(),
	}
}

// appendGrant makes the grant durable (idempotent by grant id) and, once the
// append returned, queues the grant's unsettled field for deletion.
func (g *Gateway) appendGrant(ctx context.Context, rec *ledger.Record) error {
	t0 := time.Now()
	_, err := g.ledger.Append(ctx, rec)
	return g.appended(rec, t0, err)
}

// appendNewGrant is appendGrant for the grant this request minted, with the
// ledger's epoch read before the claim script ran: no existence read unless
// a replay of the id may have been appended meanwhile (ledger.AppendNew).
func (g *Gateway) appendNewGrant(ctx context.Context, rec *ledger.Record, since ledger.Epoch) error {
	t0 := time.Now()
	_, err := g.ledger.AppendNew(ctx, rec, since)
	return g.appended(rec, t0, err)
}

func (g *Gateway) appended(rec *ledger.Record, t0 time.Time, err error) error {
	g.metrics.ledgerSeconds.Observe(time.Since(t0).Seconds())
	if err != nil {
		return err
	}
	g.mark(rec.Campaign, rec.Shard, rec.GrantID)
	return nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (g *Gateway) soldOutFlag(id string) *atomic.Int64 {
	if f, ok := g.soldOut.Load(id); ok {
		return f.(*atomic.Int64)
	}
	f, _ := g.soldOut.LoadOrStore(id, new(atomic.Int64))
	return f.(*atomic.Int64)
}

// --- answers ---------------------------------------------------------------

func writeStatus(ctx *fasthttp.RequestCtx, st status.Status, b []byte) {
	ctx.SetStatusCode(st.HTTPCode())
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func appendHead(b []byte, st status.Status) []byte {
	b = append(b, `{"status":"`...)
	b = append(b, st.String()...)
	return append(b, '"')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

func writeError(ctx *fasthttp.RequestCtx, st status.Status, msg string) {
	b := appendHead(make([]byte, 0, 96), st)
	b = append(b, `,"error":`...)
	b = appendJSONString(b, msg)
	b = append(b, '}')
	writeStatus(ctx, st, b)
}

func writeUnavailable(ctx *fasthttp.RequestCtx, msg string) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	writeError(ctx, status.Unavailable, msg)
}

func writeRateLimited(ctx *fasthttp.RequestCtx, msg string, retryAfter int, which string) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfter))
	b := appendHead(make([]byte, 0, 128), status.RateLimited)
	b = append(b, `,"limit":`...)
	b = appendJSONString(b, which)
	b = append(b, `,"error":`...)
	b = appendJSONString(b, msg)
	b = append(b, '}')
	writeStatus(ctx, status.RateLimited, b)
}

func writeAlreadyClaimed(ctx *fasthttp.RequestCtx, ids []string) {
	b := appendHead(make([]byte, 0, 128), status.AlreadyClaimed)
	b = append(b, `,"grant_ids":[`...)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, id)
	}
	b = append(b, "]}"...)
	writeStatus(ctx, status.AlreadyClaimed, b)
}

func writeGranted(ctx *fasthttp.RequestCtx, c *campaign.Campaign, r *ledger.Record) {
	b := appendHead(make([]byte, 0, 320), status.Granted)
	b = append(b, `,"grant_id":"`...)
	b = append(b, r.GrantID...)
	b = append(b, `","campaign":"`...)
	b = append(b, c.ID...)
	b = append(b, `","coupon":`...)
	if c.CouponJSON != nil {
		b = append(b, c.CouponJSON...)
	} else {
		cj, _ := json.Marshal(&c.Coupon)
		b = append(b, cj...)
	}
	b = append(b, `,"valid_from":`...)
	b = appendUnixTime(b, r.ValidFrom)
	b = append(b, `,"valid_until":`...)
	b = appendUnixTime(b, r.ValidUntil)
	b = append(b, '}')
	writeStatus(ctx, status.Granted, b)
}

func appendUnixTime(b []byte, sec int64) []byte {
	if sec == 0 {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = time.Unix(sec, 0).UTC().AppendFormat(b, time.RFC3339)
	return append(b, '"')
}
