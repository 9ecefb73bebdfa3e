package antifraud

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestDetector runs testdata/detector: windows, thresholds and cool-downs on
// a virtual clock (offsets from an epoch).
func TestDetector(t *testing.T) {
	epoch := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	var d *Detector
	datadriven.RunTest(t, "testdata/detector", func(t *testing.T, td *datadriven.TestData) string {
		arg := func(k string) string {
			for _, a := range td.CmdArgs {
				if a.Key == k && len(a.Vals) > 0 {
					return a.Vals[0]
				}
			}
			return ""
		}
		dur := func(k string) time.Duration {
			v, err := time.ParseDuration(arg(k))
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			return v
		}
		num := func(k string) int64 { n, _ := strconv.ParseInt(arg(k), 10, 64); return n }
		count := int(num("count"))
		if count == 0 {
			count = 1
		}
		var a Alert
		fired := false
		switch td.Cmd {
		case "new":
			d = NewDetector(dur("cooldown"))
			return ""
		case "rate":
			for i := 0; i < count; i++ {
				if x, ok := d.ObserveRate(arg("kind"), arg("key"), num("limit"), dur("period"), epoch.Add(dur("at"))); ok {
					a, fired = x, true
				}
			}
		case "outcome":
			for i := 0; i < count; i++ {
				if x, ok := d.ObserveOutcome(arg("campaign"), arg("rejected") == "true", 0.75, 4, time.Second, epoch.Add(dur("at"))); ok {
					a, fired = x, true
				}
			}
		case "stock":
			pct, _ := strconv.ParseFloat(arg("percent"), 64)
			a, fired = d.CheckStock(arg("campaign"), num("remaining"), num("stock"), pct, epoch.Add(dur("at")))
		case "budget":
			pct, _ := strconv.ParseFloat(arg("percent"), 64)
			a, fired = d.CheckBudget(arg("campaign"), num("used"), num("budget"), pct, epoch.Add(dur("at")))
		default:
			t.Fatalf("unknown command %s", td.Cmd)
		}
		if !fired {
			return "quiet"
		}
		return fmt.Sprintf("alert %s %s observed=%v threshold=%v", a.Kind, a.Key, a.Observed, a.Threshold)
	})
}
