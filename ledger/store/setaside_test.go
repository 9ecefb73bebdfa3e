package store

import (
	"context"
	"strings"
	"testing"
)

// TestOneBadGrantIsSetAsideNotItsBatch (issue 9 #11, I5): a batch holding
// grants the store cannot hold (a client_ip with a 70-byte IPv6 zone, a NUL,
// invalid UTF-8, an id that is itself unstorable) stores the others and
// sets each bad one aside with its reason, on both drivers, idempotently.
func TestOneBadGrantIsSetAsideNotItsBatch(t *testing.T) {
	for name, open := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			s, ctx := open(t), context.Background()
			zoned := grant(2, "c", "u2")
			zoned.ClientIP = "fe80::1%" + strings.Repeat("z", 70)
			nul := grant(4, "c", "u\x004")
			utf := grant(5, "c", "u5")
			utf.Device = "d\xff"
			badID := grant(6, "c", "u6")
			badID.GrantID = strings.Repeat("\x00", 100)
			batch := []Grant{grant(1, "c", "u1"), zoned, grant(3, "c", "u3"), nul, utf, badID, grant(7, "c", "u7")}
			for round := 0; round < 2; round++ { // a redelivery changes nothing
				res, err := s.Put(ctx, batch)
				if err != nil {
					t.Fatal(err)
				}
				if want := []int{3, 0}[round]; res.Stored != want || len(res.SetAside) != 4 {
					t.Fatalf("round %d: stored %d (want %d), set aside %+v (want 4)", round, res.Stored, want, res.SetAside)
				}
			}
			if missing, err := s.Missing(ctx, []string{"g000001", "g000003", "g000007"}); err != nil || len(missing) != 0 {
				t.Fatalf("good grants missing %v %v", missing, err)
			}
			aside, err := s.SetAsideOf(ctx, []string{"g000001", "g000002", "g000004", "g000005"})
			if err != nil || len(aside) != 3 || aside["g000001"] {
				t.Fatalf("set aside of: %v %v", aside, err)
			}
			reasons := map[string]string{}
			if err := s.SetAsideIDs(ctx, "c", func(id, reason string) { reasons[id] = reason }); err != nil {
				t.Fatal(err)
			}
			if len(reasons) != 4 || !strings.Contains(reasons["g000002"], "client_ip") || !strings.Contains(reasons["g000004"], "user") ||
				!strings.Contains(reasons["g000005"], "device") {
				t.Fatalf("set-aside rows %q", reasons)
			}
		})
	}
}

// TestDatabaseRefusalSetAsideNotBatch: a grant that passes validation but
// that the database refuses for good (here PostgreSQL and a NUL byte, with
// the validation turned off to reach it) is found row by row and set aside;
// the rest of the batch is stored. A transient failure (a closed pool) is an
// error, never a reason to set grants aside.
func TestDatabaseRefusalSetAsideNotBatch(t *testing.T) {
	s, ctx := drivers(t)["postgres"](t), context.Background()
	nul := grant(2, "c", "u\x002")
	res, err := s.put(ctx, []Grant{grant(1, "c", "u1"), nul, grant(3, "c", "u3")}, func(*Grant) error { return nil })
	if err != nil || res.Stored != 2 || len(res.SetAside) != 1 || res.SetAside[0].Grant.GrantID != "g000002" {
		t.Fatalf("put: %+v %v", res, err)
	}
	if !strings.Contains(res.SetAside[0].Reason, "22021") { // invalid_byte_sequence_for_encoding
		t.Fatalf("reason %q", res.SetAside[0].Reason)
	}
	if aside, err := s.SetAsideOf(ctx, []string{"g000002"}); err != nil || !aside["g000002"] {
		t.Fatalf("not recorded: %v %v", aside, err)
	}
	s.Close()
	if res, err := s.Put(ctx, []Grant{grant(9, "c", "u9")}); err == nil || len(res.SetAside) != 0 {
		t.Fatalf("closed store: %+v %v, want an error and nothing set aside", res, err)
	}
}
