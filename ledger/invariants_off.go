//go:build !invariants

package ledger

const invariantsOn = false
