package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record is one grant as the ledger stores it. Every field is fixed when the
// grant is minted by the stock script and never changes afterwards.
type Record struct {
	Seq            uint64 // ledger-local append order, assigned by Append
	GrantID        string
	Campaign       string
	User           string
	Device         string
	ClientIP       string
	IdempotencyKey string
	Shard          uint32
	GrantedAtNanos int64 // wall clock of the gateway when the script granted
	ValidFrom      int64 // unix seconds; 0 = no lower bound
	ValidUntil     int64 // unix seconds; 0 = permanent
	FaceValue      int64 // minor units (cents) the coupon is worth at most; 0 = not monetary
}

const (
	recordVersion1 = 1

	// stringLenMax bounds every string field of a record. Ids in flashgate are
	// at most 128 bytes (user ids) so 1 KiB leaves room and still refuses a
	// corrupt length before it allocates.
	stringLenMax = 1 << 10
	// recordLenMax bounds a whole encoded record.
	recordLenMax = 8 * stringLenMax
)

var (
	errRecordShort   = errors.New("ledger: record truncated")
	errRecordVersion = errors.New("ledger: unknown record version")
	errRecordString  = errors.New("ledger: record string too long")
	errRecordTrail   = errors.New("ledger: trailing bytes after record")
)

// AppendEncode appends the v1 encoding of r to dst and returns the result.
// With a dst of enough capacity it does not allocate.
//
//	+----+--------+---------+---------+---------+---------+---------+---------+-------+----------+----------+-----------+-----------+
//	| v1 | seq    | grantID | camp.   | user    | device  | ip      | idemKey | shard | grantedAt| validFrom| validUntil| faceValue |
//	| 1B | uvarint| uvarint len + bytes, six times                  | uvarint| varint, four times                               |
//	+----+--------+---------+---------+---------+---------+---------+---------+-------+----------+----------+-----------+-----------+
func (r *Record) AppendEncode(dst []byte) []byte {
	dst = append(dst, recordVersion1)
	dst = binary.AppendUvarint(dst, r.Seq)
	for _, s := range [...]string{r.GrantID, r.Campaign, r.User, r.Device, r.ClientIP, r.IdempotencyKey} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	dst = binary.AppendUvarint(dst, uint64(r.Shard))
	dst = binary.AppendVarint(dst, r.GrantedAtNanos)
	dst = binary.AppendVarint(dst, r.ValidFrom)
	dst = binary.AppendVarint(dst, r.ValidUntil)
	dst = binary.AppendVarint(dst, r.FaceValue)
	return dst
}

// Decode parses b, which must hold exactly one encoded record. It never
// panics on corrupt input; every error names what was wrong.
func (r *Record) Decode(b []byte) error {
	if len(b) > recordLenMax {
		return fmt.Errorf("ledger: record of %d bytes exceeds %d", len(b), recordLenMax)
	}
	if len(b) == 0 {
		return errRecordShort
	}
	if b[0] != recordVersion1 {
		return fmt.Errorf("%w %d", errRecordVersion, b[0])
	}
	d := decoder{b: b[1:]}
	r.Seq = d.uvarint()
	r.GrantID = d.str()
	r.Campaign = d.str()
	r.User = d.str()
	r.Device = d.str()
	r.ClientIP = d.str()
	r.IdempotencyKey = d.str()
	shard := d.uvarint()
	r.GrantedAtNanos = d.varint()
	r.ValidFrom = d.varint()
	r.ValidUntil = d.varint()
	r.FaceValue = d.varint()
	if d.err != nil {
		return d.err
	}
	if shard > 1<<31 {
		return fmt.Errorf("ledger: shard %d out of range", shard)
	}
	r.Shard = uint32(shard)
	if len(d.b) != 0 {
		return errRecordTrail
	}
	if r.GrantID == "" {
		return errors.New("ledger: record without grant id")
	}
	return nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errRecordShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errRecordShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > stringLenMax {
		d.err = errRecordString
		return ""
	}
	if uint64(len(d.b)) < n {
		d.err = errRecordShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
