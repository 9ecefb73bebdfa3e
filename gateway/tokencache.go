package gateway

import (
	"hash/maphash"
	"sync"
	"time"
)

const (
	// tokenCacheShards spreads lock contention over handler goroutines.
	tokenCacheShards = 64
	// tokenCacheMax bounds verified tokens kept (≈ 1 KiB each with the key):
	// a drop's active users, about 256 MiB at most.
	tokenCacheMax = 256 << 10
)

// tokenCache remembers tokens that passed full verification, keyed by their
// exact bytes (signature included: a token that differs in any byte is a
// miss and is verified in full). A hit still checks exp against the clock.
// Bounded: a full shard evicts an arbitrary entry before inserting.
type tokenCache struct {
	seed   maphash.Seed
	shards [tokenCacheShards]tokenShard
}

type tokenShard struct {
	mu sync.Mutex
	m  map[string]cachedToken
}

type cachedToken struct {
	sub string
	exp time.Time
}

func newTokenCache() *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]cachedToken)
	}
	return c
}

func (c *tokenCache) shard(tok []byte) *tokenShard {
	return &c.shards[maphash.Bytes(c.seed, tok)%tokenCacheShards]
}

// get returns the subject of a cached, unexpired token.
func (c *tokenCache) get(tok []byte, now time.Time) (string, bool) {
	s := c.shard(tok)
	s.mu.Lock()
	e, ok := s.m[string(tok)]
	if ok && !now.Before(e.exp) {
		delete(s.m, string(tok))
		ok = false
	}
	s.mu.Unlock()
	return e.sub, ok
}

func (c *tokenCache) put(tok []byte, sub string, exp time.Time) {
	s := c.shard(tok)
	s.mu.Lock()
	if len(s.m) >= tokenCacheMax/tokenCacheShards {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[string(tok)] = cachedToken{sub: sub, exp: exp}
	s.mu.Unlock()
}
