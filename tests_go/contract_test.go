package tests_go

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
)

// repoRoot returns the repository root (the parent of tests_go).
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

func readFile(t testing.TB, parts ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var (
	headerFunc = regexp.MustCompile(`(?m)^(?:int|int32_t|void)\s+\*?(esper_\w+)\s*\(`)
	exportLine = regexp.MustCompile(`(?m)^//export (esper_\w+)\s*$`)
	headerCode = regexp.MustCompile(`(?m)^#define ESPER_E?(\w+)\s+(\d+)`)
	pyClass    = regexp.MustCompile(`(?ms)^class (\w+)\(EsperError[^)]*\):.*?^    code = (\d+)`)
)

// testBlock is the part of capi/esper.h that declares the exports of the
// test variant of the library only.
var testBlock = regexp.MustCompile(`(?ms)^#ifdef ESPER_TEST_LIBRARY$.*?^#endif`)

// headerFunctions lists the functions capi/esper.h declares for the
// production library (test == false) or in its ESPER_TEST_LIBRARY block
// (test == true).
func headerFunctions(t testing.TB, test ...bool) []string {
	t.Helper()
	header := readFile(t, repoRoot(t), "capi", "esper.h")
	block := strings.Join(testBlock.FindAllString(header, -1), "\n")
	src := testBlock.ReplaceAllString(header, "")
	if len(test) > 0 && test[0] {
		src = block
	}
	var names []string
	for _, m := range headerFunc.FindAllStringSubmatch(src, -1) {
		names = append(names, m[1])
	}
	sort.Strings(names)
	return names
}

// exportsOf lists the //export directives of one capi file, sorted.
func exportsOf(t testing.TB, name string) []string {
	t.Helper()
	var names []string
	for _, m := range exportLine.FindAllStringSubmatch(readFile(t, repoRoot(t), "capi", name), -1) {
		names = append(names, m[1])
	}
	sort.Strings(names)
	return names
}

// The library built without the NATS client (-tags esper_nonats) replaces
// oona_nats.go with oona_nonats.go: the same exports, so the header and
// the Python bindings hold for both builds.
func TestNoNATSVariantHasTheSameExports(t *testing.T) {
	with, without := exportsOf(t, "oona_nats.go"), exportsOf(t, "oona_nonats.go")
	if len(with) == 0 || strings.Join(with, ",") != strings.Join(without, ",") {
		t.Fatalf("oona_nats.go exports %v, oona_nonats.go %v", with, without)
	}
}

// goExports lists the //export directives of capi/*.go: those of the
// production library (test == false) or of the files built only with the
// esper_test tag (test == true). The files of the build without NATS
// (esper_nonats) are left out: they export what oona_nats.go does
// (TestNoNATSVariantHasTheSameExports).
func goExports(t testing.TB, test ...bool) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "capi", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	wantTest := len(test) > 0 && test[0]
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src := readFile(t, f)
		if strings.HasPrefix(src, "//go:build esper_test\n") != wantTest || strings.HasPrefix(src, "//go:build esper_nonats\n") {
			continue
		}
		for _, m := range exportLine.FindAllStringSubmatch(src, -1) {
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names
}

func TestHeaderMatchesExports(t *testing.T) {
	header, exports := headerFunctions(t), goExports(t)
	if len(exports) == 0 {
		t.Fatal("no //export found in capi")
	}
	if th, te := headerFunctions(t, true), goExports(t, true); len(te) == 0 || strings.Join(th, ",") != strings.Join(te, ",") {
		t.Fatalf("the test variant's exports (esper_test tag) and the header's ESPER_TEST_LIBRARY block disagree: %v vs %v", te, th)
	}
	if strings.Join(header, ",") != strings.Join(exports, ",") {
		t.Fatalf("capi/esper.h and capi exports disagree:\n only in header: %v\n only in Go: %v",
			diff(header, exports), diff(exports, header))
	}
}

func TestErrorCodesAgree(t *testing.T) {
	root := repoRoot(t)
	codes := map[string]int{}
	for _, m := range headerCode.FindAllStringSubmatch(readFile(t, root, "capi", "esper.h"), -1) {
		n, _ := strconv.Atoi(m[2])
		codes[m[1]] = n
	}
	classes := map[string]int{}
	for _, m := range pyClass.FindAllStringSubmatch(readFile(t, root, "python", "esper", "errors.py"), -1) {
		n, _ := strconv.Atoi(m[2])
		classes[m[1]] = n
	}
	for _, e := range errcode.Table {
		t.Run(e.Name, func(t *testing.T) {
			if got, ok := codes[e.Name]; !ok || got != int(e.Code) {
				t.Errorf("esper.h: ESPER_E%s = %d (present %v), want %d", e.Name, got, ok, e.Code)
			}
			if e.Code == errcode.OK {
				return
			}
			if got, ok := classes[e.Python]; !ok || got != int(e.Code) {
				t.Errorf("errors.py: class %s code = %d (present %v), want %d", e.Python, got, ok, e.Code)
			}
		})
	}
	if len(classes) != len(errcode.Table)-1 {
		t.Errorf("errors.py has %d coded classes, the table %d", len(classes), len(errcode.Table)-1)
	}
}

func TestABIVersionAgrees(t *testing.T) {
	root := repoRoot(t)
	find := func(re, text, where string) int {
		m := regexp.MustCompile(re).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no ABI version in %s", where)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	h := find(`#define ESPER_ABI_VERSION (\d+)`, readFile(t, root, "capi", "esper.h"), "esper.h")
	g := find(`const abiVersion = (\d+)`, readFile(t, root, "capi", "core.go"), "capi/core.go")
	p := find(`(?m)^ABI_VERSION = (\d+)`, readFile(t, root, "python", "esper", "_lib.py"), "_lib.py")
	if h != g || g != p {
		t.Fatalf("ABI versions disagree: esper.h %d, capi %d, python %d", h, g, p)
	}
}

// TestExportedSymbols builds libesper.so as the package build does, and its
// test variant, and checks with nm that only the esper_* API is visible:
// exactly the header's production list, plus its ESPER_TEST_LIBRARY block
// in the test variant (no test-only export in the production library).
func TestExportedSymbols(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the shared library")
	}
	if _, err := exec.LookPath("nm"); err != nil {
		t.Fatalf("nm is needed: %v", err)
	}
	prod := headerFunctions(t)
	all := append(append([]string(nil), prod...), headerFunctions(t, true)...)
	sort.Strings(all)
	for _, tc := range []struct {
		tags string
		want []string
	}{{"", prod}, {"esper_test", all}} {
		syms := librarySymbols(t, tc.tags)
		if strings.Join(syms, ",") != strings.Join(tc.want, ",") {
			t.Fatalf("library (tags %q) symbols and header disagree:\n only in library: %v\n only in header: %v",
				tc.tags, diff(syms, tc.want), diff(tc.want, syms))
		}
	}
}

// librarySymbols builds the library with the given build tags and returns
// its visible symbols, failing on any that is not esper_*.
func librarySymbols(t *testing.T, tags string) []string {
	t.Helper()
	root := repoRoot(t)
	lib := filepath.Join(t.TempDir(), "libesper.so")
	build := exec.Command("go", "build", "-tags", tags, "-buildmode=c-shared", "-trimpath",
		"-ldflags", "-extldflags -Wl,--version-script="+filepath.Join(root, "capi", "exports.map"),
		"-o", lib, "./capi")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command("nm", "-D", "--defined-only", lib).Output()
	if err != nil {
		t.Fatalf("nm: %v", err)
	}
	var syms []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		name := f[2]
		if !strings.HasPrefix(name, "esper_") {
			t.Errorf("symbol %q is visible; only esper_* may be", name)
		}
		syms = append(syms, name)
	}
	sort.Strings(syms)
	return syms
}

// diff returns the names in a that are not in b.
func diff(a, b []string) []string {
	in := map[string]bool{}
	for _, s := range b {
		in[s] = true
	}
	var out []string
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}
