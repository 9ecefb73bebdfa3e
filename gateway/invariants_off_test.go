//go:build !invariants

package gateway

// invariantsAllocs: see invariants_on_test.go.
const invariantsAllocs = 0
