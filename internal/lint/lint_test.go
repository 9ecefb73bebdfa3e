// Package lint holds rules about the code base, enforced as tests.
package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
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

// TestLayers keeps the layers apart: the ledger core does no network I/O,
// antifraud no I/O, the outcome table is plain data, only cmd imports bench.
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
	for pkg, imps := range moduleImports(t) {
		if strings.HasPrefix(pkg, mod+"cmd/") || strings.HasPrefix(pkg, mod+"bench") {
			continue
		}
		for _, imp := range imps {
			if imp == mod+"bench" || strings.HasPrefix(imp, mod+"bench/") {
				t.Errorf("%s imports %s: only cmd may import bench", pkg, imp)
			}
		}
	}
}

// moduleImports maps every package of the module to its imports (test files
// excluded: .Imports lists the package's own files only).
func moduleImports(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../../...").Output()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			m[f[0]] = f[1:]
		}
	}
	return m
}

// sqlDrivers are the SQL packages a process that never touches SQL must not
// link.
var sqlDrivers = []string{"database/sql", "github.com/jackc/", "modernc.org/sqlite"}

// TestPipelineBoundaries: the relay owns the stream message and links no
// store or SQL driver; the stock, campaign and risk packages serve no HTTP; only
// cmd wires the sink (the in-process test stack, which wires it as cmd
// does, excepted).
func TestPipelineBoundaries(t *testing.T) {
	const mod = "github.com/flashgate/flashgate/"
	rules := []struct {
		pkg       string
		forbidden []string
		why       string
	}{
		{mod + "ledger/relay", append([]string{mod + "ledger/store", mod + "ledger/sink"}, sqlDrivers...), "the relay owns its wire message and never touches SQL"},
		{mod + "gateway/stock", []string{"github.com/valyala/fasthttp"}, "the Redis stock layer serves no HTTP"},
		{mod + "gateway/campaign", []string{"github.com/valyala/fasthttp"}, "campaign definitions and their registry serve no HTTP"},
		{mod + "gateway/risk", []string{"github.com/valyala/fasthttp"}, "risk control serves no HTTP: its admin handlers are package gateway's"},
	}
	for _, r := range rules {
		for _, d := range deps(t, r.pkg) {
			for _, f := range r.forbidden {
				if d == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(d, f)) {
					t.Errorf("%s depends on %s: %s", r.pkg, d, r.why)
				}
			}
		}
	}
	for pkg, imps := range moduleImports(t) {
		if strings.HasPrefix(pkg, mod+"cmd/") || pkg == mod+"internal/stack" || pkg == mod+"ledger/sink" {
			continue
		}
		for _, imp := range imps {
			if imp == mod+"ledger/sink" {
				t.Errorf("%s imports ledger/sink: only cmd wires the sink (gateway.WithSink)", pkg)
			}
		}
	}
}

// TestCheckoutIsPure: the checkout math (quotes, stacking, allocation,
// refund shares) is pure. It imports no network, file, SQL, Redis or NATS
// package, nor any through another package (only "os" is allowed among its
// dependencies, because fmt links it), and it never reads the clock: now is
// a parameter, so every rule is testable at any instant.
func TestCheckoutIsPure(t *testing.T) {
	const pkg = "github.com/flashgate/flashgate/gateway/checkout"
	forbidden := append([]string{"net", "net/", "os", "os/", "github.com/valyala/fasthttp", "github.com/redis/rueidis", "github.com/nats-io/"}, sqlDrivers...)
	match := func(p, f string) bool {
		return p == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(p, f))
	}
	for _, imp := range imports(t, pkg) {
		for _, f := range forbidden {
			if match(imp, f) {
				t.Errorf("%s imports %s: checkout is pure (no I/O)", pkg, imp)
			}
		}
	}
	for _, d := range deps(t, pkg) {
		for _, f := range forbidden {
			if match(d, f) && d != "os" {
				t.Errorf("%s depends on %s: checkout is pure (no I/O)", pkg, d)
			}
		}
	}
	files, err := filepath.Glob("../../gateway/checkout/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("checkout sources: %v %v", files, err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		timePkg := ""
		for _, is := range f.Imports {
			if is.Path.Value == `"time"` {
				timePkg = "time"
				if is.Name != nil {
					timePkg = is.Name.Name
				}
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == timePkg && (sel.Sel.Name == "Now" || sel.Sel.Name == "Since" || sel.Sel.Name == "Until") {
					t.Errorf("%s uses time.%s: checkout takes now from its caller", name, sel.Sel.Name)
				}
			}
			return true
		})
	}
}

// funcLinesMax is the longest function the gateway packages hold without a
// reason: long enough for a step, short enough to see whole.
const funcLinesMax = 80

// TestGatewayFunctionsShort fails on a function of gateway/ (or a package
// under it) longer than funcLinesMax lines unless its doc comment says why,
// on a line starting "long:".
func TestGatewayFunctionsShort(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir("../../gateway", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			if n > funcLinesMax && !strings.Contains(fd.Doc.Text(), "\nlong: ") && !strings.HasPrefix(fd.Doc.Text(), "long: ") {
				t.Errorf("%s: %s is %d lines (max %d): split it, or say why on a \"long:\" line of its comment", path, fd.Name.Name, n, funcLinesMax)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
