package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/term"

	"github.com/flashgate/flashgate/bench"
	"github.com/flashgate/flashgate/gateway"
)

func runScenario(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarioPath := fs.String("scenario", "", "drop scenario file (loadtest/*.yaml)")
	url := fs.String("url", "http://127.0.0.1:8080", "gateway public URL")
	admin := fs.String("admin", "http://127.0.0.1:8081", "gateway admin URL")
	adminToken := fs.String("admin-token", "", "admin bearer token (role admin: creates the campaigns)")
	secret := fs.String("secret", "", "HS256 secret to mint user tokens")
	edKey := fs.String("ed25519-key", "", "PEM Ed25519 private key to mint EdDSA user tokens (instead of --secret)")
	jsonOut := fs.String("json", "flashbench-result.json", "results file (stable JSON)")
	htmlOut := fs.String("html", "flashbench-report.html", "self-contained HTML report")
	maxP99 := fs.Duration("max-p99", 0, "fail when p99 latency exceeds this (0 = scenario's threshold)")
	minRate := fs.Float64("min-rate", 0, "fail when the achieved rate is below this (0 = scenario's threshold)")
	seed := fs.Int64("seed", 0, "override the scenario's seed")
	duration := fs.Duration("duration", 0, "override the scenario's duration")
	settle := fs.Duration("settle", 60*time.Second, "how long the oracle waits for the store to catch up")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *scenarioPath == "" || *adminToken == "" {
		fmt.Fprintln(stderr, "flashbench run: --scenario and --admin-token are required")
		return 2
	}
	sc, err := bench.LoadScenario(*scenarioPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *secret == "" && *edKey == "" {
		*secret = sc.Secret // the scenario's own secret, unless a flag says otherwise
	}
	if (*secret == "") == (*edKey == "") {
		fmt.Fprintln(stderr, "flashbench run: exactly one of --secret (or the scenario's secret:) and --ed25519-key is required")
		return 2
	}
	if *seed != 0 {
		sc.Seed = *seed
	}
	if *duration != 0 {
		sc.Duration = *duration
	}
	if *maxP99 != 0 {
		sc.Thresholds.MaxP99 = *maxP99
	}
	if *minRate != 0 {
		sc.Thresholds.MinRate = *minRate
	}
	mint, err := minter(*secret, *edKey)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	o := bench.DropOptions{Scenario: sc, PublicURL: *url, AdminURL: *admin, AdminToken: *adminToken, Mint: mint}
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		o.Progress = stdout
	}
	return playDrop(ctx, o, *jsonOut, *htmlOut, *settle, stdout, stderr)
}

// playDrop runs, judges and reports one scenario; exit 1 on an oracle
// violation or a missed threshold.
func playDrop(ctx context.Context, o bench.DropOptions, jsonOut, htmlOut string, settle time.Duration, stdout, stderr io.Writer) int {
	res, err := bench.RunDrop(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	res.Oracle = bench.RunOracle(ctx, res, o.Scenario, o.AdminURL, o.AdminToken, settle)
	fmt.Fprint(stdout, res.Table())
	code := 0
	if !res.Oracle.OK {
		code = 1
	}
	th := o.Scenario.Thresholds
	if th.MaxP99 > 0 && time.Duration(res.Summary.P99Ms*float64(time.Millisecond)) > th.MaxP99 {
		fmt.Fprintf(stdout, "threshold: p99 %.2fms exceeds %v\n", res.Summary.P99Ms, th.MaxP99)
		code = 1
	}
	if th.MinRate > 0 && res.Summary.AchievedRate < th.MinRate {
		fmt.Fprintf(stdout, "threshold: achieved %.0f/s below %.0f/s\n", res.Summary.AchievedRate, th.MinRate)
		code = 1
	}
	if jsonOut != "" {
		if err := res.WriteJSON(jsonOut); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	if htmlOut != "" {
		if err := res.WriteHTML(htmlOut); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "results: %s  report: %s\n", jsonOut, htmlOut)
	return code
}

func minter(secret, edKeyPath string) (func(string) (string, error), error) {
	if secret != "" {
		return func(u string) (string, error) { return gateway.MintHS256(secret, u, 2*time.Hour) }, nil
	}
	b, err := os.ReadFile(edKeyPath)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("flashbench: --ed25519-key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("flashbench: --ed25519-key: %w", err)
	}
	pk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("flashbench: --ed25519-key holds a %T", k)
	}
	return func(u string) (string, error) {
		now := time.Now()
		return jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{Subject: u, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(2 * time.Hour))}).SignedString(pk)
	}, nil
}
