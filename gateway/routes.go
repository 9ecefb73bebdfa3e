package gateway

import (
	"fmt"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
)

// The route table is the one place that says what each listener serves and
// who may call it:
//
//	method  path template                         least role  listener  handler
//	GET     /admin/v1/campaigns/{id}/codes        admin       admin     adminExportCodes
//	...
//
// Both listeners dispatch through a router built from it (newRouter), and
// the router checks the role before it calls the handler, so a handler
// cannot forget its check and no handler checks a role itself. Path
// parameters ({id}) match one non-empty segment; the last one of a route
// with rest set takes the rest of the path (a CIDR's "/"). The OpenAPI
// document (openapi.go), the README's route table and
// TestEveryRouteEveryRole are kept equal to it by tests. Each handler is in
// the file named for what it serves (admin_<resource>.go for the admin API;
// the package comment in gateway.go maps them all).

// Role is the least a caller must present to use a route. Admin roles are
// ordered: a higher one may do everything a lower one may.
type Role uint8

const (
	// RoleNone: no credentials (probes, metrics, the API document).
	RoleNone Role = iota
	// RoleUser: an end user's token (JWT, or X-User-ID from a trusted
	// proxy). The claim handlers authenticate it themselves, in the same
	// step that parses the request; an admin token is not a user token.
	RoleUser
	// RoleViewer reads campaigns, stats, grants, risk state and audits.
	RoleViewer
	// RoleRisk also writes risk rules and blacklists.
	RoleRisk
	// RoleAdmin also creates and changes campaigns and handles redemption
	// codes (generating and exporting them: codes are secrets).
	RoleAdmin
	// RoleCheckout is a service's token (admin.tokens, role checkout) for
	// the order service's server-to-server calls on the public listener:
	// it names the user in X-User-ID (accepted only with this role). It is
	// outside the admin order: it may do nothing an admin role may, and no
	// admin role may do what it does (checkoutCaller, checkout.go).
	RoleCheckout
)

var roleNames = [...]string{RoleNone: "none", RoleUser: "user", RoleViewer: "viewer", RoleRisk: "risk", RoleAdmin: "admin", RoleCheckout: "checkout"}

// String is the role's name in admin.tokens and in the docs.
func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// AdminRole reports whether r is one of the ordered admin roles (viewer <
// risk < admin), whose routes are on the admin listener.
func (r Role) AdminRole() bool { return r >= RoleViewer && r <= RoleAdmin }

// adminRoles maps admin.tokens role names to roles.
var adminRoles = map[string]Role{"viewer": RoleViewer, "risk": RoleRisk, "admin": RoleAdmin, "checkout": RoleCheckout}

// routeParamsMax bounds the parameters of one path template
// ({kind}/{value} is the most).
const routeParamsMax = 2

// request is what the router hands a handler: the path parameters and, on
// admin routes, the caller's role and token digest.
type request struct {
	params [routeParamsMax][]byte // slices of ctx.Path(): valid during the handler only
	role   Role
	digest tokenDigest
	user   string // checkout routes: the authenticated user (checkoutCaller)
}

func (rq *request) param(i int) string { return string(rq.params[i]) }

type handler func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request)

// Route is one operation the gateway serves.
type Route struct {
	Method string
	Path   string // OpenAPI template, e.g. /admin/v1/campaigns/{id}
	Role   Role   // least role that may call it
	Admin  bool   // on the admin listener; else on the public one
	// Option, when set, names the boolean config key without which the
	// route is not served (404): admin.pprof, metrics.public.
	Option string
	// Checkout: a RoleUser route that also takes a checkout service token
	// naming the user; the router authenticates the caller (a RoleCheckout
	// route always does).
	Checkout bool

	rest  bool     // the last parameter takes the rest of the path
	segs  []string // Path split at "/", without the leading ""
	serve handler
}

// Enabled reports whether cfg turns the route on.
func (r *Route) Enabled(cfg *Config) bool {
	switch r.Option {
	case "":
		return true
	case "admin.pprof":
		return cfg.Admin.Pprof
	case "metrics.public":
		return cfg.Metrics.Public
	}
	panic("gateway: route " + r.Path + " has unknown option " + r.Option) // a table bug, caught at init
}

