package sink

import (
	"testing"

	"github.com/flashgate/flashgate/ledger"
	"github.com/flashgate/flashgate/ledger/relay"
)

func FuzzDecode(f *testing.F) {
	rec := ledger.Record{Seq: 9, GrantID: "01a208b03d44c86638b0c0d1ea4df568", Campaign: "d11", User: "u1", Device: "d", ClientIP: "1.2.3.4", Shard: 2, GrantedAtNanos: 1}
	f.Add(relay.Message("gw-a", &rec).Data)
	f.Add([]byte(`{"grant_id":"x","campaign":"c","user":"u"}`))
	f.Add([]byte(`{"grant_id":"","campaign":"c","user":"u"}`))
	f.Add([]byte(`{"grant_id":"x"} {}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := Decode(b)
		if err == nil && g.Validate() != nil {
			t.Fatalf("accepted invalid grant %+v", g)
		}
	})
}

func TestDecodeRoundTripOfRelayMessage(t *testing.T) {
	rec := ledger.Record{Seq: 9, GrantID: "g1", Campaign: "d11", User: "u1", Device: "d", ClientIP: "1.2.3.4", Shard: 2, GrantedAtNanos: 7, ValidUntil: 9, FaceValue: 500}
	g, err := Decode(relay.Message("gw-a", &rec).Data)
	if err != nil {
		t.Fatal(err)
	}
	if g.GrantID != "g1" || g.Node != "gw-a" || g.LedgerSeq != 9 || g.FaceValue != 500 || g.Shard != 2 {
		t.Fatalf("decoded %+v", g)
	}
}
