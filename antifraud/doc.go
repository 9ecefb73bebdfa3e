// Package antifraud holds flashgate's risk rules as pure code: per-IP /
// per-/24 (/64 for IPv6) / per-device / per-user claim limits and distinct
// devices per user, each with one or more windows,
// blacklists of IPs, CIDRs, devices and users, alert thresholds with
// cool-downs, and shadow mode. It does no I/O (internal/lint enforces it)
// and never reads the clock: every decision takes `now` from the caller.
//
// The gateway feeds it requests and applies its verdicts; the counting of
// limits across gateways happens in Redis (gateway/ratelimit) with these
// rules' windows. Concurrency: Blacklist and Detector are safe for
// concurrent use (a read lock per lookup; one mutex per detector); Rules are
// immutable once validated.
//
// Memory is bounded: a Detector keeps at most keysMax windows and keysMax
// cool-down records, each map threaded on a list in the order its keys were
// last observed. A new key past the bound evicts the least recently
// observed one, so a flood of fresh keys evicts its own oldest keys and the
// counters of keys observed meanwhile survive it.
package antifraud
