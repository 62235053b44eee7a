package session_test

import (
	"path/filepath"
	"strings"
	"testing"

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
}
