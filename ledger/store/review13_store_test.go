package store

// Adversarial review of issue 13 (I9) at the store level: real interleavings
// on SQLite and PostgreSQL, then a consistency check of every coupon row,
// order row and transition chain.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/pgtest"
)

// review13Pair opens two stores on one database: two gateways (or a gateway
// and a standalone sink) sharing it.
func review13Pair(t *testing.T, driver string) (*Store, *Store) {
	t.Helper()
	var dsn string
	switch driver {
	case "sqlite":
		dsn = filepath.Join(t.TempDir(), "grants.db")
	default:
		dsn = pgtest.Fresh(t)
	}
	a, err := Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// review13Check verifies I9 over the whole database: coupon rows and order
// rows in step, and each grant's transitions a chain from unused.
func review13Check(t *testing.T, s *Store, kept map[string]bool) {
	t.Helper()
	ctx := context.Background()
	type cs struct{ state, order string }
	coupons := map[string]cs{}
	rows, err := s.db.QueryContext(ctx, "SELECT grant_id, state, order_id FROM coupon_states")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var g string
		var c cs
		if err := rows.Scan(&g, &c.state, &c.order); err != nil {
			t.Fatal(err)
		}
		coupons[g] = c
	}
	rows.Close()
	orders := map[string]string{}
	rows, err = s.db.QueryContext(ctx, "SELECT order_id, state FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var o, st string
		if err := rows.Scan(&o, &st); err != nil {
			t.Fatal(err)
		}
		orders[o] = st
	}
	rows.Close()
	type oc struct{ order, grant string }
	var ocs []oc
	rows, err = s.db.QueryContext(ctx, "SELECT order_id, grant_id FROM order_coupons")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var x oc
		if err := rows.Scan(&x.order, &x.grant); err != nil {
			t.Fatal(err)
		}
		ocs = append(ocs, x)
	}
	rows.Close()
	for g, c := range coupons {
		switch c.state {
		case CouponLocked:
			if orders[c.order] != OrderLocked {
				t.Errorf("I9: grant %s locked by order %s which is %q", g, c.order, orders[c.order])
			}
		case CouponUsed:
			switch orders[c.order] {
			case OrderConfirmed, OrderPartiallyRefunded:
			case OrderRefunded:
				if !kept[g] {
					t.Errorf("I9: grant %s used by fully refunded order %s and not a kept coupon", g, c.order)
				}
			default:
				t.Errorf("I9: grant %s used by order %s which is %q", g, c.order, orders[c.order])
			}
		case CouponUnused:
			if c.order != "" {
				t.Errorf("grant %s unused but names order %s", g, c.order)
			}
		}
	}
	for _, x := range ocs {
		c := coupons[x.grant]
		switch orders[x.order] {
		case OrderLocked:
			if c.state != CouponLocked || c.order != x.order {
				t.Errorf("I9: locked order %s does not hold its grant %s (%+v)", x.order, x.grant, c)
			}
		case OrderConfirmed, OrderPartiallyRefunded:
			if c.state != CouponUsed || c.order != x.order {
				t.Errorf("I9: confirmed order %s does not use its grant %s (%+v)", x.order, x.grant, c)
			}
		case OrderCancelled, OrderExpired:
			if c.order == x.order {
				t.Errorf("I9: ended order %s still holds %s (%+v)", x.order, x.grant, c)
			}
		}
	}
	// Each grant's transitions, in the log's own order (grant_seq), are one
	// chain starting unused, each step from where the last ended, numbered
	// 1, 2, … without a gap, and the chain ends in the row's state.
	for g, c := range coupons {
		ts, err := s.Transitions(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		state := CouponUnused
		for i, tr := range ts {
			if tr.Seq != int64(i+1) {
				t.Errorf("transition log of %s: transition %d has grant_seq %d", g, i, tr.Seq)
			}
			if tr.From != state {
				t.Errorf("transition log of %s broken at %d: %s→%s (%s, order %s) after state %s", g, i, tr.From, tr.To, tr.Cause, tr.OrderID, state)
				break
			}
			state = tr.To
		}
		if state != c.state {
			t.Errorf("transition log of %s ends in %s, row is %s", g, state, c.state)
		}
	}
}

