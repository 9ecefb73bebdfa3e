package gateway

import (
	"context"
	"encoding/json"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/ledger/store"
)

// GET /v1/me/coupons[?state=unused|locked|used|expired]: the caller's
// grants, read from the grant store (so it lags a claim by the pipeline
// delay), each with its coupon state, validity and coupon. The router
// authenticates the caller (the user's token, or a checkout service token
// naming the user). grantView is also the base of a row of the admin
// grants listing (admin_grants.go).

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

// walletView is a grant of the wallet: the grant, its state at now
// (unused, locked, used, or expired: unused past valid_until), the order
// holding it, and its coupon (the campaign's definition of it).
type walletView struct {
	grantView
	State         string          `json:"state"`
	OrderID       string          `json:"order_id,omitempty"`
	LockExpiresAt *string         `json:"lock_expires_at,omitempty"`
	UsedAt        *string         `json:"used_at,omitempty"`
	Coupon        json.RawMessage `json:"coupon,omitempty"`
}

// handleMyCoupons serves GET /v1/me/coupons for user (authenticated by the
// router: checkoutCaller).
func (g *Gateway) handleMyCoupons(ctx *fasthttp.RequestCtx, user string) {
	state := string(ctx.QueryArgs().Peek("state"))
	switch state {
	case "", store.CouponUnused, store.CouponLocked, store.CouponUsed, store.WalletExpired:
	default:
		writeFields(ctx, status.InvalidRequest, "state must be unused, locked, used or expired", []string{"state"})
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), g.cfg.Claim.Timeout)
	defer cancel()
	now := g.now()
	grants, err := g.store.Wallet(rctx, user, state, now, myCouponsMax)
	if err != nil {
		writeUnavailable(ctx, "grant store unavailable")
		return
	}
	out := make([]walletView, len(grants))
	coupons := map[string]json.RawMessage{}
	for i := range grants {
		w := &grants[i]
		v := walletView{grantView: viewOf(&w.Grant), State: w.WalletState(now), OrderID: w.OrderID,
			LockExpiresAt: unixNanoTime(w.LockExpiresAt), UsedAt: unixNanoTime(w.UsedAt)}
		cj, ok := coupons[w.Campaign]
		if !ok {
			if c, found := g.campaignDef(rctx, w.Campaign); found {
				if cj = c.CouponJSON; cj == nil {
					cj, _ = json.Marshal(&c.Coupon)
				}
			}
			coupons[w.Campaign] = cj
		}
		v.Coupon = cj
		out[i] = v
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "ok", "user": user, "grants": out})
}
