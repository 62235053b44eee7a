package tamiyo_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/nn"
	"github.com/esper-morph/esper/core/safetensors"
	"github.com/esper-morph/esper/policy/tamiyo"
	"github.com/esper-morph/esper/policy/value"
)

// linearModel writes a hand-set value model (bias + sum coef x feature) and
// returns its folder.
func linearModel(t testing.TB, coef map[string]float64, bias float64) string {
	t.Helper()
	dir := t.TempDir()
	if err := value.WriteLinear(dir, coef, bias, map[string]any{"by": "hand"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func learnedConfig(dir string) tamiyo.Config {
	return tamiyo.Config{Kind: tamiyo.Learned, ValueModel: dir, Params: blueprint.Params{"width": int64(8)}}
}

func widthOf(t testing.TB, d tamiyo.Decision) int64 {
	t.Helper()
	w, ok := d.Params["width"].(int64)
	if !ok {
		t.Fatalf("decision %+v has no width", d)
	}
	return w
}

func TestLearnedDecides(t *testing.T) {
	cases := []struct {
		name  string
		coef  map[string]float64
		bias  float64
		setup func(w *world)
		// want: -1 waits; else the layer, the width and the predicted value.
		layer int
		width int64
		value float64
	}{
		// Every candidate predicts 0.5 >= 0.01: the first (layer 0, the
		// configured template at half size, the first option) grows at epoch 0,
		// with no plateau to wait for.
		{"constant high grows at once", nil, 0.5, nil, 0, 4, 0.5},
		{"constant low waits", nil, -0.5, nil, -1, 0, 0},
		{"just under the threshold waits", nil, 0.0099, nil, -1, 0, 0},
		// value = 10 x [residual_mlp] + 0.1 x log_params: the largest
		// residual_mlp (width 16, twice the configured 8) wins.
		{"prefers size", map[string]float64{"tpl:residual_mlp": 10, "log_params": 0.1}, 0, nil, 0, 16, -1},
		// value = 10 x [residual_mlp] - 0.1 x log_params + 1: the smallest (half).
		{"prefers small", map[string]float64{"tpl:residual_mlp": 10, "log_params": -0.1}, 1, nil, 0, 4, -1},
		// value = grad_norm feature: log(1 + 3) at layer 2 beats log(1 + 1).
		{"prefers the layer with the larger gradient", map[string]float64{"grad_norm": 1}, 0, func(w *world) {
			w.signal(0, nissa.GradNorm, 1)
			w.signal(1, nissa.GradNorm, 1)
			w.signal(2, nissa.GradNorm, 3)
		}, 2, 4, math.Log(4)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, learnedConfig(linearModel(t, tc.coef, tc.bias)), linearHosts(3))
			w := newWorld(3, 1)
			if tc.setup != nil {
				tc.setup(w)
			}
			ds := c.Decide(w.obs(1.0))
			if len(ds) != 1 {
				t.Fatalf("decisions %+v, want one", ds)
			}
			d := ds[0]
			if tc.layer < 0 {
				if d.Op != tamiyo.Wait || !strings.Contains(d.Reason, "under value_threshold") {
					t.Fatalf("decision %+v, want a wait under the threshold", d)
				}
				return
			}
			if d.Op != tamiyo.Germinate || d.Layer != tc.layer || widthOf(t, d) != tc.width || d.PredictedValue == nil {
				t.Fatalf("decision %v at layer %d width %v (%s), want germinate at layer %d width %d", d.Op, d.Layer, d.Params["width"], d.Reason, tc.layer, tc.width)
			}
			if tc.value >= 0 && math.Abs(*d.PredictedValue-tc.value) > 1e-6 {
				t.Fatalf("predicted value %v, want %v", *d.PredictedValue, tc.value)
			}
			if !strings.HasPrefix(d.Reason, "learned: ") || d.Blueprint == nil || d.Blueprint.ParamCount != d.ParamCount {
				t.Fatalf("decision %+v: reason or blueprint missing", d)
			}
		})
	}
}

func TestLearnedThresholdAndTiming(t *testing.T) {
	// value = epoch_frac - 0.25: waits until a quarter of the run is done
	// (epoch 3 of 10 is the first past it).
	dir := linearModel(t, map[string]float64{"epoch_frac": 1}, -0.25)
	th := 0.0
	cfg := learnedConfig(dir)
	cfg.ValueThreshold, cfg.Epochs = &th, 10
	c := newController(t, cfg, linearHosts(1))
	w := newWorld(1, 1)
	for epoch := range 3 {
		if d := only(t, c.Decide(w.obs(1.0)), tamiyo.Wait); d.Op != tamiyo.Wait {
			t.Fatalf("epoch %d: %+v", epoch, d)
		}
		w.apply(t, c, nil)
	}
	d := only(t, c.Decide(w.obs(1.0)), tamiyo.Germinate)
	if math.Abs(*d.PredictedValue-0.05) > 1e-6 {
		t.Fatalf("epoch 3: predicted %v, want 0.05 (0.3 - 0.25)", *d.PredictedValue)
	}
}

func TestLearnedGovernorRules(t *testing.T) {
	dir := linearModel(t, nil, 1)
	t.Run("concurrency", func(t *testing.T) {
		c := newController(t, learnedConfig(dir), linearHosts(2))
		w := newWorld(2, 1)
		w.apply(t, c, c.Decide(w.obs(1)))
		d := c.Decide(w.obs(1))
		if len(d) != 1 || d[0].Op != tamiyo.Wait || !strings.Contains(d[0].Reason, "max_concurrent") {
			t.Fatalf("with a seed in flight: %+v, want a wait on max_concurrent", d)
		}
	})
	t.Run("budget", func(t *testing.T) {
		cfg := learnedConfig(dir)
		cfg.Governor.MaxParams = 600 // width 4 needs 2 x 32 x 4 + 4 + 32 = 292; width 8 needs 584; 16 needs 1168
		c := newController(t, cfg, linearHosts(1))
		d := only(t, c.Decide(newWorld(1, 1).obs(1)), tamiyo.Germinate)
		if d.ParamCount > 600 {
			t.Fatalf("germinated %d params over a 600 budget", d.ParamCount)
		}
	})
	t.Run("cooldown", func(t *testing.T) {
		cfg := learnedConfig(dir)
		cfg.Governor.CooldownEpochs = intp(2) // one epoch of rest after the germination's
		c := newController(t, cfg, linearHosts(1))
		w := newWorld(1, 2)
		w.apply(t, c, c.Decide(w.obs(1)))
		w.seed(0, 0).State = 0 // as if the seed were gone: only the cooldown stands in the way
		w.seed(0, 0).ParamCount = 0
		w.used = 0
		d := c.Decide(w.obs(1))
		if len(d) != 1 || d[0].Op != tamiyo.Wait || !strings.Contains(d[0].Reason, "cooldown") {
			t.Fatalf("right after a germination: %+v, want a wait on the cooldown", d)
		}
	})
}

func TestLearnedNeedsAModel(t *testing.T) {
	_, err := tamiyo.New(tamiyo.Config{Kind: tamiyo.Learned}, linearHosts(1))
	if !errors.Is(err, tamiyo.ErrConfig) || !strings.Contains(err.Error(), "esper simic train") {
		t.Fatalf("no model: %v, want ErrConfig saying how to train one", err)
	}
	_, err = tamiyo.New(learnedConfig(t.TempDir()), linearHosts(1))
	if !errors.Is(err, value.ErrModel) || !strings.Contains(err.Error(), "esper simic train") {
		t.Fatalf("empty folder: %v, want ErrModel saying how to train one", err)
	}
}

// mlpModel writes a value model of the shipped kind's size (features ->
// 64 -> 64 -> 1, relu, with input normalisation) with fixed pseudo-random
// weights, and returns its folder.
func mlpModel(t testing.TB) string {
	t.Helper()
	names := value.FeatureNames()
	sizes := []int{len(names), 64, 64, 1}
	var ts []safetensors.F32
	spec := nn.Spec{XMean: "x_mean", XStd: "x_std"}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+1 < len(sizes); i++ {
		w := make([]float32, sizes[i]*sizes[i+1])
		for j := range w {
			w[j] = float32(r.NormFloat64() / math.Sqrt(float64(sizes[i])))
		}
		wn, bn := fmt.Sprintf("l%d.weight", i), fmt.Sprintf("l%d.bias", i)
		ts = append(ts, safetensors.F32{Name: wn, Shape: []uint64{uint64(sizes[i+1]), uint64(sizes[i])}, Data: w},
			safetensors.F32{Name: bn, Shape: []uint64{uint64(sizes[i+1])}, Data: make([]float32, sizes[i+1])})
		act := nn.ReLU
		if i+2 == len(sizes) {
			act = nn.Identity
		}
		spec.Layers = append(spec.Layers, nn.LayerSpec{Weight: wn, Bias: bn, Activation: act})
	}
	ones := make([]float32, len(names))
	for i := range ones {
		ones[i] = 1
	}
	ts = append(ts, safetensors.F32{Name: "x_mean", Shape: []uint64{uint64(len(names))}, Data: make([]float32, len(names))},
		safetensors.F32{Name: "x_std", Shape: []uint64{uint64(len(names))}, Data: ones})
	b, err := safetensors.EncodeF32(ts)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(value.Manifest{Kind: value.Kind, Schema: value.Schema, Features: names, Spec: spec, Target: value.TargetName})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if os.WriteFile(filepath.Join(dir, value.WeightsFile), b, 0o644) != nil || os.WriteFile(filepath.Join(dir, value.ManifestFile), doc, 0o644) != nil {
		t.Fatal("write model")
	}
	return dir
}

// BenchmarkLearnedDecide times one learned decision on 8 layers x 2 slots
// (linear 32 -> 32 hosts: the configured template at three sizes and the
// other templates at their defaults, 7 candidates a layer, 56 in all) with
// a features -> 64 -> 64 -> 1 model.
func BenchmarkLearnedDecide(b *testing.B) {
	c := newController(b, learnedConfig(mlpModel(b)), linearHosts(8))
	w := newWorld(8, 2)
	for l := range 8 {
		w.signal(l, nissa.GradNorm, float64(l))
		w.signal(l, nissa.SeedGain, 0.1*float64(l))
	}
	o := w.obs(1)
	b.ReportAllocs()
	for b.Loop() {
		c.Decide(o)
	}
}

// TestLearnedPredictionMatchesTheModel checks the decision path's batched,
// prepared scoring against value.Model.Predict on the same candidate built
// by hand (a 64 x 64 MLP: the split first layer and the batched layers
// after it are exercised).
func TestLearnedPredictionMatchesTheModel(t *testing.T) {
	dir := mlpModel(t)
	th := -1e9 // always grow: the best candidate is returned with its prediction
	cfg := learnedConfig(dir)
	cfg.ValueThreshold, cfg.Epochs, cfg.Governor.MaxParams = &th, 20, 100_000
	hosts := linearHosts(3)
	c := newController(t, cfg, hosts)
	w := newWorld(3, 1)
	w.epoch = 4
	for l := range 3 {
		w.signal(l, nissa.GradNorm, 0.5+float64(l))
		w.signal(l, nissa.SeedGain, 0.2*float64(l))
		w.signal(l, nissa.EffRank, 10)
	}
	o := w.obs(0.7)
	o.HostParams = 3 * (32*32 + 32)
	d := only(t, c.Decide(o), tamiyo.Germinate)
	m, err := value.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cand := value.Candidate{
		Sample: karn.Sample{Template: d.Blueprint.Template, Params: d.Blueprint.Params, Host: hosts[d.Layer],
			ParamCount: d.Blueprint.ParamCount, FLOPsPerSample: d.Blueprint.FLOPsPerSample,
			Signals: karn.Signals{"grad_norm": 0.5 + float64(d.Layer), "seed_gain": 0.2 * float64(d.Layer), "eff_rank": 10,
				"val_loss": 0.7, "train_loss": 0.7}},
		Epoch: 4, Epochs: 20, MaxParams: 100_000, HostParams: o.HostParams,
	}
	want, err := m.Predict(&cand)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(*d.PredictedValue-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Fatalf("decision predicted %v, the model predicts %v for the same candidate", *d.PredictedValue, want)
	}
}
