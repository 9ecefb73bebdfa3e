package gateway

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger/store"
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

// claimRoute is the route table's claim route: its match is what hands
// handleClaim the {campaign} segment.
func claimRoute(t testing.TB) *Route {
	for i := range routeTable {
		if r := &routeTable[i]; r.Method == "POST" && r.Path == "/v1/campaigns/{campaign}/claim" {
			return r
		}
	}
	t.Fatal("no claim route in the table")
	return nil
}

// FuzzParseClaim feeds arbitrary paths, headers and bodies through the claim
// route's match to the claim request decoder: neither may panic, and the
// decoder must answer a status of the table with a message whenever it
// refuses.
func FuzzParseClaim(f *testing.F) {
	tok, _ := MintHS256("fuzz-secret-0123456789-0123456789-x", "user-1", time.Hour)
	f.Add("/v1/campaigns/d11/claim", "Bearer "+tok, "dev-1", "tap-1", "1.2.3.4", "", []byte(`{"code":"D11-ABC"}`), false)
	f.Add("/v1/campaigns/d11/claim", "Bearer x", "", "", "", "u1", []byte(`{`), true)
	f.Add("/v1/campaigns//claim", "", "dev", "", "10.0.0.1, x", "", []byte(nil), true)
	f.Add("/v1/campaigns/claim", "", "dev", "", "", "", []byte(nil), false) // once panicked: prefix and suffix overlap
	// Once accepted and then refused by the store for good (a 70-byte zone).
	f.Add("/v1/campaigns/d11/claim", "Bearer "+tok, "dev-1", "tap-1", "fe80::1%"+strings.Repeat("z", 70), "", []byte(nil), false)
	f.Fuzz(func(t *testing.T, path, authz, device, idem, xff, xUser string, body []byte, trustedHeader bool) {
		mode := "jwt"
		if trustedHeader {
			mode = "trusted-header"
		}
		g := fuzzGateway(t, mode)
		route := claimRoute(t)
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
		var params [routeParamsMax][]byte
		if !route.match(ctx.Path(), &params) {
			return
		}
		id := params[0]
		if len(id) == 0 || bytes.IndexByte(id, '/') >= 0 {
			t.Fatalf("the claim route matched %q with campaign %q", ctx.Path(), id)
		}
		in, out := g.parseClaim(&ctx, id)
		if out.decided && int(out.status) >= status.N {
			t.Fatalf("status %d outside the table", out.status)
		}
		if out.decided && (out.status == status.Granted || out.msg == "") {
			t.Fatalf("refused with %s and message %q", out.status, out.msg)
		}
		if !out.decided && (in.user == "" || in.device == "" || in.campaignID == "") {
			t.Fatalf("accepted incomplete input %+v", in)
		}
		if !out.decided {
			// Whatever the edge accepts, the store can hold (issue 9 #11).
			gr := store.Grant{GrantID: stock.NewGrantID(time.Now()), Campaign: in.campaignID, User: in.user, Device: in.device,
				ClientIP: in.ip.String(), IdempotencyKey: in.idemKey, Node: "gw-fuzz"}
			if err := gr.Validate(); err != nil {
				t.Fatalf("accepted a claim the store cannot hold: %v", err)
			}
		}
	})
}

// TestHotPathHelpersDoNotAllocate: the claim route's path match and
// client-IP resolution for a direct peer. (Behind a trusted proxy each X-Forwarded-For hop parsed costs
// one allocation: netip.ParseAddr keeps its input for error messages.)
func TestHotPathHelpersDoNotAllocate(t *testing.T) {
	g := fuzzGateway(t, "jwt")
	path := []byte("/v1/campaigns/d11/claim")
	xff := [][]byte{[]byte("203.0.113.5, 10.2.2.2")}
	peer := net.IPv4(198, 51, 100, 7) // untrusted: its header is not read
	route := claimRoute(t)
	var sink int
	n := testing.AllocsPerRun(200, func() {
		var params [routeParamsMax][]byte
		route.match(path, &params)
		a, _ := clientIPFromSlice(peer.To4(), xff, g.proxies)
		sink += len(params[0]) + a.BitLen()
	})
	if n != 0 {
		t.Fatalf("%.1f allocations per parse", n)
	}
	_ = sink
}

// TestEdgeLimitsFitTheStore: every field of a grant the edge accepts fits
// the store's limit for it, so the store never refuses what was granted.
func TestEdgeLimitsFitTheStore(t *testing.T) {
	for _, c := range []struct {
		field       string
		edge, store int
	}{
		{"user id", userIDLenMax, store.UserLenMax},
		{"device id", deviceIDLenMax, store.DeviceLenMax},
		{"idempotency key", idempotencyKeyLenMax, store.IdempotencyKeyLenMax},
		{"grant id", len(stock.NewGrantID(time.Now())), store.GrantIDLenMax},
		{"client ip (no zone)", len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"), store.ClientIPLenMax},
	} {
		if c.edge > c.store {
			t.Errorf("%s: the edge accepts %d bytes, the store holds %d", c.field, c.edge, c.store)
		}
	}
	if campaign.ValidID(strings.Repeat("c", store.CampaignLenMax+1)) {
		t.Errorf("a campaign id longer than the store's %d bytes is valid", store.CampaignLenMax)
	}
	cfg := DefaultConfig()
	cfg.Auth.HS256Secret = "limits-secret-0123456789-0123456789"
	cfg.NodeID = strings.Repeat("n", store.NodeLenMax+1)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "node_id") {
		t.Errorf("node_id longer than the store's %d bytes accepted: %v", store.NodeLenMax, err)
	}
}
