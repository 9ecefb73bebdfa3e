package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/checkout"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger/store"
)

// Checkout (issue 13): POST /v1/checkout/quote, POST /v1/checkout/redeem and
// POST /v1/orders/{order_id}/confirm | cancel | refund on the public
// listener. The math is package checkout (pure); the states are the grant
// store's (ledger/store/checkout.go), one transaction per step. This file
// parses and answers; couponevents.go publishes the events and runs the
// lock and expiring sweepers.
//
// Who may call (the route table says it; the router calls checkoutCaller
// before the handler): a quote and the wallet take the user's own token or
// a checkout service token naming the user in X-User-ID; redeem, confirm,
// cancel and refund only the service token. A buyer's token must not move
// an order: a refund or cancel by the buyer would give the coupon back
// while the order service keeps the discount, and a redeem carries the
// prices the order service vouches for.
//
// A grant the client names that the store does not hold is not "no such
// coupon" when the gateway knows it was granted: the local ledger, or the
// user's grant sets in Redis (every grant any gateway decided), say so, and
// the answer is 503 not_yet_stored with Retry-After (pendingGrants).

const (
	// checkoutBodyLenMax bounds a quote or redeem body: 200 lines of a
	// few hundred bytes and 256 grant ids fit (the server caps every public
	// body at serverBodyLenMax as well).
	checkoutBodyLenMax = serverBodyLenMax
	// refundBodyLenMax bounds a refund body (≤ 200 lines).
	refundBodyLenMax = 16 << 10
	// checkoutTimeout bounds one checkout request's store and Redis calls.
	checkoutTimeout = 5 * time.Second
	// notYetStoredRetryAfter is the Retry-After of not_yet_stored: the
	// pipeline's usual delay is tens of milliseconds.
	notYetStoredRetryAfter = 1
)

// checkoutCaller authenticates the caller of a checkout route (r.Role ==
// RoleCheckout, or r.Checkout): a checkout service token with the user in
// X-User-ID, or — on RoleUser routes — the user's own token (JWT or trusted
// header). It answers the refusal itself (false).
func (g *Gateway) checkoutCaller(ctx *fasthttp.RequestCtx, r *Route) (string, bool) {
	if tok := bearerToken(ctx); len(tok) > 0 {
		switch role, _ := g.tokens.roleOf(tok); {
		case role == RoleCheckout:
			u := ctx.Request.Header.Peek("X-User-ID")
			if !printableTokenBytes(u, userIDLenMax) {
				writeFields(ctx, status.InvalidRequest, "a checkout token names the user in X-User-ID: 1..128 printable characters", []string{"X-User-ID"})
				return "", false
			}
			return string(u), true
		case role != RoleNone && r.Role == RoleCheckout:
			writeError(ctx, status.Forbidden, "role checkout required (an admin token is not a checkout token)")
			return "", false
		case role != RoleNone:
			writeError(ctx, status.Unauthenticated, "an admin token is not a user token")
			return "", false
		}
	}
	user, st, msg := g.authenticate(ctx)
	switch {
	case st == status.Granted && r.Role == RoleCheckout:
		writeError(ctx, status.Forbidden, "redeem, confirm, cancel and refund are the order service's: they need a checkout service token, not the user's")
		return "", false
	case st != status.Granted && r.Role == RoleCheckout:
		writeError(ctx, status.Unauthenticated, "a checkout service token is required")
		return "", false
	case st != status.Granted:
		writeError(ctx, st, msg)
		return "", false
	}
	return user, true
}

// --- request bodies --------------------------------------------------------

// quoteRequest is the body of a quote, and with an order id of a redeem:
// the order's fields at the top level, and the chosen grants.
type quoteRequest struct {
	OrderID  string           `json:"order_id,omitempty"` // redeem only
	Items    []checkout.Item  `json:"items"`
	Shipping map[string]int64 `json:"shipping,omitempty"`
	Offers   []string         `json:"offers,omitempty"`
	GrantIDs []string         `json:"grant_ids,omitempty"`
}

func (q *quoteRequest) order() checkout.Order {
	return checkout.Order{Items: q.Items, Shipping: q.Shipping, Offers: q.Offers}
}

