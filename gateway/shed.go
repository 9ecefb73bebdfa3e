package gateway

// Load shedding of claims. Every claim in progress holds a slot; at most
// claim.inflight_max are held at once, and a claim that finds none is
// answered 503 unavailable (Retry-After) at once, before any work: no token
// verification, no Redis, no ledger. Without the bound, a burst beyond what
// the gateway serves queues inside it — every claim waits behind all the
// others for Redis, the ledger and the CPU until claim.timeout, then answers
// 503 anyway, and memory grows with the queue. With it, the admitted claims
// keep their latency and the excess learns at once to come back later. A
// shed claim did nothing, so the API's 503 promise holds: nothing was
// acknowledged, and a retry with the same Idempotency-Key is safe.

// overloaded is the answer of a claim that found no slot.
func overloaded() outcome {
	return unavailable("overloaded: too many claims in progress; retry with the same Idempotency-Key")
}

// claimSlot takes a claim slot, or reports that every slot is held (and
// counts the shed claim).
func (g *Gateway) claimSlot() bool {
	if g.claimsInFlight.Add(1) > int64(g.cfg.Claim.InflightMax) {
		g.claimsInFlight.Add(-1)
		g.metrics.claimsShed.Inc()
		return false
	}
	return true
}

// releaseClaimSlot gives back a slot taken by claimSlot.
func (g *Gateway) releaseClaimSlot() { g.claimsInFlight.Add(-1) }
