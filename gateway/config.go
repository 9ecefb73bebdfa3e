package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
)

// Config is the whole gateway configuration (README "Configuration"). Every key may be set
// in the YAML file or by FLASHGATE_<KEY PATH IN CAPITALS, . → _>; lists and
// maps from the environment are comma-separated (maps as k=v).
type Config struct {
	NodeID     string       `koanf:"node_id"` // this gateway's name in grants and audits (default gw-<hostname>)
	PublicAddr string       `koanf:"public_addr"`
	AdminAddr  string       `koanf:"admin_addr"`
	DataDir    string       `koanf:"data_dir"`
	Redis      RedisConfig  `koanf:"redis"`
	NATS       NATSConfig   `koanf:"nats"`
	Auth       AuthConfig   `koanf:"auth"`
	Admin      AdminConfig  `koanf:"admin"`
	Store      StoreConfig  `koanf:"store"`
	Claim      ClaimConfig  `koanf:"claim"`
	Ledger     LedgerConfig `koanf:"ledger"`
	Relay      RelayConfig  `koanf:"relay"`
	Sink       SinkConfig   `koanf:"sink"`
	Alerts     AlertsConfig `koanf:"alerts"`
	HTTP       HTTPConfig   `koanf:"http"`
	Log        LogConfig    `koanf:"log"`

	Shutdown ShutdownConfig `koanf:"shutdown"` // SIGTERM: not ready → drain delay → finish in-flight → exit

	Metrics MetricsConfig `koanf:"metrics"` // where /metrics is served

	Checkout CheckoutConfig `koanf:"checkout"` // coupon use after the grab (checkout.go)
}

// CheckoutConfig is the coupon-use half (issue 13).
type CheckoutConfig struct {
	// LockTTL is how long a redeem's lock on coupons waits for confirm or
	// cancel; then the coupons are free again and the order expires.
	LockTTL time.Duration `koanf:"lock_ttl"`
	// SweepInterval is how often expired locks are released and expiring
	// notices recorded (each pass bounded), and unpublished events retried.
	SweepInterval time.Duration `koanf:"sweep_interval"`
}

type MetricsConfig struct {
	// Public also serves /metrics on the public listener (it is always on
	// the admin one). Off by default: claim rates and rejections by rule
	// help whoever tunes a bot farm against the limits.
	Public bool `koanf:"public"`
}

type RedisConfig struct {
	Addrs []string `koanf:"addrs"`
	// Timeout bounds one Redis round trip of a claim (the claim deadline
	// bounds the whole claim).
	Timeout time.Duration `koanf:"timeout"`
	// MaxFlushDelay lets rueidis batch pipelined commands into fewer writes.
	MaxFlushDelay time.Duration `koanf:"max_flush_delay"`
}

type NATSConfig struct {
	URL      string `koanf:"url"`      // empty = embedded JetStream under data_dir
	Replicas int    `koanf:"replicas"` // stream / bucket replicas (1 on one machine)
	// DedupWindow is the GRANTS stream's duplicate window: longer than the
	// worst relay lag, so a re-published grant is dropped by JetStream.
	DedupWindow time.Duration `koanf:"dedup_window"`
	// StreamMaxAge bounds how long grants stay in the stream.
	StreamMaxAge time.Duration `koanf:"stream_max_age"`
	// ControlPlaneStaleMax: while NATS is away the gateway keeps granting
	// from its last campaign snapshot (the ledger holds the grants) for at
	// most this long, then fails closed (I7).
	ControlPlaneStaleMax time.Duration `koanf:"control_plane_stale_max"`
}

type RelayConfig struct {
	// BacklogMax: past this many grants not yet in JetStream the gateway
	// answers 503 instead of granting (the ledger must not grow unbounded).
	BacklogMax int64 `koanf:"backlog_max"`
	// ReconcileInterval is how often ledger grants are checked against the
	// store; ReconcileGrace is how old a grant must be to count as missing.
	ReconcileInterval time.Duration `koanf:"reconcile_interval"`
	ReconcileGrace    time.Duration `koanf:"reconcile_grace"`
}

type AlertsConfig struct {
	// WebhookURL receives every alert as a JSON POST (empty = NATS only).
	WebhookURL string `koanf:"webhook_url"`
}

type SinkConfig struct {
	Embedded bool `koanf:"embedded"` // run the sink inside serve
}

