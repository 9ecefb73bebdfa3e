package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger"
)

// outcomes collects what real parallel clients were answered.
type outcomes struct {
	mu        sync.Mutex
	byStatus  map[string]int
	grants    map[string]string // grant id -> user
	userGrant map[string][]string
	retries   int
	errs      []error
}

func newOutcomes() *outcomes {
	return &outcomes{byStatus: map[string]int{}, grants: map[string]string{}, userGrant: map[string][]string{}}
}

func (o *outcomes) add(user string, a stack.Answer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.byStatus[a.Status]++
	if a.Status == "granted" {
		if prev, dup := o.grants[a.GrantID]; !dup {
			o.userGrant[user] = append(o.userGrant[user], a.GrantID)
		} else if prev != user {
			o.errs = append(o.errs, fmt.Errorf("grant %s answered to %s and %s", a.GrantID, prev, user))
		}
		o.grants[a.GrantID] = user
	}
}

// claimRetrying behaves like an app: it retries a 503 (same Idempotency-Key)
// after Retry-After, a bounded number of times.
func claimRetrying(ctx context.Context, s *stack.Stack, o *outcomes, r stack.ClaimRequest) {
	const retriesMax = 40
	for i := 0; ; i++ {
		a, err := s.Claim(ctx, r)
		if err != nil {
			o.mu.Lock()
			o.errs = append(o.errs, err)
			o.mu.Unlock()
			return
		}
		if a.HTTP == 503 && i < retriesMax {
			o.mu.Lock()
			o.retries++
			o.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		o.add(r.User, a)
		return
	}
}

func ledgerGrants(t *testing.T, l *ledger.Ledger) map[string]ledger.Record {
	t.Helper()
	out := map[string]ledger.Record{}
	err := l.Scan(0, ^uint64(0), func(r *ledger.Record) error {
		if _, dup := out[r.GrantID]; dup {
			t.Errorf("grant %s twice in the ledger", r.GrantID)
		}
		out[r.GrantID] = *r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDropGrantsExactlyStock: stock 1000 over 16 shards, 5000 users each
// firing 2 concurrent claims over real HTTP (I1, I2, I3, I4).
func TestDropGrantsExactlyStock(t *testing.T) {
	if testing.Short() {
		t.Skip("drop test skipped in -short")
	}
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "drop", Stock: 1000, Shards: 16, PerUserLimit: 1})

	const users, perUser, parallel = 5000, 2, 256
	o := newOutcomes()
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	ctx := context.Background()
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("user-%05d", u)
		for k := 0; k < perUser; k++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				claimRetrying(ctx, s, o, stack.ClaimRequest{Campaign: "drop", User: user, Device: "dev-" + user, IdempotencyKey: fmt.Sprintf("%s-tap-%d", user, k)})
			}()
		}
	}
	wg.Wait()
	for _, err := range o.errs {
		t.Error(err)
	}
	if got := len(o.grants); got != 1000 {
		t.Fatalf("I3/I1: %d distinct grants, want exactly 1000 (statuses %v)", got, o.byStatus)
	}
	for user, ids := range o.userGrant {
		if len(ids) > 1 {
			t.Errorf("I2: user %s holds %d grants: %v", user, len(ids), ids)
		}
	}
	for st := range o.byStatus {
		if st != "granted" && st != "sold_out" && st != "already_claimed" {
			t.Errorf("unexpected status %q ×%d", st, o.byStatus[st])
		}
	}
	st := s.CampaignStats("drop")
	if st.Granted != 1000 || st.Remaining != 0 || st.PendingTransfers != 0 || st.Error != "" {
		t.Errorf("stats disagree: %+v", st)
	}
	for i, n := range st.Shards {
		if n != 0 {
			t.Errorf("shard %d ends with %d units", i, n)
		}
	}
	inLedger := ledgerGrants(t, s.Gateway.Ledger())
	if len(inLedger) != 1000 {
		t.Errorf("I4: ledger holds %d grants, want 1000", len(inLedger))
	}
	for id, user := range o.grants {
		r, ok := inLedger[id]
		if !ok {
			t.Errorf("I4: granted %s not in the ledger", id)
		} else if r.User != user || r.Campaign != "drop" {
			t.Errorf("ledger record %s is %s/%s, answered to %s", id, r.Campaign, r.User, user)
		}
	}
	// The counters reach Redis with the next stats flush (every second).
	wait.Until(context.Background(), 5*time.Second, func() bool {
		st = s.CampaignStats("drop")
		return st.Attempts == users*perUser+int64(o.retries)
	})
	if st.Attempts != users*perUser+int64(o.retries) {
		t.Errorf("stats attempts %d, want %d answered", st.Attempts, users*perUser+o.retries)
	}
	t.Logf("statuses %v, 503 retries %d", o.byStatus, o.retries)
}

// TestOneUserManyConcurrentClaims: 500 concurrent claims of one user with
// per_user_limit 3 grant exactly 3 (I2).
func TestOneUserManyConcurrentClaims(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "limit3", Stock: 100, Shards: 4, PerUserLimit: 3})
	o := newOutcomes()
	var wg sync.WaitGroup
	for i := 0; i < 500; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claimRetrying(context.Background(), s, o, stack.ClaimRequest{Campaign: "limit3", User: "greedy", Device: "d1", IdempotencyKey: fmt.Sprintf("tap-%d", i)})
		}()
	}
	wg.Wait()
	for _, err := range o.errs {
		t.Error(err)
	}
	if len(o.grants) != 3 || o.byStatus["granted"] != 3 || o.byStatus["already_claimed"] != 497 {
		t.Fatalf("want exactly 3 grants and 497 already_claimed, got %d grants, statuses %v", len(o.grants), o.byStatus)
	}
	if st := s.CampaignStats("limit3"); st.Granted != 3 || st.Remaining != 97 {
		t.Errorf("stats %+v", st)
	}
}

// TestIdempotencyKeyOneGrant: 200 concurrent requests with one
// Idempotency-Key all answer the same grant; the ledger holds it once.
func TestIdempotencyKeyOneGrant(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	s.CreateCampaign(stack.Campaign{ID: "idem", Stock: 50, Shards: 2, PerUserLimit: 5})
	o := newOutcomes()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claimRetrying(context.Background(), s, o, stack.ClaimRequest{Campaign: "idem", User: "tapper", Device: "d1", IdempotencyKey: "one-tap"})
		}()
	}
	wg.Wait()
	for _, err := range o.errs {
		t.Error(err)
	}
	if o.byStatus["granted"] != 200 || len(o.grants) != 1 {
		t.Fatalf("want 200 granted answers with one grant id; statuses %v, ids %d", o.byStatus, len(o.grants))
	}
	if n := len(ledgerGrants(t, s.Gateway.Ledger())); n != 1 {
		t.Errorf("ledger holds %d grants, want 1", n)
	}
	// A later retry of the same tap still answers the same grant.
	a, err := s.Claim(context.Background(), stack.ClaimRequest{Campaign: "idem", User: "tapper", Device: "d1", IdempotencyKey: "one-tap"})
	if err != nil || a.Status != "granted" || o.grants[a.GrantID] == "" {
		t.Errorf("retry answered %+v %v", a, err)
	}
	if st := s.CampaignStats("idem"); st.Granted != 1 {
		t.Errorf("redis counts %d grants, want 1", st.Granted)
	}
}
