package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
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

	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

const (
	// ledgerFSSize is the tmpfs under the ledger: room for Pebble's files and
	// a few thousand grants, small enough to fill in a blink.
	ledgerFSSize = "16m"
	// ledgerRecoverWithin bounds how long the gateway may take to grant again
	// once space returns (its supervisor retries at least every 2 s).
	ledgerRecoverWithin = 30 * time.Second
)

// mountLedgerTmpfs mounts a small tmpfs as dataDir's ledger directory (only
// the ledger's: embedded JetStream and the SQLite store stay on the test's
// disk) and unmounts it when the test ends. It skips the test where it cannot
// mount (not root, no mount(8)).
func mountLedgerTmpfs(t *testing.T, dataDir string) string {
	t.Helper()
	// CI sets TEST_REQUIRE_TMPFS_MOUNT: there a skip would hide the
	// test, so it fails instead.
	skip := t.Skipf
	if os.Getenv("TEST_REQUIRE_TMPFS_MOUNT") != "" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root to mount a tmpfs as the ledger's disk")
	}
	dir := filepath.Join(dataDir, "ledger")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+ledgerFSSize, "tmpfs", dir).CombinedOutput(); err != nil {
		skip("cannot mount a tmpfs: %v %s", err, out)
	}
	// Lazy: a Pebble instance fenced off by the disk failure stays parked in
	// this process with its files open.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system refuses with ENOSPC.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "zz-filler") // a name Pebble does not parse
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return path
		}
	}
}

type readyz struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func getReadyz(t *testing.T, s *stack.Stack) (int, readyz) {
	t.Helper()
	resp, err := s.HTTP.Get(s.AdminURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r readyz
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, r
}

// TestLedgerDiskFullAnswers503AndRecovers (issue 9, item 13): on ccdf315 a
// full ledger disk made Pebble call Fatalf, which panicked the gateway. On a
// real full file system (a tmpfs as the ledger's directory) the gateway now
// stays up, answers every claim 503 unavailable (never 500), reports
// /readyz false naming the ledger, acknowledges nothing that is not in the
// ledger afterwards, resumes granting by itself once space returns, keeps
// every grant acknowledged before, and the audit (Redis = ledger = stream =
// store) is clean.
func TestLedgerDiskFullAnswers503AndRecovers(t *testing.T) {
	dataDir := t.TempDir()
	ledgerDir := mountLedgerTmpfs(t, dataDir)
	s := stack.Start(t, stack.Options{DataDir: dataDir})
	s.CreateCampaign(stack.Campaign{ID: "full", Stock: 100_000, Shards: 4})

	var (
		mu      sync.Mutex
		granted = map[string]string{} // grant id -> user
		next    atomic.Int64
		n503    atomic.Int64
	)
	// claim sends one claim from a fresh user and checks its answer is one a
	// full disk allows: granted or 503 unavailable with Retry-After.
	claim := func(ctx context.Context) (status string) {
		user := fmt.Sprintf("u%06d", next.Add(1))
		a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "full", User: user, Device: "d-" + user})
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("claim %s: %v (did the gateway die?)", user, err)
			}
			return ""
		}
		switch {
		case a.HTTP == 200 && a.Status == "granted":
			mu.Lock()
			if prev, dup := granted[a.GrantID]; dup {
				t.Errorf("grant %s answered to %s and %s", a.GrantID, prev, user)
			}
			granted[a.GrantID] = user
			mu.Unlock()
		case a.HTTP == 503 && a.Status == "unavailable":
			n503.Add(1)
			if a.RetryAfter == "" {
				t.Errorf("503 without Retry-After")
			}
		default:
			t.Errorf("claim %s on a full disk answered HTTP %d %+v", user, a.HTTP, a)
		}
		return a.Status
	}
	// load runs claims from workers until stop is true.
	load := func(workers int, stop func() bool) {
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop() && !t.Failed() {
					claim(context.Background())
				}
			}()
		}
		wg.Wait()
	}

	for i := 0; i < 200; i++ {
		if st := claim(context.Background()); st != "granted" {
			t.Fatalf("healthy disk: claim answered %s", st)
		}
	}

	filler := fillDisk(t, ledgerDir)
	t.Logf("ledger disk full (%s)", filler)
	// Claims under load until the failure shows: a few may still fit in the
	// WAL's last page; then 503, and only 503.
	start := time.Now()
	load(8, func() bool { return n503.Load() >= 300 || time.Since(start) > 20*time.Second })
	if n503.Load() < 300 {
		t.Fatalf("full disk: only %d claims answered 503 in 20s", n503.Load())
	}
	mu.Lock()
	grantedBefore := len(granted)
	mu.Unlock()
	for i := 0; i < 50; i++ { // failed now: every claim is 503
		if st := claim(context.Background()); st != "unavailable" {
			t.Fatalf("claim on a failed ledger answered %q", st)
		}
	}
	code, rz := getReadyz(t, s)
	if code != http.StatusServiceUnavailable || rz.Ready || !strings.Contains(rz.Checks["ledger"], "no space left on device") {
		t.Fatalf("/readyz on a full ledger disk: HTTP %d %+v", code, rz)
	}
	t.Logf("full disk: %d granted before the failure showed, %d answered 503; readyz ledger: %s", grantedBefore-200, n503.Load(), rz.Checks["ledger"])

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	wait.For(t, ledgerRecoverWithin, "granting again after space returned", func() bool {
		return claim(context.Background()) == "granted"
	})
	t.Logf("granting again %s after the filler was removed", time.Since(freed).Round(time.Millisecond))
	wait.For(t, 5*time.Second, "/readyz true after recovery", func() bool {
		code, _ := getReadyz(t, s)
		return code == http.StatusOK
	})
	var after atomic.Int64
	load(8, func() bool { return after.Add(1) > 400 })
	if n := len(granted); n < grantedBefore+300 {
		t.Fatalf("after recovery only %d more grants", n-grantedBefore)
	}
	m := s.Gateway.MetricsText()
	for _, want := range []string{"flashgate_ledger_failed 0", "flashgate_ledger_recoveries_total 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Every acknowledged grant is in the ledger, and Redis = ledger = stream
	// = store once the claims in flight at the failure are settled.
	for id, user := range granted {
		if _, ok, err := s.Gateway.Ledger().Get(id); err != nil || !ok {
			t.Fatalf("grant %s acknowledged to %s is not in the ledger (err %v)", id, user, err)
		}
	}
	stack.RequireCleanAudit(t, s.Gateway, 60*time.Second)

	// And a fresh reader of the directory (as `flashgate ledger dump`) sees them.
	s.Stop()
	l, err := ledger.Open(ledger.Options{Dir: ledgerDir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for id := range granted {
		if _, ok, err := l.Get(id); err != nil || !ok {
			t.Fatalf("grant %s not in the re-opened ledger (err %v)", id, err)
		}
	}
}
