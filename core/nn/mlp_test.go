package nn_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/nn"
	"github.com/esper-morph/esper/core/safetensors"
)

// write stores tensors in a temp safetensors file and returns its path.
func write(t *testing.T, ts ...safetensors.F32) string {
	t.Helper()
	b, err := safetensors.EncodeF32(ts)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func f32(name string, shape []uint64, v ...float32) safetensors.F32 {
	return safetensors.F32{Name: name, Shape: shape, Data: v}
}

// twoLayer is 2 -> 2 (relu) -> 1: W1 = [[1, -1], [0.5, 2]], b1 = [0, -1],
// W2 = [[2, -3]], b2 = [0.5]; normalisation tensors beside it.
func twoLayer(t *testing.T, extra ...safetensors.F32) string {
	return write(t, append([]safetensors.F32{
		f32("l0.weight", []uint64{2, 2}, 1, -1, 0.5, 2),
		f32("l0.bias", []uint64{2}, 0, -1),
		f32("l1.weight", []uint64{1, 2}, 2, -3),
		f32("l1.bias", []uint64{1}, 0.5),
		f32("x_mean", []uint64{2}, 1, 1),
		f32("x_std", []uint64{2}, 2, 0.5),
		f32("y_mean", []uint64{1}, 10),
		f32("y_std", []uint64{1}, 2),
	}, extra...)...)
}

var twoSpec = nn.Spec{Layers: []nn.LayerSpec{
	{Weight: "l0.weight", Bias: "l0.bias", Activation: "relu"},
	{Weight: "l1.weight", Bias: "l1.bias"},
}}

func TestForward(t *testing.T) {
	path := twoLayer(t)
	norm := twoSpec
	norm.XMean, norm.XStd = "x_mean", "x_std"
	scaled := norm
	scaled.YMean, scaled.YStd = "y_mean", "y_std"
	one := write(t, f32("w", []uint64{1, 1}, 2), f32("b", []uint64{1}, 0))
	act := func(a string) nn.Spec {
		return nn.Spec{Layers: []nn.LayerSpec{{Weight: "w", Bias: "b", Activation: a}}}
	}
	cases := []struct {
		name string
		path string
		spec nn.Spec
		x    []float32
		want float64
	}{
		// h = relu([3-1, 1.5+2-1]) = [2, 2.5]; y = 4 - 7.5 + 0.5.
		{"relu both active", path, twoSpec, []float32{3, 1}, -3},
		// h = relu([0, -1]) = [0, 0]; y = b2.
		{"relu all off", path, twoSpec, []float32{0, 0}, 0.5},
		// h = relu([-3, 2.5]) = [0, 2.5]; y = -7.5 + 0.5.
		{"relu one off", path, twoSpec, []float32{-1, 2}, -7},
		// x' = ([3, 1.5] - 1) / [2, 0.5] = [1, 1]; h = [0, 1.5]; y = -4.5 + 0.5.
		{"input normalised", path, norm, []float32{3, 1.5}, -4},
		// as above, then y * 2 + 10.
		{"output scaled", path, scaled, []float32{3, 1.5}, 2},
		{"tanh", one, act("tanh"), []float32{0.5}, math.Tanh(1)},
		{"sigmoid", one, act("sigmoid"), []float32{0}, 0.5},
		{"sigmoid negative", one, act("sigmoid"), []float32{-1}, 1 / (1 + math.Exp(2))},
		{"identity", one, act("identity"), []float32{-1.25}, -2.5},
		{"empty activation is identity", one, act(""), []float32{4}, 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := nn.LoadMLP(tc.path, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			y, err := m.Forward(tc.x)
			if err != nil {
				t.Fatal(err)
			}
			if len(y) != 1 || math.Abs(float64(y[0])-tc.want) > 1e-6 {
				t.Fatalf("Forward(%v) = %v, want %v", tc.x, y, tc.want)
			}
			batch, err := m.ForwardBatch([][]float32{tc.x, tc.x})
			if err != nil || len(batch) != 2 || batch[1][0] != y[0] {
				t.Fatalf("ForwardBatch = %v, %v; want two rows of %v", batch, err, y)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	path := twoLayer(t,
		f32("wide.weight", []uint64{1, 3}, 1, 2, 3),
		f32("nan.weight", []uint64{1, 2}, float32(math.NaN()), 1),
		f32("inf.bias", []uint64{1}, float32(math.Inf(1))),
		f32("zero_std", []uint64{2}, 1, 0),
		f32("vec", []uint64{2}, 1, 1),
	)
	l := func(w, b, a string) nn.LayerSpec { return nn.LayerSpec{Weight: w, Bias: b, Activation: a} }
	cases := []struct {
		name string
		spec nn.Spec
		want string
	}{
		{"no layers", nn.Spec{}, "0 layers"},
		{"missing weight", nn.Spec{Layers: []nn.LayerSpec{l("nope", "l0.bias", "")}}, `"nope" is missing`},
		{"missing bias", nn.Spec{Layers: []nn.LayerSpec{l("l0.weight", "nope", "")}}, `"nope" is missing`},
		{"empty name", nn.Spec{Layers: []nn.LayerSpec{l("", "l0.bias", "")}}, "name is empty"},
		{"shapes do not chain", nn.Spec{Layers: []nn.LayerSpec{l("l0.weight", "l0.bias", "relu"), l("wide.weight", "l1.bias", "")}}, "takes 3 inputs"},
		{"bias wrong size", nn.Spec{Layers: []nn.LayerSpec{l("l0.weight", "l1.bias", "")}}, "want [2]"},
		{"weight not a matrix", nn.Spec{Layers: []nn.LayerSpec{l("vec", "l1.bias", "")}}, "want [out, in]"},
		{"nan weight", nn.Spec{Layers: []nn.LayerSpec{l("nan.weight", "l1.bias", "")}}, "non-finite"},
		{"inf bias", nn.Spec{Layers: []nn.LayerSpec{l("l1.weight", "inf.bias", "")}}, "non-finite"},
		{"unknown activation", nn.Spec{Layers: []nn.LayerSpec{l("l0.weight", "l0.bias", "gelu")}}, `"gelu"`},
		{"mean without std", nn.Spec{Layers: twoSpec.Layers, XMean: "x_mean"}, "go together"},
		{"zero std", nn.Spec{Layers: twoSpec.Layers, XMean: "x_mean", XStd: "zero_std"}, "must be > 0"},
		{"std wrong size", nn.Spec{Layers: twoSpec.Layers, YMean: "y_mean", YStd: "x_std"}, "want [1]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nn.LoadMLP(path, tc.spec)
			if !errors.Is(err, nn.ErrSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadMLP: %v, want ErrSpec mentioning %q", err, tc.want)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(bad, []byte("\x80\x04pickle"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := nn.LoadMLP(bad, twoSpec); !errors.Is(err, safetensors.ErrInvalid) {
		t.Fatalf("pickle bytes: %v, want safetensors.ErrInvalid", err)
	}
	if _, err := nn.LoadMLP(filepath.Join(dir, "absent"), twoSpec); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file: %v, want not-exist", err)
	}
}

func TestForwardWrongInput(t *testing.T) {
	m, err := nn.LoadMLP(twoLayer(t), twoSpec)
	if err != nil {
		t.Fatal(err)
	}
	if m.In() != 2 || m.Out() != 1 {
		t.Fatalf("In, Out = %d, %d; want 2, 1", m.In(), m.Out())
	}
	if _, err := m.Forward([]float32{1, 2, 3}); !errors.Is(err, nn.ErrSpec) {
		t.Fatalf("3 inputs: %v, want ErrSpec", err)
	}
	if _, err := m.ForwardBatch([][]float32{{1, 2}, {1}}); err == nil || !strings.Contains(err.Error(), "row 1") {
		t.Fatalf("batch with a short row: %v, want an error naming row 1", err)
	}
}

func BenchmarkForward(b *testing.B) {
	// 40 -> 64 -> 64 -> 1, the size of a value model.
	sizes := []int{40, 64, 64, 1}
	var ts []safetensors.F32
	var spec nn.Spec
	for i := 0; i+1 < len(sizes); i++ {
		w := make([]float32, sizes[i]*sizes[i+1])
		for j := range w {
			w[j] = float32(j%7) * 0.01
		}
		wn, bn := "w"+string(rune('0'+i)), "b"+string(rune('0'+i))
		ts = append(ts, f32(wn, []uint64{uint64(sizes[i+1]), uint64(sizes[i])}, w...), f32(bn, []uint64{uint64(sizes[i+1])}, make([]float32, sizes[i+1])...))
		spec.Layers = append(spec.Layers, nn.LayerSpec{Weight: wn, Bias: bn, Activation: "relu"})
	}
	buf, err := safetensors.EncodeF32(ts)
	if err != nil {
		b.Fatal(err)
	}
	f, err := safetensors.FromBytes(buf)
	if err != nil {
		b.Fatal(err)
	}
	m, err := nn.FromFile(f, spec)
	if err != nil {
		b.Fatal(err)
	}
	x := make([]float64, 40)
	var y []float64
	b.ReportAllocs()
	for b.Loop() {
		if y, err = m.Forward64(y, x); err != nil {
			b.Fatal(err)
		}
	}
}

func TestForwardBatch64(t *testing.T) {
	path := twoLayer(t)
	spec := twoSpec
	spec.XMean, spec.XStd, spec.YMean, spec.YStd = "x_mean", "x_std", "y_mean", "y_std"
	m, err := nn.LoadMLP(path, spec)
	if err != nil {
		t.Fatal(err)
	}
	// Hand values of TestForward's "output scaled" row ([3, 1.5] -> 2), and
	// [1, 1] -> x' = [0, 0], h = relu([0, -1]) = [0, 0], y = 0.5 x 2 + 10 = 11.
	xs := [][]float64{{3, 1.5}, {1, 1}, {3, 1.5}}
	got, err := m.ForwardBatch64(nil, xs)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{2, 11, 2} {
		if math.Abs(got[i]-want) > 1e-12 {
			t.Fatalf("row %d = %v, want %v", i, got[i], want)
		}
	}
	if got, err := m.ForwardBatch64(got, nil); err != nil || len(got) != 0 {
		t.Fatalf("no rows: %v, %v", got, err)
	}
	if _, err := m.ForwardBatch64(nil, [][]float64{{1, 2}, {1}}); !errors.Is(err, nn.ErrSpec) || !strings.Contains(err.Error(), "row 1") {
		t.Fatalf("short row: %v, want ErrSpec naming row 1", err)
	}
}

// randomNet writes a 5 -> 4 (tanh) -> 3 (relu) -> 2 network with input
// normalisation and output scaling, pseudo-random weights.
func randomNet(t *testing.T) *nn.MLP {
	t.Helper()
	r := rand.New(rand.NewPCG(3, 4))
	vals := func(n int, lo float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = lo + float32(r.Float64())
		}
		return v
	}
	path := write(t,
		f32("w0", []uint64{4, 5}, vals(20, -0.5)...), f32("b0", []uint64{4}, vals(4, -0.5)...),
		f32("w1", []uint64{3, 4}, vals(12, -0.5)...), f32("b1", []uint64{3}, vals(3, -0.5)...),
		f32("w2", []uint64{2, 3}, vals(6, -0.5)...), f32("b2", []uint64{2}, vals(2, -0.5)...),
		f32("xm", []uint64{5}, vals(5, -0.5)...), f32("xs", []uint64{5}, vals(5, 0.5)...),
		f32("ym", []uint64{2}, vals(2, -0.5)...), f32("ys", []uint64{2}, vals(2, 0.5)...))
	m, err := nn.LoadMLP(path, nn.Spec{Layers: []nn.LayerSpec{{Weight: "w0", Bias: "b0", Activation: "tanh"},
		{Weight: "w1", Bias: "b1", Activation: "relu"}, {Weight: "w2", Bias: "b2"}},
		XMean: "xm", XStd: "xs", YMean: "ym", YStd: "ys"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSplitMatchesForward(t *testing.T) {
	m := randomNet(t)
	r := rand.New(rand.NewPCG(5, 6))
	rows := make([][]float64, 6)
	for i := range rows {
		rows[i] = []float64{r.NormFloat64(), r.NormFloat64(), r.NormFloat64(), r.NormFloat64(), r.NormFloat64()}
	}
	for _, free := range [][]int{{}, {0, 1, 2, 3, 4}, {3, 1}, {4}} {
		s, err := m.Split(free)
		if err != nil {
			t.Fatal(err)
		}
		var fixed, freeRows [][]float64
		for _, x := range rows {
			h, err := s.Fixed(x)
			if err != nil {
				t.Fatal(err)
			}
			fr := make([]float64, len(free))
			for k, j := range free {
				fr[k] = x[j]
			}
			fixed, freeRows = append(fixed, h), append(freeRows, fr)
		}
		got, err := s.ForwardBatch(nil, fixed, freeRows)
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range rows {
			want, _ := m.Forward64(nil, x)
			for o := range want {
				if math.Abs(got[i*2+o]-want[o]) > 1e-12 {
					t.Fatalf("free %v row %d out %d: split %v, forward %v", free, i, o, got[i*2+o], want[o])
				}
			}
		}
	}
	for _, bad := range [][]int{{5}, {-1}, {1, 1}} {
		if _, err := m.Split(bad); !errors.Is(err, nn.ErrSpec) {
			t.Errorf("Split(%v): %v, want ErrSpec", bad, err)
		}
	}
	s, _ := m.Split([]int{0})
	if _, err := s.ForwardBatch(nil, [][]float64{{1, 2, 3, 4}}, [][]float64{{1, 2}}); !errors.Is(err, nn.ErrSpec) {
		t.Errorf("free row of the wrong length: %v, want ErrSpec", err)
	}
	if _, err := s.Fixed([]float64{1}); !errors.Is(err, nn.ErrSpec) {
		t.Errorf("Fixed on a short input: %v, want ErrSpec", err)
	}
}
