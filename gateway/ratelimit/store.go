// Package ratelimit is a ulule/limiter/v3 Store on rueidis, so claim limits
// are counted in Redis and hold across every gateway process.
//
// The library's own Redis store is written for go-redis; this one keeps its
// semantics (a fixed window per key: INCRBY, PEXPIRE on the first hit, PTTL
// for the reset time) in two Lua scripts run through rueidis' auto-pipelining.
// Errors are returned, never panicked: the caller decides per rule whether a
// Redis failure fails closed or open. Keys are "<prefix>:<key>"; each key is
// its own slot in a cluster.
package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
	"github.com/ulule/limiter/v3"
	"github.com/ulule/limiter/v3/drivers/store/common"
)

var incrScript = rueidis.NewLuaScript(`
local ret = redis.call("INCRBY", KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ret == tonumber(ARGV[1]) then
  if ttl > 0 then redis.call("PEXPIRE", KEYS[1], ttl) end
  return {ret, ttl}
end
return {ret, redis.call("PTTL", KEYS[1])}
`)

var peekScript = rueidis.NewLuaScriptReadOnly(`
local v = redis.call("GET", KEYS[1])
if not v then return {0, 0} end
return {tonumber(v), redis.call("PTTL", KEYS[1])}
`)

// Store implements limiter.Store.
type Store struct {
	c      rueidis.Client
	prefix string
	clock  func() time.Time
}

var _ limiter.Store = (*Store)(nil)

// New returns a store writing keys under prefix. clock (nil: time.Now) is
// the time a window's reset is reported in: Redis keeps the window as a TTL,
// and the reset is clock's now plus that TTL, so callers comparing resets
// with their own clock (the risk over-limit cache) agree with it.
func New(c rueidis.Client, prefix string, clock func() time.Time) *Store {
	if clock == nil {
		clock = time.Now
	}
	return &Store{c: c, prefix: prefix, clock: clock}
}

func (s *Store) key(k string) string { return s.prefix + ":" + k }

// Get increments the key by one and returns the limit context.
func (s *Store) Get(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	return s.Increment(ctx, key, 1, rate)
}

// Increment increments the key by count.
func (s *Store) Increment(ctx context.Context, key string, count int64, rate limiter.Rate) (limiter.Context, error) {
	res := incrScript.Exec(ctx, s.c, []string{s.key(key)}, []string{fmt.Sprint(count), fmt.Sprint(rate.Period.Milliseconds())})
	return s.contextOf(res, rate)
}

// contextOf turns a {count, pttl} reply into the library's Context.
func (s *Store) contextOf(res rueidis.RedisResult, rate limiter.Rate) (limiter.Context, error) {
	n, ttl, err := countTTL(res)
	if err != nil {
		return limiter.Context{}, err
	}
	now := s.clock()
	exp := now.Add(rate.Period)
	if ttl > 0 {
		exp = now.Add(time.Duration(ttl) * time.Millisecond)
	}
	return common.GetContextFromState(now, rate, exp, n), nil
}

// Peek returns the context without counting.
func (s *Store) Peek(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	return s.contextOf(peekScript.Exec(ctx, s.c, []string{s.key(key)}, nil), rate)
}

// Reset deletes the key.
func (s *Store) Reset(ctx context.Context, key string, rate limiter.Rate) (limiter.Context, error) {
	if err := s.c.Do(ctx, s.c.B().Del().Key(s.key(key)).Build()).Error(); err != nil {
		return limiter.Context{}, fmt.Errorf("ratelimit: reset: %w", err)
	}
	now := s.clock()
	return common.GetContextFromState(now, rate, now.Add(rate.Period), 0), nil
}

func countTTL(res rueidis.RedisResult) (int64, int64, error) {
	v, err := res.AsIntSlice()
	if err != nil {
		return 0, 0, fmt.Errorf("ratelimit: %w", err)
	}
	if len(v) != 2 {
		return 0, 0, fmt.Errorf("ratelimit: script replied %d values, want 2", len(v))
	}
	return v[0], v[1], nil
}

// distinctScript admits a member into a windowed set of at most ARGV[3]
// members and returns {count, pttl}: a known member counts as is; a new one
// is added while there is room, and when there is none it is NOT added and
// the count returned is one past the limit (refused). Refusals therefore
// never push the members already admitted over the limit.
// KEYS: 1 set  ARGV: 1 member  2 window ms  3 limit.
var distinctScript = rueidis.NewLuaScript(`
local n = redis.call("SCARD", KEYS[1])
if redis.call("SISMEMBER", KEYS[1], ARGV[1]) == 1 then
  return {n, redis.call("PTTL", KEYS[1])}
end
if n >= tonumber(ARGV[3]) then
  return {n + 1, redis.call("PTTL", KEYS[1])}
end
redis.call("SADD", KEYS[1], ARGV[1])
if n == 0 then redis.call("PEXPIRE", KEYS[1], ARGV[2]) end
return {n + 1, redis.call("PTTL", KEYS[1])}
`)

// Distinct records member under key for the rate's period (a fixed window
// from the first member) and returns the context of the distinct count
// against rate.Limit: "at most Limit distinct members per Period".
func (s *Store) Distinct(ctx context.Context, key, member string, rate limiter.Rate) (limiter.Context, error) {
	return s.contextOf(distinctScript.Exec(ctx, s.c, []string{s.key(key)}, []string{member, fmt.Sprint(rate.Period.Milliseconds()), fmt.Sprint(rate.Limit)}), rate)
}
