package store

import (
	"context"
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

// The checkout half of the store (issue 13), on both drivers: every test
// below runs on SQLite and on a fresh PostgreSQL database.
func TestCheckoutConformance(t *testing.T) {
	for name, open := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			t.Run("redeem, replay, conflict", func(t *testing.T) { testRedeemReplay(t, open(t)) })
			t.Run("50 orders on one grant: one wins", func(t *testing.T) { testOneGrantManyOrders(t, open(t)) })
			t.Run("one order 50 times: one lock, one answer", func(t *testing.T) { testOneOrderManyTimes(t, open(t)) })
			t.Run("answer lost after commit, then retry", func(t *testing.T) { testAnswerLostThenRetry(t, open(t)) })
			t.Run("all or none", func(t *testing.T) { testAllOrNone(t, open(t)) })
			t.Run("confirm and cancel", func(t *testing.T) { testConfirmCancel(t, open(t)) })
			t.Run("lock expiry", func(t *testing.T) { testLockExpiry(t, open(t)) })
			t.Run("refunds", func(t *testing.T) { testRefunds(t, open(t)) })
			t.Run("wallet states", func(t *testing.T) { testWallet(t, open(t)) })
			t.Run("events and expiring notices", func(t *testing.T) { testEvents(t, open(t)) })
			t.Run("usage figures", func(t *testing.T) { testUsage(t, open(t)) })
		})
	}
}

var t0 = time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)

// seed stores n grants of campaign c for user, valid until t0 + 30 days.
func seed(t *testing.T, s *Store, c, user string, first, n int) []string {
	t.Helper()
	var gs []Grant
	var ids []string
	for i := first; i < first+n; i++ {
		g := grant(i, c, user)
		g.ValidUntil = t0.Add(30 * 24 * time.Hour).Unix()
		gs = append(gs, g)
		ids = append(ids, g.GrantID)
	}
	if _, err := s.Upsert(context.Background(), gs); err != nil {
		t.Fatal(err)
	}
	return ids
}

func redeemOf(order, user string, at time.Time, grants ...string) *Redeem {
	r := &Redeem{OrderID: order, User: user, BodyHash: "h-" + order, Answer: []byte(fmt.Sprintf(`{"order_id":%q}`, order)),
		Items: 10000, Discount: 500 * int64(len(grants)), Payable: 10000 - 500*int64(len(grants)), Now: at, LockTTL: 15 * time.Minute}
	for _, g := range grants {
		r.Coupons = append(r.Coupons, OrderCoupon{GrantID: g, Campaign: "c", Discount: 500})
	}
	return r
}

func states(t *testing.T, s *Store, user string, at time.Time, ids ...string) map[string]string {
	t.Helper()
	ws, err := s.UserGrants(context.Background(), user, ids, at)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, w := range ws {
		out[w.GrantID] = w.State + "/" + w.OrderID
	}
	return out
}

