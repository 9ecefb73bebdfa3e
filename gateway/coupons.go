package gateway

import (
	"context"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/ledger/store"
)

// GET /v1/me/coupons: the caller's grants, read from the grant store (so it
// lags a claim by the pipeline delay). grantView is also the base of a row
// of the admin grants listing (admin_grants.go).

// myCouponsMax bounds GET /v1/me/coupons.
const myCouponsMax = 200

// grantView is a stored grant as the API shows it.
type grantView struct {
	GrantID    string  `json:"grant_id"`
	Campaign   string  `json:"campaign"`
	GrantedAt  string  `json:"granted_at"`
	ValidFrom  *string `json:"valid_from"`
	ValidUntil *string `json:"valid_until"`
	FaceValue  int64   `json:"face_value,omitempty"`
}

func unixView(sec int64) *string {
	if sec == 0 {
		return nil
	}
	s := time.Unix(sec, 0).UTC().Format(time.RFC3339)
	return &s
}

// viewOf maps a stored grant to its view.
func viewOf(g *store.Grant) grantView {
	return grantView{GrantID: g.GrantID, Campaign: g.Campaign, GrantedAt: time.Unix(0, g.GrantedAtNanos).UTC().Format(time.RFC3339Nano),
		ValidFrom: unixView(g.ValidFrom), ValidUntil: unixView(g.ValidUntil), FaceValue: g.FaceValue}
}

// handleMyCoupons serves GET /v1/me/coupons (an end user's token, checked
// here like the claim's).
func (g *Gateway) handleMyCoupons(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() {
		writeError(ctx, status.InvalidRequest, "method must be GET")
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return
	}
	user, st, msg := g.authenticate(ctx)
	if st != status.Granted {
		writeError(ctx, st, msg)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), g.cfg.Claim.Timeout)
	defer cancel()
	grants, err := g.store.ByUser(rctx, user, myCouponsMax)
	if err != nil {
		writeUnavailable(ctx, "grant store unavailable")
		return
	}
	out := make([]grantView, len(grants))
	for i := range grants {
		out[i] = viewOf(&grants[i])
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "ok", "user": user, "grants": out})
}
