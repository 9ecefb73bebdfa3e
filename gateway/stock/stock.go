// Package stock owns the Redis side of a drop: the key schema, the Lua
// scripts, shard routing and the movement of stock between shards.
//
// # Key schema
//
// A campaign's stock is split over S shards. Every key of shard s carries the
// hash tag {<campaign>.<s>}, so each script touches exactly one Redis Cluster
// slot:
//
//	fg:{c.s}:stock              remaining units on the shard (missing = not initialised)
//	fg:{c.s}:granted            grants made on the shard
//	fg:{c.s}:alloc              units allotted to the shard in total (Init, Allot); never decreases
//	fg:{c.s}:u:<user>           SET of the user's grant ids   (only on the user's home shard)
//	fg:{c.s}:a:<n>:<user>:<attempt>  the idempotency record of one claim attempt (TTL):
//	                            "<grant id>|<node>|<valid from>|<valid until>"; n = len(user),
//	                            so a user id containing ':' cannot name another user's attempt
//	fg:{c.s}:unsettled          HASH grant id -> "<node>|<encoded ledger record>": grants decided
//	                            here that their node has not yet marked as held by its synced ledger
//	fg:{c.s}:xfer               HASH transfer id -> "<recipient>:<units>:<unix ms>" (pending, on the donor)
//	fg:{c.s}:xin:<transfer id>  marker "credited" on the recipient (TTL 7 days)
//	fg:{c.s}:xdone:<transfer id> tombstone of a finished transfer on the donor (TTL 7 days)
//	fg:{c.s}:aud                SET of targeted users whose home shard is s
//	fg:{c.0}:codes              HASH code -> "" (unused) | grant id (code campaigns have one shard)
//
// # Units follow the definition (I1 in money)
//
// A campaign's unit total (stock, capped by budget / face value) is decided
// by its definition in the NATS KV bucket, changed only by compare-and-swap,
// and it only grows. Redis never receives a delta. Shard i is allotted
// Split(units)[i] — the count of j < units with j mod S = i, which never
// decreases as units grow — and alloc records what it has been given:
//
//	Allot(units): on each shard, if target > alloc { stock += target - alloc; alloc = target }
//
// Allot is idempotent, commutes with itself and never takes a unit back, so
// shards that have seen any set of totals hold exactly the largest; as every
// total passed to Allot is one a definition committed, and committed totals
// only grow, the shards converge on the definition's units whatever the
// interleaving of PATCHes, retries and crashes:
//
//	PATCH:   read definition (rev) → validate → Allot(old units) → CAS(rev) → Allot(new units) → 200
//	         (a lost CAS re-reads and re-validates; it has put nothing on the shards)
//	gateway: on every definition change it sees, and every tick for totals it
//	         has not seen on the shards: Allot(committed units)
//
// The first Allot, of the total already committed, makes sure Redis answers
// before anything is committed, and lets a shard created before allotments
// were recorded (stock but no alloc) adopt that total as its allotment
// without adding: every later, larger total is committed after it. Stealing
// moves stock between shards and into pending transfers but never touches
// alloc, so per campaign, between steals, Σ alloc = Σ stock + Σ granted +
// pending transfers.
//
// # Creating a campaign
//
// Init writes stock = alloc = Split(units)[i] and granted = 0 on each shard,
// after probing every shard index (0..ShardsMax-1) of the id. Any state there
// other than exactly what this Init writes — stock, grant counters (users'
// grant sets and attempt records exist only beside them), allotments,
// pending transfers, an audience or codes of an earlier campaign of the id — is
// refused with a LeftoverError and nothing is written: two campaigns never
// share keys. initScript re-checks each shard atomically, so of two
// concurrent creates of one id with different shards one wins. A create that
// failed after Init (nothing can have claimed from shards no definition
// names) is completed by its retry.
//
// # Claims and the per-user limit (I1, I2)
//
// A user's home shard is fnv32a(user) mod S. Every claim of that user runs
// claimScript on that shard, which in one atomic step checks the attempt
// record (idempotency), the user's grant count against per_user_limit, and the
// shard's stock, then decrements the stock and records the grant. Because all
// of a user's grants live in one slot, I2 holds across any number of gateways.
// Stock never goes below zero on any shard (I1).
//
// # Every grant settled: the unsettled hash (I3, I4, I6)
//
// A grant is decided here, in Redis, and made durable afterwards, in the
// ledger of the gateway ("node") that ran the script. A node can die, or its
// disk can fail, between the two. So the claim script records, in the same
// atomic step that grants, the grant's full ledger record in the shard's
// unsettled hash, tagged with the node. The node deletes the field (in
// batches, Settle) only after its ledger append has returned, i.e. after the
// record is synced. Whatever is still in the hash is therefore a grant that
// may not be in any ledger yet; its node, and only its node, settles it by
// appending the recorded facts (idempotent by grant id) and then deleting the
// field. A node id names a ledger (it is stored inside it), so a replacement
// gateway started on a dead gateway's data dir settles that gateway's grants,
// and a node that stays down leaves its grants held: never returned to stock
// (its disk may hold them) and never lost (their facts are here).
//
// A replay of an attempt answers the grant only once it is settled, or, on
// the node that decided it, after appending it; another node answers
// "unavailable" meanwhile and never writes a second record of the grant.
//
// # No false sold-out (I3): stealing one unit at a time
//
// When the home shard is empty, the gateway surveys every shard (stock and
// pending transfers). If all are zero, twice in a row, the campaign is sold
// out. Otherwise it picks the shard with the most stock as donor and:
//
//  1. takeScript on the donor: stock -1 and a pending transfer record, atomically;
//  2. claimScript on the home shard with amount=1: credit the unit once (marker
//     key set NX, so a re-run cannot credit twice) and claim it for this user;
//  3. finishScript on the donor: the pending record is deleted and a tombstone
//     set, so a late duplicate of step 1 (a re-sent take that arrives after
//     step 3) takes nothing. Step 3 runs only after step 2 credited the unit.
//
// A unit is always either on a shard or in exactly one pending record, so
// stock is conserved; the stealer claims the unit it moved in the same script
// that credits it, so moved stock does not rest where a survey might miss it.
// A shard the survey cannot read (its Redis Cluster master is down) is no
// donor, and the others still are, so the shards that answer sell all their
// stock; but while any shard is unread the campaign is never declared sold
// out — the claim answers ErrUnavailable (503) instead, because the unread
// shard's stock is unknown.
//
// A gateway that dies between 1 and 3 leaves a pending record; Sweep (run
// periodically by every gateway) credits records older than transferOrphanAge
// to their recipient (idempotent through the marker) and finishes them.
// Markers live 7 days and Sweep refuses records older than 6 days, so a marker
// always outlives the record it guards.
//
// # Outcome unknown
//
// A timeout or connection error means the script was probably sent and may
// have run. Every script here is idempotent by an id chosen before the first
// send (attempt key, transfer id, marker), so Store re-runs the same script
// with the same arguments, a bounded number of times within the caller's
// deadline, and otherwise reports ErrUnavailable. The client is created with
// retries disabled so nothing is re-sent behind our back.
package stock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/flashgate/flashgate/internal/wait"
)

