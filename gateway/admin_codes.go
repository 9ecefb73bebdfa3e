package gateway

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Redemption codes of a code campaign: POST and GET
// /admin/v1/campaigns/{id}/codes (generate, export). Both need role admin:
// an unused code is a coupon to whoever holds it. The claim side's limit on
// wrong codes is in codeguess.go.

const (
	// codesPerRequestMax bounds one generation request.
	codesPerRequestMax = 1_000_000
	// codeRandomBytes: 10 random bytes = 80 bits per code (≥ 60 asked).
	codeRandomBytes = 10
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

// adminGenerateCodes serves POST /admin/v1/campaigns/{id}/codes.
func (g *Gateway) adminGenerateCodes(ctx *fasthttp.RequestCtx, rctx context.Context, id string) {
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

// adminExportCodes serves GET /admin/v1/campaigns/{id}/codes: it streams
// code,state,grant_id as CSV. Every unused code is a coupon to whoever holds
// it: the route needs role admin.
func (g *Gateway) adminExportCodes(ctx *fasthttp.RequestCtx, _ context.Context, id string) {
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
