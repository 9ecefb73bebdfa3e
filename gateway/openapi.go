package gateway

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// openAPI is the checked-in OpenAPI 3 document (gateway/openapi.json),
// served at /admin/v1/openapi.json. TestOpenAPIMatchesRoutes keeps it, the
// route table (routes.go) and the handlers in step.
//
//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the document.
func OpenAPI() []byte { return openAPI }

// serveOpenAPI serves the API document (no token: it holds no secret).
func serveOpenAPI(_ *Gateway, ctx *fasthttp.RequestCtx, _ *request) {
	ctx.SetContentType("application/json")
	ctx.SetBody(openAPI)
}