const (
	// ShardsMax bounds shards per campaign: a survey costs 2 commands per shard.
	ShardsMax = 1024
	// scriptAttemptsMax bounds re-runs of one idempotent script after an
	// unknown outcome.
	scriptAttemptsMax = 3
	// stealRoundsMax bounds survey+take rounds of one claim whose home shard
	// is empty; each round loses only to another stealer taking the same unit.
	stealRoundsMax = 8
	// transferOrphanAge: a pending transfer older than this has lost its
	// gateway (claims have a deadline of a second or two).
	transferOrphanAge = 10 * time.Second
	// transferSweepAgeMax: older records are not auto-credited, because their
	// 7-day marker may have expired (see package comment).
	transferSweepAgeMax = 6 * 24 * time.Hour
	// tryAgainWaitMax: how long at most a script refused with TRYAGAIN (its
	// slot half moved by a resharding) is sent again before the claim
	// answers unavailable.
	tryAgainWaitMax = 500 * time.Millisecond
)

// ErrUnavailable means Redis could not be reached, or did not answer, within
// the deadline. Nothing is known to have been granted.
var ErrUnavailable = errors.New("stock: redis unavailable")

// ErrNotInitialized means a shard's stock key is missing: the campaign was
// never initialised, or Redis lost its data (I8). Grant nothing.
var ErrNotInitialized = errors.New("stock: shard not initialised")

// Outcome of a claim at the stock layer.
type Outcome uint8

const (
	Granted Outcome = iota + 1
	AlreadyClaimed
	SoldOut
	NotEligible
)

// Audience modes of a claim.
const (
	AudiencePublic   = ""
	AudienceTargeted = "t"
	AudienceCode     = "c"
)

// Claim describes one claim attempt.
type Claim struct {
	Campaign     string
	Shards       int
	PerUserLimit int
	User         string
	// AttemptKey identifies this tap across retries: the client's
	// Idempotency-Key, or a fresh random id per request.
	AttemptKey string
	AttemptTTL time.Duration
	// GrantID is used if this attempt grants; minted by the caller.
	GrantID string
	// Audience is AudiencePublic, AudienceTargeted or AudienceCode; Code is
	// the redemption code for AudienceCode.
	Audience string
	Code     string
	// Node names the ledger that will hold the grant; Facts is the grant's
	// encoded ledger record, kept unsettled until Node's ledger holds it.
	Node  string
	Facts string
	// ValidFrom and ValidUntil (unix seconds, 0 = unbounded) are kept in the
	// attempt record so that a replay answers the original window.
	ValidFrom, ValidUntil int64
}

// Attempt is what an attempt record says about a grant made by that attempt.
type Attempt struct {
	GrantID               string
	Node                  string // the node that decided the grant
	ValidFrom, ValidUntil int64
	// Unsettled: the grant is still in the unsettled hash; Facts is its
	// encoded ledger record. Settled grants are in Node's synced ledger.
	Unsettled bool
	Facts     string
}

// attemptFieldLenMax bounds the id fields of an attempt record value.
const attemptFieldLenMax = 256

// EncodeAttempt is the attempt record's value.
func EncodeAttempt(grantID, node string, from, until int64) string {
	return grantID + "|" + node + "|" + strconv.FormatInt(from, 10) + "|" + strconv.FormatInt(until, 10)
}

// ParseAttempt decodes an attempt record's value; it never panics.
func ParseAttempt(v string) (Attempt, error) {
	parts := strings.Split(v, "|")
	if len(parts) != 4 {
		return Attempt{}, fmt.Errorf("stock: attempt record has %d fields, want 4", len(parts))
	}
	from, err1 := strconv.ParseInt(parts[2], 10, 64)
	until, err2 := strconv.ParseInt(parts[3], 10, 64)
	if err1 != nil || err2 != nil || parts[0] == "" || parts[1] == "" || len(parts[0]) > attemptFieldLenMax || len(parts[1]) > attemptFieldLenMax {
		return Attempt{}, fmt.Errorf("stock: malformed attempt record %q", v)
	}
	return Attempt{GrantID: parts[0], Node: parts[1], ValidFrom: from, ValidUntil: until}, nil
}

