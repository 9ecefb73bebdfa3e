package gateway_test

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestEveryRouteEveryRole walks every route of the table, on its listener
// of a running gateway, with every kind of caller: the three admin roles, an
// end user's JWT, no token, a bad token (the admin token with its last
// byte changed) and the order service's checkout token (naming the user in
// X-User-ID). The outcome is the table's: a route off by configuration
// is 404; an admin route is 401 without a known token and 403 below its
// role or with the checkout token; a user route is 401 without a user token
// (or, on a route marked Checkout, a checkout token); a checkout route is
// 401 without a token, 403 with a user's or an admin token; everything
// allowed answers 2xx with a real body. Never a 500.
func TestEveryRouteEveryRole(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		roleTokens(c)
		c.Admin.Pprof = true // metrics.public stays off: its route must answer 404
	}})
	s.CreateCampaign(stack.Campaign{ID: "walk", Stock: 100, Shards: 2})
	s.CreateCampaign(stack.Campaign{ID: "walk-del", Stock: 10, Shards: 1})
	createRaw(t, s, map[string]any{"id": "walk-vip", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 10, "audience": map[string]any{"mode": "targeted"}})
	createRaw(t, s, map[string]any{"id": "walk-code", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 10, "audience": map[string]any{"mode": "code"}})
	ids := walkOrders(t, s)

	bad := []byte(stack.AdminToken)
	bad[len(bad)-1] ^= 1
	callers := []struct {
		name  string
		authz string
		role  gateway.Role // admin role held (RoleNone: none)
		user  bool         // holds a user token
	}{
		{"admin", "Bearer " + stack.AdminToken, gateway.RoleAdmin, false},
		{"risk", "Bearer " + riskToken, gateway.RoleRisk, false},
		{"viewer", "Bearer " + viewerToken, gateway.RoleViewer, false},
		{"user", "Bearer " + stack.Token("walk-user"), gateway.RoleNone, true},
		{"no token", "", gateway.RoleNone, false},
		{"bad token", "Bearer " + string(bad), gateway.RoleNone, false},
		{"checkout", "Bearer " + stack.CheckoutToken, gateway.RoleCheckout, false},
	}
	routes := gateway.Routes()
	sort.SliceStable(routes, func(i, j int) bool { return routes[i].Method != "DELETE" && routes[j].Method == "DELETE" })
	walked := 0
	for _, c := range callers {
		for _, r := range routes {
			path, body := walkRequest(r, c.name, ids)
			base := s.PublicURL
			if r.Admin {
				base = s.AdminURL
			}
			want := "2xx"
			switch {
			case !r.Enabled(&s.Config):
				want = "404"
			case r.Role == gateway.RoleUser && !c.user && !(r.Checkout && c.role == gateway.RoleCheckout):
				want = "401"
			case r.Role == gateway.RoleCheckout && c.role == gateway.RoleCheckout:
			case r.Role == gateway.RoleCheckout && (c.user || c.role != gateway.RoleNone):
				want = "403"
			case r.Role == gateway.RoleCheckout:
				want = "401"
			case r.Role.AdminRole() && c.role == gateway.RoleNone:
				want = "401"
			case r.Role.AdminRole() && (!c.role.AdminRole() || c.role < r.Role):
				want = "403"
			}
			code, b := call(t, s, r.Method, base+path, c.authz, body)
			got := fmt.Sprint(code)
			if code >= 200 && code < 300 {
				got = "2xx"
			}
			if got != want {
				t.Errorf("%s %s as %s: HTTP %d %.200s, want %s", r.Method, path, c.name, code, b, want)
			}
			if code == 401 && !bytes.Contains(b, []byte(`"status":"unauthenticated"`)) || code == 403 && !bytes.Contains(b, []byte(`"status":"forbidden"`)) {
				t.Errorf("%s %s as %s: HTTP %d with body %.200s", r.Method, path, c.name, code, b)
			}
			walked++
		}
	}
	if walked != len(callers)*len(routes) || len(routes) < 30 {
		t.Fatalf("walked %d of %d routes × %d callers", walked, len(routes), len(callers))
	}
}

