// Command flashbench is flashgate's load harness.
//
//	flashbench hello --addr 127.0.0.1:8090          serve a fasthttp hello-world (the yardstick)
//	flashbench run   --scenario FILE --url … …       play a drop scenario; oracle, JSON and HTML report
//	flashbench speed --url … --hello … …            peak claims/s vs hello req/s, then latency at half the peak
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/bench"
	"github.com/flashgate/flashgate/gateway"
)

const usage = `flashbench — load harness for flashgate

  flashbench hello --addr ADDR
  flashbench run   --scenario FILE --url URL --admin URL --admin-token T (--secret S | --ed25519-key FILE)
                   [--json FILE] [--html FILE] [--max-p99 D] [--min-rate R] [--seed N] [--duration D]
  flashbench speed --url URL --hello URL --admin URL --admin-token T --secret S [--duration D] [--connections C] [--users N]

Every command takes --help.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "hello":
		return hello(args[1:], stderr)
	case "run":
		return runScenario(args[1:], stdout, stderr)
	case "speed":
		return load(args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "flashbench: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func hello(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("hello", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := bench.HelloServer()
	go func() { <-ctx.Done(); _ = srv.Shutdown() }()
	if err := srv.ListenAndServe(*addr); err != nil {
		fmt.Fprintf(stderr, "flashbench hello: %v\n", err)
		return 1
	}
	return 0
}

func load(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8080", "gateway public URL")
	helloURL := fs.String("hello", "http://127.0.0.1:8090", "hello-world URL (speed)")
	admin := fs.String("admin", "http://127.0.0.1:8081", "gateway admin URL")
	adminToken := fs.String("admin-token", "", "admin bearer token (role admin)")
	secret := fs.String("secret", "", "HS256 secret to mint user tokens")
	duration := fs.Duration("duration", 10*time.Second, "length of each run")
	conns := fs.Int("connections", 256, "concurrent connections")
	users := fs.Int("users", 20000, "user population")
	campaign := fs.String("campaign", fmt.Sprintf("bench-%d", time.Now().Unix()), "campaign id (created if missing)")
	jsonOut := fs.String("json", "", "write the summary as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *adminToken == "" || *secret == "" {
		fmt.Fprintln(stderr, "flashbench: --admin-token and --secret are required")
		return 2
	}
	// A campaign whose every claim grants: the measured path is the full one
	// (script, synced ledger append), not the cheap sold-out answer.
	err := bench.CreateCampaign(*admin, *adminToken, map[string]any{
		"id": *campaign, "name": "bench", "coupon": map[string]any{"type": "voucher", "amount": 500},
		"stock": int64(1) << 40, "per_user_limit": 1000, "shards": 16,
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	target, err := bench.NewClaimTarget(*url, *campaign, *users, func(u string) (string, error) { return gateway.MintHS256(*secret, u, 2*time.Hour) })
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	once := func(title string, r float64, prepare func(int64, *fasthttp.Request), classify bool) (bench.Summary, bool) {
		o := bench.Options{Rate: r, Duration: *duration, Connections: *conns, Prepare: prepare}
		if classify {
			o.Classify = bench.ClassifyClaim
		}
		res, err := bench.Run(ctx, o)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return bench.Summary{}, false
		}
		s := res.Summarize(r)
		fmt.Fprint(stdout, s.Table(title))
		return s, true
	}
	fmt.Fprintf(stdout, "flashbench %s: GOMAXPROCS=%d %s, %d connections, %v per run, %d users\n\n", cmd, runtime.GOMAXPROCS(0), runtime.Version(), *conns, *duration, *users)
	const saturate = 200000 // well above what 2 cores serve: achieved = peak
	h, ok := once("hello-world at saturation", saturate, bench.HelloTarget(*helloURL, target), false)
	if !ok {
		return 1
	}
	c, ok := once("claims at saturation", saturate, target.Prepare, true)
	if !ok {
		return 1
	}
	half, ok := once(fmt.Sprintf("claims at half the peak (%.0f/s)", c.AchievedRate/2), c.AchievedRate/2, target.Prepare, true)
	if !ok {
		return 1
	}
	lag, stored, err := bench.StoreLag(*admin, *adminToken, *campaign, time.Minute)
	if err != nil {
		fmt.Fprintln(stderr, err)
	}
	fmt.Fprintf(stdout, "\npeak claims/s %.0f ÷ hello req/s %.0f = %.2f   (aim ≥ 0.50)\n", c.AchievedRate, h.AchievedRate, c.AchievedRate/h.AchievedRate)
	fmt.Fprintf(stdout, "at %.0f claims/s: p50 %.2fms p99 %.2fms   (aim p99 ≤ 10ms)\n", half.AchievedRate, half.P50Ms, half.P99Ms)
	fmt.Fprintf(stdout, "store caught up with the last grant %.2fs after the half-peak run ended (%d grants stored; aim < 2s)\n", lag.Seconds(), stored)
	return writeJSON(*jsonOut, map[string]any{"hello": h, "claims_peak": c, "claims_half": half, "ratio": c.AchievedRate / h.AchievedRate, "store_lag_seconds": lag.Seconds()}, stderr)
}

func writeJSON(path string, v any, stderr io.Writer) int {
	if path == "" {
		return 0
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// usageExit is the exit code after a flag parse error: 0 for --help (usage
// was printed as asked), 2 for a wrong flag.
func usageExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
