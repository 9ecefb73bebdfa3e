package status

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestREADMETableMatches keeps the README's status table equal to this one.
func TestREADMETableMatches(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start, end := strings.Index(s, "<!-- status-table -->"), strings.Index(s, "<!-- /status-table -->")
	if start < 0 || end < start {
		t.Fatal("README has no status-table markers")
	}
	var want strings.Builder
	want.WriteString("\n| HTTP | status | meaning |\n|---|---|---|\n")
	for _, st := range All() {
		fmt.Fprintf(&want, "| %d | `%s` | %s |\n", st.HTTPCode(), st, st.Doc())
	}
	if got := s[start+len("<!-- status-table -->") : end]; got != want.String() {
		t.Errorf("README status table differs from gateway/status; want:\n%s", want.String())
	}
}

func TestParseRoundTrip(t *testing.T) {
	for _, st := range All() {
		if got, ok := Parse(st.String()); !ok || got != st {
			t.Errorf("Parse(%q) = %v %v", st, got, ok)
		}
	}
}
