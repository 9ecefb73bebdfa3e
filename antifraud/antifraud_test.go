package antifraud

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestBlacklistMatchesEveryKindAndHonoursTTL(t *testing.T) {
	now := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	later := now.Add(time.Minute)
	b := NewBlacklist()
	for _, e := range []Entry{
		{Kind: KindIP, Value: "203.0.113.7"},
		{Kind: KindCIDR, Value: "198.51.100.0/24"},
		{Kind: KindCIDR, Value: "2001:db8::/32"},
		{Kind: KindDevice, Value: "emulator-1"},
		{Kind: KindUser, Value: "fraudster", ExpiresAt: &later},
	} {
		if err := b.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	ok := netip.MustParseAddr("192.0.2.1")
	cases := []struct {
		ip           string
		device, user string
		at           time.Time
		blocked      bool
		kind         string
	}{
		{"203.0.113.7", "d", "u", now, true, KindIP},
		{"::ffff:203.0.113.7", "d", "u", now, true, KindIP},
		{"198.51.100.200", "d", "u", now, true, KindCIDR},
		{"2001:db8:1::5", "d", "u", now, true, KindCIDR},
		{ok.String(), "emulator-1", "u", now, true, KindDevice},
		{ok.String(), "d", "fraudster", now, true, KindUser},
		{ok.String(), "d", "fraudster", later, false, ""},
		{ok.String(), "d", "u", now, false, ""},
	}
	for _, c := range cases {
		e, blocked := b.Match(netip.MustParseAddr(c.ip), c.device, c.user, c.at)
		if blocked != c.blocked || (blocked && e.Kind != c.kind) {
			t.Errorf("%s/%s/%s at %v: blocked=%v %+v", c.ip, c.device, c.user, c.at, blocked, e)
		}
	}
	if !b.Delete(KindCIDR, "198.51.100.0/24") {
		t.Fatal("delete cidr")
	}
	if _, blocked := b.Match(netip.MustParseAddr("198.51.100.200"), "d", "u", now); blocked {
		t.Fatal("deleted CIDR still matches")
	}
	for _, bad := range [][2]string{{"ip", "300.1.1.1"}, {"cidr", "10.0.0.0/33"}, {"device", ""}, {"planet", "x"}} {
		if _, err := NormalizeEntry(bad[0], bad[1]); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestRulesValidateNamesFields(t *testing.T) {
	var r Rules
	if err := json.Unmarshal([]byte(`{
		"limits":[{"name":"per-ip","key":"ip","windows":[{"limit":5,"period":"1s"},{"limit":0,"period":"1ms"}]},
		          {"name":"per-ip","key":"planet","windows":[]}],
		"alerts":{"claim_rate":[{"key":"ip24","limit":0,"period":"1s"}],"rejection_spike":{"ratio":2,"min_requests":0,"period":"1s"},"low_stock_percent":120}}`), &r); err != nil {
		t.Fatal(err)
	}
	got := Fields(r.Validate())
	for _, want := range []string{"limits[0].windows[1].limit", "limits[0].windows[1].period", "limits[1].name", "limits[1].key", "limits[1].windows",
		"alerts.claim_rate[0].key", "alerts.claim_rate[0].limit", "alerts.rejection_spike.ratio", "alerts.rejection_spike.min_requests", "alerts.low_stock_percent"} {
		if !slices.Contains(got, want) {
			t.Errorf("%s not named; got %v", want, got)
		}
	}
	if KeyValue(KeyIP24, netip.MustParseAddr("203.0.113.77"), "", "") != "203.0.113.0/24" {
		t.Error("ip24 key")
	}
}

func fill(b *Blacklist, n int) {
	for i := 0; i < n; i++ {
		_ = b.Put(Entry{Kind: KindIP, Value: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)})
		if i%4 == 0 {
			_ = b.Put(Entry{Kind: KindDevice, Value: fmt.Sprintf("dev-%d", i)})
			_ = b.Put(Entry{Kind: KindUser, Value: fmt.Sprintf("user-%d", i)})
		}
		if i%1000 == 0 {
			_ = b.Put(Entry{Kind: KindCIDR, Value: fmt.Sprintf("172.%d.%d.0/%d", 16+i%16, (i/16)%256, 20+i%9)})
		}
	}
}

// BenchmarkBlacklistMatch: a lookup (a miss, the common case) with no entries
// and with a million; compare the two.
//
//	go test ./antifraud -run '^$' -bench BlacklistMatch -benchmem
func BenchmarkBlacklistMatch(b *testing.B) {
	ip, now := netip.MustParseAddr("192.0.2.55"), time.Now()
	for _, n := range []int{0, 1_000_000} {
		bl := NewBlacklist()
		fill(bl, n)
		b.Run(fmt.Sprintf("entries=%d", bl.Len()), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, hit := bl.Match(ip, "device-ok", "user-ok", now); hit {
					b.Fatal("unexpected hit")
				}
			}
		})
	}
}
