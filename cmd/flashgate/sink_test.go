package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestSinkCommandNeedsNoAuthOrRedis: `flashgate sink --config F` runs from a
// sink's own configuration — nats.url, store and log, no auth, no redis, no
// data_dir — against a real nats-server and SQLite store: grants a gateway
// relays reach the store through it, and SIGTERM stops it with exit 0.
func TestSinkCommandNeedsNoAuthOrRedis(t *testing.T) {
	bin := buildBinary(t)
	ns := natsserver.Start(t)
	dsn := filepath.Join(t.TempDir(), "grants.db")
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		c.NATS.URL = ns.URL()
		c.Store.Driver, c.Store.DSN = "sqlite", dsn
		c.Sink.Embedded = false // the standalone sink is the only one
	}})
	s.CreateCampaign(stack.Campaign{ID: "sinkcfg", Stock: 100, Shards: 2})

	config := filepath.Join(t.TempDir(), "sink.yaml")
	body := fmt.Sprintf("nats:\n  url: %q\nstore:\n  driver: sqlite\n  dsn: %q\nlog:\n  level: warn\n", ns.URL(), dsn)
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "sink", "--config", config)
	cmd.Env = withoutFlashgateEnv(os.Environ())
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	const grants = 20
	for i := 0; i < grants; i++ {
		if a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "sinkcfg", User: fmt.Sprint("u", i), Device: "d"}); err != nil || a.Status != "granted" {
			t.Fatalf("claim: %+v %v", a, err)
		}
	}
	rep := stack.RequireCleanAudit(t, s.Gateway, 30*time.Second)
	if r := rep.Campaigns[0]; r.Store != grants || r.Ledger != grants {
		t.Fatalf("audit %+v, want %d grants stored", r, grants)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("sink exited with %v after SIGTERM:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sink did not exit within 10s of SIGTERM:\n%s", stderr.String())
	}
}

// TestSinkCommandRefusesABadSinkConfig: the sections a sink reads are still
// validated, every wrong key named, and an unknown key is refused.
func TestSinkCommandRefusesABadSinkConfig(t *testing.T) {
	config := filepath.Join(t.TempDir(), "sink.yaml")
	body := "nats:\n  url: nats://127.0.0.1:1\nstore:\n  driver: mysql\nlog:\n  level: loud\nsink_extra: 1\n"
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"sink", "--config", config}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, errOut.String())
	}
	for _, want := range []string{"store.driver", "log.level", `unknown key "sink_extra"`} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("%q not named:\n%s", want, errOut.String())
		}
	}
	if strings.Contains(errOut.String(), "auth") || strings.Contains(errOut.String(), "redis") {
		t.Errorf("a section the sink does not read was validated:\n%s", errOut.String())
	}
}

// withoutFlashgateEnv drops FLASHGATE_* variables, so the file alone is the
// configuration.
func withoutFlashgateEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FLASHGATE_") {
			out = append(out, kv)
		}
	}
	return out
}
