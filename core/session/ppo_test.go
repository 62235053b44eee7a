package session_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// legalUnder says whether the decision d is allowed by g's masks.
func legalUnder(g session.Graph, d session.DecisionResult) bool {
	if d.Op == tamiyo.Wait {
		return true
	}
	t := d.Layer*g.Slots + d.Slot
	op := d.Op.String()
	if !g.Masks.Target[op][t] {
		return false
	}
	if d.Op != tamiyo.Germinate {
		return true
	}
	for k, name := range g.Templates {
		if name == d.Template {
			for z, n := range g.Masks.SizeParams[d.Layer][k] {
				if n == d.ParamCount && g.Masks.Size[d.Layer][k][z] {
					return true
				}
			}
		}
	}
	return false
}

// TestPPOPolicyMovesThroughTheGates runs a ppo session beside a manual twin
// that receives the same steps and metrics: each ppo decision must be the
// network's masked argmax on the twin's graph (the graph the session decided
// on), legal under its masks, and carried out; the twin then proposes it.
func TestPPOPolicyMovesThroughTheGates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ppo")
	tensors, err := gnn.RandomTensors(graphpolicy.LibraryManifest(8, 2).Config(), 4)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tensors {
		if tensors[i].Name == "op_head.2.bias" {
			tensors[i].Data[1] += 3 // a policy that grows when it may, so that the run has seeds to judge
		}
	}
	if err := graphpolicy.WriteTensors(dir, 8, 2, tensors, nil); err != nil {
		t.Fatal(err)
	}
	m, err := graphpolicy.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg.Governor.MaxConcurrent = 2
	cfg.Governor.MaxParams = 4000
	cfg.Controller.Epochs = 10
	twin := newSession(t, cfg)
	cfg.Policy = "ppo"
	cfg.Controller.PPOModel = dir
	s := newSession(t, cfg)
	moves := map[tamiyo.Op]int{}
	for epoch := range 10 {
		step(t, s, 6)
		step(t, twin, 6)
		res, err := s.EndEpoch(metrics(epoch, 1.0/float64(epoch+1)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := twin.EndEpoch(metrics(epoch, 1.0/float64(epoch+1))); err != nil {
			t.Fatal(err)
		}
		if len(res.Decisions) == 0 || len(res.Decisions) > session.PPOMovesPerEpoch {
			t.Fatalf("epoch %d: %d decisions", epoch, len(res.Decisions))
		}
		for _, d := range res.Decisions {
			g := graph(t, twin)
			a, err := m.Decide(&g)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(d.Reason, "ppo: ") || !d.Applied || a.Op != d.Op.String() || (d.Op != tamiyo.Wait && (a.Layer != d.Layer || a.Slot != d.Slot)) {
				t.Fatalf("epoch %d: decision %+v, the network's move on the twin's graph is %+v", epoch, d, a)
			}
			if !legalUnder(g, d) {
				t.Fatalf("epoch %d: decision %+v is not legal under the graph's masks", epoch, d)
			}
			if d.ValueEstimate == nil || *d.ValueEstimate != a.Value {
				t.Fatalf("epoch %d: decision %+v carries value estimate %v, the network's is %v", epoch, d,
					d.ValueEstimate, a.Value)
			}
			moves[d.Op]++
			if d.Op == tamiyo.Wait {
				break
			}
			p := session.Proposal{Op: a.Op, Layer: a.Layer, Slot: a.Slot, Template: a.Template, Size: a.Size}
			if r := propose(t, twin, p); !r.Applied {
				t.Fatalf("the twin refused %+v: %s", p, r.Refused)
			}
		}
	}
	if moves[tamiyo.Germinate] == 0 || len(moves) < 2 {
		t.Fatalf("moves %v: the policy should grow and do something else", moves)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters.Refused != 0 || st.Counters.Germinations != int64(moves[tamiyo.Germinate]) {
		t.Fatalf("counters %+v for moves %v", st.Counters, moves)
	}
	// Resumed on another machine: the model is installed elsewhere and the
	// saving machine's folder is gone; the restoring session's folder holds.
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(t.TempDir(), "installed")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	cfg.Controller.PPOModel = moved
	r := newSession(t, cfg)
	if err := r.Restore(snap); err != nil {
		t.Fatalf("restore with the model at its new folder: %v", err)
	}
}

// ppoBenchSession returns a ppo session on 100 linear 64x64 layers x 2
// slots with a seed in every layer's first slot (a 200-node graph) and a
// network of the shipped model's size (hidden 16, 2 rounds) with random
// weights biased to wait, so that each end of epoch decides once: the
// graph, its encoding, the forward and the masked argmax.
func ppoBenchSession(b testing.TB) *session.Session {
	dir := filepath.Join(b.TempDir(), "ppo")
	tensors, err := gnn.RandomTensors(graphpolicy.LibraryManifest(16, 2).Config(), 1)
	if err != nil {
		b.Fatal(err)
	}
	for i := range tensors {
		if tensors[i].Name == "op_head.2.bias" {
			tensors[i].Data[0] += 100
		}
	}
	if err := graphpolicy.WriteTensors(dir, 16, 2, tensors, nil); err != nil {
		b.Fatal(err)
	}
	cfg := session.Config{SlotsPerLayer: 2, Policy: "ppo", TrainSteps: 1 << 30}
	cfg.Controller.PPOModel = dir
	cfg.Governor.MaxConcurrent = 200
	for l := range 100 {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l),
			Host: blueprint.Host{Kind: "linear", In: 64, Out: 64}, Params: 64*64 + 64})
	}
	s := newSession(b, cfg)
	for l := range 100 {
		germinate(b, s, l, 0, `{"template": "lowrank"}`)
	}
	return s
}

