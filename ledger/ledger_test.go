package ledger

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestAppendIdempotentAndDurableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	// 64 goroutines append 50 grants each, every grant twice (a retry).
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				for k := 0; k < 2; k++ {
					r := Record{GrantID: fmt.Sprintf("g-%02d-%03d", w, i), Campaign: "c", User: fmt.Sprint(w)}
					if _, err := l.Append(ctx, &r); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if l.DurableSeq() != l.LastSeq() || l.LastSeq() != 3200 {
		t.Fatalf("durable %d last %d, want 3200", l.DurableSeq(), l.LastSeq())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := map[string]bool{}
	var last uint64
	err = l.Scan(0, ^uint64(0), func(r *Record) error {
		if seen[r.GrantID] {
			return fmt.Errorf("grant %s twice", r.GrantID)
		}
		if r.Seq <= last {
			return fmt.Errorf("scan out of order: %d after %d", r.Seq, last)
		}
		seen[r.GrantID], last = true, r.Seq
		return nil
	})
	if err != nil || len(seen) != 3200 {
		t.Fatalf("after reopen: %d grants, err %v", len(seen), err)
	}
	r := Record{GrantID: "new", Campaign: "c", User: "u"}
	if seq, err := l.Append(ctx, &r); err != nil || seq != 3201 {
		t.Fatalf("sequence after reopen: %d %v", seq, err)
	}
}

func TestOptionsValidateNamesEveryField(t *testing.T) {
	o := Options{AppendsInflightMax: -1}
	err := o.Validate()
	if err == nil {
		t.Fatal("invalid options accepted")
	}
	for _, want := range []string{"Dir", "AppendsInflightMax"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
