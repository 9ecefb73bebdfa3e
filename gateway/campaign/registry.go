package campaign

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the NATS KV bucket holding campaign definitions, one key per id.
const Bucket = "flashgate-campaigns"

// connectionCheckInterval is how often a live watch checks that the NATS
// connection is up: a lost connection is seen within this, and counts
// towards nats.control_plane_stale_max from then.
const connectionCheckInterval = 100 * time.Millisecond

// ErrExists is returned by Create for an id already taken.
var ErrExists = errors.New("campaign: id already exists")

// ErrNotFound is returned for an unknown id.
var ErrNotFound = errors.New("campaign: not found")

// Registry is a gateway's live view of the campaign bucket. One goroutine
// (Run) applies watch updates; readers load an immutable map snapshot.
type Registry struct {
	// OnChange, when set before Run, is called from the watch goroutine
	// after a campaign's definition changes.
	OnChange func(id string)
	// Connected, when set before Run, reports whether the NATS connection
	// is up. The KV watcher outlives a lost connection (nats.go reconnects
	// underneath it and its channel stays open), so without this check a
	// gateway cut off from NATS would count its snapshot as live for ever;
	// the watch ends when it reports false, and is set up again (a full
	// resync) once NATS answers.
	Connected func() bool
	// Clock, when set before Run, is the time the watch's loss is stamped
	// with: the gateway's clock, which StaleFor's callers read too.
	// Default time.Now.
	Clock func() time.Time

	kv     jetstream.KeyValue
	log    *slog.Logger
	snap   atomic.Pointer[map[string]*Campaign]
	synced atomic.Bool // initial values loaded and watcher alive
	// downSince is when the watch was last lost (Clock's unix nanos; 0 while live).
	downSince atomic.Int64
	once      sync.Once
	ready     chan struct{}
}

// OpenRegistry creates (or binds to) the bucket. history keeps a few
// revisions for operators; replicas is the JetStream replication factor.
func OpenRegistry(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (*Registry, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       Bucket,
		History:      8,
		MaxValueSize: DefinitionLenMax,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("campaign: kv bucket: %w", err)
	}
	r := &Registry{kv: kv, log: log, ready: make(chan struct{}), Clock: time.Now}
	empty := map[string]*Campaign{}
	r.snap.Store(&empty)
	return r, nil
}

// Run watches the bucket until ctx ends, re-establishing the watch after an
// error with a bounded backoff.
func (r *Registry) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.watch(ctx)
		r.markDown()
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("campaign watch ended; retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (r *Registry) watch(ctx context.Context) error {
	w, err := r.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	check := time.NewTicker(connectionCheckInterval)
	defer check.Stop()
	next := map[string]*Campaign{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			if r.Connected != nil && !r.Connected() {
				r.markDown() // now: stopping the watcher may wait for a dead server
				return errors.New("nats connection lost")
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			if e == nil { // end of initial values
				initial = false
				r.publish(next)
				r.synced.Store(true)
				r.downSince.Store(0)
				r.once.Do(func() { close(r.ready) })
				continue
			}
			if initial {
				r.apply(next, e)
				continue
			}
			cur := *r.snap.Load()
			cp := make(map[string]*Campaign, len(cur)+1)
			for k, v := range cur {
				cp[k] = v
			}
			r.apply(cp, e)
			r.publish(cp)
			if r.OnChange != nil {
				r.OnChange(e.Key())
			}
		}
	}
}

func (r *Registry) apply(m map[string]*Campaign, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(m, e.Key())
		return
	}
	var c Campaign
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		r.log.Error("campaign: undecodable definition in bucket; keeping previous", "key", e.Key(), "err", err)
		return
	}
	c.CouponJSON, _ = json.Marshal(&c.Coupon)
	c.Revision = e.Revision()
	m[c.ID] = &c
}

func (r *Registry) publish(m map[string]*Campaign) { r.snap.Store(&m) }

// markDown records that the watch is not live, from now (Clock) unless it
// already was not.
func (r *Registry) markDown() {
	r.synced.Store(false)
	r.downSince.CompareAndSwap(0, r.Clock().UnixNano())
}

// WaitReady blocks until the initial values are loaded or ctx ends.
func (r *Registry) WaitReady(ctx context.Context) error {
	select {
	case <-r.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("campaign: registry not synced: %w", ctx.Err())
	}
}

// Synced reports whether the watch is live.
func (r *Registry) Synced() bool { return r.synced.Load() }

// StaleFor is how long the snapshot has gone without a live watch (0 while
// live). Before the first sync it is reported as very stale.
func (r *Registry) StaleFor(now time.Time) time.Duration {
	if r.synced.Load() {
		return 0
	}
	since := r.downSince.Load()
	if since == 0 {
		return time.Duration(1 << 62)
	}
	return now.Sub(time.Unix(0, since))
}

// Get returns the campaign from the local snapshot (never blocks).
func (r *Registry) Get(id string) (*Campaign, bool) {
	c, ok := (*r.snap.Load())[id]
	return c, ok
}

// List returns the snapshot's campaigns.
func (r *Registry) List() []*Campaign {
	m := *r.snap.Load()
	out := make([]*Campaign, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	return out
}

// Create stores a new definition; ErrExists if the id is taken.
func (r *Registry) Create(ctx context.Context, c *Campaign) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if _, err := r.kv.Create(ctx, c.ID, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrExists
		}
		return fmt.Errorf("campaign: create: %w", err)
	}
	return nil
}

// Lookup reads a definition straight from the bucket (not the snapshot).
func (r *Registry) Lookup(ctx context.Context, id string) (*Campaign, error) {
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("campaign: get: %w", err)
	}
	var c Campaign
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, fmt.Errorf("campaign: decode %s: %w", id, err)
	}
	c.Revision = e.Revision()
	return &c, nil
}

// Revision returns a definition and its KV revision (for Update).
func (r *Registry) Revision(ctx context.Context, id string) (*Campaign, uint64, error) {
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("campaign: get: %w", err)
	}
	var c Campaign
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, 0, fmt.Errorf("campaign: decode %s: %w", id, err)
	}
	c.Revision = e.Revision()
	return &c, e.Revision(), nil
}

// ErrConflict is returned by Update when the definition changed meanwhile.
var ErrConflict = errors.New("campaign: changed concurrently; retry")

// Update writes c if the stored revision is still rev, and returns the
// revision it wrote.
func (r *Registry) Update(ctx context.Context, c *Campaign, rev uint64) (uint64, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	next, err := r.kv.Update(ctx, c.ID, b, rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("campaign: update: %w", err)
	}
	return next, nil
}
