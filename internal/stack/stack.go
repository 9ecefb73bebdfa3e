// Package stack runs a whole flashgate deployment in-process for tests and
// benchmarks: a real redis-server (package redisserver), a gateway with
// embedded JetStream on loopback ports, and an HTTP client that speaks the
// claim API. Nothing is faked.
package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger/sink"
	"github.com/flashgate/flashgate/ledger/store"
)

const (
	Secret     = "test-secret-0123456789-0123456789-abcdef"
	AdminToken = "test-admin-token-0123456789"
	// CheckoutToken is the order service's token (role checkout): it
	// names the user in X-User-ID.
	CheckoutToken = "test-checkout-token-0123456789"
)

// Stack is a running deployment.
type Stack struct {
	t         testing.TB
	Redis     *redisserver.Server
	Gateway   *gateway.Gateway
	Config    gateway.Config
	PublicURL string
	AdminURL  string
	HTTP      *http.Client
	cancel    context.CancelFunc
	done      chan error
}

// Options for Start.
type Options struct {
	Redis   *redisserver.Server // shared server; nil starts one
	AOF     bool                // with Redis == nil: start it with AOF
	DataDir string              // nil: t.TempDir()
	Tweak   func(*gateway.Config)
	// PublicListener replaces the public TCP listener (benchmarks: in-memory).
	PublicListener net.Listener
	// GatewayOptions are passed to gateway.New (fault injection).
	GatewayOptions []gateway.Option
	// RedisAddrs, when set, is redis.addrs (a Redis Cluster of package
	// rediscluster); no server is started and Stack.Redis is nil.
	RedisAddrs []string
}

// NewSink is the embedded sink, wired as cmd/flashgate wires it.
func NewSink(js jetstream.JetStream, st *store.Store, log *slog.Logger) (gateway.Sink, error) {
	return sink.New(sink.Options{JS: js, Store: st, Logger: log})
}

// Start runs a stack and stops it when the test ends.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	s := &Stack{t: t, Redis: o.Redis}
	if s.Redis == nil && len(o.RedisAddrs) == 0 {
		s.Redis = redisserver.Start(t, redisserver.Options{AOF: o.AOF})
	}
	cfg := gateway.DefaultConfig()
	cfg.PublicAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = o.DataDir
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if len(o.RedisAddrs) > 0 {
		cfg.Redis.Addrs = append([]string(nil), o.RedisAddrs...)
	} else {
		cfg.Redis.Addrs = []string{s.Redis.Addr()}
	}
	cfg.Auth.HS256Secret = Secret
	cfg.Admin.Tokens = map[string]string{AdminToken: "admin", CheckoutToken: "checkout"}
	cfg.Log.Level = "warn"
	// Tests stop many stacks and no balancer watches them: a token delay
	// keeps the drain step exercised without costing seconds per stop.
	cfg.Shutdown.DrainDelay = 10 * time.Millisecond
	if o.Tweak != nil {
		o.Tweak(&cfg)
	}
	s.Config = cfg
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	g, err := gateway.New(context.Background(), cfg, append([]gateway.Option{gateway.WithLogger(log), gateway.WithSink(NewSink)}, o.GatewayOptions...)...)
	if err != nil {
		t.Fatalf("stack: gateway: %v", err)
	}
	if o.PublicListener != nil {
		adm, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g.UseListeners(o.PublicListener, adm)
	}
	if err := g.Listen(); err != nil {
		g.Close()
		t.Fatalf("stack: %v", err)
	}
	s.Gateway = g
	s.PublicURL, s.AdminURL = "http://"+g.PublicAddr(), "http://"+g.AdminAddr()
	s.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- g.Run(ctx) }()
	t.Cleanup(s.Stop)
	s.waitReady()
	return s
}

