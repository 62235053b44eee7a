package value_test

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nn"
	"github.com/esper-morph/esper/core/safetensors"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/value"
)

func feature(t *testing.T, x []float64, name string) float64 {
	t.Helper()
	for i, n := range value.FeatureNames() {
		if n == name {
			return x[i]
		}
	}
	t.Fatalf("no feature %q", name)
	return 0
}

func TestFeatures(t *testing.T) {
	known := value.Candidate{
		Sample: karn.Sample{Template: "residual_mlp", ParamCount: 100,
			Signals: karn.Signals{"val_loss": 0.5, "train_loss": 0.4}},
		Epoch: 3, Epochs: 12, ParamsUsed: 50, MaxParams: 200, HostParams: 1000,
	}
	unknown := value.Candidate{Sample: karn.Sample{Template: "lowrank", ParamCount: 10}, Epoch: 0}
	overfit := value.Candidate{Sample: karn.Sample{Signals: karn.Signals{"val_loss": 1, "train_loss": 3}}, Epoch: 20, Epochs: 10,
		ParamsUsed: 500, MaxParams: 100}
	cases := []struct {
		name string
		c    value.Candidate
		want map[string]float64
	}{
		{"all known", known, map[string]float64{
			"epoch_frac": 0.25, "epochs_known": 1, "log_epoch": math.Log(4), "budget_used": 0.25, "budget_known": 1,
			"size_frac": math.Log(1.1), "grown_frac": math.Log(1.05), "gen_gap": 0.2, "tpl:residual_mlp": 1, "tpl:lowrank": 0,
			"log_params": math.Log(101)}},
		{"unknowns count 0", unknown, map[string]float64{
			"epoch_frac": 0, "epochs_known": 0, "log_epoch": 0, "budget_used": 0, "budget_known": 0,
			"size_frac": 0, "grown_frac": 0, "gen_gap": 0, "tpl:lowrank": 1}},
		{"clamped", overfit, map[string]float64{"epoch_frac": 1, "budget_used": 1, "gen_gap": -1, "log_epoch": math.Log(21)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := value.Features(&tc.c)
			if len(x) != len(value.FeatureNames()) {
				t.Fatalf("%d features, %d names", len(x), len(value.FeatureNames()))
			}
			for name, want := range tc.want {
				if got := feature(t, x, name); math.Abs(got-want) > 1e-12 {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
		})
	}
}

// record returns an outcome record: param_count 100 on a run whose wrapped
// layers have 1000 params, germinated at the end of epoch 3 (step 40: 10
// steps per epoch), with the given running spans' steps and contributions.
func record(t *testing.T, mod func(map[string]any)) *urza.Outcome {
	t.Helper()
	r := map[string]any{
		"run_id": "run-a", "seq": 0, "layer": 1, "layer_name": "fc1", "slot": 0, "policy": "heuristic", "reason": "plateau",
		"observation": map[string]any{"epoch": 3, "step": 40, "epochs": 16,
			"metrics":       map[string]any{"epoch": 3, "train_loss": 0.4, "val_loss": 0.5, "val_metric": 0.9},
			"layer_signals": map[string]any{"grad_norm": map[string]any{"mean": 2.0}},
			"params_used":   150, "max_params": 400, "host_params": 1000},
		"blueprint_id": strings.Repeat("a", 64), "template": "residual_mlp", "template_params": map[string]any{"width": 4},
		"blueprint": map[string]any{}, "host": map[string]any{"kind": "linear", "in": 8, "out": 8},
		"param_count": 100, "flops_per_sample": 200, "train_flops": 0,
		"contributions": []any{map[string]any{"epoch": 7, "val_loss": 0.8, "val_loss_without": 1.0, "delta_loss": 0.2}},
		"final_state":   "FOSSILIZED", "ended_by": "fossilized", "final_reason": "paid",
		"germinated_step": 40, "germinated_epoch": 3, "ended_step": 80, "ended_epoch": 7,
		"states": []any{
			map[string]any{"state": "GERMINATED", "from_step": 40, "to_step": 40, "steps": 0, "from_epoch": 3, "to_epoch": 3, "epochs": 0, "reason": "", "samples": 0, "train_flops": 0},
			map[string]any{"state": "TRAINING", "from_step": 40, "to_step": 60, "steps": 20, "from_epoch": 3, "to_epoch": 5, "epochs": 2, "reason": "", "samples": 0, "train_flops": 0},
			map[string]any{"state": "BLENDING", "from_step": 60, "to_step": 70, "steps": 10, "from_epoch": 5, "to_epoch": 6, "epochs": 1, "reason": "", "samples": 0, "train_flops": 0},
			map[string]any{"state": "HOLDING", "from_step": 70, "to_step": 80, "steps": 10, "from_epoch": 6, "to_epoch": 7, "epochs": 1, "reason": "", "samples": 0, "train_flops": 0},
		},
	}
	if mod != nil {
		mod(r)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	o, err := urza.ParseOutcome(b)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func obs(r map[string]any) map[string]any { return r["observation"].(map[string]any) }

func TestTargetOf(t *testing.T) {
	cases := []struct {
		name                     string
		mod                      func(map[string]any)
		gain, size, epochs, cost float64
		y                        float64
	}{
		// gain 0.2 / (0.8 + 0.2); 40 running steps at 10 per epoch; cost 0.1 x 4.
		{"fossilized", nil, 0.2, 0.1, 4, 0.4, 0.5},
		{"pruned before a measurement", func(r map[string]any) {
			r["contributions"] = []any{}
			r["final_state"], r["ended_by"] = "PRUNED", "pruned"
		}, 0, 0.1, 4, 0.4, 0},
		{"seed that hurt", func(r map[string]any) {
			r["contributions"] = []any{map[string]any{"epoch": 7, "val_loss": 1.1, "val_loss_without": 1.0, "delta_loss": -0.1}}
		}, -0.1, 0.1, 4, 0.4, -0.25},
		{"last measurement counts", func(r map[string]any) {
			r["contributions"] = []any{
				map[string]any{"epoch": 6, "val_loss": 0.5, "val_loss_without": 1.0, "delta_loss": 0.5},
				map[string]any{"epoch": 7, "val_loss": 0.9, "val_loss_without": 1.0, "delta_loss": 0.1}}
		}, 0.1, 0.1, 4, 0.4, 0.25},
		// step 0: the spans' epochs (2 + 1 + 1).
		{"germinated at step 0", func(r map[string]any) { obs(r)["step"] = 0 }, 0.2, 0.1, 4, 0.4, 0.5},
		// 20 steps per epoch (step 80 at epoch 3) halves the epochs.
		{"longer epochs", func(r map[string]any) { obs(r)["step"] = 80 }, 0.2, 0.1, 2, 0.2, 1},
		// cost 0.0001 x 4 is floored at MinCost 0.01.
		{"tiny seed", func(r map[string]any) { obs(r)["host_params"] = 1_000_000 }, 0.2, 1e-4, 4, 4e-4, 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := value.TargetOf(record(t, tc.mod))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"gain", got.Gain, tc.gain}, {"size_frac", got.SizeFrac, tc.size}, {"epochs", got.Epochs, tc.epochs},
				{"cost", got.Cost, tc.cost}, {"y", got.Y, tc.y}} {
				if math.Abs(c.got-c.want) > 1e-9 {
					t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
				}
			}
		})
	}
	_, err := value.TargetOf(record(t, func(r map[string]any) { delete(obs(r), "host_params") }))
	if !errors.Is(err, value.ErrNoScale) {
		t.Fatalf("no host_params: %v, want ErrNoScale", err)
	}
}

func TestFromOutcome(t *testing.T) {
	c, err := value.FromOutcome(record(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	// params_used 150 counts the seed's 100.
	if c.ParamsUsed != 50 || c.MaxParams != 400 || c.HostParams != 1000 || c.Epoch != 3 || c.Epochs != 16 {
		t.Fatalf("candidate %+v: want used 50, max 400, host 1000, epoch 3 of 16", c)
	}
	if c.Template != "residual_mlp" || c.Host.In != 8 || c.Params["width"] != int64(4) || c.Signals["grad_norm"] != 2 || c.Signals["val_loss"] != 0.5 {
		t.Fatalf("candidate %+v: blueprint, host or signals not read", c)
	}
}

func TestBuild(t *testing.T) {
	s, err := urza.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(mod func(map[string]any)) {
		o := record(t, mod)
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutOutcome(b); err != nil {
			t.Fatal(err)
		}
	}
	pred := 0.3
	put(func(r map[string]any) { r["policy"] = "learned"; r["prediction"] = pred })
	put(func(r map[string]any) { r["seq"], r["germinated_step"], r["ended_by"] = 1, 41, "in_flight" })
	put(func(r map[string]any) { r["seq"], r["germinated_step"] = 2, 42; delete(obs(r), "host_params") })
	put(func(r map[string]any) { r["seq"], r["germinated_step"], r["run_id"] = 3, 43, "run-b" })

	d, err := value.Build(s, value.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Rows) != 2 || d.Skipped["in_flight"] != 1 || d.Skipped["no_scale"] != 1 || d.Target != value.TargetName {
		t.Fatalf("rows %d, skipped %v: want 2 rows, 1 in flight, 1 without a scale", len(d.Rows), d.Skipped)
	}
	r := d.Rows[0]
	if r.Run != "run-a" || r.Seq != 0 || r.Y != 0.5 || r.Prediction == nil || *r.Prediction != pred || r.Policy != "learned" {
		t.Fatalf("row 0 = %+v", r)
	}
	c, _ := value.FromOutcome(record(t, nil))
	want := value.Features(&c)
	for i := range want {
		if r.X[i] != want[i] {
			t.Fatalf("row x[%d] = %v, Features gives %v: the two paths differ", i, r.X[i], want[i])
		}
	}
	for _, tc := range []struct {
		opts value.Options
		rows int
	}{
		{value.Options{Runs: []string{"run-b"}}, 1},
		{value.Options{Policies: []string{"heuristic"}}, 1},
		{value.Options{InFlight: true}, 3},
	} {
		d, err := value.Build(s, tc.opts)
		if err != nil || len(d.Rows) != tc.rows {
			t.Errorf("Build(%+v): %d rows, %v; want %d", tc.opts, len(d.Rows), err, tc.rows)
		}
	}
	if _, err := value.ParseOptions([]byte(`{"runs": ["a"], "bogus": 1}`)); !errors.Is(err, value.ErrOptions) {
		t.Fatalf("unknown option: %v, want ErrOptions", err)
	}
}

func TestLoadPredict(t *testing.T) {
	dir := t.TempDir()
	// value = 0.1 + 2 x epoch_frac - 1 x budget_used.
	if err := value.WriteLinear(dir, map[string]float64{"epoch_frac": 2, "budget_used": -1}, 0.1, map[string]any{"by": "hand"}); err != nil {
		t.Fatal(err)
	}
	m, err := value.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := value.Candidate{Epoch: 3, Epochs: 12, ParamsUsed: 50, MaxParams: 100}
	got, err := m.Predict(&c)
	if err != nil || math.Abs(got-(0.1+0.5-0.5)) > 1e-6 {
		t.Fatalf("Predict = %v, %v; want 0.1", got, err)
	}
	if err := value.WriteLinear(dir, map[string]float64{"nope": 1}, 0, nil); !errors.Is(err, value.ErrModel) {
		t.Fatalf("unknown feature: %v, want ErrModel", err)
	}
}

func TestLoadErrors(t *testing.T) {
	edit := func(t *testing.T, f func(m map[string]any)) string {
		dir := t.TempDir()
		if err := value.WriteLinear(dir, nil, 0, nil); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, value.ManifestFile)
		b, _ := os.ReadFile(p)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ = json.Marshal(m)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	cases := []struct {
		name string
		f    func(m map[string]any)
		want string
	}{
		{"kind", func(m map[string]any) { m["kind"] = "ppo" }, `kind "ppo"`},
		{"schema", func(m map[string]any) { m["schema"] = 2 }, "schema 2"},
		{"target", func(m map[string]any) { m["target"] = "gain" }, `target "gain"`},
		{"unknown feature", func(m map[string]any) { m["features"].([]any)[3] = "tpl:gone" }, `features[3] "tpl:gone" is not a feature`},
		{"feature twice", func(m map[string]any) { f := m["features"].([]any); f[1] = f[0] }, "listed twice"},
		{"no features", func(m map[string]any) { m["features"] = []any{} }, "no features"},
		{"more inputs than features", func(m map[string]any) { f := m["features"].([]any); m["features"] = f[:len(f)-1] }, "inputs to 1 outputs"},
		{"unknown field", func(m map[string]any) { m["extra"] = 1 }, "extra"},
		{"missing tensor", func(m map[string]any) {
			m["layers"] = []any{map[string]any{"weight": "l0.weight", "bias": "b9", "activation": "identity"}}
		}, `"b9" is missing`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := value.Load(edit(t, tc.f))
			if !errors.Is(err, value.ErrModel) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "esper simic train") {
				t.Fatalf("Load: %v, want ErrModel mentioning %q and how to train", err, tc.want)
			}
		})
	}
	if _, err := value.Load(t.TempDir()); !errors.Is(err, value.ErrModel) || !strings.Contains(err.Error(), "esper simic train") {
		t.Fatalf("empty folder: %v, want ErrModel saying how to train one", err)
	}
}

func TestPreparedAndBatchedMatchPredict(t *testing.T) {
	dir := t.TempDir()
	coef := map[string]float64{}
	for i, n := range value.FeatureNames() {
		coef[n] = float64(i%5) - 1.5 // every feature counts
	}
	if err := value.WriteLinear(dir, coef, 0.2, nil); err != nil {
		t.Fatal(err)
	}
	m, err := value.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	base, err := value.FromOutcome(record(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	p := m.Prepare(&base)
	var rows [][]float64
	var want []float64
	mods := []func(c *value.Candidate){
		func(c *value.Candidate) {},
		func(c *value.Candidate) { c.Epoch, c.Epochs, c.ParamsUsed = 7, 0, 390 },
		func(c *value.Candidate) { c.Signals = karn.Signals{"eff_rank": 3, "seed_gain": 0.4, "dead_frac": 0.5} },
		func(c *value.Candidate) { c.HostParams, c.MaxParams = 0, 0 },
	}
	for i, mod := range mods {
		c := base
		mod(&c)
		y, err := m.Predict(&c)
		if err != nil {
			t.Fatal(err)
		}
		x := make([]float64, len(value.FeatureNames()))
		m.FillPrepared(p, &c, x)
		full := value.Features(&c)
		for j := range x {
			if x[j] != full[j] {
				t.Fatalf("case %d: prepared feature %s = %v, Features gives %v", i, value.FeatureNames()[j], x[j], full[j])
			}
		}
		rows, want = append(rows, x), append(want, y)
	}
	got, err := m.PredictBatchX(nil, rows)
	if err != nil {
		t.Fatal(err)
	}
	var ps []*value.Prepared
	var ctx [][]float64
	for _, mod := range mods {
		c := base
		mod(&c)
		row := make([]float64, m.ContextLen())
		m.FillContext(&c, row)
		ps, ctx = append(ps, p), append(ctx, row)
	}
	split, err := m.PredictPrepared(nil, ps, ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-9*math.Max(1, math.Abs(want[i])) || math.Abs(split[i]-want[i]) > 1e-9*math.Max(1, math.Abs(want[i])) {
			t.Fatalf("row %d: batched %v, prepared %v, one by one %v", i, got[i], split[i], want[i])
		}
	}
}

// TestLoadReadsFeaturesByName: a model lists the features it reads in its
// own order, and may leave some out; predictions follow the names.
func TestLoadReadsFeaturesByName(t *testing.T) {
	dir := t.TempDir()
	names := []string{"budget_used", "epoch_frac"} // reversed from FeatureNames' order, two of them
	w, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "w", Shape: []uint64{1, 2}, Data: []float32{-1, 2}},
		{Name: "b", Shape: []uint64{1}, Data: []float32{0.1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(value.Manifest{Kind: value.Kind, Schema: value.Schema, Features: names, Target: value.TargetName,
		Spec: nn.Spec{Layers: []nn.LayerSpec{{Weight: "w", Bias: "b"}}}})
	if os.WriteFile(filepath.Join(dir, value.WeightsFile), w, 0o644) != nil || os.WriteFile(filepath.Join(dir, value.ManifestFile), doc, 0o644) != nil {
		t.Fatal("write")
	}
	m, err := value.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := value.Candidate{Epoch: 3, Epochs: 12, ParamsUsed: 50, MaxParams: 100}
	// 0.1 - 1 x budget_used (0.5) + 2 x epoch_frac (0.25) = 0.1.
	got, err := m.Predict(&c)
	if err != nil || math.Abs(got-0.1) > 1e-6 {
		t.Fatalf("Predict = %v, %v; want 0.1", got, err)
	}
	p := m.Prepare(&c)
	ctx := make([]float64, m.ContextLen())
	m.FillContext(&c, ctx)
	if y, err := m.PredictPrepared(nil, []*value.Prepared{p}, [][]float64{ctx}); err != nil || math.Abs(y[0]-0.1) > 1e-6 {
		t.Fatalf("PredictPrepared = %v, %v; want 0.1", y, err)
	}
}