func testRedeemReplay(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 2)
	o, replay, err := s.Redeem(ctx, redeemOf("o1", "u1", t0, ids...))
	if err != nil || replay || o.State != OrderLocked || string(o.Answer) != `{"order_id":"o1"}` || o.LockExpiresAt != t0.Add(15*time.Minute).UnixNano() {
		t.Fatalf("redeem: %+v %v %v", o, replay, err)
	}
	if st := states(t, s, "u1", t0, ids...); st[ids[0]] != "locked/o1" || st[ids[1]] != "locked/o1" {
		t.Fatalf("states %v", st)
	}
	// The same body again, later: the stored order.
	o2, replay, err := s.Redeem(ctx, redeemOf("o1", "u1", t0.Add(time.Minute), ids...))
	if err != nil || !replay || string(o2.Answer) != string(o.Answer) || o2.CreatedAt != o.CreatedAt {
		t.Fatalf("replay: %+v %v %v", o2, replay, err)
	}
	// Another body, or another user, under the same order id.
	other := redeemOf("o1", "u1", t0, ids[0])
	other.BodyHash = "different"
	if _, _, err := s.Redeem(ctx, other); !errors.Is(err, ErrOrderConflict) {
		t.Fatalf("another body: %v", err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("o1", "u2", t0, ids...)); !errors.Is(err, ErrOrderConflict) {
		t.Fatalf("another user: %v", err)
	}
	// Another user's grant cannot be locked: it is not theirs.
	var inUse *InUseError
	if _, _, err := s.Redeem(ctx, redeemOf("o2", "u2", t0, ids[0])); !errors.As(err, &inUse) {
		t.Fatalf("another user's grant: %v", err)
	}
	ts, err := s.Transitions(ctx, ids[0])
	if err != nil || len(ts) != 1 || ts[0].From != CouponUnused || ts[0].To != CouponLocked || ts[0].Cause != CauseRedeem || ts[0].OrderID != "o1" {
		t.Fatalf("transitions %+v %v", ts, err)
	}
}

// testOneGrantManyOrders: 50 orders race for one grant; exactly one locks it.
func testOneGrantManyOrders(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 1)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, inUse := 0, 0
	start := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, replay, err := s.Redeem(ctx, redeemOf(fmt.Sprintf("race-%d", i), "u1", t0, ids[0]))
			var iu *InUseError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && !replay:
				won++
			case errors.As(err, &iu) && slices.Equal(iu.GrantIDs, ids):
				inUse++
			default:
				t.Errorf("order %d: %v %v", i, replay, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if won != 1 || inUse != 49 {
		t.Fatalf("won %d, in use %d (want 1 and 49)", won, inUse)
	}
	ts, _ := s.Transitions(ctx, ids[0])
	if len(ts) != 1 {
		t.Fatalf("%d transitions for one lock: %+v", len(ts), ts)
	}
}

// testOneOrderManyTimes: one order sent 50 times at once; one lock, and
// every call gets the same stored order.
func testOneOrderManyTimes(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	var answers []string
	start := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Each call carries its own clock reading, as retries do.
			o, replay, err := s.Redeem(ctx, redeemOf("same", "u1", t0.Add(time.Duration(i)*time.Millisecond), ids...))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			if !replay {
				fresh++
			}
			answers = append(answers, fmt.Sprintf("%s|%d|%d", o.Answer, o.LockExpiresAt, o.CreatedAt))
		}()
	}
	close(start)
	wg.Wait()
	if fresh != 1 || len(answers) != 50 {
		t.Fatalf("%d fresh redeems of 50 answers (want 1)", fresh)
	}
	for _, a := range answers {
		if a != answers[0] {
			t.Fatalf("answers differ: %s vs %s", a, answers[0])
		}
	}
	for _, id := range ids {
		if ts, _ := s.Transitions(ctx, id); len(ts) != 1 {
			t.Fatalf("grant %s locked %d times", id, len(ts))
		}
	}
}

// testAnswerLostThenRetry: the redeem commits and its answer never reaches
// the client (the process dies after the commit); the retry gets the
// committed outcome and locks nothing twice. A crash before the commit
// leaves nothing (the transaction rolls back), so the retry is a first
// redeem: either way one outcome.
func testAnswerLostThenRetry(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 1)
	if _, _, err := s.Redeem(ctx, redeemOf("lost", "u1", t0, ids...)); err != nil {
		t.Fatal(err)
	} // the answer is dropped here
	// A competing order meanwhile cannot take the coupon.
	var iu *InUseError
	if _, _, err := s.Redeem(ctx, redeemOf("thief", "u1", t0.Add(time.Second), ids...)); !errors.As(err, &iu) {
		t.Fatalf("competing order: %v", err)
	}
	o, replay, err := s.Redeem(ctx, redeemOf("lost", "u1", t0.Add(2*time.Second), ids...))
	if err != nil || !replay || o.State != OrderLocked || o.CreatedAt != t0.UnixNano() {
		t.Fatalf("retry: %+v %v %v", o, replay, err)
	}
	// A transaction that fails after its first statements leaves nothing.
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.Redeem(ctx2, redeemOf("never", "u1", t0, seed(t, s, "c", "u1", 5, 1)...)); err == nil {
		t.Fatal("a redeem with a cancelled context succeeded")
	}
	if _, ok, err := s.Order(ctx, "never"); ok || err != nil {
		t.Fatalf("a failed redeem left its order: %v %v", ok, err)
	}
	if ts, _ := s.Transitions(ctx, ids[0]); len(ts) != 1 {
		t.Fatalf("transitions %+v", ts)
	}
}

