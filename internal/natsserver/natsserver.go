// Package natsserver runs a real, separate nats-server process for tests
// that stop or kill NATS: built once per test binary from the
// github.com/nats-io/nats-server/v2 module this repository already requires
// (Debian's nats-server is too old), started on a free loopback port with
// JetStream in a test directory — or a cluster of them (StartCluster), for
// streams with several replicas. Tests that only need NATS embed it instead.
package natsserver

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func build() (string, error) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flashgate-nats-server-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build nats-server: %v\n%s", err, out)
		}
	})
	return binPath, buildErr
}

// Server is one nats-server process.
type Server struct {
	t    testing.TB
	Port int
	Dir  string
	// Name is the server name (cluster members: n1, n2, …).
	Name string
	// extra are the cluster flags of a cluster member.
	extra []string
	cmd   *exec.Cmd
	done  chan struct{}
}

// Start builds (once) and starts nats-server with JetStream.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := build(); err != nil {
		t.Fatalf("natsserver: %v", err)
	}
	s := &Server{t: t, Port: freePort(t), Dir: t.TempDir()}
	s.launch()
	t.Cleanup(s.Kill)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartCluster builds (once) and starts n nats-server processes with
// JetStream, routed into one cluster ("flashgate-test", servers n1…nN) on
// free loopback ports, and waits until JetStream has a meta leader (a
// stream of several replicas can be created). Each server can be killed and
// restarted on its ports and store directory.
func StartCluster(t testing.TB, n int) []*Server {
	t.Helper()
	if _, err := build(); err != nil {
		t.Fatalf("natsserver: %v", err)
	}
	routePorts := make([]int, n)
	servers := make([]*Server, n)
	for i := range servers {
		routePorts[i] = freePort(t)
		servers[i] = &Server{t: t, Port: freePort(t), Dir: t.TempDir(), Name: "n" + strconv.Itoa(i+1)}
	}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	for i, s := range servers {
		s.extra = []string{"--server_name", s.Name, "--cluster_name", "flashgate-test",
			"--cluster", routes[i], "--routes", strings.Join(routes, ",")}
		s.launch()
		t.Cleanup(s.Kill)
	}
	// JetStream is usable once the meta group has elected a leader.
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range servers {
		for !s.jetStreamReady() {
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(s.Dir, "nats.log"))
				t.Fatalf("natsserver: cluster JetStream not ready within 30s on %s: %s", s.Name, tail(log))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return servers
}

// ClusterURL lists every member's client URL, comma-separated (what
// nats.url takes: the client fails over between them).
func ClusterURL(servers []*Server) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.URL()
	}
	return strings.Join(urls, ",")
}

// jetStreamReady: the server answers $JS.API.INFO with a meta leader known.
func (s *Server) jetStreamReady() bool {
	nc, err := nats.Connect(s.URL(), nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return false
	}
	defer nc.Close()
	msg, err := nc.Request("$JS.API.INFO", nil, time.Second)
	return err == nil && !strings.Contains(string(msg.Data), `"error"`)
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// URL is the client URL.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.Port) }

func (s *Server) launch() {
	s.t.Helper()
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ { // the port may linger after a kill
		args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-js", "-sd", s.Dir, "-l", filepath.Join(s.Dir, "nats.log")}, s.extra...)
		s.cmd = exec.Command(binPath, args...)
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if lastErr = s.cmd.Start(); lastErr != nil {
			s.t.Fatalf("natsserver: %v", lastErr)
		}
		s.done = make(chan struct{})
		go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(s.cmd, s.done)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-s.done:
				deadline = time.Time{} // exited (port busy?): try again
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.Port), 200*time.Millisecond); err == nil {
				c.Close()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = s.cmd.Process.Kill()
		<-s.done
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.Dir, "nats.log"))
	s.t.Fatalf("natsserver: not accepting connections on %d: %s", s.Port, log)
}

// Stop shuts down cleanly (SIGTERM, then lame-duck is skipped) and waits.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill sends SIGKILL and waits.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart starts the server again on the same port and store directory.
func (s *Server) Restart() { s.launch() }
