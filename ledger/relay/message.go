package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/ledger"
)

// The GRANTS wire message. The relay writes it; whoever reads the stream
// (ledger/sink) decodes it with Decode and maps it to its own rows.
//
//	subject    flashgate.grants.<node>
//	Nats-Msg-Id <node>:<first_seq>:<last_seq>     ("reconcile:<grant id>" when republished)
//	body (JSON, one object, ≤ MessageLenMax bytes):
//	  {"v":1,"node":"<ledger id>","first_seq":1001,"last_seq":1256,
//	   "grants":[{"grant_id":…,"campaign":…,"user":…,"device":…,"client_ip":…,
//	              "idempotency_key":…,"shard":2,"granted_at_ns":…,"valid_from":…,
//	              "valid_until":…,"face_value":…,"node":…,"ledger_seq":1001}, …]}
//
// "v" is the format's version. Version 1 is the only one; a message without
// "v" was written before the field existed and has exactly version 1's
// layout, so it decodes as version 1. Any other version is refused (a newer
// relay's message must not be half-read by an older sink): the reader
// terminates it and counts it, and the reconciler publishes its grants again
// once the readers understand them.
const (
	// MessageVersion is the version this relay writes and Decode reads.
	MessageVersion = 1
	// MessageLenMax bounds one message a reader accepts: 256 grants of
	// ~400 bytes of JSON each, with room; JetStream's own max payload is 1 MiB.
	MessageLenMax = 1 << 20
	// DecodeGrantsMax bounds grants in one message a reader accepts (the
	// relay writes at most grantsPerMessageMax; room for a future writer).
	DecodeGrantsMax = 1024
)

// Batch is one stream message: consecutive grants of one node's ledger.
type Batch struct {
	Version  int     `json:"v"`
	Node     string  `json:"node"`
	FirstSeq uint64  `json:"first_seq"`
	LastSeq  uint64  `json:"last_seq"`
	Grants   []Grant `json:"grants"`
}

// Grant is one grant as it travels in a message: a ledger record with the
// node whose ledger holds it. Its content is untrusted once decoded: the
// reader judges each grant on its own (one bad grant never takes its
// message's others down).
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

// GrantOf is a ledger record as it travels in a message.
func GrantOf(node string, rec *ledger.Record) Grant {
	return Grant{GrantID: rec.GrantID, Campaign: rec.Campaign, User: rec.User, Device: rec.Device, ClientIP: rec.ClientIP,
		IdempotencyKey: rec.IdempotencyKey, Shard: rec.Shard, GrantedAtNanos: rec.GrantedAtNanos, ValidFrom: rec.ValidFrom,
		ValidUntil: rec.ValidUntil, FaceValue: rec.FaceValue, Node: node, LedgerSeq: rec.Seq}
}

// Subject is the node's subject in the stream.
func Subject(node string) string { return SubjectPrefix + node }

// Encode is the body of the message carrying consecutive ledger records of
// one node.
func Encode(node string, recs []ledger.Record) []byte {
	b := Batch{Version: MessageVersion, Node: node, Grants: make([]Grant, len(recs))}
	if len(recs) > 0 {
		b.FirstSeq, b.LastSeq = recs[0].Seq, recs[len(recs)-1].Seq
	}
	for i := range recs {
		b.Grants[i] = GrantOf(node, &recs[i])
	}
	data, _ := json.Marshal(&b) // strings and integers only: cannot fail
	return data
}

// Message is the stream message carrying consecutive ledger records of one
// node, identified by its range (Nats-Msg-Id = node:first:last).
func Message(node string, recs []ledger.Record) *nats.Msg {
	var first, last uint64
	if len(recs) > 0 {
		first, last = recs[0].Seq, recs[len(recs)-1].Seq
	}
	m := nats.NewMsg(Subject(node))
	m.Data = Encode(node, recs)
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s:%d:%d", node, first, last))
	return m
}

// ErrVersion is wrapped by Decode's error for a message of a version this
// build does not know.
var ErrVersion = errors.New("relay: unknown message version")

// Decode parses one stream message (untrusted bytes: fuzzed). It refuses a
// message that is too long, not exactly one JSON object of the known fields,
// of an unknown version, or not a batch of 1..DecodeGrantsMax grants. Each
// grant's content is the reader's to judge.
func Decode(data []byte) (Batch, error) {
	var b Batch
	if len(data) > MessageLenMax {
		return b, fmt.Errorf("relay: message of %d bytes exceeds %d", len(data), MessageLenMax)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, fmt.Errorf("relay: decode: %w", err)
	}
	if dec.More() {
		return b, errors.New("relay: trailing data after batch")
	}
	switch b.Version {
	case 0: // written before the version field: version 1's layout
		b.Version = MessageVersion
	case MessageVersion:
	default:
		return b, fmt.Errorf("%w %d (this build reads version %d)", ErrVersion, b.Version, MessageVersion)
	}
	if len(b.Grants) == 0 || len(b.Grants) > DecodeGrantsMax {
		return b, fmt.Errorf("relay: batch of %d grants outside 1..%d", len(b.Grants), DecodeGrantsMax)
	}
	return b, nil
}
