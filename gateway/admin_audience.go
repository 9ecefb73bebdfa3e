package gateway

import (
	"context"
	"fmt"

	"github.com/valyala/fasthttp"
)

// audiencePerRequestMax bounds users added by one request.
const audiencePerRequestMax = 100_000

// adminAddAudience serves POST /admin/v1/campaigns/{id}/audience: it adds
// users to a targeted campaign's list, each to its home shard's set, so the
// claim script checks membership in the same atomic step as the stock.
func (g *Gateway) adminAddAudience(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
	var body struct {
		Users []string `json:"users"`
	}
	c, ok := g.campaignWithBody(ctx, rctx, id, "targeted", &body)
	if !ok {
		return
	}
	if len(body.Users) == 0 || len(body.Users) > audiencePerRequestMax {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", fmt.Sprintf("users: 1..%d per request (send millions in several)", audiencePerRequestMax), "users")
		return
	}
	for i, u := range body.Users {
		if !validUserID(u) {
			adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", fmt.Sprintf("users[%d] is not a valid user id", i), "users")
			return
		}
	}
	st := g.stock()
	if st == nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "redis unavailable")
		return
	}
	added, err := st.AddAudience(rctx, id, c.Shards, body.Users)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	total, _ := st.AudienceSize(rctx, id, c.Shards)
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"added": added, "audience_size": total})
}
