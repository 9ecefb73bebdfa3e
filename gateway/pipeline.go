package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/status"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/sink"
	"github.com/flashgate/flashgate/ledger/store"
)

const (
	reconcileCursor = "reconcile"
	// reconcileChunk is grants checked against the store per query.
	reconcileChunk = store.BatchMax
	// reconcileChunksPerTick bounds one reconciliation pass.
	reconcileChunksPerTick = 200
	// snapshotQueueMax bounds campaign snapshots waiting to be stored; when
	// full, a change is skipped (the next change of the campaign writes it).
	snapshotQueueMax = 1024
	// myCouponsMax bounds GET /v1/me/coupons.
	myCouponsMax = 200
)

type pipelineState struct {
	reconcileMissing atomic.Int64 // grants found missing in the last pass
	republished      atomic.Int64
	setAsidePassed   atomic.Int64 // grants the store cannot hold that the cursor passed
}

// NodeID is this gateway's name (config node_id, default the host name).
func (g *Gateway) NodeID() string {
	if g.cfg.NodeID != "" {
		return g.cfg.NodeID
	}
	h, _ := os.Hostname()
	return "gw-" + h
}

// storeDSN is store.dsn, defaulting to an SQLite file in data_dir.
func (c *Config) storeDSN() string {
	if c.Store.DSN == "" && c.Store.Driver == "sqlite" {
		return filepath.Join(c.DataDir, "grants.db")
	}
	return c.Store.DSN
}

func (g *Gateway) openPipeline(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var err error
	if g.store, err = store.Open(sctx, g.cfg.Store.Driver, g.cfg.storeDSN()); err != nil {
		return err
	}
	streamCfg := relay.StreamConfig(g.cfg.NATS.Replicas, g.cfg.NATS.DedupWindow, g.cfg.NATS.StreamMaxAge)
	if _, err := g.js.CreateOrUpdateStream(sctx, streamCfg); err != nil {
		return fmt.Errorf("gateway: GRANTS stream: %w", err)
	}
	// The relay publishes under the ledger's identity, not node_id: message
	// ids (node:first:last) and the resume subject must be unique per
	// ledger, and two gateways may share a host name or a node_id.
	g.relay, err = relay.New(relay.Options{Ledger: g.ledger, JS: g.js, Node: g.ledger.ID(), Logger: g.log, Stream: streamCfg})
	if err != nil {
		return err
	}
	if g.cfg.Sink.Embedded {
		if g.sink, err = sink.New(sink.Options{JS: g.js, Store: g.store, Logger: g.log}); err != nil {
			return err
		}
	}
	g.metrics.registerPipeline(g)
	return nil
}

// reconcile walks the ledger behind the relay and checks that every grant
// older than relay.reconcile_grace is in the store; missing ones are
// published again (JetStream dedups them if they were only late). The
// cursor stops before a chunk with a missing grant, so it is checked again.
// A grant the store can never hold (store.Put sets it aside in
// grants_set_aside, whether the sink or this pass found it) does not hold the
// cursor: it is counted (flashgate_reconcile_set_aside_total), logged, and
// reported by the audit, and the cursor moves past it.
func (g *Gateway) reconcile(ctx context.Context) {
	t := time.NewTicker(g.cfg.Relay.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.reconcileOnce(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("reconcile pass failed", "err", err)
		}
	}
}

var errChunkYoung = errors.New("chunk too young")