// testAllOrNone: one coupon in use refuses the whole redeem; the others
// stay unused.
func testAllOrNone(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 3)
	if _, _, err := s.Redeem(ctx, redeemOf("first", "u1", t0, ids[1])); err != nil {
		t.Fatal(err)
	}
	var iu *InUseError
	if _, _, err := s.Redeem(ctx, redeemOf("second", "u1", t0, ids...)); !errors.As(err, &iu) || !slices.Equal(iu.GrantIDs, ids[1:2]) {
		t.Fatalf("second: %v", err)
	}
	st := states(t, s, "u1", t0, ids...)
	if st[ids[0]] != "unused/" || st[ids[1]] != "locked/first" || st[ids[2]] != "unused/" {
		t.Fatalf("states after a refused redeem: %v", st)
	}
	if _, ok, _ := s.Order(ctx, "second"); ok {
		t.Fatal("a refused redeem stored its order")
	}
}

func testConfirmCancel(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 2)
	if _, _, err := s.Redeem(ctx, redeemOf("pay", "u1", t0, ids[0])); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("drop", "u1", t0, ids[1])); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Minute)
	if _, err := s.Confirm(ctx, "pay", "u2", at); !errors.Is(err, ErrOrderNotFound) {
		t.Fatalf("confirm as another user: %v", err)
	}
	o, err := s.Confirm(ctx, "pay", "u1", at)
	if err != nil || o.State != OrderConfirmed || o.ConfirmedAt != at.UnixNano() {
		t.Fatalf("confirm: %+v %v", o, err)
	}
	if o, err := s.Confirm(ctx, "pay", "u1", at.Add(time.Minute)); err != nil || o.ConfirmedAt != at.UnixNano() {
		t.Fatalf("confirm again: %+v %v", o, err)
	}
	var se *OrderStateError
	if _, err := s.Cancel(ctx, "pay", "u1", at); !errors.As(err, &se) || se.State != OrderConfirmed {
		t.Fatalf("cancel a confirmed order: %v", err)
	}
	if o, err := s.Cancel(ctx, "drop", "u1", at); err != nil || o.State != OrderCancelled {
		t.Fatalf("cancel: %+v %v", o, err)
	}
	if o, err := s.Cancel(ctx, "drop", "u1", at.Add(time.Minute)); err != nil || o.State != OrderCancelled {
		t.Fatalf("cancel again: %+v %v", o, err)
	}
	if _, err := s.Confirm(ctx, "drop", "u1", at); !errors.As(err, &se) || se.State != OrderCancelled {
		t.Fatalf("confirm a cancelled order: %v", err)
	}
	if _, err := s.Cancel(ctx, "nope", "u1", at); !errors.Is(err, ErrOrderNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
	st := states(t, s, "u1", at, ids...)
	if st[ids[0]] != "used/pay" || st[ids[1]] != "unused/" {
		t.Fatalf("states %v", st)
	}
	// The released coupon serves a new order.
	if _, _, err := s.Redeem(ctx, redeemOf("again", "u1", at, ids[1])); err != nil {
		t.Fatalf("redeem a released coupon: %v", err)
	}
	var causes []string
	for _, id := range ids {
		ts, _ := s.Transitions(ctx, id)
		for _, tr := range ts {
			causes = append(causes, tr.From+">"+tr.To+":"+tr.Cause+":"+tr.Event)
		}
	}
	want := []string{"unused>locked:redeem:", "locked>used:confirm:used", "unused>locked:redeem:", "locked>unused:cancel:released", "unused>locked:redeem:"}
	if !slices.Equal(causes, want) {
		t.Fatalf("transitions %v, want %v", causes, want)
	}
}

