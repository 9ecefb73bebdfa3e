package wait

import (
	"context"
	"fmt"
	"testing"
	"time"
)

type fakeTB struct{ failed string }

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

func TestUntilReturnsOnceTrue(t *testing.T) {
	n := 0
	start := time.Now()
	if !Until(context.Background(), 5*time.Second, func() bool { n++; return n == 4 }) {
		t.Fatal("Until gave up on a condition that turned true")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("four polls took %v; the backoff starts at %v", el, pollIntervalMin)
	}
}

func TestUntilIsBounded(t *testing.T) {
	start := time.Now()
	polls := 0
	if Until(context.Background(), 300*time.Millisecond, func() bool { polls++; return false }) {
		t.Fatal("Until reported a false condition as true")
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 300*time.Millisecond+2*pollIntervalMax {
		t.Errorf("Until returned after %v, want about 300ms", el)
	}
	if polls > 20 {
		t.Errorf("%d polls in 300ms: the backoff is not capped upward", polls)
	}
}

func TestUntilStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if Until(ctx, time.Minute, func() bool { return false }) {
		t.Fatal("true on a false condition")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("Until ignored its context for %v", el)
	}
}

func TestForFailsNamingWhat(t *testing.T) {
	var f fakeTB
	For(&f, 20*time.Millisecond, "the moon", func() bool { return false })
	if want := "timed out after 20ms waiting for the moon"; f.failed != want {
		t.Errorf("For failed with %q, want %q", f.failed, want)
	}
	f = fakeTB{}
	For(&f, time.Second, "now", func() bool { return true })
	if f.failed != "" {
		t.Errorf("For failed on a true condition: %s", f.failed)
	}
}
