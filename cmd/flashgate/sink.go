package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/sink"
	"github.com/flashgate/flashgate/ledger/store"
)

// sinkSections are the configuration sections `flashgate sink` reads
// (data_dir only for the default SQLite file); nothing else is validated, so
// a sink's file needs no auth and no redis section.
var sinkSections = []string{"nats", "store", "data_dir", "log"}

// storeOpenTimeout bounds opening (and migrating) the grant store.
const storeOpenTimeout = 15 * time.Second

// newSink is the sink a gateway embeds (sink.embedded), wired into gateway.New.
func newSink(js jetstream.JetStream, st *store.Store, log *slog.Logger) (gateway.Sink, error) {
	return sink.New(sink.Options{JS: js, Store: st, Logger: log})
}

func sinkCmd(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration (nats.url, store.*, data_dir for the default SQLite file, log.level)")
	if err := fs.Parse(args); err != nil {
		return usageExit(err)
	}
	cfg, err := gateway.LoadPartConfig(*configPath, nil, sinkSections...)
	if err != nil {
		fmt.Fprintf(stderr, "flashgate: invalid configuration:\n%v\n", err)
		return 1
	}
	if cfg.NATS.URL == "" {
		fmt.Fprintln(stderr, "flashgate sink: nats.url is required (with embedded NATS the sink runs inside serve)")
		return 1
	}
	log := jsonLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runSink(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "flashgate sink: %v\n", err)
		return 1
	}
	return 0
}

// runSink consumes the GRANTS stream into the store until ctx ends.
func runSink(ctx context.Context, cfg gateway.Config, log *slog.Logger) error {
	nc, err := nats.Connect(cfg.NATS.URL, nats.Name("flashgate-sink"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	s, err := newSink(js, st, log)
	if err != nil {
		return err
	}
	log.Info("flashgate sink consuming", "stream", relay.Stream, "store", cfg.Store.Driver)
	s.Run(ctx)
	return nil
}

// openStore opens the grant store of cfg (the default SQLite file's
// directory is created).
func openStore(ctx context.Context, cfg gateway.Config) (*store.Store, error) {
	if cfg.Store.Driver == "sqlite" && cfg.Store.DSN == "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancel()
	return store.Open(sctx, cfg.Store.Driver, cfg.StoreDSN())
}
