package gnn_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/safetensors"
)

var testCfg = gnn.Config{NodeFeatures: 6, GlobalFeatures: 3, Hidden: 8, Rounds: 2, Templates: 3, Sizes: 4}

func load(t testing.TB, cfg gnn.Config, seed uint64, edit func([]safetensors.F32)) (*gnn.Net, map[string][]float64, error) {
	t.Helper()
	ts, err := gnn.RandomTensors(cfg, seed)
	if err != nil {
		t.Fatalf("RandomTensors: %v", err)
	}
	if edit != nil {
		edit(ts)
	}
	b, err := safetensors.EncodeF32(ts)
	if err != nil {
		t.Fatalf("EncodeF32: %v", err)
	}
	f, err := safetensors.FromBytes(b)
	if err != nil {
		t.Fatalf("FromBytes: %v", err)
	}
	w := map[string][]float64{}
	for _, x := range ts {
		v := make([]float64, len(x.Data))
		for i, d := range x.Data {
			v[i] = float64(d)
		}
		w[x.Name] = v
	}
	n, err := gnn.FromFile(f, cfg)
	return n, w, err
}

// graph returns a chain of layers with seeds at some slots, both directions
// of every edge, and random features.
func graph(cfg gnn.Config, layers, slots int, seedEvery int, rng *rand.Rand) *gnn.Input {
	in := &gnn.Input{Layers: layers, Features: cfg.NodeFeatures}
	nodes := layers
	in.TargetLayer = make([]int, layers*slots)
	in.TargetSeed = make([]int, layers*slots)
	var src, dst []int
	for l := 1; l < layers; l++ {
		src, dst = append(src, l-1), append(dst, l)
	}
	for t := range in.TargetLayer {
		in.TargetLayer[t], in.TargetSeed[t] = t/slots, -1
		if seedEvery > 0 && t%seedEvery == 0 {
			in.TargetSeed[t] = nodes
			src, dst = append(src, nodes), append(dst, t/slots)
			nodes++
		}
	}
	in.Src, in.Dst = append(append([]int{}, src...), dst...), append(append([]int{}, dst...), src...)
	in.Nodes = nodes
	in.X = make([]float64, nodes*cfg.NodeFeatures)
	for i := range in.X {
		in.X[i] = rng.NormFloat64()
	}
	in.Global = make([]float64, cfg.GlobalFeatures)
	for i := range in.Global {
		in.Global[i] = rng.NormFloat64()
	}
	return in
}

// The reference below is written from GraphPolicy's definition in PyTorch
// (concatenate, then Linear, tanh, Linear), independently of the package's
// decomposed first layers.
type ref struct {
	w map[string][]float64
	h int
}

func (r ref) linear(name string, x []float64) []float64 {
	w, b := r.w[name+".weight"], r.w[name+".bias"]
	out := make([]float64, len(b))
	for o := range b {
		s := b[o]
		for j, v := range x {
			s += w[o*len(x)+j] * v
		}
		out[o] = s
	}
	return out
}

func (r ref) mlp(name string, x []float64) []float64 {
	a := r.linear(name+".0", x)
	for i := range a {
		a[i] = math.Tanh(a[i])
	}
	return r.linear(name+".2", a)
}

func cat(xs ...[]float64) []float64 {
	var out []float64
	for _, x := range xs {
		out = append(out, x...)
	}
	return out
}

func (r ref) dense(cfg gnn.Config, in *gnn.Input) gnn.Dense {
	h := make([][]float64, in.Nodes)
	for i := range h {
		h[i] = r.mlp("embed", in.X[i*in.Features:(i+1)*in.Features])
	}
	glob := r.mlp("glob", in.Global)
	for round := range cfg.Rounds {
		next := make([][]float64, in.Nodes)
		for i := range h {
			agg, deg := make([]float64, r.h), 0.0
			for e, d := range in.Dst {
				if d == i {
					deg++
					for j := range agg {
						agg[j] += h[in.Src[e]][j]
					}
				}
			}
			for j := range agg {
				agg[j] /= math.Max(deg, 1)
			}
			m := r.mlp(fmt.Sprintf("message.%d", round), cat(h[i], agg, glob))
			x := make([]float64, r.h)
			mean, v := 0.0, 0.0
			for j := range x {
				x[j] = h[i][j] + m[j]
				mean += x[j] / float64(r.h)
			}
			for j := range x {
				v += (x[j] - mean) * (x[j] - mean) / float64(r.h)
			}
			for j := range x {
				x[j] = (x[j]-mean)/math.Sqrt(v+1e-5)*r.w[fmt.Sprintf("norm.%d.weight", round)][j] + r.w[fmt.Sprintf("norm.%d.bias", round)][j]
			}
			next[i] = x
		}
		h = next
	}
	mean, mx := make([]float64, r.h), make([]float64, r.h)
	copy(mx, h[0])
	for i := range h {
		for j, v := range h[i] {
			mean[j] += v / float64(len(h))
			mx[j] = math.Max(mx[j], v)
		}
	}
	summary := cat(mean, mx, glob)
	d := gnn.Dense{Value: r.mlp("value_head", summary)[0], Op: r.mlp("op_head", summary)}
	t := len(in.TargetLayer)
	d.Target = make([]float64, gnn.NumTargetOps*t)
	for i := range t {
		seed, has := make([]float64, r.h), 0.0
		if s := in.TargetSeed[i]; s >= 0 {
			seed, has = h[s], 1
		}
		out := r.mlp("target_head", cat(h[in.TargetLayer[i]], seed, []float64{has}, summary))
		for k, v := range out {
			d.Target[k*t+i] = v
		}
	}
	temb := r.w["template_embed.weight"]
	for l := range in.Layers {
		d.Template = append(d.Template, r.mlp("template_head", cat(h[l], summary))...)
		for k := range cfg.Templates {
			d.Size = append(d.Size, r.mlp("size_head", cat(h[l], temb[k*r.h:(k+1)*r.h], summary))...)
		}
	}
	return d
}

