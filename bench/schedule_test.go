package bench

import (
	"math"
	"testing"
	"time"
)

func TestProfiles(t *testing.T) {
	s := Spike(100, 1000, 2*time.Second, time.Second, time.Second)
	for _, c := range []struct {
		at   time.Duration
		want float64
	}{{0, 100}, {time.Second, 100}, {2 * time.Second, 1000}, {2500 * time.Millisecond, 1000}, {3500 * time.Millisecond, 550}, {10 * time.Second, 100}} {
		if got := s.RateAt(c.at); math.Abs(got-c.want) > 1e-6 {
			t.Errorf("spike at %v: %.1f, want %.1f", c.at, got, c.want)
		}
	}
	if got := Ramp(0, 1000, 10*time.Second).Expected(10 * time.Second); math.Abs(got-5000) > 10 {
		t.Errorf("ramp 0→1000 over 10s asks for %.0f, want 5000", got)
	}
	if (Profile{{time.Second, 1}, {0, 1}}).Validate() == nil {
		t.Error("profile going back in time accepted")
	}
}
