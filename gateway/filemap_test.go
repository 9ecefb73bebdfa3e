package gateway_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestPackageCommentMapsEveryFile keeps the file map in the package comment
// (gateway.go) equal to the package's files: every non-test .go file is
// listed with what it serves, and every listed file exists. A new file, or
// a moved concern, updates the map in the same change.
func TestPackageCommentMapsEveryFile(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "gateway.go", nil, parser.PackageClauseOnly|parser.ParseComments)
	if err != nil || f.Doc == nil {
		t.Fatalf("gateway.go package comment: %v", err)
	}
	mapped := map[string]bool{}
	for _, line := range strings.Split(f.Doc.Text(), "\n") {
		// Map rows are a code block: "\tname.go   what it serves".
		if fields := strings.Fields(line); strings.HasPrefix(line, "\t") && len(fields) > 1 && strings.HasSuffix(fields[0], ".go") {
			if mapped[fields[0]] {
				t.Errorf("%s is listed twice in the package comment's file map", fields[0])
			}
			mapped[fields[0]] = true
		}
	}
	if len(mapped) == 0 {
		t.Fatal("the package comment in gateway.go has no file map")
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		if !mapped[name] {
			t.Errorf("%s is not in the package comment's file map (gateway.go): say what it serves", name)
		}
		delete(mapped, name)
	}
	for name := range mapped {
		t.Errorf("the package comment's file map lists %s, which does not exist", name)
	}
}
