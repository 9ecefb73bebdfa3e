// Package store is the SQL grant store: the durable, queryable end of the
// grant pipeline (ledger → JetStream → sink → here).
//
// One schema, two drivers behind database/sql: SQLite (modernc.org/sqlite,
// pure Go, the embedded default) and PostgreSQL (jackc/pgx). The grant id is
// the primary key and every write is INSERT … ON CONFLICT DO NOTHING, so a
// grant delivered twice (relay restart, redelivery after a sink crash) is
// stored once (invariant I5). A batch is one transaction (Put falls back to
// one transaction per row to find a row the database refuses for good); the
// sink acks its messages only after the commit.
//
// A batch is written with few statements, never one per row: on PostgreSQL
// one INSERT … SELECT FROM unnest(one array per column) whose text does not
// depend on the batch (pgx prepares it once per connection); on SQLite
// multi-row INSERTs of 256, 128, …, 1 rows (the binary digits of the batch
// size), each prepared once when the store opens. ON CONFLICT (grant_id) DO
// NOTHING skips a grant already stored or earlier in the same batch, and the
// rows affected are the grants new to the store.
//
//	grants(grant_id PK, campaign, user_id, device, client_ip, idempotency_key,
//	       shard, granted_at (unix ns), valid_from, valid_until (unix s),
//	       face_value (cents), node (gateway), ledger_seq, stored_at (unix ns))
//	grants_set_aside(grant_id PK, campaign, node, ledger_seq, reason,
//	       grant_json, set_aside_at (unix ns))      -- grants the store refused
//	campaigns(id PK, definition JSON, updated_at)   -- snapshots for reporting
//
// What the store can hold is Grant.Validate: the field limits below (the
// gateway refuses longer input before it grants; a test ties its limits to
// these) and text PostgreSQL accepts (valid UTF-8, no NUL). A grant that
// fails it, or that the database itself refuses for good (a data or
// constraint error), can never be stored: Put sets it aside in
// grants_set_aside with the reason instead of failing its whole batch, so
// one bad record never blocks the grants behind it. Set-aside grants are
// reported (SetAsideIDs, the audit) until an operator repairs them.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"
)

const (
	// BatchMax bounds grants per write transaction (Put, Upsert) and ids per
	// lookup (Missing, SetAsideOf: one IN list of BatchMax parameters). A
	// transaction of 500 grants takes a few milliseconds of the database
	// (BenchmarkPut); the sink splits what one fetch brings (≤ 16 × 256)
	// into batches of this size.
	BatchMax = 500
	// PageMax bounds one page of a listing.
	PageMax = 1000

	// Field limits of a stored grant, in bytes. Ids are short tokens; the
	// gateway's limits on what it accepts are at most these.
	GrantIDLenMax        = 64
	CampaignLenMax       = 64
	UserLenMax           = 128
	DeviceLenMax         = 128
	IdempotencyKeyLenMax = 64
	NodeLenMax           = 128
	// ClientIPLenMax: the longest IP address without a zone is 45 bytes
	// ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"); zones are dropped at
	// the edge.
	ClientIPLenMax = 64
)