// BenchmarkPPODecide measures an end of epoch of the ppo policy on a
// 200-node graph (see ppoBenchSession): Session.EndEpoch with one decision.
// Besides ns/op (wall time) it reports cpu-ns/op, the process's CPU time
// (on a shared machine the wall clock counts other work too).
func BenchmarkPPODecide(b *testing.B) {
	s := ppoBenchSession(b)
	epoch := 0
	if _, err := s.EndEpoch(metrics(epoch, 1)); err != nil { // the masks' table of seed sizes is filled once
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU(b)
	defer func() { b.ReportMetric(float64((processCPU(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		epoch++
		res, err := s.EndEpoch(metrics(epoch, 1))
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Decisions) != 1 || res.Decisions[0].Op != tamiyo.Wait {
			b.Fatalf("decisions %+v, want one wait", res.Decisions)
		}
	}
}

// maxPPOAllocs bounds the allocations of an end of epoch of the ppo policy
// on the 200-node graph (ppoBenchSession): the decision reuses its graph,
// masks, encoding and network state, so what allocates is the end of
// epoch's own work (12 at this writing); anything per node (100 layers,
// 100 seeds) exceeds it.
const maxPPOAllocs = 40

// TestPPODecisionAllocatesNothingPerNode: a warm ppo session's end of epoch
// allocates at most maxPPOAllocs times. The control: building the same
// graph anew (Session.Graph, a caller's copy with a signals map per layer)
// allocates more than that, so the count sees allocations per node.
func TestPPODecisionAllocatesNothingPerNode(t *testing.T) {
	s := ppoBenchSession(t)
	epoch := 0
	end := func() {
		epoch++
		res, err := s.EndEpoch(metrics(epoch, 1))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Decisions) != 1 || res.Decisions[0].Op != tamiyo.Wait {
			t.Fatalf("decisions %+v, want one wait", res.Decisions)
		}
	}
	end()
	end()
	if n := testing.AllocsPerRun(20, end); n > maxPPOAllocs {
		t.Fatalf("an end of epoch of the ppo policy on 200 nodes allocates %v times, want at most %d", n, maxPPOAllocs)
	}
	fresh := testing.AllocsPerRun(5, func() {
		if _, err := s.Graph(); err != nil {
			t.Fatal(err)
		}
	})
	if fresh <= maxPPOAllocs {
		t.Fatalf("a new graph allocates %v times, within the bound %d: the bound cannot catch allocation per node", fresh, maxPPOAllocs)
	}
}
