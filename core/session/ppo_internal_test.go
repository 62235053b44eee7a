package session

import (
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// TestPolicyDecisionsOutsideTheRulesAreRefused is the negative control of
// the ppo policy's path: decisions the lifecycle or the governor forbid
// (advance of a dormant or held seed, a germination without a blueprint, as
// ppoDecisionLocked makes when the template cannot size one) are refused,
// counted, and change nothing.
func TestPolicyDecisionsOutsideTheRulesAreRefused(t *testing.T) {
	s, err := New(Config{Layers: []LayerConfig{{Name: "fc", Host: blueprint.Host{Kind: "linear", In: 8, Out: 8}, Params: 72}},
		SlotsPerLayer: 1, TrainSteps: 10, BlendSteps: 4, Policy: "manual"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, tc := range []struct {
		name string
		d    tamiyo.Decision
	}{
		{"advance a dormant seed", tamiyo.Decision{Op: tamiyo.Advance, Layer: 0, Slot: 0, Reason: "ppo: test"}},
		{"germinate without a blueprint", tamiyo.Decision{Op: tamiyo.Germinate, Layer: 0, Slot: 0, Reason: "ppo: test"}},
		{"fossilize a dormant seed", tamiyo.Decision{Op: tamiyo.Fossilize, Layer: 0, Slot: 0, Reason: "ppo: test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.lock(); err != nil {
				t.Fatal(err)
			}
			r := s.applyLocked(tc.d)
			refused, state := s.counters.Refused, s.seeds[0].State
			s.unlock()
			if r.Applied || r.Error == "" || refused != int64(i+1) || state != lifecycle.Dormant {
				t.Fatalf("applied %v (%q), refused %d, seed %v: want refused, counted, not executed", r.Applied, r.Error, refused, state)
			}
		})
	}
	// The control's control: a legal advance is carried out.
	if _, err := s.GerminateSpec(0, 0, []byte(`{"template": "linear"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.lock(); err != nil {
		t.Fatal(err)
	}
	r := s.applyLocked(tamiyo.Decision{Op: tamiyo.Advance, Layer: 0, Slot: 0, Reason: "ppo: test"})
	state := s.seeds[0].State
	s.unlock()
	if !r.Applied || state != lifecycle.Training {
		t.Fatalf("advance of a GERMINATED seed: applied %v (%q), state %v; want TRAINING", r.Applied, r.Error, state)
	}
}