type AuthConfig struct {
	Mode             string        `koanf:"mode"` // jwt | trusted-header
	HS256Secret      string        `koanf:"hs256_secret"`
	Ed25519PublicKey string        `koanf:"ed25519_public_key"` // PEM or base64 of the 32-byte key
	TrustedProxies   []string      `koanf:"trusted_proxies"`    // IPs or CIDRs
	Leeway           time.Duration `koanf:"leeway"`
	// Issuer and Audience, when set, must be the token's iss and one of its
	// aud (a token without them is refused): a token minted by another
	// issuer, or for another service with the same key, is not ours.
	Issuer   string `koanf:"issuer"`
	Audience string `koanf:"audience"`
}

type AdminConfig struct {
	Tokens map[string]string `koanf:"tokens"` // token -> role (admin | risk | viewer | checkout)
	// Pprof serves /debug/pprof/ on the admin listener (role admin).
	Pprof bool `koanf:"pprof"`
}

type StoreConfig struct {
	Driver string `koanf:"driver"` // sqlite | postgres
	DSN    string `koanf:"dsn"`
}

type LedgerConfig struct {
	// SyncIntervalMin lets one WAL fsync wait this long for more grants to
	// join it (group commit); 0 syncs as soon as the previous sync ends.
	SyncIntervalMin time.Duration `koanf:"sync_interval_min"`
}

type ClaimConfig struct {
	// Timeout is the deadline of one claim, from parse to answer.
	Timeout time.Duration `koanf:"timeout"`
	// IdempotencyTTL is how long an Idempotency-Key answers with its grant.
	IdempotencyTTL time.Duration `koanf:"idempotency_ttl"`
	// InflightMax bounds the claims in progress at once; one more is
	// answered 503 (Retry-After) at once instead of queueing behind them.
	InflightMax int `koanf:"inflight_max"`
}

type HTTPConfig struct {
	ReadTimeout   time.Duration `koanf:"read_timeout"`
	WriteTimeout  time.Duration `koanf:"write_timeout"`
	IdleTimeout   time.Duration `koanf:"idle_timeout"`
	Concurrency   int           `koanf:"concurrency"`
	MaxConnsPerIP int           `koanf:"max_conns_per_ip"`
	// DrainTimeout bounds the wait for in-flight requests once the
	// listeners are closed (the step after shutdown.drain_delay); the whole
	// stop is bounded by shutdown.timeout, which wins when it is shorter.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

// ShutdownConfig is the graceful stop (Run's context ending: SIGTERM).
type ShutdownConfig struct {
	// DrainDelay: /readyz answers 503 at once, and the listeners stay open
	// and keep answering claims this long, so that load balancers see the
	// node not ready and move traffic before connections are refused.
	DrainDelay time.Duration `koanf:"drain_delay"`
	// Timeout bounds the whole stop, from the signal to the process exit:
	// drain delay, in-flight requests (http.drain_timeout), the last
	// settlement pass, the stats flush and closing the ledger and NATS.
	Timeout time.Duration `koanf:"timeout"`
}

type LogConfig struct {
	Level string `koanf:"level"` // debug | info | warn | error
}

// DefaultConfig is the embedded default: one machine, everything local.
func DefaultConfig() Config {
	return Config{
		PublicAddr: "127.0.0.1:8080",
		AdminAddr:  "127.0.0.1:8081",
		DataDir:    "./data",
		Redis:      RedisConfig{Addrs: []string{"127.0.0.1:6379"}, Timeout: 500 * time.Millisecond, MaxFlushDelay: 20 * time.Microsecond},
		NATS:       NATSConfig{Replicas: 1, DedupWindow: 2 * time.Hour, StreamMaxAge: 7 * 24 * time.Hour, ControlPlaneStaleMax: 2 * time.Minute},
		Relay:      RelayConfig{BacklogMax: 1_000_000, ReconcileInterval: 10 * time.Second, ReconcileGrace: 30 * time.Second},
		Sink:       SinkConfig{Embedded: true},
		Auth:       AuthConfig{Mode: "jwt", Leeway: 5 * time.Second},
		Admin:      AdminConfig{Tokens: map[string]string{}},
		Store:      StoreConfig{Driver: "sqlite"},
		Claim:      ClaimConfig{Timeout: 2 * time.Second, IdempotencyTTL: 24 * time.Hour, InflightMax: 512},
		HTTP: HTTPConfig{
			ReadTimeout:   5 * time.Second,
			WriteTimeout:  5 * time.Second,
			IdleTimeout:   60 * time.Second,
			Concurrency:   16384,
			MaxConnsPerIP: 4096,
			DrainTimeout:  10 * time.Second,
		},
		// A balancer polling /readyz every 1-2 s with a failure threshold of
		// 2-3 has moved traffic within 5 s; 30 s is Kubernetes' default
		// terminationGracePeriodSeconds.
		Shutdown: ShutdownConfig{DrainDelay: 5 * time.Second, Timeout: 30 * time.Second},
		Log:      LogConfig{Level: "info"},
		Checkout: CheckoutConfig{LockTTL: 15 * time.Minute, SweepInterval: time.Second},
	}
}

// LoadConfig reads path (may be empty: defaults only) and the environment,
// and validates the result. Every unknown or invalid key is named.
func LoadConfig(path string, environ []string) (Config, error) {
	cfg, read, err := readConfig(path, environ)
	if !read {
		return cfg, err
	}
	return cfg, errors.Join(err, cfg.Validate())
}

// LoadPartConfig is LoadConfig for a tool that reads only some sections
// (flashgate sink, the offline audit): every unknown key is still refused,
// but only the keys under sections are validated, so a sink's file needs no
// auth or redis section.
func LoadPartConfig(path string, environ []string, sections ...string) (Config, error) {
	cfg, read, err := readConfig(path, environ)
	if !read {
		return cfg, err
	}
	return cfg, errors.Join(err, cfg.ValidateSections(sections...))
}

// ReadConfig is defaults, then the file at path (may be empty), then the
// environment, with every unknown key named; it does not validate values.
func ReadConfig(path string, environ []string) (Config, error) {
	cfg, _, err := readConfig(path, environ)
	return cfg, err
}

// readConfig is ReadConfig; read is false when the file or the environment
// could not be read at all (nothing worth validating).
func readConfig(path string, environ []string) (cfg Config, read bool, err error) {
	cfg = DefaultConfig()
	k := koanf.New(".")
	if path != "" {
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return cfg, false, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	if environ == nil {
		environ = os.Environ()
	}
	envMap, err := envOverrides(environ)
	if err != nil {
		return cfg, false, err
	}
	if err := k.Load(confmap.Provider(envMap, "."), nil); err != nil {
		return cfg, false, fmt.Errorf("config: env: %w", err)
	}
	var md mapstructure.Metadata
	err = k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{DecoderConfig: &mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
		Metadata:         &md,
		Result:           &cfg,
		WeaklyTypedInput: true,
		TagName:          "koanf",
	}})
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("config: %w", err))
	}
	for _, u := range md.Unused {
		errs = append(errs, fmt.Errorf("config: unknown key %q", u))
	}
	return cfg, true, errors.Join(errs...)
}