func (g *Gateway) reconcileOnce(ctx context.Context) error {
	cursor, err := g.ledger.Cursor(reconcileCursor)
	if err != nil {
		return err
	}
	upto := g.relay.Cursor()
	cutoff := g.now().Add(-g.cfg.Relay.ReconcileGrace).UnixNano()
	missingTotal := int64(0)
	for chunk := 0; chunk < reconcileChunksPerTick && cursor < upto; chunk++ {
		end := min(upto, cursor+reconcileChunk)
		var recs []ledger.Record
		scanErr := g.ledger.Scan(cursor, end, func(r *ledger.Record) error {
			if r.GrantedAtNanos > cutoff {
				return errChunkYoung
			}
			recs = append(recs, *r)
			return nil
		})
		if scanErr != nil && !errors.Is(scanErr, errChunkYoung) {
			return scanErr
		}
		if len(recs) == 0 {
			break
		}
		ids := make([]string, len(recs))
		for i := range recs {
			ids[i] = recs[i].GrantID
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		missing, err := g.store.Missing(qctx, ids)
		cancel()
		if err != nil {
			return err
		}
		again, setAside, err := g.unstored(ctx, recs, missing)
		if err != nil {
			return err
		}
		if len(again) > 0 {
			missingTotal += int64(len(again))
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := relay.Republish(pctx, g.js, g.ledger.ID(), again)
			cancel()
			g.pipe.republished.Add(int64(len(again)))
			g.log.Warn("reconcile: grants missing from the store were published again", "count", len(again), "first", again[0].GrantID)
			if err != nil {
				return err
			}
			break // check this chunk again next pass
		}
		cursor = recs[len(recs)-1].Seq
		if err := g.ledger.SetCursor(reconcileCursor, cursor); err != nil {
			return err
		}
		if len(setAside) > 0 {
			g.pipe.setAsidePassed.Add(int64(len(setAside)))
			g.log.Error("reconcile: ledger grants the store cannot hold are set aside (grants_set_aside); the cursor passed them",
				"count", len(setAside), "first", setAside[0], "cursor", cursor)
		}
		if errors.Is(scanErr, errChunkYoung) {
			break // the rest is younger than the grace period
		}
	}
	g.pipe.reconcileMissing.Store(missingTotal)
	return nil
}

// unstored sorts a chunk's grants missing from the store: those the store
// set aside (it can never hold them) are returned in setAside; one that fails
// the store's validation and is not yet set aside is set aside now (a ledger
// written before the edge refused such input); the rest are returned in
// again, to be published again.
func (g *Gateway) unstored(ctx context.Context, recs []ledger.Record, missing []string) (again []ledger.Record, setAside []string, err error) {
	if len(missing) == 0 {
		return nil, nil, nil
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	aside, err := g.store.SetAsideOf(qctx, missing)
	if err != nil {
		return nil, nil, err
	}
	want := make(map[string]bool, len(missing))
	for _, id := range missing {
		want[id] = true
	}
	var refused []store.Grant
	node := g.NodeID()
	for i := range recs {
		r := &recs[i]
		if !want[r.GrantID] {
			continue
		}
		if aside[r.GrantID] {
			setAside = append(setAside, r.GrantID)
			continue
		}
		// The stream's grant as the sink would map it to the store's row
		// (ledger/sink: the same compiler-checked conversion).
		if gr := store.Grant(relay.GrantOf(node, r)); gr.Validate() != nil {
			refused = append(refused, gr)
			continue
		}
		again = append(again, *r)
	}
	if len(refused) > 0 {
		res, err := g.store.Put(qctx, refused)
		if err != nil {
			return nil, nil, err
		}
		for _, a := range res.SetAside {
			g.log.Error("reconcile: ledger grant the store cannot hold set aside", "grant_id", a.Grant.GrantID, "ledger_seq", a.Grant.LedgerSeq, "reason", a.Reason)
			setAside = append(setAside, a.Grant.GrantID)
		}
	}
	return again, setAside, nil
}

// --- GET /v1/me/coupons ------------------------------------------------------

type grantView struct {
	GrantID    string  `json:"grant_id"`
	Campaign   string  `json:"campaign"`
	GrantedAt  string  `json:"granted_at"`
	ValidFrom  *string `json:"valid_from"`
	ValidUntil *string `json:"valid_until"`
	FaceValue  int64   `json:"face_value,omitempty"`
}

func unixView(sec int64) *string {
	if sec == 0 {
		return nil
	}
	s := time.Unix(sec, 0).UTC().Format(time.RFC3339)
	return &s
}

func viewOf(g *store.Grant) grantView {
	return grantView{GrantID: g.GrantID, Campaign: g.Campaign, GrantedAt: time.Unix(0, g.GrantedAtNanos).UTC().Format(time.RFC3339Nano),
		ValidFrom: unixView(g.ValidFrom), ValidUntil: unixView(g.ValidUntil), FaceValue: g.FaceValue}
}

func (g *Gateway) handleMyCoupons(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() {
		writeError(ctx, status.InvalidRequest, "method must be GET")
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return
	}
	user, st, msg := g.authenticate(ctx)
	if st != status.Granted {
		writeError(ctx, st, msg)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), g.cfg.Claim.Timeout)
	defer cancel()
	grants, err := g.store.ByUser(rctx, user, myCouponsMax)
	if err != nil {
		writeUnavailable(ctx, "grant store unavailable")
		return
	}
	out := make([]grantView, len(grants))
	for i := range grants {
		out[i] = viewOf(&grants[i])
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"status": "ok", "user": user, "grants": out})
}

