package stock

import "github.com/redis/rueidis"

// Reply status codes shared by the scripts. A reply is always an array whose
// first element is one of these, so "sold out" is never confused with "0
// remaining" (docs/formats.md lists every reply).
const (
	replyGranted     = 1 // {1, grantID, remainingOnShard}
	replyAlready     = 2 // {2, {grantIDs...}}
	replyEmpty       = 3 // {3, 0}: this shard has no stock
	replyNotInit     = 4 // {4}: the shard's stock key is missing (never initialised, or Redis lost it)
	replyReplay      = 5 // {5, grantID}: this attempt already granted; same grant returned
	replyTaken       = 6 // {6, amount}: transfer recorded on the donor
	replyInitialized = 7 // {7, created 0|1}
	replyCredited    = 8 // {8}: transfer credited (or already credited)
	replyNotEligible = 9 // {9, reason}: not in the targeted audience, or a wrong / used code
)

// claimScript is the claim logic. KEYS:
//
//	1 stock   2 granted   3 user's grant set   4 attempt record   5 incoming-transfer marker
//	6 eligibility: the shard's audience set (targeted) or the codes hash (code)
//	7 the shard's unsettled-grant hash
//
// ARGV: 1 grant id   2 per-user limit   3 attempt TTL seconds   4 transfer amount (0 = none)
//
//	5 audience mode: "" public | "t" targeted | "c" code   6 the user (t) or the code (c)
//	7 attempt record value ("<grant id>|<node>|<valid from>|<valid until>")
//	8 unsettled-grant value ("<node>|<encoded ledger record>")
//
// Order: credit a transfer → replay of this attempt → eligibility → per-user
// limit → stock; a code is marked used by the grant in the same step, and the
// grant's facts are recorded as unsettled for its node (see package comment).
//
// With ARGV[4] > 0 the script first credits a transfer taken from a donor
// shard, once per marker key (KEYS[5], SET NX): a re-run after a lost reply
// does not credit twice.
//
// A replay answers {5, attempt value, unsettled value or false}: the caller
// learns which node decided the grant and whether that node's ledger is
// known to hold it yet.
var claimScript = rueidis.NewLuaScript(`
local stock = redis.call('GET', KEYS[1])
if not stock then return {4} end
local amount = tonumber(ARGV[4])
if amount > 0 then
  if redis.call('SET', KEYS[5], '1', 'NX', 'EX', 604800) then
    stock = redis.call('INCRBY', KEYS[1], amount)
  end
end
local prior = redis.call('GET', KEYS[4])
if prior then
  local gid = string.match(prior, '^[^|]*')
  return {5, prior, redis.call('HGET', KEYS[7], gid)}
end
local mode = ARGV[5]
if mode == 't' then
  if redis.call('SISMEMBER', KEYS[6], ARGV[6]) == 0 then return {9, 'not in the audience'} end
elseif mode == 'c' then
  local st = redis.call('HGET', KEYS[6], ARGV[6])
  if not st then return {9, 'unknown code'} end
  if st ~= '' then return {9, 'code already used'} end
end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[2]) then
  return {2, redis.call('SMEMBERS', KEYS[3])}
end
stock = tonumber(stock)
if stock <= 0 then return {3, 0} end
redis.call('DECR', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[3])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[8])
if mode == 'c' then redis.call('HSET', KEYS[6], ARGV[6], ARGV[1]) end
return {1, ARGV[1], stock - 1}
`)

// attemptScript reads an attempt record and, when it names a grant, that
// grant's unsettled value. KEYS: 1 attempt record  2 unsettled hash.
// Reply: {5, attempt value, unsettled value or false} or {0}.
var attemptScript = rueidis.NewLuaScriptReadOnly(`
local prior = redis.call('GET', KEYS[1])
if not prior then return {0} end
local gid = string.match(prior, '^[^|]*')
return {5, prior, redis.call('HGET', KEYS[2], gid)}
`)

// takeScript moves up to ARGV[2] units out of a donor shard into a pending
// transfer record, atomically. KEYS: 1 stock   2 pending transfers (hash)
// 3 the transfer's finished-tombstone.
// ARGV: 1 transfer id   2 amount wanted   3 recipient shard   4 now (unix ms)
// Re-running it with the same transfer id returns the first answer; a run
// that arrives after the transfer finished (a late duplicate) takes nothing
// and answers {6, 0}.
var takeScript = rueidis.NewLuaScript(`
if redis.call('EXISTS', KEYS[3]) == 1 then return {6, 0} end
local prior = redis.call('HGET', KEYS[2], ARGV[1])
if prior then
  local k = string.match(prior, '^%d+:(%d+):')
  return {6, tonumber(k)}
end
local s = redis.call('GET', KEYS[1])
if not s then return {4} end
s = tonumber(s)
if s <= 0 then return {3, 0} end
local k = math.min(s, tonumber(ARGV[2]))
redis.call('DECRBY', KEYS[1], k)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ':' .. k .. ':' .. ARGV[4])
return {6, k}
`)

