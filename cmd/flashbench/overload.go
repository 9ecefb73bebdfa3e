package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/flashgate/flashgate/bench"
	"github.com/flashgate/flashgate/gateway"
)

// loadRisk is flashbench risk: limit rules and a synthetic blacklist put in
// force through the admin API, as an operator would before a drop.
func loadRisk(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("risk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "http://127.0.0.1:8081", "gateway admin URL")
	adminToken := fs.String("admin-token", "", "admin bearer token (role admin or risk)")
	rules := fs.String("rules", "bench", `limit rules: "bench" (per-IP and per-device windows honest traffic never reaches), "none", a file, or JSON`)
	blacklist := fs.Int("blacklist", 10000, "synthetic blacklist entries to load (IPs, CIDRs, devices, users; none matches bench traffic)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *adminToken == "" {
		fmt.Fprintln(stderr, "flashbench risk: --admin-token is required")
		return 2
	}
	r, err := rulesArg(*rules)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	if err := bench.LoadRisk(ctx, *admin, *adminToken, r, *blacklist); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	st, err := bench.ReadRisk(ctx, *admin, *adminToken)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "risk in force: %d limit rules (%d windows), %d blacklist entries; loaded through the admin API in %.1fs\n",
		st.Limits, st.Windows, st.Blacklist, time.Since(start).Seconds())
	return 0
}

func rulesArg(v string) (string, error) {
	switch {
	case v == "bench":
		return bench.BenchRules, nil
	case v == "none" || v == "":
		return "", nil
	case strings.HasPrefix(strings.TrimSpace(v), "{"):
		return v, nil
	}
	b, err := os.ReadFile(v)
	return string(b), err
}

// overload is flashbench overload: factor × the claim peak, open model,
// for a while; memory of the gateway, latency of the excess answers, and
// exactly the stock granted.
func overload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("overload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8080", "gateway public URL")
	admin := fs.String("admin", "http://127.0.0.1:8081", "gateway admin URL")
	adminToken := fs.String("admin-token", "", "admin bearer token (role admin)")
	secret := fs.String("secret", "", "HS256 secret to mint user tokens")
	peak := fs.Float64("peak", 0, "the claim peak (claims/s at saturation)")
	peakFrom := fs.String("peak-from", "", "read the peak from a flashbench speed JSON result (granted_per_second)")
	factor := fs.Float64("factor", 5, "offered rate = factor × peak")
	duration := fs.Duration("duration", 30*time.Second, "length of the run")
	conns := fs.Int("connections", 2048, "concurrent connections (more than the gateway admits, so excess reaches it)")
	stockSeconds := fs.Float64("stock-seconds", 5, "stock = this many seconds of the peak (it must sell out within the run)")
	stock := fs.Int64("stock", 0, "stock (overrides --stock-seconds)")
	gwPid := fs.Int("gateway-pid", 0, "gateway process: resident memory sampled during the run")
	campaign := fs.String("campaign", fmt.Sprintf("overload-%d", time.Now().Unix()), "campaign id (created)")
	jsonOut := fs.String("json", "", `JSON result: written under "overload" into this file (its other keys kept)`)
	settle := fs.Duration("settle", time.Minute, "how long the oracle waits for the store to catch up")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *adminToken == "" || *secret == "" {
		fmt.Fprintln(stderr, "flashbench overload: --admin-token and --secret are required")
		return 2
	}
	if *peakFrom != "" {
		p, err := peakOf(*peakFrom)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		*peak = p
	}
	if *peak <= 0 || *factor <= 0 {
		fmt.Fprintln(stderr, "flashbench overload: --peak (or --peak-from) and --factor must be positive")
		return 2
	}
	if *stock == 0 {
		*stock = int64(math.Round(*peak * *stockSeconds))
	}
	users := int(max(2**stock, 20000)) // one grant each: more people than units
	rate := *factor * *peak
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stdout, "flashbench overload: %.0f × peak %.0f/s = %.0f claims/s offered for %v, %d connections, %d users (each its own IP and device), stock %d, one per user\n",
		*factor, *peak, rate, *duration, *conns, users, *stock)
	res, err := bench.RunOverload(ctx, bench.OverloadOptions{
		PublicURL: *url, AdminURL: *admin, AdminToken: *adminToken,
		Mint:     func(u string) (string, error) { return gateway.MintHS256(*secret, u, 2*time.Hour) },
		Campaign: *campaign, Stock: *stock, Users: users, Rate: rate, Duration: *duration, Connections: *conns,
		GatewayPid: *gwPid, Settle: *settle,
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprint(stdout, res.Table(fmt.Sprintf("overload at %.0f/s", rate)))
	if code := mergeJSON(*jsonOut, "overload", res, stderr); code != 0 {
		return code
	}
	if !res.Oracle.OK {
		return 1
	}
	return 0
}

// peakOf reads granted_per_second from a flashbench speed JSON result.
func peakOf(path string) (float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var v struct {
		Granted float64 `json:"granted_per_second"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return 0, fmt.Errorf("flashbench overload: %s: %w", path, err)
	}
	if v.Granted <= 0 {
		return 0, errors.New("flashbench overload: " + path + " has no granted_per_second")
	}
	return v.Granted, nil
}

// mergeJSON writes v under key into the JSON object in path, keeping the
// object's other keys (a new object if path does not exist).
func mergeJSON(path, key string, v any, stderr io.Writer) int {
	if path == "" {
		return 0
	}
	obj := map[string]json.RawMessage{}
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &obj); err != nil {
			fmt.Fprintf(stderr, "flashbench: %s: %v\n", path, err)
			return 1
		}
	}
	b, _ := json.Marshal(v)
	obj[key] = b
	return writeJSON(path, obj, stderr)
}
