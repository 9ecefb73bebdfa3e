package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// TestSIGTERMDrainsBeforeClosing (issue 10): under load, SIGTERM turns
// /readyz 503 at once while the listeners stay open and claims — on kept
// connections and on new ones — are still granted for shutdown.drain_delay;
// then the process exits (status 0) within shutdown.timeout. Restarted on the
// same data dir, the audit is clean and every acknowledged grant is in the
// ledger, once.
func TestSIGTERMDrainsBeforeClosing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and signals a real process; skipped in -short")
	}
	const (
		drainDelay      = 2 * time.Second
		shutdownTimeout = 15 * time.Second
	)
	bin := buildBinary(t)
	redis := redisserver.Start(t, redisserver.Options{AOF: true})
	dataDir := t.TempDir()
	config := filepath.Join(t.TempDir(), "flashgate.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`public_addr: 127.0.0.1:0
admin_addr: 127.0.0.1:0
data_dir: %s
redis: {addrs: [%s]}
auth: {hs256_secret: %s}
admin: {tokens: {%s: admin}}
shutdown: {drain_delay: %s, timeout: %s}
`, dataDir, redis.Addr(), stack.Secret, stack.AdminToken, drainDelay, shutdownTimeout)), 0o600)
	p := startGateway(t, bin, config)
	body := fmt.Sprintf(`{"id":"term","name":"term","coupon":{"type":"voucher","amount":500},"stock":1000000,"shards":4,"starts_at":%q,"ends_at":%q}`,
		time.Now().Add(-time.Minute).Format(time.RFC3339), time.Now().Add(time.Hour).Format(time.RFC3339))
	req, _ := http.NewRequest("POST", p.admin+"/admin/v1/campaigns", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("create campaign: %v %v", resp, err)
	}

	var (
		mu       sync.Mutex
		granted  = map[string]string{} // grant id -> user
		notReady atomic.Int64          // unix nanos when /readyz was first seen 503
		afterNR  atomic.Int64          // grants answered after that
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-p.exited:
					return
				default:
				}
				user := fmt.Sprintf("u%07d", next.Add(1))
				a, err := stack.Claim(context.Background(), client, p.public, stack.ClaimRequest{Campaign: "term", User: user, Device: "d"})
				if err != nil || a.Status != "granted" {
					continue
				}
				mu.Lock()
				granted[a.GrantID] = user
				mu.Unlock()
				if nr := notReady.Load(); nr != 0 && time.Now().UnixNano() > nr {
					afterNR.Add(1)
				}
			}
		}()
	}
	wait.For(t, 10*time.Second, "the load to be granted", func() bool { mu.Lock(); defer mu.Unlock(); return len(granted) >= 200 })

	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	readyz := func() (int, string) {
		resp, err := http.Get(p.public + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var v struct{ Checks map[string]string }
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return resp.StatusCode, v.Checks["process"]
	}
	wait.For(t, drainDelay/4, "/readyz to answer 503 draining", func() bool {
		code, process := readyz()
		return code == 503 && process == "draining"
	})
	notReady.Store(time.Now().UnixNano())
	seen503 := time.Since(sent)

	// A new connection is still accepted and granted while not ready.
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	a, err := stack.Claim(context.Background(), fresh, p.public, stack.ClaimRequest{Campaign: "term", User: "late-user", Device: "d"})
	if err != nil || a.Status != "granted" {
		t.Fatalf("claim on a new connection during the drain delay: %+v %v", a, err)
	}
	mu.Lock()
	granted[a.GrantID] = "late-user"
	mu.Unlock()
	if code, process := readyz(); code != 503 {
		t.Fatalf("/readyz during the drain delay: %d %s", code, process)
	}
	wait.For(t, drainDelay, "load grants after /readyz turned 503", func() bool { return afterNR.Load() >= 50 })

	select {
	case <-p.exited:
	case <-time.After(shutdownTimeout - time.Since(sent)):
		t.Fatalf("gateway did not exit within shutdown.timeout (%v) of SIGTERM", shutdownTimeout)
	}
	exitedAfter := time.Since(sent)
	wg.Wait()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	if exitedAfter < drainDelay {
		t.Errorf("exited %v after SIGTERM, before shutdown.drain_delay %v", exitedAfter, drainDelay)
	}

	p = startGateway(t, bin, config)
	auditClean(t, p, 30*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(shutdownTimeout):
		t.Fatalf("restarted gateway did not exit within %v of SIGTERM", shutdownTimeout)
	}
	dumped := ledgerDumpOf(t, bin, dataDir)
	for id, user := range granted {
		if d, ok := dumped[id]; !ok {
			t.Errorf("I4: acknowledged grant %s (user %s) missing from the ledger after the drain", id, user)
		} else if d.User != user {
			t.Errorf("grant %s dumped for %s, answered to %s", id, d.User, user)
		}
	}
	t.Logf("/readyz 503 after %v; %d grants after it; exit after %v; %d acknowledged, ledger holds %d",
		seen503.Round(time.Millisecond), afterNR.Load(), exitedAfter.Round(time.Millisecond), len(granted), len(dumped))
}

// ledgerDumpOf runs `flashgate ledger dump` on a stopped gateway's data dir
// and fails the test on a grant dumped twice.
func ledgerDumpOf(t *testing.T, bin, dataDir string) map[string]dumpLine {
	t.Helper()
	out, err := exec.Command(bin, "ledger", "dump", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("ledger dump: %v", err)
	}
	dumped := map[string]dumpLine{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var d dumpLine
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("dump line %q: %v", line, err)
		}
		if _, dup := dumped[d.GrantID]; dup {
			t.Errorf("grant %s twice in the dump", d.GrantID)
		}
		dumped[d.GrantID] = d
	}
	return dumped
}
