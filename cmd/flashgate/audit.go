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
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
)

// auditSections are the configuration sections `flashgate audit` reads: the
// running gateway's admin listener and token, or, offline, its data dir,
// Redis, NATS and store. auth is not read.
var auditSections = []string{"node_id", "admin_addr", "admin", "data_dir", "redis", "nats", "store", "log"}

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
	cfg, err := gateway.LoadPartConfig(*configPath, nil, auditSections...)
	if err != nil {
		fmt.Fprintf(stderr, "flashgate: invalid configuration:\n%v\n", err)
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
func fetchAudit(cfg gateway.Config, others []string, stderr io.Writer) (audit.Report, string, error) {
	var rep audit.Report
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
	rep, err := auditOffline(ctx, cfg, others, log)
	if err != nil {
		return rep, "", err
	}
	return rep, "data directories " + strings.Join(append([]string{cfg.DataDir}, others...), ", "), nil
}

// auditOffline audits stopped gateways from their data directories: the
// ledgers read-only with the relay cursors they stored, the campaigns from
// the NATS KV bucket (an embedded server on data_dir/nats when nats.url is
// empty), Redis and the store — the parts the audit reads, not a gateway.
func auditOffline(ctx context.Context, cfg gateway.Config, others []string, log *slog.Logger) (audit.Report, error) {
	src := audit.Sources{Node: cfg.Node()}
	own, err := ledger.Open(ledger.Options{Dir: filepath.Join(cfg.DataDir, "ledger"), ReadOnly: true, Logger: log})
	if err != nil {
		return audit.Report{}, fmt.Errorf("gateway not answering at %s and its data dir cannot be opened: %w", cfg.AdminAddr, err)
	}
	defer own.Close()
	ledgers := []*ledger.Ledger{own}
	for _, dir := range others {
		l, err := ledger.Open(ledger.Options{Dir: ledgerDir(dir), ReadOnly: true, Logger: log})
		if err != nil {
			return audit.Report{}, fmt.Errorf("ledger of %s (is that gateway still running?): %w", dir, err)
		}
		defer l.Close()
		ledgers = append(ledgers, l)
	}
	for _, l := range ledgers {
		a, err := audit.Stopped(l)
		if err != nil {
			return audit.Report{}, err
		}
		src.Ledgers = append(src.Ledgers, a)
	}
	src.RelayBacklog = src.Ledgers[0].Backlog()
	js, closeNATS, err := connectNATS(cfg)
	if err != nil {
		return audit.Report{}, err
	}
	defer closeNATS()
	if src.Campaigns, err = readCampaigns(ctx, cfg, js, log); err != nil {
		return audit.Report{}, err
	}
	rc, err := gateway.NewRedisClient(cfg.Redis)
	if err != nil {
		return audit.Report{}, fmt.Errorf("audit: redis: %w", err)
	}
	defer rc.Close()
	src.Stock = stock.New(rc)
	if src.Store, err = openStore(ctx, cfg); err != nil {
		return audit.Report{}, err
	}
	defer src.Store.Close()
	return audit.Run(ctx, src)
}

// connectNATS connects to nats.url, or starts the embedded server on
// data_dir/nats of a stopped gateway.
func connectNATS(cfg gateway.Config) (jetstream.JetStream, func(), error) {
	var ns *server.Server
	var nc *nats.Conn
	var err error
	if cfg.NATS.URL == "" {
		if ns, err = server.NewServer(gateway.EmbeddedNATSOptions(cfg.DataDir)); err != nil {
			return nil, nil, fmt.Errorf("embedded nats: %w", err)
		}
		ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			ns.Shutdown()
			return nil, nil, errors.New("embedded nats did not start within 10s")
		}
		nc, err = nats.Connect("", nats.InProcessServer(ns), nats.Name("flashgate-audit"))
	} else {
		nc, err = nats.Connect(cfg.NATS.URL, nats.Name("flashgate-audit"))
	}
	closeAll := func() {
		if nc != nil {
			nc.Close()
		}
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	}
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("nats connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, closeAll, nil
}

// readCampaigns reads every campaign definition from the KV bucket once.
func readCampaigns(ctx context.Context, cfg gateway.Config, js jetstream.JetStream, log *slog.Logger) ([]*campaign.Campaign, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reg, err := campaign.OpenRegistry(rctx, js, cfg.NATS.Replicas, log)
	if err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go reg.Run(wctx)
	if err := reg.WaitReady(rctx); err != nil {
		return nil, err
	}
	return reg.List(), nil
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

func printAudit(w io.Writer, rep audit.Report, source string) {
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