func testLockExpiry(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 3)
	if _, _, err := s.Redeem(ctx, redeemOf("slow", "u1", t0, ids[0], ids[1])); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("slow2", "u1", t0.Add(10*time.Minute), ids[2])); err != nil {
		t.Fatal(err)
	}
	late := t0.Add(16 * time.Minute)
	// Before any sweep the expired lock reads free…
	if st := states(t, s, "u1", late, ids...); st[ids[0]] != "unused/" || st[ids[2]] != "locked/slow2" {
		t.Fatalf("states at expiry: %v", st)
	}
	// …and a new order takes one of its coupons: the old order ends, both
	// its coupons released, in the same transaction.
	if _, _, err := s.Redeem(ctx, redeemOf("fast", "u1", late, ids[1])); err != nil {
		t.Fatalf("redeem over an expired lock: %v", err)
	}
	o, _, _ := s.Order(ctx, "slow")
	if o.State != OrderExpired {
		t.Fatalf("old order %s", o.State)
	}
	if st := states(t, s, "u1", late, ids...); st[ids[0]] != "unused/" || st[ids[1]] != "locked/fast" {
		t.Fatalf("states after take-over: %v", st)
	}
	var se *OrderStateError
	if _, err := s.Confirm(ctx, "slow", "u1", late); !errors.As(err, &se) || se.State != OrderExpired {
		t.Fatalf("confirm an expired order: %v", err)
	}
	// Confirm after the lock expired, before the sweeper: refused, and the
	// order ends at once.
	if _, err := s.Confirm(ctx, "slow2", "u1", t0.Add(26*time.Minute)); !errors.As(err, &se) || se.State != OrderExpired {
		t.Fatalf("confirm after expiry: %v", err)
	}
	if st := states(t, s, "u1", late, ids[2]); st[ids[2]] != "unused/" {
		t.Fatalf("coupon of an order refused at confirm: %v", st)
	}
	// The sweeper ends the rest, in bounded batches.
	if _, _, err := s.Redeem(ctx, redeemOf("abandoned", "u1", late, ids[0])); err != nil {
		t.Fatal(err)
	}
	if n, err := s.ExpireLocks(ctx, late.Add(14*time.Minute), 10); err != nil || n != 0 {
		t.Fatalf("sweep before expiry: %d %v", n, err)
	}
	if n, err := s.ExpireLocks(ctx, late.Add(16*time.Minute), 10); err != nil || n != 2 {
		t.Fatalf("sweep: %d %v (want fast and abandoned)", n, err)
	}
	if n, err := s.ExpireLocks(ctx, late.Add(16*time.Minute), 10); err != nil || n != 0 {
		t.Fatalf("second sweep: %d %v", n, err)
	}
	if o, err := s.Cancel(ctx, "abandoned", "u1", late.Add(17*time.Minute)); err != nil || o.State != OrderExpired {
		t.Fatalf("cancel an expired order: %+v %v", o, err)
	}
	ts, _ := s.Transitions(ctx, ids[0])
	if len(ts) != 4 || ts[1].Cause != CauseLockExpired || ts[1].Event != EventReleased || ts[3].Cause != CauseLockExpired {
		t.Fatalf("transitions of %s: %+v", ids[0], ts)
	}
}

// lineRefund is the refund encoding of this test: units per line.
type lineRefund map[int]int64

