package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
)

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

var (
	pathClaimPrefix = []byte("/v1/campaigns/")
	pathClaimSuffix = []byte("/claim")
)

// parseClaimPath returns the campaign id of /v1/campaigns/{id}/claim.
func parseClaimPath(p []byte) ([]byte, bool) {
	if len(p) <= len(pathClaimPrefix)+len(pathClaimSuffix) || !bytes.HasPrefix(p, pathClaimPrefix) || !bytes.HasSuffix(p, pathClaimSuffix) {
		return nil, false
	}
	id := p[len(pathClaimPrefix) : len(p)-len(pathClaimSuffix)]
	if len(id) == 0 || bytes.IndexByte(id, '/') >= 0 {
		return nil, false
	}
	return id, true
}

// parseClaim validates everything a claim request carries. It returns the
// status to answer and a message when the request is refused.
func (g *Gateway) parseClaim(ctx *fasthttp.RequestCtx, id []byte) (claimInput, status.Status, string) {
	var in claimInput
	peer, _ := netip.AddrFromSlice(ctx.RemoteIP())
	peer = peer.Unmap()
	// Every X-Forwarded-For line, in order: Peek would return only the first.
	ip, err := clientIP(peer, ctx.Request.Header.PeekAll("X-Forwarded-For"), g.proxies)
	if err != nil {
		return in, status.InvalidRequest, err.Error()
	}
	in.ip = ip
	user, st, msg := g.authenticate(ctx)
	if st != status.Granted {
		return in, st, msg
	}
	in.user = user
	dev := ctx.Request.Header.Peek("X-Device-ID")
	if len(dev) == 0 {
		return in, status.InvalidRequest, "X-Device-ID header is required"
	}
	if !printableTokenBytes(dev, deviceIDLenMax) {
		return in, status.InvalidRequest, "X-Device-ID must be 1..128 printable characters"
	}
	in.device = string(dev)
	if k := ctx.Request.Header.Peek("Idempotency-Key"); len(k) > 0 {
		if !printableTokenBytes(k, idempotencyKeyLenMax) {
			return in, status.InvalidRequest, "Idempotency-Key must be 1..64 printable characters"
		}
		in.idemKey = string(k)
	}
	if body := ctx.Request.Body(); len(bytes.TrimSpace(body)) > 0 {
		if len(body) > publicBodyLenMax {
			return in, status.InvalidRequest, "body exceeds 4096 bytes"
		}
		var b claimBody
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return in, status.InvalidRequest, "body: " + err.Error()
		}
		if dec.More() {
			return in, status.InvalidRequest, "body: trailing data after JSON object"
		}
		if len(b.Code) > 64 {
			return in, status.InvalidRequest, "body: code longer than 64 characters"
		}
		in.code = b.Code
	}
	if !campaign.ValidID(string(id)) {
		return in, status.UnknownCampaign, "no such campaign"
	}
	in.campaignID = string(id)
	return in, status.Granted, ""
}

// authenticate returns the caller's user id (JWT or trusted header), or the
// status and message to refuse with.
func (g *Gateway) authenticate(ctx *fasthttp.RequestCtx) (string, status.Status, string) {
	switch g.cfg.Auth.Mode {
	case "jwt":
		authz := ctx.Request.Header.Peek("Authorization")
		if len(authz) == 0 {
			return "", status.Unauthenticated, "missing Authorization: Bearer token"
		}
		sub, err := g.verify.verify(authz)
		if err != nil {
			return "", status.Unauthenticated, "bad token: " + err.Error()
		}
		return sub, status.Granted, ""
	case "trusted-header":
		peer, _ := netip.AddrFromSlice(ctx.RemoteIP())
		if !g.proxies.contains(peer.Unmap()) {
			return "", status.Unauthenticated, "X-User-ID accepted only from a trusted proxy"
		}
		u := ctx.Request.Header.Peek("X-User-ID")
		if !printableTokenBytes(u, userIDLenMax) {
			return "", status.Unauthenticated, "missing or malformed X-User-ID"
		}
		return string(u), status.Granted, ""
	}
	return "", status.Unauthenticated, "no authentication mode"
}