// EncodeUnsettled is an unsettled-hash value.
func EncodeUnsettled(node, facts string) string { return node + "|" + facts }

// ParseUnsettled splits an unsettled-hash value; it never panics.
func ParseUnsettled(v string) (node, facts string, err error) {
	i := strings.IndexByte(v, '|')
	if i <= 0 || i > attemptFieldLenMax {
		return "", "", fmt.Errorf("stock: malformed unsettled grant (%d bytes)", len(v))
	}
	return v[:i], v[i+1:], nil
}

// Result of a claim.
type Result struct {
	Outcome  Outcome
	GrantID  string   // Granted
	Replay   bool     // Granted: the attempt had granted before; GrantID is that grant
	Prior    Attempt  // Replay: what the attempt record says
	Shard    int      // shard the grant was recorded on (the user's home)
	GrantIDs []string // AlreadyClaimed: the user's grants
	Reason   string   // NotEligible: why
}

// Store runs the scripts against one Redis deployment (single node or cluster).
type Store struct {
	c rueidis.Client
	// tryAgains counts scripts refused with TRYAGAIN (a slot in migration).
	tryAgains atomic.Uint64
}

// TryAgains is how many times a script was refused with TRYAGAIN because
// its shard's slot was being moved, and sent again (or given up, past
// tryAgainWaitMax).
func (s *Store) TryAgains() uint64 { return s.tryAgains.Load() }

// New wraps a rueidis client. The client should have DisableRetry set.
func New(c rueidis.Client) *Store { return &Store{c: c} }

// HomeShard returns the user's home shard.
func HomeShard(user string, shards int) int {
	h := fnv.New32a()
	h.Write([]byte(user))
	return int(h.Sum32() % uint32(shards))
}

func tag(campaign string, shard int) string {
	return "fg:{" + campaign + "." + strconv.Itoa(shard) + "}:"
}

// StockKey, GrantedKey, UserKey name keys of the schema (also used by audit and tests).
func StockKey(campaign string, shard int) string   { return tag(campaign, shard) + "stock" }
func GrantedKey(campaign string, shard int) string { return tag(campaign, shard) + "granted" }
func UserKey(campaign string, shard int, user string) string {
	return tag(campaign, shard) + "u:" + user
}
func xferKey(campaign string, shard int) string { return tag(campaign, shard) + "xfer" }
func xinKey(campaign string, shard int, id string) string {
	return tag(campaign, shard) + "xin:" + id
}
func xdoneKey(campaign string, shard int, id string) string {
	return tag(campaign, shard) + "xdone:" + id
}

// UnsettledKey is a shard's hash of grants not yet settled by their node.
func UnsettledKey(campaign string, shard int) string { return tag(campaign, shard) + "unsettled" }

// attemptKey is an attempt's idempotency record. The user id is length
// prefixed: user "shop" with key "42:k" and user "shop:42" with key "k" are
// different records.
func attemptKey(campaign string, shard int, user, attempt string) string {
	return tag(campaign, shard) + "a:" + strconv.Itoa(len(user)) + ":" + user + ":" + attempt
}

// Split returns each shard's share of stock units, divided as evenly as
// possible: shard i gets the count of j < stock with j mod shards = i, so a
// shard's share never decreases as stock grows (Allot relies on it).
func Split(stock int64, shards int) []int64 {
	out := make([]int64, shards)
	for i := range out {
		out[i] = stock / int64(shards)
		if int64(i) < stock%int64(shards) {
			out[i]++
		}
	}
	return out
}

// Init creates a campaign's shards: shard i gets Split(units)[i] units and
// the same figure as its allotment. Redis must hold nothing under the
// campaign id except, on some shards, exactly what this Init writes (a
// create that initialised them and then failed before its definition was
// stored: nothing can have claimed from them); anything else is another
// campaign's state, and Init returns a *LeftoverError (errors.Is ErrLeftover)
// without writing. See "Creating a campaign" in the package comment.
func (s *Store) Init(ctx context.Context, campaign string, stock int64, shards int) error {
	if shards < 1 || shards > ShardsMax {
		return fmt.Errorf("stock: shards %d outside 1..%d", shards, ShardsMax)
	}
	want := Split(stock, shards)
	found, err := s.probe(ctx, campaign)
	if err != nil {
		return err
	}
	if lo := found.leftover(campaign, want); lo != nil {
		return lo
	}
	for i, units := range want {
		r, err := s.run(ctx, initScript, stateKeys(campaign, i), []string{strconv.FormatInt(units, 10)})
		if err != nil {
			return err
		}
		if r.status != replyInitialized {
			return fmt.Errorf("stock: init script status %d", r.status)
		}
		if r.n == initOther { // written between the probe and here: a concurrent create
			return &LeftoverError{Campaign: campaign, Shards: []int{i}, Concurrent: true}
		}
	}
	return nil
}

// Allot raises each shard's allotment to Split(units)[i], adding the
// difference to its stock; a shard already allotted as much or more is left
// as it is. units is the unit total of a committed definition (package
// comment, "Units follow the definition"): Allot is idempotent, commutes
// with any other Allot and never takes a unit back, so shards that have seen
// any set of committed totals hold exactly the largest of them.
func (s *Store) Allot(ctx context.Context, campaign string, shards int, units int64) error {
	if shards < 1 || shards > ShardsMax {
		return fmt.Errorf("stock: shards %d outside 1..%d", shards, ShardsMax)
	}
	for i, target := range Split(units, shards) {
		keys := []string{StockKey(campaign, i), AllotKey(campaign, i)}
		r, err := s.run(ctx, allotScript, keys, []string{strconv.FormatInt(target, 10)})
		if err != nil {
			return err
		}
		if r.status == replyNotInit {
			return ErrNotInitialized
		}
	}
	return nil
}

