package gateway

import (
	"context"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/audit"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

// The audit of a running gateway (package audit does the comparing):
// GET /admin/v1/audit, and the Audit methods tests and tools call.

// adminAudit serves GET /admin/v1/audit.
func (g *Gateway) adminAudit(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := g.Audit(rctx)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	adminJSON(ctx, fasthttp.StatusOK, rep)
}

// NodeID is this gateway's name (config node_id, default the host name).
func (g *Gateway) NodeID() string { return g.cfg.Node() }

// Audit compares, per campaign, Redis counters, this gateway's ledger, the
// stream and the store, and names every violation of I1, I2, I5 and I6.
// It assumes this gateway's ledger is the only one (one node); with several
// nodes, audit them together with AuditLedgers.
func (g *Gateway) Audit(ctx context.Context) (audit.Report, error) { return g.AuditLedgers(ctx, nil) }

// AuditLedgers audits this gateway's ledger (with the live relay cursor)
// together with others (the ledgers of stopped gateways of the same fleet):
// the union of their grants is compared with Redis and the store.
func (g *Gateway) AuditLedgers(ctx context.Context, others []*ledger.Ledger) (audit.Report, error) {
	src := audit.Sources{Node: g.NodeID(), Ledgers: []audit.Ledger{{Ledger: g.ledger, Relayed: g.relay.Cursor()}},
		RelayBacklog: g.relay.Backlog(), Stock: g.stock(), Campaigns: g.reg.List(), Store: g.store}
	for _, l := range others {
		a, err := audit.Stopped(l)
		if err != nil {
			return audit.Report{Node: src.Node, RelayBacklog: src.RelayBacklog}, err
		}
		src.Ledgers = append(src.Ledgers, a)
	}
	return audit.Run(ctx, src)
}

// AuditSettled runs Audit until it finds no violation or timeout ends (the
// pipeline drains for a moment after a load), returning the last report.
func (g *Gateway) AuditSettled(ctx context.Context, timeout time.Duration) (audit.Report, error) {
	var rep audit.Report
	var err error
	wait.Until(ctx, timeout, func() bool {
		rep, err = g.Audit(ctx)
		return err == nil && rep.Violations == 0
	})
	return rep, err
}