func (g *Gateway) handleClaim(ctx *fasthttp.RequestCtx, id []byte) {
	start := time.Now()
	st := g.claim(ctx, id)
	g.metrics.observeClaim(st, time.Since(start))
}

func (g *Gateway) claim(ctx *fasthttp.RequestCtx, id []byte) status.Status {
	if !ctx.IsPost() {
		ctx.Response.Header.Set("Allow", "POST")
		writeError(ctx, status.InvalidRequest, "method must be POST")
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return status.InvalidRequest
	}
	in, st, msg := g.parseClaim(ctx, id)
	if st != status.Granted {
		writeError(ctx, st, msg)
		return st
	}
	c, ok := g.reg.Get(in.campaignID)
	if !ok {
		writeError(ctx, status.UnknownCampaign, "no such campaign")
		return status.UnknownCampaign
	}
	counts := g.stats.of(c.ID)
	now := g.now()
	record := func(s status.Status) status.Status {
		counts.add(s, 1)
		g.observeOutcome(c.ID, s, now)
		return s
	}
	rctx, cancel := context.WithTimeout(context.Background(), g.cfg.Claim.Timeout)
	defer cancel()
	if st, msg, retryAfter, which := g.checkRisk(rctx, &in, now); st != status.Granted {
		switch st {
		case status.RateLimited:
			writeRateLimited(ctx, msg, retryAfter, which)
		case status.Unavailable:
			writeUnavailable(ctx, msg)
		default:
			writeError(ctx, st, msg)
		}
		return record(st)
	}
	switch c.StateAt(now) {
	case campaign.StateNotStarted:
		writeError(ctx, status.NotStarted, "campaign starts at "+c.StartsAt.Format(time.RFC3339))
		return record(status.NotStarted)
	case campaign.StateDraft:
		writeError(ctx, status.UnknownCampaign, "no such campaign")
		return record(status.UnknownCampaign)
	case campaign.StateEnded, campaign.StateDeleted:
		return record(g.refuseUnlessReplay(ctx, rctx, c, &in, status.Ended, "campaign has ended"))
	case campaign.StatePaused:
		return record(g.refuseUnlessReplay(ctx, rctx, c, &in, status.Paused, "campaign is paused"))
	}
	if g.reg.StaleFor(now) > g.cfg.NATS.ControlPlaneStaleMax {
		writeUnavailable(ctx, "control plane unavailable")
		return record(status.Unavailable)
	}
	if b := g.relay.Backlog(); b > uint64(g.cfg.Relay.BacklogMax) {
		writeUnavailable(ctx, "grant pipeline backlog full")
		return record(status.Unavailable)
	}
	if !g.settled.Load() {
		writeUnavailable(ctx, "settling the grants of this node's last run")
		return record(status.Unavailable)
	}
	if g.ledger.Err() != nil { // disk failed: take no stock that could not be recorded
		g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
		writeUnavailable(ctx, "ledger unavailable")
		return record(status.Unavailable)
	}
	flag := g.soldOutFlag(c.ID)
	if until := flag.Load(); now.UnixNano() < until {
		return record(g.refuseUnlessReplay(ctx, rctx, c, &in, status.SoldOut, "sold out"))
	} else if until != 0 && !flag.CompareAndSwap(until, now.Add(soldOutRecheck).UnixNano()) {
		// another request is re-probing
		return record(g.refuseUnlessReplay(ctx, rctx, c, &in, status.SoldOut, "sold out"))
	}
	store := g.stock()
	if store == nil {
		writeUnavailable(ctx, "redis unavailable")
		return record(status.Unavailable)
	}

	aud := stock.AudiencePublic
	switch c.Audience.Mode {
	case "targeted":
		aud = stock.AudienceTargeted
	case "code":
		aud = stock.AudienceCode
		if in.code == "" {
			writeError(ctx, status.NotEligible, "this campaign needs a redemption code: body {\"code\": \"…\"}")
			return record(status.NotEligible)
		}
		if g.codeGuessesOver(rctx, in.user, now) {
			writeRateLimited(ctx, "too many wrong codes", int(codeGuessWindow.Seconds()), "code")
			return record(status.RateLimited)
		}
	}
	attempt, ttl := in.idemKey, g.cfg.Claim.IdempotencyTTL
	if attempt == "" {
		// No client key: a per-request id still makes a re-run after an
		// unknown outcome idempotent. Prefixed so it cannot collide with a client key.
		attempt, ttl = "~"+stock.NewGrantID(now), 10*time.Minute
	}
	rec := newGrantRecord(c, &in, stock.NewGrantID(now), now)
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
		writeUnavailable(ctx, "stock unavailable")
		return record(status.Unavailable)
	}
	switch res.Outcome {
	case stock.SoldOut:
		flag.Store(now.Add(soldOutRecheck).UnixNano())
		writeError(ctx, status.SoldOut, "sold out")
		return record(status.SoldOut)
	case stock.AlreadyClaimed:
		writeAlreadyClaimed(ctx, res.GrantIDs)
		return record(status.AlreadyClaimed)
	case stock.NotEligible:
		if aud == stock.AudienceCode {
			g.countCodeGuess(rctx, in.user)
		}
		writeError(ctx, status.NotEligible, res.Reason)
		return record(status.NotEligible)
	}
	if flag.Load() != 0 {
		flag.Store(0) // stock came back (PATCH): clear the local flag
	}
	if res.Replay {
		return record(g.answerReplay(ctx, rctx, c, &res.Prior))
	}
	if err := g.appendNewGrant(rctx, rec, since); err != nil {
		g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
		g.log.Warn("claim: ledger append failed; not acknowledged, the settler appends it", "grant_id", rec.GrantID, "err", err)
		writeUnavailable(ctx, "ledger unavailable")
		return record(status.Unavailable)
	}
	writeGranted(ctx, c, rec)
	return record(status.Granted)
}

