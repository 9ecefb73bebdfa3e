//go:build race

package gateway_test

// raceDetector: this test binary runs under -race (make test's second pass).
const raceDetector = true
