package relay

import (
	"errors"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/ledger"
)

func sampleRecords() []ledger.Record {
	return []ledger.Record{
		{Seq: 9, GrantID: "01a208b03d44c86638b0c0d1ea4df568", Campaign: "d11", User: "u1", Device: "d", ClientIP: "1.2.3.4", IdempotencyKey: "tap-1",
			Shard: 2, GrantedAtNanos: 7, ValidFrom: 3, ValidUntil: 9, FaceValue: 500},
		{Seq: 10, GrantID: "01a208b03d44c86638b0c0d1ea4df569", Campaign: "d11", User: "u2", Device: "d", ClientIP: "1.2.3.5", Shard: 1, GrantedAtNanos: 8},
	}
}

// unversioned is a message exactly as relays wrote it before the version
// field existed (taken from a stream of the previous release).
const unversioned = `{"node":"6a98b47ab1b16645","first_seq":1,"last_seq":2,"grants":[` +
	`{"grant_id":"01a208b03d44c86638b0c0d1ea4df568","campaign":"demo","user":"u1","device":"d","client_ip":"127.0.0.1","shard":0,"granted_at_ns":1761000000000000000,"valid_from":1761000000,"valid_until":1761604800,"face_value":500,"node":"6a98b47ab1b16645","ledger_seq":1},` +
	`{"grant_id":"01a208b03d44c86638b0c0d1ea4df569","campaign":"demo","user":"u2","device":"d","client_ip":"127.0.0.1","idempotency_key":"k","shard":1,"granted_at_ns":1761000000000000001,"node":"6a98b47ab1b16645","ledger_seq":2}]}`

func FuzzDecode(f *testing.F) {
	f.Add(Message("gw-a", sampleRecords()).Data)
	f.Add(Message("6a98b47ab1b16645", sampleRecords()[:1]).Data)
	f.Add([]byte(unversioned))
	f.Add([]byte(`{"v":2,"node":"n","first_seq":1,"last_seq":1,"grants":[{"grant_id":"x","campaign":"c","user":"u"}]}`))
	f.Add([]byte(`{"v":1,"node":"n","grants":[]}`))
	f.Add([]byte(`{"grants":[{"grant_id":"","campaign":"c","user":"u"}]}`))
	f.Add([]byte(`{"grants":null} {}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"v":1,"node":"n","first_seq":1,"last_seq":2,"grants":[{"grant_id":"a","campaign":"c","user":"u"},{"grant_id":"b","campaign":"c","user":"u\u0000","client_ip":"fe80::1%zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			return
		}
		if b.Version != MessageVersion {
			t.Fatalf("accepted version %d", b.Version)
		}
		if len(b.Grants) == 0 || len(b.Grants) > DecodeGrantsMax {
			t.Fatalf("accepted a batch of %d grants", len(b.Grants))
		}
		if len(data) > MessageLenMax {
			t.Fatalf("accepted %d bytes", len(data))
		}
	})
}

// TestMessageRoundTrip: what the relay writes, Decode reads back whole, with
// its version, range and dedup id.
func TestMessageRoundTrip(t *testing.T) {
	recs := sampleRecords()
	m := Message("gw-a", recs)
	if m.Subject != "flashgate.grants.gw-a" || m.Header.Get("Nats-Msg-Id") != "gw-a:9:10" {
		t.Fatalf("subject %q id %q", m.Subject, m.Header.Get("Nats-Msg-Id"))
	}
	if !strings.HasPrefix(string(m.Data), `{"v":1,`) {
		t.Fatalf("message does not lead with its version: %.40s", m.Data)
	}
	b, err := Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != 1 || b.Node != "gw-a" || b.FirstSeq != 9 || b.LastSeq != 10 || len(b.Grants) != 2 {
		t.Fatalf("batch %+v", b)
	}
	for i := range recs {
		if want := GrantOf("gw-a", &recs[i]); b.Grants[i] != want {
			t.Fatalf("grant %d: %+v, want %+v", i, b.Grants[i], want)
		}
	}
}

// TestDecodeUnversionedIsVersion1: messages written before the version field
// (still in a stream during an upgrade) decode as version 1.
func TestDecodeUnversionedIsVersion1(t *testing.T) {
	b, err := Decode([]byte(unversioned))
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != 1 || len(b.Grants) != 2 || b.Grants[1].IdempotencyKey != "k" || b.Grants[0].FaceValue != 500 || b.LastSeq != 2 {
		t.Fatalf("batch %+v", b)
	}
}

// TestDecodeRefusesUnknownVersion: a message of another version is refused
// with an error that names it, never half-read.
func TestDecodeRefusesUnknownVersion(t *testing.T) {
	for _, v := range []string{"2", "-1", "99"} {
		data := strings.Replace(string(Message("gw-a", sampleRecords()).Data), `"v":1`, `"v":`+v, 1)
		_, err := Decode([]byte(data))
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version "+v) {
			t.Errorf("version %s: err %v", v, err)
		}
	}
}

// TestDecodeRefuses: the bounds of a message.
func TestDecodeRefuses(t *testing.T) {
	one := `{"grant_id":"a","campaign":"c","user":"u"}`
	for name, data := range map[string]string{
		"empty batch":   `{"v":1,"node":"n","grants":[]}`,
		"too many":      `{"v":1,"node":"n","grants":[` + strings.Repeat(one+",", DecodeGrantsMax) + one + `]}`,
		"unknown field": `{"v":1,"node":"n","extra":1,"grants":[` + one + `]}`,
		"trailing":      `{"v":1,"node":"n","grants":[` + one + `]} {}`,
		"not an object": `[]`,
		"too long":      `{"v":1,"node":"` + strings.Repeat("x", MessageLenMax) + `","grants":[` + one + `]}`,
	} {
		if _, err := Decode([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