// refundRequest is the body of a refund: an id per refund (reused on its
// retries) and the units refunded, none = every unit not yet refunded.
type refundRequest struct {
	RefundID string             `json:"refund_id"`
	Lines    []checkout.LineQty `json:"lines,omitempty"`
}

// bodyError is a refused body: the message and the fields it names.
type bodyError struct {
	msg    string
	fields []string
}

func (e *bodyError) Error() string { return e.msg }

// decodeStrict decodes exactly one JSON object of at most maxLen bytes into
// v, refusing unknown fields and trailing data.
func decodeStrict(b []byte, maxLen int, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return &bodyError{msg: "body: a JSON object is required"}
	}
	if len(b) > maxLen {
		return &bodyError{msg: fmt.Sprintf("body exceeds %d bytes", maxLen)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		be := &bodyError{msg: "body: " + err.Error()}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			be.fields = []string{te.Field}
		} else if f, ok := strings.CutPrefix(err.Error(), `json: unknown field "`); ok {
			be.fields = []string{strings.TrimSuffix(f, `"`)}
		}
		return be
	}
	if dec.More() {
		return &bodyError{msg: "body: trailing data after the JSON object"}
	}
	if _, err := dec.Token(); err == nil {
		return &bodyError{msg: "body: trailing data after the JSON object"}
	}
	return nil
}

// fieldsOf lists the fields named by checkout's joined FieldErrors.
func fieldsOf(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		var fe *checkout.FieldError
		if errors.As(e, &fe) && fe == e {
			out = append(out, fe.Field)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}

// checkGrantIDs validates chosen grant ids; required: at least one.
func checkGrantIDs(ids []string, required bool) *bodyError {
	switch {
	case required && len(ids) == 0:
		return &bodyError{msg: "grant_ids: a redeem names the coupons to lock (quote first to choose them)", fields: []string{"grant_ids"}}
	case len(ids) > store.RedeemCouponsMax:
		return &bodyError{msg: fmt.Sprintf("grant_ids: at most %d", store.RedeemCouponsMax), fields: []string{"grant_ids"}}
	}
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		f := fmt.Sprintf("grant_ids[%d]", i)
		if !printableToken(id, store.GrantIDLenMax) {
			return &bodyError{msg: f + ": 1..64 printable characters", fields: []string{f}}
		}
		if seen[id] {
			return &bodyError{msg: f + ": chosen twice", fields: []string{f}}
		}
		seen[id] = true
	}
	return nil
}

// orderIDRule is what an order id must be (validOrderID), as the refusals
// and the API document say it.
const orderIDRule = "order_id: 1..128 characters of A-Z a-z 0-9 - _ . : (not \".\" or \"..\"): confirm, cancel and refund carry it in the URL path"

