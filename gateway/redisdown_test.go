package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
)

// TestRedisStoppedMidLoad (I7): while Redis is down the gateway answers 503
// with Retry-After and grants nothing; it resumes by itself after Redis
// returns; nothing is oversold and every granted answer is in the ledger.
func TestRedisStoppedMidLoad(t *testing.T) {
	s := stack.Start(t, stack.Options{AOF: true})
	const stock = 3000
	s.CreateCampaign(stack.Campaign{ID: "rd", Stock: stock, Shards: 4})

	var (
		mu                           sync.Mutex
		grants                       = map[string]string{}
		down, afterRestart           atomic.Bool
		grantedWhileDown, unavail503 atomic.Int64
		grantedAfter, other          atomic.Int64
		next                         atomic.Int64
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				user := fmt.Sprintf("u%06d", next.Add(1))
				a, err := s.Claim(ctx, stack.ClaimRequest{Campaign: "rd", User: user, Device: "d-" + user})
				if err != nil {
					continue // context cancelled at the end
				}
				switch {
				case a.Status == "granted":
					if down.Load() {
						grantedWhileDown.Add(1)
					}
					if afterRestart.Load() {
						grantedAfter.Add(1)
					}
					mu.Lock()
					if prev, dup := grants[a.GrantID]; dup {
						t.Errorf("grant %s answered to %s and %s", a.GrantID, prev, user)
					}
					grants[a.GrantID] = user
					mu.Unlock()
				case a.HTTP == 503 && a.Status == "unavailable":
					unavail503.Add(1)
					if a.RetryAfter == "" {
						t.Errorf("503 without Retry-After")
					}
				case a.Status == "sold_out":
				default:
					other.Add(1)
					t.Errorf("unexpected answer %+v", a)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	s.Redis.Stop()
	time.Sleep(50 * time.Millisecond) // answers already in flight at the stop may still be grants
	down.Store(true)
	time.Sleep(700 * time.Millisecond)
	down.Store(false)
	s.Redis.Restart()
	afterRestart.Store(true)
	wait.Until(context.Background(), 10*time.Second, func() bool { return grantedAfter.Load() >= 50 })
	cancel()
	wg.Wait()

	if unavail503.Load() == 0 {
		t.Errorf("no 503 while Redis was down")
	}
	if n := grantedWhileDown.Load(); n != 0 {
		t.Errorf("I7: %d grants answered while Redis was down", n)
	}
	if grantedAfter.Load() < 50 {
		t.Errorf("service did not resume by itself: %d grants after restart", grantedAfter.Load())
	}
	st := s.CampaignStats("rd")
	if st.Granted > stock || st.Remaining < 0 || st.Granted+st.Remaining != stock {
		t.Errorf("I1: stats %+v", st)
	}
	inLedger := ledgerGrants(t, s.Gateway.Ledger())
	for id := range grants {
		if _, ok := inLedger[id]; !ok {
			t.Errorf("I4: granted %s not in the ledger", id)
		}
	}
	// A script whose reply was lost at the stop granted in Redis although the
	// client got 503; the gateway settles it into the ledger within seconds,
	// after which Redis and the ledger agree (I6).
	wait.Until(context.Background(), 15*time.Second, func() bool {
		inLedger = ledgerGrants(t, s.Gateway.Ledger())
		return int64(len(inLedger)) == st.Granted
	})
	if int64(len(inLedger)) != st.Granted {
		t.Errorf("I6: ledger %d grants, redis %d", len(inLedger), st.Granted)
	}
	t.Logf("granted %d (redis %d, ledger %d), 503s %d, after restart %d", len(grants), st.Granted, len(inLedger), unavail503.Load(), grantedAfter.Load())
}
