package gateway

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/gateway/risk"
)

// The risk admin handlers decode, call package risk and answer; the rules,
// the blacklist, alerts and the audit log are risk's.

const (
	// riskWriteTimeout bounds one risk write (bucket, audit, wait until in force).
	riskWriteTimeout = 10 * time.Second
	// blacklistTTLMax bounds an entry's TTL.
	blacklistTTLMax = 365 * 24 * time.Hour
	// blacklistListMax bounds one listing.
	blacklistListMax = 10_000
	// blacklistReasonLenMax bounds an entry's reason.
	blacklistReasonLenMax = 500
	// riskAuditListDefault is one audit page without ?limit=.
	riskAuditListDefault = 100
)

// riskWrite adapts a risk write handler: it gets a deadline and the
// caller named for the audit log (role and a hash prefix of the token).
func riskWrite(h func(g *Gateway, ctx *fasthttp.RequestCtx, rctx context.Context, actor string, rq *request)) handler {
	return func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) {
		rctx, cancel := context.WithTimeout(context.Background(), riskWriteTimeout)
		defer cancel()
		h(g, ctx, rctx, actorOf(rq.digest, rq.role), rq)
	}
}

// actorOf names an admin token without revealing it: role and the first
// 4 bytes of its SHA-256.
func actorOf(d tokenDigest, r Role) string {
	return r.String() + ":" + hex.EncodeToString(d[:4])
}

// getRules serves GET /admin/v1/risk/rules.
func (g *Gateway) getRules(ctx *fasthttp.RequestCtx) {
	adminJSON(ctx, fasthttp.StatusOK, g.risk.Rules())
}

// listBlacklist serves GET /admin/v1/risk/blacklist[?limit=].
func (g *Gateway) listBlacklist(ctx *fasthttp.RequestCtx) {
	limit := blacklistListMax
	if v, err := strconv.Atoi(string(ctx.QueryArgs().Peek("limit"))); err == nil && v > 0 && v < limit {
		limit = v
	}
	entries, total := g.risk.Blacklist(g.now(), limit)
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"entries": entries, "total": total})
}

// listAlerts serves GET /admin/v1/risk/alerts, newest first.
func (g *Gateway) listAlerts(ctx *fasthttp.RequestCtx) {
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"alerts": g.risk.Alerts()})
}

// riskAudit serves GET /admin/v1/risk/audit[?limit=].
func (g *Gateway) riskAudit(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), riskWriteTimeout)
	defer cancel()
	limit := riskAuditListDefault
	if v, err := strconv.Atoi(string(ctx.QueryArgs().Peek("limit"))); err == nil && v > 0 && v <= risk.AuditListMax {
		limit = v
	}
	entries, err := g.risk.AuditLog(rctx, limit)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"entries": entries})
}

// putRules serves PUT /admin/v1/risk/rules.
func (g *Gateway) putRules(ctx *fasthttp.RequestCtx, rctx context.Context, actor string, _ *request) {
	var r antifraud.Rules
	if !decodeAdminStrict(ctx, &r) {
		return
	}
	if err := r.Validate(); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", err.Error(), antifraud.Fields(err)...)
		return
	}
	if err := g.risk.PutRules(rctx, actor, r); err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, r)
}

type blacklistBody struct {
	Reason string `json:"reason"`
	TTL    string `json:"ttl,omitempty"`
}

// writeBlacklist serves PUT and DELETE /admin/v1/risk/blacklist/{kind}/{value}.
func (g *Gateway) writeBlacklist(ctx *fasthttp.RequestCtx, rctx context.Context, actor string, rq *request) {
	// ctx.Path() is already percent-decoded (a CIDR's "/" arrives as %2F or
	// plain); the route's {value} takes the rest of the path.
	kind, raw := rq.param(0), rq.param(1)
	value, err := antifraud.NormalizeEntry(kind, raw)
	if err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", err.Error(), "value")
		return
	}
	if ctx.IsDelete() {
		switch err := g.risk.DeleteBlacklist(rctx, actor, kind, value); {
		case errors.Is(err, risk.ErrNotFound):
			adminError(ctx, fasthttp.StatusNotFound, "not_found", "no such entry")
		case err != nil:
			adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		default:
			adminJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "deleted", "kind": kind, "value": value})
		}
		return
	}
	var body blacklistBody
	if !decodeAdminStrict(ctx, &body) {
		return
	}
	if strings.TrimSpace(body.Reason) == "" || len(body.Reason) > blacklistReasonLenMax {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "reason is required (1..500 characters)", "reason")
		return
	}
	var ttl time.Duration
	if body.TTL != "" {
		if ttl, err = time.ParseDuration(body.TTL); err != nil || ttl <= 0 || ttl > blacklistTTLMax {
			adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "ttl must be a duration in (0, 8760h]", "ttl")
			return
		}
	}
	e, err := g.risk.PutBlacklist(rctx, actor, antifraud.Entry{Kind: kind, Value: value, Reason: body.Reason}, ttl)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, e)
}

// decodeAdminStrict decodes the request body into v, refusing unknown fields;
// false when it answered 400.
func decodeAdminStrict(ctx *fasthttp.RequestCtx, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return false
	}
	return true
}
