// Package lint holds rules about the code base, enforced as tests.
package lint

import (
	"os/exec"
	"strings"
	"testing"
)

// deps lists the transitive imports of a package (standard library included).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func imports(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestLayers keeps the layers of STYLE.md apart.
func TestLayers(t *testing.T) {
	const mod = "github.com/flashgate/flashgate/"
	rules := []struct {
		pkg       string
		forbidden []string
		why       string
	}{
		{mod + "ledger", []string{"net/http", "github.com/valyala/fasthttp", "github.com/redis/rueidis", "github.com/nats-io/"}, "the ledger core does no network I/O"},
		{mod + "antifraud", []string{"net", "os", "net/http", "github.com/redis/rueidis", "github.com/nats-io/", "database/sql"}, "antifraud rules are pure: no I/O"},
		{mod + "gateway/status", []string{"net", "os"}, "the outcome table is plain data"},
	}
	for _, r := range rules {
		for _, imp := range imports(t, r.pkg) {
			for _, f := range r.forbidden {
				if imp == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(imp, f)) {
					t.Errorf("%s imports %s: %s", r.pkg, imp, r.why)
				}
			}
		}
	}
	for _, d := range deps(t, mod+"ledger") {
		if strings.HasPrefix(d, "github.com/nats-io/") || d == "github.com/valyala/fasthttp" || d == "github.com/redis/rueidis" {
			t.Errorf("ledger depends on %s", d)
		}
	}
	// Nothing outside cmd imports bench.
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../../...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], mod+"cmd/") || strings.HasPrefix(f[0], mod+"bench") {
			continue
		}
		for _, imp := range f[1:] {
			if imp == mod+"bench" || strings.HasPrefix(imp, mod+"bench/") {
				t.Errorf("%s imports %s: only cmd may import bench", f[0], imp)
			}
		}
	}
}