// KeyError is one invalid key found by Validate.
type KeyError struct {
	Key     string // key path, e.g. "auth.hs256_secret", or a section, "auth"
	Problem string
}

func (e *KeyError) Error() string { return "config: " + e.Key + ": " + e.Problem }

// ValidateSections is Validate restricted to the keys under the given
// top-level sections or keys ("nats", "store", "data_dir").
func (c *Config) ValidateSections(sections ...string) error {
	all, ok := c.Validate().(interface{ Unwrap() []error })
	if !ok {
		return nil
	}
	var errs []error
	for _, err := range all.Unwrap() {
		var ke *KeyError
		if !errors.As(err, &ke) {
			errs = append(errs, err)
			continue
		}
		for _, s := range sections {
			if ke.Key == s || strings.HasPrefix(ke.Key, s+".") {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// StoreDSN is store.dsn, defaulting to an SQLite file in data_dir.
func (c *Config) StoreDSN() string {
	if c.Store.DSN == "" && c.Store.Driver == "sqlite" {
		return filepath.Join(c.DataDir, "grants.db")
	}
	return c.Store.DSN
}

// Node is this gateway's name: node_id, default gw-<host name>.
func (c *Config) Node() string {
	if c.NodeID != "" {
		return c.NodeID
	}
	h, _ := os.Hostname()
	return "gw-" + h
}

// envKeys maps FLASHGATE_ names to key paths; built from the known keys so
// that underscores inside key names (public_addr) stay unambiguous.
var envKeys = map[string]string{}

func init() {
	for _, key := range []string{
		"node_id", "public_addr", "admin_addr", "data_dir", "redis.addrs", "redis.timeout", "redis.max_flush_delay", "nats.url", "nats.replicas", "nats.dedup_window", "nats.stream_max_age", "nats.control_plane_stale_max",
		"relay.backlog_max", "relay.reconcile_interval", "relay.reconcile_grace", "sink.embedded", "alerts.webhook_url",
		"auth.mode", "auth.hs256_secret", "auth.ed25519_public_key", "auth.trusted_proxies", "auth.leeway", "auth.issuer", "auth.audience",
		"admin.tokens", "admin.pprof", "store.driver", "store.dsn", "claim.timeout", "claim.idempotency_ttl", "claim.inflight_max", "ledger.sync_interval_min",
		"http.read_timeout", "http.write_timeout", "http.idle_timeout", "http.concurrency",
		"http.max_conns_per_ip", "http.drain_timeout", "log.level", "metrics.public",
		"shutdown.drain_delay", "shutdown.timeout", "checkout.lock_ttl", "checkout.sweep_interval",
	} {
		envKeys["FLASHGATE_"+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))] = key
	}
}

func envOverrides(environ []string) (map[string]any, error) {
	out := map[string]any{}
	var errs []error
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "FLASHGATE_") {
			continue
		}
		key, known := envKeys[name]
		if !known {
			errs = append(errs, fmt.Errorf("config: unknown environment variable %s", name))
			continue
		}
		switch key {
		case "admin.tokens":
			m := map[string]any{}
			for _, pair := range strings.Split(val, ",") {
				tok, role, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if !ok {
					errs = append(errs, fmt.Errorf("config: %s: want token=role pairs", name))
					continue
				}
				m[tok] = role
			}
			out[key] = m
		default:
			out[key] = val
		}
	}
	return out, errors.Join(errs...)
}

