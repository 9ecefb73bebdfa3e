package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger/store"
)

// The campaigns resource: /admin/v1/campaigns and /admin/v1/campaigns/{id}
// (create, list, get with stats, patch, soft delete). Its sub-resources
// have files of their own: admin_audience.go, admin_codes.go,
// admin_grants.go.

const (
	// adminWaitVisible bounds how long create waits for the gateway's own
	// registry to see the new campaign, so "201" means "claimable here".
	adminWaitVisible = 2 * time.Second
	// patchAttemptsMax bounds optimistic-concurrency retries of a PATCH.
	patchAttemptsMax = 5
)

// adminCreateCampaign serves POST /admin/v1/campaigns.
func (g *Gateway) adminCreateCampaign(ctx *fasthttp.RequestCtx) {
	var c campaign.Campaign
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return
	}
	c.EnsureDefaults()
	c.Paused, c.Deleted = false, false
	c.CreatedAt = g.now().UTC()
	if err := c.Validate(); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", err.Error(), campaign.Fields(err)...)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.reg.Lookup(rctx, c.ID); err == nil {
		adminError(ctx, fasthttp.StatusConflict, "exists", "campaign "+c.ID+" already exists")
		return
	} else if !errors.Is(err, campaign.ErrNotFound) {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	// Stock first, then the definition: a campaign visible to gateways always
	// has its shards initialised. Init refuses any other state under the id
	// (an earlier campaign's shards, grant sets, audience or codes), so two
	// campaigns never share state; a retry of a create that failed after
	// Init finds its own untouched shards and goes on.
	st := g.stock()
	if st == nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "redis unavailable")
		return
	}
	if err := st.Init(rctx, c.ID, c.Units(), c.Shards); err != nil {
		if errors.Is(err, stock.ErrLeftover) {
			adminError(ctx, fasthttp.StatusConflict, "leftover_state", err.Error()+
				"; a campaign id is never reused over another campaign's state: create this one under a new id, or, once every grant of the earlier one is settled and no longer needed in Redis, delete its keys (fg:{"+c.ID+".<shard>}:*) and create again")
			return
		}
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	if err := g.reg.Create(rctx, &c); err != nil {
		if errors.Is(err, campaign.ErrExists) {
			adminError(ctx, fasthttp.StatusConflict, "exists", "campaign "+c.ID+" already exists")
			return
		}
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	g.waitVisible(c.ID, func(*campaign.Campaign) bool { return true })
	g.log.Info("campaign created", "id", c.ID, "stock", c.Stock, "shards", c.Shards)
	adminJSON(ctx, fasthttp.StatusCreated, g.campaignView(rctx, &c, false))
}

// adminListCampaigns serves GET /admin/v1/campaigns[?state=…].
func (g *Gateway) adminListCampaigns(ctx *fasthttp.RequestCtx) {
	state := string(ctx.QueryArgs().Peek("state"))
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list := g.reg.List()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	out := make([]campaignView, 0, len(list))
	now := g.now()
	for _, c := range list {
		if state != "" && string(c.StateAt(now)) != state {
			continue
		}
		out = append(out, g.campaignView(rctx, c, true))
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"campaigns": out})
}

// adminGetCampaign serves GET /admin/v1/campaigns/{id}.
func (g *Gateway) adminGetCampaign(ctx *fasthttp.RequestCtx, id string) {
	if !campaign.ValidID(id) {
		adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := g.reg.Lookup(rctx, id)
	if errors.Is(err, campaign.ErrNotFound) {
		adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
		return
	}
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	v := g.campaignView(rctx, c, true)
	if u, err := g.campaignUsage(rctx, id); err == nil { // coupon use (couponevents.go)
		v.Stats.Usage = u
	} else if v.Stats.Error == "" {
		v.Stats.Error = err.Error()
	}
	adminJSON(ctx, fasthttp.StatusOK, v)
}

// adminPatchCampaign serves PATCH /admin/v1/campaigns/{id}.
func (g *Gateway) adminPatchCampaign(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
	var p campaign.Patch
	dec := json.NewDecoder(bytes.NewReader(ctx.Request.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return
	}
	g.patchCampaign(ctx, rctx, id, &p, false)
}

// adminDeleteCampaign serves DELETE /admin/v1/campaigns/{id} (soft delete).
func (g *Gateway) adminDeleteCampaign(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
	g.patchCampaign(ctx, rctx, id, &campaign.Patch{}, true)
}

// patchCampaign applies a change with optimistic concurrency on the KV
// revision. The definition is the authority for a campaign's units: the
// change is committed there first, and only a committed definition's unit
// total is put on the shards (stock.Allot: absolute, idempotent, never
// backwards), so a PATCH that loses the compare-and-swap, or fails
// validation on its retry, has left nothing in Redis, and whatever the
// interleaving the shards hold exactly the units of the last definition.
// The answer is 200 only once those units are on the shards; if Redis fails
// in between, the change stays committed, every gateway's allotment loop
// (allot.go) finishes it, and a retry with the same change_id confirms it.
func (g *Gateway) patchCampaign(ctx *fasthttp.RequestCtx, rctx context.Context, id string, p *campaign.Patch, del bool) {
	st := g.stock()
	if st == nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "redis unavailable")
		return
	}
	for attempt := 0; attempt < patchAttemptsMax; attempt++ {
		old, rev, err := g.reg.Revision(rctx, id)
		if errors.Is(err, campaign.ErrNotFound) {
			adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
			return
		}
		if err != nil {
			adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
			return
		}
		n := *old
		replay := !del && p.ChangeID != "" && old.HasChange(p.ChangeID)
		switch {
		case del:
			n.Deleted = true
		case !replay:
			pp := *p
			if n, err = old.Apply(&pp); err != nil {
				adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", err.Error(), campaign.Fields(err)...)
				return
			}
		}
		if n.Units() > old.Units() {
			// The shards first hold the committed definition's units (a shard
			// created before allotments were recorded adopts them here, before
			// any larger total is committed), and Redis is known to answer.
			if err := st.Allot(rctx, id, old.Shards, old.Units()); err != nil {
				adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "nothing changed: "+err.Error())
				return
			}
		}
		if !replay {
			rev, err = g.reg.Update(rctx, &n, rev)
			if errors.Is(err, campaign.ErrConflict) {
				continue // someone else changed it: apply this change to theirs
			}
			if err != nil {
				adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
				return
			}
		}
		if err := g.allotUnits(rctx, st, &n); err != nil && !del { // a DELETE is done; the allot loop finishes it
			adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable",
				"the change is committed but its units are not yet on the shards ("+err.Error()+"); every gateway keeps putting them there, and a retry with the same change_id answers once they are")
			return
		}
		g.waitVisible(id, func(c *campaign.Campaign) bool { return c.Revision >= rev })
		g.log.Info("campaign changed", "id", id, "change_id", p.ChangeID, "replay", replay, "stock", n.Stock, "units", n.Units(), "paused", n.Paused, "deleted", n.Deleted)
		adminJSON(ctx, fasthttp.StatusOK, g.campaignView(rctx, &n, true))
		return
	}
	adminError(ctx, fasthttp.StatusConflict, "conflict", "campaign kept changing; retry with the same change_id")
}