// Grant is one stored grant.
type Grant struct {
	GrantID        string `json:"grant_id"`
	Campaign       string `json:"campaign"`
	User           string `json:"user"`
	Device         string `json:"device"`
	ClientIP       string `json:"client_ip"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	Shard          uint32 `json:"shard"`
	GrantedAtNanos int64  `json:"granted_at_ns"`
	ValidFrom      int64  `json:"valid_from,omitempty"`
	ValidUntil     int64  `json:"valid_until,omitempty"`
	FaceValue      int64  `json:"face_value,omitempty"`
	Node           string `json:"node"`
	LedgerSeq      uint64 `json:"ledger_seq"`
}

// Validate checks a grant arriving from the stream (untrusted bytes): nil
// means the store can hold it.
func (g *Grant) Validate() error {
	var errs []error
	field := func(name, v string, minLen, maxLen int) {
		switch {
		case len(v) < minLen || len(v) > maxLen:
			errs = append(errs, fmt.Errorf("%s must be %d..%d bytes, is %d", name, minLen, maxLen, len(v)))
		case !storableText(v):
			errs = append(errs, fmt.Errorf("%s must be UTF-8 text without NUL", name))
		}
	}
	field("grant_id", g.GrantID, 1, GrantIDLenMax)
	field("campaign", g.Campaign, 1, CampaignLenMax)
	field("user", g.User, 1, UserLenMax)
	field("device", g.Device, 0, DeviceLenMax)
	field("client_ip", g.ClientIP, 0, ClientIPLenMax)
	field("idempotency_key", g.IdempotencyKey, 0, IdempotencyKeyLenMax)
	field("node", g.Node, 0, NodeLenMax)
	return errors.Join(errs...)
}

// storableText: PostgreSQL text holds valid UTF-8 without NUL.
func storableText(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// Store is an open grant store.
type Store struct {
	db     *sql.DB
	driver string

	rowsStmts [rowsLevels]*sql.Stmt // SQLite: rowsStmts[k] inserts 1<<k rows
}

const (
	// rowsPerStatementMax bounds the rows of one SQLite INSERT: 14 bound
	// parameters a row, 3584 in all (SQLite allows 32766 per statement).
	// Past a few hundred rows a longer statement saves nothing measurable
	// (a row's insert dominates), and each size is one prepared statement
	// kept for the store's life.
	rowsPerStatementMax = 1 << (rowsLevels - 1)
	// rowsLevels is the number of statement sizes: 1, 2, 4, …, 256.
	rowsLevels = 9
)

// Open connects and creates the schema if needed. driver is "sqlite" (dsn a
// file path) or "postgres" (dsn a PostgreSQL URL or key=value string).
func Open(ctx context.Context, driver, dsn string) (*Store, error) {
	var db *sql.DB
	var err error
	switch driver {
	case "sqlite":
		// WAL journal: readers do not block the sink's writer; synchronous=FULL:
		// a committed batch survives a power cut before the sink acks it.
		db, err = sql.Open("sqlite", "file:"+dsn+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)")
		if err == nil {
			db.SetMaxOpenConns(1) // SQLite has one writer; one connection avoids SQLITE_BUSY
		}
	case "postgres":
		db, err = sql.Open("pgx", dsn)
		if err == nil {
			db.SetMaxOpenConns(16)
		}
	default:
		return nil, fmt.Errorf("store: unknown driver %q (sqlite | postgres)", driver)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s := &Store{db: db, driver: driver}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if driver == "sqlite" {
		if err := s.prepareRows(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close closes the prepared statements and the connection pool.
func (s *Store) Close() error {
	for _, st := range s.rowsStmts {
		if st != nil {
			_ = st.Close()
		}
	}
	return s.db.Close()
}

// Driver names the driver.
func (s *Store) Driver() string { return s.driver }

// migrateLockKey is the PostgreSQL advisory lock migrations take turns on
// ("flashgat").
const migrateLockKey = 0x666c617368676174

// migrator runs the schema statements: one connection, held for the whole
// migration.
type migrator interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// migrate creates what the schema lacks; it only adds (tables, columns,
// indexes), so a database of an earlier version keeps its data. On
// PostgreSQL, CREATE … IF NOT EXISTS is not atomic — two processes opening
// one database at once (gateways started together, a gateway and a sink)
// could both find an index missing and one fail on the catalog's unique
// index — so migrations hold a session advisory lock and take turns. On
// SQLite each statement runs under the file's write lock.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if s.driver == "postgres" {
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", int64(migrateLockKey)); err != nil {
			return fmt.Errorf("store: migrate: lock: %w", err)
		}
		defer func() {
			_, _ = conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", int64(migrateLockKey))
		}()
	}
	return s.migrateOn(ctx, conn)
}

func (s *Store) migrateOn(ctx context.Context, db migrator) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS grants (
			grant_id TEXT PRIMARY KEY,
			campaign TEXT NOT NULL,
			user_id TEXT NOT NULL,
			device TEXT NOT NULL,
			client_ip TEXT NOT NULL,
			idempotency_key TEXT NOT NULL,
			shard INTEGER NOT NULL,
			granted_at BIGINT NOT NULL,
			valid_from BIGINT NOT NULL,
			valid_until BIGINT NOT NULL,
			face_value BIGINT NOT NULL,
			node TEXT NOT NULL,
			ledger_seq BIGINT NOT NULL,
			stored_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS grants_by_user ON grants (user_id, granted_at)`,
		`CREATE INDEX IF NOT EXISTS grants_by_campaign ON grants (campaign, grant_id)`,
		`CREATE TABLE IF NOT EXISTS grants_set_aside (
			grant_id TEXT PRIMARY KEY,
			campaign TEXT NOT NULL,
			node TEXT NOT NULL,
			ledger_seq BIGINT NOT NULL,
			reason TEXT NOT NULL,
			grant_json TEXT NOT NULL,
			set_aside_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS grants_set_aside_by_campaign ON grants_set_aside (campaign, grant_id)`,
		`CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, definition TEXT NOT NULL, updated_at BIGINT NOT NULL)`,
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
	}
	return s.migrateCheckout(ctx, db) // checkout.go
}