// Validate reports every invalid key at once.
//
// long: one flat check per key, in the order of the Config struct, so the
// whole list of rules reads in one place; split, it would scatter it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, args...)})
	}
	for key, addr := range map[string]string{"public_addr": c.PublicAddr, "admin_addr": c.AdminAddr} {
		if _, err := netip.ParseAddrPort(addr); err != nil && !strings.HasPrefix(addr, ":") {
			bad(key, "want host:port, got %q", addr)
		}
	}
	if c.DataDir == "" {
		bad("data_dir", "is empty")
	}
	if len(c.Redis.Addrs) == 0 {
		bad("redis.addrs", "needs at least one address")
	}
	for _, a := range c.Redis.Addrs {
		if !strings.Contains(a, ":") {
			bad("redis.addrs", "want host:port, got %q", a)
		}
	}
	if c.Redis.Timeout <= 0 {
		bad("redis.timeout", "must be positive")
	}
	if c.Redis.MaxFlushDelay < 0 || c.Redis.MaxFlushDelay > time.Millisecond {
		bad("redis.max_flush_delay", "must be 0..1ms")
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		bad("nats.replicas", "must be 1..5")
	}
	if c.NATS.DedupWindow < time.Minute || c.NATS.DedupWindow > 7*24*time.Hour {
		bad("nats.dedup_window", "must be 1m..168h")
	}
	if c.NATS.StreamMaxAge < c.NATS.DedupWindow {
		bad("nats.stream_max_age", "must be at least nats.dedup_window")
	}
	if c.NATS.ControlPlaneStaleMax < 0 || c.NATS.ControlPlaneStaleMax > time.Hour {
		bad("nats.control_plane_stale_max", "must be 0..1h")
	}
	if c.Relay.BacklogMax < 1 {
		bad("relay.backlog_max", "must be positive")
	}
	if c.Relay.ReconcileInterval < time.Second || c.Relay.ReconcileInterval > time.Hour {
		bad("relay.reconcile_interval", "must be 1s..1h")
	}
	if c.Relay.ReconcileGrace < time.Second || c.Relay.ReconcileGrace >= c.NATS.DedupWindow {
		bad("relay.reconcile_grace", "must be at least 1s and below nats.dedup_window")
	}
	if u := c.Alerts.WebhookURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		bad("alerts.webhook_url", "must be an http(s) URL")
	}
	if c.NodeID != "" && !printableToken(c.NodeID, 128) {
		bad("node_id", "must be 1..128 printable characters")
	}
	switch c.Auth.Mode {
	case "jwt":
		if (c.Auth.HS256Secret == "") == (c.Auth.Ed25519PublicKey == "") {
			bad("auth", "mode jwt needs exactly one of auth.hs256_secret and auth.ed25519_public_key (it pins the algorithm)")
		}
		if c.Auth.HS256Secret != "" && len(c.Auth.HS256Secret) < 32 {
			bad("auth.hs256_secret", "must be at least 32 bytes")
		}
		if c.Auth.Ed25519PublicKey != "" {
			if _, err := parseEd25519PublicKey(c.Auth.Ed25519PublicKey); err != nil {
				bad("auth.ed25519_public_key", "%v", err)
			}
		}
	case "trusted-header":
		if len(c.Auth.TrustedProxies) == 0 {
			bad("auth.trusted_proxies", "mode trusted-header needs at least one trusted proxy")
		}
	default:
		bad("auth.mode", "must be jwt or trusted-header, got %q", c.Auth.Mode)
	}
	if _, err := parsePrefixes(c.Auth.TrustedProxies); err != nil {
		bad("auth.trusted_proxies", "%v", err)
	}
	if c.Auth.Leeway < 0 || c.Auth.Leeway > time.Minute {
		bad("auth.leeway", "must be 0..1m")
	}
	for _, kv := range [][2]string{{"auth.issuer", c.Auth.Issuer}, {"auth.audience", c.Auth.Audience}} {
		key, v := kv[0], kv[1]
		switch {
		case v == "":
		case c.Auth.Mode != "jwt":
			bad(key, "applies to auth.mode jwt only")
		case !printableToken(v, claimValueLenMax):
			bad(key, "must be 1..%d printable characters without spaces", claimValueLenMax)
		}
	}
	for tok, role := range c.Admin.Tokens {
		if len(tok) < 16 {
			bad("admin.tokens", "token %q… is shorter than 16 characters", tok[:min(4, len(tok))])
		}
		if _, ok := adminRoles[role]; !ok {
			bad("admin.tokens", "role %q must be admin, risk, viewer or checkout", role)
		}
	}
	switch c.Store.Driver {
	case "sqlite", "postgres":
	default:
		bad("store.driver", "must be sqlite or postgres, got %q", c.Store.Driver)
	}
	if c.Store.Driver == "postgres" && c.Store.DSN == "" {
		bad("store.dsn", "is required for driver postgres")
	}
	if c.Claim.Timeout < 10*time.Millisecond || c.Claim.Timeout > 30*time.Second {
		bad("claim.timeout", "must be 10ms..30s")
	}
	if c.Claim.IdempotencyTTL < time.Minute || c.Claim.IdempotencyTTL > 30*24*time.Hour {
		bad("claim.idempotency_ttl", "must be 1m..720h")
	}
	if c.Claim.InflightMax < 1 || c.Claim.InflightMax > 1<<20 {
		bad("claim.inflight_max", "must be 1..%d", 1<<20)
	}
	if c.Ledger.SyncIntervalMin < 0 || c.Ledger.SyncIntervalMin > 10*time.Millisecond {
		bad("ledger.sync_interval_min", "must be 0..10ms")
	}
	for key, d := range map[string]time.Duration{"http.read_timeout": c.HTTP.ReadTimeout, "http.write_timeout": c.HTTP.WriteTimeout,
		"http.idle_timeout": c.HTTP.IdleTimeout, "http.drain_timeout": c.HTTP.DrainTimeout} {
		if d <= 0 || d > 10*time.Minute {
			bad(key, "must be in (0, 10m]")
		}
	}
	if c.HTTP.Concurrency < 1 || c.HTTP.Concurrency > 1<<20 {
		bad("http.concurrency", "must be 1..%d", 1<<20)
	}
	if c.HTTP.MaxConnsPerIP < 1 || c.HTTP.MaxConnsPerIP > 1<<20 {
		bad("http.max_conns_per_ip", "must be 1..%d", 1<<20)
	}
	if c.Shutdown.DrainDelay < 0 || c.Shutdown.DrainDelay > 5*time.Minute {
		bad("shutdown.drain_delay", "must be 0..5m")
	}
	if c.Shutdown.Timeout < time.Second || c.Shutdown.Timeout > 10*time.Minute {
		bad("shutdown.timeout", "must be 1s..10m")
	} else if c.Shutdown.Timeout < c.Shutdown.DrainDelay+time.Second {
		bad("shutdown.timeout", "must be at least shutdown.drain_delay + 1s (in-flight requests and the last settlement need time after the delay)")
	}
	if c.Checkout.LockTTL < time.Minute || c.Checkout.LockTTL > 24*time.Hour {
		bad("checkout.lock_ttl", "must be 1m..24h")
	}
	if c.Checkout.SweepInterval < 10*time.Millisecond || c.Checkout.SweepInterval > time.Hour {
		bad("checkout.sweep_interval", "must be 10ms..1h")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error")
	}
	return errors.Join(errs...)
}
