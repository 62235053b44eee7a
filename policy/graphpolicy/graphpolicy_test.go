package graphpolicy_test

import (
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// testGraph is a hand-made graph: two linear layers (2 slots each), a
// TRAINING seed at 1/0 with a measured contribution, a budget half spent.
func testGraph() *graphpolicy.Graph {
	nan := nissa.Num(math.NaN())
	sig := func(v float64) map[string]nissa.Num {
		return map[string]nissa.Num{"act_mean": nissa.Num(v), "act_var": 1, "dead_frac": 0, "grad_norm": nan,
			"weight_norm": 2, "eff_rank": 3, "seed_gain": nan}
	}
	templates := []string{"linear", "residual_mlp"}
	g := &graphpolicy.Graph{Epoch: 3, Layers: 2, Slots: 2, Ops: tamiyo.MoveOps(), Templates: templates, Sizes: tamiyo.SizeScales(),
		Nodes: []graphpolicy.Node{
			{Kind: "layer", Layer: 0, Slot: -1, Host: "linear", In: 8, Out: 16, Params: 144, Signals: sig(-0.5), Dormant: 2, Contribution: nan},
			{Kind: "layer", Layer: 1, Slot: -1, Host: "conv9d", In: 16, Out: 3, Params: 51, Signals: sig(4), Cooldown: 1, Dormant: 1, Contribution: nan},
			{Kind: "seed", Layer: 1, Slot: 0, Params: 99, State: "TRAINING", Alpha: 0.25, StepsInState: 7, EpochsInState: 2, Contribution: 0.05},
		},
		Edges: []graphpolicy.Edge{{From: 0, To: 1, Kind: "flow"}, {From: 2, To: 1, Kind: "seed"}},
		Global: graphpolicy.Global{ParamsUsed: 99, MaxParams: 200, Remaining: 101, Active: 1, MaxConcurrent: 2, Epochs: 12,
			ValLosses: []tamiyo.EpochValue{{Epoch: 0, Value: 2}, {Epoch: 1, Value: 1.5}, {Epoch: 2, Value: 1.2}, {Epoch: 3, Value: 1}}},
	}
	g.Masks = graphpolicy.Masks{Op: []bool{true, true, true, false, true},
		Target: map[string][]bool{"germinate": {true, true, false, true}, "prune": {false, false, true, false},
			"fossilize": {false, false, false, false}, "advance": {false, false, true, false}},
		Template: [][]bool{{true, true}, {true, false}},
		Size:     [][][]bool{{{true, true, true, false}, {false, true, true, true}}, {{true, false, false, false}, {false, false, false, false}}}}
	return g
}

func TestEncode(t *testing.T) {
	e, err := graphpolicy.Encode(testGraph())
	if err != nil {
		t.Fatal(err)
	}
	names := graphpolicy.NodeFeatureNames()
	if e.Nodes != 3 || e.Features != len(names) || len(e.X) != 3*len(names) {
		t.Fatalf("encoded shape %d x %d (%d values)", e.Nodes, e.Features, len(e.X))
	}
	feat := func(node int, name string) float64 {
		i := slices.Index(names, name)
		if i < 0 {
			t.Fatalf("no feature %q", name)
		}
		return e.X[node*e.Features+i]
	}
	symlog := func(x float64) float64 { return math.Copysign(math.Log1p(math.Abs(x)), x) }
	for _, tc := range []struct {
		node int
		name string
		want float64
	}{
		{0, "is_layer", 1}, {0, "is_seed", 0}, {0, "position", 0}, {1, "position", 1}, {2, "position", 1},
		{0, "host:linear", 1}, {1, "host:linear", 0}, {1, "host:other", 1}, {2, "host:other", 0},
		{0, "log_in", math.Log1p(8)}, {0, "log_out", math.Log1p(16)}, {2, "log_params", math.Log1p(99)},
		{0, "act_mean", symlog(-0.5)}, {0, "act_mean:measured", 1}, {1, "act_mean", symlog(4)},
		{0, "grad_norm", 0}, {0, "grad_norm:measured", 0}, {2, "act_mean:measured", 0},
		{1, "cooldown", 1}, {0, "dormant", 2}, {2, "state:TRAINING", 1}, {2, "state:DORMANT", 0}, {0, "state:DORMANT", 0},
		{2, "alpha", 0.25}, {2, "log_steps_in_state", math.Log1p(7)}, {2, "epochs_in_state", 2},
		{2, "contribution", symlog(0.05 / 1)}, {2, "contribution:measured", 1}, {0, "contribution:measured", 0},
	} {
		if got := feat(tc.node, tc.name); math.Abs(got-tc.want) > 1e-15 {
			t.Errorf("node %d %s = %v, want %v", tc.node, tc.name, got, tc.want)
		}
	}
	wantGlobal := []float64{3.0 / 12, 1, math.Log1p(99), 101.0 / 200, 0.5, symlog(1), (1.2 - 1) / 1.2, (2 - 1) / 2.0, 4.0 / 8}
	if len(e.Global) != len(graphpolicy.GlobalFeatureNames()) {
		t.Fatalf("%d global features, %d names", len(e.Global), len(graphpolicy.GlobalFeatureNames()))
	}
	for i, w := range wantGlobal {
		if math.Abs(e.Global[i]-w) > 1e-15 {
			t.Errorf("global %s = %v, want %v", graphpolicy.GlobalFeatureNames()[i], e.Global[i], w)
		}
	}
	if !slices.Equal(e.Src, []int{0, 2, 1, 1}) || !slices.Equal(e.Dst, []int{1, 1, 0, 2}) {
		t.Errorf("edges %v -> %v, want both directions", e.Src, e.Dst)
	}
	if !slices.Equal(e.TargetLayer, []int{0, 0, 1, 1}) || !slices.Equal(e.TargetSeed, []int{-1, -1, 2, -1}) {
		t.Errorf("targets %v %v", e.TargetLayer, e.TargetSeed)
	}
	bad := testGraph()
	bad.Nodes[2].State = "SPROUTING"
	if _, err := graphpolicy.Encode(bad); !errors.Is(err, graphpolicy.ErrGraph) {
		t.Errorf("Encode with an unknown state = %v, want ErrGraph", err)
	}
}

// model writes and loads a random model whose templates are the test graph's.
func model(t *testing.T, seed uint64) *graphpolicy.Model {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "m")
	if err := graphpolicy.WriteRandom(dir, 8, 2, seed, map[string]string{"by": "test"}); err != nil {
		t.Fatal(err)
	}
	m, err := graphpolicy.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// graphFor returns the test graph with the model's templates, every
// template and size legal where the test graph's first two are.
func graphFor(m *graphpolicy.Model) *graphpolicy.Graph {
	g := testGraph()
	g.Templates = m.Manifest().Templates
	k := len(g.Templates)
	for l := range g.Masks.Template {
		tm, sm := make([]bool, k), make([][]bool, k)
		for i := range k {
			tm[i] = g.Masks.Template[l][i%2]
			sm[i] = g.Masks.Size[l][i%2]
		}
		g.Masks.Template[l], g.Masks.Size[l] = tm, sm
	}
	return g
}

func TestDecideTakesTheMaskedArgmax(t *testing.T) {
	legalSeen := map[string]bool{}
	for seed := range uint64(12) {
		m := model(t, seed)
		g := graphFor(m)
		dense, a, err := m.Forward(g)
		if err != nil {
			t.Fatal(err)
		}
		// By hand from the dense logits: the best legal op, target, template, size.
		best := func(logits []float64, legal []bool) int {
			k := -1
			for i, ok := range legal {
				if ok && (k < 0 || logits[i] > logits[k]) {
					k = i
				}
			}
			return k
		}
		op := best(dense.Op, g.Masks.Op)
		if a.Op != g.Ops[op] {
			t.Fatalf("seed %d: op %s, want %s", seed, a.Op, g.Ops[op])
		}
		legalSeen[a.Op] = true
		if op == 0 {
			continue
		}
		tn := g.Layers * g.Slots
		target := best(dense.Target[(op-1)*tn:op*tn], g.Masks.Target[a.Op])
		if a.Layer*g.Slots+a.Slot != target {
			t.Fatalf("seed %d: target %d/%d, want %d", seed, a.Layer, a.Slot, target)
		}
		if a.Op == tamiyo.MoveGerminate {
			k := len(g.Templates)
			tpl := best(dense.Template[a.Layer*k:(a.Layer+1)*k], g.Masks.Template[a.Layer])
			z := best(dense.Size[(a.Layer*k+tpl)*4:(a.Layer*k+tpl+1)*4], g.Masks.Size[a.Layer][tpl])
			if a.Template != g.Templates[tpl] || a.Size != z {
				t.Fatalf("seed %d: %s size %d, want %s size %d", seed, a.Template, a.Size, g.Templates[tpl], z)
			}
		}
	}
	if legalSeen["fossilize"] || len(legalSeen) < 2 {
		t.Fatalf("ops taken %v: a masked op was taken, or the seeds do not vary the decision", legalSeen)
	}
	// Negative control: with every op masked but one illegal in truth, the
	// decision follows the masks, not the logits.
	m := model(t, 0)
	g := graphFor(m)
	g.Masks.Op = []bool{false, false, false, true, false}
	g.Masks.Target["fossilize"] = []bool{false, false, true, false}
	if a, err := m.Decide(g); err != nil || a.Op != "fossilize" || a.Layer != 1 || a.Slot != 0 {
		t.Fatalf("Decide = %+v, %v; want fossilize 1/0, the only legal move", a, err)
	}
	g.Masks.Op = []bool{false, false, false, false, false}
	if _, err := m.Decide(g); !errors.Is(err, graphpolicy.ErrGraph) {
		t.Fatalf("Decide with nothing legal = %v, want ErrGraph", err)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  func(t *testing.T) string
		want string
	}{
		{"missing folder", func(t *testing.T) string { return filepath.Join(t.TempDir(), "none") }, "esper simic ppo train"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := graphpolicy.Load(tc.dir(t))
			if !errors.Is(err, graphpolicy.ErrModel) {
				t.Fatalf("Load = %v, want ErrModel", err)
			}
		})
	}
	m := model(t, 1)
	g := graphFor(m)
	g.Templates = g.Templates[1:]
	if _, err := m.Decide(g); !errors.Is(err, graphpolicy.ErrGraph) {
		t.Fatalf("Decide on another library's templates = %v, want ErrGraph", err)
	}
}

