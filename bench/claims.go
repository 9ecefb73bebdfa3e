package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// ClaimTarget prepares claim requests for one campaign from a population of
// users whose tokens are minted up front (minting is not what is measured).
// Each user has its own device and client IP (sent as X-Forwarded-For: the
// gateway must list the load generator in auth.trusted_proxies), so per-IP
// and per-device limits see honest traffic spread as it is in a drop.
type ClaimTarget struct {
	URL      string // public base URL
	Campaign string
	Tokens   []string // "Bearer …", one per user
	Devices  []string
	IPs      []string
	// Run prefixes the Idempotency-Keys: give each run its own, or the
	// i-th claim of a second run replays the first run's i-th attempt
	// (same user, same key) instead of making a grant.
	Run string
}

// Prepare fills the i-th claim: user i mod population, a fresh Idempotency-Key.
func (c *ClaimTarget) Prepare(i int64, req *fasthttp.Request) {
	u := c.User(i)
	req.SetRequestURI(c.URL + "/v1/campaigns/" + c.Campaign + "/claim")
	req.Header.SetMethod("POST")
	req.Header.Set("Authorization", c.Tokens[u])
	req.Header.Set("X-Device-ID", c.Devices[u])
	req.Header.Set("X-Forwarded-For", c.IPs[u])
	req.Header.Set("Idempotency-Key", c.Key(i))
}

// User is the index of the i-th claim's user.
func (c *ClaimTarget) User(i int64) int { return int(i % int64(len(c.Tokens))) }

// UserID is the id (token subject) of user u.
func UserID(u int) string { return "bench-user-" + strconv.Itoa(u) }

// Key is the i-th claim's Idempotency-Key.
func (c *ClaimTarget) Key(i int64) string { return "b" + c.Run + "-" + strconv.FormatInt(i, 36) }

// NewClaimTarget mints tokens for users users with mint.
func NewClaimTarget(url, campaign string, users int, mint func(user string) (string, error)) (*ClaimTarget, error) {
	t := &ClaimTarget{URL: url, Campaign: campaign, Tokens: make([]string, users), Devices: make([]string, users), IPs: make([]string, users)}
	for i := range t.Tokens {
		tok, err := mint(UserID(i))
		if err != nil {
			return nil, err
		}
		t.Tokens[i], t.Devices[i] = "Bearer "+tok, "bench-device-"+strconv.Itoa(i)
		t.IPs[i] = fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
	}
	return t, nil
}

// CreateCampaign creates (or reuses, on 409 exists) a campaign through the admin API.
func CreateCampaign(adminURL, adminToken string, def map[string]any) error {
	if _, ok := def["starts_at"]; !ok {
		def["starts_at"] = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	}
	if _, ok := def["ends_at"]; !ok {
		def["ends_at"] = time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
	}
	b, _ := json.Marshal(def)
	req, _ := http.NewRequest("POST", adminURL+"/admin/v1/campaigns", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bench: create campaign: %w", err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(io.LimitReader(resp.Body, 64<<10))
	var answer struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(body.Bytes(), &answer)
	// 409 "exists" is a campaign to reuse; 409 "leftover_state" (keys of an
	// earlier campaign of that id, its definition gone) is not.
	if resp.StatusCode != 201 && (resp.StatusCode != 409 || answer.Status != "exists") {
		return fmt.Errorf("bench: create campaign: HTTP %d %s", resp.StatusCode, body.String())
	}
	return nil
}

// HelloServer is a fasthttp hello-world with the gateway's server limits: the
// yardstick a claim's throughput is compared with.
func HelloServer() *fasthttp.Server {
	return &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("application/json")
			ctx.SetBodyString(`{"status":"hello"}`)
		},
		Name: "hello", ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second,
		MaxRequestBodySize: 64 << 10, ReadBufferSize: 8 << 10, WriteBufferSize: 8 << 10, Concurrency: 16384,
		MaxConnsPerIP: 4096, TCPKeepalive: true, NoDefaultServerHeader: true,
	}
}

// HelloTarget prepares the same shape of request as a claim, to the hello server.
func HelloTarget(url string, claims *ClaimTarget) func(int64, *fasthttp.Request) {
	return func(i int64, req *fasthttp.Request) {
		claims.Prepare(i, req)
		req.SetRequestURI(url + "/v1/campaigns/" + claims.Campaign + "/claim")
	}
}

// StoreLag polls the campaign's stats until the store holds every grant Redis
// counted, and returns how long that took (the pipeline's lag behind the last
// grant), or an error after wait.
func StoreLag(adminURL, adminToken, campaign string, wait time.Duration) (time.Duration, int64, error) {
	start := time.Now()
	for {
		req, _ := http.NewRequest("GET", adminURL+"/admin/v1/campaigns/"+campaign, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var v struct {
				Stats struct {
					Granted int64 `json:"granted"`
					Stored  int64 `json:"stored"`
				} `json:"stats"`
			}
			err = json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if err == nil && v.Stats.Granted > 0 && v.Stats.Stored >= v.Stats.Granted {
				return time.Since(start), v.Stats.Stored, nil
			}
		}
		if time.Since(start) > wait {
			return 0, 0, fmt.Errorf("bench: store did not catch up within %v", wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
