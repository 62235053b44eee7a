package tamiyo_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/nissa"
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
		c := newController(t, learnedConfig(dir), linearHosts(1))
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

func BenchmarkLearnedDecide(b *testing.B) {
	dir := linearModel(b, map[string]float64{"log_params": 0.01}, -1) // waits: every epoch scores every candidate
	c := newController(b, learnedConfig(dir), linearHosts(4))
	w := newWorld(4, 2)
	for l := range 4 {
		w.signal(l, nissa.GradNorm, float64(l))
	}
	o := w.obs(1)
	b.ReportAllocs()
	for b.Loop() {
		c.Decide(o)
	}
}
