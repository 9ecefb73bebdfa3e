package main

import (
	"bytes"
	"context"
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