// Claim runs one claim: on the user's home shard, and when that is empty, by
// stealing a unit from another shard (see package comment).
func (s *Store) Claim(ctx context.Context, c *Claim) (Result, error) {
	home := HomeShard(c.User, c.Shards)
	keys := claimKeys(c, home, "")
	r, err := s.run(ctx, claimScript, keys, claimArgs(c, 0))
	if err != nil {
		return Result{}, err
	}
	if r.status != replyEmpty || c.Shards == 1 {
		return r.result(home)
	}
	return s.steal(ctx, c, home)
}

func claimKeys(c *Claim, home int, xferID string) []string {
	t := tag(c.Campaign, home)
	elig := t + "aud"
	if c.Audience == AudienceCode {
		elig = t + "codes"
	}
	return []string{t + "stock", t + "granted", t + "u:" + c.User, attemptKey(c.Campaign, home, c.User, c.AttemptKey), t + "xin:" + xferID, elig, t + "unsettled"}
}

func claimArgs(c *Claim, amount int64) []string {
	subject := c.User
	if c.Audience == AudienceCode {
		subject = c.Code
	}
	return []string{c.GrantID, strconv.Itoa(c.PerUserLimit), ttlArg(c.AttemptTTL), strconv.FormatInt(amount, 10), c.Audience, subject,
		EncodeAttempt(c.GrantID, c.Node, c.ValidFrom, c.ValidUntil), EncodeUnsettled(c.Node, c.Facts)}
}

// AudienceKey is the targeted-audience set of a shard.
func AudienceKey(campaign string, shard int) string { return tag(campaign, shard) + "aud" }

// CodesKey is the redemption-code hash of a code campaign.
func CodesKey(campaign string) string { return tag(campaign, 0) + "codes" }

func ttlArg(d time.Duration) string {
	sec := int64(d / time.Second)
	if sec < 1 {
		sec = 1
	}
	return strconv.FormatInt(sec, 10)
}

func (s *Store) steal(ctx context.Context, c *Claim, home int) (Result, error) {
	zeroSurveys := 0
	for round := 0; round < stealRoundsMax; round++ {
		// A shard that does not answer (its Redis Cluster master is down)
		// is no donor, but the others are: the drop goes on with the stock
		// of the shards that answer. Sold out is never concluded while a
		// shard is unread (I3): its stock is unknown.
		sv, err := s.surveyReachable(ctx, c.Campaign, c.Shards)
		if err != nil {
			return Result{}, err
		}
		donor, best := -1, int64(0)
		for i, u := range sv.stock {
			if i != home && u > best {
				donor, best = i, u
			}
		}
		if donor < 0 {
			if sv.stock[home] > 0 {
				// Stock arrived home (a PATCH, or a swept transfer): claim it directly.
				keys := claimKeys(c, home, "")
				r, err := s.run(ctx, claimScript, keys, claimArgs(c, 0))
				if err != nil {
					return Result{}, err
				}
				if r.status != replyEmpty {
					return r.result(home)
				}
				continue
			}
			if sv.unread > 0 {
				return Result{}, fmt.Errorf("%w: no stock on the shards that answer; %d shard(s) unreachable: %v", ErrUnavailable, sv.unread, sv.unreadErr)
			}
			if sv.pending == 0 {
				zeroSurveys++
				if zeroSurveys == 2 {
					return Result{Outcome: SoldOut}, nil
				}
			}
			continue // units in flight, or one zero survey: look again
		}
		zeroSurveys = 0
		xferID := newID()
		took, err := s.run(ctx, takeScript, []string{StockKey(c.Campaign, donor), xferKey(c.Campaign, donor), xdoneKey(c.Campaign, donor, xferID)},
			[]string{xferID, "1", strconv.Itoa(home), strconv.FormatInt(time.Now().UnixMilli(), 10)})
		if err != nil {
			return Result{}, err
		}
		if took.status != replyTaken || took.n == 0 {
			continue // someone else emptied the donor first
		}
		r, err := s.land(ctx, c, home, donor, xferID, took.n)
		if err != nil {
			return Result{}, err
		}
		if r.status == replyEmpty {
			continue
		}
		return r.result(home)
	}
	// Every round lost a race for the last units; let the app retry.
	return Result{}, fmt.Errorf("%w: lost %d steal rounds", ErrUnavailable, stealRoundsMax)
}

// land credits a taken transfer to the home shard and claims in the same
// script, then finishes the transfer on the donor — only once the credit is
// certain. An error leaves the transfer pending (Sweep lands it).
func (s *Store) land(ctx context.Context, c *Claim, home, donor int, xferID string, units int64) (reply, error) {
	r, err := s.run(ctx, claimScript, claimKeys(c, home, xferID), claimArgs(c, units))
	if err != nil {
		return r, err
	}
	if r.status == replyNotInit {
		// Not credited (the home shard lost its key): the transfer stays
		// pending, its unit accounted for, never dropped.
		return r, ErrNotInitialized
	}
	// Credited: the pending record can go. If this fails the sweeper
	// finishes it (idempotent through the credit marker).
	_, _ = s.run(ctx, finishScript, []string{xferKey(c.Campaign, donor), xdoneKey(c.Campaign, donor, xferID)}, []string{xferID})
	return r, nil
}

type surveyResult struct {
	stock   []int64
	granted int64
	pending int64 // units in pending transfers, all shards read
	// unsettled grants (counted in granted) not yet marked as in a ledger
	unsettled int64
	// unread shards (surveyReachable only) count as 0 above; unreadErr is
	// the first one's error.
	unread    int
	unreadErr error
}

