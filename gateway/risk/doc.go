// Package risk is a gateway's live risk control: the rules and blacklist of
// the NATS KV bucket flashgate-risk (every gateway watches it), the claim
// check against them (Check returns a Verdict), the alerts they raise
// (published on NATS, kept for the admin API, POSTed to a webhook) and the
// audit log of rule and blacklist changes (JetStream stream RISK_AUDIT). The
// rules themselves are pure code in package antifraud; this package does
// their I/O: the bucket, counts in Redis (ulule/limiter on gateway/ratelimit),
// NATS and HTTP. It serves no HTTP itself (internal/lint: no fasthttp); the
// admin handlers in package gateway decode, call it and answer.
//
// Bucket keys (values are JSON):
//
//	rules                        antifraud.Rules
//	bl.<kind>.<base64url value>  antifraud.Entry of that kind and (normalized) value
//
// A value that does not decode or validate is logged and ignored: the last
// good rules stay in force.
//
// Invariants:
//   - The rules in force are one immutable compiled set behind an atomic
//     pointer. Every limiter of a set is built when the set is installed
//     (at most antifraud.LimitsMax × antifraud.WindowsMax of them), and the
//     set is compiled once more when Redis connects (SetRedis); the claim
//     path builds none. Installs are serialized, so a set compiled without
//     Redis never replaces one compiled with it.
//   - The over-limit cache holds at most overLimitCacheMax keys, each only
//     until its window resets: Run's evictor drops reset keys every
//     overLimitEvictInterval, and a new rule set empties it.
//   - One clock: every rule, window, cool-down and staleness decision reads
//     the now its caller passes or Options.Clock (the gateway's); nothing
//     here calls time.Now for them. (A limit's reset instant comes from
//     gateway/ratelimit, which turns Redis's TTL into wall-clock time.)
//   - At most alertsKeptMax alerts are kept for the admin API and at most
//     webhookQueueMax wait for the webhook; more are dropped and counted.
//
// Goroutines: Run starts the bucket watch, the alert collector (a NATS
// subscription), the webhook deliverer and the over-limit evictor; each ends
// when Run's context ends, and Run returns once all have. Check,
// ObserveOutcome, ObserveStock and the admin methods run in their callers'
// goroutines and share atomics, the blacklist and detector (each with its own
// lock), the over-limit sync.Map and the alert ring (a mutex).
package risk
