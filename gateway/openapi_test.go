package gateway_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestOpenAPIMatchesRoutes keeps the served OpenAPI document, the route
// table and the handlers in step: every documented operation is a route,
// every route is documented with its role (x-role, and the security scheme
// that goes with it), and every route reaches a handler on a live gateway
// (not the router's "no such endpoint" or a 405).
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Admin.Pprof, c.Metrics.Public = true, true }})
	s.CreateCampaign(stack.Campaign{ID: "doc", Stock: 10, Shards: 1})
	resp, err := http.Get(s.AdminURL + "/admin/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("served document: %d %v %q", resp.StatusCode, err, doc.OpenAPI)
	}
	resp.Body.Close()
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routes := map[string]gateway.Route{}
	for _, r := range gateway.Routes() {
		routes[r.Method+" "+r.Path] = r
	}
	for op := range documented {
		if _, ok := routes[op]; !ok {
			t.Errorf("documented but not a route: %s", op)
		}
	}
	for op, r := range routes {
		if !documented[op] {
			t.Errorf("route not documented: %s", op)
			continue
		}
		var meta struct {
			Role     string                `json:"x-role"`
			Security []map[string][]string `json:"security"`
		}
		method, path, _ := strings.Cut(op, " ")
		if err := json.Unmarshal(doc.Paths[path][strings.ToLower(method)], &meta); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		var schemes []string
		for _, sec := range meta.Security {
			for name := range sec {
				schemes = append(schemes, name)
			}
		}
		sort.Strings(schemes)
		scheme := strings.Join(schemes, " ")
		wantScheme := map[gateway.Role]string{gateway.RoleNone: "", gateway.RoleUser: "userToken", gateway.RoleCheckout: "checkoutToken"}[r.Role]
		if r.Role.AdminRole() {
			wantScheme = "adminToken"
		}
		if r.Checkout {
			wantScheme = "checkoutToken userToken"
		}
		if meta.Role != r.Role.String() || scheme != wantScheme {
			t.Errorf("%s is documented with x-role %q and security %q; the route table says role %s (security %q)", op, meta.Role, scheme, r.Role, wantScheme)
		}
	}
	// Each route on its listener (/healthz is on both); deletes last: they end the campaign.
	all := gateway.Routes()
	sort.SliceStable(all, func(i, j int) bool { return all[i].Method != "DELETE" && all[j].Method == "DELETE" })
	fill := strings.NewReplacer("{campaign}", "doc", "{id}", "doc", "{kind}", "ip", "{value}", "203.0.113.1", "{profile}", "heap")
	for _, r := range all {
		op := r.Method + " " + r.Path
		base := s.PublicURL
		token := "Bearer " + stack.Token("doc-user")
		if r.Admin {
			base, token = s.AdminURL, "Bearer "+stack.AdminToken
		}
		var body io.Reader
		if r.Method == "PUT" || r.Method == "POST" || r.Method == "PATCH" {
			body = bytes.NewReader([]byte(`{"reason":"doc"}`))
			if strings.HasSuffix(r.Path, "/rules") {
				body = bytes.NewReader([]byte(`{}`))
			}
		}
		req, _ := http.NewRequest(r.Method, base+fill.Replace(r.Path), body)
		req.Header.Set("Authorization", token)
		req.Header.Set("X-Device-ID", "doc-device")
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 405 || bytes.Contains(b, []byte("no such endpoint")) || bytes.Contains(b, []byte("no such risk endpoint")) {
			t.Errorf("%s is documented but not served: HTTP %d %.200s", op, resp.StatusCode, b)
		}
	}
}
