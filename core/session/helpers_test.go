package session_test

import (
	"encoding/json"
	"fmt"
	"github.com/esper-morph/esper/blueprint"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// baseConfig is a small manual session: 2 linear layers x 2 slots, short
// phases.
func baseConfig() session.Config {
	embargo := int64(5)
	return session.Config{
		Layers: []session.LayerConfig{
			{Name: "fc1", Host: blueprint.Host{Kind: "linear", In: 16, Out: 32}, Params: 544},
			{Name: "fc2", Host: blueprint.Host{Kind: "linear", In: 32, Out: 8}, Params: 264},
		},
		SlotsPerLayer: 2,
		TrainSteps:    10,
		BlendSteps:    4,
		EmbargoSteps:  &embargo,
		Policy:        "manual",
	}
}

func newSession(t testing.TB, cfg session.Config, opts ...session.Option) *session.Session {
	t.Helper()
	s, err := session.New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// step runs n steps of one with no signals and returns the alphas.
func step(t testing.TB, s *session.Session, n int64) []float32 {
	t.Helper()
	alphas := make([]float32, s.Layers()*s.Slots())
	if _, err := s.Step(n, nil, alphas); err != nil {
		t.Fatalf("Step(%d): %v", n, err)
	}
	return alphas
}

// signals returns a buffer for layers with the given loss and nonfinite
// count and every layer signal NaN.
func signals(layers int, loss, nonfinite float32) []float32 {
	b := make([]float32, nissa.Len(layers))
	for i := range b {
		b[i] = float32(math.NaN())
	}
	b[0], b[1] = loss, nonfinite
	return b
}

func events(t testing.TB, s *session.Session) []session.Event {
	t.Helper()
	evs, err := s.Events()
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// transitions renders events as "L/S FROM->TO@step".
func transitions(evs []session.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%d/%d %s->%s@%d", e.Layer, e.Slot, e.From, e.To, e.Step)
	}
	return out
}

func germinate(t testing.TB, s *session.Session, layer, slot int, spec string) []session.Event {
	t.Helper()
	evs, err := s.GerminateSpec(layer, slot, []byte(spec))
	if err != nil {
		t.Fatalf("germinate %d/%d: %v", layer, slot, err)
	}
	return evs
}

func seedState(t testing.TB, s *session.Session, layer, slot int) session.SeedInfo {
	t.Helper()
	seeds, err := s.Seeds()
	if err != nil {
		t.Fatal(err)
	}
	return seeds[layer*s.Slots()+slot]
}

func wantState(t testing.TB, s *session.Session, layer, slot int, want lifecycle.State) {
	t.Helper()
	if got := seedState(t, s, layer, slot).State; got != want {
		t.Fatalf("seed %d/%d is %v, want %v", layer, slot, got, want)
	}
}

func metrics(epoch int, val float64, contrib ...tamiyo.Contribution) tamiyo.Metrics {
	return tamiyo.Metrics{Epoch: &epoch, TrainLoss: nissa.Measure(val), ValLoss: nissa.Measure(val), Contributions: contrib}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
