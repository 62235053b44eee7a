package session_test

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func graph(t *testing.T, s *session.Session) session.Graph {
	t.Helper()
	g, err := s.Graph()
	if err != nil {
		t.Fatalf("Graph: %v", err)
	}
	return g
}

func propose(t *testing.T, s *session.Session, p session.Proposal) session.ProposalResult {
	t.Helper()
	r, err := s.Propose(p)
	if err != nil {
		t.Fatalf("Propose(%+v): %v", p, err)
	}
	return r
}

func templateIndex(t *testing.T, g session.Graph, name string) int {
	t.Helper()
	k := slices.Index(g.Templates, name)
	if k < 0 {
		t.Fatalf("template %s not in %v", name, g.Templates)
	}
	return k
}

// advanceTo germinates layer/slot with the linear template and advances it
// to state.
func advanceTo(t *testing.T, s *session.Session, layer, slot int, state lifecycle.State) {
	t.Helper()
	if r := propose(t, s, session.Proposal{Op: "germinate", Layer: layer, Slot: slot, Template: "lowrank", Size: 2}); !r.Applied {
		t.Fatalf("germinate %d/%d refused: %s", layer, slot, r.Refused)
	}
	for _, st := range []lifecycle.State{lifecycle.Training, lifecycle.Blending, lifecycle.Holding} {
		if st > state {
			return
		}
		if _, err := s.Advance(layer, slot, ""); err != nil {
			t.Fatalf("advance %d/%d to %s: %v", layer, slot, st, err)
		}
	}
}

func TestGraphShape(t *testing.T) {
	s := newSession(t, baseConfig())
	g := graph(t, s)
	if g.Layers != 2 || g.Slots != 2 || len(g.Nodes) != 2 {
		t.Fatalf("fresh graph: %d layers x %d slots, %d nodes; want 2 x 2, 2 nodes", g.Layers, g.Slots, len(g.Nodes))
	}
	if g.Nodes[0].Name != "fc1" || g.Nodes[0].In != 16 || g.Nodes[0].Out != 32 || g.Nodes[0].Params != 544 || g.Nodes[0].Dormant != 2 {
		t.Errorf("layer node 0 = %+v", g.Nodes[0])
	}
	if want := []session.GraphEdge{{From: 0, To: 1, Kind: "flow"}}; !slices.Equal(g.Edges, want) {
		t.Errorf("edges = %v, want %v", g.Edges, want)
	}
	if want := []bool{true, true, false, false, false}; !slices.Equal(g.Masks.Op, want) {
		t.Errorf("op mask = %v, want %v (wait, germinate)", g.Masks.Op, want)
	}
	if g.Masks.Template[0][templateIndex(t, g, "conv3x3")] || !g.Masks.Template[0][templateIndex(t, g, "residual_mlp")] {
		t.Errorf("linear layer 0: conv3x3 legal or residual_mlp not: %v", g.Masks.Template[0])
	}
	advanceTo(t, s, 1, 1, lifecycle.Blending)
	g = graph(t, s)
	if len(g.Nodes) != 3 || g.Nodes[2].Kind != "seed" || g.Nodes[2].State != "BLENDING" || g.Nodes[2].Template != "lowrank" {
		t.Fatalf("after a seed: nodes %+v", g.Nodes)
	}
	if want := (session.GraphEdge{From: 2, To: 1, Kind: "seed"}); !slices.Contains(g.Edges, want) {
		t.Errorf("edges %v lack %v", g.Edges, want)
	}
	// One seed in flight and max_concurrent 1: nothing may germinate.
	if g.Masks.Op[1] || !g.Masks.Op[2] || g.Masks.Op[3] || !g.Masks.Op[4] {
		t.Errorf("op mask with one BLENDING seed = %v, want germinate off, prune on, fossilize off, advance on", g.Masks.Op)
	}
}

