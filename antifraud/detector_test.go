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

// TestDetectorFloodKeepsHotCounters: past keysMax keys the detector evicts
// its least recently observed windows one at a time. A flood of fresh device
// ids (one claim each, as a farm rotating ids sends) must not reset the
// window of a key that is hot right now: its count goes on and it alerts at
// its threshold. Memory stays bounded by keysMax windows however long the
// flood runs. (Before: the whole map was cleared at keysMax, so every
// flood reset everyone's counters.)
func TestDetectorFloodKeepsHotCounters(t *testing.T) {
	if testing.Short() {
		t.Skip("a million-key flood skipped in -short")
	}
	epoch := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	const limit, period = 50, time.Minute
	d := NewDetector(time.Minute)
	hot := func(at time.Time) (Alert, bool) {
		return d.ObserveRate(AlertClaimRateDevice, "hot-device", limit, period, at)
	}
	// The hot key is the oldest key the detector has seen.
	claims := 0
	for ; claims < limit-10; claims++ {
		if _, fired := hot(epoch); fired {
			t.Fatal("alert below the threshold")
		}
	}
	// A flood of 1.25 × keysMax fresh ids over 30 s of virtual time; the hot
	// device keeps claiming now and then, below its threshold.
	flood := keysMax + keysMax/4
	for i := 0; i < flood; i++ {
		at := epoch.Add(time.Duration(i) * 30 * time.Second / time.Duration(flood))
		d.ObserveRate(AlertClaimRateDevice, "fresh-"+strconv.Itoa(i), limit, period, at)
		if i%(keysMax/4) == 0 && i > 0 {
			if _, fired := hot(at); fired {
				t.Fatal("alert below the threshold")
			}
			claims++
		}
		if n := len(d.windows); n > keysMax {
			t.Fatalf("%d windows after %d fresh keys: over the bound %d", n, i+1, keysMax)
		}
	}
	// Up to the threshold, then one over it, still in the first minute.
	for ; claims < limit; claims++ {
		if _, fired := hot(epoch.Add(40 * time.Second)); fired {
			t.Fatal("alert below the threshold")
		}
	}
	a, fired := hot(epoch.Add(40 * time.Second))
	if !fired || a.Observed != limit+1 {
		t.Fatalf("hot device's count did not survive the flood: fired=%v %+v", fired, a)
	}
	// The recency list holds exactly the map's windows.
	listed := 0
	for w := d.windowsByUse.next; w != &d.windowsByUse; w = w.next {
		if d.windows[w.key] != w {
			t.Fatalf("listed window %q is not the map's", w.key)
		}
		listed++
	}
	if listed != len(d.windows) || listed != keysMax {
		t.Fatalf("%d windows listed, %d in the map, bound %d", listed, len(d.windows), keysMax)
	}
	// The earliest fresh ids, the least recently observed, were the ones evicted.
	if _, ok := d.windows[AlertClaimRateDevice+"|fresh-0"]; ok {
		t.Error("the least recently observed key was kept")
	}
	if _, ok := d.windows[AlertClaimRateDevice+"|fresh-"+strconv.Itoa(flood-1)]; !ok {
		t.Error("the newest key was evicted")
	}
}

// TestDetectorFloodKeepsCooldowns: a flood of fresh keys that each fire
// once (shadow rules do, per key) must not wipe the cool-downs of keys that
// fired recently: a key that alerted keeps quiet for the rest of its
// cool-down. Cool-down records stay bounded by keysMax.
func TestDetectorFloodKeepsCooldowns(t *testing.T) {
	if testing.Short() {
		t.Skip("a million-key flood skipped in -short")
	}
	epoch := time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC)
	d := NewDetector(10 * time.Minute)
	if _, fired := d.Shadow("per-ip", "203.0.113.7", epoch); !fired {
		t.Fatal("first shadow block did not alert")
	}
	flood := keysMax + keysMax/4
	for i := 0; i < flood; i++ {
		at := epoch.Add(time.Duration(i) * time.Minute / time.Duration(flood))
		d.Shadow("per-ip", "fresh-"+strconv.Itoa(i), at)
		if i%(keysMax/4) == 0 { // the hot key is blocked again now and then: still cooling down
			if _, fired := d.Shadow("per-ip", "203.0.113.7", at); fired {
				t.Fatalf("hot key alerted again %v into its cool-down", at.Sub(epoch))
			}
		}
		if n := len(d.fired); n > keysMax {
			t.Fatalf("%d cool-down records: over the bound %d", n, keysMax)
		}
	}
	if _, fired := d.Shadow("per-ip", "203.0.113.7", epoch.Add(2*time.Minute)); fired {
		t.Fatal("flood of fresh keys reset a recent cool-down")
	}
	if _, fired := d.Shadow("per-ip", "203.0.113.7", epoch.Add(11*time.Minute)); !fired {
		t.Fatal("no alert after the cool-down")
	}
}
