package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// reasonLenMax bounds the reason kept with a set-aside grant: a database
// error message with its detail fits; an echo of a huge field does not.
const reasonLenMax = 1024

// SetAside is a grant the store can never hold, and why.
type SetAside struct {
	Grant  Grant
	Reason string
}

// PutResult is what Put did with a batch.
type PutResult struct {
	Stored   int        // new rows in grants
	SetAside []SetAside // refused for good, recorded in grants_set_aside
}

// Put stores grants (at most BatchMax) like Upsert, except that a grant the
// store can never hold — it fails Validate, or the database refuses it with a
// data or constraint error — is set aside in grants_set_aside with the
// reason instead of failing the batch. The others are stored. An error means
// a transient failure (connection, timeout): some grants may be stored, and
// the caller retries the whole batch (both tables are idempotent by grant id).
func (s *Store) Put(ctx context.Context, grants []Grant) (PutResult, error) {
	return s.put(ctx, grants, (*Grant).Validate)
}

// put is Put with the validation as a parameter: the tests turn it off to
// reach the database's own refusals.
func (s *Store) put(ctx context.Context, grants []Grant, check func(*Grant) error) (PutResult, error) {
	var res PutResult
	if len(grants) > BatchMax {
		return res, fmt.Errorf("store: batch of %d exceeds %d", len(grants), BatchMax)
	}
	ok := grants // the usual case: all valid, no copy
	for i := range grants {
		if err := check(&grants[i]); err != nil {
			if len(res.SetAside) == 0 {
				ok = append(make([]Grant, 0, len(grants)), grants[:i]...)
			}
			res.SetAside = append(res.SetAside, SetAside{Grant: grants[i], Reason: err.Error()})
			continue
		}
		if len(res.SetAside) > 0 {
			ok = append(ok, grants[i])
		}
	}
	n, err := s.Upsert(ctx, ok)
	if err != nil && !refusedForGood(err) {
		return res, err
	}
	if err != nil {
		// One of them is refused for good: find which, one row at a time
		// (rare; each insert is its own transaction).
		n = 0
		for i := range ok {
			k, err := s.Upsert(ctx, ok[i:i+1])
			if err != nil && !refusedForGood(err) {
				return res, err
			}
			if err != nil {
				res.SetAside = append(res.SetAside, SetAside{Grant: ok[i], Reason: err.Error()})
				continue
			}
			n += k
		}
	}
	res.Stored = n
	if err := s.setAside(ctx, res.SetAside); err != nil {
		return res, err
	}
	return res, nil
}

// refusedForGood reports whether a database error is about the data (so the
// same row fails every time) rather than the connection or the server's state.
func refusedForGood(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code[:min(2, len(pg.Code))] {
		case "22", // data exception: invalid byte sequence, value too long, out of range
			"23", // integrity constraint violation
			"54": // program limit exceeded: e.g. an index row too large
			return true
		}
		return false
	}
	var lite *sqlite.Error
	if errors.As(err, &lite) {
		switch lite.Code() & 0xff { // primary result code
		case 18, // SQLITE_TOOBIG
			19, // SQLITE_CONSTRAINT
			20: // SQLITE_MISMATCH
			return true
		}
	}
	return false
}

// setAside records refused grants (idempotent by grant id). Every value is
// made storable first: the grant itself may hold what the database refuses.
func (s *Store) setAside(ctx context.Context, aside []SetAside) error {
	if len(aside) == 0 {
		return nil
	}
	var q strings.Builder
	q.WriteString("INSERT INTO grants_set_aside (grant_id, campaign, node, ledger_seq, reason, grant_json, set_aside_at) VALUES ")
	args := make([]any, 0, 7*len(aside))
	now := time.Now().UnixNano()
	for i := range aside {
		g := &aside[i].Grant
		if i > 0 {
			q.WriteByte(',')
		}
		q.WriteString("(?,?,?,?,?,?,?)")
		js, _ := json.Marshal(g) // strings and integers only; invalid UTF-8 and NUL come out escaped
		args = append(args, keyText(g.GrantID, GrantIDLenMax), keyText(g.Campaign, CampaignLenMax), keyText(g.Node, NodeLenMax),
			int64(g.LedgerSeq), cleanText(aside[i].Reason, reasonLenMax), string(js), now)
	}
	q.WriteString(" ON CONFLICT (grant_id) DO NOTHING")
	if _, err := s.db.ExecContext(ctx, s.rebind(q.String()), args...); err != nil {
		return fmt.Errorf("store: set aside: %w", err)
	}
	return nil
}

// keyText is s when the store can hold it as a key of at most maxLen bytes,
// else a stable stand-in derived from its bytes.
func keyText(s string, maxLen int) string {
	if len(s) > 0 && len(s) <= maxLen && storableText(s) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// cleanText makes s storable text of at most maxLen bytes.
func cleanText(s string, maxLen int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) > maxLen {
		s = strings.ToValidUTF8(s[:maxLen], "")
	}
	return s
}

// SetAsideOf returns the ids among ids (at most BatchMax) that are set aside.
func (s *Store) SetAsideOf(ctx context.Context, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	if len(ids) > BatchMax {
		return nil, fmt.Errorf("store: %d ids exceed %d", len(ids), BatchMax)
	}
	q := "SELECT grant_id FROM grants_set_aside WHERE grant_id IN (" + strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",") + ")"
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = keyText(id, GrantIDLenMax)
	}
	rows, err := s.db.QueryContext(ctx, s.rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("store: set aside of: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: scan: %w", err)
		}
		out[id] = true
	}
	return out, rows.Err()
}

// SetAsideIDs calls fn for every set-aside grant id of campaign, in id order.
func (s *Store) SetAsideIDs(ctx context.Context, campaign string, fn func(id, reason string)) error {
	cursor := ""
	for {
		rows, err := s.db.QueryContext(ctx, s.rebind("SELECT grant_id, reason FROM grants_set_aside WHERE campaign = ? AND grant_id > ? ORDER BY grant_id LIMIT ?"),
			keyText(campaign, CampaignLenMax), cursor, PageMax)
		if err != nil {
			return fmt.Errorf("store: set aside ids: %w", err)
		}
		n := 0
		for rows.Next() {
			var id, reason string
			if err := rows.Scan(&id, &reason); err != nil {
				rows.Close()
				return fmt.Errorf("store: scan: %w", err)
			}
			fn(id, reason)
			cursor, n = id, n+1
		}
		err = rows.Err()
		rows.Close()
		if err != nil || n < PageMax {
			return err
		}
	}
}
