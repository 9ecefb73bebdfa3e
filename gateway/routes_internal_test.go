package gateway

import (
	"reflect"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// TestAdminTokensComparedInConstantTime: the gateway keeps admin tokens only
// as SHA-256 digests and resolves a presented token by comparing its digest
// with every configured one in constant time. Before, the roles were a
// map keyed by the plaintext token: the lookup's key comparison stops at the
// first differing byte, a timing signal about how much of a guess is right.
// Near misses (a prefix, one byte changed, one byte more) resolve to no role.
func TestAdminTokensComparedInConstantTime(t *testing.T) {
	cfg := map[string]string{
		"admin-token-0123456789abcdef": "admin",
		"risk-token-0123456789abcdef":  "risk",
		"viewer-token-0123456789abcde": "viewer",
	}
	ts := newAdminTokens(cfg)
	// No plaintext token anywhere in what the router holds.
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.String:
			if _, ok := cfg[v.String()]; ok {
				t.Fatalf("admin token kept in plaintext")
			}
		case reflect.Slice, reflect.Array:
			if v.Type().Elem().Kind() == reflect.Uint8 {
				b := make([]byte, v.Len())
				for i := range b {
					b[i] = byte(v.Index(i).Uint())
				}
				for tok := range cfg {
					if strings.Contains(string(b), tok) {
						t.Fatalf("admin token kept in plaintext bytes")
					}
				}
				return
			}
			for i := 0; i < v.Len(); i++ {
				walk(v.Index(i))
			}
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				walk(v.Field(i))
			}
		case reflect.Map:
			t.Fatalf("admin tokens in a map (%s): its lookup is not constant time", v.Type())
		case reflect.Pointer, reflect.Interface:
			if !v.IsNil() {
				walk(v.Elem())
			}
		}
	}
	walk(reflect.ValueOf(ts))
	for tok, name := range cfg {
		if r, _ := ts.roleOf([]byte(tok)); r.String() != name {
			t.Errorf("%s… resolves to %s, want %s", tok[:6], r, name)
		}
		changed := []byte(tok)
		changed[len(changed)-1] ^= 1
		for _, miss := range [][]byte{[]byte(tok[:len(tok)-1]), changed, []byte(tok + "x"), nil, []byte("")} {
			if r, _ := ts.roleOf(miss); r != RoleNone {
				t.Errorf("near miss %q resolves to %s", miss, r)
			}
		}
	}
	if r, _ := newAdminTokens(nil).roleOf([]byte("anything-at-all-0123")); r != RoleNone {
		t.Errorf("no tokens configured: %s", r)
	}
}

// TestRouterClaimPathDoesNotAllocate: the claim request goes through the
// route table; finding its route allocates nothing.
func TestRouterClaimPathDoesNotAllocate(t *testing.T) {
	g := fuzzGateway(t, "jwt")
	rt := newRouter(g, false)
	path, method := []byte("/v1/campaigns/d11/claim"), []byte("POST")
	var rq request
	n := testing.AllocsPerRun(200, func() {
		for _, r := range rt.routes {
			if r.match(path, &rq.params) && string(method) == r.Method {
				return
			}
		}
		t.Fatal("no route")
	})
	if n != 0 {
		t.Fatalf("%.1f allocations per route lookup", n)
	}
	if string(rq.params[0]) != "d11" {
		t.Fatalf("campaign parameter %q", rq.params[0])
	}
}

// TestRouteMatching: templates match whole segments; parameters are never
// empty; only a rest parameter takes slashes.
func TestRouteMatching(t *testing.T) {
	find := func(method, path string) *Route {
		for i := range routeTable {
			if r := &routeTable[i]; r.Method == method && r.Path == path {
				return r
			}
		}
		t.Fatalf("no route %s %s", method, path)
		return nil
	}
	claim := find("POST", "/v1/campaigns/{campaign}/claim")
	item := find("GET", "/admin/v1/campaigns/{id}")
	bl := find("PUT", "/admin/v1/risk/blacklist/{kind}/{value}")
	index := find("GET", "/debug/pprof/")
	cases := []struct {
		r      *Route
		path   string
		ok     bool
		params [2]string
	}{
		{claim, "/v1/campaigns/d11/claim", true, [2]string{"d11"}},
		{claim, "/v1/campaigns//claim", false, [2]string{}},
		{claim, "/v1/campaigns/claim", false, [2]string{}},
		{claim, "/v1/campaigns/a/b/claim", false, [2]string{}},
		{claim, "/v1/campaigns/d11/claim/", false, [2]string{}},
		{item, "/admin/v1/campaigns/x", true, [2]string{"x"}},
		{item, "/admin/v1/campaigns/x/codes", false, [2]string{}},
		{item, "/admin/v1/campaigns/", false, [2]string{}},
		{item, "/admin/v1/campaignsx", false, [2]string{}},
		{bl, "/admin/v1/risk/blacklist/cidr/198.51.100.0/24", true, [2]string{"cidr", "198.51.100.0/24"}},
		{bl, "/admin/v1/risk/blacklist/ip/203.0.113.1", true, [2]string{"ip", "203.0.113.1"}},
		{bl, "/admin/v1/risk/blacklist/ip", false, [2]string{}},
		{bl, "/admin/v1/risk/blacklist/ip/", false, [2]string{}},
		{index, "/debug/pprof/", true, [2]string{}},
		{index, "/debug/pprof", false, [2]string{}},
	}
	for _, c := range cases {
		var p [routeParamsMax][]byte
		ok := c.r.match([]byte(c.path), &p)
		if ok != c.ok || (ok && (string(p[0]) != c.params[0] || string(p[1]) != c.params[1])) {
			t.Errorf("%s ~ %s: %v %q %q, want %v %q", c.r.Path, c.path, ok, p[0], p[1], c.ok, c.params)
		}
	}
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.Set("Authorization", "bearer lower-case-prefix-0123")
	if bearerToken(&ctx) != nil {
		t.Error("a token without the exact Bearer prefix was read")
	}
}
