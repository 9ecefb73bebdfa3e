package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
)

// Units follow the definition. A campaign's definition (the NATS KV bucket)
// decides its units; the shards are brought up to the committed total by
// stock.Allot, which is absolute and idempotent. The PATCH that committed a
// change does it before answering (admin_campaigns.go); every gateway also
// does it when its watch sees a definition change, and once a tick for every
// campaign whose committed total it has not yet seen on the shards, so a
// change whose PATCH died after the commit still reaches the shards.
//
// A gateway clears its local sold-out flag for a campaign whose units grew
// only after the new units are on the shards, so the flag is never cleared
// for a re-probe that would find them missing.

const (
	// allotQueueMax bounds definition changes waiting for the allotment
	// loop; a change that does not fit is picked up by the next tick.
	allotQueueMax = 256
	// allotInterval is the tick of the allotment loop.
	allotInterval = 2 * time.Second
	// allotTimeout bounds one campaign's allotment (a script per shard).
	allotTimeout = 5 * time.Second
)

// allotState is a gateway's memory of the unit totals it has seen put on
// the shards (campaign id -> int64), and the queue of changed campaigns.
type allotState struct {
	queue chan string
	done  sync.Map
}

// allotUnits puts a committed definition's units on its shards, then lets
// claims re-probe a sold-out campaign at once.
func (g *Gateway) allotUnits(ctx context.Context, st *stock.Store, c *campaign.Campaign) error {
	units := c.Units()
	if err := st.Allot(ctx, c.ID, c.Shards, units); err != nil {
		return err
	}
	for {
		prev, loaded := g.allot.done.LoadOrStore(c.ID, units)
		if !loaded || prev.(int64) >= units || g.allot.done.CompareAndSwap(c.ID, prev, units) {
			break
		}
	}
	g.soldOutFlag(c.ID).Store(0)
	return nil
}

// allotNeeded reports whether this gateway has not yet seen the campaign's
// committed units on its shards. Deleted campaigns too: units committed
// just before a DELETE still belong on the shards (nobody can claim them),
// or Redis and the definition would disagree for good.
func (g *Gateway) allotNeeded(c *campaign.Campaign) bool {
	prev, ok := g.allot.done.Load(c.ID)
	return !ok || prev.(int64) < c.Units()
}

// definitionChanged is called from the campaign watch goroutine: it must not
// block, so the allotment is queued.
func (g *Gateway) definitionChanged(id string) {
	select {
	case g.allot.queue <- id:
	default: // full: the next tick allots; until then claims re-probe as before
		g.soldOutFlag(id).Store(0)
	}
}

// allotLoop allots queued definition changes at once, and every campaign
// that needs it each tick. It ends with ctx.
func (g *Gateway) allotLoop(ctx context.Context) {
	t := time.NewTicker(allotInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-g.allot.queue:
			c, ok := g.reg.Get(id)
			if !ok || !g.allotNeeded(c) {
				g.soldOutFlag(id).Store(0) // not a change of units: re-probe at once
				continue
			}
			g.allotOne(ctx, c)
		case <-t.C:
			for _, c := range g.reg.List() {
				if g.allotNeeded(c) {
					g.allotOne(ctx, c)
				}
			}
		}
	}
}

func (g *Gateway) allotOne(ctx context.Context, c *campaign.Campaign) {
	st := g.stock()
	if st == nil {
		return
	}
	actx, cancel := context.WithTimeout(ctx, allotTimeout)
	defer cancel()
	if err := g.allotUnits(actx, st, c); err != nil {
		g.log.Warn("campaign units not yet on the shards; retrying", "campaign", c.ID, "units", c.Units(), "err", err)
	}
}
