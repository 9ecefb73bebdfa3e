package ledger

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// tagMeta keys hold facts about the ledger itself ('m' name -> value).
const tagMeta = 'm'

// nodeIDBytes is the size of a ledger's random identity.
const nodeIDBytes = 8

var metaNodeID = []byte{tagMeta, 'i', 'd'}

// loadID reads the ledger's identity, minting and syncing it on first open.
// The identity names this ledger to the outside world (the stock scripts tag
// the grants a gateway decided with it): it belongs to the data, not to the
// process or the host, so a replacement gateway started on this directory
// inherits it, and a wiped directory gets a new one.
func (l *Ledger) loadID() error {
	db := l.cur.Load().db
	v, closer, err := db.Get(metaNodeID)
	if err == nil {
		l.id = string(v)
		closer.Close()
		if len(l.id) != 2*nodeIDBytes {
			return fmt.Errorf("ledger: corrupt identity %q", l.id)
		}
		return nil
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("ledger: identity: %w", err)
	}
	if l.opts.ReadOnly {
		return nil // a never-written ledger has no identity yet
	}
	var b [nodeIDBytes]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if err := l.cur.Load().write(func(db *pebble.DB) error { return db.Set(metaNodeID, []byte(id), pebble.Sync) }); err != nil {
		return fmt.Errorf("ledger: identity: %w", err)
	}
	l.id = id
	return nil
}

// ID is the ledger's identity: 16 hex characters, fixed for the life of the
// directory ("" only for a read-only ledger that was never written).
func (l *Ledger) ID() string { return l.id }
