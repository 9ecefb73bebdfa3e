package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// adminGet GETs an admin path of a running gateway into v.
func adminGet(t *testing.T, p *proc, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest("GET", p.admin+path, nil)
	req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// killAttemptsMax bounds the kills needed to catch grants in flight.
const killAttemptsMax = 3

type fleetStats struct {
	Stats struct {
		Granted, Remaining, Stored, Units, Unsettled int64
	} `json:"stats"`
}

// TestKill9OneOfTwoGatewaysHoldsItsWindow (issue 9 #1): two gateways share
// Redis, NATS and PostgreSQL; one is killed with -9 under load. The survivor
// keeps granting; the grants the dead gateway decided but had not marked
// durable stay held — tagged with its ledger, neither lost nor returned to
// stock nor settled by the survivor. A replacement started on the dead
// gateway's data dir settles them, and the audit over both data dirs is clean.
func TestKill9OneOfTwoGatewaysHoldsItsWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills real processes; skipped in -short")
	}
	bin := buildBinary(t)
	redis := redisserver.Start(t, redisserver.Options{AOF: true})
	ns := natsserver.Start(t)
	dsn := pgtest.Fresh(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	writeConfig := func(name, dataDir string) string {
		path := filepath.Join(t.TempDir(), name+".yaml")
		os.WriteFile(path, []byte(fmt.Sprintf(`node_id: %s
public_addr: 127.0.0.1:0
admin_addr: 127.0.0.1:0
data_dir: %s
redis: {addrs: [%s]}
nats: {url: %q}
store: {driver: postgres, dsn: %q}
auth: {hs256_secret: %s}
admin: {tokens: {%s: admin}}
shutdown: {drain_delay: 100ms}
`, name, dataDir, redis.Addr(), ns.URL(), dsn, stack.Secret, stack.AdminToken)), 0o600)
		return path
	}
	cfgA, cfgB := writeConfig("gw-a", dirA), writeConfig("gw-b", dirB)
	a, b := startGateway(t, bin, cfgA), startGateway(t, bin, cfgB)
	var auditA map[string]any
	adminGet(t, a, "/admin/v1/audit", &auditA)
	ledgerA := auditA["ledgers"].([]any)[0].(string)

	const units = 1 << 20
	body := fmt.Sprintf(`{"id":"fleet","name":"fleet","coupon":{"type":"voucher","amount":500},"stock":%d,"shards":8,"starts_at":%q,"ends_at":%q}`,
		units, time.Now().Add(-time.Minute).Format(time.RFC3339), time.Now().Add(time.Hour).Format(time.RFC3339))
	req, _ := http.NewRequest("POST", a.admin+"/admin/v1/campaigns", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("create campaign: %v %v", resp, err)
	}

	var next, grantedB atomic.Int64
	load := func(p *proc, stop <-chan struct{}, granted *atomic.Int64, wg *sync.WaitGroup) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		for w := 0; w < 48; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					x, err := stack.Claim(context.Background(), client, p.public, stack.ClaimRequest{Campaign: "fleet", User: fmt.Sprintf("u%08d", next.Add(1)), Device: "d"})
					if err == nil && x.Status == "granted" && granted != nil {
						granted.Add(1)
					} else if err != nil {
						time.Sleep(10 * time.Millisecond)
					}
				}
			}()
		}
	}
	// The dead gateway's window is held: every unsettled grant is tagged
	// with its ledger, the count does not move while it stays down (the
	// survivor neither settles nor returns them), and stock is conserved.
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	heldNow := func() int64 {
		var n int64
		for sh := 0; sh < 8; sh++ {
			m, err := rc.Do(context.Background(), rc.B().Hgetall().Key(stock.UnsettledKey("fleet", sh)).Build()).AsStrMap()
			if err != nil {
				t.Fatal(err)
			}
			for id, v := range m {
				if node, _, _ := stock.ParseUnsettled(v); node != ledgerA {
					t.Errorf("unsettled grant %s of node %q after the survivor settled its own", id, node)
				}
				n++
			}
		}
		return n
	}
	var held, atKill int64
	for attempt := 1; ; attempt++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		load(a, stop, nil, &wg)
		load(b, stop, &grantedB, &wg)
		time.Sleep(1500 * time.Millisecond)
		_ = a.cmd.Process.Signal(syscall.SIGKILL)
		<-a.exited
		atKill = grantedB.Load()
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		wg.Wait()
		if grantedB.Load()-atKill < 50 {
			t.Fatalf("the survivor granted %d after the kill", grantedB.Load()-atKill)
		}
		time.Sleep(time.Second) // the survivor's last marks land
		if held = heldNow(); held > 0 {
			break
		}
		// The kill fell between two claims (a loaded machine): the test
		// needs a window to show, so kill again, a bounded number of times.
		if attempt == killAttemptsMax {
			t.Fatalf("no grant of the killed gateway was in flight at any of %d kills; the test shows nothing", attempt)
		}
		t.Logf("kill %d: nothing of the killed gateway in flight; again", attempt)
		a = startGateway(t, bin, cfgA)
	}
	var st fleetStats
	adminGet(t, b, "/admin/v1/campaigns/fleet", &st)
	if st.Stats.Unsettled != held || st.Stats.Granted+st.Stats.Remaining != units {
		t.Fatalf("stats while the gateway is down: %+v, held %d", st.Stats, held)
	}
	time.Sleep(3 * time.Second) // two settlement passes of the survivor
	if h := heldNow(); h != held {
		t.Fatalf("held grants went from %d to %d while their gateway was down", held, h)
	}

	// A replacement on the dead gateway's data dir settles them.
	a2 := startGateway(t, bin, cfgA)
	if !wait.Until(context.Background(), 30*time.Second, func() bool {
		adminGet(t, b, "/admin/v1/campaigns/fleet", &st)
		return st.Stats.Unsettled == 0 && st.Stats.Stored == st.Stats.Granted
	}) {
		t.Fatalf("replacement did not settle and drain within 30s: %+v", st.Stats)
	}
	for _, p := range []*proc{a2, b} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			t.Fatal("gateway did not exit within 20s of SIGTERM")
		}
	}
	out, err := exec.Command(bin, "audit", "--config", cfgB, "--with-data-dir", dirA).CombinedOutput()
	if err != nil {
		t.Fatalf("audit over both data dirs: %v\n%s", err, out)
	}
	t.Logf("held %d grants of the killed gateway; survivor granted %d after the kill\n%s", held, grantedB.Load()-atKill, out)
}
