package procstat

import (
	"os"
	"testing"
	"time"
)

// TestOwnProcess: this process's CPU grows as it spins and its memory is
// plausible; a missing process is an error.
func TestOwnProcess(t *testing.T) {
	pid := os.Getpid()
	before, err := CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	after := before
	for start := time.Now(); after <= before && err == nil && time.Since(start) < 5*time.Second; {
		after, err = CPU(pid) // spinning: CPU moves by a tick within a few wall milliseconds
	}
	if err != nil || after <= before {
		t.Fatalf("CPU %v then %v (%v)", before, after, err)
	}
	m, err := Memory(pid)
	if err != nil || m.RSS < 1<<20 || m.HWM < m.RSS {
		t.Fatalf("memory %+v (%v)", m, err)
	}
	if _, err := CPU(1 << 30); err == nil {
		t.Fatal("no error for a missing process")
	}
}
