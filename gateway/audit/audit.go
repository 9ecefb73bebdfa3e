// Package audit compares, per campaign, every place a grant is counted —
// Redis (granted, remaining, unsettled), the ledgers of the audited
// gateways, the stream (each ledger's relay cursor) and the SQL store — and
// names every violation of I1 (no oversell), I2 (per-user limit), I5 (every
// ledger grant stored once) and I6 (the counts agree).
//
// It reads; it never repairs. Both the running gateway (GET /admin/v1/audit,
// its own ledger with the live relay cursor) and `flashgate audit` offline
// (stopped gateways' ledgers opened read-only, with the relay cursor each
// stored) build Sources and call Run, so the two give the same report.
//
// Run is called from one goroutine; it scans every ledger and the store's
// ids of every campaign, so it is an operator's tool, not a hot path.
package audit

import (
	"context"
	"fmt"
	"sort"

	"github.com/flashgate/flashgate/gateway/campaign"
	"github.com/flashgate/flashgate/gateway/stock"
	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
	"github.com/flashgate/flashgate/ledger/store"
)

// Row is one campaign's figures from every place a grant is counted.
type Row struct {
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

// Report is the whole audit.
type Report struct {
	Node         string   `json:"node"`
	Ledgers      []string `json:"ledgers"` // identities of the ledgers audited
	RelayBacklog uint64   `json:"relay_backlog"`
	Campaigns    []Row    `json:"campaigns"`
	Violations   int      `json:"violations"`
}

// Ledger is one audited ledger and how far its relay got: its grants at or
// below Relayed are acknowledged by JetStream.
type Ledger struct {
	Ledger  *ledger.Ledger
	Relayed uint64
}

// Stopped is a stopped gateway's ledger with the relay cursor it stored.
func Stopped(l *ledger.Ledger) (Ledger, error) {
	c, err := l.Cursor(relay.CursorName)
	return Ledger{Ledger: l, Relayed: c}, err
}

// Backlog is how many of a ledger's grants its relay has not yet seen
// acknowledged.
func (l Ledger) Backlog() uint64 {
	if last := l.Ledger.LastSeq(); last > l.Relayed {
		return last - l.Relayed
	}
	return 0
}

// Sources is what one audit reads.
type Sources struct {
	Node         string   // the auditing gateway's name (node_id)
	Ledgers      []Ledger // the ledgers audited together: their union is one fleet's grants
	RelayBacklog uint64   // the auditing gateway's relay backlog, reported as is
	// Stock reads Redis; nil when Redis is not connected (the Redis
	// columns stay 0 and their checks are skipped).
	Stock     *stock.Store
	Campaigns []*campaign.Campaign
	Store     *store.Store
}

// ledgerGrants is the union of the audited ledgers' grants.
type ledgerGrants struct {
	ids     map[string]map[string]bool // campaign → grant id
	acked   map[string]int64           // campaign → grants JetStream acknowledged (seq ≤ relay cursor)
	audited map[string]bool            // ledger identities
}

// Run audits src.
func Run(ctx context.Context, src Sources) (Report, error) {
	rep := Report{Node: src.Node, RelayBacklog: src.RelayBacklog}
	lg, err := scanLedgers(src.Ledgers, &rep)
	if err != nil {
		return rep, err
	}
	counts, err := src.Store.Counts(ctx)
	if err != nil {
		return rep, err
	}
	list := append([]*campaign.Campaign(nil), src.Campaigns...)
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	for _, c := range list {
		row := Row{Campaign: c.ID, Stock: c.Stock, Units: c.Units(), PerUserLimit: c.PerUserLimit, Ledger: int64(len(lg.ids[c.ID])),
			Stream: lg.acked[c.ID], StoreMaxPerUser: counts[c.ID].MaxPerUser}
		mineUnsettled := readRedis(ctx, src.Stock, c, lg, &row)
		if err := compareStore(ctx, src.Store, c.ID, lg.ids[c.ID], &row); err != nil {
			return rep, err
		}
		check(c, &row, mineUnsettled, src.Stock != nil)
		rep.Violations += len(row.Violations)
		rep.Campaigns = append(rep.Campaigns, row)
	}
	return rep, nil
}

func scanLedgers(ls []Ledger, rep *Report) (ledgerGrants, error) {
	lg := ledgerGrants{ids: map[string]map[string]bool{}, acked: map[string]int64{}, audited: map[string]bool{}}
	for _, l := range ls {
		lg.audited[l.Ledger.ID()] = true
		rep.Ledgers = append(rep.Ledgers, l.Ledger.ID())
		err := l.Ledger.Scan(0, ^uint64(0), func(r *ledger.Record) error {
			m := lg.ids[r.Campaign]
			if m == nil {
				m = map[string]bool{}
				lg.ids[r.Campaign] = m
			}
			if m[r.GrantID] {
				return fmt.Errorf("audit: grant %s is in two ledgers", r.GrantID)
			}
			if r.Seq <= l.Relayed {
				lg.acked[r.Campaign]++
			}
			m[r.GrantID] = true
			return nil
		})
		if err != nil {
			return lg, err
		}
	}
	return lg, nil
}

// readRedis fills the Redis columns and returns the unsettled grants of
// audited nodes that are not in their ledgers.
func readRedis(ctx context.Context, st *stock.Store, c *campaign.Campaign, lg ledgerGrants, row *Row) (mineUnsettled int64) {
	if st == nil {
		return 0
	}
	if cnt, err := st.Count(ctx, c.ID, c.Shards); err == nil {
		row.RedisGranted, row.RedisRemaining = cnt.Granted, cnt.Remaining
	} else {
		row.Violations = append(row.Violations, "redis unreadable: "+err.Error())
	}
	err := st.ScanUnsettled(ctx, c.ID, c.Shards, func(u stock.Unsettled) error {
		if lg.ids[c.ID][u.GrantID] {
			return nil // durable, its mark not yet applied
		}
		row.Unsettled++
		if lg.audited[u.Node] {
			mineUnsettled++
		} else {
			row.Held++
		}
		return nil
	})
	if err != nil {
		row.Violations = append(row.Violations, "redis unreadable: "+err.Error())
	}
	return mineUnsettled
}

// compareStore compares a campaign's ledger grants with the store's, by id.
func compareStore(ctx context.Context, st *store.Store, campaignID string, inLedgers map[string]bool, row *Row) error {
	storeIDs := map[string]bool{}
	if err := st.IDs(ctx, campaignID, func(id string) { storeIDs[id] = true }); err != nil {
		return err
	}
	row.Store = int64(len(storeIDs)) // the same read as missing/extra, so the row is self-consistent
	asideIDs := map[string]bool{}
	if err := st.SetAsideIDs(ctx, campaignID, func(id, _ string) { asideIDs[id] = true }); err != nil {
		return err
	}
	for id := range inLedgers {
		switch {
		case storeIDs[id]:
		case asideIDs[id]:
			row.SetAside++
		default:
			row.MissingInStore++
		}
	}
	for id := range storeIDs {
		if !inLedgers[id] {
			row.ExtraInStore++
		}
	}
	return nil
}

// check names the row's violations of I1, I2, I5 and I6.
func check(c *campaign.Campaign, row *Row, mineUnsettled int64, redisRead bool) {
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
	if redisRead && row.RedisGranted != row.Ledger+row.Unsettled {
		bad("I6 redis counts %d grants, ledgers %d + unsettled %d", row.RedisGranted, row.Ledger, row.Unsettled)
	}
	if redisRead && row.RedisGranted+row.RedisRemaining != units {
		bad("I6 redis granted %d + remaining %d ≠ units %d", row.RedisGranted, row.RedisRemaining, units)
	}
	if row.Stream < row.Ledger {
		bad("I6 %d ledger grants not yet acknowledged by JetStream", row.Ledger-row.Stream)
	}
}