// validOrderID reports whether s can be an order id: 1..OrderIDLenMax
// characters of a path-safe alphabet (ASCII letters, digits, '-', '_',
// '.', ':'), and not "." or "..". Confirm, cancel and refund take the id
// from the URL path, which the server percent-decodes (%2F is '/') and
// normalizes (dot segments): an order "a/b" or ".." would be redeemed —
// its coupons locked — and never reached by a confirm (the lock expires
// under a paid order), and a step on "x/../y" would move order "y".
func validOrderID(s string) bool {
	if len(s) == 0 || len(s) > store.OrderIDLenMax || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

// parseQuote decodes and validates a quote (redeem = false) or redeem body.
func parseQuote(b []byte, redeem bool) (quoteRequest, *bodyError) {
	var q quoteRequest
	if err := decodeStrict(b, checkoutBodyLenMax, &q); err != nil {
		return q, err.(*bodyError)
	}
	if redeem && !validOrderID(q.OrderID) {
		return q, &bodyError{msg: orderIDRule, fields: []string{"order_id"}}
	}
	if !redeem && q.OrderID != "" {
		return q, &bodyError{msg: "order_id: a quote has none (redeem takes it)", fields: []string{"order_id"}}
	}
	o := q.order()
	if err := o.Validate(); err != nil {
		return q, &bodyError{msg: err.Error(), fields: fieldsOf(err)}
	}
	if err := checkGrantIDs(q.GrantIDs, redeem); err != nil {
		return q, err
	}
	return q, nil
}

// parseRefund decodes and validates a refund body (the lines are checked
// against the order by checkout.Refund).
func parseRefund(b []byte) (refundRequest, *bodyError) {
	var r refundRequest
	if err := decodeStrict(b, refundBodyLenMax, &r); err != nil {
		return r, err.(*bodyError)
	}
	if !printableToken(r.RefundID, store.RefundIDLenMax) {
		return r, &bodyError{msg: "refund_id: 1..64 printable characters", fields: []string{"refund_id"}}
	}
	if len(r.Lines) > checkout.ItemsMax {
		return r, &bodyError{msg: fmt.Sprintf("lines: at most %d", checkout.ItemsMax), fields: []string{"lines"}}
	}
	for i, l := range r.Lines {
		if l.Line < 0 || l.Line >= checkout.ItemsMax {
			return r, &bodyError{msg: fmt.Sprintf("lines[%d].line: 0..%d", i, checkout.ItemsMax-1), fields: []string{fmt.Sprintf("lines[%d].line", i)}}
		}
		if l.Quantity < 1 || l.Quantity > checkout.QuantityMax {
			return r, &bodyError{msg: fmt.Sprintf("lines[%d].quantity: 1..%d", i, checkout.QuantityMax), fields: []string{fmt.Sprintf("lines[%d].quantity", i)}}
		}
	}
	return r, nil
}

// bodyHash is the SHA-256 of the canonical request (re-encoded: key order
// and spacing do not matter) with its user: a retry must carry the same.
func bodyHash(user string, v any) string {
	b, _ := json.Marshal(struct {
		User string `json:"user"`
		Body any    `json:"body"`
	}{user, v})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// --- answers ---------------------------------------------------------------

// checkoutJSON answers st with v's fields after the status (first, as in
// every public answer).
func checkoutJSON(ctx *fasthttp.RequestCtx, st status.Status, v map[string]any) {
	delete(v, "status")
	b, err := json.Marshal(v)
	if err != nil { // a stored answer that no longer reads as JSON
		writeUnavailable(ctx, "answer unreadable: "+err.Error())
		return
	}
	out := appendHead(make([]byte, 0, len(b)+32), st)
	if len(b) > 2 {
		out = append(out, ',')
		out = append(out, b[1:]...)
	} else {
		out = append(out, '}')
	}
	writeStatus(ctx, st, out)
}

func writeFields(ctx *fasthttp.RequestCtx, st status.Status, msg string, fields []string) {
	body := map[string]any{"error": msg}
	if len(fields) > 0 {
		body["fields"] = fields
	}
	checkoutJSON(ctx, st, body)
}

func writeBodyError(ctx *fasthttp.RequestCtx, e *bodyError) {
	writeFields(ctx, status.InvalidRequest, e.msg, e.fields)
}

// writeStoreError answers a store failure of a checkout step.
func (g *Gateway) writeStoreError(ctx *fasthttp.RequestCtx, op string, err error) {
	var se *store.OrderStateError
	var iu *store.InUseError
	switch {
	case errors.Is(err, store.ErrOrderNotFound):
		writeError(ctx, status.NotFound, "no such order")
	case errors.Is(err, store.ErrOrderConflict):
		writeError(ctx, status.OrderConflict, "this id was used before with another body or by another user")
	case errors.As(err, &se):
		checkoutJSON(ctx, status.OrderState, map[string]any{"error": se.Error(), "state": se.State})
	case errors.As(err, &iu):
		checkoutJSON(ctx, status.CouponInUse, map[string]any{"error": "coupons locked or used by another order; nothing was locked", "grant_ids": iu.GrantIDs})
	case errors.Is(err, checkout.ErrInvalid):
		writeFields(ctx, status.InvalidRequest, err.Error(), fieldsOf(err))
	default:
		g.log.Warn("checkout: store", "op", op, "err", err)
		g.metrics.dependencyErrors.WithLabelValues("store").Inc()
		writeUnavailable(ctx, "grant store unavailable")
	}
}

func unixNanoTime(ns int64) *string {
	if ns == 0 {
		return nil
	}
	s := time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
	return &s
}

// orderView is an order as every order answer shows it: the redeem's
// stored quotation, and the order's state now.
func orderView(o *store.Order) map[string]any {
	v := map[string]any{
		"order_id":     o.OrderID,
		"user":         o.User,
		"state":        o.State,
		"created_at":   unixNanoTime(o.CreatedAt),
		"confirmed_at": unixNanoTime(o.ConfirmedAt),
		"quotation":    json.RawMessage(o.Answer),
	}
	if o.State == store.OrderLocked {
		v["lock_expires_at"] = unixNanoTime(o.LockExpiresAt)
	}
	return v
}

// --- campaigns and grants → checkout.Coupon ---------------------------------

// campaignDef returns a campaign's definition: the registry's copy, else
// the store's snapshot (a definition is never removed from either while
// its grants matter; the snapshot covers a bucket that lost it).
func (g *Gateway) campaignDef(ctx context.Context, id string) (*campaign.Campaign, bool) {
	if c, ok := g.reg.Get(id); ok {
		return c, true
	}
	b, ok, err := g.store.Campaign(ctx, id)
	if err != nil || !ok {
		return nil, false
	}
	var c campaign.Campaign
	if json.Unmarshal(b, &c) != nil {
		return nil, false
	}
	return &c, true
}

// couponOf maps a stored grant and its campaign to checkout's coupon
// (gateway/checkout/doc.go, "From a campaign").
func couponOf(c *campaign.Campaign, w *store.WalletGrant) checkout.Coupon {
	cp := checkout.Coupon{
		GrantID: w.GrantID, Campaign: w.Campaign, Kind: checkout.Kind(c.Coupon.Type),
		Percent: c.Coupon.Percent, MaxOff: c.Coupon.MaxOff, Amount: c.Coupon.Amount, SKU: c.Coupon.SKU,
		ScopeMode: checkout.ScopeMode(c.Coupon.ScopeMode), Exclusive: c.Exclusive,
		NotStackable: c.Stackable != nil && !*c.Stackable, Priority: c.Priority,
		OnRefund: checkout.OnRefund(c.OnRefund), State: checkout.State(w.State),
	}
	for _, t := range c.Coupon.Tiers {
		cp.Tiers = append(cp.Tiers, checkout.Tier{Min: t.Min, Off: t.Off})
	}
	if is := c.Coupon.Issuer; is != nil && is.Type == "store" {
		cp.StoreID = is.StoreID
	}
	if sc := c.Coupon.Scope; sc != nil {
		cp.Scope = checkout.Scope{Products: sc.Products, Categories: sc.Categories, Brands: sc.Brands}
	}
	if w.ValidFrom != 0 {
		cp.ValidFrom = time.Unix(w.ValidFrom, 0).UTC()
	}
	if w.ValidUntil != 0 {
		cp.ValidUntil = time.Unix(w.ValidUntil, 0).UTC()
	}
	return cp
}

// coupons maps grants to coupons; grants whose campaign definition cannot
// be read are returned apart (their ids).
func (g *Gateway) coupons(ctx context.Context, ws []store.WalletGrant) ([]checkout.Coupon, []string) {
	out := make([]checkout.Coupon, 0, len(ws))
	var unknown []string
	defs := map[string]*campaign.Campaign{}
	for i := range ws {
		c, ok := defs[ws[i].Campaign]
		if !ok {
			if c, ok = g.campaignDef(ctx, ws[i].Campaign); !ok {
				unknown = append(unknown, ws[i].GrantID)
				continue
			}
			defs[ws[i].Campaign] = c
		}
		out = append(out, couponOf(c, &ws[i]))
	}
	return out, unknown
}

// chosenGrants reads the chosen grants of user from the store. Ids the store
// does not hold for this user are answered here (false): 503 not_yet_stored
// for grants the gateway knows were granted to the user and that are on
// their way through the pipeline, 404 not_found for the others. The grants
// come back in the order chosen.
func (g *Gateway) chosenGrants(ctx *fasthttp.RequestCtx, rctx context.Context, user string, ids []string, now time.Time) ([]store.WalletGrant, bool) {
	ws, err := g.store.UserGrants(rctx, user, ids, now)
	if err != nil {
		g.writeStoreError(ctx, "user grants", err)
		return nil, false
	}
	byID := make(map[string]store.WalletGrant, len(ws))
	for _, w := range ws {
		byID[w.GrantID] = w
	}
	var missing []string
	ordered := make([]store.WalletGrant, 0, len(ids))
	for _, id := range ids {
		w, ok := byID[id]
		if !ok {
			missing = append(missing, id)
			continue
		}
		ordered = append(ordered, w)
	}
	if len(missing) == 0 {
		return ordered, true
	}
	pending, unknown, aside, err := g.pendingGrants(rctx, user, missing)
	switch {
	case err != nil:
		g.log.Warn("checkout: cannot tell whether grants were made", "err", err)
		writeUnavailable(ctx, "cannot tell whether these grants were made (Redis unavailable); retry")
	case len(unknown) > 0:
		checkoutJSON(ctx, status.NotFound, map[string]any{"error": "no such grant of this user", "grant_ids": unknown})
	case len(aside) > 0:
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
		checkoutJSON(ctx, status.Unavailable, map[string]any{"error": "the grant store set these grants aside (it cannot hold them); usable once an operator repairs them", "grant_ids": aside})
	default:
		g.co.notYetStored.Add(1)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(notYetStoredRetryAfter))
		checkoutJSON(ctx, status.NotYetStored, map[string]any{"error": "granted, not yet in the grant store (pipeline lag): send the same request again", "grant_ids": pending})
	}
	return nil, false
}

// pendingGrants sorts grant ids the store does not hold for user: pending
// (granted to this user, on the way to the store), unknown (not granted to
// this user) and set aside (granted, refused by the store for good). The
// gateway's own ledger answers for grants it made; Redis's per-user grant
// sets (every campaign's home shard of user) for grants any gateway made,
// settled or not. An error means it cannot tell (Redis down): never
// "unknown" for a grant that may exist.
func (g *Gateway) pendingGrants(ctx context.Context, user string, ids []string) (pending, unknown, aside []string, err error) {
	var rest []string
	for _, id := range ids {
		rec, ok, err := g.ledger.Get(id)
		switch {
		case err == nil && ok && rec.User == user:
			pending = append(pending, id)
		case err == nil && ok:
			unknown = append(unknown, id)
		default:
			rest = append(rest, id)
		}
	}
	if len(rest) > 0 {
		held, err := g.userGrantSets(ctx, user)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, id := range rest {
			if held[id] {
				pending = append(pending, id)
			} else {
				unknown = append(unknown, id)
			}
		}
	}
	if len(pending) > 0 {
		set, err := g.store.SetAsideOf(ctx, pending)
		if err != nil {
			return nil, nil, nil, err
		}
		pending = slices.DeleteFunc(pending, func(id string) bool {
			if set[id] {
				aside = append(aside, id)
			}
			return set[id]
		})
	}
	return pending, unknown, aside, nil
}

// userGrantSets reads the user's grant set of every campaign from its home
// shard (one pipelined round trip).
func (g *Gateway) userGrantSets(ctx context.Context, user string) (map[string]bool, error) {
	cp := g.redisC.Load()
	if cp == nil {
		return nil, errors.New("redis not connected")
	}
	c := *cp
	list := g.reg.List()
	held := map[string]bool{}
	if len(list) == 0 {
		return held, nil
	}
	cmds := make(rueidis.Commands, 0, len(list))
	for _, cm := range list {
		cmds = append(cmds, c.B().Smembers().Key(stock.UserKey(cm.ID, stock.HomeShard(user, cm.Shards), user)).Build())
	}
	for _, r := range c.DoMulti(ctx, cmds...) {
		ids, err := r.AsStrSlice()
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			held[id] = true
		}
	}
	return held, nil
}