// refunder computes refunds over an order of lines (quantities); the
// coupons are returned on the refund that completes it.
func refunder(qty map[int]int64, now lineRefund, ret []string) func(*Order, []StoredRefund) (RefundComputed, error) {
	return func(o *Order, earlier []StoredRefund) (RefundComputed, error) {
		done := lineRefund{}
		for _, e := range earlier {
			var l lineRefund
			if err := json.Unmarshal(e.Lines, &l); err != nil {
				return RefundComputed{}, err
			}
			for k, v := range l {
				done[k] += v
			}
		}
		full := true
		for line, q := range qty {
			if done[line]+now[line] > q {
				return RefundComputed{}, fmt.Errorf("line %d over-refunded", line)
			}
			if done[line]+now[line] < q {
				full = false
			}
		}
		lines, _ := json.Marshal(now)
		c := RefundComputed{Lines: lines, Answer: fmt.Appendf(nil, `{"lines":%s,"earlier":%d}`, lines, len(earlier)), Full: full}
		if full {
			c.Return = ret
		}
		return c, nil
	}
}

func testRefunds(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 4)
	qty := map[int]int64{0: 2, 1: 1}
	for i, o := range []string{"r1", "r2", "r3"} {
		if _, _, err := s.Redeem(ctx, redeemOf(o, "u1", t0, ids[i])); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Redeem(ctx, redeemOf("unpaid", "u1", t0, ids[3])); err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"r1", "r2", "r3"} {
		if _, err := s.Confirm(ctx, o, "u1", t0); err != nil {
			t.Fatal(err)
		}
	}
	at := t0.Add(time.Hour)
	req := func(order, id string, now lineRefund, ret ...string) *RefundRequest {
		b, _ := json.Marshal(now)
		return &RefundRequest{OrderID: order, User: "u1", RefundID: id, BodyHash: string(b), Now: at, Compute: refunder(qty, now, ret)}
	}
	var se *OrderStateError
	if _, _, _, err := s.Refund(ctx, req("unpaid", "x", lineRefund{0: 1})); !errors.As(err, &se) || se.State != OrderLocked {
		t.Fatalf("refund an unconfirmed order: %v", err)
	}
	// r1: partial, then the rest; the coupon comes back on the last.
	r, o, replay, err := s.Refund(ctx, req("r1", "a", lineRefund{0: 1}, ids[0]))
	if err != nil || replay || r.Full || o.State != OrderPartiallyRefunded {
		t.Fatalf("partial refund: %+v %+v %v %v", r, o, replay, err)
	}
	if st := states(t, s, "u1", at, ids[0]); st[ids[0]] != "used/r1" {
		t.Fatalf("after a partial refund: %v", st)
	}
	if r2, _, replay, err := s.Refund(ctx, req("r1", "a", lineRefund{0: 1}, ids[0])); err != nil || !replay || string(r2.Answer) != string(r.Answer) {
		t.Fatalf("refund retried: %+v %v %v", r2, replay, err)
	}
	if _, _, _, err := s.Refund(ctx, req("r1", "a", lineRefund{1: 1}, ids[0])); !errors.Is(err, ErrOrderConflict) {
		t.Fatalf("refund id reused with another body: %v", err)
	}
	if _, _, _, err := s.Refund(ctx, req("r1", "b", lineRefund{0: 2})); err == nil || errors.Is(err, ErrOrderConflict) {
		t.Fatalf("over-refund: %v", err)
	}
	r, o, _, err = s.Refund(ctx, req("r1", "c", lineRefund{0: 1, 1: 1}, ids[0]))
	if err != nil || !r.Full || o.State != OrderRefunded || string(r.Answer) != `{"lines":{"0":1,"1":1},"earlier":1}` {
		t.Fatalf("completing refund: %+v %+v %v", r, o, err)
	}
	if st := states(t, s, "u1", at, ids[0]); st[ids[0]] != "unused/" {
		t.Fatalf("returned coupon: %v", st)
	}
	if _, _, _, err := s.Refund(ctx, req("r1", "d", lineRefund{0: 1})); !errors.As(err, &se) || se.State != OrderRefunded {
		t.Fatalf("refund after full refund: %v", err)
	}
	// r2: full at once, the coupon kept (on_refund keep, or validity ended).
	if r, o, _, err := s.Refund(ctx, req("r2", "all", lineRefund{0: 2, 1: 1})); err != nil || !r.Full || o.State != OrderRefunded {
		t.Fatalf("full refund: %+v %v", o, err)
	}
	if st := states(t, s, "u1", at, ids[1]); st[ids[1]] != "used/r2" {
		t.Fatalf("kept coupon: %v", st)
	}
	ts, _ := s.Transitions(ctx, ids[0])
	if last := ts[len(ts)-1]; last.From != CouponUsed || last.To != CouponUnused || last.Event != EventReturned || last.Cause != CauseRefund {
		t.Fatalf("return transition %+v", last)
	}
	// Concurrent distinct partial refunds of one order never over-refund.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, err := s.Refund(ctx, req("r3", fmt.Sprintf("p%d", i), lineRefund{0: 1}, ids[2]))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			}
		}()
	}
	wg.Wait()
	if ok != 2 {
		t.Fatalf("%d of 6 concurrent one-unit refunds of a 2-unit line succeeded", ok)
	}
	rs, err := s.Refunds(ctx, "r3")
	if err != nil || len(rs) != 2 {
		t.Fatalf("refunds %d %v", len(rs), err)
	}
}