func (s *Stack) waitReady() {
	s.t.Helper()
	wait.For(s.t, 15*time.Second, "stack: the gateway to be ready", func() bool {
		resp, err := s.HTTP.Get(s.AdminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// Stop drains and closes the gateway (idempotent).
func (s *Stack) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.Gateway.Close()
	s.cancel = nil
}

// Token mints a token for user.
func Token(user string) string {
	tok, err := gateway.MintHS256(Secret, user, time.Hour)
	if err != nil {
		panic(err) // HS256 signing of a fixed secret cannot fail
	}
	return tok
}

// Campaign is the admin definition used by tests; zero fields take defaults.
type Campaign struct {
	ID           string         `json:"id"`
	Name         string         `json:"name"`
	Coupon       map[string]any `json:"coupon"`
	Stock        int64          `json:"stock"`
	PerUserLimit int            `json:"per_user_limit,omitempty"`
	Shards       int            `json:"shards,omitempty"`
	StartsAt     time.Time      `json:"starts_at"`
	EndsAt       time.Time      `json:"ends_at"`
}

// CreateCampaign creates an active campaign through the admin API.
func (s *Stack) CreateCampaign(c Campaign) {
	s.t.Helper()
	if c.Name == "" {
		c.Name = c.ID
	}
	if c.Coupon == nil {
		c.Coupon = map[string]any{"type": "threshold", "tiers": []map[string]int{{"min": 3000, "off": 500}}}
	}
	if c.StartsAt.IsZero() {
		c.StartsAt = time.Now().Add(-time.Minute)
	}
	if c.EndsAt.IsZero() {
		c.EndsAt = time.Now().Add(time.Hour)
	}
	code, body := s.Admin("POST", "/admin/v1/campaigns", c)
	if code != 201 {
		s.t.Fatalf("stack: create campaign %s: HTTP %d %s", c.ID, code, body)
	}
}

// Admin calls the admin API with the admin token.
func (s *Stack) Admin(method, path string, body any) (int, []byte) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.AdminURL+path, rd)
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		s.t.Fatalf("stack: admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Stats is the stats object of GET /admin/v1/campaigns/{id}.
type Stats struct {
	Stock            int64            `json:"stock"`
	Remaining        int64            `json:"remaining"`
	Granted          int64            `json:"granted"`
	PendingTransfers int64            `json:"pending_transfers"`
	Unsettled        int64            `json:"unsettled"`
	Shards           []int64          `json:"shards"`
	Attempts         int64            `json:"attempts"`
	Rejected         map[string]int64 `json:"rejected"`
	Error            string           `json:"error"`
}

// CampaignStats reads a campaign's live figures.
func (s *Stack) CampaignStats(id string) Stats {
	s.t.Helper()
	code, body := s.Admin("GET", "/admin/v1/campaigns/"+id, nil)
	if code != 200 {
		s.t.Fatalf("stack: stats %s: HTTP %d %s", id, code, body)
	}
	var v struct {
		Stats Stats `json:"stats"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		s.t.Fatalf("stack: stats: %v", err)
	}
	return v.Stats
}

// Answer is a decoded claim answer.
type Answer struct {
	HTTP       int      `json:"-"`
	RetryAfter string   `json:"-"`
	Status     string   `json:"status"`
	GrantID    string   `json:"grant_id"`
	GrantIDs   []string `json:"grant_ids"`
	Limit      string   `json:"limit"`
	Error      string   `json:"error"`
}

// ClaimRequest is one claim call.
type ClaimRequest struct {
	Campaign, User, Device, IdempotencyKey string
	Body                                   []byte
}

// Claim sends one claim to baseURL with client c.
func Claim(ctx context.Context, c *http.Client, baseURL string, r ClaimRequest) (Answer, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", baseURL+"/v1/campaigns/"+r.Campaign+"/claim", bytes.NewReader(r.Body))
	if err != nil {
		return Answer{}, err
	}
	if r.User != "" {
		req.Header.Set("Authorization", "Bearer "+Token(r.User))
	}
	if r.Device != "" {
		req.Header.Set("X-Device-ID", r.Device)
	}
	if r.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", r.IdempotencyKey)
	}
	resp, err := c.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Answer{}, err
	}
	var a Answer
	if err := json.Unmarshal(b, &a); err != nil {
		return Answer{}, fmt.Errorf("claim answer HTTP %d is not JSON: %q", resp.StatusCode, b)
	}
	a.HTTP, a.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	return a, nil
}

// ClaimFrom sends one claim with an X-Forwarded-For header.
func (s *Stack) ClaimFrom(ctx context.Context, r ClaimRequest, xff string) (Answer, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", s.PublicURL+"/v1/campaigns/"+r.Campaign+"/claim", bytes.NewReader(r.Body))
	if err != nil {
		return Answer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+Token(r.User))
	req.Header.Set("X-Device-ID", r.Device)
	if r.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", r.IdempotencyKey)
	}
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := s.HTTP.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var a Answer
	if err := json.Unmarshal(b, &a); err != nil {
		return Answer{}, fmt.Errorf("claim answer HTTP %d is not JSON: %q", resp.StatusCode, b)
	}
	a.HTTP, a.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	return a, nil
}

// Claim sends one claim to this stack.
func (s *Stack) Claim(ctx context.Context, r ClaimRequest) (Answer, error) {
	return Claim(ctx, s.HTTP, s.PublicURL, r)
}

// RequireCleanAudit runs the gateway's audit until it finds nothing (the
// pipeline drains after a load) or wait ends, and fails the test with the
// report if a violation remains.
func RequireCleanAudit(t testing.TB, g *gateway.Gateway, wait time.Duration) audit.Report {
	t.Helper()
	rep, err := g.AuditSettled(context.Background(), wait)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Violations != 0 {
		b, _ := json.MarshalIndent(rep, "", "  ")
		t.Fatalf("audit found violations:\n%s", b)
	}
	return rep
}

// Checkout calls a public route as the order service: the checkout token,
// the user in X-User-ID, a JSON body (none when empty).
func (s *Stack) Checkout(method, path, user, body string) (int, []byte, http.Header) {
	s.t.Helper()
	return s.call(method, path, "Bearer "+CheckoutToken, user, body)
}

// AsUser calls a public route with user's own token.
func (s *Stack) AsUser(method, path, user, body string) (int, []byte, http.Header) {
	s.t.Helper()
	return s.call(method, path, "Bearer "+Token(user), "", body)
}

func (s *Stack) call(method, path, authz, user, body string) (int, []byte, http.Header) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, _ := http.NewRequest(method, s.PublicURL+path, rd)
	req.Header.Set("Authorization", authz)
	if user != "" {
		req.Header.Set("X-User-ID", user)
	}
	resp, err := s.HTTP.Do(req)
	if err != nil {
		s.t.Fatalf("stack: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}
