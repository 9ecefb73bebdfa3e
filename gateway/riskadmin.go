package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/antifraud"
)

const (
	// riskApplyWait bounds how long a write waits to see itself applied on
	// this gateway (others follow through the same watch within a second).
	riskApplyWait = 2 * time.Second
	// blacklistTTLMax bounds an entry's TTL.
	blacklistTTLMax = 365 * 24 * time.Hour
	// blacklistListMax bounds one listing.
	blacklistListMax = 10_000
)

// riskWrite adapts a risk write handler: it gets a deadline and the
// caller named for the audit log (role and a hash prefix of the token).
func riskWrite(h func(g *Gateway, ctx *fasthttp.RequestCtx, rctx context.Context, actor string, rq *request)) handler {
	return func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h(g, ctx, rctx, actorOf(rq.digest, rq.role), rq)
	}
}

// getRules serves GET /admin/v1/risk/rules.
func (g *Gateway) getRules(ctx *fasthttp.RequestCtx) {
	adminJSON(ctx, fasthttp.StatusOK, g.risk.rules.Load().rules)
}

// listBlacklist serves GET /admin/v1/risk/blacklist[?limit=].
func (g *Gateway) listBlacklist(ctx *fasthttp.RequestCtx) {
	limit := blacklistListMax
	if v, err := strconv.Atoi(string(ctx.QueryArgs().Peek("limit"))); err == nil && v > 0 && v < limit {
		limit = v
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"entries": g.risk.blacklist.List(g.now(), limit), "total": g.risk.blacklist.Len()})
}

// listAlerts serves GET /admin/v1/risk/alerts, newest first.
func (g *Gateway) listAlerts(ctx *fasthttp.RequestCtx) {
	g.risk.alertsMu.Lock()
	out := make([]antifraud.Alert, len(g.risk.alerts))
	for i := range g.risk.alerts {
		out[i] = g.risk.alerts[len(g.risk.alerts)-1-i]
	}
	g.risk.alertsMu.Unlock()
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"alerts": out})
}

// riskAudit serves GET /admin/v1/risk/audit[?limit=].
func (g *Gateway) riskAudit(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	limit := 100
	if v, err := strconv.Atoi(string(ctx.QueryArgs().Peek("limit"))); err == nil && v > 0 && v <= auditListMax {
		limit = v
	}
	entries, err := g.riskAuditLog(rctx, limit)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"entries": entries})
}

// putRules serves PUT /admin/v1/risk/rules.
func (g *Gateway) putRules(ctx *fasthttp.RequestCtx, rctx context.Context, actor string, _ *request) {
	var r antifraud.Rules
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return
	}
	if err := r.Validate(); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", err.Error(), antifraud.Fields(err)...)
		return
	}
	before, _ := json.Marshal(g.risk.rules.Load().rules)
	after, _ := json.Marshal(r)
	if _, err := g.risk.kv.Put(rctx, "rules", after); err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	if err := g.auditRisk(rctx, riskAuditEntry{At: g.now().UTC(), Actor: actor, Action: "rules.put", Target: "rules", Before: before, After: after}); err != nil {
		g.log.Error("risk audit not recorded", "err", err)
	}
	for deadline := time.Now().Add(riskApplyWait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cur, _ := json.Marshal(g.risk.rules.Load().rules); bytes.Equal(cur, after) {
			break
		}
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
	key := blacklistKey(kind, value)
	var before []byte
	if e, err := g.risk.kv.Get(rctx, key); err == nil {
		before = e.Value()
	}
	if ctx.IsDelete() {
		if before == nil {
			adminError(ctx, fasthttp.StatusNotFound, "not_found", "no such entry")
			return
		}
		if err := g.risk.kv.Delete(rctx, key); err != nil {
			adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
			return
		}
		_ = g.auditRisk(rctx, riskAuditEntry{At: g.now().UTC(), Actor: actor, Action: "blacklist.delete", Target: kind + ":" + value, Before: before})
		g.waitBlacklist(kind, value, false)
		adminJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "deleted", "kind": kind, "value": value})
		return
	}
	var body blacklistBody
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return
	}
	if strings.TrimSpace(body.Reason) == "" || len(body.Reason) > 500 {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "reason is required (1..500 characters)", "reason")
		return
	}
	now := g.now().UTC()
	e := antifraud.Entry{Kind: kind, Value: value, Reason: body.Reason, Author: actor, CreatedAt: now}
	if body.TTL != "" {
		ttl, err := time.ParseDuration(body.TTL)
		if err != nil || ttl <= 0 || ttl > blacklistTTLMax {
			adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "ttl must be a duration in (0, 8760h]", "ttl")
			return
		}
		exp := now.Add(ttl)
		e.ExpiresAt = &exp
	}
	after, _ := json.Marshal(e)
	if _, err := g.risk.kv.Put(rctx, key, after); err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	_ = g.auditRisk(rctx, riskAuditEntry{At: now, Actor: actor, Action: "blacklist.put", Target: kind + ":" + value, Before: before, After: after})
	g.waitBlacklist(kind, value, true)
	adminJSON(ctx, fasthttp.StatusOK, e)
}

// waitBlacklist waits (bounded) until this gateway's blacklist reflects a
// write, so "200" means "in force here"; other gateways follow through the
// same watch within milliseconds.
func (g *Gateway) waitBlacklist(kind, value string, present bool) {
	for deadline := time.Now().Add(riskApplyWait); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if g.risk.blacklist.Has(kind, value) == present {
			return
		}
	}
}
