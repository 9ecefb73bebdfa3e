package sink

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/store"
)

// TestOneBadGrantDoesNotTakeItsMessageDown (issue 9 #11, I5): a stream
// message whose second grant the store cannot hold (client_ip with a 70-byte
// IPv6 zone) used to be terminated whole. The sink stores the good grants,
// sets the bad one aside with its reason, and acks the message: nothing is
// terminated, nothing is redelivered.
func TestOneBadGrantDoesNotTakeItsMessageDown(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := js.CreateStream(ctx, relay.StreamConfig(1, time.Hour, time.Hour)); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, "sqlite", filepath.Join(t.TempDir(), "grants.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	recs := sampleRecords()
	recs = append(recs, recs[1])
	recs[1].ClientIP = "fe80::1%" + strings.Repeat("z", 70)
	recs[2].Seq, recs[2].GrantID, recs[2].User = 11, "01a208b03d44c86638b0c0d1ea4df570", "u3"
	if _, err := js.PublishMsg(ctx, relay.Message("gw-a", recs)); err != nil {
		t.Fatal(err)
	}
	sk, err := New(Options{JS: js, Store: st, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn + 8}))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sk.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if !wait.Until(ctx, 10*time.Second, func() bool { return sk.Stored()+sk.SetAside() >= 3 || sk.Poison() > 0 }) || sk.Poison() > 0 {
		t.Fatalf("stored %d, set aside %d, terminated %d messages", sk.Stored(), sk.SetAside(), sk.Poison())
	}
	if sk.Stored() != 2 || sk.SetAside() != 1 || sk.Poison() != 0 {
		t.Fatalf("stored %d (want 2), set aside %d (want 1), terminated %d (want 0)", sk.Stored(), sk.SetAside(), sk.Poison())
	}
	if missing, err := st.Missing(ctx, []string{recs[0].GrantID, recs[2].GrantID}); err != nil || len(missing) != 0 {
		t.Fatalf("good grants missing: %v %v", missing, err)
	}
	if aside, err := st.SetAsideOf(ctx, []string{recs[1].GrantID}); err != nil || !aside[recs[1].GrantID] {
		t.Fatalf("bad grant not set aside: %v %v", aside, err)
	}
	// The message is acked: nothing pending, nothing waiting for an ack.
	var (
		info *jetstream.ConsumerInfo
		ierr error
	)
	if !wait.Until(ctx, 5*time.Second, func() bool {
		c, err := js.Consumer(ctx, relay.Stream, Durable)
		if err != nil {
			t.Fatal(err)
		}
		info, ierr = c.Info(ctx)
		return ierr == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.Delivered.Consumer == 1
	}) {
		t.Fatalf("consumer %+v %v: message not acked once", info, ierr)
	}
}
