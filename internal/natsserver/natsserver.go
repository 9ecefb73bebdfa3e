// Package natsserver runs a real, separate nats-server process for tests
// that stop or kill NATS: built once per test binary from the
// github.com/nats-io/nats-server/v2 module this repository already requires
// (Debian's nats-server is too old), started on a free loopback port with
// JetStream in a test directory. Tests that only need NATS embed it instead.
package natsserver

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
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
	cmd  *exec.Cmd
	done chan struct{}
}

// Start builds (once) and starts nats-server with JetStream.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := build(); err != nil {
		t.Fatalf("natsserver: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{t: t, Port: port, Dir: t.TempDir()}
	s.launch()
	t.Cleanup(s.Kill)
	return s
}

// URL is the client URL.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.Port) }

func (s *Server) launch() {
	s.t.Helper()
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ { // the port may linger after a kill
		s.cmd = exec.Command(binPath, "-a", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-js", "-sd", s.Dir, "-l", filepath.Join(s.Dir, "nats.log"))
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