// TestDeciderReusesItsBuffers: a Decider decides as the Model does (a
// germination, so every head is read), and once warm allocates nothing,
// encoding the graph itself or reading the graph's encoding.
func TestDeciderReusesItsBuffers(t *testing.T) {
	for seed := range uint64(12) {
		m := model(t, seed)
		g := graphFor(m)
		g.Masks.Op = []bool{false, true, false, false, false} // germinate only
		want, err := m.Decide(g)
		if err != nil {
			t.Fatal(err)
		}
		d := m.NewDecider()
		for range 2 {
			if got, err := d.Decide(g); err != nil || got != want {
				t.Fatalf("seed %d: Decider.Decide = %+v, %v; Model.Decide %+v", seed, got, err, want)
			}
		}
		if n := testing.AllocsPerRun(10, func() { _, _ = d.Decide(g) }); n != 0 {
			t.Fatalf("a warm Decider encoding the graph allocates %v times per decision, want 0", n)
		}
		enc, err := graphpolicy.Encode(g)
		if err != nil {
			t.Fatal(err)
		}
		g.Encoded = enc
		if n := testing.AllocsPerRun(10, func() { _, _ = d.Decide(g) }); n != 0 {
			t.Fatalf("a warm Decider on the graph's encoding allocates %v times per decision, want 0", n)
		}
		if seed == 0 { // the control: a Model's Decide makes its buffers anew
			if n := testing.AllocsPerRun(5, func() { _, _ = m.Decide(g) }); n < 5 {
				t.Fatalf("Model.Decide allocates %v times: the count cannot see buffers made per decision", n)
			}
		}
	}
}

