package gateway

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/internal/rediscluster"
)

// TestKeySlotIsRedisClusters: the readiness probe places shards on masters
// with the hash slot Redis Cluster computes (CRC16/XMODEM of the hash tag).
func TestKeySlotIsRedisClusters(t *testing.T) {
	if got := keySlot("123456789"); got != 12739 { // the CRC16 check value, 0x31C3
		t.Fatalf("keySlot(123456789) = %d, want 12739", got)
	}
	for i := 0; i < 200; i++ {
		for _, k := range []string{stock.StockKey(fmt.Sprint("c", i), i%32), fmt.Sprint("plain-", i), fmt.Sprintf("{}x%d", i), fmt.Sprintf("a{b%d}{c}", i)} {
			if got, want := int(keySlot(k)), rediscluster.KeySlot(k); got != want {
				t.Fatalf("keySlot(%q) = %d, want %d", k, got, want)
			}
		}
	}
	if keySlot(stock.StockKey("drop", 3)) != keySlot(stock.UnsettledKey("drop", 3)) {
		t.Fatal("keys of one shard in two slots")
	}
}

// TestRedisReadinessPerMaster: a master that is down makes Redis degraded
// while a master holding live shards answers; readiness fails only when no
// master holding a live shard (or no master at all) answers.
func TestRedisReadinessPerMaster(t *testing.T) {
	up := func(addr string, live int) redisMaster {
		return redisMaster{Addr: addr, Status: "ok", LiveShards: live, up: true}
	}
	down := func(addr string, live int) redisMaster {
		return redisMaster{Addr: addr, Status: "connection refused", LiveShards: live}
	}
	for _, tc := range []struct {
		name    string
		rep     redisReport
		ready   bool
		prefix  string
		mention string
	}{
		{"all up", redisReport{masters: []redisMaster{up("a", 10), up("b", 11), up("c", 11)}}, true, "ok", ""},
		{"one of three down", redisReport{masters: []redisMaster{up("a", 10), down("b", 11), up("c", 11)}}, true, "degraded: 1 of 3 masters down, 11 of 32 live shards", "b (11 live shards: connection refused)"},
		{"two of three down", redisReport{masters: []redisMaster{down("a", 10), down("b", 11), up("c", 11)}}, true, "degraded: 2 of 3 masters down", "a (10"},
		{"down without live shards", redisReport{masters: []redisMaster{up("a", 32), down("b", 0)}}, true, "degraded: 1 of 2 masters down, 0 of 32", "b (0"},
		{"only masters without live shards answer", redisReport{masters: []redisMaster{down("a", 32), up("b", 0)}}, false, "no master holding a live shard answers", "a (32"},
		{"every master down", redisReport{masters: []redisMaster{down("a", 0), down("b", 0)}}, false, "no Redis master answers", "b (0"},
		{"no live campaign", redisReport{masters: []redisMaster{up("a", 0), up("b", 0)}}, true, "ok", ""},
		{"single Redis down", redisReport{masters: []redisMaster{down("127.0.0.1:6379", 4)}}, false, "no Redis master answers", "127.0.0.1:6379"},
		{"no node answers", redisReport{err: errors.New("no Redis node gives the slot map: refused")}, false, "no Redis node gives the slot map", ""},
	} {
		msg, ok := tc.rep.readiness()
		if ok != tc.ready || !strings.HasPrefix(msg, tc.prefix) || !strings.Contains(msg, tc.mention) {
			t.Errorf("%s: readiness = %v %q, want %v %q… naming %q", tc.name, ok, msg, tc.ready, tc.prefix, tc.mention)
		}
	}
}
