// Command flashgate runs the flashgate gateway and its tools.
//
//	flashgate serve --config FILE [--check-config] [--demo]
//	flashgate ledger dump --data-dir DIR
//	flashgate token --secret S --sub USER [--ttl 1h] [--iss I] [--aud A]
//
// main only turns flags, file and environment into a Config, validates it,
// calls gateway.New and Run, and waits for a signal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/ledger"
)

const usage = `flashgate — a gateway for flash-coupon drops

Usage:
  flashgate serve --config FILE [--check-config] [--demo]   run the gateway
  flashgate sink --config FILE                              run the sink alone (stream → store; needs nats.url)
  flashgate audit --config FILE [--json] [--with-data-dir DIR]...
                                                            check I1, I2, I5, I6 per campaign; exit 1 on a violation
  flashgate ledger dump --data-dir DIR                      print every grant in a ledger, one JSON object a line
  flashgate token --secret S --sub USER [--ttl D]           mint an HS256 token (development; --iss, --aud
                 [--iss I] [--aud A]                        for auth.issuer / auth.audience)

Every command takes --help. Configuration keys: see README.md; each may be
overridden by FLASHGATE_<KEY> (e.g. FLASHGATE_REDIS_ADDRS=127.0.0.1:6380).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "ledger":
		if len(args) < 2 || args[1] != "dump" {
			fmt.Fprint(stderr, "usage: flashgate ledger dump --data-dir DIR\n")
			return 2
		}
		return ledgerDump(args[2:], stdout, stderr)
	case "token":
		return token(args[1:], stdout, stderr)
	case "sink":
		return sinkCmd(args[1:], stdout, stderr)
	case "audit":
		return auditCmd(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "flashgate: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func serve(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (defaults and FLASHGATE_* variables apply)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	demo := fs.Bool("demo", false, "create a demo campaign and print a ready-to-paste claim (development)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	cfg, ok := loadConfig(*configPath, stderr)
	if !ok {
		return 1
	}
	if *check {
		fmt.Fprintln(stdout, "configuration ok")
		return 0
	}
	log := jsonLogger(cfg, stderr)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	g, err := gateway.New(ctx, cfg, gateway.WithLogger(log))
	if err != nil {
		fmt.Fprintf(stderr, "flashgate: %v\n", err)
		return 1
	}
	defer g.Close()
	if err := g.Listen(); err != nil {
		fmt.Fprintf(stderr, "flashgate: %v\n", err)
		return 1
	}
	if *demo {
		go func() {
			if err := gateway.SetUpDemo(ctx, cfg, g.PublicAddr(), g.AdminAddr(), stdout); err != nil {
				log.Error("demo setup failed", "err", err)
			}
		}()
	}
	// Run bounds every step of its stop by shutdown.timeout; should one hang
	// anyway, the process still exits then (every grant it acknowledged is
	// synced in the ledger, and the next start settles the rest).
	go func() {
		<-ctx.Done()
		time.Sleep(cfg.Shutdown.Timeout)
		log.Error("shutdown.timeout passed before the stop finished; exiting", "timeout", cfg.Shutdown.Timeout)
		os.Exit(1)
	}()
	if err := g.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "flashgate: %v\n", err)
		return 1
	}
	return 0
}

// loadConfig loads and validates the configuration, printing every wrong key.
func loadConfig(path string, stderr io.Writer) (gateway.Config, bool) {
	cfg, err := gateway.LoadConfig(path, nil)
	if err != nil {
		fmt.Fprintf(stderr, "flashgate: invalid configuration:\n%v\n", err)
		return cfg, false
	}
	return cfg, true
}

// jsonLogger is the JSON slog logger of the configured level.
func jsonLogger(cfg gateway.Config, stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: logLevel(cfg.Log.Level)}))
}

func logLevel(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s))
	return l
}

type dumpLine struct {
	Seq            uint64 `json:"seq"`
	GrantID        string `json:"grant_id"`
	Campaign       string `json:"campaign"`
	User           string `json:"user"`
	Device         string `json:"device"`
	ClientIP       string `json:"client_ip"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	Shard          uint32 `json:"shard"`
	GrantedAt      string `json:"granted_at"`
	ValidFrom      int64  `json:"valid_from,omitempty"`
	ValidUntil     int64  `json:"valid_until,omitempty"`
	FaceValue      int64  `json:"face_value,omitempty"`
}

func ledgerDump(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ledger dump", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data-dir", "", "the gateway's data_dir (or its ledger/ subdirectory)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "flashgate ledger dump: --data-dir is required")
		return 2
	}
	path := ledgerDir(*dir)
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(stderr, "flashgate ledger dump: %v\n", err)
		return 1
	}
	l, err := ledger.Open(ledger.Options{Dir: path, Logger: slog.New(slog.NewTextHandler(stderr, nil))})
	if err != nil {
		fmt.Fprintf(stderr, "flashgate ledger dump: %v (is the gateway still running?)\n", err)
		return 1
	}
	defer l.Close()
	enc := json.NewEncoder(stdout)
	err = l.Scan(0, ^uint64(0), func(r *ledger.Record) error {
		return enc.Encode(dumpLine{
			Seq: r.Seq, GrantID: r.GrantID, Campaign: r.Campaign, User: r.User, Device: r.Device, ClientIP: r.ClientIP,
			IdempotencyKey: r.IdempotencyKey, Shard: r.Shard, GrantedAt: time.Unix(0, r.GrantedAtNanos).UTC().Format(time.RFC3339Nano),
			ValidFrom: r.ValidFrom, ValidUntil: r.ValidUntil, FaceValue: r.FaceValue,
		})
	})
	if err != nil {
		fmt.Fprintf(stderr, "flashgate ledger dump: %v\n", err)
		return 1
	}
	return 0
}

