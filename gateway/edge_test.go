package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/ledger"
)

// claimWithForwardedLines sends a claim whose X-Forwarded-For arrives as
// several header lines, one per element of lines, in that order (what a
// proxy that appends its own line, like HAProxy's option forwardfor, sends).
func claimWithForwardedLines(t *testing.T, s *stack.Stack, campaign, user string, lines ...string) stack.Answer {
	t.Helper()
	req, err := http.NewRequest("POST", s.PublicURL+"/v1/campaigns/"+campaign+"/claim", bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+stack.Token(user))
	req.Header.Set("X-Device-ID", "dev-"+user)
	req.Header["X-Forwarded-For"] = lines
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var a stack.Answer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("claim answer HTTP %d is not JSON: %q", resp.StatusCode, b)
	}
	a.HTTP = resp.StatusCode
	return a
}

// TestXForwardedForSeveralLinesAreOneList (issue 9 #10): behind a trusted
// proxy that appends its own X-Forwarded-For line, the client's own line
// comes first. Reading only that line let a blacklisted client name any
// address it liked; every line is read, in order, as one list.
func TestXForwardedForSeveralLinesAreOneList(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth.TrustedProxies = []string{"127.0.0.1"} }})
	s.CreateCampaign(stack.Campaign{ID: "xffl", Stock: 10, Shards: 1})
	if code, body := s.Admin("PUT", "/admin/v1/risk/blacklist/ip/203.0.113.9", map[string]string{"reason": "test"}); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	// The client wrote "6.6.6.6"; the proxy appended the address it saw.
	if a := claimWithForwardedLines(t, s, "xffl", "u1", "6.6.6.6", "203.0.113.9"); a.Status != "blocked" {
		t.Fatalf("blacklisted client behind an appending proxy: %+v, want blocked", a)
	}
	// The same list on one line answers the same.
	if a := claimWithForwardedLines(t, s, "xffl", "u2", "6.6.6.6, 203.0.113.9"); a.Status != "blocked" {
		t.Fatalf("one line: %+v, want blocked", a)
	}
	// A client that is not blacklisted, behind the same proxy, is served.
	if a := claimWithForwardedLines(t, s, "xffl", "u3", "203.0.113.9", "198.51.100.4"); a.Status != "granted" {
		t.Fatalf("spoofed first line naming a blacklisted address: %+v, want granted", a)
	}
	// A malformed hop in a later line is a bad request, not a 500.
	if a := claimWithForwardedLines(t, s, "xffl", "u4", "198.51.100.5", "not-an-ip"); a.HTTP != 400 || a.Status != "invalid_request" {
		t.Fatalf("malformed second line: %+v, want 400 invalid_request", a)
	}
}

// TestIPv6ZoneDroppedAtEdge (issue 9 #11): a client address with an IPv6
// zone ("fe80::1%zzz…", 70 bytes of zone) was granted and written to the
// ledger as is; the store refuses client_ip over 64 bytes, so the grant's
// whole stream message was terminated. The zone names an interface of the
// sender, not a client: it is dropped at the edge, so the grant is stored
// with the bare address, and a zone cannot dodge an IP blacklist entry.
func TestIPv6ZoneDroppedAtEdge(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth.TrustedProxies = []string{"127.0.0.1"} }})
	s.CreateCampaign(stack.Campaign{ID: "zone", Stock: 10, Shards: 1})
	zone := "%" + strings.Repeat("z", 70)
	a := claimWithForwardedLines(t, s, "zone", "u1", "fe80::1"+zone)
	if a.Status != "granted" {
		t.Fatalf("zoned client: %+v", a)
	}
	var rec ledger.Record
	if err := s.Gateway.Ledger().Scan(0, ^uint64(0), func(r *ledger.Record) error { rec = *r; return nil }); err != nil {
		t.Fatal(err)
	}
	if rec.GrantID != a.GrantID || rec.ClientIP != "fe80::1" {
		t.Fatalf("ledger record %+v: want grant %s from client_ip fe80::1", rec, a.GrantID)
	}
	rep := stack.RequireCleanAudit(t, s.Gateway, 20*time.Second)
	if r := rep.Campaigns[0]; r.Store != 1 {
		t.Fatalf("audit row %+v: the grant is not in the store", r)
	}
	gs, _, err := s.Gateway.Store().ByCampaign(context.Background(), "zone", "", 10)
	if err != nil || len(gs) != 1 || gs[0].ClientIP != "fe80::1" {
		t.Fatalf("stored %+v %v", gs, err)
	}
	// A blacklisted address is blocked whatever zone the client appends,
	// and an entry written with a zone means the bare address.
	if code, body := s.Admin("PUT", "/admin/v1/risk/blacklist/ip/"+url.PathEscape("fe80::2%eth0"), map[string]string{"reason": "test"}); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	for _, from := range []string{"fe80::2", "fe80::2%eth1", "fe80::2" + zone} {
		if a := claimWithForwardedLines(t, s, "zone", "u-"+from[len(from)-1:], from); a.Status != "blocked" {
			t.Fatalf("blacklisted fe80::2 claiming as %q: %+v, want blocked", from, a)
		}
	}
}
