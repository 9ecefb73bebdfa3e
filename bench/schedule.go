package bench

import (
	"errors"
	"fmt"
	"time"
)

// Profile is a piecewise-linear arrival rate: requests per second at the
// given offsets from the start, linear in between, flat after the last point.
type Profile []Point

// Point of a profile.
type Point struct {
	At   time.Duration
	Rate float64
}

// Constant is a flat profile.
func Constant(rate float64) Profile { return Profile{{0, rate}} }

// Ramp goes linearly from one rate to another over d.
func Ramp(from, to float64, d time.Duration) Profile { return Profile{{0, from}, {d, to}} }

// Spike is a drop: base rate, then at T0 a jump to peak held for hold, then
// a decay back to base over decay — the 10:00:00 shape.
func Spike(base, peak float64, t0, hold, decay time.Duration) Profile {
	return Profile{{0, base}, {t0, base}, {t0, peak}, {t0 + hold, peak}, {t0 + hold + decay, base}}
}

// RateAt is the profile's rate at offset t.
func (p Profile) RateAt(t time.Duration) float64 {
	if len(p) == 0 {
		return 0
	}
	if t <= p[0].At {
		return p[0].Rate
	}
	for i := 1; i < len(p); i++ {
		a, b := p[i-1], p[i]
		if t < b.At {
			if b.At == a.At {
				return b.Rate
			}
			f := float64(t-a.At) / float64(b.At-a.At)
			return a.Rate + f*(b.Rate-a.Rate)
		}
	}
	return p[len(p)-1].Rate
}

// Peak is the highest rate of the profile.
func (p Profile) Peak() float64 {
	m := 0.0
	for _, pt := range p {
		m = max(m, pt.Rate)
	}
	return m
}

// Expected is the number of requests the profile asks for over d.
func (p Profile) Expected(d time.Duration) float64 {
	const step = time.Millisecond
	n := 0.0
	for t := time.Duration(0); t < d; t += step {
		n += p.RateAt(t) * step.Seconds()
	}
	return n
}

// Validate checks offsets rise and rates are bounded.
func (p Profile) Validate() error {
	var errs []error
	if len(p) == 0 {
		errs = append(errs, errors.New("schedule: empty profile"))
	}
	for i, pt := range p {
		if pt.Rate < 0 || pt.Rate > 10_000_000 {
			errs = append(errs, fmt.Errorf("schedule: point %d rate %.0f outside 0..1e7", i, pt.Rate))
		}
		if i > 0 && pt.At < p[i-1].At {
			errs = append(errs, fmt.Errorf("schedule: point %d goes back in time", i))
		}
	}
	return errors.Join(errs...)
}