// TestLoadOnRuntimes: the native runtime loads the weights alone; the ONNX
// runtime needs the folder's model.onnx (infer.ErrNoModel without one,
// before any library is loaded); another runtime is refused.
func TestLoadOnRuntimes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	if err := graphpolicy.WriteRandom(dir, 8, 2, 1, map[string]string{"by": "test"}); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []string{"", infer.Native} {
		m, err := graphpolicy.LoadOn(dir, infer.Options{Runtime: rt})
		if err != nil || m.Runtime() != infer.Native {
			t.Fatalf("LoadOn(%q) = %v; want the native runtime", rt, err)
		}
	}
	if _, err := graphpolicy.LoadOn(dir, infer.Options{Runtime: infer.ONNX}); !errors.Is(err, infer.ErrNoModel) ||
		!strings.Contains(err.Error(), graphpolicy.ONNXFile) {
		t.Fatalf("LoadOn(onnx) without model.onnx = %v, want ErrNoModel naming it", err)
	}
	if _, err := graphpolicy.LoadOn(dir, infer.Options{Runtime: "tflite"}); !errors.Is(err, graphpolicy.ErrModel) {
		t.Fatalf("LoadOn(tflite) = %v, want ErrModel", err)
	}
}

// TestEncodingJSONHasNoNulls: a one-layer graph without edges encodes its
// edge lists as [] (the trainer reads them as lists), fresh and into an
// encoding that held a larger graph.
func TestEncodingJSONHasNoNulls(t *testing.T) {
	g := testGraph()
	one := *g
	one.Layers, one.Nodes, one.Edges = 1, g.Nodes[:1], nil
	for _, into := range []bool{false, true} {
		e := &graphpolicy.Encoded{}
		if into {
			if err := graphpolicy.EncodeInto(e, g); err != nil {
				t.Fatal(err)
			}
		}
		if err := graphpolicy.EncodeInto(e, &one); err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "null") || !strings.Contains(string(b), `"src":[]`) {
			t.Fatalf("reused %v: %s", into, b)
		}
	}
}
