//go:build invariants

package ledger

// invariantsOn turns on expensive self-checks (make test builds with -tags
// invariants): each record is decoded again before commit and compared.
const invariantsOn = true
