package sink

import (
	"testing"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
)

func sampleRecords() []ledger.Record {
	return []ledger.Record{
		{Seq: 9, GrantID: "01a208b03d44c86638b0c0d1ea4df568", Campaign: "d11", User: "u1", Device: "d", ClientIP: "1.2.3.4", Shard: 2, GrantedAtNanos: 7, ValidUntil: 9, FaceValue: 500},
		{Seq: 10, GrantID: "01a208b03d44c86638b0c0d1ea4df569", Campaign: "d11", User: "u2", Device: "d", ClientIP: "1.2.3.5", Shard: 1, GrantedAtNanos: 8},
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(relay.Message("gw-a", sampleRecords()).Data)
	f.Add([]byte(`{"node":"n","first_seq":1,"last_seq":1,"grants":[{"grant_id":"x","campaign":"c","user":"u"}]}`))
	f.Add([]byte(`{"node":"n","grants":[]}`))
	f.Add([]byte(`{"grants":[{"grant_id":"","campaign":"c","user":"u"}]}`))
	f.Add([]byte(`{"grants":null} {}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"node":"n","first_seq":1,"last_seq":2,"grants":[{"grant_id":"a","campaign":"c","user":"u"},{"grant_id":"b","campaign":"c","user":"u\u0000","client_ip":"fe80::1%zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		grants, err := Decode(b)
		if err != nil {
			return
		}
		if len(grants) == 0 || len(grants) > relay.DecodeGrantsMax {
			t.Fatalf("accepted a batch of %d grants", len(grants))
		}
		for _, g := range grants {
			_ = g.Validate() // the store's to judge (Put sets invalid grants aside); must not panic
		}
	})
}

func TestDecodeRoundTripOfRelayMessage(t *testing.T) {
	m := relay.Message("gw-a", sampleRecords())
	grants, err := Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(grants) != 2 || m.Header.Get("Nats-Msg-Id") != "gw-a:9:10" {
		t.Fatalf("grants %+v id %s", grants, m.Header.Get("Nats-Msg-Id"))
	}
	g := grants[0]
	if g.GrantID != "01a208b03d44c86638b0c0d1ea4df568" || g.Node != "gw-a" || g.LedgerSeq != 9 || g.FaceValue != 500 || g.Shard != 2 {
		t.Fatalf("decoded %+v", g)
	}
}