func token(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secret := fs.String("secret", os.Getenv("FLASHGATE_AUTH_HS256_SECRET"), "HS256 secret (default $FLASHGATE_AUTH_HS256_SECRET)")
	sub := fs.String("sub", "", "user id")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	iss := fs.String("iss", os.Getenv("FLASHGATE_AUTH_ISSUER"), "iss claim, for a gateway with auth.issuer (default $FLASHGATE_AUTH_ISSUER)")
	aud := fs.String("aud", os.Getenv("FLASHGATE_AUTH_AUDIENCE"), "aud claim, for a gateway with auth.audience (default $FLASHGATE_AUTH_AUDIENCE)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	if *secret == "" || *sub == "" {
		fmt.Fprintln(stderr, "flashgate token: --secret and --sub are required")
		return 2
	}
	s, err := gateway.MintHS256For(*secret, *sub, *iss, *aud, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "flashgate token: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, s)
	return 0
}

func sinkCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration (nats.url and store.* are used)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	cfg, ok := loadConfig(*configPath, stderr)
	if !ok {
		return 1
	}
	if cfg.NATS.URL == "" {
		fmt.Fprintln(stderr, "flashgate sink: nats.url is required (with embedded NATS the sink runs inside serve)")
		return 1
	}
	cfg.Sink.Embedded = false
	log := jsonLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	g, err := gateway.New(ctx, cfg, gateway.WithLogger(log))
	if err != nil {
		fmt.Fprintf(stderr, "flashgate sink: %v\n", err)
		return 1
	}
	defer g.Close()
	if err := g.SinkOnly(ctx); err != nil {
		fmt.Fprintf(stderr, "flashgate sink: %v\n", err)
		return 1
	}
	return 0
}

func auditCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "the gateway's YAML configuration")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	var others dirList
	fs.Var(&others, "with-data-dir", "also audit this stopped gateway's ledger (repeatable): a fleet's ledgers are audited together, offline")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	cfg, ok := loadConfig(*configPath, stderr)
	if !ok {
		return 1
	}
	rep, source, err := fetchAudit(cfg, others, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "flashgate audit: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printAudit(stdout, rep, source)
	}
	if rep.Violations > 0 {
		return 1
	}
	return 0
}

// fetchAudit asks the running gateway (admin API), or audits its data
// directory when it is stopped.
func fetchAudit(cfg gateway.Config, others []string, stderr io.Writer) (gateway.AuditReport, string, error) {
	var rep gateway.AuditReport
	var token string
	for tok, role := range cfg.Admin.Tokens {
		if role == "admin" || token == "" {
			token = tok
		}
	}
	if token != "" && len(others) == 0 {
		req, _ := http.NewRequest("GET", "http://"+cfg.AdminAddr+"/admin/v1/audit", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
		if err == nil {
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				return rep, "", fmt.Errorf("gateway at %s answered HTTP %d: %s", cfg.AdminAddr, resp.StatusCode, b)
			}
			err := json.NewDecoder(resp.Body).Decode(&rep)
			return rep, "running gateway at " + cfg.AdminAddr, err
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg.Sink.Embedded = false
	g, err := gateway.New(ctx, cfg, gateway.WithLogger(log))
	if err != nil {
		return rep, "", fmt.Errorf("gateway not answering at %s and its data dir cannot be opened: %w", cfg.AdminAddr, err)
	}
	defer g.Close()
	var ledgers []*ledger.Ledger
	for _, dir := range others {
		l, err := ledger.Open(ledger.Options{Dir: ledgerDir(dir), ReadOnly: true, Logger: log})
		if err != nil {
			return rep, "", fmt.Errorf("ledger of %s (is that gateway still running?): %w", dir, err)
		}
		defer l.Close()
		ledgers = append(ledgers, l)
	}
	rep, err = g.AuditOffline(ctx, ledgers...)
	return rep, "data directories " + strings.Join(append([]string{cfg.DataDir}, others...), ", "), err
}

// dirList is a repeatable flag.
type dirList []string

func (d *dirList) String() string     { return strings.Join(*d, ",") }
func (d *dirList) Set(v string) error { *d = append(*d, v); return nil }

// ledgerDir accepts a gateway's data_dir or its ledger/ subdirectory.
func ledgerDir(dir string) string {
	if st, err := os.Stat(filepath.Join(dir, "ledger")); err == nil && st.IsDir() {
		return filepath.Join(dir, "ledger")
	}
	return dir
}

func printAudit(w io.Writer, rep gateway.AuditReport, source string) {
	fmt.Fprintf(w, "audit of node %s (%s); ledgers %s; relay backlog %d\n\n", rep.Node, source, strings.Join(rep.Ledgers, " "), rep.RelayBacklog)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "campaign\tstock\tredis granted\tredis remaining\tunsettled\theld\tledger\tstream\tstore\tmissing in store\tset aside\textra in store\tmax/user\t")
	for _, r := range rep.Campaigns {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d/%d\t\n", r.Campaign, r.Stock, r.RedisGranted, r.RedisRemaining,
			r.Unsettled, r.Held, r.Ledger, r.Stream, r.Store, r.MissingInStore, r.SetAside, r.ExtraInStore, r.StoreMaxPerUser, r.PerUserLimit)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rep.Campaigns {
		for _, v := range r.Violations {
			fmt.Fprintf(w, "VIOLATION %s: %s\n", r.Campaign, v)
		}
	}
	if rep.Violations == 0 {
		fmt.Fprintln(w, "no violations")
	}
}

// usageExit is the exit code after a flag parse error: 0 for --help (usage
// was printed as asked), 2 for a wrong flag.
func usageExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