func worst(a, b gnn.Dense) float64 {
	w := math.Abs(a.Value - b.Value)
	for _, p := range [][2][]float64{{a.Op, b.Op}, {a.Target, b.Target}, {a.Template, b.Template}, {a.Size, b.Size}} {
		if len(p[0]) != len(p[1]) {
			return math.Inf(1)
		}
		for i := range p[0] {
			w = math.Max(w, math.Abs(p[0][i]-p[1][i]))
		}
	}
	return w
}

func TestForwardMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		layers, slots, seedEach int
		rounds                  int
	}{
		{"one layer, no edges", 1, 1, 0, 2},
		{"chain with seeds", 3, 2, 3, 2},
		{"no message passing", 4, 2, 2, 0},
		{"forty layers", 40, 2, 5, 3},
		{"features 0 at every node", 6, 2, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testCfg
			cfg.Rounds = tc.rounds
			n, w, err := load(t, cfg, 7, nil)
			if err != nil {
				t.Fatalf("FromFile: %v", err)
			}
			in := graph(cfg, tc.layers, tc.slots, tc.seedEach, rand.New(rand.NewPCG(1, 2)))
			if tc.name == "features 0 at every node" { // the embedding drops them (one-hots a graph does not use)
				for i := range in.Nodes {
					in.X[i*in.Features+1], in.X[i*in.Features+4] = 0, 0
				}
			}
			st, err := n.Run(in)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			got, want := st.Dense(), ref{w: w, h: cfg.Hidden}.dense(cfg, in)
			if d := worst(got, want); d > 1e-12 {
				t.Fatalf("forward differs from the reference by %g", d)
			}
			// Decide's per-head calls agree with Dense.
			if st.Value() != got.Value || worst(gnn.Dense{Value: got.Value, Op: st.OpLogits(), Target: st.TargetLogits(),
				Template: got.Template, Size: got.Size}, got) > 1e-12 {
				t.Fatalf("per-head outputs differ from Dense")
			}
			for l := range tc.layers {
				tl := st.TemplateLogits(l)
				for k := range cfg.Templates {
					if math.Abs(tl[k]-got.Template[l*cfg.Templates+k]) > 1e-12 {
						t.Fatalf("TemplateLogits(%d)[%d] = %v, Dense has %v", l, k, tl[k], got.Template[l*cfg.Templates+k])
					}
					sl := st.SizeLogits(l, k)
					for z := range cfg.Sizes {
						if math.Abs(sl[z]-got.Size[(l*cfg.Templates+k)*cfg.Sizes+z]) > 1e-12 {
							t.Fatalf("SizeLogits(%d, %d)[%d] differs from Dense", l, k, z)
						}
					}
				}
			}
			// Negative control: another seed's weights give another forward.
			_, w2, _ := load(t, cfg, 8, nil)
			if d := worst(got, ref{w: w2, h: cfg.Hidden}.dense(cfg, in)); d < 1e-6 {
				t.Fatalf("other weights give the same outputs (%g): the comparison cannot fail", d)
			}
		})
	}
}

func TestLoadAndInputErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func([]safetensors.F32)
	}{
		{"missing tensor", func(ts []safetensors.F32) { ts[0].Name = "embed.0.weightx" }},
		{"non-finite weight", func(ts []safetensors.F32) { ts[3].Data[0] = float32(math.NaN()) }},
		{"wrong shape", func(ts []safetensors.F32) {
			for i := range ts {
				if ts[i].Name == "template_embed.weight" {
					ts[i].Shape = []uint64{ts[i].Shape[1], ts[i].Shape[0]}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := load(t, testCfg, 1, tc.edit); !errors.Is(err, gnn.ErrSpec) {
				t.Fatalf("FromFile = %v, want ErrSpec", err)
			}
		})
	}
	n, _, err := load(t, testCfg, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*gnn.Input)
	}{
		{"feature width", func(in *gnn.Input) { in.Features--; in.X = in.X[:in.Nodes*in.Features] }},
		{"global width", func(in *gnn.Input) { in.Global = in.Global[1:] }},
		{"edge outside", func(in *gnn.Input) { in.Src[0] = in.Nodes }},
		{"target layer outside", func(in *gnn.Input) { in.TargetLayer[0] = in.Layers }},
		{"no nodes", func(in *gnn.Input) { in.Nodes, in.X = 0, nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := graph(testCfg, 3, 2, 2, rand.New(rand.NewPCG(3, 4)))
			tc.edit(in)
			if _, err := n.Run(in); !errors.Is(err, gnn.ErrSpec) {
				t.Fatalf("Run = %v, want ErrSpec", err)
			}
		})
	}
}

