package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/bench"
	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/stack"
)

const smallDrop = `
name: test-drop
seed: 7
duration: 3s
connections: 32
timeout: 2s
schedule: {kind: spike, rate: 100, peak: 600, at: 1s, hold: 1s, decay: 500ms}
users: 400
bots: {count: 5, ips: 2, devices: 2, share: 0.2}
retry: {max: 2, backoff: 20ms}
campaigns:
  - {id: hot, stock: 150, per_user_limit: 1, shards: 4, weight: 0.8}
  - {id: cold, stock: 2000, per_user_limit: 2, weight: 0.2}
`

func scenario(t *testing.T) *bench.Scenario {
	t.Helper()
	sc, err := bench.ParseScenario([]byte(smallDrop))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func mintHS(u string) (string, error) { return gateway.MintHS256(stack.Secret, u, time.Hour) }

// TestRunAgainstInProcessStack: a few seconds of a drop against a real stack;
// the JSON, the HTML report and the oracle are checked.
func TestRunAgainstInProcessStack(t *testing.T) {
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.Auth.TrustedProxies = []string{"127.0.0.1"} }})
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	var out, errOut bytes.Buffer
	code := playDrop(context.Background(), bench.DropOptions{Scenario: scenario(t), PublicURL: s.PublicURL, AdminURL: s.AdminURL, AdminToken: stack.AdminToken, Mint: mintHS},
		jsonPath, htmlPath, 30*time.Second, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
	}
	var res bench.DropResult
	b, err := os.ReadFile(jsonPath)
	if err != nil || json.Unmarshal(b, &res) != nil {
		t.Fatalf("results JSON: %v", err)
	}
	if res.Meta.Seed != 7 || res.Meta.GoVersion == "" || res.Meta.GOMAXPROCS < 1 || res.Oracle == nil || !res.Oracle.OK {
		t.Fatalf("meta/oracle: %+v %+v", res.Meta, res.Oracle)
	}
	if res.Summary.Sent < 500 || len(res.Series) < 3 || res.Summary.Outcomes["granted"] == 0 || res.Summary.Outcomes["sold_out"] == 0 {
		t.Fatalf("summary %+v, %d series points", res.Summary, len(res.Series))
	}
	var hot bench.CampaignCheck
	for _, c := range res.Oracle.Campaigns {
		if c.ID == "hot" {
			hot = c
		}
	}
	if hot.ClientGranted != 150 || hot.RedisGranted != 150 || hot.Stored != 150 {
		t.Fatalf("hot campaign (more taps than stock) should grant exactly its stock: %+v", hot)
	}
	html, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Latency (ms)", "Outcomes per second", "Rate (requests/s)", "oracle: OK", "echarts"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("report lacks %q", want)
		}
	}
	if bytes.Contains(html, []byte(`src="http`)) || bytes.Contains(html, []byte("flashgate-inline/")) {
		t.Error("report loads scripts from the network")
	}
	if !strings.Contains(out.String(), "oracle: OK") {
		t.Errorf("table:\n%s", out.String())
	}
}

// brokenGateway answers every claim "granted" (overselling), reuses every
// tenth grant id (duplicates), counts only 40 grants and stores nothing.
func brokenGateway(t *testing.T) *httptest.Server {
	var n atomic.Int64
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == "POST" && r.URL.Path == "/admin/v1/campaigns":
			w.WriteHeader(201)
			fmt.Fprint(w, `{}`)
		case strings.HasSuffix(r.URL.Path, "/claim"):
			id := n.Add(1)
			if id%10 == 0 {
				id -= 5 // every tenth answer reuses an earlier grant id: a duplicate
			}
			fmt.Fprintf(w, `{"status":"granted","grant_id":"g%d"}`, id)
		case strings.HasSuffix(r.URL.Path, "/grants"):
			fmt.Fprint(w, `{"grants":[],"next_cursor":""}`)
		case strings.HasPrefix(r.URL.Path, "/admin/v1/campaigns/"):
			fmt.Fprint(w, `{"stats":{"granted":40,"stored":40}}`)
		default:
			w.WriteHeader(404)
		}
	}))
}

// TestOracleCatchesBrokenTarget: oversell, duplicate grants and grants
// missing downstream are reported and the exit code is non-zero.
func TestOracleCatchesBrokenTarget(t *testing.T) {
	srv := brokenGateway(t)
	defer srv.Close()
	sc := scenario(t)
	sc.Duration = 2 * time.Second
	var out, errOut bytes.Buffer
	dir := t.TempDir()
	code := playDrop(context.Background(), bench.DropOptions{Scenario: sc, PublicURL: srv.URL, AdminURL: srv.URL, AdminToken: "x", Mint: mintHS},
		filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html"), time.Second, &out, &errOut)
	if code == 0 {
		t.Fatalf("broken target passed the oracle:\n%s", out.String())
	}
	for _, want := range []string{"I1: hot answered", "duplicate grant", "I2: user", "missing downstream"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("oracle did not report %q:\n%s", want, out.String())
		}
	}
}

func TestScenarioFilesParse(t *testing.T) {
	files, _ := filepath.Glob("../../loadtest/*.yaml")
	if len(files) == 0 {
		t.Fatal("no scenarios in loadtest/")
	}
	for _, f := range files {
		if _, err := bench.LoadScenario(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := bench.ParseScenario([]byte("name: x\nduration: 1s\nusers: 1\ncampaigns: [{id: a, stock: 1}]\nschedule: {kind: constant, rate: 1}\nbogus: 1\n")); err == nil {
		t.Error("unknown key accepted")
	}
}
