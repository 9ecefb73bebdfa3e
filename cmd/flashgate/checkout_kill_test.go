package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flashgate/flashgate/internal/pgtest"
	"github.com/flashgate/flashgate/internal/redisserver"
	"github.com/flashgate/flashgate/internal/stack"
	"github.com/flashgate/flashgate/internal/wait"
	"github.com/flashgate/flashgate/ledger/store"
)

// TestKill9MidRedeemRetrySameOutcome (I9): every user's one grant is raced
// by two orders, 400 redeems through the real binary on PostgreSQL, and the
// gateway is killed with -9 while they are in flight. A third of them are
// sent by an impatient client (a timeout of a few milliseconds): the
// gateway commits them and their answers are lost, as when the process dies
// between the lock and the answer. After the restart every redeem is sent
// again: an order
// answered 200 before the kill gets the same answer, byte for byte; of each
// user's two orders exactly one holds the grant and the other is refused
// coupon_in_use; and the store's transition log shows every grant locked
// exactly once.
func TestKill9MidRedeemRetrySameOutcome(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a real process; skipped in -short")
	}
	bin := buildBinary(t)
	redis := redisserver.Start(t, redisserver.Options{AOF: true})
	dsn := pgtest.Fresh(t)
	config := filepath.Join(t.TempDir(), "flashgate.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`public_addr: 127.0.0.1:0
admin_addr: 127.0.0.1:0
data_dir: %s
redis: {addrs: [%s]}
auth: {hs256_secret: %s}
admin: {tokens: {%s: admin, %s: checkout}}
store: {driver: postgres, dsn: %q}
shutdown: {drain_delay: 100ms}
`, t.TempDir(), redis.Addr(), stack.Secret, stack.AdminToken, stack.CheckoutToken, dsn)), 0o600)
	p := startGateway(t, bin, config)
	body := fmt.Sprintf(`{"id":"k9r","name":"redeem","coupon":{"type":"voucher","amount":500},"stock":1000,"starts_at":%q,"ends_at":%q}`,
		time.Now().Add(-time.Minute).Format(time.RFC3339), time.Now().Add(time.Hour).Format(time.RFC3339))
	req, _ := http.NewRequest("POST", p.admin+"/admin/v1/campaigns", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("create campaign: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	const users = 200
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	grants := make([]string, users)
	for i := range grants {
		a, err := stack.Claim(context.Background(), client, p.public, stack.ClaimRequest{Campaign: "k9r", User: fmt.Sprintf("r%03d", i), Device: "d"})
		if err != nil || a.Status != "granted" {
			t.Fatalf("claim %d: %+v %v", i, a, err)
		}
		grants[i] = a.GrantID
	}
	wait.For(t, 30*time.Second, "every grant in the store", func() bool {
		req, _ := http.NewRequest("GET", p.admin+"/admin/v1/campaigns/k9r", nil)
		req.Header.Set("Authorization", "Bearer "+stack.AdminToken)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var v struct {
			Stats struct {
				Stored int `json:"stored"`
			} `json:"stats"`
		}
		return json.NewDecoder(resp.Body).Decode(&v) == nil && v.Stats.Stored == users
	})

	type result struct {
		code     int
		body     string
		replayed bool
	}
	order := func(k int) (name string, user int) { return fmt.Sprintf("%c-%03d", "ab"[k%2], k/2), k / 2 }
	impatient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	redeem := func(base string, k int, hurry bool) (result, error) {
		name, u := order(k)
		b := fmt.Sprintf(`{"order_id":%q,"items":[{"sku":"x","store_id":"s","unit_price":%d,"quantity":1}],"grant_ids":[%q]}`, name, 1000+k%2, grants[u])
		req, _ := http.NewRequest("POST", base+"/v1/checkout/redeem", strings.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+stack.CheckoutToken)
		req.Header.Set("X-User-ID", fmt.Sprintf("r%03d", u))
		c := client
		if hurry && k%3 == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+k%7)*time.Millisecond)
			defer cancel()
			req, c = req.WithContext(ctx), impatient
		}
		resp, err := c.Do(req)
		if err != nil {
			return result{}, err
		}
		defer resp.Body.Close()
		rb, err := io.ReadAll(resp.Body)
		return result{resp.StatusCode, string(rb), resp.Header.Get("Idempotent-Replayed") == "true"}, err
	}
	run := func(base string, onAnswer func(int)) map[int]result {
		out := map[int]result{}
		var mu sync.Mutex
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := int(next.Add(1)) - 1; k < 2*users; k = int(next.Add(1)) - 1 {
					r, err := redeem(base, k, onAnswer != nil)
					if err != nil {
						continue // given up by the client, or in flight when the process died
					}
					mu.Lock()
					out[k] = r
					n := len(out)
					mu.Unlock()
					if onAnswer != nil {
						onAnswer(n)
					}
				}
			}()
		}
		wg.Wait()
		return out
	}
	var once sync.Once
	before := run(p.public, func(n int) {
		if n >= 100 {
			once.Do(func() { _ = p.cmd.Process.Signal(syscall.SIGKILL) })
		}
	})
	<-p.exited
	if len(before) < 100 || len(before) == 2*users {
		t.Fatalf("%d of %d redeems answered before the kill: the kill did not land mid-flight", len(before), 2*users)
	}
	p = startGateway(t, bin, config)
	after := run(p.public, nil)
	if len(after) != 2*users {
		t.Fatalf("%d of %d redeems answered after the restart", len(after), 2*users)
	}
	lostCommitted := 0
	for k := 0; k < 2*users; k++ {
		name, _ := order(k)
		a := after[k]
		if b, ok := before[k]; ok {
			if b.code != a.code || (b.code == 200 && b.body != a.body) {
				t.Errorf("%s: before the kill HTTP %d %s, after HTTP %d %s", name, b.code, b.body, a.code, a.body)
			}
		} else if a.code == 200 && a.replayed {
			lostCommitted++ // committed before the kill, its answer lost with the process
		}
		if a.code != 200 && !(a.code == 409 && strings.Contains(a.body, `"coupon_in_use"`)) {
			t.Errorf("%s after the restart: HTTP %d %s", name, a.code, a.body)
		}
	}
	if lostCommitted == 0 {
		t.Errorf("no redeem committed with its answer lost: the crash window between lock and answer was not exercised")
	}
	st, err := store.Open(context.Background(), "postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for u := 0; u < users; u++ {
		winners := 0
		for k := 2 * u; k < 2*u+2; k++ {
			if after[k].code == 200 {
				winners++
			}
		}
		ts, err := st.Transitions(context.Background(), grants[u])
		if err != nil || winners != 1 || len(ts) != 1 || ts[0].To != store.CouponLocked {
			t.Errorf("user %d: %d orders hold the grant; transitions %+v %v", u, winners, ts, err)
		}
	}
	t.Logf("%d redeems answered before the kill; %d committed with their answer lost, answered by the retry", len(before), lostCommitted)
}
