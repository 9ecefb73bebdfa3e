package risk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flashgate/flashgate/antifraud"
	"github.com/flashgate/flashgate/internal/wait"
)

const (
	// AuditStream keeps who changed which rule or entry, when, before → after.
	AuditStream  = "RISK_AUDIT"
	auditSubject = "flashgate.risk.audit"
	// auditMaxAge and auditMsgsMax bound the audit stream.
	auditMaxAge  = 365 * 24 * time.Hour
	auditMsgsMax = 1_000_000
	// AuditListMax bounds one page of the audit log.
	AuditListMax = 500
)

// ErrNotFound is returned by DeleteBlacklist for an entry that is not there.
var ErrNotFound = errors.New("risk: no such entry")

// AuditEntry is one change of the rules or the blacklist.
type AuditEntry struct {
	At     time.Time       `json:"at"`
	Actor  string          `json:"actor"`
	Action string          `json:"action"`
	Target string          `json:"target"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
}

func openAuditStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: AuditStream, Subjects: []string{auditSubject}, Storage: jetstream.FileStorage, Replicas: replicas,
		MaxAge: auditMaxAge, MaxMsgs: auditMsgsMax,
	}); err != nil {
		return fmt.Errorf("risk: audit stream: %w", err)
	}
	return nil
}

// Rules returns the rule set in force on this gateway.
func (r *Risk) Rules() antifraud.Rules { return r.rules.Load().rules }

// PutRules stores a rule set for every gateway, records the change by actor
// in the audit log, and waits (at most applyWaitMax) until it is in force on
// this gateway. The set must be valid: callers answer Validate's fields.
func (r *Risk) PutRules(ctx context.Context, actor string, rs antifraud.Rules) error {
	if err := rs.Validate(); err != nil {
		return fmt.Errorf("risk: rules: %w", err)
	}
	before, _ := json.Marshal(r.Rules())
	after, _ := json.Marshal(rs)
	rev, err := r.kv.Put(ctx, rulesKey, after)
	if err != nil {
		return fmt.Errorf("risk: put rules: %w", err)
	}
	r.audit(ctx, AuditEntry{At: r.opts.Clock().UTC(), Actor: actor, Action: "rules.put", Target: rulesKey, Before: before, After: after})
	r.waitApplied(ctx, func() bool { return r.applied.Load() >= rev })
	return nil
}

// Blacklist returns up to limit entries live at now, sorted by kind and
// value, and how many entries there are.
func (r *Risk) Blacklist(now time.Time, limit int) ([]antifraud.Entry, int) {
	return r.blacklist.List(now, limit), r.blacklist.Len()
}

// PutBlacklist stores entry e (Kind and Value normalized by
// antifraud.NormalizeEntry, Reason set) for every gateway, authored by actor
// now and expiring after ttl (never if 0), records it in the audit log and
// waits (at most applyWaitMax) until it is in force on this gateway. It
// returns the entry as stored.
func (r *Risk) PutBlacklist(ctx context.Context, actor string, e antifraud.Entry, ttl time.Duration) (antifraud.Entry, error) {
	now := r.opts.Clock().UTC()
	e.Author, e.CreatedAt, e.ExpiresAt = actor, now, nil
	if ttl > 0 {
		exp := now.Add(ttl)
		e.ExpiresAt = &exp
	}
	key := blacklistKey(e.Kind, e.Value)
	before := r.stored(ctx, key)
	after, _ := json.Marshal(e)
	rev, err := r.kv.Put(ctx, key, after)
	if err != nil {
		return e, fmt.Errorf("risk: put blacklist entry: %w", err)
	}
	r.audit(ctx, AuditEntry{At: now, Actor: actor, Action: "blacklist.put", Target: e.Kind + ":" + e.Value, Before: before, After: after})
	r.waitApplied(ctx, func() bool { return r.applied.Load() >= rev })
	return e, nil
}

// DeleteBlacklist removes an entry for every gateway (ErrNotFound if there
// is none), records it in the audit log and waits (at most applyWaitMax)
// until it is gone from this gateway.
func (r *Risk) DeleteBlacklist(ctx context.Context, actor, kind, value string) error {
	key := blacklistKey(kind, value)
	before := r.stored(ctx, key)
	if before == nil {
		return ErrNotFound
	}
	if err := r.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("risk: delete blacklist entry: %w", err)
	}
	r.audit(ctx, AuditEntry{At: r.opts.Clock().UTC(), Actor: actor, Action: "blacklist.delete", Target: kind + ":" + value, Before: before})
	r.waitApplied(ctx, func() bool { return !r.blacklist.Has(kind, value) })
	return nil
}

// stored is the bucket's value of key, nil if it has none (or cannot be read).
func (r *Risk) stored(ctx context.Context, key string) []byte {
	if e, err := r.kv.Get(ctx, key); err == nil {
		return e.Value()
	}
	return nil
}

// waitApplied waits, at most applyWaitMax, until this gateway's watch has
// put a write in force (applied), so a write's "200" means "in force here";
// other gateways follow through the same watch within milliseconds. The
// answer goes out either way.
func (r *Risk) waitApplied(ctx context.Context, applied func() bool) {
	wait.Until(ctx, applyWaitMax, applied)
}

// audit appends a change to the audit log; a failure is logged (the change
// itself is made).
func (r *Risk) audit(ctx context.Context, e AuditEntry) {
	if e.Before == nil {
		e.Before = json.RawMessage("null")
	}
	if e.After == nil {
		e.After = json.RawMessage("null")
	}
	b, _ := json.Marshal(e)
	if _, err := r.js.Publish(ctx, auditSubject, b); err != nil {
		r.opts.Logger.Error("risk audit not recorded", "action", e.Action, "target", e.Target, "err", err)
	}
}

// AuditLog returns up to limit audit entries, newest first.
func (r *Risk) AuditLog(ctx context.Context, limit int) ([]AuditEntry, error) {
	s, err := r.js.Stream(ctx, AuditStream)
	if err != nil {
		return nil, fmt.Errorf("risk: audit log: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("risk: audit log: %w", err)
	}
	out := []AuditEntry{}
	for seq := info.State.LastSeq; seq >= info.State.FirstSeq && seq > 0 && len(out) < limit; seq-- {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var e AuditEntry
		if json.Unmarshal(m.Data, &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}