// refuseUnlessReplay answers a claim that a local check refuses (sold-out
// flag, paused, ended) — unless the request retries an attempt that granted:
// the same Idempotency-Key always gets its original answer.
func (g *Gateway) refuseUnlessReplay(ctx *fasthttp.RequestCtx, rctx context.Context, c *campaign.Campaign, in *claimInput, st status.Status, msg string) status.Status {
	if in.idemKey != "" {
		store := g.stock()
		if store == nil {
			writeUnavailable(ctx, "redis unavailable: cannot tell whether this Idempotency-Key granted; retry")
			return status.Unavailable
		}
		prior, found, err := store.LookupAttempt(rctx, c.ID, c.Shards, in.user, in.idemKey)
		if err != nil {
			// Not knowing is not a refusal: a final answer here could hide a grant.
			writeUnavailable(ctx, "cannot tell whether this Idempotency-Key granted; retry")
			return status.Unavailable
		}
		if found {
			return g.answerReplay(ctx, rctx, c, &prior)
		}
	}
	writeError(ctx, st, msg)
	return st
}

// answerReplay answers a retried attempt with the grant it made. A settled
// grant is in its node's synced ledger: answered from the attempt record. An
// unsettled grant of this node is appended first (coalescing with its first
// append if that is still in flight, so the answer never precedes the sync);
// an unsettled grant of another node is not written here — one grant, one
// record — and the client is asked to retry.
func (g *Gateway) answerReplay(ctx *fasthttp.RequestCtx, rctx context.Context, c *campaign.Campaign, prior *stock.Attempt) status.Status {
	rec := &ledger.Record{GrantID: prior.GrantID, ValidFrom: prior.ValidFrom, ValidUntil: prior.ValidUntil}
	if prior.Unsettled {
		if prior.Node != g.ledger.ID() {
			writeUnavailable(ctx, "this grant is being recorded by another gateway; retry with the same Idempotency-Key")
			return status.Unavailable
		}
		var facts ledger.Record
		if err := facts.Decode([]byte(prior.Facts)); err != nil || facts.GrantID != prior.GrantID {
			g.log.Error("claim: unsettled grant with corrupt facts", "grant_id", prior.GrantID, "err", err)
			writeUnavailable(ctx, "grant record unreadable")
			return status.Unavailable
		}
		facts.Seq = 0
		if err := g.appendGrant(rctx, &facts); err != nil {
			g.metrics.dependencyErrors.WithLabelValues("ledger").Inc()
			writeUnavailable(ctx, "ledger unavailable")
			return status.Unavailable
		}
	}
	writeGranted(ctx, c, rec)
	return status.Granted
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
