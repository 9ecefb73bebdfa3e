package gateway

import (
	_ "embed"
	"strings"
)

// openAPI is the checked-in OpenAPI 3 document (gateway/openapi.json),
// served at /admin/v1/openapi.json. TestOpenAPIMatchesRoutes keeps it, this
// table and the handlers in step.
//
//go:embed openapi.json
var openAPI []byte

// Route is one operation the gateway serves.
type Route struct {
	Method string
	Path   string // OpenAPI template, e.g. /admin/v1/campaigns/{id}
	Admin  bool   // on the admin listener (ops routes are on both)
}

// Routes lists every operation, for the docs test and for operators.
func Routes() []Route {
	return []Route{
		{"POST", "/v1/campaigns/{campaign}/claim", false},
		{"GET", "/v1/me/coupons", false},
		{"GET", "/healthz", true},
		{"GET", "/readyz", true},
		{"GET", "/metrics", true},
		{"GET", "/admin/v1/openapi.json", true},
		{"GET", "/admin/v1/campaigns", true},
		{"POST", "/admin/v1/campaigns", true},
		{"GET", "/admin/v1/campaigns/{id}", true},
		{"PATCH", "/admin/v1/campaigns/{id}", true},
		{"DELETE", "/admin/v1/campaigns/{id}", true},
		{"POST", "/admin/v1/campaigns/{id}/audience", true},
		{"POST", "/admin/v1/campaigns/{id}/codes", true},
		{"GET", "/admin/v1/campaigns/{id}/codes", true},
		{"GET", "/admin/v1/campaigns/{id}/grants", true},
		{"GET", "/admin/v1/audit", true},
		{"GET", "/admin/v1/risk/rules", true},
		{"PUT", "/admin/v1/risk/rules", true},
		{"GET", "/admin/v1/risk/blacklist", true},
		{"PUT", "/admin/v1/risk/blacklist/{kind}/{value}", true},
		{"DELETE", "/admin/v1/risk/blacklist/{kind}/{value}", true},
		{"GET", "/admin/v1/risk/alerts", true},
		{"GET", "/admin/v1/risk/audit", true},
	}
}

// OpenAPI returns the document.
func OpenAPI() []byte { return openAPI }

func isOpenAPIPath(p string) bool { return strings.EqualFold(p, "/admin/v1/openapi.json") }
