package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway"
	"github.com/flashgate/flashgate/internal/natsserver"
	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// loader claims with distinct users from parallel clients until stopped.
type loader struct {
	granted, unavailable atomic.Int64
	stop                 chan struct{}
	wg                   sync.WaitGroup
}

func startLoad(s *stack.Stack, campaign string, workers int) *loader {
	l := &loader{stop: make(chan struct{})}
	var next atomic.Int64
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				user := fmt.Sprintf("%s-%07d", campaign, next.Add(1))
				a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: campaign, User: user, Device: "d"})
				switch {
				case err != nil:
				case a.Status == "granted":
					l.granted.Add(1)
				case a.HTTP == 503:
					l.unavailable.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	return l
}

func (l *loader) halt() { close(l.stop); l.wg.Wait() }

// TestSinkKilledMidStream (I5): a standalone `flashgate sink` writing to
// PostgreSQL is killed with -9 mid-stream and restarted; the store ends exact.
func TestSinkKilledMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("process crash test skipped in -short")
	}
	bin := buildBinary(t)
	ns := natsserver.Start(t)
	dsn := pgtest.Fresh(t)
	s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) {
		c.NATS.URL = ns.URL()
		c.Store.Driver, c.Store.DSN = "postgres", dsn
		c.Sink.Embedded = false
	}})
	s.CreateCampaign(stack.Campaign{ID: "sinkkill", Stock: 20000, Shards: 8})
	config := filepath.Join(t.TempDir(), "sink.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf("data_dir: %s\nnats: {url: %q}\nstore: {driver: postgres, dsn: %q}\nauth: {hs256_secret: %s}\n",
		t.TempDir(), ns.URL(), dsn, stack.Secret)), 0o600)
	startSink := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(bin, "sink", "--config", config)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		return cmd, done
	}
	sink1, done1 := startSink()
	load := startLoad(s, "sinkkill", 64)
	// Kill the sink once it has stored some grants but not all.
	wait.Until(context.Background(), 30*time.Second, func() bool {
		c, _ := s.Gateway.Store().Counts(context.Background())
		return c["sinkkill"].Grants > 1000
	})
	_ = sink1.Process.Signal(syscall.SIGKILL)
	<-done1
	time.Sleep(500 * time.Millisecond)
	startSink()
	time.Sleep(time.Second)
	load.halt()
	rep := stack.RequireCleanAudit(t, s.Gateway, 60*time.Second)
	r := rep.Campaigns[0]
	if r.Store < load.granted.Load() {
		t.Fatalf("store %d < granted answers %d", r.Store, load.granted.Load())
	}
	t.Logf("granted %d; audit %+v", load.granted.Load(), r)
}

// TestNATSOutageUnderLoad (I4, I5): NATS stopped (then, separately, killed
// with -9) for 30 s under load: claims are still granted, the ledger holds
// the backlog, and after NATS returns the store is exact.
func TestNATSOutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("30-second outage test skipped in -short")
	}
	for _, mode := range []string{"stop", "kill -9"} {
		t.Run(mode, func(t *testing.T) {
			ns := natsserver.Start(t)
			s := stack.Start(t, stack.Options{Tweak: func(c *gateway.Config) { c.NATS.URL = ns.URL() }})
			s.CreateCampaign(stack.Campaign{ID: "outage", Stock: 1 << 30, Shards: 4})
			load := startLoad(s, "outage", 32)
			time.Sleep(2 * time.Second)
			if mode == "stop" {
				ns.Stop()
			} else {
				ns.Kill()
			}
			time.Sleep(time.Second) // in-flight publishes settle
			before := load.granted.Load()
			time.Sleep(29 * time.Second)
			during := load.granted.Load() - before
			backlog := s.Gateway.Relay().Backlog()
			ns.Restart()
			time.Sleep(2 * time.Second)
			load.halt()
			if during == 0 {
				t.Fatalf("no claim granted while NATS was down")
			}
			if backlog == 0 {
				t.Fatalf("ledger held no backlog while NATS was down")
			}
			rep := stack.RequireCleanAudit(t, s.Gateway, 90*time.Second)
			r := rep.Campaigns[0]
			if r.Store < load.granted.Load() {
				t.Fatalf("store %d < granted answers %d", r.Store, load.granted.Load())
			}
			t.Logf("granted %d (%d during the outage, backlog %d at its end), 503s %d; audit %+v", load.granted.Load(), during, backlog, load.unavailable.Load(), r)
		})
	}
}
