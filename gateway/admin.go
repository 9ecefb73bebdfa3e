package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
)

// adminWaitVisible bounds how long create waits for the gateway's own
// registry to see the new campaign, so "201" means "claimable here".
const adminWaitVisible = 2 * time.Second

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

// adminAudit serves GET /admin/v1/audit.
func (g *Gateway) adminAudit(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := g.Audit(rctx)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, rep)
}

// serveOpenAPI serves the API document (no token: it holds no secret).
func serveOpenAPI(_ *Gateway, ctx *fasthttp.RequestCtx, _ *request) {
	ctx.SetContentType("application/json")
	ctx.SetBody(openAPI)
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
	adminJSON(ctx, fasthttp.StatusOK, g.campaignView(rctx, c, true))
}

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
}

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

// servePprof serves /debug/pprof/ (route option admin.pprof, role admin).
func servePprof(_ *Gateway, ctx *fasthttp.RequestCtx, _ *request) { pprofHandler(ctx) }

var pprofHandler = fasthttpadaptor.NewFastHTTPHandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch strings.TrimPrefix(r.URL.Path, "/debug/pprof/") {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	default:
		pprof.Index(w, r)
	}
})
