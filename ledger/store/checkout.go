package store

// Coupon use after the grab (issue 13): the state of each granted coupon,
// the orders that lock and use them, refunds, the transition log, the
// events outbox and the figures of a campaign's usage. The discount math is
// not here (package gateway/checkout, called by the gateway); the store
// keeps the states and makes every step one transaction, so a coupon is
// locked or used by one order at most (invariant I9) whatever retries,
// concurrent checkouts and crashes happen.
//
//	coupon_states(grant_id PK, user_id, campaign, state unused|locked|used,
//	       order_id ('' unless locked or used), lock_expires_at (unix ns, 0
//	       unless locked), used_at (unix ns), updated_at, transition_seq
//	       (the grant_seq of its last transition))
//	       -- a grant without a row is unused; a lock past lock_expires_at
//	       -- is free (the sweeper releases it, a redeem may take it)
//	orders(order_id PK, user_id, body_hash, state locked|confirmed|
//	       cancelled|expired|refunded|partially_refunded, answer (the
//	       redeem answer, JSON), items, shipping, discount, payable (cents),
//	       lock_expires_at, created_at, confirmed_at, closed_at, updated_at)
//	order_coupons(order_id, grant_id, campaign, user_id, discount) PK (order_id, grant_id)
//	order_refunds(order_id, refund_id, body_hash, lines (JSON), answer
//	       (JSON), full, created_at) PK (order_id, refund_id)
//	coupon_transitions(transition_id PK, grant_id, order_id, campaign,
//	       user_id, from_state, to_state, cause, at, event ('' | used |
//	       released | returned), published (unix ns, 0 = not yet),
//	       grant_seq (1, 2, … per grant, in commit order))
//	coupon_notices(grant_id PK, campaign, user_id, valid_until, noticed_at,
//	       published)  -- one expiring notice per grant, its flag and outbox
//
// Every step keeps this: a coupon row is locked by order O only while O is
// locked, and used by O only while O is confirmed or (partially) refunded
// with the coupon kept — the order's row and its coupons' rows change in
// the same transaction. Conditional updates (… WHERE state = 'unused')
// decide races; PostgreSQL runs these transactions at READ COMMITTED: an
// UPDATE or INSERT … ON CONFLICT DO UPDATE waits for a concurrent writer of
// the same row and re-evaluates its WHERE on the row it committed, so of 50
// concurrent orders on one grant exactly one finds it unused (tested). A
// deadlock or serialization failure is retried (inTx). SQLite has one
// connection per process: its transactions run one at a time.
//
// A grant's transitions are ordered by grant_seq, never by at: at is the
// clock of whichever gateway made the step, and gateways' clocks differ (a
// gateway 5 ms behind that takes a coupon another one just released would
// stamp the take before the release). Every transition increments its
// grant's coupon_states.transition_seq in the transaction that changed the
// row, after the row's conditional update took the row (PostgreSQL: its row
// lock, held to the commit; SQLite: the one writer), so the numbers follow
// the commit order of the grant's steps. The log and the outbox are read in
// that order: a consumer of COUPON_EVENTS gets one grant's events in the
// order they happened (released by A before used by B), each with its
// grant_seq. Transitions written before the column existed have grant_seq 0
// and sort first, by at, as they did.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// Coupon states (coupon_states.state). "expired" is not stored: an unused
// grant whose valid_until has passed is shown as expired (WalletExpired).
const (
	CouponUnused = "unused"
	CouponLocked = "locked"
	CouponUsed   = "used"
	// WalletExpired is the wallet's name for an unused grant past its
	// valid_until.
	WalletExpired = "expired"
)

// Order states (orders.state).
const (
	OrderLocked            = "locked"             // coupons locked, waiting for confirm or cancel
	OrderConfirmed         = "confirmed"          // paid: coupons used
	OrderCancelled         = "cancelled"          // cancelled before confirm: coupons released
	OrderExpired           = "expired"            // not confirmed within the lock TTL: coupons released
	OrderPartiallyRefunded = "partially_refunded" // some units refunded: coupons stay used
	OrderRefunded          = "refunded"           // every unit refunded: coupons returned or kept per on_refund
)

// Transition causes (coupon_transitions.cause).
const (
	CauseRedeem      = "redeem"
	CauseConfirm     = "confirm"
	CauseCancel      = "cancel"
	CauseLockExpired = "lock_expired"
	CauseRefund      = "refund"
)

// Event types: the suffix of the NATS subject flashgate.coupons.<type>.
const (
	EventUsed     = "used"     // locked → used (confirm)
	EventReleased = "released" // locked → unused (cancel, lock expiry)
	EventReturned = "returned" // used → unused (a full refund with on_refund return)
	EventExpiring = "expiring" // an unused grant nears its valid_until
)

// Limits of checkout input the store holds.
const (
	OrderIDLenMax  = 128
	RefundIDLenMax = 64
	// RedeemCouponsMax bounds the coupons one order locks.
	RedeemCouponsMax = 256
)

var (
	// ErrOrderConflict: the order id (or the refund id within an order) was
	// used before with another body or by another user.
	ErrOrderConflict = errors.New("store: order id used with another body or user")
	// ErrOrderNotFound: no such order of this user.
	ErrOrderNotFound = errors.New("store: no such order")
)

// InUseError is a redeem refused because coupons are locked or used by
// another order (or no longer belong to the user); nothing was locked.
type InUseError struct{ GrantIDs []string }

func (e *InUseError) Error() string {
	return "store: coupons in use by another order: " + strings.Join(e.GrantIDs, ", ")
}

// OrderStateError is a transition the order's state does not allow.
type OrderStateError struct {
	OrderID, State, Want string
}

func (e *OrderStateError) Error() string {
	return fmt.Sprintf("store: order %s is %s: cannot %s", e.OrderID, e.State, e.Want)
}

// WalletGrant is a stored grant with its coupon state.
type WalletGrant struct {
	Grant
	// State is unused, locked or used; a lock past its expiry reads unused.
	State         string `json:"state"`
	OrderID       string `json:"order_id,omitempty"`        // the locking or using order
	LockExpiresAt int64  `json:"lock_expires_at,omitempty"` // unix ns, while locked
	UsedAt        int64  `json:"used_at,omitempty"`         // unix ns, while used
}

// WalletState is the state the wallet shows at now: unused, locked, used,
// or expired (unused, past valid_until).
func (w *WalletGrant) WalletState(now time.Time) string {
	if w.State == CouponUnused && w.ValidUntil != 0 && w.ValidUntil <= now.Unix() {
		return WalletExpired
	}
	return w.State
}

// OrderCoupon is one coupon of an order and its share of the discount.
type OrderCoupon struct {
	GrantID  string `json:"grant_id"`
	Campaign string `json:"campaign"`
	Discount int64  `json:"discount"`
}