// --- handlers --------------------------------------------------------------

// handleQuote serves POST /v1/checkout/quote: prices the order with the
// chosen grants, or with the best combination of the user's usable grants
// when none are chosen. It changes nothing.
func (g *Gateway) handleQuote(ctx *fasthttp.RequestCtx, user string) {
	q, berr := parseQuote(ctx.PostBody(), false)
	if berr != nil {
		writeBodyError(ctx, berr)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), checkoutTimeout)
	defer cancel()
	now := g.now()
	var ws []store.WalletGrant
	if len(q.GrantIDs) > 0 {
		var ok bool
		if ws, ok = g.chosenGrants(ctx, rctx, user, q.GrantIDs, now); !ok {
			return
		}
	} else {
		var err error
		if ws, err = g.store.Usable(rctx, user, now, checkout.CouponsMax); err != nil {
			g.writeStoreError(ctx, "usable", err)
			return
		}
	}
	coupons, unknown := g.coupons(rctx, ws)
	if len(unknown) > 0 && len(q.GrantIDs) > 0 {
		writeUnavailable(ctx, "campaign definition unavailable for "+strings.Join(unknown, ", "))
		return
	}
	qt, err := checkout.Quote(q.order(), coupons, q.GrantIDs, now)
	if err != nil {
		g.writeQuoteError(ctx, err)
		return
	}
	g.co.quotes.Add(1)
	checkoutJSON(ctx, status.OK, map[string]any{"user": user, "quotation": qt})
}