// benchGraph returns the benchmarks' network and 200-node graph (100 layers
// x 2 slots, a seed in every layer's first slot; hidden 16, 2 rounds, the
// library's 46 node and 9 global features, 14 templates).
func benchGraph(b *testing.B) (*gnn.Net, *gnn.Input) {
	cfg := testCfg
	cfg.NodeFeatures, cfg.GlobalFeatures, cfg.Hidden, cfg.Templates = 46, 9, 16, 14
	n, _, err := load(b, cfg, 1, nil)
	if err != nil {
		b.Fatal(err)
	}
	in := graph(cfg, 100, 2, 2, rand.New(rand.NewPCG(5, 6)))
	if in.Nodes != 200 {
		b.Fatalf("%d nodes, want 200", in.Nodes)
	}
	return n, in
}

// decisionHeads computes the heads a decision reads.
func decisionHeads(st *gnn.State) {
	st.Value()
	st.OpLogits()
	st.TargetLogits()
	st.TemplateLogits(3)
	st.SizeLogits(3, 1)
}

// processCPU is the CPU time this process has used (every thread).
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports cpu-ns/op, the process's CPU time per op since start
// (on a shared machine the wall clock counts other work too).
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((processCPU(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// BenchmarkGraphForward times the decision's forward on a 200-node graph
// (benchGraph) on a new State each time (Net.Run): message passing, the
// value, op and target heads, one template and one size head.
func BenchmarkGraphForward(b *testing.B) {
	n, in := benchGraph(b)
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		st, err := n.Run(in)
		if err != nil {
			b.Fatal(err)
		}
		decisionHeads(st)
	}
	reportCPU(b, cpu)
}

// BenchmarkGraphForwardWarm is BenchmarkGraphForward on one State run again
// (Net.RunInto), as a session's decisions run it.
func BenchmarkGraphForwardWarm(b *testing.B) {
	n, in := benchGraph(b)
	var st gnn.State
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		if err := n.RunInto(&st, in); err != nil {
			b.Fatal(err)
		}
		decisionHeads(&st)
	}
	reportCPU(b, cpu)
}

// TestWarmForwardDoesNotAllocate: a State run again on a graph of the same
// size allocates nothing (a per-node or per-round allocation fails it).
func TestWarmForwardDoesNotAllocate(t *testing.T) {
	cfg := testCfg
	n, _, err := load(t, cfg, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := graph(cfg, 40, 2, 2, rand.New(rand.NewPCG(5, 6)))
	var st gnn.State
	if err := n.RunInto(&st, in); err != nil {
		t.Fatal(err)
	}
	decisionHeads(&st)
	allocs := testing.AllocsPerRun(20, func() {
		if err := n.RunInto(&st, in); err != nil {
			t.Fatal(err)
		}
		decisionHeads(&st)
	})
	if allocs != 0 {
		t.Fatalf("a warm forward and the decision's heads allocate %v times per run, want 0", allocs)
	}
	// Negative control: a new State per run allocates its buffers.
	fresh := testing.AllocsPerRun(5, func() {
		st, err := n.Run(in)
		if err != nil {
			t.Fatal(err)
		}
		decisionHeads(st)
	})
	if fresh < 10 {
		t.Fatalf("a new State allocates %v times: the count cannot tell buffers from none", fresh)
	}
}

// TestRunIntoReusesAcrossSizes: a State run on a larger graph, then a
// smaller one with a feature 0 everywhere, then the larger again gives
// Run's outputs each time.
func TestRunIntoReusesAcrossSizes(t *testing.T) {
	n, _, err := load(t, testCfg, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st gnn.State
	for i, layers := range []int{12, 3, 12} {
		in := graph(testCfg, layers, 2, 3, rand.New(rand.NewPCG(uint64(i), 9)))
		if i == 1 { // a feature 0 at every node: the embedding's columns change, then come back
			for j := range in.Nodes {
				in.X[j*in.Features+2] = 0
			}
		}
		if err := n.RunInto(&st, in); err != nil {
			t.Fatal(err)
		}
		fresh, err := n.Run(in)
		if err != nil {
			t.Fatal(err)
		}
		if d := worst(st.Dense(), fresh.Dense()); d != 0 {
			t.Fatalf("graph %d (%d layers): a reused State differs from a new one by %g", i, layers, d)
		}
	}
}
