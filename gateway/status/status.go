// Package status is the one table of client-visible claim outcomes: status
// string ↔ HTTP code ↔ metric label. The handler, the bench harness, the
// docs (docs/design.md, the OpenAPI document) and the tests all read it from here.
package status

// Status is a claim outcome.
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
