package gateway

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
)

// Hooks of the two fasthttp servers (newServer in gateway.go installs
// them): the answer to a request fasthttp could not parse, and its logger.

// errorHandler answers requests fasthttp could not parse (too large, bad
// headers, timeouts) in the API's JSON shape: 400 invalid_request.
func (g *Gateway) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	msg := "malformed request"
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		msg = "request body too large"
	case errors.As(err, &small):
		msg = "request headers too large"
	}
	writeError(ctx, status.InvalidRequest, msg)
	g.metrics.observeClaim(status.InvalidRequest, 0)
}

// fasthttpLogger sends fasthttp's own messages to the debug log.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp: " + fmt.Sprintf(format, args...))
}