// --- GET /admin/v1/campaigns/{id}/grants -----------------------------------

func (g *Gateway) adminCampaignGrants(ctx *fasthttp.RequestCtx, id string) {
	if !campaign.ValidID(id) {
		adminError(ctx, fasthttp.StatusNotFound, "unknown_campaign", "no such campaign")
		return
	}
	limit := 100
	if v := ctx.QueryArgs().Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > store.PageMax {
			adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", fmt.Sprintf("limit must be 1..%d", store.PageMax))
			return
		}
		limit = n
	}
	cursor := string(ctx.QueryArgs().Peek("cursor"))
	if len(cursor) > 64 {
		adminError(ctx, fasthttp.StatusBadRequest, "invalid_request", "bad cursor")
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grants, next, err := g.store.ByCampaign(rctx, id, cursor, limit)
	if err != nil {
		adminError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	type row struct {
		grantView
		User   string `json:"user"`
		Device string `json:"device"`
		IP     string `json:"client_ip"`
		Node   string `json:"node"`
	}
	out := make([]row, len(grants))
	for i := range grants {
		out[i] = row{viewOf(&grants[i]), grants[i].User, grants[i].Device, grants[i].ClientIP, grants[i].Node}
	}
	adminJSON(ctx, fasthttp.StatusOK, map[string]any{"grants": out, "next_cursor": next})
}

// --- audit ------------------------------------------------------------------

// AuditRow is one campaign's figures from every place a grant is counted.
type AuditRow struct {
	Campaign        string `json:"campaign"`
	Stock           int64  `json:"stock"`
	Units           int64  `json:"units"` // stock capped by the budget: what the shards started with
	PerUserLimit    int    `json:"per_user_limit"`
	RedisGranted    int64  `json:"redis_granted"`
	RedisRemaining  int64  `json:"redis_remaining"`
	Ledger          int64  `json:"ledger"`
	Stream          int64  `json:"stream"` // ledger grants JetStream acknowledged (relay cursor)
	Store           int64  `json:"store"`
	StoreMaxPerUser int64  `json:"store_max_per_user"`
	// Unsettled grants are decided in Redis but not yet marked as held by
	// their node's synced ledger; Held are those of nodes outside this audit
	// (down, or not audited): neither lost nor returned, waiting for their
	// node or a replacement on its data dir.
	Unsettled      int64    `json:"unsettled"`
	Held           int64    `json:"held"`
	MissingInStore int64    `json:"missing_in_store"`
	SetAside       int64    `json:"set_aside"` // ledger grants the store cannot hold (grants_set_aside), not counted as missing
	ExtraInStore   int64    `json:"extra_in_store"`
	Violations     []string `json:"violations,omitempty"`
}

// AuditReport is the whole audit.
type AuditReport struct {
	Node         string     `json:"node"`
	Ledgers      []string   `json:"ledgers"` // identities of the ledgers audited`
	RelayBacklog uint64     `json:"relay_backlog"`
	Campaigns    []AuditRow `json:"campaigns"`
	Violations   int        `json:"violations"`
}

// Audit compares, per campaign, Redis counters, this gateway's ledger, the
// stream and the store, and names every violation of I1, I2, I5 and I6.
// It assumes this gateway's ledger is the only one (one node); with several
// nodes, audit them together with AuditLedgers.
func (g *Gateway) Audit(ctx context.Context) (AuditReport, error) { return g.AuditLedgers(ctx, nil) }

// AuditLedgers audits this gateway's ledger together with others (the
// ledgers of stopped gateways of the same fleet): the union of their grants
// is compared with Redis and the store.
func (g *Gateway) AuditLedgers(ctx context.Context, others []*ledger.Ledger) (AuditReport, error) {
	rep := AuditReport{Node: g.NodeID(), RelayBacklog: g.relay.Backlog()}
	ledgerIDs := map[string]map[string]bool{}
	acked := map[string]int64{} // grants JetStream acknowledged (seq ≤ relay cursor)
	audited := map[string]bool{}
	for i, l := range append([]*ledger.Ledger{g.ledger}, others...) {
		relayed := g.relay.Cursor()
		if i > 0 {
			c, err := l.Cursor(relay.CursorName)
			if err != nil {
				return rep, err
			}
			relayed = c
		}
		audited[l.ID()] = true
		rep.Ledgers = append(rep.Ledgers, l.ID())
		err := l.Scan(0, ^uint64(0), func(r *ledger.Record) error {
			m := ledgerIDs[r.Campaign]
			if m == nil {
				m = map[string]bool{}
				ledgerIDs[r.Campaign] = m
			}
			if m[r.GrantID] {
				return fmt.Errorf("audit: grant %s is in two ledgers", r.GrantID)
			}
			if r.Seq <= relayed {
				acked[r.Campaign]++
			}
			m[r.GrantID] = true
			return nil
		})
		if err != nil {
			return rep, err
		}
	}
	counts, err := g.store.Counts(ctx)
	if err != nil {
		return rep, err
	}
	st := g.stock()
	list := g.reg.List()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	for _, c := range list {
		row := AuditRow{Campaign: c.ID, Stock: c.Stock, Units: c.Units(), PerUserLimit: c.PerUserLimit, Ledger: int64(len(ledgerIDs[c.ID])),
			Stream: acked[c.ID], StoreMaxPerUser: counts[c.ID].MaxPerUser}
		var mineUnsettled int64 // unsettled grants of audited nodes, not in their ledgers
		if st != nil {
			if cnt, err := st.Count(ctx, c.ID, c.Shards); err == nil {
				row.RedisGranted, row.RedisRemaining = cnt.Granted, cnt.Remaining
			} else {
				row.Violations = append(row.Violations, "redis unreadable: "+err.Error())
			}
			err := st.ScanUnsettled(ctx, c.ID, c.Shards, func(u stock.Unsettled) error {
				if ledgerIDs[c.ID][u.GrantID] {
					return nil // durable, its mark not yet applied
				}
				row.Unsettled++
				if audited[u.Node] {
					mineUnsettled++
				} else {
					row.Held++
				}
				return nil
			})
			if err != nil {
				row.Violations = append(row.Violations, "redis unreadable: "+err.Error())
			}
		}
		storeIDs := map[string]bool{}
		if err := g.store.IDs(ctx, c.ID, func(id string) { storeIDs[id] = true }); err != nil {
			return rep, err
		}
		row.Store = int64(len(storeIDs)) // the same read as missing/extra, so the row is self-consistent
		asideIDs := map[string]bool{}
		if err := g.store.SetAsideIDs(ctx, c.ID, func(id, _ string) { asideIDs[id] = true }); err != nil {
			return rep, err
		}
		for id := range ledgerIDs[c.ID] {
			switch {
			case storeIDs[id]:
			case asideIDs[id]:
				row.SetAside++
			default:
				row.MissingInStore++
			}
		}
		for id := range storeIDs {
			if !ledgerIDs[c.ID][id] {
				row.ExtraInStore++
			}
		}
		bad := func(format string, args ...any) {
			row.Violations = append(row.Violations, fmt.Sprintf(format, args...))
		}
		units := c.Units() // stock, capped by the budget
		if row.RedisGranted > units || row.Ledger > units || row.Store > units {
			bad("I1 oversell: units %d (stock %d, budget %d), redis %d, ledger %d, store %d", units, c.Stock, c.Budget, row.RedisGranted, row.Ledger, row.Store)
		}
		if row.StoreMaxPerUser > int64(c.PerUserLimit) {
			bad("I2 a user holds %d grants, limit %d", row.StoreMaxPerUser, c.PerUserLimit)
		}
		if row.MissingInStore > 0 {
			bad("I5 %d ledger grants missing from the store", row.MissingInStore)
		}
		if row.SetAside > 0 {
			bad("I5 %d ledger grants the store cannot hold are set aside (table grants_set_aside, with the reason)", row.SetAside)
		}
		if row.ExtraInStore > 0 {
			bad("I5/I6 %d store grants not in the audited ledgers", row.ExtraInStore)
		}
		if mineUnsettled > 0 {
			bad("I6 %d grants decided in Redis for an audited node are not yet in its ledger (settling)", mineUnsettled)
		}
		if st != nil && row.RedisGranted != row.Ledger+row.Unsettled {
			bad("I6 redis counts %d grants, ledgers %d + unsettled %d", row.RedisGranted, row.Ledger, row.Unsettled)
		}
		if st != nil && row.RedisGranted+row.RedisRemaining != units {
			bad("I6 redis granted %d + remaining %d ≠ units %d", row.RedisGranted, row.RedisRemaining, units)
		}
		if row.Stream < row.Ledger {
			bad("I6 %d ledger grants not yet acknowledged by JetStream", row.Ledger-row.Stream)
		}
		rep.Violations += len(row.Violations)
		rep.Campaigns = append(rep.Campaigns, row)
	}
	return rep, nil
}

// AuditSettled runs Audit until it finds no violation or wait ends (the
// pipeline drains for a moment after a load), returning the last report.
func (g *Gateway) AuditSettled(ctx context.Context, wait time.Duration) (AuditReport, error) {
	deadline := time.Now().Add(wait)
	for {
		rep, err := g.Audit(ctx)
		if err == nil && rep.Violations == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return rep, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Store exposes the grant store (tests, audit).
func (g *Gateway) Store() *store.Store { return g.store }

// Relay exposes the relay (tests, metrics).
func (g *Gateway) Relay() *relay.Relay { return g.relay }

// AuditOffline audits a stopped gateway from its data directory: it connects
// to Redis itself, loads the campaigns, and runs Audit without serving.
// others are the ledgers of other stopped gateways of the fleet, audited
// together with this one.
func (g *Gateway) AuditOffline(ctx context.Context, others ...*ledger.Ledger) (AuditReport, error) {
	c, err := NewRedisClient(g.cfg.Redis)
	if err != nil {
		return AuditReport{}, fmt.Errorf("audit: redis: %w", err)
	}
	g.redisC.Store(&c)
	g.stockP.Store(stock.New(c))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go g.reg.Run(wctx)
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if err := g.reg.WaitReady(rctx); err != nil {
		return AuditReport{}, err
	}
	return g.AuditLedgers(ctx, others)
}

// SinkOnly runs the sink (and nothing else) until ctx ends: `flashgate sink`.
func (g *Gateway) SinkOnly(ctx context.Context) error {
	s, err := sink.New(sink.Options{JS: g.js, Store: g.store, Logger: g.log})
	if err != nil {
		return err
	}
	g.log.Info("flashgate sink consuming", "stream", relay.Stream, "store", g.cfg.Store.Driver)
	s.Run(ctx)
	return nil
}

// saveSnapshots writes the definition of each changed campaign into the
// store's campaigns table, for reporting next to the grants.
func (g *Gateway) saveSnapshots(ctx context.Context) {
	for {
		var id string
		select {
		case <-ctx.Done():
			return
		case id = <-g.snapshots:
		}
		c, ok := g.reg.Get(id)
		if !ok {
			continue
		}
		b, err := json.Marshal(c)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := g.store.SaveCampaign(sctx, id, b); err != nil {
			g.log.Warn("campaign snapshot not stored", "campaign", id, "err", err)
		}
		cancel()
	}
}
