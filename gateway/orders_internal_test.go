package gateway

import (
	"encoding/json"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestCheckoutOrderIDPatternIsValidOrderID: the order_id pattern and
// lengths the API document gives (the redeem body and the three order
// routes' path parameter) accept exactly the ids validOrderID does.
func TestCheckoutOrderIDPatternIsValidOrderID(t *testing.T) {
	type schema struct {
		MinLength int    `json:"minLength"`
		MaxLength int    `json:"maxLength"`
		Pattern   string `json:"pattern"`
	}
	var doc struct {
		Paths map[string]struct {
			Post struct {
				Parameters []struct {
					Name   string `json:"name"`
					Schema schema `json:"schema"`
				} `json:"parameters"`
			} `json:"post"`
		} `json:"paths"`
		Components struct {
			Schemas struct {
				RedeemRequest struct {
					Properties struct {
						OrderID schema `json:"order_id"`
					} `json:"properties"`
				} `json:"RedeemRequest"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	schemas := map[string]schema{"RedeemRequest.order_id": doc.Components.Schemas.RedeemRequest.Properties.OrderID}
	for _, step := range []string{"confirm", "cancel", "refund"} {
		path := "/v1/orders/{order_id}/" + step
		for _, p := range doc.Paths[path].Post.Parameters {
			if p.Name == "order_id" {
				schemas[path] = p.Schema
			}
		}
	}
	if len(schemas) != 4 {
		t.Fatalf("order_id schemas found: %v", schemas)
	}
	samples := []string{"", ".", "..", "...", ".a", "a.", "..a", "a..b", "o-1", "Shop_2026:0001.a-B9", ":", "-", "_",
		"a/b", "x/../y", "a b", "a%2Fb", "a?b", "a#b", "é", "a\x00", "a+b", "a~b", strings.Repeat("o", 128), strings.Repeat("o", 129),
		strings.Repeat(".", 128), strings.Repeat(".", 129)}
	const alphabet = "ab.:-_/%~ Z9."
	r := rand.New(rand.NewPCG(13, 13))
	for range 5000 {
		b := make([]byte, r.IntN(6))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		samples = append(samples, string(b))
	}
	for where, sc := range schemas {
		re, err := regexp.Compile(sc.Pattern)
		if err != nil || sc.MinLength != 1 || sc.MaxLength != 128 {
			t.Fatalf("%s: %+v %v", where, sc, err)
		}
		for _, s := range samples {
			doc := re.MatchString(s) && len(s) >= sc.MinLength && len(s) <= sc.MaxLength
			if doc != validOrderID(s) {
				t.Errorf("%s: order id %q: the document says %v, validOrderID %v", where, s, doc, validOrderID(s))
			}
		}
	}
}