func (g *Gateway) writeQuoteError(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case errors.Is(err, checkout.ErrUnknownGrant):
		writeError(ctx, status.NotFound, err.Error())
	case errors.Is(err, checkout.ErrInvalid):
		if f := fieldsOf(err); slices.ContainsFunc(f, func(s string) bool { return strings.HasPrefix(s, "coupons") }) {
			// A coupon built from a stored definition is refused: ours, not the caller's.
			g.log.Error("checkout: a campaign's coupon is refused by the checkout rules", "err", err)
			writeUnavailable(ctx, "a coupon's definition cannot be priced")
			return
		}
		writeFields(ctx, status.InvalidRequest, err.Error(), fieldsOf(err))
	default:
		writeUnavailable(ctx, err.Error())
	}
}

// handleRedeem serves POST /v1/checkout/redeem: re-prices the order with the
// chosen grants and locks them all to order_id in one transaction, or none.
// Idempotent by order_id: a retry with the same body gets the stored
// answer (Idempotent-Replayed: true) and the order's state now.
func (g *Gateway) handleRedeem(ctx *fasthttp.RequestCtx, user string) {
	q, berr := parseQuote(ctx.PostBody(), true)
	if berr != nil {
		writeBodyError(ctx, berr)
		return
	}
	hash := bodyHash(user, q)
	rctx, cancel := context.WithTimeout(context.Background(), checkoutTimeout)
	defer cancel()
	// A retry is answered from the stored order before anything is judged
	// again: its answer must not depend on the coupons' states now.
	if o, ok, err := g.store.Order(rctx, q.OrderID); err != nil {
		g.writeStoreError(ctx, "order", err)
		return
	} else if ok {
		g.answerRedeemReplay(ctx, &o, user, hash)
		return
	}
	now := g.now()
	ws, ok := g.chosenGrants(ctx, rctx, user, q.GrantIDs, now)
	if !ok {
		return
	}
	for i := range ws {
		if ws[i].OrderID == q.OrderID {
			// Held by this very order: a concurrent call with the same order
			// id committed meanwhile; the store answers it as a replay.
			ws[i].State = store.CouponUnused
		}
	}
	coupons, unknown := g.coupons(rctx, ws)
	if len(unknown) > 0 {
		writeUnavailable(ctx, "campaign definition unavailable for "+strings.Join(unknown, ", "))
		return
	}
	qt, err := checkout.Quote(q.order(), coupons, q.GrantIDs, now)
	if err != nil {
		g.writeQuoteError(ctx, err)
		return
	}
	if len(qt.NotUsed) > 0 {
		g.refuseRedeem(ctx, rctx, q.OrderID, qt, user, hash)
		return
	}
	answer, err := json.Marshal(qt)
	if err != nil {
		writeUnavailable(ctx, "encoding the answer failed")
		return
	}
	r := &store.Redeem{OrderID: q.OrderID, User: user, BodyHash: hash, Answer: answer,
		Items: qt.Items, Shipping: qt.Shipping, Discount: qt.Discount, Payable: qt.Payable, Now: now, LockTTL: g.cfg.Checkout.LockTTL}
	for _, a := range qt.Coupons {
		r.Coupons = append(r.Coupons, store.OrderCoupon{GrantID: a.GrantID, Campaign: a.Campaign, Discount: a.Discount})
	}
	o, replay, err := g.store.Redeem(rctx, r)
	if err != nil {
		g.writeStoreError(ctx, "redeem", err)
		return
	}
	if replay { // a concurrent call with the same order id committed first
		g.answerRedeemReplay(ctx, &o, user, hash)
		return
	}
	g.co.redeemed.Add(1)
	g.pokeEvents() // an expired lock taken over released coupons
	checkoutJSON(ctx, status.OK, orderView(&o))
}