// survey reads every shard, each one atomically (shardScript); the shards
// are read concurrently (auto-pipelined), not as one snapshot. A shard that
// cannot be read fails the survey.
func (s *Store) survey(ctx context.Context, campaign string, shards int) (surveyResult, error) {
	sv, err := s.surveyReachable(ctx, campaign, shards)
	if err == nil && sv.unread > 0 {
		err = sv.unreadErr
	}
	return sv, err
}

// surveyReachable is survey that counts the shards it cannot read (a Redis
// Cluster master down) instead of failing; it fails when no shard answers,
// or when one that answers is not initialised.
func (s *Store) surveyReachable(ctx context.Context, campaign string, shards int) (surveyResult, error) {
	sv := surveyResult{stock: make([]int64, shards)}
	res := make([]rueidis.RedisResult, shards)
	var wg sync.WaitGroup
	for i := 0; i < shards; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = s.exec(ctx, shardScript, []string{StockKey(campaign, i), GrantedKey(campaign, i), xferKey(campaign, i), UnsettledKey(campaign, i)}, nil)
		}()
	}
	wg.Wait()
	for i, r := range res {
		v, err := r.AsIntSlice()
		if err != nil || len(v) != 4 {
			sv.unread++
			if sv.unreadErr == nil {
				sv.unreadErr = fmt.Errorf("%w: shard %d: %v", ErrUnavailable, i, err)
			}
			continue
		}
		if v[0] < 0 {
			return sv, ErrNotInitialized
		}
		sv.stock[i] = v[0]
		sv.granted += v[1]
		sv.pending += v[2]
		sv.unsettled += v[3]
	}
	if sv.unread == shards {
		return sv, sv.unreadErr
	}
	return sv, nil
}

func parseTransfer(rec string) (recipient int, units int64, atMillis int64, ok bool) {
	parts := strings.Split(rec, ":")
	if len(parts) != 3 {
		return 0, 0, 0, false
	}
	r, err1 := strconv.Atoi(parts[0])
	u, err2 := strconv.ParseInt(parts[1], 10, 64)
	at, err3 := strconv.ParseInt(parts[2], 10, 64)
	return r, u, at, err1 == nil && err2 == nil && err3 == nil
}

// Sweep lands pending transfers older than transferOrphanAge (left by a
// gateway that died mid-steal, or by a steal whose Redis call failed). It
// returns how many it completed; a donor or transfer it cannot handle (its
// master down) is skipped, the others are swept, and the first such error
// is returned.
func (s *Store) Sweep(ctx context.Context, campaign string, shards int, now time.Time) (int, error) {
	// Every donor's pending transfers in one round trip: read one by one,
	// a loaded Redis (or a dead master on the way) left the donors after it
	// unswept, and a unit orphaned there held up the end of the drop.
	reads := make(rueidis.Commands, shards)
	for donor := range reads {
		reads[donor] = s.c.B().Hgetall().Key(xferKey(campaign, donor)).Build()
	}
	done := 0
	var firstErr error
	keep := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	for donor, res := range s.c.DoMulti(ctx, reads...) {
		m, err := res.AsStrMap()
		if err != nil { // this donor's master is down: sweep the others
			keep(fmt.Errorf("%w: shard %d: %v", ErrUnavailable, donor, err))
			continue
		}
		for id, rec := range m {
			recipient, units, at, ok := parseTransfer(rec)
			age := now.Sub(time.UnixMilli(at))
			if !ok || recipient < 0 || recipient >= shards || age < transferOrphanAge || age > transferSweepAgeMax {
				continue
			}
			r, err := s.run(ctx, creditScript, []string{StockKey(campaign, recipient), xinKey(campaign, recipient, id)}, []string{strconv.FormatInt(units, 10)})
			if err != nil {
				keep(err)
				continue
			}
			if r.status != replyCredited {
				continue
			}
			if _, err := s.run(ctx, finishScript, []string{xferKey(campaign, donor), xdoneKey(campaign, donor, id)}, []string{id}); err != nil {
				keep(err)
				continue
			}
			done++
		}
	}
	return done, firstErr
}

// Counts are a campaign's live figures in Redis.
type Counts struct {
	Remaining int64   // on shards plus pending transfers
	Granted   int64   // sum of per-shard grant counters
	Shards    []int64 // remaining per shard
	Pending   int64
	// Unsettled grants are counted in Granted; their node has not yet
	// marked them as held by its synced ledger (in flight, or held by a
	// node that is down: see package comment).
	Unsettled int64
}

// Count reads the campaign's counters, each shard atomically.
func (s *Store) Count(ctx context.Context, campaign string, shards int) (Counts, error) {
	sv, err := s.survey(ctx, campaign, shards)
	if err != nil {
		return Counts{}, err
	}
	c := Counts{Shards: sv.stock, Pending: sv.pending, Remaining: sv.pending, Granted: sv.granted, Unsettled: sv.unsettled}
	for _, u := range sv.stock {
		c.Remaining += u
	}
	return c, nil
}

