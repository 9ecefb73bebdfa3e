package rediscluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// TestClusterHarness: the cluster forms on explicit bus ports, KeySlot agrees
// with CLUSTER KEYSLOT, a slot with keys moves to another master and its keys
// follow, a killed master keeps its data across a restart and loses it when
// wiped.
func TestClusterHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("Redis Cluster harness skipped in -short")
	}
	c := Start(t, Options{})
	masters := c.Masters()
	if len(masters) != 3 {
		t.Fatalf("%d masters, want 3", len(masters))
	}
	for _, n := range c.Nodes {
		if n.BusPort == n.Port+10000 {
			t.Errorf("node %s: bus port not chosen explicitly", n.Addr())
		}
	}
	for _, key := range []string{"a", "fg:{drop.7}:stock", "{}x", "{user1000}.following", "foo{}{bar}", "123456789"} {
		want, err := masters[0].Do("CLUSTER", "KEYSLOT", key).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if got := KeySlot(key); got != int(want) {
			t.Errorf("KeySlot(%q) = %d, CLUSTER KEYSLOT says %d", key, got, want)
		}
	}

	cl, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: c.Addrs(), DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	const tag = "{harness}"
	slot := KeySlot(tag)
	for i := 0; i < 25; i++ {
		if err := cl.Do(ctx, cl.B().Set().Key(fmt.Sprintf("%s:%d", tag, i)).Value("v").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	from := c.MasterOf(slot)
	var to *Node
	for _, m := range masters {
		if m != from {
			to = m
			break
		}
	}
	if err := c.MoveSlots([]int{slot}, to, MoveOptions{KeysPerMigrate: 3, Pause: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	c.WaitOK()
	if got := c.MasterOf(slot); got != to {
		t.Fatalf("slot %d served by %s after the move, want %s", slot, got.Addr(), to.Addr())
	}
	if n, err := to.Do("CLUSTER", "COUNTKEYSINSLOT", fmt.Sprint(slot)).AsInt64(); err != nil || n != 25 {
		t.Fatalf("target holds %d keys of the slot (%v), want 25", n, err)
	}
	for i := 0; i < 25; i++ { // the client follows MOVED
		if v, err := cl.Do(ctx, cl.B().Get().Key(fmt.Sprintf("%s:%d", tag, i)).Build()).ToString(); err != nil || v != "v" {
			t.Fatalf("key %d after the move: %q %v", i, v, err)
		}
	}

	to.Kill()
	to.Restart(false)
	if n, err := to.Do("CLUSTER", "COUNTKEYSINSLOT", fmt.Sprint(slot)).AsInt64(); err != nil || n != 25 {
		t.Fatalf("after a restart with data the master holds %d keys (%v), want 25", n, err)
	}
	to.Kill()
	to.Restart(true)
	if n, err := to.Do("CLUSTER", "COUNTKEYSINSLOT", fmt.Sprint(slot)).AsInt64(); err != nil || n != 0 {
		t.Fatalf("after a wiped restart the master holds %d keys (%v), want 0", n, err)
	}
	if got := c.MasterOf(slot); got != to {
		t.Fatalf("wiped master lost its slots: slot %d served by %s", slot, got.Addr())
	}

	// redis-cli's reshard moves the source's lowest slots.
	low := c.SlotsOf(masters[0])[0]
	c.Reshard(masters[0], masters[1], 50, 10)
	if got := c.MasterOf(low); got != masters[1] {
		t.Fatalf("slot %d served by %s after reshard, want %s", low, got.Addr(), masters[1].Addr())
	}
}