// refuseRedeem answers a redeem whose chosen coupons cannot all be used —
// unless a concurrent call with this order id committed meanwhile, whose
// answer is then this one's.
func (g *Gateway) refuseRedeem(ctx *fasthttp.RequestCtx, rctx context.Context, orderID string, qt *checkout.Quotation, user, hash string) {
	if o, ok, err := g.store.Order(rctx, orderID); err == nil && ok {
		g.answerRedeemReplay(ctx, &o, user, hash)
		return
	}
	var inUse []string
	for _, n := range qt.NotUsed {
		if n.Reason == checkout.ReasonLocked || n.Reason == checkout.ReasonUsed {
			inUse = append(inUse, n.GrantID)
		}
	}
	if len(inUse) > 0 {
		checkoutJSON(ctx, status.CouponInUse, map[string]any{"error": "coupons locked or used by another order; nothing was locked", "grant_ids": inUse})
		return
	}
	checkoutJSON(ctx, status.NotApplicable, map[string]any{"error": "a chosen coupon cannot be used on this order; nothing was locked", "not_used": qt.NotUsed})
}

func (g *Gateway) answerRedeemReplay(ctx *fasthttp.RequestCtx, o *store.Order, user, hash string) {
	if o.User != user || o.BodyHash != hash {
		writeError(ctx, status.OrderConflict, "order_id "+o.OrderID+" was redeemed before with another body or by another user")
		return
	}
	ctx.Response.Header.Set("Idempotent-Replayed", "true")
	checkoutJSON(ctx, status.OK, orderView(o))
}

