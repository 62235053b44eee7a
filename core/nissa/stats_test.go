package nissa_test

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/nissa"
)

func newStats(t testing.TB, cfg nissa.Config) *nissa.Stats {
	t.Helper()
	s, err := nissa.New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return s
}

// buffer returns a signals buffer for layers with every entry NaN.
func buffer(layers int) []float32 {
	b := make([]float32, nissa.Len(layers))
	for i := range b {
		b[i] = float32(math.NaN())
	}
	return b
}

func TestLayout(t *testing.T) {
	if nissa.Len(0) != 2 || nissa.Len(3) != 23 {
		t.Fatalf("Len: %d %d", nissa.Len(0), nissa.Len(3))
	}
	if nissa.Index(1, nissa.GradNorm) != 2+7+3 {
		t.Fatalf("Index = %d", nissa.Index(1, nissa.GradNorm))
	}
	names := []string{"act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain"}
	for i, n := range names {
		if nissa.Signal(i).String() != n {
			t.Fatalf("Signal(%d) = %v", i, nissa.Signal(i))
		}
	}
	if nissa.TrainLossMean.String() != "train_loss_mean" || nissa.NonfiniteCount.String() != "nonfinite_count" {
		t.Fatal("global names")
	}
}

func TestConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  nissa.Config
		ok   bool
	}{
		{"defaults", nissa.Config{}, true},
		{"layers", nissa.Config{Layers: 4, Window: 8, EWMA: 1}, true},
		{"negative layers", nissa.Config{Layers: -1}, false},
		{"window 1", nissa.Config{Window: 1}, false},
		{"window huge", nissa.Config{Window: nissa.MaxWindow + 1}, false},
		{"ewma above 1", nissa.Config{EWMA: 1.5}, false},
		{"ewma negative", nissa.Config{EWMA: -0.1}, false},
		{"ewma NaN", nissa.Config{EWMA: math.NaN()}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := nissa.New(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("New = %v", err)
			}
			if err != nil && (!errors.Is(err, nissa.ErrConfig) || errcode.Of(err) != errcode.Invalid) {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (s.Config().Window < 2 || s.Config().EWMA <= 0) {
				t.Fatalf("defaults not applied: %+v", s.Config())
			}
		})
	}
}

