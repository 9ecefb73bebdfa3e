package gateway

import (
	"context"
	"time"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
)

const (
	// unknownOutcomesMax bounds claims awaiting settlement; past it the
	// oldest are left to the audit/reconciliation (issue 3) rather than grow memory.
	unknownOutcomesMax = 100_000
	// unknownSettleDelay: a script sent on a connection that failed has run
	// or been dropped well before this; only then is "no record" final.
	unknownSettleDelay = 5 * time.Second
	// unknownSettleAge bounds how long one entry is retried (Redis down longer
	// than this leaves it to reconciliation). Below the attempt TTL (10 min).
	unknownSettleAge = 5 * time.Minute
)

// unknownClaim is a claim whose stock script may have run although its reply
// never arrived (timeout, Redis stopped). The client was answered 503.
type unknownClaim struct {
	at      time.Time
	c       *campaign.Campaign
	in      claimInput
	attempt string
}

// noteUnknown queues a claim for settlement, dropping it if the queue is full.
func (g *Gateway) noteUnknown(u unknownClaim) {
	select {
	case g.unknown <- u:
	default:
		g.metrics.unknownDropped.Inc()
	}
}

// settleUnknown resolves queued claims once unknownSettleDelay has passed: if
// the attempt's idempotency record exists, the grant happened in Redis and is
// appended to the ledger (the user holds it and sees it in their coupons);
// otherwise the script never ran and nothing is owed. Ends with ctx.
func (g *Gateway) settleUnknown(ctx context.Context) {
	for {
		var u unknownClaim
		select {
		case <-ctx.Done():
			return
		case u = <-g.unknown:
		}
		if wait := time.Until(u.at.Add(unknownSettleDelay)); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		for ctx.Err() == nil {
			if g.settleOne(ctx, &u) || time.Since(u.at) > unknownSettleAge {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

func (g *Gateway) settleOne(ctx context.Context, u *unknownClaim) bool {
	st := g.stock()
	if st == nil {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	id, found, err := st.AttemptGrant(rctx, u.c.ID, u.c.Shards, u.in.user, u.attempt)
	if err != nil {
		return false
	}
	if !found {
		return true
	}
	res := stock.Result{Outcome: stock.Granted, GrantID: id, Replay: true, Shard: stock.HomeShard(u.in.user, u.c.Shards)}
	if _, err := g.appendGrant(rctx, u.c, &u.in, &res, u.at); err != nil {
		return false
	}
	g.metrics.unknownSettled.Inc()
	g.log.Info("settled a claim of unknown outcome: grant recorded", "grant_id", id, "campaign", u.c.ID, "user", u.in.user)
	return true
}