// TestReview13LockExpiryRacesConfirm: order A's lock expires at T. At the
// same instant A's confirm (stamped T-1ns, a gateway whose clock is a hair
// behind), B's redeem of the same grant (stamped T) and a sweeper on a
// second gateway (stamped T) run. Whatever wins, the grant ends held by one
// order, and A confirmed ⇔ the grant used by A.
func TestReview13LockExpiryRacesConfirm(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			s1, s2 := review13Pair(t, driver)
			ctx := context.Background()
			const rounds = 60
			ids := seed(t, s1, "c", "u1", 0, rounds)
			exp := t0.Add(15 * time.Minute)
			outcomes := map[string]int{}
			for i := 0; i < rounds; i++ {
				a, b := fmt.Sprintf("A%d", i), fmt.Sprintf("B%d", i)
				if _, _, err := s1.Redeem(ctx, redeemOf(a, "u1", t0, ids[i])); err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				var cErr, rErr, xErr error
				start := make(chan struct{})
				wg.Add(3)
				go func() { defer wg.Done(); <-start; _, cErr = s1.Confirm(ctx, a, "u1", exp.Add(-time.Nanosecond)) }()
				go func() { defer wg.Done(); <-start; _, _, rErr = s2.Redeem(ctx, redeemOf(b, "u1", exp, ids[i])) }()
				go func() { defer wg.Done(); <-start; _, xErr = s2.ExpireLocks(ctx, exp, 10) }()
				close(start)
				wg.Wait()
				var iu *InUseError
				var se *OrderStateError
				if xErr != nil {
					t.Fatalf("round %d sweep: %v", i, xErr)
				}
				switch {
				case cErr == nil && errors.As(rErr, &iu):
					outcomes["A confirmed, B in use"]++
				case errors.As(cErr, &se) && rErr == nil:
					outcomes["A expired, B locked"]++
				default:
					t.Errorf("round %d: confirm %v, redeem %v", i, cErr, rErr)
				}
			}
			t.Logf("outcomes: %v", outcomes)
			review13Check(t, s1, nil)
		})
	}
}

// TestReview13CancelConfirmRefundRaces: on each order, confirm and cancel
// race; then on the confirmed ones two refunds with distinct refund ids,
// each refunding one of the two units, and a "refund the rest" race: the
// coupon is returned once at most, and never while a refund is partial.
func TestReview13CancelConfirmRefundRaces(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			s1, s2 := review13Pair(t, driver)
			ctx := context.Background()
			const rounds = 40
			ids := seed(t, s1, "c", "u1", 0, rounds)
			at := t0.Add(time.Minute)
			qty := map[int]int64{0: 2}
			confirmed := []int{}
			for i := 0; i < rounds; i++ {
				o := fmt.Sprintf("o%d", i)
				if _, _, err := s1.Redeem(ctx, redeemOf(o, "u1", t0, ids[i])); err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				var cErr, xErr error
				start := make(chan struct{})
				wg.Add(2)
				go func() { defer wg.Done(); <-start; _, cErr = s1.Confirm(ctx, o, "u1", at) }()
				go func() { defer wg.Done(); <-start; _, xErr = s2.Cancel(ctx, o, "u1", at) }()
				close(start)
				wg.Wait()
				var se *OrderStateError
				switch {
				case cErr == nil && errors.As(xErr, &se):
					confirmed = append(confirmed, i)
				case xErr == nil && errors.As(cErr, &se):
				default:
					t.Errorf("round %d: confirm %v, cancel %v", i, cErr, xErr)
				}
			}
			req := func(order, id string, now lineRefund, g string) *RefundRequest {
				b, _ := json.Marshal(now)
				return &RefundRequest{OrderID: order, User: "u1", RefundID: id, BodyHash: string(b), Now: at.Add(time.Minute), Compute: refunder(qty, now, []string{g})}
			}
			for _, i := range confirmed {
				o := fmt.Sprintf("o%d", i)
				var wg sync.WaitGroup
				start := make(chan struct{})
				errs := make([]error, 4)
				for k, r := range []*RefundRequest{req(o, "ra", lineRefund{0: 1}, ids[i]), req(o, "rb", lineRefund{0: 1}, ids[i]),
					req(o, "ra", lineRefund{0: 1}, ids[i]), req(o, "rall", lineRefund{0: 2}, ids[i])} {
					st := s1
					if k%2 == 1 {
						st = s2
					}
					wg.Add(1)
					go func() { defer wg.Done(); <-start; _, _, _, errs[k] = st.Refund(ctx, r) }()
				}
				close(start)
				wg.Wait()
				ts, err := s1.Transitions(ctx, ids[i])
				if err != nil {
					t.Fatal(err)
				}
				returned := 0
				for _, tr := range ts {
					if tr.Cause == CauseRefund {
						returned++
					}
				}
				if returned > 1 {
					t.Errorf("order %s: coupon returned %d times (%v)", o, returned, errs)
				}
				ord, _, _ := s1.Order(ctx, o)
				if (ord.State == OrderRefunded) != (returned == 1) {
					t.Errorf("order %s is %s with %d returns (%v)", o, ord.State, returned, errs)
				}
			}
			t.Logf("%d of %d orders confirmed", len(confirmed), rounds)
			review13Check(t, s1, nil)
		})
	}
}