func testWallet(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 5)
	// ids[4] has ended.
	g := grant(4, "c", "u1")
	g.GrantID, g.ValidUntil = "expired-one", t0.Add(-time.Hour).Unix()
	if _, err := s.Upsert(ctx, []Grant{g}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("w1", "u1", t0, ids[0])); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("w2", "u1", t0, ids[1])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Confirm(ctx, "w2", "u1", t0); err != nil {
		t.Fatal(err)
	}
	count := func(state string, at time.Time) int {
		ws, err := s.Wallet(ctx, "u1", state, at, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			if state != "" && w.WalletState(at) != state {
				t.Fatalf("filter %s returned %s in state %s", state, w.GrantID, w.WalletState(at))
			}
		}
		return len(ws)
	}
	for _, c := range []struct {
		state string
		at    time.Time
		want  int
	}{{"", t0, 6}, {CouponUnused, t0, 3}, {CouponLocked, t0, 1}, {CouponUsed, t0, 1}, {WalletExpired, t0, 1},
		{CouponLocked, t0.Add(20 * time.Minute), 0}, {CouponUnused, t0.Add(20 * time.Minute), 4}} {
		if got := count(c.state, c.at); got != c.want {
			t.Errorf("wallet %q at %v: %d grants, want %d", c.state, c.at.Sub(t0), got, c.want)
		}
	}
	us, err := s.Usable(ctx, "u1", t0, 100)
	if err != nil || len(us) != 3 {
		t.Fatalf("usable %d %v", len(us), err)
	}
	if _, err := s.Wallet(ctx, "u1", "bogus", t0, 10); err == nil {
		t.Fatal("unknown state accepted")
	}
}