func TestIngestRejects(t *testing.T) {
	s := newStats(t, nissa.Config{Layers: 2})
	cases := []struct {
		name string
		step int64
		buf  []float32
	}{
		{"empty", 1, nil},
		{"short", 1, make([]float32, 15)},
		{"long", 1, make([]float32, 17)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Ingest(tc.step, tc.buf)
			if !errors.Is(err, nissa.ErrLayout) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if err := s.Ingest(5, make([]float32, 16)); err != nil {
		t.Fatal(err)
	}
	if err := s.Ingest(4, make([]float32, 16)); !errors.Is(err, nissa.ErrLayout) {
		t.Fatalf("step backwards: %v", err)
	}
	if s.Ingests() != 1 || s.LastStep() != 5 {
		t.Fatalf("refused buffers were counted: %d %d", s.Ingests(), s.LastStep())
	}
	want := "nissa: signals buffer has 15 floats, want 16 (2 globals + 7 x 2 layers): nissa: bad signals buffer"
	if err := s.Ingest(6, make([]float32, 15)); err.Error() != want {
		t.Fatalf("message %q", err)
	}
}

// naive computes what Summary must report from the measurements kept.
func naive(xs []float64, steps []int64) (mean, variance, slope float64) {
	n := float64(len(xs))
	for _, x := range xs {
		mean += x
	}
	mean /= n
	for _, x := range xs {
		variance += (x - mean) * (x - mean)
	}
	variance /= n - 1
	var sm float64
	for _, st := range steps {
		sm += float64(st)
	}
	sm /= n
	var sxy, sxx float64
	for i, x := range xs {
		dx := float64(steps[i]) - sm
		sxy += dx * (x - mean)
		sxx += dx * dx
	}
	return mean, variance, sxy / sxx
}

func TestRollingStatistics(t *testing.T) {
	const window = 8
	s := newStats(t, nissa.Config{Layers: 3, Window: window, EWMA: 0.25})
	rng := rand.New(rand.NewPCG(1, 2))
	var kept []float64
	var keptSteps []int64
	ewma := math.NaN()
	nonfinite := 0
	buf := buffer(3)
	for step := int64(1); step <= 40; step++ {
		for i := range buf {
			buf[i] = float32(math.NaN())
		}
		idx := nissa.Index(1, nissa.GradNorm)
		switch {
		case step%5 == 0: // not measured
		case step%7 == 0:
			buf[idx] = float32(math.Inf(1))
			nonfinite++
		default:
			v := float32(2*float64(step) + rng.NormFloat64())
			buf[idx] = v
			kept = append(kept, float64(v))
			keptSteps = append(keptSteps, step)
			if math.IsNaN(ewma) {
				ewma = float64(v)
			} else {
				ewma += 0.25 * (float64(v) - ewma)
			}
		}
		buf[nissa.Index(2, nissa.DeadFrac)] = 0.5
		if err := s.Ingest(step, buf); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := s.Layer(1, nissa.GradNorm)
	if !ok {
		t.Fatal("Layer out of range")
	}
	win, winSteps := kept[len(kept)-window:], keptSteps[len(kept)-window:]
	mean, variance, slope := naive(win, winSteps)
	if got.N != window || got.Total != int64(len(kept)) || got.Nonfinite != int64(nonfinite) {
		t.Fatalf("counts %+v", got)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"mean", got.Mean, mean}, {"var", got.Var, variance}, {"slope", got.Slope, slope},
		{"ewma", got.EWMA, ewma}, {"last", got.Last, kept[len(kept)-1]},
	} {
		if math.Abs(c.got-c.want) > 1e-9*math.Max(1, math.Abs(c.want)) {
			t.Errorf("%s = %.12g, want %.12g", c.name, c.got, c.want)
		}
	}
	if got.Slope < 1.5 || got.Slope > 2.5 {
		t.Errorf("slope %v of a 2-per-step trend", got.Slope)
	}
	if got.LastStep != keptSteps[len(keptSteps)-1] {
		t.Errorf("last step %d", got.LastStep)
	}
	flat, _ := s.Layer(2, nissa.DeadFrac)
	if flat.Mean != 0.5 || flat.Var != 0 || flat.Slope != 0 {
		t.Errorf("constant series %+v", flat)
	}
	none, _ := s.Layer(0, nissa.ActMean)
	if none.N != 0 || !math.IsNaN(none.Mean) || !math.IsNaN(none.EWMA) || !math.IsNaN(none.Slope) {
		t.Errorf("unmeasured series %+v", none)
	}
	if _, ok := s.Layer(3, nissa.ActMean); ok {
		t.Error("layer 3 of 3 must be out of range")
	}
	if _, ok := s.Global(nissa.Global(2)); ok {
		t.Error("global 2 must be out of range")
	}
}

func TestSingleAndSameStep(t *testing.T) {
	s := newStats(t, nissa.Config{Layers: 0, Window: 4})
	if err := s.Ingest(3, []float32{1.5, 0}); err != nil {
		t.Fatal(err)
	}
	g, _ := s.Global(nissa.TrainLossMean)
	if g.N != 1 || g.Mean != 1.5 || !math.IsNaN(g.Var) || !math.IsNaN(g.Slope) {
		t.Fatalf("one sample %+v", g)
	}
	if err := s.Ingest(3, []float32{2.5, 0}); err != nil {
		t.Fatal(err)
	}
	g, _ = s.Global(nissa.TrainLossMean)
	if g.Mean != 2 || g.Var != 0.5 || !math.IsNaN(g.Slope) {
		t.Fatalf("two samples at one step %+v", g)
	}
}

func TestStateRoundTrip(t *testing.T) {
	const layers = 2
	a := newStats(t, nissa.Config{Layers: layers, Window: 5, EWMA: 0.3})
	rng := rand.New(rand.NewPCG(7, 7))
	feed := func(s *nissa.Stats, from, to int64, r *rand.Rand) {
		t.Helper()
		buf := make([]float32, nissa.Len(layers))
		for step := from; step < to; step++ {
			for i := range buf {
				buf[i] = float32(r.NormFloat64())
				if r.IntN(4) == 0 {
					buf[i] = float32(math.NaN())
				}
			}
			if err := s.Ingest(step, buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	feed(a, 0, 13, rng)
	b, err := json.Marshal(a.State())
	if err != nil {
		t.Fatal(err)
	}
	var st nissa.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	c, err := nissa.FromState(st)
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := rand.New(rand.NewPCG(9, 9)), rand.New(rand.NewPCG(9, 9))
	feed(a, 13, 20, r1)
	feed(c, 13, 20, r2)
	sa, _ := json.Marshal(a.Snapshot(nil))
	sc, _ := json.Marshal(c.Snapshot(nil))
	if string(sa) != string(sc) {
		t.Fatalf("restored stats diverge:\n%s\n%s", sa, sc)
	}
	if !reflect.DeepEqual(a.State(), c.State()) {
		t.Fatal("states differ after identical input")
	}
}

func TestFromStateRejects(t *testing.T) {
	good := func() nissa.State {
		s := newStats(t, nissa.Config{Layers: 1, Window: 3})
		for step := int64(1); step <= 4; step++ {
			if err := s.Ingest(step, []float32{1, 0, 1, 2, 3, 4, 5, 6, 7}); err != nil {
				t.Fatal(err)
			}
		}
		return s.State()
	}
	cases := []struct {
		name string
		edit func(*nissa.State)
	}{
		{"bad window", func(s *nissa.State) { s.Window = 1 }},
		{"missing ewma", func(s *nissa.State) { s.EWMA = 0 }},
		{"series count", func(s *nissa.State) { s.Series = s.Series[:3] }},
		{"values vs steps", func(s *nissa.State) { s.Series[0].Steps = s.Series[0].Steps[:1] }},
		{"over window", func(s *nissa.State) {
			s.Series[0].Values = append(s.Series[0].Values, 1)
			s.Series[0].Steps = append(s.Series[0].Steps, 4)
		}},
		{"NaN value", func(s *nissa.State) { s.Series[1].Values[0] = float32(math.NaN()) }},
		{"steps unordered", func(s *nissa.State) { s.Series[1].Steps[0] = 4 }},
		{"total too small", func(s *nissa.State) { s.Series[2].Total = 1 }},
		{"inf ewma", func(s *nissa.State) { s.Series[2].EWMA = math.Inf(1) }},
		{"future step", func(s *nissa.State) { s.Series[2].LastStep = 99 }},
		{"negative ingests", func(s *nissa.State) { s.Ingests = -1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := good()
			tc.edit(&st)
			if _, err := nissa.FromState(st); errcode.Of(err) != errcode.Invalid {
				t.Fatalf("FromState = %v", err)
			}
		})
	}
}

func TestSnapshotJSON(t *testing.T) {
	s := newStats(t, nissa.Config{Layers: 1, Window: 4})
	buf := []float32{2, 0, 1, 2, float32(math.NaN()), 4, 5, 6, 7}
	for step := int64(1); step <= 2; step++ {
		if err := s.Ingest(step, buf); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(s.Snapshot([]string{"fc1"}))
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Window  int `json:"window"`
		Ingests int `json:"ingests"`
		Global  map[string]map[string]any
		Layers  []struct {
			Name    string
			Signals map[string]map[string]any
		}
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if back.Window != 4 || back.Ingests != 2 || len(back.Layers) != 1 || back.Layers[0].Name != "fc1" {
		t.Fatalf("snapshot %s", b)
	}
	if back.Global["train_loss_mean"]["mean"] != 2.0 || back.Layers[0].Signals["grad_norm"]["slope"] != 0.0 {
		t.Fatalf("values %s", b)
	}
	dead := back.Layers[0].Signals["dead_frac"]
	if dead["mean"] != nil || dead["n"] != 0.0 {
		t.Fatalf("unmeasured series must encode null: %v", dead)
	}
	var sum nissa.Summary
	if err := json.Unmarshal(mustJSON(t, back.Layers[0].Signals["dead_frac"]), &sum); err != nil || !math.IsNaN(sum.Mean) {
		t.Fatalf("summary decode %+v %v", sum, err)
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIngestDoesNotAllocate(t *testing.T) {
	s := newStats(t, nissa.Config{Layers: 8})
	buf := make([]float32, nissa.Len(8))
	step := int64(0)
	n := testing.AllocsPerRun(1000, func() {
		step++
		buf[3] = float32(step)
		if err := s.Ingest(step, buf); err != nil {
			panic(err)
		}
	})
	if n != 0 {
		t.Fatalf("Ingest allocates %v per call", n)
	}
	n = testing.AllocsPerRun(100, func() {
		if _, ok := s.Layer(3, nissa.GradNorm); !ok {
			panic("range")
		}
	})
	if n != 0 {
		t.Fatalf("Layer allocates %v per call", n)
	}
}

func FuzzStateJSON(f *testing.F) {
	s, _ := nissa.New(nissa.Config{Layers: 1, Window: 3})
	_ = s.Ingest(1, []float32{1, 0, 1, 2, 3, 4, 5, 6, 7})
	seed, _ := json.Marshal(s.State())
	f.Add(seed)
	f.Add([]byte(`{"layers":0,"window":2,"ewma":0.5,"series":[{"values":[1],"steps":[0],"total":1},{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st nissa.State
		if json.Unmarshal(b, &st) != nil {
			return
		}
		if st.Layers > 64 || st.Window > 4096 {
			return // keep allocations small; the bounds themselves are tested above
		}
		s, err := nissa.FromState(st)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v: %v", errcode.Of(err), err)
			}
			return
		}
		if _, err := json.Marshal(s.Snapshot(nil)); err != nil {
			t.Fatalf("snapshot of a restored state: %v", err)
		}
		if err := s.Ingest(s.LastStep(), make([]float32, nissa.Len(st.Layers))); err != nil {
			t.Fatalf("ingest after restore: %v", err)
		}
	})
}

// TestLayerMeanIsLayersMean: LayerMean is Layer's Summary.Mean bit for bit
// (NaN where nothing is measured) on windows that filled, wrapped and hold
// one value, and refuses what Layer refuses; it does not allocate.
func TestLayerMeanIsLayersMean(t *testing.T) {
	const layers, window = 3, 5
	s := newStats(t, nissa.Config{Layers: layers, Window: window})
	rng := rand.New(rand.NewPCG(3, 4))
	buf := buffer(layers)
	check := func(step int64) {
		t.Helper()
		for l := range layers {
			for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
				sum, _ := s.Layer(l, sig)
				got, ok := s.LayerMean(l, sig)
				if !ok || math.Float64bits(got) != math.Float64bits(sum.Mean) && !(math.IsNaN(got) && math.IsNaN(sum.Mean)) {
					t.Fatalf("step %d: LayerMean(%d, %v) = %v, %v; Layer's mean is %v", step, l, sig, got, ok, sum.Mean)
				}
			}
		}
	}
	check(0)
	for step := int64(1); step <= 12; step++ {
		for i := range buf {
			buf[i] = float32(math.NaN())
		}
		buf[nissa.Index(0, nissa.GradNorm)] = float32(rng.NormFloat64() * 1e3)
		if step%3 == 0 {
			buf[nissa.Index(2, nissa.EffRank)] = float32(rng.Float64())
		}
		if step == 12 {
			buf[nissa.Index(1, nissa.ActMean)] = 0.1
		}
		if err := s.Ingest(step, buf); err != nil {
			t.Fatal(err)
		}
		check(step)
	}
	if _, ok := s.LayerMean(layers, nissa.GradNorm); ok {
		t.Fatalf("LayerMean accepts layer %d of %d", layers, layers)
	}
	if n := testing.AllocsPerRun(100, func() { s.LayerMean(0, nissa.GradNorm) }); n != 0 {
		t.Fatalf("LayerMean allocates %v per call", n)
	}
}
