package session_test

import (
	"fmt"
	"github.com/esper-morph/esper/blueprint"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// benchConfig is 8 linear layers x 2 slots with a seed live in each layer.
func benchSession(tb testing.TB, layers int) *session.Session {
	tb.Helper()
	cfg := session.Config{SlotsPerLayer: 2, Policy: "manual", TrainSteps: 1 << 30}
	cfg.Governor.MaxConcurrent = 64
	for l := 0; l < layers; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l), Host: blueprint.Host{Kind: "linear", In: 64, Out: 64}})
	}
	s := newSession(tb, cfg)
	for l := 0; l < layers; l++ {
		germinate(tb, s, l, 0, `{"template": "lowrank"}`)
	}
	step(tb, s, 2)
	events(tb, s)
	return s
}

func benchStep(b *testing.B, layers int, withSignals bool) {
	s := benchSession(b, layers)
	alphas := make([]float32, layers*2)
	var buf []float32
	if withSignals {
		buf = make([]float32, nissa.Len(layers))
		for i := range buf {
			buf[i] = 0.5 + float32(i%5)*0.1
		}
		buf[nissa.NonfiniteCount] = 0
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Step(1, buf, alphas); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStep8Layers(b *testing.B)          { benchStep(b, 8, true) }
func BenchmarkStep8LayersNoSignals(b *testing.B) { benchStep(b, 8, false) }
func BenchmarkStep64Layers(b *testing.B)         { benchStep(b, 64, true) }

func TestStepDoesNotAllocate(t *testing.T) {
	s := benchSession(t, 8)
	alphas := make([]float32, 16)
	buf := make([]float32, nissa.Len(8))
	buf[0] = 1
	n := testing.AllocsPerRun(500, func() {
		if _, err := s.Step(1, buf, alphas); err != nil {
			panic(err)
		}
	})
	if n != 0 {
		t.Fatalf("Step allocates %v times per call", n)
	}
}

func BenchmarkEndEpoch(b *testing.B) {
	cfg := heuristicConfig()
	s := newSession(b, cfg)
	b.ReportAllocs()
	for i := range b.N {
		if _, err := s.EndEpoch(metrics(i, 1/float64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStepIngest1000Layers measures health-signal ingestion through
// the per-step call: 6002 floats per step, reported in floats per second.
func BenchmarkStepIngest1000Layers(b *testing.B) {
	cfg := session.Config{Policy: "manual"}
	for l := 0; l < 1000; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l), Host: blueprint.Host{Kind: "linear", In: 8, Out: 8}})
	}
	s := newSession(b, cfg)
	alphas := make([]float32, 1000)
	buf := make([]float32, nissa.Len(1000))
	for i := range buf {
		buf[i] = 0.5 + float32(i%5)*0.1
	}
	buf[nissa.NonfiniteCount] = 0
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Step(1, buf, alphas); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf))*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mfloats/s")
}

// BenchmarkEndEpochGerminate measures an end of epoch on a plateau that
// germinates: Tamiyo decides, the session instantiates the blueprint and
// records the event. Each iteration uses its own session, restored from a
// snapshot outside the timer.
func BenchmarkEndEpochGerminate(b *testing.B) {
	s := newSession(b, heuristicConfig())
	for e := range 2 {
		endEpoch(b, s, metrics(e, 1))
	}
	snap, err := s.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := range b.N {
		b.StopTimer()
		r := newSession(b, heuristicConfig())
		if err := r.Restore(snap); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res := endEpoch(b, r, metrics(2, 1))
		if i == 0 && (len(res.Decisions) == 0 || res.Decisions[0].Op != tamiyo.Germinate) {
			b.Fatalf("no germination: %+v", res.Decisions)
		}
	}
}