// UserGrants returns the grant ids Redis holds for a user in a campaign.
func (s *Store) UserGrants(ctx context.Context, campaign string, shards int, user string) ([]string, error) {
	v, err := s.c.Do(ctx, s.c.B().Smembers().Key(UserKey(campaign, HomeShard(user, shards), user)).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return v, nil
}

type reply struct {
	status int64
	n      int64
	id     string
	ids    []string
	prior  Attempt // replyReplay
}

func (r reply) result(shard int) (Result, error) {
	switch r.status {
	case replyGranted:
		if r.n < 0 { // the script decrements only positive stock: a negative shard is a bug (I1)
			panic(fmt.Sprintf("stock: shard %d went negative (%d) — oversell", shard, r.n))
		}
		return Result{Outcome: Granted, GrantID: r.id, Shard: shard}, nil
	case replyReplay:
		return Result{Outcome: Granted, GrantID: r.prior.GrantID, Replay: true, Prior: r.prior, Shard: shard}, nil
	case replyAlready:
		return Result{Outcome: AlreadyClaimed, GrantIDs: r.ids, Shard: shard}, nil
	case replyEmpty:
		return Result{Outcome: SoldOut, Shard: shard}, nil
	case replyNotEligible:
		return Result{Outcome: NotEligible, Reason: r.id, Shard: shard}, nil
	case replyNotInit:
		return Result{}, ErrNotInitialized
	}
	return Result{}, fmt.Errorf("stock: unexpected script status %d", r.status)
}

// exec runs a script, waiting out a hash slot in migration: while a Redis
// Cluster moves a shard's slot, a script whose keys are partly moved is
// refused with TRYAGAIN before it runs (every key of a shard shares one hash
// tag, so a script never runs on half a shard), and is sent again (the
// bounded backoff of package wait) for at most tryAgainWaitMax and never
// past ctx. MOVED and ASK are followed by the client.
func (s *Store) exec(ctx context.Context, script *rueidis.Lua, keys, args []string) rueidis.RedisResult {
	var res rueidis.RedisResult
	wait.Until(ctx, tryAgainWaitMax, func() bool {
		res = script.Exec(ctx, s.c, keys, args)
		if rerr, ok := rueidis.IsRedisErr(res.Error()); ok && rerr.IsTryAgain() {
			s.tryAgains.Add(1)
			return false
		}
		return true
	})
	return res
}

// run executes an idempotent script, re-running it with the same arguments
// after an unknown outcome (timeout, broken connection), at most
// scriptAttemptsMax times and never past ctx's deadline.
func (s *Store) run(ctx context.Context, script *rueidis.Lua, keys, args []string) (reply, error) {
	var last error
	for attempt := 0; attempt < scriptAttemptsMax; attempt++ {
		if ctx.Err() != nil {
			break
		}
		res := s.exec(ctx, script, keys, args)
		if err := res.Error(); err != nil {
			if _, isRedisErr := rueidis.IsRedisErr(err); isRedisErr {
				return reply{}, fmt.Errorf("%w: script error: %v", ErrUnavailable, err)
			}
			last = err
			continue
		}
		return parseReply(res)
	}
	if last == nil {
		last = ctx.Err()
	}
	return reply{}, fmt.Errorf("%w: %v", ErrUnavailable, last)
}

func parseReply(res rueidis.RedisResult) (reply, error) {
	arr, err := res.ToArray()
	if err != nil || len(arr) == 0 {
		return reply{}, fmt.Errorf("stock: malformed script reply: %v", err)
	}
	var r reply
	if r.status, err = arr[0].AsInt64(); err != nil {
		return r, fmt.Errorf("stock: malformed script status: %w", err)
	}
	need := map[int64]int{replyGranted: 3, replyReplay: 3, replyAlready: 2, replyEmpty: 2, replyTaken: 2, replyInitialized: 2, replyNotInit: 1, replyCredited: 1, replyNotEligible: 2}[r.status]
	if need == 0 || len(arr) < need {
		return r, fmt.Errorf("stock: script reply status %d with %d elements", r.status, len(arr))
	}
	switch r.status {
	case replyGranted:
		r.id, err = arr[1].ToString()
		if err == nil {
			r.n, err = arr[2].AsInt64()
		}
	case replyReplay:
		r.prior, err = parseReplay(arr[1], arr[2])
	case replyNotEligible:
		r.id, err = arr[1].ToString()
	case replyAlready:
		r.ids, err = arr[1].AsStrSlice()
	case replyEmpty, replyTaken, replyInitialized:
		r.n, err = arr[1].AsInt64()
	}
	if err != nil {
		return r, fmt.Errorf("stock: malformed script reply (status %d): %w", r.status, err)
	}
	return r, nil
}

// newID returns 16 random bytes in hex: unguessable, collision-free in practice.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewGrantID mints a grant id: 6 bytes of unix milliseconds then 10 random
// bytes, hex; ids sort by minting time.
func NewGrantID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:])
	return hex.EncodeToString(b[:])
}

// parseReplay decodes {attempt value, unsettled value or nil}.
func parseReplay(attempt, unsettled rueidis.RedisMessage) (Attempt, error) {
	v, err := attempt.ToString()
	if err != nil {
		return Attempt{}, err
	}
	a, err := ParseAttempt(v)
	if err != nil {
		return a, err
	}
	if u, err := unsettled.ToString(); err == nil {
		node, facts, err := ParseUnsettled(u)
		if err != nil {
			return a, err
		}
		if node != a.Node {
			return a, fmt.Errorf("stock: grant %s decided by %s is unsettled for %s", a.GrantID, a.Node, node)
		}
		a.Unsettled, a.Facts = true, facts
	}
	return a, nil
}

