package ledger

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// tagMeta keys hold facts about the ledger itself ('m' name -> value):
// "id" its identity, "seq" its sequence floor.
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

var metaSeqFloor = []byte{tagMeta, 's', 'e', 'q'}

// seqFloor reads the sequence floor: numbers up to it were handed out by an
// earlier Pebble instance (appends in flight when its disk failed), so they
// are never handed out again, even after a restart — a reader's cursor may
// already have passed them (0 when never written).
func seqFloor(db *pebble.DB) (uint64, error) {
	v, closer, err := db.Get(metaSeqFloor)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ledger: sequence floor: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("ledger: corrupt sequence floor %x", v)
	}
	return binary.BigEndian.Uint64(v), nil
}

// writeSeqFloor stores (synced) the sequence floor in inc.
func writeSeqFloor(inc *incarnation, floor uint64) error {
	v := binary.BigEndian.AppendUint64(nil, floor)
	if err := inc.write(func(db *pebble.DB) error { return db.Set(metaSeqFloor, v, pebble.Sync) }); err != nil {
		return fmt.Errorf("ledger: sequence floor: %w", err)
	}
	return nil
}
