package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/status"
)

func fuzzGateway(t testing.TB, mode string) *Gateway {
	cfg := DefaultConfig()
	cfg.Auth.Mode = mode
	cfg.Auth.HS256Secret = "fuzz-secret-0123456789-0123456789-x"
	cfg.Auth.TrustedProxies = []string{"10.0.0.0/8"}
	g := &Gateway{cfg: cfg}
	var err error
	if g.proxies, err = parsePrefixes(cfg.Auth.TrustedProxies); err != nil {
		t.Fatal(err)
	}
	if g.verify, err = newVerifier(cfg.Auth, time.Now); err != nil {
		t.Fatal(err)
	}
	return g
}

// FuzzParseClaim feeds arbitrary paths, headers and bodies to the claim
// request decoder: it must never panic, and must answer a status of the table
// with a message whenever it refuses.
func FuzzParseClaim(f *testing.F) {
	tok, _ := MintHS256("fuzz-secret-0123456789-0123456789-x", "user-1", time.Hour)
	f.Add("/v1/campaigns/d11/claim", "Bearer "+tok, "dev-1", "tap-1", "1.2.3.4", "", []byte(`{"code":"D11-ABC"}`), false)
	f.Add("/v1/campaigns/d11/claim", "Bearer x", "", "", "", "u1", []byte(`{`), true)
	f.Add("/v1/campaigns//claim", "", "dev", "", "10.0.0.1, x", "", []byte(nil), true)
	f.Add("/v1/campaigns/claim", "", "dev", "", "", "", []byte(nil), false) // once panicked: prefix and suffix overlap
	f.Fuzz(func(t *testing.T, path, authz, device, idem, xff, xUser string, body []byte, trustedHeader bool) {
		mode := "jwt"
		if trustedHeader {
			mode = "trusted-header"
		}
		g := fuzzGateway(t, mode)
		var ctx fasthttp.RequestCtx
		ctx.Init(&fasthttp.Request{}, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}, nil)
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI(path)
		for k, v := range map[string]string{"Authorization": authz, "X-Device-ID": device, "Idempotency-Key": idem, "X-Forwarded-For": xff, "X-User-ID": xUser} {
			if v != "" {
				ctx.Request.Header.Set(k, v)
			}
		}
		ctx.Request.SetBody(body)
		id, ok := parseClaimPath(ctx.Path())
		if !ok {
			return
		}
		in, st, msg := g.parseClaim(&ctx, id)
		if int(st) >= status.N {
			t.Fatalf("status %d outside the table", st)
		}
		if st != status.Granted && msg == "" {
			t.Fatalf("refused with %s but no message", st)
		}
		if st == status.Granted && (in.user == "" || in.device == "" || in.campaignID == "") {
			t.Fatalf("accepted incomplete input %+v", in)
		}
	})
}

// TestHotPathHelpersDoNotAllocate: path parse and client-IP resolution for a
// direct peer. (Behind a trusted proxy each X-Forwarded-For hop parsed costs
// one allocation: netip.ParseAddr keeps its input for error messages.)
func TestHotPathHelpersDoNotAllocate(t *testing.T) {
	g := fuzzGateway(t, "jwt")
	path := []byte("/v1/campaigns/d11/claim")
	xff := []byte("203.0.113.5, 10.2.2.2")
	peer := net.IPv4(198, 51, 100, 7) // untrusted: its header is not read
	var sink int
	n := testing.AllocsPerRun(200, func() {
		id, _ := parseClaimPath(path)
		a, _ := clientIPFromSlice(peer.To4(), xff, g.proxies)
		sink += len(id) + a.BitLen()
	})
	if n != 0 {
		t.Fatalf("%.1f allocations per parse", n)
	}
	_ = sink
}
