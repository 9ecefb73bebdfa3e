// Package rediscluster starts a real Redis Cluster for tests: N masters
// (and optional replicas), each a redis-server process on a free loopback
// port with an explicit cluster bus port (the default, port + 10000, can
// pass 65535), joined with `redis-cli --cluster create`, waited for with a
// bounded wait until every node says cluster_state:ok, and killed when the
// test ends. Nodes can be killed and restarted with or without their data,
// and hash slots moved between masters (redis-cli --cluster reshard, or the
// MIGRATING / IMPORTING / MIGRATE / SETSLOT NODE sequence for chosen slots)
// while a test keeps the cluster under load. Nothing here is a fake.
//
// Every node runs with appendonly yes and appendfsync always, so a restart
// keeps every acknowledged write unless the test asks to wipe the data, and
// with cluster-require-full-coverage no (Options.FullCoverage), so the
// slots of a dead master fail while every other slot keeps serving — the
// setting flashgate's README asks of a production cluster.
package rediscluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/internal/wait"
)

const (
	// readyWaitMax bounds how long a node gets to answer PING after start.
	readyWaitMax = 10 * time.Second
	// stateWaitMax bounds how long the cluster gets to agree on cluster_state:ok
	// after create, a restart or a slot move.
	stateWaitMax = 30 * time.Second
	// commandTimeout bounds one harness command to one node.
	commandTimeout = 10 * time.Second
	// SlotsN is the number of hash slots of a Redis Cluster.
	SlotsN = 16384
)

// Options for Start.
type Options struct {
	// Masters is the number of masters (default 3, at least 3 — redis-cli
	// refuses fewer).
	Masters int
	// Replicas per master (default 0).
	Replicas int
	// NodeTimeout is cluster-node-timeout (default 2s: a killed master is
	// marked failed, and a replica promoted, within a few seconds).
	NodeTimeout time.Duration
	// FullCoverage sets cluster-require-full-coverage yes: then one failed
	// master stops every slot of the cluster. Default no.
	FullCoverage bool
}

// Cluster is a running Redis Cluster.
type Cluster struct {
	t     testing.TB
	o     Options
	Nodes []*Node
	mu    sync.Mutex // node process state
}

// Node is one redis-server process of the cluster.
type Node struct {
	c       *Cluster
	Port    int
	BusPort int
	Dir     string
	// ID is the cluster node id (40 hex characters), stable across restarts
	// that keep nodes.conf.
	ID     string
	cmd    *exec.Cmd
	client rueidis.Client // this node alone (no redirection); reconnects by itself
}

// Addr is host:port of the node's client port.
func (n *Node) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.Port) }

// Running reports whether the node's process runs (it was not killed).
func (n *Node) Running() bool {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	return n.cmd != nil
}