// routeTable lists every operation on both listeners. The claim route comes
// first: it is the hot path.
var routeTable = []Route{
	{Method: "POST", Path: "/v1/campaigns/{campaign}/claim", Role: RoleUser, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.handleClaim(ctx, rq.params[0]) }},
	{Method: "GET", Path: "/v1/me/coupons", Role: RoleUser, Checkout: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.handleMyCoupons(ctx, rq.user) }},
	{Method: "POST", Path: "/v1/checkout/quote", Role: RoleUser, Checkout: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.handleQuote(ctx, rq.user) }},
	{Method: "POST", Path: "/v1/checkout/redeem", Role: RoleCheckout, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.handleRedeem(ctx, rq.user) }},
	{Method: "POST", Path: "/v1/orders/{order_id}/confirm", Role: RoleCheckout, serve: orderStep((*Gateway).handleConfirm)},
	{Method: "POST", Path: "/v1/orders/{order_id}/cancel", Role: RoleCheckout, serve: orderStep((*Gateway).handleCancel)},
	{Method: "POST", Path: "/v1/orders/{order_id}/refund", Role: RoleCheckout, serve: orderStep((*Gateway).handleRefund)},
	{Method: "GET", Path: "/healthz", serve: serveHealthz},
	{Method: "GET", Path: "/readyz", serve: serveReadyz},
	{Method: "GET", Path: "/metrics", Option: "metrics.public", serve: serveMetrics},

	{Method: "GET", Path: "/healthz", Admin: true, serve: serveHealthz},
	{Method: "GET", Path: "/readyz", Admin: true, serve: serveReadyz},
	{Method: "GET", Path: "/metrics", Admin: true, serve: serveMetrics},
	{Method: "GET", Path: "/admin/v1/openapi.json", Admin: true, serve: serveOpenAPI},
	{Method: "GET", Path: "/debug/pprof/", Role: RoleAdmin, Admin: true, Option: "admin.pprof", serve: servePprof},
	{Method: "GET", Path: "/debug/pprof/{profile}", Role: RoleAdmin, Admin: true, Option: "admin.pprof", serve: servePprof},

	{Method: "GET", Path: "/admin/v1/campaigns", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.adminListCampaigns(ctx) }},
	{Method: "POST", Path: "/admin/v1/campaigns", Role: RoleAdmin, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.adminCreateCampaign(ctx) }},
	{Method: "GET", Path: "/admin/v1/campaigns/{id}", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.adminGetCampaign(ctx, rq.param(0)) }},
	{Method: "PATCH", Path: "/admin/v1/campaigns/{id}", Role: RoleAdmin, Admin: true, serve: campaignItem((*Gateway).adminPatchCampaign)},
	{Method: "DELETE", Path: "/admin/v1/campaigns/{id}", Role: RoleAdmin, Admin: true, serve: campaignItem((*Gateway).adminDeleteCampaign)},
	{Method: "POST", Path: "/admin/v1/campaigns/{id}/audience", Role: RoleAdmin, Admin: true, serve: campaignItem((*Gateway).adminAddAudience)},
	{Method: "POST", Path: "/admin/v1/campaigns/{id}/codes", Role: RoleAdmin, Admin: true, serve: campaignItem((*Gateway).adminGenerateCodes)},
	{Method: "GET", Path: "/admin/v1/campaigns/{id}/codes", Role: RoleAdmin, Admin: true, serve: campaignItem((*Gateway).adminExportCodes)},
	{Method: "GET", Path: "/admin/v1/campaigns/{id}/grants", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, rq *request) { g.adminCampaignGrants(ctx, rq.param(0)) }},
	{Method: "GET", Path: "/admin/v1/audit", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.adminAudit(ctx) }},

	{Method: "GET", Path: "/admin/v1/risk/rules", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.getRules(ctx) }},
	{Method: "PUT", Path: "/admin/v1/risk/rules", Role: RoleRisk, Admin: true, serve: riskWrite((*Gateway).putRules)},
	{Method: "GET", Path: "/admin/v1/risk/blacklist", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.listBlacklist(ctx) }},
	{Method: "PUT", Path: "/admin/v1/risk/blacklist/{kind}/{value}", Role: RoleRisk, Admin: true, rest: true, serve: riskWrite((*Gateway).writeBlacklist)},
	{Method: "DELETE", Path: "/admin/v1/risk/blacklist/{kind}/{value}", Role: RoleRisk, Admin: true, rest: true, serve: riskWrite((*Gateway).writeBlacklist)},
	{Method: "GET", Path: "/admin/v1/risk/alerts", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.listAlerts(ctx) }},
	{Method: "GET", Path: "/admin/v1/risk/audit", Role: RoleViewer, Admin: true, serve: func(g *Gateway, ctx *fasthttp.RequestCtx, _ *request) { g.riskAudit(ctx) }},
}

func init() {
	for i := range routeTable {
		r := &routeTable[i]
		if !strings.HasPrefix(r.Path, "/") || r.serve == nil {
			panic("gateway: malformed route " + r.Method + " " + r.Path)
		}
		r.segs = strings.Split(r.Path[1:], "/")
		n := 0
		for _, s := range r.segs {
			if isParam(s) {
				n++
			}
		}
		if n > routeParamsMax || (r.rest && (n == 0 || !isParam(r.segs[len(r.segs)-1]))) {
			panic("gateway: malformed route parameters in " + r.Path)
		}
		public := r.Role == RoleUser || r.Role == RoleCheckout
		if (public && r.Admin) || (r.Role.AdminRole() && !r.Admin) || (r.Checkout && r.Role != RoleUser) {
			panic("gateway: user and checkout routes belong on the public listener, admin roles on the admin one: " + r.Path)
		}
		r.Enabled(&Config{}) // panics on an unknown option
	}
}