// Order is a stored order.
type Order struct {
	OrderID       string
	User          string
	BodyHash      string
	State         string
	Answer        []byte // the redeem answer, as stored
	Items         int64
	Shipping      int64
	Discount      int64
	Payable       int64
	LockExpiresAt int64 // unix ns
	CreatedAt     int64
	ConfirmedAt   int64 // 0 until confirmed
	ClosedAt      int64 // cancelled, expired or fully refunded at (0 otherwise)
	UpdatedAt     int64
}

// Redeem is one redeem: lock Coupons to OrderID for User and store Answer.
type Redeem struct {
	OrderID  string
	User     string
	BodyHash string // of the canonical request: a retry must carry the same
	Answer   []byte // JSON, returned to every retry
	Coupons  []OrderCoupon
	Items    int64
	Shipping int64
	Discount int64
	Payable  int64
	Now      time.Time
	LockTTL  time.Duration
}

// StoredRefund is one refund of an order.
type StoredRefund struct {
	RefundID  string
	BodyHash  string
	Lines     []byte // JSON: the units this refund took, per line (the gateway's encoding)
	Answer    []byte
	Full      bool // it completed the order's refund
	CreatedAt int64
}

// RefundComputed is what a refund computes from the order and its earlier
// refunds: what to store and which coupons to return.
type RefundComputed struct {
	Lines  []byte
	Answer []byte
	Full   bool     // every unit of the order is now refunded
	Return []string // grant ids that become unused again
}

// RefundRequest is one refund of an order.
type RefundRequest struct {
	OrderID  string
	User     string
	RefundID string
	BodyHash string
	Now      time.Time
	// Compute runs inside the transaction, after the order is locked
	// against concurrent refunds: pure (no store calls), it may run more
	// than once (a transaction retried after a deadlock).
	Compute func(o *Order, earlier []StoredRefund) (RefundComputed, error)
}

// Transition is one change of a coupon's state.
type Transition struct {
	ID       string `json:"transition_id"`
	GrantID  string `json:"grant_id"`
	Seq      int64  `json:"grant_seq"` // the grant's transitions 1, 2, … in commit order (0: written before the column existed)
	OrderID  string `json:"order_id"`
	Campaign string `json:"campaign"`
	User     string `json:"user"`
	From     string `json:"from"`
	To       string `json:"to"`
	Cause    string `json:"cause"`
	At       int64  `json:"at_ns"`
	Event    string `json:"event,omitempty"`
}

// Event is one coupon event waiting in the outbox.
type Event struct {
	ID         string `json:"event_id"` // transition id, or expiring:<grant id>
	Type       string `json:"type"`     // used | released | returned | expiring
	GrantID    string `json:"grant_id"`
	Campaign   string `json:"campaign"`
	User       string `json:"user"`
	OrderID    string `json:"order_id,omitempty"`
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	Cause      string `json:"cause,omitempty"`
	At         int64  `json:"at_ns"`
	Seq        int64  `json:"grant_seq,omitempty"`   // the transition's grant_seq: a grant's events in the order they happened
	ValidUntil int64  `json:"valid_until,omitempty"` // expiring: unix s
}

// expiringPrefix names the event id of a grant's expiring notice.
const expiringPrefix = "expiring:"

