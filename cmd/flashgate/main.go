// Command flashgate runs the flashgate gateway and its tools.
//
//	flashgate serve --config FILE [--check-config] [--demo]
//	flashgate sink --config FILE
//	flashgate audit --config FILE [--json] [--with-data-dir DIR]...
//	flashgate ledger dump --data-dir DIR
//	flashgate token --secret S --sub USER [--ttl 1h] [--iss I] [--aud A]
//
// main only turns flags, file and environment into a Config, validates it,
// wires the parts each command needs and runs them until a signal: serve is
// gateway.New (with the embedded sink wired here, sink.go) and Run; sink is
// the stream consumer alone, from a config with nats, store, data_dir (for
// the default SQLite file) and log only (sink.go); the offline audit opens Redis, the campaign registry, the store
// and the ledgers read-only and runs package audit (audit.go). Only cmd
// wires the sink (internal/lint).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
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
	g, err := gateway.New(ctx, cfg, gateway.WithLogger(log), gateway.WithSink(newSink))
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

// usageExit is the exit code after a flag parse error: 0 for --help (usage
// was printed as asked), 2 for a wrong flag.
func usageExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