// ordersPathPrefix is the order routes' path up to {order_id}.
const ordersPathPrefix = "/v1/orders/"

// orderPathID returns the order id of an order route's request as the
// client sent it, and whether the step may act on it. The router matches
// the decoded, normalized path (ctx.Path), where
// "/v1/orders/x%2F..%2Fy/confirm" and "/v1/orders/x/../y/confirm" both
// read "/v1/orders/y/confirm": routed on that alone, a step meant for
// "x/../y" would move order "y". So the id is read from the path as sent
// (PathOriginal), percent-decoded, and must be a valid order id
// (validOrderID) whose path, rebuilt, is the one that was routed: no
// encoded '/', no dot segment, nothing the normalization changed.
func orderPathID(ctx *fasthttp.RequestCtx, routed string) (string, bool) {
	rest, ok := strings.CutPrefix(string(ctx.Request.URI().PathOriginal()), ordersPathPrefix)
	if !ok {
		return "", false
	}
	seg, tail, _ := strings.Cut(rest, "/")
	id, err := url.PathUnescape(seg)
	if err != nil || id != routed || !validOrderID(id) {
		return "", false
	}
	return id, ordersPathPrefix+id+"/"+tail == string(ctx.Path())
}

// orderStep adapts the handlers of /v1/orders/{order_id}/…: the order id
// is validated as redeem validates it, on the path as sent (orderPathID);
// a refused one is 400 invalid_request naming order_id.
func orderStep(h func(g *Gateway, ctx *fasthttp.RequestCtx, rctx context.Context, orderID, user string)) handler {
	return func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) {
		id, ok := orderPathID(ctx, rq.param(0))
		if !ok {
			writeFields(ctx, status.InvalidRequest, orderIDRule+"; the path carries it as it is (no encoded '/', no dot segments)", []string{"order_id"})
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), checkoutTimeout)
		defer cancel()
		h(g, ctx, rctx, id, rq.user)
	}
}