func (s *Store) migrateCheckout(ctx context.Context, db migrator) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS coupon_states (
			grant_id TEXT PRIMARY KEY,
			user_id TEXT NOT NULL,
			campaign TEXT NOT NULL,
			state TEXT NOT NULL,
			order_id TEXT NOT NULL,
			lock_expires_at BIGINT NOT NULL,
			used_at BIGINT NOT NULL,
			updated_at BIGINT NOT NULL,
			transition_seq BIGINT NOT NULL DEFAULT 0)`,
		`CREATE INDEX IF NOT EXISTS coupon_states_by_order ON coupon_states (order_id)`,
		`CREATE INDEX IF NOT EXISTS coupon_states_by_campaign ON coupon_states (campaign, state)`,
		`CREATE TABLE IF NOT EXISTS orders (
			order_id TEXT PRIMARY KEY,
			user_id TEXT NOT NULL,
			body_hash TEXT NOT NULL,
			state TEXT NOT NULL,
			answer TEXT NOT NULL,
			items BIGINT NOT NULL,
			shipping BIGINT NOT NULL,
			discount BIGINT NOT NULL,
			payable BIGINT NOT NULL,
			lock_expires_at BIGINT NOT NULL,
			created_at BIGINT NOT NULL,
			confirmed_at BIGINT NOT NULL,
			closed_at BIGINT NOT NULL,
			updated_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS orders_locked ON orders (lock_expires_at) WHERE state = 'locked'`,
		`CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at)`,
		`CREATE TABLE IF NOT EXISTS order_coupons (
			order_id TEXT NOT NULL,
			grant_id TEXT NOT NULL,
			campaign TEXT NOT NULL,
			user_id TEXT NOT NULL,
			discount BIGINT NOT NULL,
			PRIMARY KEY (order_id, grant_id))`,
		`CREATE INDEX IF NOT EXISTS order_coupons_by_campaign ON order_coupons (campaign, order_id)`,
		`CREATE TABLE IF NOT EXISTS order_refunds (
			order_id TEXT NOT NULL,
			refund_id TEXT NOT NULL,
			body_hash TEXT NOT NULL,
			lines TEXT NOT NULL,
			answer TEXT NOT NULL,
			full_refund INTEGER NOT NULL,
			created_at BIGINT NOT NULL,
			PRIMARY KEY (order_id, refund_id))`,
		`CREATE TABLE IF NOT EXISTS coupon_transitions (
			transition_id TEXT PRIMARY KEY,
			grant_id TEXT NOT NULL,
			order_id TEXT NOT NULL,
			campaign TEXT NOT NULL,
			user_id TEXT NOT NULL,
			from_state TEXT NOT NULL,
			to_state TEXT NOT NULL,
			cause TEXT NOT NULL,
			at BIGINT NOT NULL,
			event TEXT NOT NULL,
			published BIGINT NOT NULL,
			grant_seq BIGINT NOT NULL DEFAULT 0)`,
		`CREATE INDEX IF NOT EXISTS coupon_transitions_by_grant ON coupon_transitions (grant_id, at)`,
		`CREATE INDEX IF NOT EXISTS coupon_transitions_unpublished ON coupon_transitions (at) WHERE published = 0 AND event <> ''`,
		`CREATE TABLE IF NOT EXISTS coupon_notices (
			grant_id TEXT PRIMARY KEY,
			campaign TEXT NOT NULL,
			user_id TEXT NOT NULL,
			valid_until BIGINT NOT NULL,
			noticed_at BIGINT NOT NULL,
			published BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS coupon_notices_unpublished ON coupon_notices (noticed_at) WHERE published = 0`,
		// The expiring sweeper finds a campaign's grants by valid_until.
		`CREATE INDEX IF NOT EXISTS grants_by_campaign_valid_until ON grants (campaign, valid_until)`,
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("store: migrate checkout: %w", err)
		}
	}
	// Columns added since the tables were first created: a database of an
	// earlier version gets them with their defaults (nothing is rewritten
	// or dropped; coupon_transitions_unpublished stays for a gateway of the
	// earlier version still running beside this one).
	for _, c := range []struct{ table, column, def string }{
		{"coupon_states", "transition_seq", "BIGINT NOT NULL DEFAULT 0"},
		{"coupon_transitions", "grant_seq", "BIGINT NOT NULL DEFAULT 0"},
	} {
		if err := s.addColumn(ctx, db, c.table, c.column, c.def); err != nil {
			return fmt.Errorf("store: migrate checkout: %w", err)
		}
	}
	// The outbox is read a grant at a time, in its transitions' order.
	if _, err := db.ExecContext(ctx, `CREATE INDEX IF NOT EXISTS coupon_transitions_outbox ON coupon_transitions (grant_id, grant_seq) WHERE published = 0 AND event <> ''`); err != nil {
		return fmt.Errorf("store: migrate checkout: %w", err)
	}
	return nil
}

// addColumn adds column (with its definition def) to table unless the
// table has it. It looks first: an ALTER TABLE takes PostgreSQL's ACCESS
// EXCLUSIVE lock on the table even when IF NOT EXISTS finds the column,
// which would stall checkout traffic behind every gateway's start. Safe
// when several processes open the store at once (PostgreSQL: migrations
// take turns; SQLite: a column another process added meanwhile is fine).
func (s *Store) addColumn(ctx context.Context, db migrator, table, column, def string) error {
	has := func() (bool, error) {
		q := "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?"
		if s.driver == "postgres" {
			q = "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
		}
		var n int
		err := db.QueryRowContext(ctx, q, table, column).Scan(&n)
		return n > 0, err
	}
	if ok, err := has(); err != nil || ok {
		return err
	}
	add := "ALTER TABLE " + table + " ADD COLUMN " + column + " " + def
	if s.driver == "postgres" {
		add = "ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS " + column + " " + def
	}
	if _, err := db.ExecContext(ctx, add); err != nil {
		if ok, herr := has(); herr == nil && ok {
			return nil // another process added it meanwhile
		}
		return fmt.Errorf("add %s.%s: %w", table, column, err)
	}
	return nil
}

// --- transactions ------------------------------------------------------------

// txAttemptsMax bounds the runs of one transaction that PostgreSQL aborted
// for a deadlock or a serialization failure, or SQLite for a busy database.
const txAttemptsMax = 5

func (s *Store) txOptions() *sql.TxOptions {
	if s.driver == "postgres" {
		// Explicit, whatever default_transaction_isolation the server has:
		// the conditional updates are written for READ COMMITTED.
		return &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	return nil
}

// inTx runs fn in a transaction and commits, retrying a transaction the
// database aborted for a transient conflict. fn may run more than once.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for attempt := 1; ; attempt++ {
		tx, err := s.db.BeginTx(ctx, s.txOptions())
		if err != nil {
			return fmt.Errorf("store: begin: %w", err)
		}
		err = fn(tx)
		if err == nil {
			err = tx.Commit()
		} else {
			_ = tx.Rollback()
		}
		if err == nil || !transient(err) || attempt == txAttemptsMax || ctx.Err() != nil {
			return err
		}
		time.Sleep(time.Duration(attempt) * 5 * time.Millisecond)
	}
}

// transient: a deadlock, a serialization failure or a busy SQLite file —
// the same transaction may succeed when run again.
func transient(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code == "40001" || pg.Code == "40P01"
	}
	var lite *sqlite.Error
	if errors.As(err, &lite) {
		return lite.Code()&0xff == 5 || lite.Code()&0xff == 6 // SQLITE_BUSY, SQLITE_LOCKED
	}
	return false
}

// transitionSeq tells apart the ids this process mints within one
// nanosecond (a transaction writes several at the same instant).
var transitionSeq atomic.Uint32

// newTransitionID mints a transition (and event) id: 8 bytes of unix
// nanoseconds, a 4-byte process counter, 4 random bytes. It is unique; it
// does not order a grant's transitions (grant_seq does: the clocks of two
// gateways differ).
func newTransitionID(at int64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(at))
	binary.BigEndian.PutUint32(b[8:12], transitionSeq.Add(1))
	_, _ = rand.Read(b[12:])
	return hex.EncodeToString(b[:])
}

// record appends one transition to the log (and the outbox when it has an
// event). The caller has just changed the grant's coupon_states row in tx
// (its conditional update took the row): the grant's transition_seq is
// incremented on that row and the transition takes the new value as its
// grant_seq, so a grant's transitions are numbered in commit order whatever
// the gateways' clocks say.
func (s *Store) record(ctx context.Context, tx *sql.Tx, t Transition) error {
	var seq int64
	err := tx.QueryRowContext(ctx, s.rebind("UPDATE coupon_states SET transition_seq = transition_seq + 1 WHERE grant_id = ? RETURNING transition_seq"),
		t.GrantID).Scan(&seq)
	if err != nil {
		return fmt.Errorf("store: transition seq of %s: %w", t.GrantID, err)
	}
	_, err = tx.ExecContext(ctx, s.rebind(`INSERT INTO coupon_transitions
		(transition_id, grant_id, order_id, campaign, user_id, from_state, to_state, cause, at, event, published, grant_seq)
		VALUES (?,?,?,?,?,?,?,?,?,?,0,?)`),
		newTransitionID(t.At), t.GrantID, t.OrderID, t.Campaign, t.User, t.From, t.To, t.Cause, t.At, t.Event, seq)
	if err != nil {
		return fmt.Errorf("store: transition: %w", err)
	}
	return nil
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// --- the wallet --------------------------------------------------------------

var walletColumns = "g." + strings.ReplaceAll(grantColumns, ", ", ", g.") +
	", COALESCE(s.state, 'unused'), COALESCE(s.order_id, ''), COALESCE(s.lock_expires_at, 0), COALESCE(s.used_at, 0)"

const walletFrom = " FROM grants g LEFT JOIN coupon_states s ON s.grant_id = g.grant_id "

func scanWallet(rows *sql.Rows, now time.Time) ([]WalletGrant, error) {
	defer rows.Close()
	var out []WalletGrant
	for rows.Next() {
		var w WalletGrant
		var shard, seq int64
		g := &w.Grant
		if err := rows.Scan(&g.GrantID, &g.Campaign, &g.User, &g.Device, &g.ClientIP, &g.IdempotencyKey, &shard,
			&g.GrantedAtNanos, &g.ValidFrom, &g.ValidUntil, &g.FaceValue, &g.Node, &seq,
			&w.State, &w.OrderID, &w.LockExpiresAt, &w.UsedAt); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		g.Shard, g.LedgerSeq = uint32(shard), uint64(seq)
		if w.State == CouponLocked && w.LockExpiresAt <= now.UnixNano() {
			w.State = CouponUnused // the lock expired: free, whether or not swept yet
		}
		if w.State != CouponLocked {
			w.LockExpiresAt = 0
		}
		if w.State == CouponUnused {
			w.OrderID = ""
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// Wallet returns a user's grants with their states, newest first (at most
// limit ≤ PageMax). state filters by the wallet state: "" (all), unused,
// locked, used or expired.
func (s *Store) Wallet(ctx context.Context, user, state string, now time.Time, limit int) ([]WalletGrant, error) {
	limit = min(max(limit, 1), PageMax)
	const free = "(s.grant_id IS NULL OR s.state = 'unused' OR (s.state = 'locked' AND s.lock_expires_at <= ?))"
	where := "g.user_id = ?"
	args := []any{user}
	ns, sec := now.UnixNano(), now.Unix()
	switch state {
	case "":
	case CouponUsed:
		where += " AND s.state = 'used'"
	case CouponLocked:
		where += " AND s.state = 'locked' AND s.lock_expires_at > ?"
		args = append(args, ns)
	case CouponUnused:
		where += " AND " + free + " AND (g.valid_until = 0 OR g.valid_until > ?)"
		args = append(args, ns, sec)
	case WalletExpired:
		where += " AND " + free + " AND g.valid_until <> 0 AND g.valid_until <= ?"
		args = append(args, ns, sec)
	default:
		return nil, fmt.Errorf("store: wallet state %q", state)
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+walletColumns+walletFrom+"WHERE "+where+" ORDER BY g.granted_at DESC, g.grant_id LIMIT ?"), args...)
	if err != nil {
		return nil, fmt.Errorf("store: wallet: %w", err)
	}
	return scanWallet(rows, now)
}

// UserGrants returns those of ids (at most RedeemCouponsMax) that are
// stored grants of user, with their states; ids the store does not hold
// for this user are absent.
func (s *Store) UserGrants(ctx context.Context, user string, ids []string, now time.Time) ([]WalletGrant, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > RedeemCouponsMax {
		return nil, fmt.Errorf("store: %d grant ids exceed %d", len(ids), RedeemCouponsMax)
	}
	args := []any{user}
	for _, id := range ids {
		args = append(args, id)
	}
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+walletColumns+walletFrom+"WHERE g.user_id = ? AND g.grant_id IN ("+placeholders(len(ids))+")"), args...)
	if err != nil {
		return nil, fmt.Errorf("store: user grants: %w", err)
	}
	return scanWallet(rows, now)
}

// Usable returns a user's grants that are free to use at now — unused (or
// their lock expired), validity not ended — earliest valid_until first
// (grants that never expire last), at most limit ≤ PageMax: the coupons a
// best-choice quote is offered.
func (s *Store) Usable(ctx context.Context, user string, now time.Time, limit int) ([]WalletGrant, error) {
	limit = min(max(limit, 1), PageMax)
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+walletColumns+walletFrom+
		`WHERE g.user_id = ? AND (s.grant_id IS NULL OR s.state = 'unused' OR (s.state = 'locked' AND s.lock_expires_at <= ?))
		AND (g.valid_until = 0 OR g.valid_until > ?)
		ORDER BY CASE WHEN g.valid_until = 0 THEN 1 ELSE 0 END, g.valid_until, g.grant_id LIMIT ?`),
		user, now.UnixNano(), now.Unix(), limit)
	if err != nil {
		return nil, fmt.Errorf("store: usable: %w", err)
	}
	return scanWallet(rows, now)
}

// --- orders ------------------------------------------------------------------

const orderColumns = "order_id, user_id, body_hash, state, answer, items, shipping, discount, payable, lock_expires_at, created_at, confirmed_at, closed_at, updated_at"

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) readOrder(ctx context.Context, q queryer, orderID string) (Order, bool, error) {
	var o Order
	var answer string
	err := q.QueryRowContext(ctx, s.rebind("SELECT "+orderColumns+" FROM orders WHERE order_id = ?"), orderID).Scan(
		&o.OrderID, &o.User, &o.BodyHash, &o.State, &answer, &o.Items, &o.Shipping, &o.Discount, &o.Payable,
		&o.LockExpiresAt, &o.CreatedAt, &o.ConfirmedAt, &o.ClosedAt, &o.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return o, false, nil
	}
	if err != nil {
		return o, false, fmt.Errorf("store: order: %w", err)
	}
	o.Answer = []byte(answer)
	return o, true, nil
}

// Order returns a stored order.
func (s *Store) Order(ctx context.Context, orderID string) (Order, bool, error) {
	return s.readOrder(ctx, s.db, orderID)
}

// OrderCoupons returns the coupons of an order, by grant id.
func (s *Store) OrderCoupons(ctx context.Context, orderID string) ([]OrderCoupon, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT grant_id, campaign, discount FROM order_coupons WHERE order_id = ? ORDER BY grant_id"), orderID)
	if err != nil {
		return nil, fmt.Errorf("store: order coupons: %w", err)
	}
	defer rows.Close()
	var out []OrderCoupon
	for rows.Next() {
		var c OrderCoupon
		if err := rows.Scan(&c.GrantID, &c.Campaign, &c.Discount); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Redeem locks r.Coupons to r.OrderID in one transaction, all or none, and
// stores the order with its answer. A retry of the same order (same user and
// body hash) returns the stored order and replay = true, whatever happened
// to it since; another body or user for the order id is ErrOrderConflict. A
// coupon locked (lock not expired) or used by another order is an
// *InUseError naming every such coupon, and nothing is written. A lock whose
// expiry has passed is free: its order is expired in the same transaction
// (its coupons released) before the coupon is taken.
func (s *Store) Redeem(ctx context.Context, r *Redeem) (Order, bool, error) {
	if len(r.Coupons) == 0 || len(r.Coupons) > RedeemCouponsMax {
		return Order{}, false, fmt.Errorf("store: a redeem locks 1..%d coupons", RedeemCouponsMax)
	}
	coupons := slices.Clone(r.Coupons)
	slices.SortFunc(coupons, func(a, b OrderCoupon) int { return strings.Compare(a.GrantID, b.GrantID) }) // one lock order: no deadlock between orders
	now := r.Now.UnixNano()
	lockUntil := r.Now.Add(r.LockTTL).UnixNano()
	var out Order
	var replay bool
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		replay = false
		res, err := tx.ExecContext(ctx, s.rebind("INSERT INTO orders ("+orderColumns+") VALUES (?,?,?,?,?,?,?,?,?,?,?,0,0,?) ON CONFLICT (order_id) DO NOTHING"),
			r.OrderID, r.User, r.BodyHash, OrderLocked, string(r.Answer), r.Items, r.Shipping, r.Discount, r.Payable, lockUntil, now, now)
		if err != nil {
			return fmt.Errorf("store: insert order: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			o, ok, err := s.readOrder(ctx, tx, r.OrderID)
			if err != nil {
				return err
			}
			if !ok { // deleted meanwhile: cannot happen (orders are never deleted)
				return fmt.Errorf("store: order %s vanished", r.OrderID)
			}
			if o.User != r.User || o.BodyHash != r.BodyHash {
				return ErrOrderConflict
			}
			out, replay = o, true
			return nil
		}
		// Orders whose expired locks hold any of these coupons end first.
		args := []any{now, r.OrderID}
		for _, c := range coupons {
			args = append(args, c.GrantID)
		}
		holders, err := s.column(ctx, tx, "SELECT DISTINCT order_id FROM coupon_states WHERE state = 'locked' AND lock_expires_at <= ? AND order_id <> ? AND grant_id IN ("+placeholders(len(coupons))+") ORDER BY order_id", args...)
		if err != nil {
			return err
		}
		for _, h := range holders {
			if _, err := s.expireOrder(ctx, tx, h, r.Now); err != nil {
				return err
			}
		}
		var inUse []string
		for _, c := range coupons {
			res, err := tx.ExecContext(ctx, s.rebind(`INSERT INTO coupon_states (grant_id, user_id, campaign, state, order_id, lock_expires_at, used_at, updated_at)
				SELECT grant_id, user_id, campaign, 'locked', CAST(? AS TEXT), CAST(? AS BIGINT), 0, CAST(? AS BIGINT) FROM grants WHERE grant_id = ? AND user_id = ?
				ON CONFLICT (grant_id) DO UPDATE SET state = 'locked', order_id = excluded.order_id,
					lock_expires_at = excluded.lock_expires_at, used_at = 0, updated_at = excluded.updated_at
				WHERE coupon_states.state = 'unused' OR (coupon_states.state = 'locked' AND coupon_states.order_id = excluded.order_id)`),
				r.OrderID, lockUntil, now, c.GrantID, r.User)
			if err != nil {
				return fmt.Errorf("store: lock %s: %w", c.GrantID, err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				inUse = append(inUse, c.GrantID)
			}
		}
		if len(inUse) > 0 {
			return &InUseError{GrantIDs: inUse}
		}
		for _, c := range coupons {
			if _, err := tx.ExecContext(ctx, s.rebind("INSERT INTO order_coupons (order_id, grant_id, campaign, user_id, discount) VALUES (?,?,?,?,?)"),
				r.OrderID, c.GrantID, c.Campaign, r.User, c.Discount); err != nil {
				return fmt.Errorf("store: order coupon: %w", err)
			}
			if err := s.record(ctx, tx, Transition{GrantID: c.GrantID, OrderID: r.OrderID, Campaign: c.Campaign, User: r.User,
				From: CouponUnused, To: CouponLocked, Cause: CauseRedeem, At: now}); err != nil {
				return err
			}
		}
		out, _, err = s.readOrder(ctx, tx, r.OrderID)
		return err
	})
	return out, replay, err
}

func (s *Store) column(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, s.rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("store: query: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

type heldCoupon struct{ grantID, campaign, user string }

// couponsHeld returns the coupons state holds for order, read fully (a
// statement on the transaction's connection may not run while rows are open).
func (s *Store) couponsHeld(ctx context.Context, tx *sql.Tx, orderID, state string) ([]heldCoupon, error) {
	rows, err := tx.QueryContext(ctx, s.rebind("SELECT grant_id, campaign, user_id FROM coupon_states WHERE order_id = ? AND state = ? ORDER BY grant_id"), orderID, state)
	if err != nil {
		return nil, fmt.Errorf("store: coupons of order: %w", err)
	}
	defer rows.Close()
	var out []heldCoupon
	for rows.Next() {
		var h heldCoupon
		if err := rows.Scan(&h.grantID, &h.campaign, &h.user); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// release makes the coupons order holds locked unused again, each change
// recorded with cause and a released event.
func (s *Store) release(ctx context.Context, tx *sql.Tx, orderID string, now int64, cause string) error {
	held, err := s.couponsHeld(ctx, tx, orderID, CouponLocked)
	if err != nil {
		return err
	}
	for _, h := range held {
		res, err := tx.ExecContext(ctx, s.rebind("UPDATE coupon_states SET state = 'unused', order_id = '', lock_expires_at = 0, updated_at = ? WHERE grant_id = ? AND order_id = ? AND state = 'locked'"),
			now, h.grantID, orderID)
		if err != nil {
			return fmt.Errorf("store: release %s: %w", h.grantID, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			if err := s.record(ctx, tx, Transition{GrantID: h.grantID, OrderID: orderID, Campaign: h.campaign, User: h.user,
				From: CouponLocked, To: CouponUnused, Cause: cause, At: now, Event: EventReleased}); err != nil {
				return err
			}
		}
	}
	return nil
}

// expireOrder ends a locked order whose lock has expired and releases its
// coupons; false when the order is not (or no longer) such an order.
func (s *Store) expireOrder(ctx context.Context, tx *sql.Tx, orderID string, at time.Time) (bool, error) {
	now := at.UnixNano()
	res, err := tx.ExecContext(ctx, s.rebind("UPDATE orders SET state = 'expired', closed_at = ?, updated_at = ? WHERE order_id = ? AND state = 'locked' AND lock_expires_at <= ?"),
		now, now, orderID, now)
	if err != nil {
		return false, fmt.Errorf("store: expire order: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	return true, s.release(ctx, tx, orderID, now, CauseLockExpired)
}

// Confirm moves a locked order to confirmed and its coupons from locked to
// used, in one transaction. Idempotent: an order already confirmed (or
// refunded since) is returned as it is. An order whose lock expired is
// expired (its coupons released) and refused; cancelled and expired orders
// are refused: *OrderStateError. Another user's order is ErrOrderNotFound.
func (s *Store) Confirm(ctx context.Context, orderID, user string, at time.Time) (Order, error) {
	now := at.UnixNano()
	var out Order
	var refuse error
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		refuse = nil
		res, err := tx.ExecContext(ctx, s.rebind("UPDATE orders SET state = 'confirmed', confirmed_at = ?, updated_at = ? WHERE order_id = ? AND user_id = ? AND state = 'locked' AND lock_expires_at > ?"),
			now, now, orderID, user, now)
		if err != nil {
			return fmt.Errorf("store: confirm: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			held, err := s.orderCoupons(ctx, tx, orderID)
			if err != nil {
				return err
			}
			for _, h := range held {
				res, err := tx.ExecContext(ctx, s.rebind("UPDATE coupon_states SET state = 'used', used_at = ?, lock_expires_at = 0, updated_at = ? WHERE grant_id = ? AND order_id = ? AND state = 'locked'"),
					now, now, h.grantID, orderID)
				if err != nil {
					return fmt.Errorf("store: use %s: %w", h.grantID, err)
				}
				if n, _ := res.RowsAffected(); n != 1 {
					// Cannot happen while every step keeps coupon and order rows
					// in step; refuse rather than confirm a coupon not held.
					return fmt.Errorf("store: order %s is locked but does not hold grant %s", orderID, h.grantID)
				}
				if err := s.record(ctx, tx, Transition{GrantID: h.grantID, OrderID: orderID, Campaign: h.campaign, User: h.user,
					From: CouponLocked, To: CouponUsed, Cause: CauseConfirm, At: now, Event: EventUsed}); err != nil {
					return err
				}
			}
			out, _, err = s.readOrder(ctx, tx, orderID)
			return err
		}
		o, ok, err := s.readOrder(ctx, tx, orderID)
		switch {
		case err != nil:
			return err
		case !ok || o.User != user:
			refuse = ErrOrderNotFound
			return nil
		}
		out = o
		switch o.State {
		case OrderConfirmed, OrderPartiallyRefunded, OrderRefunded:
			return nil // confirmed before: the same outcome
		case OrderLocked: // its lock expired: it ends now
			if _, err := s.expireOrder(ctx, tx, orderID, at); err != nil {
				return err
			}
			out.State = OrderExpired
		}
		refuse = &OrderStateError{OrderID: orderID, State: out.State, Want: "confirm"}
		return nil
	})
	if err != nil {
		return Order{}, err
	}
	return out, refuse
}

// orderCoupons returns an order's coupons inside a transaction.
func (s *Store) orderCoupons(ctx context.Context, tx *sql.Tx, orderID string) ([]heldCoupon, error) {
	rows, err := tx.QueryContext(ctx, s.rebind("SELECT grant_id, campaign, user_id FROM order_coupons WHERE order_id = ? ORDER BY grant_id"), orderID)
	if err != nil {
		return nil, fmt.Errorf("store: order coupons: %w", err)
	}
	defer rows.Close()
	var out []heldCoupon
	for rows.Next() {
		var h heldCoupon
		if err := rows.Scan(&h.grantID, &h.campaign, &h.user); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// Cancel moves a locked order to cancelled and releases its coupons, in one
// transaction. Idempotent: a cancelled or expired order is returned as it
// is (its coupons are free either way). A confirmed or refunded order is
// refused (*OrderStateError): refund it instead.
func (s *Store) Cancel(ctx context.Context, orderID, user string, at time.Time) (Order, error) {
	now := at.UnixNano()
	var out Order
	var refuse error
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		refuse = nil
		res, err := tx.ExecContext(ctx, s.rebind("UPDATE orders SET state = 'cancelled', closed_at = ?, updated_at = ? WHERE order_id = ? AND user_id = ? AND state = 'locked'"),
			now, now, orderID, user)
		if err != nil {
			return fmt.Errorf("store: cancel: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			if err := s.release(ctx, tx, orderID, now, CauseCancel); err != nil {
				return err
			}
			out, _, err = s.readOrder(ctx, tx, orderID)
			return err
		}
		o, ok, err := s.readOrder(ctx, tx, orderID)
		switch {
		case err != nil:
			return err
		case !ok || o.User != user:
			refuse = ErrOrderNotFound
			return nil
		}
		out = o
		if o.State != OrderCancelled && o.State != OrderExpired {
			refuse = &OrderStateError{OrderID: orderID, State: o.State, Want: "cancel"}
		}
		return nil
	})
	if err != nil {
		return Order{}, err
	}
	return out, refuse
}

// Refund records one refund of a confirmed order, idempotent by refund id
// (the same body returns the stored refund and replay = true; another body
// is ErrOrderConflict). Refunds of one order are serialized on its row; the
// refund's figures come from r.Compute, given the order and its earlier
// refunds. When the refund completes the order's, the order becomes
// refunded and the coupons in Return unused again (a returned event each);
// otherwise it is partially_refunded and its coupons stay used.
func (s *Store) Refund(ctx context.Context, r *RefundRequest) (StoredRefund, Order, bool, error) {
	now := r.Now.UnixNano()
	var out StoredRefund
	var order Order
	var replay bool
	var refuse error
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		refuse, replay = nil, false
		// Lock the order's row: concurrent refunds of one order queue here.
		res, err := tx.ExecContext(ctx, s.rebind("UPDATE orders SET updated_at = ? WHERE order_id = ? AND user_id = ? AND state IN ('confirmed', 'partially_refunded', 'refunded')"),
			now, r.OrderID, r.User)
		if err != nil {
			return fmt.Errorf("store: refund: %w", err)
		}
		o, ok, err := s.readOrder(ctx, tx, r.OrderID)
		switch {
		case err != nil:
			return err
		case !ok || o.User != r.User:
			refuse = ErrOrderNotFound
			return nil
		}
		order = o
		if n, _ := res.RowsAffected(); n == 0 {
			refuse = &OrderStateError{OrderID: r.OrderID, State: o.State, Want: "refund"}
			return nil
		}
		earlier, err := s.refunds(ctx, tx, r.OrderID)
		if err != nil {
			return err
		}
		for _, e := range earlier {
			if e.RefundID != r.RefundID {
				continue
			}
			if e.BodyHash != r.BodyHash {
				refuse = ErrOrderConflict
				return nil
			}
			out, replay = e, true
			return nil
		}
		if o.State == OrderRefunded {
			refuse = &OrderStateError{OrderID: r.OrderID, State: o.State, Want: "refund more"}
			return nil
		}
		c, err := r.Compute(&o, earlier)
		if err != nil {
			refuse = err
			return nil
		}
		full := 0
		if c.Full {
			full = 1
		}
		if _, err := tx.ExecContext(ctx, s.rebind("INSERT INTO order_refunds (order_id, refund_id, body_hash, lines, answer, full_refund, created_at) VALUES (?,?,?,?,?,?,?)"),
			r.OrderID, r.RefundID, r.BodyHash, string(c.Lines), string(c.Answer), full, now); err != nil {
			return fmt.Errorf("store: insert refund: %w", err)
		}
		state, closed := OrderPartiallyRefunded, o.ClosedAt
		if c.Full {
			state, closed = OrderRefunded, now
		}
		if _, err := tx.ExecContext(ctx, s.rebind("UPDATE orders SET state = ?, closed_at = ?, updated_at = ? WHERE order_id = ?"), state, closed, now, r.OrderID); err != nil {
			return fmt.Errorf("store: refund state: %w", err)
		}
		if c.Full {
			held, err := s.couponsHeld(ctx, tx, r.OrderID, CouponUsed)
			if err != nil {
				return err
			}
			for _, h := range held {
				if !slices.Contains(c.Return, h.grantID) {
					continue // on_refund keep, or its validity ended: stays used
				}
				res, err := tx.ExecContext(ctx, s.rebind("UPDATE coupon_states SET state = 'unused', order_id = '', used_at = 0, updated_at = ? WHERE grant_id = ? AND order_id = ? AND state = 'used'"),
					now, h.grantID, r.OrderID)
				if err != nil {
					return fmt.Errorf("store: return %s: %w", h.grantID, err)
				}
				if n, _ := res.RowsAffected(); n == 1 {
					if err := s.record(ctx, tx, Transition{GrantID: h.grantID, OrderID: r.OrderID, Campaign: h.campaign, User: h.user,
						From: CouponUsed, To: CouponUnused, Cause: CauseRefund, At: now, Event: EventReturned}); err != nil {
						return err
					}
				}
			}
		}
		out = StoredRefund{RefundID: r.RefundID, BodyHash: r.BodyHash, Lines: c.Lines, Answer: c.Answer, Full: c.Full, CreatedAt: now}
		order, _, err = s.readOrder(ctx, tx, r.OrderID)
		return err
	})
	if err != nil {
		return StoredRefund{}, Order{}, false, err
	}
	return out, order, replay, refuse
}

func (s *Store) refunds(ctx context.Context, tx *sql.Tx, orderID string) ([]StoredRefund, error) {
	rows, err := tx.QueryContext(ctx, s.rebind("SELECT refund_id, body_hash, lines, answer, full_refund, created_at FROM order_refunds WHERE order_id = ? ORDER BY created_at, refund_id"), orderID)
	if err != nil {
		return nil, fmt.Errorf("store: refunds: %w", err)
	}
	defer rows.Close()
	var out []StoredRefund
	for rows.Next() {
		var r StoredRefund
		var lines, answer string
		var full int64
		if err := rows.Scan(&r.RefundID, &r.BodyHash, &lines, &answer, &full, &r.CreatedAt); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		r.Lines, r.Answer, r.Full = []byte(lines), []byte(answer), full != 0
		out = append(out, r)
	}
	return out, rows.Err()
}

// Refunds returns an order's refunds, oldest first.
func (s *Store) Refunds(ctx context.Context, orderID string) ([]StoredRefund, error) {
	var out []StoredRefund
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.refunds(ctx, tx, orderID)
		return err
	})
	return out, err
}

// ExpireLocks ends up to batch locked orders whose lock expired at now and
// releases their coupons (each order its own transaction); it returns how
// many it ended. Safe on several gateways at once: the conditional update
// lets one of them end each order.
func (s *Store) ExpireLocks(ctx context.Context, now time.Time, batch int) (int, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT order_id FROM orders WHERE state = 'locked' AND lock_expires_at <= ? ORDER BY lock_expires_at LIMIT ?"), now.UnixNano(), batch)
	if err != nil {
		return 0, fmt.Errorf("store: expired locks: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("store: scan: %w", err)
		}
		ids = append(ids, id)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		var ended bool
		if err := s.inTx(ctx, func(tx *sql.Tx) error {
			var err error
			ended, err = s.expireOrder(ctx, tx, id, now)
			return err
		}); err != nil {
			return n, err
		}
		if ended {
			n++
		}
	}
	return n, nil
}

// Transitions returns a grant's transitions in the order they committed
// (grant_seq; at only among those written before grant_seq existed).
func (s *Store) Transitions(ctx context.Context, grantID string) ([]Transition, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind(`SELECT transition_id, grant_id, grant_seq, order_id, campaign, user_id, from_state, to_state, cause, at, event
		FROM coupon_transitions WHERE grant_id = ? ORDER BY grant_seq, at, transition_id`), grantID)
	if err != nil {
		return nil, fmt.Errorf("store: transitions: %w", err)
	}
	defer rows.Close()
	var out []Transition
	for rows.Next() {
		var t Transition
		if err := rows.Scan(&t.ID, &t.GrantID, &t.Seq, &t.OrderID, &t.Campaign, &t.User, &t.From, &t.To, &t.Cause, &t.At, &t.Event); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// --- events ------------------------------------------------------------------

// NoticeExpiring records, once per grant, an expiring notice for up to
// batch unused grants of campaign whose valid_until falls in (now, until]
// (unix seconds); the notices wait in the outbox (PendingEvents). It
// returns how many it recorded. The notice row is the grant's flag: a grant
// is noticed at most once, on any number of gateways.
func (s *Store) NoticeExpiring(ctx context.Context, campaign string, now time.Time, until int64, batch int) (int, error) {
	res, err := s.db.ExecContext(ctx, s.rebind(`INSERT INTO coupon_notices (grant_id, campaign, user_id, valid_until, noticed_at, published)
		SELECT g.grant_id, g.campaign, g.user_id, g.valid_until, CAST(? AS BIGINT), 0 FROM grants g LEFT JOIN coupon_states s ON s.grant_id = g.grant_id
		WHERE g.campaign = ? AND g.valid_until > ? AND g.valid_until <= ?
			AND (s.grant_id IS NULL OR s.state = 'unused' OR (s.state = 'locked' AND s.lock_expires_at <= ?))
			AND NOT EXISTS (SELECT 1 FROM coupon_notices n WHERE n.grant_id = g.grant_id)
		ORDER BY g.valid_until LIMIT ?
		ON CONFLICT (grant_id) DO NOTHING`),
		now.UnixNano(), campaign, now.Unix(), until, now.UnixNano(), batch)
	if err != nil {
		return 0, fmt.Errorf("store: notice expiring: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// PendingEvents returns up to limit events not yet published: transitions
// with an event, a grant at a time and each grant's in the order they
// committed (grant_seq), then expiring notices. A publisher that sends them
// in this order, stopping at the first failure, never sends a grant's event
// before an earlier one of the same grant: a transition that commits after
// another of its grant has the higher grant_seq, so a read that sees it sees
// the earlier one too (or finds it published).
func (s *Store) PendingEvents(ctx context.Context, limit int) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind(`SELECT transition_id, event, grant_id, grant_seq, campaign, user_id, order_id, from_state, to_state, cause, at
		FROM coupon_transitions WHERE published = 0 AND event <> '' ORDER BY grant_id, grant_seq, at, transition_id LIMIT ?`), limit)
	if err != nil {
		return nil, fmt.Errorf("store: pending events: %w", err)
	}
	var out []Event
	for rows.Next() {
		var e Event
		if err := rows.Scan(&e.ID, &e.Type, &e.GrantID, &e.Seq, &e.Campaign, &e.User, &e.OrderID, &e.From, &e.To, &e.Cause, &e.At); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out = append(out, e)
	}
	err = rows.Err()
	rows.Close()
	if err != nil || len(out) >= limit {
		return out, err
	}
	rows, err = s.db.QueryContext(ctx, s.rebind(`SELECT grant_id, campaign, user_id, valid_until, noticed_at FROM coupon_notices
		WHERE published = 0 ORDER BY noticed_at, grant_id LIMIT ?`), limit-len(out))
	if err != nil {
		return nil, fmt.Errorf("store: pending notices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e := Event{Type: EventExpiring}
		if err := rows.Scan(&e.GrantID, &e.Campaign, &e.User, &e.ValidUntil, &e.At); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		e.ID = expiringPrefix + e.GrantID
		out = append(out, e)
	}
	return out, rows.Err()
}

// MarkPublished records that the events ids were published (acknowledged by
// the stream) at now.
func (s *Store) MarkPublished(ctx context.Context, ids []string, now time.Time) error {
	var trans, notices []any
	for _, id := range ids {
		if g, ok := strings.CutPrefix(id, expiringPrefix); ok {
			notices = append(notices, g)
		} else {
			trans = append(trans, id)
		}
	}
	for len(trans) > 0 || len(notices) > 0 {
		for _, part := range []struct {
			table, key string
			ids        *[]any
		}{{"coupon_transitions", "transition_id", &trans}, {"coupon_notices", "grant_id", &notices}} {
			chunk := (*part.ids)[:min(len(*part.ids), BatchMax)]
			*part.ids = (*part.ids)[len(chunk):]
			if len(chunk) == 0 {
				continue
			}
			args := append([]any{now.UnixNano()}, chunk...)
			if _, err := s.db.ExecContext(ctx, s.rebind("UPDATE "+part.table+" SET published = ? WHERE "+part.key+" IN ("+placeholders(len(chunk))+")"), args...); err != nil {
				return fmt.Errorf("store: mark published: %w", err)
			}
		}
	}
	return nil
}

// --- statistics --------------------------------------------------------------

// Usage is a campaign's coupon use, computed from the store. Orders count
// when confirmed or partially refunded (a fully refunded order is no sale);
// a discount is the coupon's share at redeem.
type Usage struct {
	Stored           int64      `json:"stored"`             // grants the store holds
	UsersClaimed     int64      `json:"users_claimed"`      // distinct users holding a grant
	Used             int64      `json:"used"`               // grants in state used now (a coupon kept after a refund stays used)
	Locked           int64      `json:"locked"`             // grants locked by an order not yet confirmed (lock not expired)
	UsageRate        float64    `json:"usage_rate"`         // used ÷ stored
	DiscountTotal    int64      `json:"discount_total"`     // Σ the campaign's coupons' discounts in counted orders
	OrdersWithCoupon int64      `json:"orders_with_coupon"` // counted orders using one of its coupons
	UsersWithCoupon  int64      `json:"users_with_coupon"`  // distinct users of those orders
	OrderValue       int64      `json:"order_value"`        // Σ payable of those orders
	AOVWithCoupon    float64    `json:"aov_with_coupon"`    // order_value ÷ orders_with_coupon
	Conversion       float64    `json:"conversion"`         // users_with_coupon ÷ users_claimed
	ROI              float64    `json:"roi"`                // order_value ÷ discount_total
	Daily            []UsageDay `json:"daily"`              // by the UTC day of confirmation, oldest first
}

// UsageDay is one UTC day of a campaign's use (orders confirmed that day).
type UsageDay struct {
	Day        string `json:"day"` // YYYY-MM-DD
	Orders     int64  `json:"orders"`
	Used       int64  `json:"used"` // its coupons in those orders
	Discount   int64  `json:"discount"`
	OrderValue int64  `json:"order_value"`
}

const dayNanos = int64(24 * time.Hour)

// CampaignUsage computes a campaign's usage figures and its daily trend over
// the days UTC days ending with now's.
func (s *Store) CampaignUsage(ctx context.Context, campaign string, now time.Time, days int) (Usage, error) {
	var u Usage
	q := func(dst []any, query string, args ...any) error {
		if err := s.db.QueryRowContext(ctx, s.rebind(query), args...).Scan(dst...); err != nil {
			return fmt.Errorf("store: usage: %w", err)
		}
		return nil
	}
	if err := q([]any{&u.Stored, &u.UsersClaimed}, "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM grants WHERE campaign = ?", campaign); err != nil {
		return u, err
	}
	if err := q([]any{&u.Used, &u.Locked}, `SELECT COALESCE(CAST(SUM(CASE WHEN state = 'used' THEN 1 ELSE 0 END) AS BIGINT), 0),
		COALESCE(CAST(SUM(CASE WHEN state = 'locked' AND lock_expires_at > ? THEN 1 ELSE 0 END) AS BIGINT), 0)
		FROM coupon_states WHERE campaign = ?`, now.UnixNano(), campaign); err != nil {
		return u, err
	}
	const counted = `FROM orders o JOIN (SELECT order_id, COUNT(*) AS n, CAST(SUM(discount) AS BIGINT) AS d FROM order_coupons WHERE campaign = ? GROUP BY order_id) x
		ON x.order_id = o.order_id WHERE o.state IN ('confirmed', 'partially_refunded')`
	if err := q([]any{&u.OrdersWithCoupon, &u.UsersWithCoupon, &u.OrderValue, &u.DiscountTotal},
		"SELECT COUNT(*), COUNT(DISTINCT o.user_id), COALESCE(CAST(SUM(o.payable) AS BIGINT), 0), COALESCE(CAST(SUM(x.d) AS BIGINT), 0) "+counted, campaign); err != nil {
		return u, err
	}
	ratio := func(a, b int64) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	u.UsageRate, u.AOVWithCoupon, u.Conversion, u.ROI = ratio(u.Used, u.Stored), ratio(u.OrderValue, u.OrdersWithCoupon),
		ratio(u.UsersWithCoupon, u.UsersClaimed), ratio(u.OrderValue, u.DiscountTotal)

	days = max(days, 1)
	today := now.UnixNano() / dayNanos
	first := today - int64(days) + 1
	u.Daily = make([]UsageDay, days)
	for i := range u.Daily {
		u.Daily[i].Day = time.Unix(0, (first+int64(i))*dayNanos).UTC().Format(time.DateOnly)
	}
	// The day is a literal, not a parameter: PostgreSQL matches the GROUP
	// BY expression to the selected one textually.
	day := fmt.Sprintf("o.confirmed_at / %d", dayNanos)
	rows, err := s.db.QueryContext(ctx, s.rebind("SELECT "+day+", COUNT(*), CAST(SUM(x.n) AS BIGINT), CAST(SUM(x.d) AS BIGINT), CAST(SUM(o.payable) AS BIGINT) "+
		counted+" AND o.confirmed_at >= ? GROUP BY "+day), campaign, first*dayNanos)
	if err != nil {
		return u, fmt.Errorf("store: usage trend: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var n int64
		var d UsageDay
		if err := rows.Scan(&n, &d.Orders, &d.Used, &d.Discount, &d.OrderValue); err != nil {
			return u, fmt.Errorf("store: scan: %w", err)
		}
		if i := n - first; i >= 0 && i < int64(days) {
			d.Day = u.Daily[i].Day
			u.Daily[i] = d
		}
	}
	return u, rows.Err()
}