// finishScript ends a credited transfer on its donor: the pending record is
// deleted and a tombstone (TTL 7 days, as long as the credit marker) stops
// any late duplicate of its take. KEYS: 1 pending transfers  2 tombstone.
// ARGV: 1 transfer id.
var finishScript = rueidis.NewLuaScript(`
redis.call('SET', KEYS[2], '1', 'EX', 604800)
redis.call('HDEL', KEYS[1], ARGV[1])
return {8}
`)

// creditScript lands a pending transfer on its recipient without claiming
// (used by the sweeper). KEYS: 1 stock   2 incoming-transfer marker
// ARGV: 1 amount
var creditScript = rueidis.NewLuaScript(`
if not redis.call('GET', KEYS[1]) then return {4} end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 604800) then
  redis.call('INCRBY', KEYS[1], ARGV[1])
end
return {8}
`)

// initScript creates a shard, or finds it exactly as this script creates it.
// KEYS: the shard's stateKeys (1 stock  2 granted  3 alloc  4 xfer  5 aud
// 6 codes)   ARGV: 1 units. Reply {7, initCreated | initSame | initOther};
// with initOther nothing is written (the shard holds other state).
var initScript = rueidis.NewLuaScript(`
local s = redis.call('GET', KEYS[1])
if not s then
  if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]) > 0 then return {7, -1} end
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], '0')
  redis.call('SET', KEYS[3], ARGV[1])
  return {7, 1}
end
if s == ARGV[1] and redis.call('GET', KEYS[3]) == ARGV[1] and redis.call('GET', KEYS[2]) == '0'
   and redis.call('EXISTS', KEYS[4], KEYS[5], KEYS[6]) == 0 then
  return {7, 0}
end
return {7, -1}
`)

// allotScript raises a shard's allotment to a target (PATCH add_stock /
// budget, and every gateway's convergence loop). KEYS: 1 stock  2 alloc
// ARGV: 1 target. If target > alloc, stock += target - alloc and alloc =
// target; otherwise nothing. Reply {7, units added} or {4} when the shard is
// not initialised. A shard created before allotments were recorded (stock
// but no alloc) adopts the target as its allotment without adding: the
// caller passes the committed total it already holds first (package comment).
var allotScript = rueidis.NewLuaScript(`
if not redis.call('GET', KEYS[1]) then return {4} end
local t = tonumber(ARGV[1])
local a = redis.call('GET', KEYS[2])
if not a then
  redis.call('SET', KEYS[2], ARGV[1])
  return {7, 0}
end
a = tonumber(a)
if t <= a then return {7, 0} end
redis.call('INCRBY', KEYS[1], t - a)
redis.call('SET', KEYS[2], ARGV[1])
return {7, t - a}
`)

// shardScript reads one shard consistently: {stock (-1 if missing), granted,
// units in pending outgoing transfers, unsettled grants}.
// KEYS: 1 stock  2 granted  3 transfers  4 unsettled grants.
var shardScript = rueidis.NewLuaScriptReadOnly(`
local s = redis.call('GET', KEYS[1])
if not s then s = -1 end
local g = redis.call('GET', KEYS[2]) or 0
local pending = 0
for _, rec in ipairs(redis.call('HVALS', KEYS[3])) do
  local k = string.match(rec, '^%d+:(%d+):')
  if k then pending = pending + tonumber(k) end
end
return {tonumber(s), tonumber(g), pending, redis.call('HLEN', KEYS[4])}
`)

// probeScript reads what a shard holds, for Init's leftover check. KEYS: the
// shard's stateKeys. Reply {stock, granted, alloc (each -1 if missing),
// pending transfers, audience size, codes}.
var probeScript = rueidis.NewLuaScriptReadOnly(`
local function num(k)
  local v = redis.call('GET', k)
  if not v then return -1 end
  return tonumber(v)
end
return {num(KEYS[1]), num(KEYS[2]), num(KEYS[3]), redis.call('HLEN', KEYS[4]), redis.call('SCARD', KEYS[5]), redis.call('HLEN', KEYS[6])}
`)