// waitVisible waits, at most adminWaitVisible, until this gateway's
// registry holds campaign id in a state ok accepts (its own write came back
// through the watch); the answer goes out either way.
func (g *Gateway) waitVisible(id string, ok func(*campaign.Campaign) bool) {
	wait.Until(context.Background(), adminWaitVisible, func() bool {
		c, found := g.reg.Get(id)
		return found && ok(c)
	})
}

// campaignView is a campaign as the admin API shows it: the definition, its
// state and, with stats, its counts (campaignStats).
type campaignView struct {
	*campaign.Campaign
	State string         `json:"state"`
	Stats *campaignStats `json:"stats,omitempty"`
}

type campaignStats struct {
	Stock            int64 `json:"stock"`
	Remaining        int64 `json:"remaining"`
	Granted          int64 `json:"granted"`
	PendingTransfers int64 `json:"pending_transfers"`
	// Unsettled grants (counted in granted) are not yet marked as in their
	// node's synced ledger: in flight, or held while that node is down.
	Unsettled       int64            `json:"unsettled"`
	Stored          int64            `json:"stored"` // grants in the SQL store (lags by the pipeline delay)
	Units           int64            `json:"units"`  // coupons the shards started with: stock capped by budget
	BudgetUsed      int64            `json:"budget_used,omitempty"`
	BudgetRemaining int64            `json:"budget_remaining,omitempty"`
	ClaimRatePerS   float64          `json:"claim_rate_per_s"` // attempts per second over the last full minute
	Trend           []TrendPoint     `json:"trend"`
	AudienceSize    int64            `json:"audience_size,omitempty"`
	Shards          []int64          `json:"shards"`
	Attempts        int64            `json:"attempts"`
	Rejected        map[string]int64 `json:"rejected"`
	Error           string           `json:"error,omitempty"`
	// Usage is the coupons' use at checkout, from the store (GET of one
	// campaign only): used, usage_rate, discount_total, … and a daily trend.
	Usage *store.Usage `json:"usage,omitempty"`
}

// campaignView builds a campaign's view; withStats reads Redis, the store
// and the stats counters (a read that fails is named in stats.error).
func (g *Gateway) campaignView(ctx context.Context, c *campaign.Campaign, withStats bool) campaignView {
	v := campaignView{Campaign: c, State: string(c.StateAt(g.now()))}
	if !withStats {
		return v
	}
	s := &campaignStats{Stock: c.Stock, Units: c.Units(), Rejected: map[string]int64{}}
	v.Stats = s
	st := g.stock()
	if st == nil {
		s.Error = "redis unavailable"
		return v
	}
	counts, err := st.Count(ctx, c.ID, c.Shards)
	if err != nil {
		s.Error = err.Error()
	}
	s.Remaining, s.Granted, s.PendingTransfers, s.Shards, s.Unsettled = counts.Remaining, counts.Granted, counts.Pending, counts.Shards, counts.Unsettled
	if n, err := g.store.Count(ctx, c.ID); err == nil {
		s.Stored = n
	} else if s.Error == "" {
		s.Error = err.Error()
	}
	if face := c.Coupon.FaceValue(); c.Budget > 0 {
		s.BudgetUsed = s.Granted * face
		s.BudgetRemaining = c.Budget - s.BudgetUsed
	}
	if s.Trend, err = g.readTrend(ctx, c.ID); err == nil && len(s.Trend) >= 2 {
		s.ClaimRatePerS = float64(s.Trend[len(s.Trend)-2].Attempts) / 60
	}
	if c.Audience.Mode == "targeted" {
		s.AudienceSize, _ = st.AudienceSize(ctx, c.ID, c.Shards)
	}
	byStatus, err := g.readStats(ctx, c.ID)
	if err != nil && s.Error == "" {
		s.Error = err.Error()
	}
	for name, n := range byStatus {
		s.Attempts += n
		if name != status.Granted.String() {
			s.Rejected[name] = n
		}
	}
	return v
}
