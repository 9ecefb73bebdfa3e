// Package ratelimit is a ulule/limiter/v3 Store on rueidis, so claim limits
// are counted in Redis and hold across every gateway process.
//
// The library's own Redis store is written for go-redis; this one keeps its
// semantics (a fixed window per key: INCRBY, PEXPIRE on the first hit, PTTL
// for the reset time) in two Lua scripts run through rueidis' auto-pipelining.
// Errors are returned, never panicked: the caller decides per rule whether a
// Redis failure fails closed or open. Keys are "<prefix>:<key>"; each key is
// its own slot in a cluster. GetMulti counts several keys (a claim's rule
// windows) in one round trip, each with Get's or Distinct's semantics.
package ratelimit

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
	"github.com/ulule/limiter/v3"
	"github.com/ulule/limiter/v3/drivers/store/common"
)

// incrSrc counts ARGV[1] against KEYS[1], a fixed window of ARGV[2] ms
// from its first count, and returns {count, pttl}.
const incrSrc = `
local ret = redis.call("INCRBY", KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ret == tonumber(ARGV[1]) then
  if ttl > 0 then redis.call("PEXPIRE", KEYS[1], ttl) end
  return {ret, ttl}
end
return {ret, redis.call("PTTL", KEYS[1])}
`

var (
	incrScript = rueidis.NewLuaScript(incrSrc)
	incrSHA    = sha1Hex(incrSrc)
)

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
	res := incrScript.Exec(ctx, s.c, []string{s.key(key)}, []string{strconv.FormatInt(count, 10), strconv.FormatInt(rate.Period.Milliseconds(), 10)})
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
	v, err := res.ToArray() // the reply's own elements: no copy
	if err != nil {
		return 0, 0, fmt.Errorf("ratelimit: %w", err)
	}
	if len(v) != 2 {
		return 0, 0, fmt.Errorf("ratelimit: script replied %d values, want 2", len(v))
	}
	n, err1 := v[0].AsInt64()
	ttl, err2 := v[1].AsInt64()
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("ratelimit: script reply: %w", errors.Join(err1, err2))
	}
	return n, ttl, nil
}

// distinctScript admits a member into a windowed set of at most ARGV[3]
// members and returns {count, pttl}: a known member counts as is; a new one
// is added while there is room, and when there is none it is NOT added and
// the count returned is one past the limit (refused). Refusals therefore
// never push the members already admitted over the limit.
// KEYS: 1 set  ARGV: 1 member  2 window ms  3 limit.
const distinctSrc = `
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
`

var (
	distinctScript = rueidis.NewLuaScript(distinctSrc)
	distinctSHA    = sha1Hex(distinctSrc)
)

// Distinct records member under key for the rate's period (a fixed window
// from the first member) and returns the context of the distinct count
// against rate.Limit: "at most Limit distinct members per Period".
func (s *Store) Distinct(ctx context.Context, key, member string, rate limiter.Rate) (limiter.Context, error) {
	return s.contextOf(distinctScript.Exec(ctx, s.c, []string{s.key(key)}, distinctArgs(member, rate)), rate)
}

func distinctArgs(member string, rate limiter.Rate) []string {
	return []string{member, strconv.FormatInt(rate.Period.Milliseconds(), 10), strconv.FormatInt(rate.Limit, 10)}
}

// Request is one count of a batch (GetMulti): Get(KeyPrefix+Key, Rate),
// or, with Distinct, Distinct(KeyPrefix+Key, Member, Rate). (The key comes
// in two parts so that the Redis key is built in one allocation.)
type Request struct {
	KeyPrefix, Key string
	Rate           limiter.Rate
	Distinct       bool
	Member         string
}

// Result is the answer to one Request.
type Result struct {
	Context limiter.Context
	Err     error
}

// GetMulti counts every request in one round trip: the requests' scripts
// are sent together as one pipelined write (EVALSHA each; rueidis sends
// the commands of one DoMulti back to back and, on a cluster, splits them
// by slot, each key still its own slot). Requests whose script Redis does
// not hold (NOSCRIPT: they did not run) are sent once more, together, with
// EVAL. Each count has exactly Get's or Distinct's semantics; out[i]
// answers reqs[i] (out must be at least as long as reqs).
func (s *Store) GetMulti(ctx context.Context, reqs []Request, out []Result) {
	if len(reqs) == 0 {
		return
	}
	cmds := make(rueidis.Commands, len(reqs))
	for i := range reqs {
		cmds[i] = s.command(&reqs[i], true)
	}
	var again []int
	for i, res := range s.c.DoMulti(ctx, cmds...) {
		if e, ok := rueidis.IsRedisErr(res.Error()); ok && e.IsNoScript() {
			again = append(again, i)
			continue
		}
		out[i].Context, out[i].Err = s.contextOf(res, reqs[i].Rate)
	}
	if len(again) == 0 {
		return
	}
	cmds = cmds[:0]
	for _, i := range again {
		cmds = append(cmds, s.command(&reqs[i], false))
	}
	for k, res := range s.c.DoMulti(ctx, cmds...) {
		i := again[k]
		out[i].Context, out[i].Err = s.contextOf(res, reqs[i].Rate)
	}
}

// command is the request's script call: EVALSHA, or EVAL with its text.
func (s *Store) command(r *Request, sha bool) rueidis.Completed {
	src, hash := incrSrc, incrSHA
	args := []string{"1", strconv.FormatInt(r.Rate.Period.Milliseconds(), 10)}
	if r.Distinct {
		src, hash, args = distinctSrc, distinctSHA, distinctArgs(r.Member, r.Rate)
	}
	if sha {
		return s.c.B().Evalsha().Sha1(hash).Numkeys(1).Key(s.prefix + ":" + r.KeyPrefix + r.Key).Arg(args...).Build()
	}
	return s.c.B().Eval().Script(src).Numkeys(1).Key(s.prefix + ":" + r.KeyPrefix + r.Key).Arg(args...).Build()
}

func sha1Hex(src string) string {
	sum := sha1.Sum([]byte(src))
	return hex.EncodeToString(sum[:])
}
