package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/bench"
	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

// TestRiskSpeedAndOverloadModes: flashbench risk puts rules and a
// blacklist in force; speed reports granted claims/s against a hello-world
// with the CPU per request of each process and writes them to its JSON;
// overload, against a gateway admitting few claims at once, sheds the
// excess with 503, grants exactly the stock and adds its figures to the
// same JSON.
func TestRiskSpeedAndOverloadModes(t *testing.T) {
	if testing.Short() {
		t.Skip("flashbench modes skipped in -short")
	}
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		c.Auth.TrustedProxies = []string{"127.0.0.1"}
		c.Claim.InflightMax = 4
	}})
	pid := strconv.Itoa(os.Getpid()) // the gateway runs in this process
	var out, errOut bytes.Buffer
	if code := run([]string{"risk", "--admin", s.AdminURL, "--admin-token", stack.AdminToken, "--blacklist", "40"}, &out, &errOut); code != 0 {
		t.Fatalf("risk: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "2 limit rules (3 windows), 40 blacklist entries") {
		t.Fatalf("risk:\n%s", out.String())
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hello := bench.HelloServer()
	go hello.Serve(ln)
	t.Cleanup(func() { _ = hello.Shutdown() })
	result := filepath.Join(t.TempDir(), "bench-result.json")
	out.Reset()
	code := run([]string{"speed", "--url", s.PublicURL, "--hello", "http://" + ln.Addr().String(), "--admin", s.AdminURL, "--admin-token", stack.AdminToken,
		"--secret", stack.Secret, "--duration", "1s", "--connections", "4", "--users", "300", "--json", result,
		"--gateway-pid", pid, "--redis-pid", strconv.Itoa(s.Redis.Pid()), "--hello-pid", pid}, &out, &errOut)
	if code != 0 {
		t.Fatalf("speed: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"risk in force: 2 limit rules, 3 windows, 40 blacklist entries", "granted claims/s", "µs per granted claim", "µs per request"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("speed output lacks %q:\n%s", want, out.String())
		}
	}
	var sp struct {
		Meta    bench.Meta      `json:"meta"`
		Risk    bench.RiskState `json:"risk"`
		Granted float64         `json:"granted_per_second"`
		Ratio   float64         `json:"ratio"`
		CPU     cpuFigures      `json:"cpu_us"`
		Half    bench.Summary   `json:"claims_half"`
	}
	b, _ := os.ReadFile(result)
	if err := json.Unmarshal(b, &sp); err != nil {
		t.Fatal(err)
	}
	if sp.Granted <= 0 || sp.Ratio <= 0 || sp.CPU.GatewayPerClaim <= 0 || sp.CPU.HelloPerRequest <= 0 || sp.Risk.Blacklist != 40 || sp.Meta.GoVersion == "" {
		t.Fatalf("speed JSON: %s", b)
	}
	if sp.Half.Outcomes["granted"] == 0 || sp.Half.Outcomes["granted"] != sp.Half.Sent {
		t.Fatalf("half-peak run: every claim a fresh grant, got %v of %d", sp.Half.Outcomes, sp.Half.Sent)
	}

	out.Reset()
	code = run([]string{"overload", "--url", s.PublicURL, "--admin", s.AdminURL, "--admin-token", stack.AdminToken, "--secret", stack.Secret,
		"--peak", "300", "--factor", "4", "--duration", "2s", "--connections", "32", "--stock", "120", "--gateway-pid", pid, "--json", result}, &out, &errOut)
	if code != 0 {
		t.Fatalf("overload: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	var all struct {
		Granted  float64              `json:"granted_per_second"`
		Overload bench.OverloadResult `json:"overload"`
	}
	b, _ = os.ReadFile(result)
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatal(err)
	}
	o := all.Overload
	if all.Granted != sp.Granted || o.Oracle == nil || !o.Oracle.OK || o.Summary.Outcomes["granted"] != 120 || o.Summary.Outcomes["unavailable"] == 0 ||
		o.Excess.Count == 0 || o.RSSMaxBytes == 0 || o.HWMBytes < o.RSSMaxBytes/2 {
		t.Fatalf("overload JSON (speed's keys kept, exactly the stock granted, the excess shed, memory read):\n%s\n%s", b, out.String())
	}
	for _, want := range []string{"excess answers (503 + 429)", "gateway memory: RSS", "oracle: OK — granted exactly the stock"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("overload output lacks %q:\n%s", want, out.String())
		}
	}
}