// TestReview13SQLiteWithSinkProcess: a standalone sink (flashgate sink)
// writing grants into the gateway's SQLite file from its own connection
// while the gateway redeems, confirms, cancels and sweeps: no step fails
// (SQLITE_BUSY is retried), none is lost.
func TestReview13SQLiteWithSinkProcess(t *testing.T) {
	gw, sinkSt := review13Pair(t, "sqlite")
	ctx := context.Background()
	const n = 1200
	var ids []string
	for first := 0; first < n; first += 500 {
		ids = append(ids, seed(t, gw, "c", "u1", first, min(500, n-first))...)
	}
	stop := make(chan struct{})
	var sinkErr error
	var sinkWG sync.WaitGroup
	sinkWG.Add(1)
	go func() {
		defer sinkWG.Done()
		next := 100000
		for {
			select {
			case <-stop:
				return
			default:
			}
			var batch []Grant
			for k := 0; k < 500; k++ {
				batch = append(batch, grant(next, "other", fmt.Sprintf("u%d", next)))
				next++
			}
			if _, err := sinkSt.Upsert(ctx, batch); err != nil {
				sinkErr = err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(f string, a ...any) { mu.Lock(); failures = append(failures, fmt.Sprintf(f, a...)); mu.Unlock() }
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				o := fmt.Sprintf("o%d", i)
				if _, _, err := gw.Redeem(ctx, redeemOf(o, "u1", t0, ids[i])); err != nil {
					fail("redeem %s: %v", o, err)
					continue
				}
				var err error
				if i%2 == 0 {
					_, err = gw.Confirm(ctx, o, "u1", t0.Add(time.Minute))
					if err == nil {
						b, _ := json.Marshal(lineRefund{0: 1})
						_, _, _, err = gw.Refund(ctx, &RefundRequest{OrderID: o, User: "u1", RefundID: "r", BodyHash: string(b), Now: t0.Add(2 * time.Minute),
							Compute: refunder(map[int]int64{0: 1}, lineRefund{0: 1}, []string{ids[i]})})
					}
				} else {
					_, err = gw.Cancel(ctx, o, "u1", t0.Add(time.Minute))
				}
				if err != nil {
					fail("step %s: %v", o, err)
				}
				if _, err := gw.ExpireLocks(ctx, t0.Add(time.Minute), 10); err != nil {
					fail("sweep: %v", err)
				}
				if evs, err := gw.PendingEvents(ctx, 50); err != nil {
					fail("pending: %v", err)
				} else {
					var evIDs []string
					for _, e := range evs {
						evIDs = append(evIDs, e.ID)
					}
					if err := gw.MarkPublished(ctx, evIDs, t0); err != nil {
						fail("mark: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	sinkWG.Wait()
	if sinkErr != nil {
		t.Errorf("sink: %v", sinkErr)
	}
	for _, f := range failures {
		t.Error(f)
	}
	var refunded int
	_ = gw.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM orders WHERE state = 'refunded'").Scan(&refunded)
	t.Logf("%d orders refunded; sink wrote meanwhile", refunded)
	review13Check(t, gw, nil)
}

// TestReview13TwoSweepersAndTakeovers: two gateways' sweepers run while
// redeems on both take over expired locks of the same grants.
func TestReview13TwoSweepersAndTakeovers(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			s1, s2 := review13Pair(t, driver)
			ctx := context.Background()
			ids := seed(t, s1, "c", "u1", 0, 4)
			// 30 generations: every order of a generation expires at the next.
			for gen := 0; gen < 30; gen++ {
				at := t0.Add(time.Duration(gen) * 16 * time.Minute)
				var wg sync.WaitGroup
				start := make(chan struct{})
				var errs []error
				var mu sync.Mutex
				add := func(err error) {
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
				for k, st := range []*Store{s1, s2, s1, s2} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						// Two orders want overlapping pairs of grants.
						_, _, err := st.Redeem(ctx, redeemOf(fmt.Sprintf("g%d-%d", gen, k), "u1", at, ids[k%4], ids[(k+1)%4]))
						var iu *InUseError
						if !errors.As(err, &iu) {
							add(err)
						}
					}()
				}
				for _, st := range []*Store{s1, s2} {
					wg.Add(1)
					go func() { defer wg.Done(); <-start; _, err := st.ExpireLocks(ctx, at, 100); add(err) }()
				}
				close(start)
				wg.Wait()
				for _, err := range errs {
					t.Errorf("gen %d: %v", gen, err)
				}
			}
			review13Check(t, s1, nil)
			var n int
			if err := s1.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM coupon_transitions WHERE cause = 'lock_expired'").Scan(&n); err != nil && !errors.Is(err, sql.ErrNoRows) {
				t.Fatal(err)
			}
			t.Logf("%d lock_expired transitions", n)
		})
	}
}

// TestReview13TransitionLogFollowsSkewedClocks: the log and the outbox were
// ordered by each gateway's wall clock (at, then a per-process counter).
// Gateway 1 cancels order A at T+1ms; gateway 2, whose clock is 5 ms
// behind, then redeems the freed coupon for order B and confirms it. The
// grant's log read B's lock and use before A's lock and release — a chain
// that ends "unused" while the row is "used" — and the outbox handed the
// publisher "used" before "released", so COUPON_EVENTS carried them in that
// order and a consumer applying them ended with the coupon free. Both now
// follow the grant's commit order (grant_seq).
func TestReview13TransitionLogFollowsSkewedClocks(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			gw1, gw2 := review13Pair(t, driver)
			ctx := context.Background()
			g := seed(t, gw1, "c", "u1", 0, 1)[0]
			T := t0
			skew := -5 * time.Millisecond // gateway 2's clock
			if _, _, err := gw1.Redeem(ctx, redeemOf("A", "u1", T, g)); err != nil {
				t.Fatal(err)
			}
			if _, err := gw1.Cancel(ctx, "A", "u1", T.Add(time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := gw2.Redeem(ctx, redeemOf("B", "u1", T.Add(2*time.Millisecond+skew), g)); err != nil {
				t.Fatal(err)
			}
			if _, err := gw2.Confirm(ctx, "B", "u1", T.Add(3*time.Millisecond+skew)); err != nil {
				t.Fatal(err)
			}
			evs, err := gw1.PendingEvents(ctx, 10)
			if err != nil {
				t.Fatal(err)
			}
			var order []string
			for _, e := range evs {
				order = append(order, e.Type+"("+e.OrderID+")")
			}
			if want := []string{"released(A)", "used(B)"}; !slices.Equal(order, want) || evs[0].Seq >= evs[1].Seq {
				t.Errorf("outbox order for grant %s: %v (want %v, grant_seq rising) — the last event a consumer applies must say what the store says: used by B", g, order, want)
			}
			review13Check(t, gw1, nil)
		})
	}
}
