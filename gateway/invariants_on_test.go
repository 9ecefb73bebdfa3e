//go:build invariants

package gateway

// invariantsAllocs is what the ledger's invariant self-checks (-tags
// invariants, make test's first pass) add to one claim's allocations: the
// record decoded again before commit, and AppendNew's existence read.
const invariantsAllocs = 10