// TestMasksAgreeWithPropose proposes every move in several states, each on
// a fresh copy of the state, and checks that the masks say exactly which
// ones the session carries out, and that every refusal is counted.
func TestMasksAgreeWithPropose(t *testing.T) {
	tight := baseConfig()
	tight.Governor = tamiyo.GovernorConfig{MaxParams: 300}
	two := baseConfig()
	two.Governor = tamiyo.GovernorConfig{MaxConcurrent: 2}
	cases := []struct {
		name  string
		cfg   session.Config
		setup func(*testing.T, *session.Session)
		// legal and refused are lower bounds on what the table must hold:
		// the state must offer both kinds of moves.
		minLegal, minRefused int
	}{
		{"fresh", baseConfig(), func(*testing.T, *session.Session) {}, 10, 10},
		{"training seed", baseConfig(), func(t *testing.T, s *session.Session) { advanceTo(t, s, 0, 0, lifecycle.Training) }, 2, 10},
		{"holding seed", two, func(t *testing.T, s *session.Session) { advanceTo(t, s, 0, 1, lifecycle.Holding) }, 10, 10},
		{"fossilized seed", baseConfig(), func(t *testing.T, s *session.Session) {
			advanceTo(t, s, 1, 0, lifecycle.Holding)
			if _, err := s.Fossilize(1, 0, ""); err != nil {
				t.Fatal(err)
			}
		}, 5, 10},
		{"tight budget", tight, func(*testing.T, *session.Session) {}, 2, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t, tc.cfg)
			tc.setup(t, s)
			snap, err := s.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			g := graph(t, s)
			legal, refused := 0, 0
			try := func(p session.Proposal, want bool) {
				t.Helper()
				if err := s.Restore(snap); err != nil {
					t.Fatal(err)
				}
				r := propose(t, s, p)
				if r.Applied != want {
					t.Errorf("%+v: applied %v, mask says %v (refused: %q)", p, r.Applied, want, r.Refused)
				}
				if want {
					legal++
				} else {
					refused++
					if r.Refused == "" || len(r.Events) != 0 {
						t.Errorf("%+v: refused without a reason or with events %v", p, r.Events)
					}
					st, err := s.Stats()
					if err != nil {
						t.Fatal(err)
					}
					before := st.Counters.Refused
					if err := s.Restore(snap); err != nil {
						t.Fatal(err)
					}
					st0, _ := s.Stats()
					if before != st0.Counters.Refused+1 {
						t.Errorf("%+v: refused count %d, want %d", p, before, st0.Counters.Refused+1)
					}
				}
			}
			for i := range g.Layers * g.Slots {
				layer, slot := i/g.Slots, i%g.Slots
				for _, op := range []string{"prune", "fossilize", "advance"} {
					try(session.Proposal{Op: op, Layer: layer, Slot: slot}, g.Masks.Target[op][i])
				}
				for k, name := range g.Templates {
					for z := range g.Sizes {
						want := g.Masks.Target["germinate"][i] && g.Masks.Size[layer][k][z]
						try(session.Proposal{Op: "germinate", Layer: layer, Slot: slot, Template: name, Size: z}, want)
					}
				}
			}
			if legal < tc.minLegal || refused < tc.minRefused {
				t.Errorf("%d legal and %d refused moves; the state should offer at least %d and %d", legal, refused, tc.minLegal, tc.minRefused)
			}
		})
	}
}

func TestProposeRefusals(t *testing.T) {
	tight := baseConfig()
	tight.Governor = tamiyo.GovernorConfig{MaxParams: 300}
	cases := []struct {
		name   string
		cfg    session.Config
		p      session.Proposal
		reason string
	}{
		// 16x32 linear seed without bias: 16*32 = 512 parameters > 300.
		{"over budget", tight, session.Proposal{Op: "germinate", Layer: 0, Slot: 0, Template: "linear", Size: 2}, "params would be 512, over the limit of 300"},
		{"prune dormant", baseConfig(), session.Proposal{Op: "prune", Layer: 0, Slot: 0}, "DORMANT -> PRUNED is not a legal transition"},
		{"fossilize dormant", baseConfig(), session.Proposal{Op: "fossilize", Layer: 1, Slot: 1}, "DORMANT -> FOSSILIZED is not a legal transition"},
		{"advance dormant", baseConfig(), session.Proposal{Op: "advance", Layer: 0, Slot: 1}, "0/1 is DORMANT"},
		{"bad slot", baseConfig(), session.Proposal{Op: "prune", Layer: 0, Slot: 9}, "slot in [0, 2)"},
		{"unknown op", baseConfig(), session.Proposal{Op: "grow"}, `op "grow" is not one of`},
		{"size out of range", baseConfig(), session.Proposal{Op: "germinate", Template: "lowrank", Size: 7}, "size 7 is not in [0, 4)"},
		{"linear has one size", baseConfig(), session.Proposal{Op: "germinate", Template: "linear", Size: 0}, "template linear has no size parameter"},
		{"unknown template", baseConfig(), session.Proposal{Op: "germinate", Template: "nope", Size: 2}, `"nope" is not one of`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t, tc.cfg)
			r := propose(t, s, tc.p)
			if r.Applied || r.Refused == "" {
				t.Fatalf("%+v applied (%v) or refused without a reason", tc.p, r.Applied)
			}
			if _, err := s.Propose(tc.p); err != nil {
				t.Fatal(err)
			}
			st, _ := s.Stats()
			if st.Counters.Proposals != 2 || st.Counters.Refused != 2 || st.Counters.Germinations != 0 {
				t.Errorf("counters %+v: want 2 proposals, 2 refused, 0 germinations", st.Counters)
			}
			if !strings.Contains(r.Refused, tc.reason) {
				t.Errorf("refused %q, want it to say %q", r.Refused, tc.reason)
			}
		})
	}
}

