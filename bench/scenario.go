package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Scenario is a drop rehearsal, read from a YAML file in loadtest/.
type Scenario struct {
	Name        string         `yaml:"name"`
	Seed        int64          `yaml:"seed"`
	Duration    time.Duration  `yaml:"duration"`
	Connections int            `yaml:"connections"`
	Timeout     time.Duration  `yaml:"timeout"`
	Schedule    ScheduleSpec   `yaml:"schedule"`
	Users       int            `yaml:"users"`
	Bots        BotSpec        `yaml:"bots"`
	Retry       RetrySpec      `yaml:"retry"`
	Campaigns   []CampaignSpec `yaml:"campaigns"`
	Thresholds  ThresholdSpec  `yaml:"thresholds"`
	// Secret is the HS256 secret tokens are minted with (flags override).
	Secret string `yaml:"secret"`
}

// ScheduleSpec names an arrival profile.
type ScheduleSpec struct {
	Kind  string        `yaml:"kind"` // constant | ramp | spike
	Rate  float64       `yaml:"rate"` // constant; spike: base rate
	From  float64       `yaml:"from"` // ramp
	To    float64       `yaml:"to"`   // ramp
	Peak  float64       `yaml:"peak"` // spike
	At    time.Duration `yaml:"at"`   // spike: T0, e.g. 2s into the run
	Hold  time.Duration `yaml:"hold"`
	Decay time.Duration `yaml:"decay"`
}

// BotSpec: bots share a few IPs and devices and tap much more than people.
type BotSpec struct {
	Count   int     `yaml:"count"`
	IPs     int     `yaml:"ips"`
	Devices int     `yaml:"devices"`
	Share   float64 `yaml:"share"` // fraction of taps that are bots'
}

// RetrySpec is the app's behaviour on a 503 or a timeout: retry the same tap
// (same Idempotency-Key) after a growing backoff.
type RetrySpec struct {
	Max     int           `yaml:"max"`
	Backoff time.Duration `yaml:"backoff"`
}

// CampaignSpec is one campaign of the drop; weight is its share of taps.
type CampaignSpec struct {
	ID           string         `yaml:"id"`
	Stock        int64          `yaml:"stock"`
	PerUserLimit int            `yaml:"per_user_limit"`
	Shards       int            `yaml:"shards"`
	Weight       float64        `yaml:"weight"`
	Coupon       map[string]any `yaml:"coupon"`
}

// ThresholdSpec sets the exit code (flags override).
type ThresholdSpec struct {
	MaxP99  time.Duration `yaml:"max_p99"`
	MinRate float64       `yaml:"min_rate"`
}

// LoadScenario reads and validates a scenario file; unknown keys are errors.
func LoadScenario(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	return ParseScenario(b)
}

// ParseScenario decodes and validates scenario YAML.
func ParseScenario(b []byte) (*Scenario, error) {
	var s Scenario
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	s.ensureDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

func (s *Scenario) ensureDefaults() {
	if s.Connections == 0 {
		s.Connections = 256
	}
	if s.Timeout == 0 {
		s.Timeout = 2 * time.Second
	}
	if s.Retry.Backoff == 0 {
		s.Retry.Backoff = 50 * time.Millisecond
	}
	for i := range s.Campaigns {
		c := &s.Campaigns[i]
		if c.PerUserLimit == 0 {
			c.PerUserLimit = 1
		}
		if c.Weight == 0 {
			c.Weight = 1
		}
		if c.Coupon == nil {
			c.Coupon = map[string]any{"type": "threshold", "tiers": []any{map[string]any{"min": 3000, "off": 500}}}
		}
	}
}

// Validate names every wrong field.
func (s *Scenario) Validate() error {
	var errs []error
	bad := func(f, format string, a ...any) {
		errs = append(errs, fmt.Errorf("scenario: %s: %s", f, fmt.Sprintf(format, a...)))
	}
	if s.Duration <= 0 || s.Duration > time.Hour {
		bad("duration", "must be in (0, 1h]")
	}
	if s.Connections < 1 || s.Connections > 65536 {
		bad("connections", "must be 1..65536")
	}
	if s.Users < 1 || s.Users > 10_000_000 {
		bad("users", "must be 1..10,000,000")
	}
	if s.Bots.Count < 0 || s.Bots.Share < 0 || s.Bots.Share >= 1 || (s.Bots.Count > 0 && (s.Bots.IPs < 1 || s.Bots.Devices < 1)) {
		bad("bots", "count ≥ 0, share in [0,1), and ips, devices ≥ 1 when there are bots")
	}
	if s.Retry.Max < 0 || s.Retry.Max > 20 || s.Retry.Backoff < 0 || s.Retry.Backoff > 10*time.Second {
		bad("retry", "max 0..20, backoff 0..10s")
	}
	if len(s.Campaigns) == 0 || len(s.Campaigns) > 100 {
		bad("campaigns", "need 1..100 campaigns")
	}
	for i, c := range s.Campaigns {
		if c.ID == "" || c.Stock < 1 || c.Weight < 0 || c.PerUserLimit < 1 {
			bad(fmt.Sprintf("campaigns[%d]", i), "needs an id, stock ≥ 1, per_user_limit ≥ 1, weight ≥ 0")
		}
	}
	if _, err := s.Profile(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Profile turns the schedule spec into an arrival profile.
func (s *Scenario) Profile() (Profile, error) {
	var p Profile
	switch s.Schedule.Kind {
	case "constant":
		p = Constant(s.Schedule.Rate)
	case "ramp":
		p = Ramp(s.Schedule.From, s.Schedule.To, s.Duration)
	case "spike":
		p = Spike(s.Schedule.Rate, s.Schedule.Peak, s.Schedule.At, s.Schedule.Hold, s.Schedule.Decay)
	default:
		return nil, fmt.Errorf("scenario: schedule.kind must be constant, ramp or spike, got %q", s.Schedule.Kind)
	}
	if p.Peak() <= 0 {
		return nil, errors.New("scenario: schedule has no positive rate")
	}
	return p, p.Validate()
}
