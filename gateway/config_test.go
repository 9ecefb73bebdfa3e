package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigEveryWrongKeyNamed(t *testing.T) {
	p := writeFile(t, `
public_addr: nowhere
data_dir: ""
redis: {addrs: []}
auth: {mode: magic}
store: {driver: oracle}
claim: {timeout: 1h}
bogus_key: 1
nats: {replicas: 9, colour: blue}
`)
	_, err := LoadConfig(p, []string{})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"public_addr", "data_dir", "redis.addrs", "auth.mode", "store.driver", "claim.timeout", "bogus_key", "nats.replicas", "colour"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

func TestConfigFileThenEnvironment(t *testing.T) {
	p := writeFile(t, `
public_addr: 127.0.0.1:9000
redis: {addrs: [127.0.0.1:7000]}
auth: {hs256_secret: 0123456789abcdef0123456789abcdef}
admin: {tokens: {file-token-0123456789: viewer}}
`)
	cfg, err := LoadConfig(p, []string{
		"FLASHGATE_REDIS_ADDRS=10.0.0.1:6379,10.0.0.2:6379",
		"FLASHGATE_CLAIM_TIMEOUT=750ms",
		"FLASHGATE_ADMIN_TOKENS=env-token-0123456789=admin",
		"PATH=/usr/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PublicAddr != "127.0.0.1:9000" || cfg.Claim.Timeout != 750*time.Millisecond {
		t.Errorf("file/env not applied: %+v", cfg)
	}
	if len(cfg.Redis.Addrs) != 2 || cfg.Redis.Addrs[1] != "10.0.0.2:6379" {
		t.Errorf("redis.addrs from env: %v", cfg.Redis.Addrs)
	}
	if cfg.Admin.Tokens["env-token-0123456789"] != "admin" {
		t.Errorf("admin.tokens from env: %v", cfg.Admin.Tokens)
	}
	if _, err := LoadConfig(p, []string{"FLASHGATE_NO_SUCH_KEY=1"}); err == nil || !strings.Contains(err.Error(), "FLASHGATE_NO_SUCH_KEY") {
		t.Errorf("unknown env variable not named: %v", err)
	}
}

func TestJWTModeNeedsExactlyOneKey(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "exactly one") {
		t.Errorf("no key: %v", err)
	}
	cfg.Auth.HS256Secret = strings.Repeat("s", 32)
	cfg.Auth.Ed25519PublicKey = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
	if err := cfg.Validate(); err == nil {
		t.Error("both keys accepted: the algorithm would not be pinned")
	}
}

func TestShutdownConfig(t *testing.T) {
	p := writeFile(t, `
redis: {addrs: [127.0.0.1:7000]}
auth: {hs256_secret: 0123456789abcdef0123456789abcdef}
`)
	cfg, err := LoadConfig(p, []string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Shutdown.DrainDelay != 5*time.Second || cfg.Shutdown.Timeout != 30*time.Second || cfg.HTTP.DrainTimeout != 10*time.Second {
		t.Errorf("shutdown defaults: %+v, http.drain_timeout %v", cfg.Shutdown, cfg.HTTP.DrainTimeout)
	}
	cfg, err = LoadConfig(p, []string{"FLASHGATE_SHUTDOWN_DRAIN_DELAY=250ms", "FLASHGATE_SHUTDOWN_TIMEOUT=3s"})
	if err != nil || cfg.Shutdown.DrainDelay != 250*time.Millisecond || cfg.Shutdown.Timeout != 3*time.Second {
		t.Errorf("shutdown from env: %+v %v", cfg.Shutdown, err)
	}
	for env, key := range map[string]string{
		"FLASHGATE_SHUTDOWN_DRAIN_DELAY=-1s": "shutdown.drain_delay",
		"FLASHGATE_SHUTDOWN_TIMEOUT=0s":      "shutdown.timeout",
		"FLASHGATE_SHUTDOWN_TIMEOUT=5500ms":  "shutdown.timeout", // below drain_delay (5s) + 1s
	} {
		if _, err := LoadConfig(p, []string{env}); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: error does not name %s: %v", env, key, err)
		}
	}
}