func TestProposeApplied(t *testing.T) {
	s := newSession(t, baseConfig())
	r := propose(t, s, session.Proposal{Op: "germinate", Layer: 0, Slot: 1, Template: "residual_mlp", Size: 0, Reason: "policy"})
	if !r.Applied || len(r.Events) != 1 || r.Events[0].To != lifecycle.Germinated || r.Events[0].Reason != "policy" {
		t.Fatalf("germinate: %+v", r)
	}
	// residual_mlp's default width is 32 (blueprint); size 0 is a quarter: width 8 on 16 -> 32: 16*8+8 + 8*32+32.
	if got, want := r.Events[0].ParamCount, int64(16*8+8+8*32+32); got != want {
		t.Errorf("quarter-size residual_mlp has %d params, want %d", got, want)
	}
	if r = propose(t, s, session.Proposal{Op: "advance", Layer: 0, Slot: 1}); !r.Applied || r.Events[0].To != lifecycle.Training {
		t.Fatalf("advance: %+v", r)
	}
	if r = propose(t, s, session.Proposal{Op: "wait"}); !r.Applied {
		t.Fatalf("wait: %+v", r)
	}
	if r = propose(t, s, session.Proposal{Op: "prune", Layer: 0, Slot: 1}); !r.Applied || r.Events[0].To != lifecycle.Pruned {
		t.Fatalf("prune: %+v", r)
	}
	st, _ := s.Stats()
	if st.Counters.Proposals != 4 || st.Counters.Refused != 0 || st.Counters.Germinations != 1 || st.Counters.Prunes != 1 {
		t.Errorf("counters %+v", st.Counters)
	}
	if _, err := session.ParseProposal([]byte(`{"op": "wait", "extra": 1}`)); !errors.Is(err, session.ErrArgument) {
		t.Errorf("unknown field: %v, want ErrArgument", err)
	}
}

func TestGraphCarriesMeasuredContribution(t *testing.T) {
	s := newSession(t, baseConfig())
	advanceTo(t, s, 0, 1, lifecycle.Holding)
	if c := graph(t, s).Nodes[2].Contribution; !math.IsNaN(float64(c)) {
		t.Fatalf("contribution before any measurement = %v, want null", c)
	}
	val := nissa.Metric{Value: 0.5, Measured: true}
	if _, err := s.EndEpoch(tamiyo.Metrics{ValLoss: val, Contributions: []tamiyo.Contribution{{Layer: 0, Slot: 1, DeltaLoss: 0.125}}}); err != nil {
		t.Fatal(err)
	}
	if n := graph(t, s).Nodes[2]; n.Kind != "seed" || float64(n.Contribution) != 0.125 {
		t.Errorf("seed node after a measurement: %+v, want contribution 0.125", n)
	}
}

// BenchmarkGraph measures Session.Graph (nodes, edges and masks) with a
// seed live in every layer (64x64 linear layers, 2 slots), after the
// first call (which fills the masks' table of seed sizes).
func BenchmarkGraph(b *testing.B) {
	for _, layers := range []int{3, 200} {
		b.Run(fmt.Sprintf("layers=%d", layers), func(b *testing.B) {
			cfg := session.Config{SlotsPerLayer: 2, Policy: "manual", TrainSteps: 1 << 30}
			cfg.Governor.MaxConcurrent = 2 * layers
			for l := range layers {
				cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l),
					Host: blueprint.Host{Kind: "linear", In: 64, Out: 64}})
			}
			s := newSession(b, cfg)
			for l := range layers {
				germinate(b, s, l, 0, `{"template": "lowrank"}`)
			}
			if _, err := s.Graph(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if _, err := s.Graph(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
