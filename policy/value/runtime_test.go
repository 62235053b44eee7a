package value_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/onnxrt/onnxtest"
	"github.com/esper-morph/esper/core/safetensors"
	"github.com/esper-morph/esper/policy/value"
)

func ortLib(t *testing.T) string {
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

// reluFolder writes a value model folder holding a random features-16-1
// ReLU network as model.safetensors (nn.Linear layout) and model.onnx.
func reluFolder(t *testing.T) string {
	t.Helper()
	n, h := len(value.FeatureNames()), 16
	rng := rand.New(rand.NewPCG(21, 22))
	vals := func(c int) []float32 {
		v := make([]float32, c)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.3)
		}
		return v
	}
	p := onnxtest.MLP{N: n, H: h, K: 1, W1: vals(n * h), B1: vals(h), W2: vals(h), B2: vals(1)}
	t1 := make([]float32, n*h) // W1 is [n, h] for MatMul; nn wants [h, n]
	for i := range n {
		for j := range h {
			t1[j*n+i] = p.W1[i*h+j]
		}
	}
	st, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "l0.weight", Shape: []uint64{uint64(h), uint64(n)}, Data: t1},
		{Name: "l0.bias", Shape: []uint64{uint64(h)}, Data: p.B1},
		{Name: "l1.weight", Shape: []uint64{1, uint64(h)}, Data: p.W2},
		{Name: "l1.bias", Shape: []uint64{1}, Data: p.B2},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := json.Marshal(map[string]any{
		"kind": value.Kind, "schema": value.Schema, "features": value.FeatureNames(), "target": value.TargetName,
		"layers": []map[string]string{
			{"weight": "l0.weight", "bias": "l0.bias", "activation": "relu"},
			{"weight": "l1.weight", "bias": "l1.bias", "activation": "identity"},
		},
	})
	dir := t.TempDir()
	for name, b := range map[string][]byte{"model.safetensors": st, "manifest.json": manifest, "model.onnx": p.ONNX()} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestONNXRuntimePredictsAsNative: every prediction path of a model loaded
// on the ONNX runtime (PredictX, PredictBatchX, PredictPrepared) gives the
// native runtime's values to float32 precision.
func TestONNXRuntimePredictsAsNative(t *testing.T) {
	dir := reluFolder(t)
	native, err := value.LoadOn(dir, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	onnx, err := value.LoadOn(dir, infer.Options{Runtime: infer.ONNX, ONNXRuntimeLib: ortLib(t)})
	if err != nil {
		t.Fatal(err)
	}
	if native.Runtime() != infer.Native || onnx.Runtime() != infer.ONNX {
		t.Fatalf("runtimes %s, %s", native.Runtime(), onnx.Runtime())
	}
	base, err := value.FromOutcome(record(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	cands := []value.Candidate{base, base, base}
	cands[1].Epoch, cands[1].ParamsUsed = 7, 390
	cands[2].Signals = karn.Signals{"eff_rank": 3, "seed_gain": 0.4, "dead_frac": 0.5}
	var xs, ctx [][]float64
	var ps []*value.Prepared
	var want []float64
	for i := range cands {
		y, err := native.Predict(&cands[i])
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, y)
		xs = append(xs, value.Features(&cands[i]))
		row := make([]float64, onnx.ContextLen())
		onnx.FillContext(&cands[i], row)
		ps, ctx = append(ps, onnx.Prepare(&base)), append(ctx, row)
	}
	one, err := onnx.PredictX(xs[1])
	if err != nil {
		t.Fatal(err)
	}
	batch, err := onnx.PredictBatchX(nil, xs)
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := onnx.PredictPrepared(nil, ps, ctx)
	if err != nil {
		t.Fatal(err)
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-5*(1+math.Abs(b)) }
	if !close(one, want[1]) {
		t.Fatalf("PredictX on onnx = %v, native %v", one, want[1])
	}
	distinct := false
	for i := range want {
		if !close(batch[i], want[i]) || !close(prepared[i], want[i]) {
			t.Fatalf("row %d: onnx batch %v, prepared %v, native %v", i, batch[i], prepared[i], want[i])
		}
		distinct = distinct || want[i] != want[0]
	}
	if !distinct {
		t.Fatal("the candidates' predictions are all equal: the comparison would not see a mixed-up row")
	}
}

func TestLoadOnErrors(t *testing.T) {
	dir := reluFolder(t)
	if err := os.Remove(filepath.Join(dir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	if _, err := value.LoadOn(dir, infer.Options{Runtime: infer.ONNX, ONNXRuntimeLib: ortLib(t)}); err == nil || !strings.Contains(err.Error(), "model.onnx") {
		t.Fatalf("no model.onnx: %v", err)
	}
	if _, err := value.LoadOn(dir, infer.Options{Runtime: "tflite"}); err == nil || !strings.Contains(err.Error(), "tflite") {
		t.Fatalf("unknown runtime: %v", err)
	}
}
