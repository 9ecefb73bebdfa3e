package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// blacklistLoaders is how many blacklist PUTs LoadRisk keeps in flight.
const blacklistLoaders = 16

// BenchRules are limits that honest traffic never reaches — each bench
// user taps from its own IP and device, at most a few times a second —
// while the drop's bots, a few IPs and devices for a fifth of the taps,
// do: two windows per IP and one per device, three Redis counts per claim.
const BenchRules = `{"limits":[
  {"name":"per-ip","key":"ip","windows":[{"limit":50,"period":"1s"},{"limit":1000,"period":"1m"}]},
  {"name":"per-device","key":"device","windows":[{"limit":1000,"period":"1m"}]}]}`

// BlacklistEntry is the i-th entry of a synthetic blacklist: 60 % IPs and
// 5 % /24 CIDRs in 100.64.0.0/10, 25 % devices, 10 % users — none of them
// a bench user, device or IP (those are bench-*/user-*/device-*, 10.0.0.0/8
// and 198.18.0.0/15).
func BlacklistEntry(i int) (kind, value string) {
	switch r := i % 20; {
	case r < 12:
		return "ip", fmt.Sprintf("100.%d.%d.%d", 64+(i>>16)%64, (i>>8)&255, i&255)
	case r < 13:
		return "cidr", fmt.Sprintf("100.%d.%d.0/24", 64+(i>>8)%64, i&255)
	case r < 18:
		return "device", "fraud-device-" + strconv.Itoa(i)
	default:
		return "user", "fraud-user-" + strconv.Itoa(i)
	}
}

// LoadRisk puts rules in force (none when rules is empty) and then n
// synthetic blacklist entries (BlacklistEntry 0..n-1), each through the
// admin API (PUT /admin/v1/risk/rules, PUT /admin/v1/risk/blacklist/{kind}/{value}),
// blacklistLoaders at a time.
func LoadRisk(ctx context.Context, adminURL, token, rules string, n int) error {
	if rules != "" {
		if err := adminPut(ctx, adminURL, token, "/admin/v1/risk/rules", []byte(rules)); err != nil {
			return err
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for w := 0; w < blacklistLoaders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				kind, value := BlacklistEntry(i)
				if err := adminPut(ctx, adminURL, token, "/admin/v1/risk/blacklist/"+kind+"/"+url.PathEscape(value), []byte(`{"reason":"flashbench synthetic entry"}`)); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(append(errs, ctx.Err())...)
}

func adminPut(ctx context.Context, adminURL, token, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, "PUT", adminURL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := adminClient.Do(req)
	if err != nil {
		return fmt.Errorf("bench: PUT %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("bench: PUT %s: HTTP %d %s", path, resp.StatusCode, b)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// adminClient keeps connections idle for less than the gateway's read
// timeout, which closes them (answering 400) under a keep-alive client.
var adminClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: blacklistLoaders, IdleConnTimeout: 2 * time.Second}}

// RiskState is what a gateway has in force, as its admin API reports it.
type RiskState struct {
	Rules     json.RawMessage `json:"rules"`
	Limits    int             `json:"limits"`
	Windows   int             `json:"windows"`
	Blacklist int             `json:"blacklist_entries"`
}

// ReadRisk reads the rules and the blacklist's size.
func ReadRisk(ctx context.Context, adminURL, token string) (RiskState, error) {
	var st RiskState
	var rules struct {
		Limits []struct {
			Windows []json.RawMessage `json:"windows"`
		} `json:"limits"`
	}
	var raw json.RawMessage
	if err := adminGet(ctx, adminURL, token, "/admin/v1/risk/rules", &raw); err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &rules); err != nil {
		return st, err
	}
	st.Rules, st.Limits = raw, len(rules.Limits)
	for _, l := range rules.Limits {
		st.Windows += len(l.Windows)
	}
	var bl struct {
		Total int `json:"total"`
	}
	if err := adminGet(ctx, adminURL, token, "/admin/v1/risk/blacklist?limit=1", &bl); err != nil {
		return st, err
	}
	st.Blacklist = bl.Total
	return st, nil
}
