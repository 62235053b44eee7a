package tamiyo_test

import (
	"math"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func intp(v int) *int { return &v }

func linearHosts(n int) []blueprint.Host {
	hs := make([]blueprint.Host, n)
	for i := range hs {
		hs[i] = blueprint.Host{Kind: blueprint.HostLinear, In: 32, Out: 32}
	}
	return hs
}

func newController(t testing.TB, cfg tamiyo.Config, hosts []blueprint.Host) *tamiyo.Controller {
	t.Helper()
	c, err := tamiyo.New(cfg, hosts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// world is a tiny simulated run the tests drive epoch by epoch.
type world struct {
	layers []tamiyo.LayerView
	seeds  []tamiyo.SeedView
	slots  int
	epoch  int
	used   int64
}

func newWorld(layers, slots int) *world {
	w := &world{layers: make([]tamiyo.LayerView, layers), slots: slots}
	for l := range w.layers {
		w.layers[l].Name = "fc" + string(rune('0'+l))
		for s := range w.layers[l].Signals {
			w.layers[l].Signals[s] = nissa.Summary{Mean: math.NaN()}
		}
	}
	for l := 0; l < layers; l++ {
		for s := 0; s < slots; s++ {
			w.seeds = append(w.seeds, tamiyo.SeedView{Layer: l, Slot: s, GerminatedStep: -1, GerminatedEpoch: -1})
		}
	}
	return w
}

func (w *world) signal(layer int, sig nissa.Signal, mean float64) {
	w.layers[layer].Signals[sig] = nissa.Summary{N: 10, Mean: mean}
}

func (w *world) seed(layer, slot int) *tamiyo.SeedView { return &w.seeds[layer*w.slots+slot] }

// obs returns the observation of the epoch with the given validation loss.
func (w *world) obs(val float64, contrib ...tamiyo.Contribution) *tamiyo.Observation {
	o := &tamiyo.Observation{Epoch: w.epoch, Step: int64(w.epoch) * 100, Layers: w.layers, Seeds: w.seeds, ParamsUsed: w.used,
		Metrics: tamiyo.Metrics{TrainLoss: nissa.Measure(val), ValLoss: nissa.Measure(val), Contributions: contrib}}
	return o
}

// apply plays decisions into the world the way the session would.
func (w *world) apply(t testing.TB, c *tamiyo.Controller, ds []tamiyo.Decision) {
	t.Helper()
	for _, d := range ds {
		switch d.Op {
		case tamiyo.Germinate:
			s := w.seed(d.Layer, d.Slot)
			if s.State != lifecycle.Dormant {
				t.Fatalf("germinate on %v seed %d/%d", s.State, d.Layer, d.Slot)
			}
			*s = tamiyo.SeedView{Layer: d.Layer, Slot: d.Slot, State: lifecycle.Germinated, ParamCount: d.ParamCount,
				GerminatedStep: int64(w.epoch) * 100, GerminatedEpoch: w.epoch}
			w.used += d.ParamCount
			c.Governor().RecordGermination(d.Layer, w.epoch)
		case tamiyo.Prune, tamiyo.Rollback:
			if d.Layer < 0 {
				continue
			}
			s := w.seed(d.Layer, d.Slot)
			w.used -= s.ParamCount
			s.State, s.ParamCount = lifecycle.Embargoed, 0
		case tamiyo.Fossilize:
			w.seed(d.Layer, d.Slot).State = lifecycle.Fossilized
		}
	}
	w.epoch++
	for i := range w.seeds {
		w.seeds[i].EpochsInState++
	}
}

// run feeds validation losses epoch by epoch and returns the decisions of
// the last epoch.
func (w *world) run(t testing.TB, c *tamiyo.Controller, vals ...float64) []tamiyo.Decision {
	t.Helper()
	var ds []tamiyo.Decision
	for _, v := range vals {
		ds = c.Decide(w.obs(v))
		w.apply(t, c, ds)
	}
	return ds
}

func only(t testing.TB, ds []tamiyo.Decision, op tamiyo.Op) tamiyo.Decision {
	t.Helper()
	for _, d := range ds {
		if d.Op == op {
			return d
		}
	}
	t.Fatalf("no %v decision in %+v", op, ds)
	return tamiyo.Decision{}
}