// Start launches and joins the cluster; the test fails if it cannot.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (make test installs it: scripts/test-deps.sh): %v", bin, err)
		}
	}
	if o.Masters == 0 {
		o.Masters = 3
	}
	if o.Masters < 3 {
		t.Fatalf("rediscluster: %d masters; a cluster needs at least 3", o.Masters)
	}
	if o.NodeTimeout == 0 {
		o.NodeTimeout = 2 * time.Second
	}
	c := &Cluster{t: t, o: o}
	t.Cleanup(c.killAll)
	for i := 0; i < o.Masters*(1+o.Replicas); i++ {
		n := &Node{c: c, Dir: t.TempDir()}
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			if n.Port, n.BusPort, err = freePorts(); err != nil {
				continue
			}
			if err = n.launch(); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("rediscluster: node %d: %v", i, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(o.Replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("rediscluster: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, n := range c.Nodes {
		id, err := n.do(context.Background(), "CLUSTER", "MYID").ToString()
		if err != nil {
			t.Fatalf("rediscluster: CLUSTER MYID on %s: %v", n.Addr(), err)
		}
		n.ID = id
	}
	c.WaitOK()
	return c
}

func (n *Node) args() []string {
	o := n.c.o
	cover := "no"
	if o.FullCoverage {
		cover = "yes"
	}
	return []string{
		"--port", strconv.Itoa(n.Port), "--bind", "127.0.0.1", "--protected-mode", "no",
		"--dir", n.Dir, "--logfile", "redis.log", "--maxclients", "10000", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-port", strconv.Itoa(n.BusPort),
		"--cluster-node-timeout", strconv.FormatInt(o.NodeTimeout.Milliseconds(), 10),
		"--cluster-require-full-coverage", cover,
	}
}

func (n *Node) launch() error {
	cmd := exec.Command("redis-server", n.args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _, _ = cmd.Process.Wait(); close(exited) }()
	deadline := time.Now().Add(readyWaitMax)
	for time.Now().Before(deadline) {
		select {
		case <-exited: // port taken, most likely
			log, _ := os.ReadFile(filepath.Join(n.Dir, "redis.log"))
			return fmt.Errorf("redis-server on port %d exited: %s", n.Port, tail(log))
		default:
		}
		if ping(n.Addr()) {
			n.c.mu.Lock()
			n.cmd = cmd
			n.c.mu.Unlock()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	log, _ := os.ReadFile(filepath.Join(n.Dir, "redis.log"))
	return fmt.Errorf("redis-server on port %d not ready within %v: %s", n.Port, readyWaitMax, tail(log))
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Kill stops the node with SIGKILL and waits for it.
func (n *Node) Kill() { n.signal(syscall.SIGKILL) }

// Stop shuts the node down cleanly (SIGTERM) and waits for it.
func (n *Node) Stop() { n.signal(syscall.SIGTERM) }

func (n *Node) signal(sig syscall.Signal) {
	n.c.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	// launch's goroutine reaps the process; wait until the port is free.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ping(n.Addr()) {
		time.Sleep(10 * time.Millisecond)
	}
	if sig != syscall.SIGKILL && ping(n.Addr()) {
		_ = cmd.Process.Kill()
	}
	for time.Now().Before(deadline) && ping(n.Addr()) {
		time.Sleep(10 * time.Millisecond)
	}
}

// Restart starts a stopped or killed node again on its ports and directory.
// With wipe its data (append-only file, RDB) is deleted first, as if the
// machine had lost its disk, but nodes.conf stays: the node rejoins with
// its identity and its slots, empty. Restart waits until the whole cluster
// is ok again.
func (n *Node) Restart(wipe bool) {
	t := n.c.t
	t.Helper()
	if n.Running() {
		t.Fatalf("rediscluster: restart of running node %s", n.Addr())
	}
	if wipe {
		for _, p := range []string{"appendonlydir", "dump.rdb"} {
			if err := os.RemoveAll(filepath.Join(n.Dir, p)); err != nil {
				t.Fatalf("rediscluster: wipe %s: %v", n.Addr(), err)
			}
		}
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the port may linger briefly
		if err = n.launch(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("rediscluster: restart %s: %v", n.Addr(), err)
	}
	n.c.WaitOK()
}

func (c *Cluster) killAll() {
	for _, n := range c.Nodes {
		n.Kill()
		c.mu.Lock()
		if n.client != nil {
			n.client.Close()
			n.client = nil
		}
		c.mu.Unlock()
	}
}

// Addrs are the client addresses of every node (what redis.addrs lists).
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// Node returns the node with that address or id, nil if none.
func (c *Cluster) Node(addrOrID string) *Node {
	for _, n := range c.Nodes {
		if n.Addr() == addrOrID || n.ID == addrOrID {
			return n
		}
	}
	return nil
}

// do runs one command on this node alone.
func (n *Node) do(ctx context.Context, args ...string) rueidis.RedisResult {
	n.c.mu.Lock()
	cl := n.client
	if cl == nil {
		var err error
		// ForceSingleClient: the client exists even while the node is down
		// and connects when it is back.
		cl, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{n.Addr()}, ForceSingleClient: true, DisableCache: true, DisableRetry: true})
		if cl == nil {
			n.c.mu.Unlock()
			return rueidis.NewErrorResult(err)
		}
		n.client = cl
	}
	n.c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	return cl.Do(ctx, cl.B().Arbitrary(args...).Build())
}

// Do runs one command on this node alone (no redirection is followed).
func (n *Node) Do(args ...string) rueidis.RedisResult { return n.do(context.Background(), args...) }

// info is one node's CLUSTER INFO as a map.
func (n *Node) info() (map[string]string, error) {
	s, err := n.do(context.Background(), "CLUSTER", "INFO").ToString()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	s = strings.TrimPrefix(s, "txt:") // RESP3 verbatim string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// WaitOK waits (bounded) until every running node says cluster_state:ok,
// knows every other node, and all agree on which master serves each slot.
func (c *Cluster) WaitOK() {
	c.t.Helper()
	var last string
	ok := wait.Until(context.Background(), stateWaitMax, func() bool {
		var ref map[int]string
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			m, err := n.info()
			if err != nil {
				last = n.Addr() + ": " + err.Error()
				return false
			}
			if m["cluster_state"] != "ok" || m["cluster_known_nodes"] != strconv.Itoa(len(c.Nodes)) {
				last = fmt.Sprintf("%s: cluster_state %s, known nodes %s", n.Addr(), m["cluster_state"], m["cluster_known_nodes"])
				return false
			}
			owners, err := n.slotOwners()
			if err != nil {
				last = n.Addr() + ": " + err.Error()
				return false
			}
			if ref == nil {
				ref = owners
			} else if !sameOwners(ref, owners) {
				last = n.Addr() + ": slot map differs from another node's"
				return false
			}
		}
		return true
	})
	if !ok {
		c.t.Fatalf("rediscluster: not ok within %v: %s", stateWaitMax, last)
	}
}

func sameOwners(a, b map[int]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// slotOwners is the node's view: slot → master address (slots it knows a
// master of; a failed master's slots are still listed under it).
func (n *Node) slotOwners() (map[int]string, error) {
	v, err := n.do(context.Background(), "CLUSTER", "SLOTS").ToArray()
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, r := range v {
		f, err := r.ToArray()
		if err != nil || len(f) < 3 {
			return nil, fmt.Errorf("CLUSTER SLOTS: malformed entry")
		}
		lo, _ := f[0].AsInt64()
		hi, _ := f[1].AsInt64()
		m, err := f[2].ToArray()
		if err != nil || len(m) < 2 {
			return nil, fmt.Errorf("CLUSTER SLOTS: malformed master")
		}
		ip, _ := m[0].ToString()
		port, _ := m[1].AsInt64()
		addr := net.JoinHostPort(ip, strconv.FormatInt(port, 10))
		for s := lo; s <= hi; s++ {
			out[int(s)] = addr
		}
	}
	return out, nil
}

// Masters are the nodes that serve at least one slot, in the view of the
// first running node, ordered by their lowest slot.
func (c *Cluster) Masters() []*Node {
	c.t.Helper()
	owners := c.SlotOwners()
	first := map[*Node]int{}
	for s, addr := range owners {
		n := c.Node(addr)
		if n == nil {
			c.t.Fatalf("rediscluster: slot %d served by unknown %s", s, addr)
		}
		if f, ok := first[n]; !ok || s < f {
			first[n] = s
		}
	}
	out := make([]*Node, 0, len(first))
	for n := range first {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return first[out[i]] < first[out[j]] })
	return out
}

// SlotOwners is slot → master address as the first running node sees it.
func (c *Cluster) SlotOwners() map[int]string {
	c.t.Helper()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if m, err := n.slotOwners(); err == nil {
			return m
		}
	}
	c.t.Fatalf("rediscluster: no node answers CLUSTER SLOTS")
	return nil
}

// MasterOf is the master serving a slot.
func (c *Cluster) MasterOf(slot int) *Node {
	c.t.Helper()
	n := c.Node(c.SlotOwners()[slot])
	if n == nil {
		c.t.Fatalf("rediscluster: no master serves slot %d", slot)
	}
	return n
}

// SlotsOf lists the slots a master serves, ascending.
func (c *Cluster) SlotsOf(master *Node) []int {
	var out []int
	for s, addr := range c.SlotOwners() {
		if addr == master.Addr() {
			out = append(out, s)
		}
	}
	sort.Ints(out)
	return out
}

// Reshard moves n slots from one master to another with
// `redis-cli --cluster reshard` (which takes the source's lowest slots and
// moves their keys with MIGRATE, pipeline keys at a time), then waits until
// the cluster agrees.
func (c *Cluster) Reshard(from, to *Node, n, pipeline int) {
	c.t.Helper()
	if pipeline <= 0 {
		pipeline = 10
	}
	args := []string{"--cluster", "reshard", from.Addr(), "--cluster-from", from.ID, "--cluster-to", to.ID,
		"--cluster-slots", strconv.Itoa(n), "--cluster-pipeline", strconv.Itoa(pipeline), "--cluster-yes"}
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		c.t.Fatalf("rediscluster: redis-cli %s: %v\n%s", strings.Join(args, " "), err, tail(out))
	}
	c.WaitOK()
}

// MoveOptions tune MoveSlots.
type MoveOptions struct {
	// KeysPerMigrate is how many keys one MIGRATE carries (default 10).
	KeysPerMigrate int
	// Batches, when set, overrides KeysPerMigrate per slot: its keys move
	// in about this many MIGRATEs, so a slot stays in migration for about
	// Batches × Pause however many keys the load has put in it.
	Batches int
	// Pause is slept between two MIGRATEs of one slot: it holds the slot
	// in its migrating state longer, so that clients meet ASK and TRYAGAIN.
	Pause time.Duration
}

// MoveSlots moves the given slots to a master, one slot at a time, with the
// sequence redis-cli uses: IMPORTING on the target, MIGRATING on the source,
// MIGRATE of its keys in batches, then SETSLOT NODE on the target, the
// source and every other master. Slots the target already serves are
// skipped. It returns an error instead of failing the test, so that it can
// run in a goroutine beside the load.
func (c *Cluster) MoveSlots(slots []int, to *Node, o MoveOptions) error {
	if o.KeysPerMigrate <= 0 {
		o.KeysPerMigrate = 10
	}
	ctx := context.Background()
	var owners map[int]string
	for _, n := range c.Nodes {
		if m, err := n.slotOwners(); err == nil {
			owners = m
			break
		}
	}
	if owners == nil {
		return fmt.Errorf("rediscluster: no node answers CLUSTER SLOTS")
	}
	for _, slot := range slots {
		from := c.Node(owners[slot])
		if from == nil {
			return fmt.Errorf("rediscluster: slot %d has no known master", slot)
		}
		if from == to {
			continue
		}
		s := strconv.Itoa(slot)
		perMigrate := o.KeysPerMigrate
		if o.Batches > 0 {
			n, err := from.do(ctx, "CLUSTER", "COUNTKEYSINSLOT", s).AsInt64()
			if err != nil {
				return fmt.Errorf("rediscluster: slot %d COUNTKEYSINSLOT: %w", slot, err)
			}
			perMigrate = max(1, int((n+int64(o.Batches)-1)/int64(o.Batches)))
		}
		if err := to.do(ctx, "CLUSTER", "SETSLOT", s, "IMPORTING", from.ID).Error(); err != nil {
			return fmt.Errorf("rediscluster: slot %d IMPORTING on %s: %w", slot, to.Addr(), err)
		}
		if err := from.do(ctx, "CLUSTER", "SETSLOT", s, "MIGRATING", to.ID).Error(); err != nil {
			return fmt.Errorf("rediscluster: slot %d MIGRATING on %s: %w", slot, from.Addr(), err)
		}
		for {
			keys, err := from.do(ctx, "CLUSTER", "GETKEYSINSLOT", s, strconv.Itoa(perMigrate)).AsStrSlice()
			if err != nil {
				return fmt.Errorf("rediscluster: slot %d GETKEYSINSLOT: %w", slot, err)
			}
			if len(keys) == 0 {
				break
			}
			args := append([]string{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "10000", "KEYS"}, keys...)
			if err := from.do(ctx, args...).Error(); err != nil {
				return fmt.Errorf("rediscluster: slot %d MIGRATE: %w", slot, err)
			}
			if o.Pause > 0 {
				time.Sleep(o.Pause)
			}
		}
		// Target first (it bumps its epoch and owns the slot), then the
		// source (stops answering ASK), then the others (saves a gossip round).
		if err := to.do(ctx, "CLUSTER", "SETSLOT", s, "NODE", to.ID).Error(); err != nil {
			return fmt.Errorf("rediscluster: slot %d NODE on target: %w", slot, err)
		}
		if err := from.do(ctx, "CLUSTER", "SETSLOT", s, "NODE", to.ID).Error(); err != nil {
			return fmt.Errorf("rediscluster: slot %d NODE on source: %w", slot, err)
		}
		for _, n := range c.Nodes {
			if n != to && n != from && n.Running() && owners[slot] != "" {
				_ = n.do(ctx, "CLUSTER", "SETSLOT", s, "NODE", to.ID).Error() // replicas refuse; gossip tells them
			}
		}
		owners[slot] = to.Addr()
	}
	return nil
}

// KeySlot is the hash slot of a key (CRC16 of its hash tag, mod 16384), as
// CLUSTER KEYSLOT computes it.
func KeySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % SlotsN)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021), Redis Cluster's key hash.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-LOADING"))
}

// freePorts picks a client port and a bus port on loopback.
func freePorts() (int, int, error) {
	var ports [2]int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports[0], ports[1], nil
}
