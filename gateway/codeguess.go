package gateway

import (
	"context"
	"time"

	"github.com/ulule/limiter/v3"

	"github.com/flashgate/flashgate/gateway/ratelimit"
)

// The claim side's limit on guessing redemption codes: claim.go asks
// codeGuessesOver before it runs a code campaign's stock script and calls
// countCodeGuess for every code the script refused (unknown or used). More
// than codeGuessesMax such codes from one user in codeGuessWindow answer
// rate_limited with "limit": "code". The codes themselves are generated and
// exported by admin_codes.go.

const (
	// codeGuessesMax wrong codes per user per codeGuessWindow, then 429.
	codeGuessesMax  = 10
	codeGuessWindow = 10 * time.Minute
)

// codeLimiter is the per-user wrong-code limiter (ulule/limiter on Redis),
// nil until Redis is connected.
func (g *Gateway) codeLimiter() *limiter.Limiter {
	rc := g.redisC.Load()
	if rc == nil {
		return nil
	}
	return limiter.New(ratelimit.New(*rc, "fg:codeguess", g.now), limiter.Rate{Period: codeGuessWindow, Limit: codeGuessesMax})
}

// codeGuessesOver reports whether a user has used up their wrong-code
// attempts (Redis errors do not block: the code itself is still checked).
func (g *Gateway) codeGuessesOver(ctx context.Context, user string, now time.Time) bool {
	l := g.codeLimiter()
	if l == nil {
		return false
	}
	c, err := l.Peek(ctx, user)
	return err == nil && c.Remaining <= 0 // codeGuessesMax wrong codes used: the next try is refused
}

// countCodeGuess counts one wrong code against the user (best effort).
func (g *Gateway) countCodeGuess(ctx context.Context, user string) {
	if l := g.codeLimiter(); l != nil {
		_, _ = l.Get(ctx, user)
	}
}
