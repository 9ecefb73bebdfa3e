// Package wait is flashgate's one bounded wait: poll a condition until it
// holds or a deadline passes, with a backoff that starts short (a condition
// that is nearly true costs a millisecond) and is capped (a slow condition —
// an audit, an HTTP probe — is not hammered).
//
// For is the test form (fails the test after the timeout, naming what was
// awaited); Until is the form for production code (admin handlers that wait
// until their own write is visible), which reports false instead. Neither
// starts a goroutine: both run in the caller's and return within the timeout
// plus one poll.
//
// The package imports no "testing": For takes the two methods it needs, so
// production code may import it.
package wait

import (
	"context"
	"time"
)

const (
	// pollIntervalMin is the first pause between two polls.
	pollIntervalMin = time.Millisecond
	// pollIntervalMax caps the doubling: a condition that turns true is seen
	// within 100 ms, and an expensive one runs at most ten times a second.
	pollIntervalMax = 100 * time.Millisecond
)

// TB is the part of testing.TB that For uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// For polls cond until it returns true, and fails t (Fatalf, so call it from
// the test's goroutine) if it is still false after timeout. what completes
// "timed out after 5s waiting for …".
func For(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Until(context.Background(), timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Until polls cond until it returns true (true), or until timeout passes or
// ctx ends (false). cond runs at least once, and once more at the deadline.
func Until(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := pollIntervalMin
	t := time.NewTimer(time.Hour) // reset before every pause
	defer t.Stop()
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return false
		}
		t.Reset(min(pause, left))
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		pause = min(2*pause, pollIntervalMax)
	}
}