// rebind turns ? placeholders into $n for PostgreSQL.
func (s *Store) rebind(q string) string {
	if s.driver != "postgres" {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

const grantColumns = "grant_id, campaign, user_id, device, client_ip, idempotency_key, shard, granted_at, valid_from, valid_until, face_value, node, ledger_seq"

// Upsert stores grants in one transaction (at most BatchMax), skipping ids
// already stored. It returns how many rows were new.
func (s *Store) Upsert(ctx context.Context, grants []Grant) (int, error) {
	if len(grants) == 0 {
		return 0, nil
	}
	if len(grants) > BatchMax {
		return 0, fmt.Errorf("store: batch of %d exceeds %d", len(grants), BatchMax)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	now := time.Now().UnixNano()
	var n int64
	if s.driver == "postgres" {
		n, err = s.insertArrays(ctx, tx, grants, now)
	} else {
		n, err = s.insertRows(ctx, tx, grants, now)
	}
	if err != nil {
		return 0, fmt.Errorf("store: insert: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store: commit: %w", err)
	}
	return int(n), nil
}

const insertArraysSQL = "INSERT INTO grants (" + grantColumns + ", stored_at) SELECT g.*, $14 FROM unnest(" +
	"$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], " +
	"$9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[]) AS g ON CONFLICT (grant_id) DO NOTHING"

// insertArrays (PostgreSQL) inserts every grant with one statement of fixed
// text: one array per column, unnested into rows (14 parameters whatever the
// batch size, so pgx prepares it once per connection).
func (s *Store) insertArrays(ctx context.Context, tx *sql.Tx, grants []Grant, now int64) (int64, error) {
	n := len(grants)
	ids, campaigns, users, devices, ips, keys, nodes := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	shards, at, from, until, face, seqs := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i := range grants {
		g := &grants[i]
		ids[i], campaigns[i], users[i], devices[i], ips[i], keys[i], nodes[i] = g.GrantID, g.Campaign, g.User, g.Device, g.ClientIP, g.IdempotencyKey, g.Node
		shards[i], at[i], from[i], until[i], face[i], seqs[i] = int64(g.Shard), g.GrantedAtNanos, g.ValidFrom, g.ValidUntil, g.FaceValue, int64(g.LedgerSeq)
	}
	res, err := tx.ExecContext(ctx, insertArraysSQL, ids, campaigns, users, devices, ips, keys, shards, at, from, until, face, nodes, seqs, now)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// insertRows (SQLite) inserts grants with the prepared multi-row statements,
// each time the largest that fits what is left: a batch of 500 takes six
// (256, 128, 64, 32, 16 and 4 rows), none of them parsed again.
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, grants []Grant, now int64) (int64, error) {
	var total int64
	args := make([]any, 0, rowsPerStatementMax*14)
	for len(grants) > 0 {
		level := bits.Len(uint(min(len(grants), rowsPerStatementMax))) - 1
		rows := 1 << level
		st := s.rowsStmts[level]
		args = args[:0]
		for i := range grants[:rows] {
			g := &grants[i]
			args = append(args, g.GrantID, g.Campaign, g.User, g.Device, g.ClientIP, g.IdempotencyKey, int64(g.Shard),
				g.GrantedAtNanos, g.ValidFrom, g.ValidUntil, g.FaceValue, g.Node, int64(g.LedgerSeq), now)
		}
		res, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...)
		if err != nil {
			return total, err
		}
		n, _ := res.RowsAffected()
		total += n
		grants = grants[rows:]
	}
	return total, nil
}

// prepareRows prepares the SQLite insert statements, once per store (a
// statement prepared on the pool is reused by every transaction on the same
// connection, and re-prepared by database/sql on another).
func (s *Store) prepareRows(ctx context.Context) error {
	for level := range s.rowsStmts {
		var q strings.Builder
		q.WriteString("INSERT INTO grants (" + grantColumns + ", stored_at) VALUES ")
		for i := 0; i < 1<<level; i++ {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString("(?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
		}
		q.WriteString(" ON CONFLICT (grant_id) DO NOTHING")
		st, err := s.db.PrepareContext(ctx, q.String())
		if err != nil {
			return fmt.Errorf("store: prepare: %w", err)
		}
		s.rowsStmts[level] = st
	}
	return nil
}

func scanGrants(rows *sql.Rows) ([]Grant, error) {
	defer rows.Close()
	var out []Grant
	for rows.Next() {
		var g Grant
		var shard, seq int64
		if err := rows.Scan(&g.GrantID, &g.Campaign, &g.User, &g.Device, &g.ClientIP, &g.IdempotencyKey, &shard,
			&g.GrantedAtNanos, &g.ValidFrom, &g.ValidUntil, &g.FaceValue, &g.Node, &seq); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		g.Shard, g.LedgerSeq = uint32(shard), uint64(seq)
		out = append(out, g)
	}
	return out, rows.Err()
}

// ByUser returns a user's grants, newest first (at most limit ≤ PageMax).
func (s *Store) ByUser(ctx context.Context, user string, limit int) ([]Grant, error) {
	limit = min(max(limit, 1), PageMax)
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+grantColumns+" FROM grants WHERE user_id = ? ORDER BY granted_at DESC, grant_id LIMIT ?"), user, limit)
	if err != nil {
		return nil, fmt.Errorf("store: by user: %w", err)
	}
	return scanGrants(rows)
}

// ByCampaign returns a page of a campaign's grants ordered by grant id,
// starting after cursor (""), and the cursor of the next page ("" at the end).
func (s *Store) ByCampaign(ctx context.Context, campaign, cursor string, limit int) ([]Grant, string, error) {
	limit = min(max(limit, 1), PageMax)
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+grantColumns+" FROM grants WHERE campaign = ? AND grant_id > ? ORDER BY grant_id LIMIT ?"), campaign, cursor, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("store: by campaign: %w", err)
	}
	gs, err := scanGrants(rows)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(gs) > limit {
		gs = gs[:limit]
		next = gs[limit-1].GrantID
	}
	return gs, next, nil
}

