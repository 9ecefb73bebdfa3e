package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
)

// The admin listener's shared plumbing: admin tokens and their roles, the
// JSON answers every admin handler writes, and the adapters of the
// /admin/v1/campaigns/{id}[/…] handlers. The handlers themselves are in the
// file of the resource they serve: admin_campaigns.go, admin_audience.go,
// admin_codes.go, admin_grants.go, admin_audit.go, admin_risk.go; the
// document in openapi.go, profiles in pprof.go. The router (routes.go)
// checks the role before any of them runs.

// tokenDigest is the SHA-256 of an admin token.
type tokenDigest [sha256.Size]byte

// adminTokens holds the configured admin tokens as SHA-256 digests, never
// the tokens themselves. A presented token is hashed and compared with
// every digest with subtle.ConstantTimeCompare, and the role is picked
// without a branch: neither a map lookup (whose key comparison stops at the
// first differing byte) nor an early exit tells a caller how close a guess
// came, or which entry matched.
type adminTokens []adminToken

type adminToken struct {
	digest tokenDigest
	role   Role
}

func newAdminTokens(tokens map[string]string) adminTokens {
	out := make(adminTokens, 0, len(tokens))
	for tok, name := range tokens {
		out = append(out, adminToken{digest: sha256.Sum256([]byte(tok)), role: adminRoles[name]})
	}
	return out
}

// roleOf returns the role of a presented token (RoleNone if it is not one
// of ours) and its digest. Its time depends on the number of configured
// tokens and the presented token's length only.
func (ts adminTokens) roleOf(presented []byte) (Role, tokenDigest) {
	d := tokenDigest(sha256.Sum256(presented))
	r := int(RoleNone)
	for i := range ts {
		eq := subtle.ConstantTimeCompare(d[:], ts[i].digest[:])
		r = subtle.ConstantTimeSelect(eq, int(ts[i].role), r)
	}
	if len(presented) == 0 {
		r = int(RoleNone)
	}
	return Role(r), d
}

func adminError(ctx *fasthttp.RequestCtx, code int, st, msg string, fields ...string) {
	body := map[string]any{"status": st, "error": msg}
	if len(fields) > 0 {
		body["fields"] = fields
	}
	adminJSON(ctx, code, body)
}

func adminJSON(ctx *fasthttp.RequestCtx, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = fasthttp.StatusInternalServerError, []byte(`{"status":"error","error":"encoding failed"}`)
	}
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// campaignItem adapts a handler of /admin/v1/campaigns/{id}[/…]: an
// ill-formed id is an unknown campaign, and the handler gets a deadline.
func campaignItem(h func(g *Gateway, ctx *fasthttp.RequestCtx, rctx context.Context, id string)) handler {
	return func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) {
		id := rq.param(0)
		if !campaign.ValidID(id) {
			adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		h(g, ctx, rctx, id)
	}
}

// campaignWithBody loads a campaign of the given audience mode and decodes
// the request body into v (unknown fields refused); false when it answered.
func (g *Gateway) campaignWithBody(ctx *fasthttp.RequestCtx, rctx context.Context, id, mode string, v any) (*campaign.Campaign, bool) {
	c, err := g.reg.Lookup(rctx, id)
	if err != nil {
		adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
		return nil, false
	}
	if c.Audience.Mode != mode {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "audience.mode of this campaign is "+c.Audience.Mode+", not "+mode, "audience.mode")
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return nil, false
	}
	return c, true
}