// walkOrders prepares the checkout routes' walk: four grants of walk-user
// in the store, orders walk-o-confirm and walk-o-cancel locked and
// walk-o-refund confirmed; the fourth grant is for the walk's redeem.
func walkOrders(t *testing.T, s *stack.Stack) map[string]string {
	t.Helper()
	createRaw(t, s, map[string]any{"id": "walk-shop", "coupon": map[string]any{"type": "voucher", "amount": 100}, "stock": 10, "per_user_limit": 4})
	grants := claimStored(t, s, "walk-shop", "walk-user", 4)
	for i, o := range []string{"walk-o-confirm", "walk-o-cancel", "walk-o-refund"} {
		if code, b, _ := s.Checkout("POST", "/v1/checkout/redeem", "walk-user", fmt.Sprintf(`{"order_id":%q,"items":[{"sku":"a","store_id":"s","unit_price":1000,"quantity":1}],"grant_ids":[%q]}`, o, grants[i])); code != 200 {
			t.Fatalf("redeem %s: HTTP %d %s", o, code, b)
		}
	}
	if code, b, _ := s.Checkout("POST", "/v1/orders/walk-o-refund/confirm", "walk-user", ""); code != 200 {
		t.Fatalf("confirm: HTTP %d %s", code, b)
	}
	return map[string]string{"grant": grants[3]}
}

// walkRequest fills a route's path and body so that an allowed call
// succeeds; caller makes created ids unique.
func walkRequest(r gateway.Route, caller string, ids map[string]string) (string, []byte) {
	id := "walk"
	switch {
	case strings.HasSuffix(r.Path, "/audience"):
		id = "walk-vip"
	case strings.HasSuffix(r.Path, "/codes"):
		id = "walk-code"
	case r.Method == "DELETE" && strings.HasPrefix(r.Path, "/admin/v1/campaigns/"):
		id = "walk-del"
	}
	order := "walk-o-" + r.Path[strings.LastIndexByte(r.Path, '/')+1:]
	path := strings.NewReplacer("{campaign}", "walk", "{id}", id, "{kind}", "cidr", "{value}", "198.51.100.0/24", "{profile}", "heap", "{order_id}", order).Replace(r.Path)
	var body []byte
	switch r.Method + " " + r.Path {
	case "POST /admin/v1/campaigns":
		body = fmt.Appendf(nil, `{"id":"walk-new-%s","name":"n","coupon":{"type":"voucher","amount":100},"stock":5,"starts_at":"2030-01-01T00:00:00Z","ends_at":"2030-01-02T00:00:00Z"}`, strings.ReplaceAll(caller, " ", "-"))
	case "PATCH /admin/v1/campaigns/{id}":
		body = []byte(`{"paused":false}`)
	case "POST /admin/v1/campaigns/{id}/audience":
		body = []byte(`{"users":["walk-user"]}`)
	case "POST /admin/v1/campaigns/{id}/codes":
		body = []byte(`{"count":2,"prefix":"WALK"}`)
	case "PUT /admin/v1/risk/rules":
		body = []byte(`{"limits":[]}`)
	case "PUT /admin/v1/risk/blacklist/{kind}/{value}":
		body = []byte(`{"reason":"walk","ttl":"1m"}`)
	case "POST /v1/checkout/quote":
		body = []byte(`{"items":[{"sku":"a","store_id":"s","unit_price":1000,"quantity":1}]}`)
	case "POST /v1/checkout/redeem":
		body = fmt.Appendf(nil, `{"order_id":"walk-o-redeem","items":[{"sku":"a","store_id":"s","unit_price":1000,"quantity":1}],"grant_ids":[%q]}`, ids["grant"])
	case "POST /v1/orders/{order_id}/refund":
		body = []byte(`{"refund_id":"walk-refund"}`)
	}
	return path, body
}

// TestREADMERouteTableMatches keeps the README's route table equal to the
// router's.
func TestREADMERouteTableMatches(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- route-table -->\n", "<!-- /route-table -->"
	i, j := bytes.Index(b, []byte(begin)), bytes.Index(b, []byte(end))
	if i < 0 || j < i {
		t.Fatal("README has no route-table markers")
	}
	var rows []string
	where := map[string]int{} // method path → row
	for _, r := range gateway.Routes() {
		listener := "public"
		if r.Admin {
			listener = "admin"
		}
		if r.Option != "" {
			listener += " with `" + r.Option + ": true`"
		}
		op := r.Method + " " + r.Path
		if k, ok := where[op]; ok {
			rows[k] = strings.TrimSuffix(rows[k], " |") + ", " + listener + " |"
			continue
		}
		where[op] = len(rows)
		role := r.Role.String()
		if r.Checkout {
			role += " or checkout"
		}
		rows = append(rows, fmt.Sprintf("| `%s` | `%s` | %s | %s |", r.Method, r.Path, role, listener))
	}
	want := "| method | path | least role | listener |\n|---|---|---|---|\n" + strings.Join(rows, "\n") + "\n"
	if got := string(b[i+len(begin) : j]); got != want {
		t.Errorf("README route table differs from gateway/routes.go; want:\n%s", want)
	}
}