// Missing returns the ids among ids that are not stored (at most BatchMax ids).
func (s *Store) Missing(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > BatchMax {
		return nil, fmt.Errorf("store: %d ids exceed %d", len(ids), BatchMax)
	}
	q := "SELECT grant_id FROM grants WHERE grant_id IN (" + strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",") + ")"
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := s.db.QueryContext(ctx, s.rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("store: missing: %w", err)
	}
	defer rows.Close()
	have := make(map[string]bool, len(ids))
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		have[id] = true
	}
	var out []string
	for _, id := range ids {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out, rows.Err()
}

// CampaignCount is a campaign's stored grants.
type CampaignCount struct {
	Campaign   string
	Grants     int64
	Users      int64 // distinct users
	MaxPerUser int64
}

// Counts returns per-campaign totals.
func (s *Store) Counts(ctx context.Context) (map[string]CampaignCount, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT campaign, SUM(n), COUNT(*), MAX(n) FROM
		(SELECT campaign, user_id, COUNT(*) AS n FROM grants GROUP BY campaign, user_id) per_user GROUP BY campaign`)
	if err != nil {
		return nil, fmt.Errorf("store: counts: %w", err)
	}
	defer rows.Close()
	out := map[string]CampaignCount{}
	for rows.Next() {
		var c CampaignCount
		if err := rows.Scan(&c.Campaign, &c.Grants, &c.Users, &c.MaxPerUser); err != nil {
			return nil, err
		}
		out[c.Campaign] = c
	}
	return out, rows.Err()
}

// Count returns the number of stored grants of a campaign.
func (s *Store) Count(ctx context.Context, campaign string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, s.rebind("SELECT COUNT(*) FROM grants WHERE campaign = ?"), campaign).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: count: %w", err)
	}
	return n, nil
}

// IDs calls fn for every stored grant id of campaign, in id order.
func (s *Store) IDs(ctx context.Context, campaign string, fn func(id string)) error {
	cursor := ""
	for {
		gs, next, err := s.ByCampaign(ctx, campaign, cursor, PageMax)
		if err != nil {
			return err
		}
		for _, g := range gs {
			fn(g.GrantID)
		}
		if next == "" {
			return nil
		}
		cursor = next
	}
}

// Campaign returns the stored snapshot of a campaign definition.
func (s *Store) Campaign(ctx context.Context, id string) ([]byte, bool, error) {
	var def string
	err := s.db.QueryRowContext(ctx, s.rebind("SELECT definition FROM campaigns WHERE id = ?"), id).Scan(&def)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: campaign: %w", err)
	}
	return []byte(def), true, nil
}

// SaveCampaign stores a campaign definition snapshot for reporting.
func (s *Store) SaveCampaign(ctx context.Context, id string, definition []byte) error {
	q := "INSERT INTO campaigns (id, definition, updated_at) VALUES (?,?,?) ON CONFLICT (id) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at"
	_, err := s.db.ExecContext(ctx, s.rebind(q), id, string(definition), time.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("store: save campaign: %w", err)
	}
	return nil
}