func isParam(seg string) bool { return len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}' }

// Routes lists every operation on both listeners, for the docs, the tests
// and operators (a copy: changing it changes nothing).
func Routes() []Route {
	out := make([]Route, len(routeTable))
	copy(out, routeTable)
	return out
}

// match reports whether path fits the route's template, filling params.
// It does not allocate (the claim path goes through it).
func (r *Route) match(path []byte, params *[routeParamsMax][]byte) bool {
	n := 0
	for i, seg := range r.segs {
		if len(path) == 0 || path[0] != '/' {
			return false
		}
		path = path[1:]
		var part []byte
		if j := indexSlash(path); j >= 0 && !(r.rest && i == len(r.segs)-1) {
			part, path = path[:j], path[j:]
		} else {
			part, path = path, nil
		}
		if isParam(seg) {
			if len(part) == 0 {
				return false
			}
			params[n] = part
			n++
		} else if string(part) != seg {
			return false
		}
	}
	return len(path) == 0
}

func indexSlash(b []byte) int {
	for i, c := range b {
		if c == '/' {
			return i
		}
	}
	return -1
}

// router dispatches one listener's requests through the routes enabled on
// it, enforcing each route's role.
type router struct {
	g      *Gateway
	admin  bool
	routes []*Route
}

func newRouter(g *Gateway, admin bool) *router {
	rt := &router{g: g, admin: admin}
	for i := range routeTable {
		if r := &routeTable[i]; r.Admin == admin && r.Enabled(&g.cfg) {
			rt.routes = append(rt.routes, r)
		}
	}
	return rt
}

// serve is the listener's fasthttp handler.
func (rt *router) serve(ctx *fasthttp.RequestCtx) {
	path, method := ctx.Path(), ctx.Method()
	var rq request
	var found *Route
	pathKnown := false
	for _, r := range rt.routes {
		if !r.match(path, &rq.params) {
			continue
		}
		pathKnown = true
		if string(method) == r.Method || (r.Method == "GET" && string(method) == "HEAD") { // HEAD: a GET without its body
			found = r
			break
		}
	}
	switch {
	case found == nil && pathKnown:
		rt.methodNotAllowed(ctx, path)
		return
	case found == nil:
		rt.notFound(ctx)
		return
	}
	switch {
	case found.Role.AdminRole():
		rq.role, rq.digest = rt.g.tokens.roleOf(bearerToken(ctx))
		switch {
		case rq.role == RoleNone:
			adminError(ctx, fasthttp.StatusUnauthorized, "unauthenticated", "missing or unknown admin bearer token")
			return
		case !rq.role.AdminRole() || rq.role < found.Role:
			adminError(ctx, fasthttp.StatusForbidden, "forbidden", "role "+found.Role.String()+" required")
			return
		}
	case found.Role == RoleCheckout || found.Checkout:
		var ok bool
		if rq.user, ok = rt.g.checkoutCaller(ctx, found); !ok {
			return // answered
		}
	}
	found.serve(rt.g, ctx, &rq)
}

func (rt *router) notFound(ctx *fasthttp.RequestCtx) {
	if rt.admin {
		adminError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	writeError(ctx, status.InvalidRequest, "no such endpoint")
	ctx.SetStatusCode(fasthttp.StatusNotFound)
}

// methodNotAllowed answers 405 with the methods the path does serve.
func (rt *router) methodNotAllowed(ctx *fasthttp.RequestCtx, path []byte) {
	var params [routeParamsMax][]byte
	var allow []string
	for _, r := range rt.routes {
		if r.match(path, &params) {
			allow = append(allow, r.Method)
		}
	}
	msg := "method must be " + strings.Join(allow, " or ")
	ctx.Response.Header.Set("Allow", strings.Join(allow, ", "))
	if rt.admin {
		adminError(ctx, fasthttp.StatusMethodNotAllowed, "invalid_request", msg)
		return
	}
	writeError(ctx, status.InvalidRequest, msg)
	ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
}

// bearerToken is the token of an "Authorization: Bearer …" header, or nil.
func bearerToken(ctx *fasthttp.RequestCtx) []byte {
	const prefix = "Bearer "
	authz := ctx.Request.Header.Peek("Authorization")
	if len(authz) <= len(prefix) || string(authz[:len(prefix)]) != prefix {
		return nil
	}
	return authz[len(prefix):]
}
