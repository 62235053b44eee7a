package infer_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/onnxrt/onnxtest"
	"github.com/esper-morph/esper/core/safetensors"
)

func ortLib(t testing.TB) string {
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

// transpose turns a row-major [r, c] matrix into [c, r].
func transpose(w []float32, r, c int) []float32 {
	out := make([]float32, len(w))
	for i := range r {
		for j := range c {
			out[j*r+i] = w[i*c+j]
		}
	}
	return out
}

// folder writes a model folder holding p: model.onnx, model.safetensors
// (nn.Linear layout, [out, in]) and a manifest naming the layers.
func folder(t testing.TB, p onnxtest.MLP, withONNX bool) string {
	t.Helper()
	dir := t.TempDir()
	st, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "l0.weight", Shape: []uint64{uint64(p.H), uint64(p.N)}, Data: transpose(p.W1, p.N, p.H)},
		{Name: "l0.bias", Shape: []uint64{uint64(p.H)}, Data: p.B1},
		{Name: "l1.weight", Shape: []uint64{uint64(p.K), uint64(p.H)}, Data: transpose(p.W2, p.H, p.K)},
		{Name: "l1.bias", Shape: []uint64{uint64(p.K)}, Data: p.B2},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := json.Marshal(map[string]any{
		"kind": "value_mlp", "schema": 1, "features": []string{"a"},
		"layers": []map[string]string{
			{"weight": "l0.weight", "bias": "l0.bias", "activation": "relu"},
			{"weight": "l1.weight", "bias": "l1.bias", "activation": "identity"},
		},
	})
	files := map[string][]byte{infer.SafetensorsFile: st, infer.ManifestFile: manifest}
	if withONNX {
		files[infer.ONNXFile] = p.ONNX()
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func randomMLP(seed uint64, n, h, k int) onnxtest.MLP {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	vals := func(c int) []float32 {
		v := make([]float32, c)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.3)
		}
		return v
	}
	return onnxtest.MLP{N: n, H: h, K: k, W1: vals(n * h), B1: vals(h), W2: vals(h * k), B2: vals(k)}
}

func TestRuntimesAgree(t *testing.T) {
	p := randomMLP(1, 20, 32, 1)
	dir := folder(t, p, true)
	models := map[string]infer.Model{}
	for _, rt := range []string{infer.Native, infer.ONNX} {
		m, err := infer.OpenDir(dir, infer.Options{Runtime: rt, ONNXRuntimeLib: ortLib(t)})
		if err != nil {
			t.Fatalf("%s: %v", rt, err)
		}
		defer m.Close()
		if m.Runtime() != rt || m.In() != 20 || m.Out() != 1 {
			t.Fatalf("%s: runtime %s, in %d, out %d", rt, m.Runtime(), m.In(), m.Out())
		}
		models[rt] = m
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for _, rows := range []int{1, 16, 200} {
		x := make([]float32, rows*20)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		want := p.Forward(x, rows)
		for rt, m := range models {
			got, err := m.Forward(x, rows)
			if err != nil {
				t.Fatalf("%s: %v", rt, err)
			}
			for i := range want {
				if math.Abs(float64(got[i])-want[i]) > 1e-5*(1+math.Abs(want[i])) {
					t.Fatalf("%s rows %d: y[%d] = %v, reference %v", rt, rows, i, got[i], want[i])
				}
			}
		}
	}
}

func TestOpenErrors(t *testing.T) {
	p := randomMLP(2, 4, 8, 1)
	noONNX := folder(t, p, false)
	wrongWidth := folder(t, p, false)
	q := randomMLP(3, 5, 8, 1) // an ONNX network of another input width
	if err := os.WriteFile(filepath.Join(wrongWidth, infer.ONNXFile), q.ONNX(), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		dir  string
		opts infer.Options
		code errcode.Code
		want string
	}{
		{"unknown runtime", noONNX, infer.Options{Runtime: "tflite"}, errcode.Invalid, `runtime "tflite"`},
		{"no manifest", t.TempDir(), infer.Options{}, errcode.NotFound, "manifest.json"},
		{"no onnx file", noONNX, infer.Options{Runtime: infer.ONNX, ONNXRuntimeLib: ortLib(t)}, errcode.NotFound, "model.onnx"},
		{"widths differ", wrongWidth, infer.Options{Runtime: infer.ONNX, ONNXRuntimeLib: ortLib(t)}, errcode.Invalid, "takes 5 inputs"},
	}
	for _, c := range cases {
		_, err := infer.OpenDir(c.dir, c.opts)
		if err == nil || errcode.Of(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (code %v), want %v and %q", c.name, err, errcode.Of(err), c.code, c.want)
		}
	}
}

func TestForwardErrors(t *testing.T) {
	dir := folder(t, randomMLP(4, 3, 4, 1), true)
	for _, rt := range []string{infer.Native, infer.ONNX} {
		m, err := infer.OpenDir(dir, infer.Options{Runtime: rt, ONNXRuntimeLib: ortLib(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Forward(make([]float32, 5), 2); !errors.Is(err, errcode.ErrInvalid) {
			t.Errorf("%s: short input: %v", rt, err)
		}
		if _, err := m.Forward(nil, 0); !errors.Is(err, errcode.ErrInvalid) {
			t.Errorf("%s: zero rows: %v", rt, err)
		}
		m.Close()
	}
}

// TestCloseWaitsForForwards closes an ONNX model while goroutines run it:
// every forward either succeeds or reports the model closed.
func TestCloseWaitsForForwards(t *testing.T) {
	dir := folder(t, randomMLP(5, 8, 16, 1), true)
	m, err := infer.OpenDir(dir, infer.Options{Runtime: infer.ONNX, ONNXRuntimeLib: ortLib(t)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := make([]float32, 8*10)
			for range 200 {
				if _, err := m.Forward(x, 10); err != nil {
					if !strings.Contains(err.Error(), "closed") {
						t.Error(err)
					}
					return
				}
			}
		}()
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// BenchmarkForward times one batched forward of a 40-32-32-1 ReLU network
// (the value model's default shape) on each runtime at 16 and 200 rows.
func BenchmarkForward(b *testing.B) {
	p := randomMLP(11, 40, 32, 1)
	dir := folder(b, p, true)
	for _, rt := range []string{infer.Native, infer.ONNX} {
		m, err := infer.OpenDir(dir, infer.Options{Runtime: rt, ONNXRuntimeLib: ortLib(b)})
		if err != nil {
			b.Fatal(err)
		}
		for _, rows := range []int{16, 200} {
			x := make([]float32, rows*40)
			for i := range x {
				x[i] = float32(i%13) / 13
			}
			b.Run(fmt.Sprintf("%s/%d", rt, rows), func(b *testing.B) {
				for b.Loop() {
					if _, err := m.Forward(x, rows); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		m.Close()
	}
}
