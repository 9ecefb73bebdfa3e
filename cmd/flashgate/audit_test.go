package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/stack"
)

// TestAuditCommandExitCodes: `flashgate audit` against a running gateway
// exits 0 when every count agrees and 1, naming the invariant, when Redis
// counts a grant no ledger holds.
func TestAuditCommandExitCodes(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "aud", Stock: 50, Shards: 2})
	for i := 0; i < 20; i++ {
		if a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "aud", User: fmt.Sprint("u", i), Device: "d"}); err != nil || a.Status != "granted" {
			t.Fatalf("claim: %+v %v", a, err)
		}
	}
	if _, err := s.Gateway.AuditSettled(context.Background(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf("admin_addr: %s\ndata_dir: %s\nredis: {addrs: [%s]}\nauth: {hs256_secret: %s}\nadmin: {tokens: {%s: admin}}\n",
		strings.TrimPrefix(s.AdminURL, "http://"), s.Config.DataDir, s.Redis.Addr(), stack.Secret, stack.AdminToken)), 0o600)

	var out, errOut bytes.Buffer
	if code := run([]string{"audit", "--config", config}, &out, &errOut); code != 0 {
		t.Fatalf("clean audit exited %d:\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "no violations") || !strings.Contains(out.String(), "aud") {
		t.Fatalf("audit output:\n%s", out.String())
	}
	if o, err := exec.Command("redis-cli", "-p", fmt.Sprint(s.Redis.Port), "INCRBY", "fg:{aud.0}:granted", "1").CombinedOutput(); err != nil {
		t.Fatal(err, string(o))
	}
	out.Reset()
	if code := run([]string{"audit", "--config", config}, &out, &errOut); code != 1 {
		t.Fatalf("audit of a broken count exited %d:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "VIOLATION aud: I6") {
		t.Fatalf("violation not named:\n%s", out.String())
	}
}

// TestAuditOfflineEqualsOnline: `flashgate audit` of a stopped gateway's data
// dir (ledger read-only, campaigns from its embedded JetStream, Redis, the
// SQLite store; a config without auth) reports exactly what the running
// gateway reported, and exits 1 naming the invariant once Redis disagrees.
func TestAuditOfflineEqualsOnline(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "off", Stock: 30, Shards: 3})
	for i := 0; i < 12; i++ {
		if a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "off", User: fmt.Sprint("u", i), Device: "d"}); err != nil || a.Status != "granted" {
			t.Fatalf("claim: %+v %v", a, err)
		}
	}
	online, err := s.Gateway.AuditSettled(context.Background(), 20*time.Second)
	if err != nil || online.Violations != 0 {
		t.Fatalf("online audit: %+v %v", online, err)
	}
	s.Stop()
	config := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf("data_dir: %s\nredis: {addrs: [%s]}\n", s.Config.DataDir, s.Redis.Addr())), 0o600)

	var out, errOut bytes.Buffer
	if code := run([]string{"audit", "--config", config, "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("offline audit exited %d:\n%s%s", code, out.String(), errOut.String())
	}
	want, _ := json.MarshalIndent(online, "", "  ")
	if got := strings.TrimSpace(out.String()); got != string(want) {
		t.Fatalf("offline audit:\n%s\nonline audit:\n%s", got, want)
	}
	out.Reset()
	if code := run([]string{"audit", "--config", config}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "no violations") ||
		!strings.Contains(out.String(), "(data directories "+s.Config.DataDir+")") {
		t.Fatalf("offline audit exited %d:\n%s%s", code, out.String(), errOut.String())
	}
	if o, err := exec.Command("redis-cli", "-p", fmt.Sprint(s.Redis.Port), "INCRBY", "fg:{off.0}:granted", "1").CombinedOutput(); err != nil {
		t.Fatal(err, string(o))
	}
	out.Reset()
	if code := run([]string{"audit", "--config", config}, &out, &errOut); code != 1 || !strings.Contains(out.String(), "VIOLATION off: I6") {
		t.Fatalf("offline audit of a broken count exited %d:\n%s", code, out.String())
	}
}
