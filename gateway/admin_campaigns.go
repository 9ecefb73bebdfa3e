package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ulule/limiter/v3"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/ratelimit"
	"github.com/flashgate/flashgate/internal/wait"
)

const (
	// codesPerRequestMax bounds one generation request.
	codesPerRequestMax = 1_000_000
	// codeRandomBytes: 10 random bytes = 80 bits per code (≥ 60 asked).
	codeRandomBytes = 10
	// audiencePerRequestMax bounds users added by one request.
	audiencePerRequestMax = 100_000
	// codeGuessesMax wrong codes per user per codeGuessWindow, then 429.
	codeGuessesMax  = 10
	codeGuessWindow = 10 * time.Minute
	// patchAttemptsMax bounds optimistic-concurrency retries of a PATCH.
	patchAttemptsMax = 5
)

var codePrefixPattern = regexp.MustCompile(`^[A-Z0-9]{0,16}$`)

// codeAlphabet is Crockford's base32 (no I, L, O, U): easy to read aloud.
var codeAlphabet = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// newCode returns prefix-XXXXXXXXXXXXXXXX with 80 random bits.
func newCode(prefix string) string {
	var b [codeRandomBytes]byte
	_, _ = rand.Read(b[:])
	c := codeAlphabet.EncodeToString(b[:])
	if prefix == "" {
		return c
	}
	return prefix + "-" + c
}

func (g *Gateway) codeLimiter() *limiter.Limiter {
	rc := g.redisC.Load()
	if rc == nil {
		return nil
	}
	return limiter.New(ratelimit.New(*rc, "fg:codeguess"), limiter.Rate{Period: codeGuessWindow, Limit: codeGuessesMax})
}

// codeGuessesOver reports whether a user has used up their wrong-code
// attempts (Redis errors do not block: the code itself is still checked).
func (g *Gateway) codeGuessesOver(ctx context.Context, user string, now time.Time) bool {
	l := g.codeLimiter()
	if l == nil {
		return false
	}
	c, err := l.Peek(ctx, user)
	return err == nil && c.Remaining <= 0 // codeGuessesMax wrong codes used: the next try is refused
}

func (g *Gateway) countCodeGuess(ctx context.Context, user string) {
	if l := g.codeLimiter(); l != nil {
		_, _ = l.Get(ctx, user)
	}
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

func (g *Gateway) addAudience(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
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

func (g *Gateway) generateCodes(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
	var body struct {
		Count  int    `json:"count"`
		Prefix string `json:"prefix"`
	}
	if _, ok := g.campaignWithBody(ctx, rctx, id, "code", &body); !ok {
		return
	}
	var fields []string
	if body.Count < 1 || body.Count > codesPerRequestMax {
		fields = append(fields, "count")
	}
	if !codePrefixPattern.MatchString(body.Prefix) {
		fields = append(fields, "prefix")
	}
	if len(fields) > 0 {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", fmt.Sprintf("count must be 1..%d; prefix 0..16 of A-Z 0-9", codesPerRequestMax), fields...)
		return
	}
	codes := make([]string, body.Count)
	for i := range codes {
		codes[i] = newCode(body.Prefix)
	}
	st := g.stock()
	if st == nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "redis unavailable")
		return
	}
	start := time.Now()
	added, err := st.AddCodes(rctx, id, codes)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	g.log.Info("codes generated", "campaign", id, "count", added, "took", time.Since(start))
	out := map[string]any{"generated": added, "bits_per_code": codeRandomBytes * 8, "export": "/admin/v1/campaigns/" + id + "/codes?format=csv"}
	if len(codes) <= 1000 {
		out["codes"] = codes
	}
	adminJSON(ctx, fasthttp.StatusCreated, out)
}

// exportCodes streams code,state,grant_id as CSV. Every unused code is a
// coupon to whoever holds it: the route needs role admin.
func (g *Gateway) exportCodes(ctx *fasthttp.RequestCtx, _ context.Context, id string) {
	if f := string(ctx.QueryArgs().Peek("format")); f != "" && f != "csv" {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "format must be csv")
		return
	}
	st := g.stock()
	if st == nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", "redis unavailable")
		return
	}
	ctx.SetContentType("text/csv; charset=utf-8")
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+id+`-codes.csv"`)
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		_, _ = w.WriteString("code,state,grant_id\n")
		err := st.ScanCodes(sctx, id, func(code, grant string) error {
			state := "unused"
			if grant != "" {
				state = "used"
			}
			_, err := w.WriteString(code + "," + state + "," + grant + "\n")
			return err
		})
		if err != nil {
			_, _ = w.WriteString("# export interrupted: " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n")
		}
	})
}