func testEvents(t *testing.T, s *Store) {
	ctx := context.Background()
	ids := seed(t, s, "c", "u1", 0, 3) // valid until t0 + 30 days
	if _, _, err := s.Redeem(ctx, redeemOf("e1", "u1", t0, ids[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Confirm(ctx, "e1", "u1", t0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("e2", "u1", t0, ids[1])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Cancel(ctx, "e2", "u1", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	evs, err := s.PendingEvents(ctx, 100)
	if err != nil || len(evs) != 2 || evs[0].Type != EventUsed || evs[1].Type != EventReleased || evs[0].OrderID != "e1" {
		t.Fatalf("events %+v %v", evs, err)
	}
	ts, _ := s.Transitions(ctx, ids[0])
	if evs[0].ID != ts[1].ID {
		t.Fatalf("event id %s is not the transition id %s", evs[0].ID, ts[1].ID)
	}
	// Expiring: 24 h before valid_until, once per unused grant, bounded.
	near := t0.Add(29*24*time.Hour + time.Hour)
	window := near.Add(24 * time.Hour).Unix()
	if n, err := s.NoticeExpiring(ctx, "c", t0, t0.Add(24*time.Hour).Unix(), 10); err != nil || n != 0 {
		t.Fatalf("notice too early: %d %v", n, err)
	}
	if n, err := s.NoticeExpiring(ctx, "c", near, window, 1); err != nil || n != 1 {
		t.Fatalf("notice batch 1: %d %v", n, err)
	}
	if n, err := s.NoticeExpiring(ctx, "c", near, window, 10); err != nil || n != 1 {
		t.Fatalf("notice rest: %d %v (ids[0] is used: not noticed)", n, err)
	}
	if n, err := s.NoticeExpiring(ctx, "c", near.Add(time.Hour), window+3600, 10); err != nil || n != 0 {
		t.Fatalf("noticed twice: %d %v", n, err)
	}
	evs, _ = s.PendingEvents(ctx, 100)
	if len(evs) != 4 || evs[2].Type != EventExpiring || evs[2].ID != "expiring:"+evs[2].GrantID || evs[2].ValidUntil == 0 {
		t.Fatalf("events with notices %+v", evs)
	}
	var all []string
	for _, e := range evs {
		all = append(all, e.ID)
	}
	if err := s.MarkPublished(ctx, all[:3], t0); err != nil {
		t.Fatal(err)
	}
	if evs, _ = s.PendingEvents(ctx, 100); len(evs) != 1 || evs[0].ID != all[3] {
		t.Fatalf("after publishing 3: %+v", evs)
	}
	if err := s.MarkPublished(ctx, all[3:], t0); err != nil {
		t.Fatal(err)
	}
	if evs, _ = s.PendingEvents(ctx, 100); len(evs) != 0 {
		t.Fatalf("after publishing all: %+v", evs)
	}
}

func testUsage(t *testing.T, s *Store) {
	ctx := context.Background()
	a := seed(t, s, "c", "u1", 0, 2)
	b := seed(t, s, "c", "u2", 10, 1)
	seed(t, s, "c", "u3", 20, 1) // claimed, never used
	day2 := t0.Add(24 * time.Hour)
	r := redeemOf("s1", "u1", t0, a[0])
	if _, _, err := s.Redeem(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Confirm(ctx, "s1", "u1", t0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("s2", "u2", day2, b[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Confirm(ctx, "s2", "u2", day2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Redeem(ctx, redeemOf("s3", "u1", day2, a[1])); err != nil { // locked, not confirmed
		t.Fatal(err)
	}
	u, err := s.CampaignUsage(ctx, "c", day2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if u.Stored != 4 || u.UsersClaimed != 3 || u.Used != 2 || u.Locked != 1 || u.DiscountTotal != 1000 || u.OrdersWithCoupon != 2 ||
		u.UsersWithCoupon != 2 || u.OrderValue != 19000 || u.UsageRate != 0.5 || u.AOVWithCoupon != 9500 || u.ROI != 19 {
		t.Fatalf("usage %+v", u)
	}
	if c := u.Conversion; c < 0.66 || c > 0.67 {
		t.Fatalf("conversion %v", c)
	}
	want := []UsageDay{{Day: "2026-11-10"}, {Day: "2026-11-11", Orders: 1, Used: 1, Discount: 500, OrderValue: 9500}, {Day: "2026-11-12", Orders: 1, Used: 1, Discount: 500, OrderValue: 9500}}
	if !slices.Equal(u.Daily, want) {
		t.Fatalf("daily %+v", u.Daily)
	}
}

// TestCheckoutMigrationAddsGrantSeq: two processes open a fresh database
// at once (PostgreSQL's CREATE … IF NOT EXISTS is not atomic: migrations
// take turns). Then a database of the earlier schema (no transition_seq, no
// grant_seq), with a grant's history and an event still in the outbox, is
// opened by two processes at once: both open, the columns are added with
// their defaults, the earlier transitions keep their order (grant_seq 0, by
// at) before every new one, and the new ones follow the commit order
// though their clock is behind.
func TestCheckoutMigrationAddsGrantSeq(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			dsn := filepath.Join(t.TempDir(), "grants.db")
			if driver == "postgres" {
				dsn = pgtest.Fresh(t)
			}
			openTwo := func() [2]*Store {
				var stores [2]*Store
				var errs [2]error
				var wg sync.WaitGroup
				for i := range stores {
					wg.Add(1)
					go func() { defer wg.Done(); stores[i], errs[i] = Open(ctx, driver, dsn) }()
				}
				wg.Wait()
				for i, s := range stores {
					if errs[i] != nil {
						t.Fatalf("open %d: %v", i, errs[i])
					}
					t.Cleanup(func() { s.Close() })
				}
				return stores
			}
			old := openTwo()[0]
			g := seed(t, old, "c", "u1", 0, 1)[0]
			// Back to the earlier schema, where order A locked g at T+10ms
			// and was cancelled at T+11ms.
			T := t0.UnixNano()
			for _, q := range []struct {
				q    string
				args []any
			}{
				{"DROP INDEX coupon_transitions_outbox", nil},
				{"ALTER TABLE coupon_states DROP COLUMN transition_seq", nil},
				{"ALTER TABLE coupon_transitions DROP COLUMN grant_seq", nil},
				{"INSERT INTO coupon_states VALUES (?, 'u1', 'c', 'unused', '', 0, 0, ?)", []any{g, T + 11e6}},
				{"INSERT INTO coupon_transitions VALUES ('old-1', ?, 'A', 'c', 'u1', 'unused', 'locked', 'redeem', ?, '', 0)", []any{g, T + 10e6}},
				{"INSERT INTO coupon_transitions VALUES ('old-2', ?, 'A', 'c', 'u1', 'locked', 'unused', 'cancel', ?, 'released', 0)", []any{g, T + 11e6}},
			} {
				if _, err := old.db.ExecContext(ctx, old.rebind(q.q), q.args...); err != nil {
					t.Fatalf("%s: %v", q.q, err)
				}
			}
			stores := openTwo()
			// A gateway whose clock is 10 ms behind takes the coupon and confirms.
			if _, _, err := stores[1].Redeem(ctx, redeemOf("B", "u1", t0, g)); err != nil {
				t.Fatal(err)
			}
			if _, err := stores[1].Confirm(ctx, "B", "u1", t0.Add(time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			ts, err := stores[0].Transitions(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tr := range ts {
				got = append(got, fmt.Sprintf("%d:%s→%s(%s)", tr.Seq, tr.From, tr.To, tr.OrderID))
			}
			if want := []string{"0:unused→locked(A)", "0:locked→unused(A)", "1:unused→locked(B)", "2:locked→used(B)"}; !slices.Equal(got, want) {
				t.Errorf("log %v, want %v", got, want)
			}
			evs, err := stores[0].PendingEvents(ctx, 10)
			if err != nil {
				t.Fatal(err)
			}
			got = got[:0]
			for _, e := range evs {
				got = append(got, fmt.Sprintf("%d:%s(%s)", e.Seq, e.Type, e.OrderID))
			}
			if want := []string{"0:released(A)", "2:used(B)"}; !slices.Equal(got, want) {
				t.Errorf("outbox %v, want %v", got, want)
			}
		})
	}
}
