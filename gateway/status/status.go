// Package status is the one table of client-visible outcomes of the public
// API — claims, the wallet and checkout: status string ↔ HTTP code ↔ metric
// label. The handlers, the bench harness, the docs and the tests all read
// it from here. The checkout statuses (OK onwards) are appended
// so that the claim statuses keep their values.
package status

// Status is an outcome.
type Status uint8

const (
	Granted Status = iota
	InvalidRequest
	Unauthenticated
	Blocked
	NotEligible
	UnknownCampaign
	SoldOut
	AlreadyClaimed
	NotStarted
	Ended
	Paused
	RateLimited
	Unavailable
	// Checkout (issue 13): the wallet, quotes, redeem and order transitions.
	OK
	Forbidden
	NotFound
	CouponInUse
	NotApplicable
	OrderConflict
	OrderState
	NotYetStored
	count
)

// N is the number of statuses.
const N = int(count)

type row struct {
	name string
	code int
	doc  string
}

var table = [count]row{
	Granted:         {"granted", 200, "body has grant_id, campaign, coupon, valid_from, valid_until"},
	InvalidRequest:  {"invalid_request", 400, "body has error saying what is wrong"},
	Unauthenticated: {"unauthenticated", 401, "missing / bad / expired token"},
	Blocked:         {"blocked", 403, "blacklisted IP, CIDR, device or user"},
	NotEligible:     {"not_eligible", 403, "not in a targeted audience, or a wrong / used redemption code"},
	UnknownCampaign: {"unknown_campaign", 404, "no such campaign"},
	SoldOut:         {"sold_out", 409, "every shard is empty"},
	AlreadyClaimed:  {"already_claimed", 409, "per-user limit reached; body lists the user's grant_ids"},
	NotStarted:      {"not_started", 409, "before starts_at"},
	Ended:           {"ended", 409, "after ends_at, or deleted"},
	Paused:          {"paused", 409, "paused by an operator"},
	RateLimited:     {"rate_limited", 429, "Retry-After header; body says which limit"},
	Unavailable:     {"unavailable", 503, "a dependency is down; Retry-After. Nothing was acknowledged: retry with the same Idempotency-Key for the real outcome (a grant made meanwhile is settled and shows in /v1/me/coupons)"},
	OK:              {"ok", 200, "a wallet, quote or order answer"},
	Forbidden:       {"forbidden", 403, "a valid token without the role: redeem, confirm, cancel and refund need a checkout service token"},
	NotFound:        {"not_found", 404, "no such order of this user, or a grant id this user does not hold (body lists grant_ids)"},
	CouponInUse:     {"coupon_in_use", 409, "a chosen coupon is locked or used by another order (body lists grant_ids); nothing was locked"},
	NotApplicable:   {"not_applicable", 409, "a chosen coupon cannot be used on this order (body lists each with its reason); nothing was locked"},
	OrderConflict:   {"order_conflict", 409, "this order_id (or refund_id) was used before with another body or by another user"},
	OrderState:      {"order_state", 409, "the order's state does not allow this step (body has state: e.g. confirm after cancel or after the lock expired)"},
	NotYetStored:    {"not_yet_stored", 503, "the grant was made but is not in the grant store yet (pipeline lag): Retry-After; send the same request again"},
}

// All lists every status in table order.
func All() []Status {
	out := make([]Status, count)
	for i := range out {
		out[i] = Status(i)
	}
	return out
}

// String is the status field of the JSON answer and the metric label.
func (s Status) String() string { return table[s].name }

// HTTPCode is the HTTP status code of the answer.
func (s Status) HTTPCode() int { return table[s].code }

// Doc is the one-line meaning used in the docs.
func (s Status) Doc() string { return table[s].doc }

// Parse maps a status string back to its Status.
func Parse(name string) (Status, bool) {
	for i, r := range table {
		if r.name == name {
			return Status(i), true
		}
	}
	return 0, false
}
