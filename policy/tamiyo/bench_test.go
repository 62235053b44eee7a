package tamiyo_test

import (
	"testing"

	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// benchDecide measures one end-of-epoch decision on 8 layers x 2 slots
// after a plateau, with the budget forcing the width search when tight.
func benchDecide(b *testing.B, kind tamiyo.Kind, maxParams int64) {
	cfg := tamiyo.Config{Kind: kind, Governor: tamiyo.GovernorConfig{MaxParams: maxParams}}
	c, err := tamiyo.New(cfg, linearHosts(8))
	if err != nil {
		b.Fatal(err)
	}
	w := newWorld(8, 2)
	for l := 0; l < 8; l++ {
		w.signal(l, nissa.GradNorm, float64(l+1))
		w.signal(l, nissa.DeadFrac, 0.1)
	}
	w.run(b, c, flat[:3]...)
	o := w.obs(flat[3])
	st, err := c.State()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.SetState(st); err != nil { // same plateau every iteration
			b.Fatal(err)
		}
		ds := c.Decide(o)
		if len(ds) != 1 || ds[0].Op != tamiyo.Germinate {
			b.Fatalf("decisions %+v", ds)
		}
	}
}

func BenchmarkDecideGerminate(b *testing.B)            { benchDecide(b, tamiyo.Heuristic, 0) }
func BenchmarkDecideGerminateTightBudget(b *testing.B) { benchDecide(b, tamiyo.Heuristic, 1000) }
func BenchmarkDecideRandom(b *testing.B)               { benchDecide(b, tamiyo.Random, 0) }

func BenchmarkDecideWait(b *testing.B) {
	c, err := tamiyo.New(tamiyo.Config{}, linearHosts(8))
	if err != nil {
		b.Fatal(err)
	}
	w := newWorld(8, 2)
	vals := []float64{1, 0.9, 0.8, 0.7, 0.6}
	w.run(b, c, vals[:4]...)
	o := w.obs(0.6)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if ds := c.Decide(o); ds[0].Op != tamiyo.Wait {
			b.Fatalf("decisions %+v", ds)
		}
	}
}

func BenchmarkObserveStep(b *testing.B) {
	g, err := tamiyo.NewGovernor(tamiyo.GovernorConfig{}, 8)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := range b.N {
		g.ObserveStep(1+float32(i%7)*0.01, 0)
	}
}