// handleConfirm serves POST /v1/orders/{order_id}/confirm: the order is
// paid; its coupons go from locked to used. Idempotent.
func (g *Gateway) handleConfirm(ctx *fasthttp.RequestCtx, rctx context.Context, orderID, user string) {
	o, err := g.store.Confirm(rctx, orderID, user, g.now())
	g.pokeEvents()
	if err != nil {
		g.writeStoreError(ctx, "confirm", err)
		return
	}
	checkoutJSON(ctx, status.OK, orderView(&o))
}

// handleCancel serves POST /v1/orders/{order_id}/cancel: the order will not
// be paid; its coupons go from locked to unused. Idempotent.
func (g *Gateway) handleCancel(ctx *fasthttp.RequestCtx, rctx context.Context, orderID, user string) {
	o, err := g.store.Cancel(rctx, orderID, user, g.now())
	g.pokeEvents()
	if err != nil {
		g.writeStoreError(ctx, "cancel", err)
		return
	}
	checkoutJSON(ctx, status.OK, orderView(&o))
}

// handleRefund serves POST /v1/orders/{order_id}/refund: refunds units of a
// confirmed order (all that are left without lines) and reports the
// refunded units' share of each coupon's discount. The refund that
// completes the order's returns the coupons per their campaign's on_refund.
// Idempotent by refund_id.
func (g *Gateway) handleRefund(ctx *fasthttp.RequestCtx, rctx context.Context, orderID, user string) {
	r, berr := parseRefund(ctx.PostBody())
	if berr != nil {
		writeBodyError(ctx, berr)
		return
	}
	now := g.now()
	req := &store.RefundRequest{OrderID: orderID, User: user, RefundID: r.RefundID, BodyHash: bodyHash(user, r.Lines), Now: now,
		Compute: func(o *store.Order, earlier []store.StoredRefund) (store.RefundComputed, error) {
			return computeRefund(o, earlier, r.Lines, now)
		}}
	rf, o, replay, err := g.store.Refund(rctx, req)
	g.pokeEvents()
	if err != nil {
		g.writeStoreError(ctx, "refund", err)
		return
	}
	if replay {
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
	}
	checkoutJSON(ctx, status.OK, map[string]any{"order_id": o.OrderID, "state": o.State, "refund_id": rf.RefundID,
		"refund": json.RawMessage(rf.Answer), "refunded_at": unixNanoTime(rf.CreatedAt)})
}

// computeRefund is a refund's math over the stored quotation (pure: it runs
// inside the store's transaction). lines empty refunds every unit not yet
// refunded.
func computeRefund(o *store.Order, earlier []store.StoredRefund, lines []checkout.LineQty, at time.Time) (store.RefundComputed, error) {
	var q checkout.Quotation
	if err := json.Unmarshal(o.Answer, &q); err != nil {
		return store.RefundComputed{}, fmt.Errorf("gateway: stored quotation of %s: %w", o.OrderID, err)
	}
	done := map[int]int64{}
	for _, e := range earlier {
		var ls []checkout.LineQty
		if err := json.Unmarshal(e.Lines, &ls); err != nil {
			return store.RefundComputed{}, fmt.Errorf("gateway: stored refund %s: %w", e.RefundID, err)
		}
		for _, l := range ls {
			done[l.Line] += l.Quantity
		}
	}
	before := make([]checkout.LineQty, 0, len(done))
	for l, n := range done {
		before = append(before, checkout.LineQty{Line: l, Quantity: n})
	}
	slices.SortFunc(before, func(a, b checkout.LineQty) int { return a.Line - b.Line })
	if len(lines) == 0 {
		for _, ln := range q.Lines {
			if left := ln.Quantity - done[ln.Line]; left > 0 {
				lines = append(lines, checkout.LineQty{Line: ln.Line, Quantity: left})
			}
		}
	}
	rq, err := checkout.Refund(&q, before, lines, at)
	if err != nil {
		return store.RefundComputed{}, err
	}
	c := store.RefundComputed{Full: rq.OrderRefunded}
	for _, rc := range rq.Coupons {
		if rc.Returned {
			c.Return = append(c.Return, rc.GrantID)
		}
	}
	if c.Lines, err = json.Marshal(lines); err != nil {
		return c, err
	}
	c.Answer, err = json.Marshal(rq)
	return c, err
}
