package onnxrt_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	. "github.com/esper-morph/esper/core/onnxrt"
	"github.com/esper-morph/esper/core/onnxrt/onnxtest"
)

// libPath is the library `make onnxruntime` installs beside libesper.so, or
// $ESPER_ONNXRUNTIME_LIB. The tests fail, not skip, without it: `make test-go`
// installs it first.
func libPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("ESPER_ONNXRUNTIME_LIB"); p != "" {
		return p
	}
	p, err := filepath.Abs("../../python/esper/_lib/libonnxruntime.so.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v: run `make onnxruntime` (or set ESPER_ONNXRUNTIME_LIB)", p, err)
	}
	return p
}

func runtimeFor(t *testing.T) *Runtime {
	t.Helper()
	rt, err := Load(libPath(t))
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func randomMLP(rng *rand.Rand, n, h, k int, sum bool) onnxtest.MLP {
	vals := func(c int, scale float64) []float32 {
		v := make([]float32, c)
		for i := range v {
			v[i] = float32((rng.Float64()*2 - 1) * scale)
		}
		return v
	}
	return onnxtest.MLP{N: n, H: h, K: k, W1: vals(n*h, 1/math.Sqrt(float64(n))), B1: vals(h, 0.1),
		W2: vals(h*k, 1/math.Sqrt(float64(h))), B2: vals(k, 0.1), Sum: sum}
}

func writeModel(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	rt := runtimeFor(t)
	if !strings.HasPrefix(rt.Version(), "1.") {
		t.Fatalf("version %q", rt.Version())
	}
	again, err := Load(libPath(t))
	if err != nil || again != rt {
		t.Fatalf("second load: %v, %p vs %p", err, again, rt)
	}
	if Loaded() != rt {
		t.Fatal("Loaded does not return the runtime")
	}
	// Another file (even a copy) is another library: refused once one is loaded.
	other := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	if err := os.WriteFile(other, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(other); err == nil || !strings.Contains(err.Error(), "already loaded") {
		t.Fatalf("load of another library: %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	if os.Getenv("ONNXRT_TEST_CHILD") == "missing" {
		// In a fresh process, where nothing is loaded yet.
		_, err := Load(filepath.Join(t.TempDir(), "absent.so"))
		if !errors.Is(err, ErrNoLibrary) {
			t.Fatalf("missing library: %v", err)
		}
		if _, err := Load(""); !errors.Is(err, ErrNoLibrary) {
			t.Fatalf("empty path: %v", err)
		}
		if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "directory") {
			t.Fatalf("a directory: %v", err)
		}
		if Loaded() != nil {
			t.Fatal("a failed load left a runtime behind")
		}
		// The failures left nothing behind: the real library loads after them.
		if _, err := Load(libPath(t)); err != nil {
			t.Fatal(err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadMissing$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ONNXRT_TEST_CHILD=missing")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestRunMatchesReference(t *testing.T) {
	rt := runtimeFor(t)
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name    string
		n, h, k int
		rows    []int
		sum     bool
	}{
		{"value-sized", 24, 64, 1, []int{1, 16, 200}, false},
		{"wide-out", 8, 32, 5, []int{1, 3}, false},
		{"two-outputs", 6, 16, 3, []int{1, 7}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := randomMLP(rng, c.n, c.h, c.k, c.sum)
			m, err := rt.Open(writeModel(t, p.ONNX()), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.Features() != c.n {
				t.Fatalf("features %d, want %d", m.Features(), c.n)
			}
			wantOuts := 1
			if c.sum {
				wantOuts = 2
			}
			outs := m.Outputs()
			if len(outs) != wantOuts || outs[0].Name != "y" || outs[0].Width != c.k {
				t.Fatalf("outputs %+v", outs)
			}
			for _, rows := range c.rows {
				x := make([]float32, rows*c.n)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				got, err := m.Run(x, rows)
				if err != nil {
					t.Fatal(err)
				}
				want := p.Forward(x, rows)
				if len(got[0]) != len(want) {
					t.Fatalf("rows %d: %d values, want %d", rows, len(got[0]), len(want))
				}
				for i := range want {
					if d := math.Abs(float64(got[0][i]) - want[i]); d > 1e-5*(1+math.Abs(want[i])) {
						t.Fatalf("rows %d: y[%d] = %v, reference %v", rows, i, got[0][i], want[i])
					}
				}
				if c.sum {
					if len(got[1]) != rows {
						t.Fatalf("sum output has %d values for %d rows", len(got[1]), rows)
					}
					for r := 0; r < rows; r++ {
						var s float64
						for j := 0; j < c.k; j++ {
							s += want[r*c.k+j]
						}
						if math.Abs(float64(got[1][r])-s) > 1e-5*(1+math.Abs(s)) {
							t.Fatalf("sum[%d] = %v, reference %v", r, got[1][r], s)
						}
					}
				}
			}
		})
	}
}

// TestReferenceCatchesPerturbation is the negative control: a model whose one
// weight differs by 1e-3 from the reference's disagrees with it.
func TestReferenceCatchesPerturbation(t *testing.T) {
	rt := runtimeFor(t)
	p := randomMLP(rand.New(rand.NewPCG(3, 4)), 10, 16, 1, false)
	bad := p
	bad.W2 = append([]float32(nil), p.W2...)
	bad.W2[0] += 1e-3
	m, err := rt.Open(writeModel(t, bad.ONNX()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	x := make([]float32, 4*10)
	for i := range x {
		x[i] = 1
	}
	got, err := m.Run(x, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := p.Forward(x, 4)
	var worst float64
	for i := range want {
		worst = math.Max(worst, math.Abs(float64(got[0][i])-want[i]))
	}
	if worst <= 1e-5 {
		t.Fatalf("a perturbed weight went unnoticed (largest difference %g)", worst)
	}
}

func TestRunErrors(t *testing.T) {
	rt := runtimeFor(t)
	p := randomMLP(rand.New(rand.NewPCG(5, 6)), 4, 8, 2, false)
	m, err := rt.Open(writeModel(t, p.ONNX()), Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		x    []float32
		rows int
		want string
	}{
		{"zero rows", nil, 0, "rows 0"},
		{"short input", make([]float32, 7), 2, "7 values for 2 rows"},
		{"long input", make([]float32, 9), 2, "9 values for 2 rows"},
	}
	for _, c := range cases {
		if _, err := m.Run(c.x, c.rows); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := m.Run(make([]float32, 4), 1); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("run after close: %v", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	rt := runtimeFor(t)
	p := randomMLP(rand.New(rand.NewPCG(7, 8)), 3, 4, 1, false)
	intInput := onnxtest.Model(
		[][]byte{onnxtest.Node("Cast", []string{"x"}, []string{"y"}, map[string]int64{"to": onnxtest.Float})}, nil,
		[][]byte{onnxtest.ValueInfo("x", onnxtest.Int64, []int64{-1, 3})}, [][]byte{onnxtest.ValueInfo("y", onnxtest.Float, []int64{-1, 3})})
	rank3 := onnxtest.Model(
		[][]byte{onnxtest.Node("Relu", []string{"x"}, []string{"y"}, nil)}, nil,
		[][]byte{onnxtest.ValueInfo("x", onnxtest.Float, []int64{-1, 3, 2})}, [][]byte{onnxtest.ValueInfo("y", onnxtest.Float, []int64{-1, 3, 2})})
	dynamicWidth := onnxtest.Model(
		[][]byte{onnxtest.Node("Relu", []string{"x"}, []string{"y"}, nil)}, nil,
		[][]byte{onnxtest.ValueInfo("x", onnxtest.Float, []int64{-1, -1})}, [][]byte{onnxtest.ValueInfo("y", onnxtest.Float, []int64{-1, -1})})
	cases := []struct {
		name string
		path string
		want string
	}{
		{"missing file", filepath.Join(t.TempDir(), "none.onnx"), "no such file"},
		{"not onnx", writeModel(t, []byte("not a model")), "open model"},
		{"int64 input", writeModel(t, intInput), "float32 [batch, n]"},
		{"rank-3 input", writeModel(t, rank3), "float32 [batch, n]"},
		{"dynamic width", writeModel(t, dynamicWidth), "fixed n"},
	}
	for _, c := range cases {
		if _, err := rt.Open(c.path, Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// The good model still opens (the refusals left nothing behind).
	m, err := rt.Open(writeModel(t, p.ONNX()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

func TestConcurrentRuns(t *testing.T) {
	rt := runtimeFor(t)
	p := randomMLP(rand.New(rand.NewPCG(9, 10)), 12, 32, 1, false)
	m, err := rt.Open(writeModel(t, p.ONNX()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rows := 1 + g*5
			x := make([]float32, rows*12)
			for i := range x {
				x[i] = float32(i%7) - float32(g)
			}
			want := p.Forward(x, rows)
			for it := 0; it < 50; it++ {
				got, err := m.Run(x, rows)
				if err != nil {
					errs <- err
					return
				}
				for i := range want {
					if math.Abs(float64(got[0][i])-want[i]) > 1e-5*(1+math.Abs(want[i])) {
						errs <- errors.New("a concurrent run disagrees with the reference")
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
