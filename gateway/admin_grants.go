package gateway

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/ledger/store"
)

// adminCampaignGrants serves GET /admin/v1/campaigns/{id}/grants: the
// campaign's grants from the store, ordered by grant id, a page of at most
// store.PageMax, next_cursor empty on the last page.
func (g *Gateway) adminCampaignGrants(ctx *fasthttp.RequestCtx, id string) {
	if !campaign.ValidID(id) {
		adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
		return
	}
	limit := 100
	if v := ctx.QueryArgs().Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > store.PageMax {
			adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", fmt.Sprintf("limit must be 1..%d", store.PageMax))
			return
		}
		limit = n
	}
	cursor := string(ctx.QueryArgs().Peek("cursor"))
	if len(cursor) > 64 {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "bad cursor")
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grants, next, err := g.store.ByCampaign(rctx, id, cursor, limit)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	type row struct {
		grantView
		User   string `json:"user"`
		Device string `json:"device"`
		IP     string `json:"client_ip"`
		Node   string `json:"node"`
	}
	out := make([]row, len(grants))
	for i := range grants {
		out[i] = row{viewOf(&grants[i]), grants[i].User, grants[i].Device, grants[i].ClientIP, grants[i].Node}
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"grants": out, "next_cursor": next})
}