// LookupAttempt reads an attempt's idempotency record: found=false if that
// attempt never granted (or its record expired).
func (s *Store) LookupAttempt(ctx context.Context, campaign string, shards int, user, attempt string) (Attempt, bool, error) {
	home := HomeShard(user, shards)
	res := s.exec(ctx, attemptScript, []string{attemptKey(campaign, home, user, attempt), UnsettledKey(campaign, home)}, nil)
	arr, err := res.ToArray()
	if err != nil {
		if _, isRedisErr := rueidis.IsRedisErr(err); isRedisErr {
			return Attempt{}, false, fmt.Errorf("%w: script error: %v", ErrUnavailable, err)
		}
		return Attempt{}, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(arr) == 1 {
		return Attempt{}, false, nil
	}
	if len(arr) != 3 {
		return Attempt{}, false, fmt.Errorf("stock: attempt reply with %d elements", len(arr))
	}
	a, err := parseReplay(arr[1], arr[2])
	return a, err == nil, err
}

// Unsettled is a grant decided in Redis that its node has not yet marked as
// held by its synced ledger.
type Unsettled struct {
	Shard   int
	GrantID string
	Node    string
	Facts   string // the encoded ledger record
}

// unsettledScanCount is the HSCAN page size of ScanUnsettled.
const unsettledScanCount = 512

// ScanUnsettled calls fn for every unsettled grant of a campaign, shard by
// shard. A malformed value is reported to fn with Node "" (never skipped).
func (s *Store) ScanUnsettled(ctx context.Context, campaign string, shards int, fn func(Unsettled) error) error {
	for sh := 0; sh < shards; sh++ {
		var cursor uint64
		for {
			e, err := s.c.Do(ctx, s.c.B().Hscan().Key(UnsettledKey(campaign, sh)).Cursor(cursor).Count(unsettledScanCount).Build()).AsScanEntry()
			if err != nil {
				return fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			for i := 0; i+1 < len(e.Elements); i += 2 {
				u := Unsettled{Shard: sh, GrantID: e.Elements[i]}
				u.Node, u.Facts, _ = ParseUnsettled(e.Elements[i+1])
				if err := fn(u); err != nil {
					return err
				}
			}
			if e.Cursor == 0 {
				break
			}
			cursor = e.Cursor
		}
	}
	return nil
}

// Settled is one grant that its node's synced ledger now holds.
type Settled struct {
	Campaign string
	Shard    int
	GrantID  string
}

// Settle removes grants from the unsettled hashes: one HDEL per shard,
// pipelined. Call it only after the ledger append of every grant returned.
func (s *Store) Settle(ctx context.Context, grants []Settled) error {
	type key struct {
		c  string
		sh int
	}
	by := map[key][]string{}
	for _, g := range grants {
		k := key{g.Campaign, g.Shard}
		by[k] = append(by[k], g.GrantID)
	}
	cmds := make(rueidis.Commands, 0, len(by))
	for k, ids := range by {
		cmds = append(cmds, s.c.B().Hdel().Key(UnsettledKey(k.c, k.sh)).Field(ids...).Build())
	}
	for _, r := range s.c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// AddAudience adds users to a targeted campaign, each to its home shard's set
// (pipelined). It returns how many were new.
func (s *Store) AddAudience(ctx context.Context, campaign string, shards int, users []string) (int64, error) {
	byShard := map[int][]string{}
	for _, u := range users {
		h := HomeShard(u, shards)
		byShard[h] = append(byShard[h], u)
	}
	cmds := make(rueidis.Commands, 0, len(byShard))
	for sh, us := range byShard {
		cmds = append(cmds, s.c.B().Sadd().Key(AudienceKey(campaign, sh)).Member(us...).Build())
	}
	var added int64
	for _, r := range s.c.DoMulti(ctx, cmds...) {
		n, err := r.AsInt64()
		if err != nil {
			return added, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		added += n
	}
	return added, nil
}

// AudienceSize counts a targeted campaign's users.
func (s *Store) AudienceSize(ctx context.Context, campaign string, shards int) (int64, error) {
	cmds := make(rueidis.Commands, 0, shards)
	for i := 0; i < shards; i++ {
		cmds = append(cmds, s.c.B().Scard().Key(AudienceKey(campaign, i)).Build())
	}
	var n int64
	for _, r := range s.c.DoMulti(ctx, cmds...) {
		v, err := r.AsInt64()
		if err != nil {
			return n, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		n += v
	}
	return n, nil
}

// AddCodes stores new unused redemption codes (HSETNX, pipelined in chunks);
// it returns how many were new (a collision, vanishingly rare at 80 bits, is skipped).
func (s *Store) AddCodes(ctx context.Context, campaign string, codes []string) (int64, error) {
	const chunk = 1000
	var added int64
	for lo := 0; lo < len(codes); lo += chunk * 16 {
		var cmds rueidis.Commands
		for i := lo; i < min(lo+chunk*16, len(codes)); i++ {
			cmds = append(cmds, s.c.B().Hsetnx().Key(CodesKey(campaign)).Field(codes[i]).Value("").Build())
		}
		for _, r := range s.c.DoMulti(ctx, cmds...) {
			ok, err := r.AsBool()
			if err != nil {
				return added, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			if ok {
				added++
			}
		}
	}
	return added, nil
}

// ScanCodes calls fn for every code of a campaign with its grant id ("" = unused).
func (s *Store) ScanCodes(ctx context.Context, campaign string, fn func(code, grantID string) error) error {
	var cursor uint64
	for {
		e, err := s.c.Do(ctx, s.c.B().Hscan().Key(CodesKey(campaign)).Cursor(cursor).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i := 0; i+1 < len(e.Elements); i += 2 {
			if err := fn(e.Elements[i], e.Elements[i+1]); err != nil {
				return err
			}
		}
		if e.Cursor == 0 {
			return nil
		}
		cursor = e.Cursor
	}
}

// AllotKey is a shard's allotment: the units it has been given in total, by
// Init and Allot (see "Units follow the definition").
func AllotKey(campaign string, shard int) string { return tag(campaign, shard) + "alloc" }

// stateKeys are the keys initScript and probeScript read on one shard:
// every key that exists once a campaign's shard has been created or used,
// except the per-user ones (which exist only next to a granted counter > 0).
func stateKeys(campaign string, shard int) []string {
	t := tag(campaign, shard)
	return []string{t + "stock", t + "granted", t + "alloc", t + "xfer", t + "aud", t + "codes"}
}

// initScript's second reply element.
const (
	initSame    = 0  // the shard already held exactly what Init writes
	initCreated = 1  // the shard was created
	initOther   = -1 // the shard holds other state: nothing written
)

// ErrLeftover means Redis holds state under a campaign id that is not the
// campaign being created (see LeftoverError).
var ErrLeftover = errors.New("stock: leftover state under this campaign id")

// LeftoverError describes the state Init found under a campaign id: the
// shards and what they hold. errors.Is(err, ErrLeftover) is true.
type LeftoverError struct {
	Campaign   string
	Shards     []int // shard indexes holding state
	Granted    int64 // grants counted on them
	Remaining  int64 // units on them
	Transfers  int64 // pending stock transfers
	Audience   int64 // targeted users listed
	Codes      int64 // redemption codes
	Concurrent bool  // written while Init ran: another create of the same id
}

func (e *LeftoverError) Is(target error) bool { return target == ErrLeftover }

func (e *LeftoverError) Error() string {
	if e.Concurrent {
		return fmt.Sprintf("stock: campaign %q: shard %v was written by another create of the same id while this one ran", e.Campaign, e.Shards)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stock: redis already holds state of an earlier campaign %q (its definition is gone): %s on %s",
		e.Campaign, plural(e.Granted, "grant"), plural(int64(len(e.Shards)), "shard"))
	fmt.Fprintf(&b, " (%s), %s remaining", shardList(e.Shards), plural(e.Remaining, "unit"))
	if e.Transfers > 0 {
		fmt.Fprintf(&b, ", %s pending", plural(e.Transfers, "stock transfer"))
	}
	if e.Audience > 0 {
		fmt.Fprintf(&b, ", an audience of %s", plural(e.Audience, "user"))
	}
	if e.Codes > 0 {
		fmt.Fprintf(&b, ", %s", plural(e.Codes, "redemption code"))
	}
	return b.String()
}

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.FormatInt(n, 10) + " " + noun + "s"
}

// shardList prints shard indexes compactly: "0-3, 7, 9-12".
func shardList(shards []int) string {
	var parts []string
	for i := 0; i < len(shards); {
		j := i
		for j+1 < len(shards) && shards[j+1] == shards[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", shards[i], shards[j]))
		} else {
			parts = append(parts, strconv.Itoa(shards[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// shardState is what probeScript reads on one shard; -1 = key missing.
type shardState struct {
	stock, granted, alloc, transfers, audience, codes int64
}

func (st shardState) empty() bool {
	return st.stock < 0 && st.granted < 0 && st.alloc < 0 && st.transfers == 0 && st.audience == 0 && st.codes == 0
}

// probeResult is the state of every possible shard index of a campaign id.
type probeResult [ShardsMax]shardState

// probe reads every shard index a campaign id can have (ShardsMax scripts,
// pipelined), since an earlier campaign of that id may have had more
// shards than the new one.
func (s *Store) probe(ctx context.Context, campaign string) (*probeResult, error) {
	execs := make([]rueidis.LuaExec, ShardsMax)
	for i := range execs {
		execs[i] = rueidis.LuaExec{Keys: stateKeys(campaign, i)}
	}
	var out probeResult
	for i, r := range probeScript.ExecMulti(ctx, s.c, execs...) {
		v, err := r.AsIntSlice()
		if err != nil || len(v) != 6 {
			return nil, fmt.Errorf("%w: probe shard %d: %v", ErrUnavailable, i, err)
		}
		out[i] = shardState{v[0], v[1], v[2], v[3], v[4], v[5]}
	}
	return &out, nil
}

// leftover returns nil when every shard index holds nothing, or, below
// len(want), exactly what Init writes for it; otherwise everything it found.
func (p *probeResult) leftover(campaign string, want []int64) *LeftoverError {
	other := false
	for i, st := range p {
		mine := i < len(want) && st.stock == want[i] && st.alloc == want[i] && st.granted == 0 &&
			st.transfers == 0 && st.audience == 0 && st.codes == 0 // an earlier try of this very create
		if !st.empty() && !mine {
			other = true
			break
		}
	}
	if !other {
		return nil
	}
	lo := &LeftoverError{Campaign: campaign}
	for i, st := range p {
		if st.empty() {
			continue
		}
		lo.Shards = append(lo.Shards, i)
		lo.Granted += max(st.granted, 0)
		lo.Remaining += max(st.stock, 0)
		lo.Transfers += st.transfers
		lo.Audience += st.audience
		lo.Codes += st.codes
	}
	return lo
}

// Allotted returns the sum of the shards' allotments: the units Redis has
// been given for the campaign (it equals the definition's units once every
// Allot of the committed definition has run).
func (s *Store) Allotted(ctx context.Context, campaign string, shards int) (int64, error) {
	cmds := make(rueidis.Commands, 0, shards)
	for i := 0; i < shards; i++ {
		cmds = append(cmds, s.c.B().Get().Key(AllotKey(campaign, i)).Build())
	}
	var n int64
	for i, r := range s.c.DoMulti(ctx, cmds...) {
		v, err := r.AsInt64()
		if err != nil {
			if rueidis.IsRedisNil(err) {
				return 0, fmt.Errorf("%w: shard %d has no allotment", ErrNotInitialized, i)
			}
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		n += v
	}
	return n, nil
}
