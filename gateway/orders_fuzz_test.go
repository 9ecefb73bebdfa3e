package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flashgate/flashgate/gateway/checkout"
	"github.com/flashgate/flashgate/ledger/store"
)

// FuzzParseCheckoutBodies feeds arbitrary bytes to the quote, redeem and
// refund body decoders: they never panic; a refusal names what is wrong; an
// accepted body holds only what the checkout math and the store accept, and
// its canonical hash does not depend on spacing or key order.
func FuzzParseCheckoutBodies(f *testing.F) {
	item := `{"sku":"a","store_id":"s","category":"c","brand":"b","unit_price":100,"quantity":2}`
	for _, seed := range []string{
		`{"items":[` + item + `]}`,
		`{"items":[` + item + `],"shipping":{"s":500},"offers":["bundle"],"grant_ids":["g1","g2"]}`,
		`{"order_id":"o-1","items":[` + item + `],"grant_ids":["g1"]}`,
		`{"order_id":"","items":[],"grant_ids":[]}`,
		`{"items":[{"sku":"a","store_id":"s","unit_price":-1,"quantity":0}],"shipping":{"x":-5}}`,
		`{"items":[` + item + `],"grant_ids":["a","a"]}`,
		`{"items":[` + item + `]} trailing`,
		`{"refund_id":"r1","lines":[{"line":0,"quantity":1}]}`,
		`{"refund_id":"r1"}`,
		`{"refund_id":"","lines":[{"line":-1,"quantity":99999}]}`,
		`{"unknown":1}`, `[]`, `null`, `{`, ``, `{"items":"x"}`, `{"items":[{"unit_price":1e300}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, redeem := range []bool{false, true} {
			q, err := parseQuote(b, redeem)
			if err != nil {
				if err.msg == "" {
					t.Fatalf("refusal without a message: %q", b)
				}
				continue
			}
			o := q.order()
			if o.Validate() != nil || checkGrantIDs(q.GrantIDs, redeem) != nil {
				t.Fatalf("accepted an invalid body: %q", b)
			}
			if redeem && (len(q.GrantIDs) == 0 || q.OrderID == "" || len(q.OrderID) > store.OrderIDLenMax) {
				t.Fatalf("accepted a redeem without order id or grants: %q", b)
			}
			if _, err := checkout.Quote(o, nil, nil, time.Unix(1e9, 0)); err != nil {
				t.Fatalf("an accepted order does not quote: %v (%q)", err, b)
			}
			// The hash is of the decoded request: re-encoded with other
			// spacing, it is the same.
			re, _ := json.MarshalIndent(q, " ", "   ")
			q2, err := parseQuote(re, redeem)
			if err != nil || bodyHash("u", q2) != bodyHash("u", q) || bodyHash("v", q) == bodyHash("u", q) {
				t.Fatalf("canonical hash differs for %q / %s: %v", b, re, err)
			}
		}
		r, err := parseRefund(b)
		if err != nil {
			if err.msg == "" {
				t.Fatalf("refusal without a message: %q", b)
			}
			return
		}
		if r.RefundID == "" || len(r.RefundID) > store.RefundIDLenMax || strings.ContainsAny(r.RefundID, " \x00") || len(r.Lines) > checkout.ItemsMax {
			t.Fatalf("accepted an invalid refund: %q", b)
		}
		for _, l := range r.Lines {
			if l.Line < 0 || l.Quantity < 1 || l.Quantity > checkout.QuantityMax {
				t.Fatalf("accepted a bad refund line: %q", b)
			}
		}
	})
}
