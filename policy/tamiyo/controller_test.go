package tamiyo_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// flat is a plateaued validation curve: 4 epochs improving by 0.1%.
var flat = []float64{1.000, 0.999, 0.998, 0.997}

func TestPlateauDetection(t *testing.T) {
	cases := []struct {
		name   string
		vals   []float64
		op     tamiyo.Op
		reason string
	}{
		{"too early", []float64{1, 0.99}, tamiyo.Wait, "watching for a plateau: 2 of the 4 epochs"},
		{"improving", []float64{1, 0.9, 0.8, 0.7}, tamiyo.Wait, "validation loss still improving"},
		{"plateau", flat, tamiyo.Germinate, "validation loss plateaued"},
		{"worse: overfitting", []float64{1, 1.1, 1.2, 1.3}, tamiyo.Wait, "validation loss rising"},
		{"slightly worse: plateau", []float64{1, 1, 1, 1.005}, tamiyo.Germinate, "validation loss plateaued"},
		{"improvement just above threshold", []float64{1, 1, 1, 0.989}, tamiyo.Wait, "still improving"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The threshold is set, not the default: these cases sit on either side of 1%.
			c := newController(t, tamiyo.Config{Threshold: 0.01}, linearHosts(2))
			w := newWorld(2, 1)
			ds := w.run(t, c, tc.vals...)
			if len(ds) != 1 || ds[0].Op != tc.op || !strings.Contains(ds[0].Reason, tc.reason) {
				t.Fatalf("decisions %+v", ds)
			}
		})
	}
}

func TestUnmeasuredValLossIsSkipped(t *testing.T) {
	c := newController(t, tamiyo.Config{}, linearHosts(1))
	w := newWorld(1, 1)
	for _, v := range flat[:3] {
		w.apply(t, c, c.Decide(w.obs(v)))
	}
	o := w.obs(0)
	o.Metrics.ValLoss = nissa.Metric{}
	if ds := c.Decide(o); ds[0].Op != tamiyo.Wait || !strings.Contains(ds[0].Reason, "3 of the 4") {
		t.Fatalf("an unmeasured val loss counted: %+v", ds)
	}
}

func TestGerminateChoosesStrongestLayer(t *testing.T) {
	type sig struct {
		layer int
		sig   nissa.Signal
		mean  float64
	}
	cases := []struct {
		name    string
		signals []sig
		layer   int
		reason  string
	}{
		{"output gradient when no seed gain", []sig{
			{0, nissa.GradNorm, 1}, {1, nissa.GradNorm, 4}, {2, nissa.GradNorm, 5},
			{2, nissa.DeadFrac, 0.5}, // score 0.5 < layer 1's 0.8
		}, 1, "layer 1 (fc1) has growth score 0.8 (output gradient per unit 0.707 x alive 1), untried, the strongest"},
		{"seed gain over output gradient", []sig{
			{0, nissa.GradNorm, 1}, {1, nissa.GradNorm, 4}, {2, nissa.GradNorm, 5},
			{0, nissa.SeedGain, 0.4}, {1, nissa.SeedGain, 0.1}, {2, nissa.SeedGain, 0.2},
		}, 0, "layer 0 (fc0) has growth score 1 (seed gain 0.4 x alive 1), untried, the strongest"},
		{"seed gain times alive", []sig{
			{0, nissa.SeedGain, 0.4}, {1, nissa.SeedGain, 0.3}, {2, nissa.SeedGain, 0.2},
			{0, nissa.DeadFrac, 0.5}, // 0.5 < layer 1's 0.75
		}, 1, "layer 1 (fc1) has growth score 0.75 (seed gain 0.3 x alive 1)"},
		{"output gradient when one layer lacks a seed gain", []sig{
			{0, nissa.GradNorm, 1}, {1, nissa.GradNorm, 4}, {2, nissa.GradNorm, 2},
			{0, nissa.SeedGain, 0.4}, {2, nissa.SeedGain, 0.2},
		}, 1, "(output gradient per unit 0.707 x alive 1)"},
		{"nothing measured: every layer counts 1, the first wins", nil, 0, "growth score 1 (no signal measured yet x alive 1)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{Params: blueprint.Params{"width": 8}}, linearHosts(3))
			w := newWorld(3, 2)
			for _, s := range tc.signals {
				w.signal(s.layer, s.sig, s.mean)
			}
			d := only(t, w.run(t, c, flat...), tamiyo.Germinate)
			if d.Layer != tc.layer || d.Slot != 0 || d.Template != "residual_mlp" || d.Params["width"] != int64(8) {
				t.Fatalf("decision %+v", d)
			}
			if d.Blueprint == nil || d.ParamCount != d.Blueprint.ParamCount || d.ParamCount != 32*8+8+8*32+32 {
				t.Fatalf("blueprint %+v, count %d", d.Blueprint, d.ParamCount)
			}
			for _, want := range []string{tc.reason, "residual_mlp {activation=relu width=8} = 552 params", "no parameter limit"} {
				if !strings.Contains(d.Reason, want) {
					t.Errorf("reason %q lacks %q", d.Reason, want)
				}
			}
		})
	}
}

func TestGerminateGuards(t *testing.T) {
	cases := []struct {
		name   string
		cfg    tamiyo.Config
		setup  func(w *world, c *tamiyo.Controller)
		op     tamiyo.Op
		layer  int
		reason string
	}{
		{"no dormant slot", tamiyo.Config{}, func(w *world, c *tamiyo.Controller) {
			*w.seed(0, 0) = tamiyo.SeedView{State: lifecycle.Fossilized, EpochsInState: 10}
			w.seed(1, 0).State = lifecycle.Embargoed
		}, tamiyo.Wait, -1, "no layer has a dormant slot outside its cooldown (0 cooling down)"},
		{"in flight", tamiyo.Config{}, func(w *world, c *tamiyo.Controller) {
			w.seed(0, 0).State = lifecycle.Training
		}, tamiyo.Wait, -1, "1 seeds are in flight (max_concurrent 1)"},
		{"budget spent", tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: 100}}, func(w *world, c *tamiyo.Controller) {
			*w.seed(0, 0) = tamiyo.SeedView{State: lifecycle.Fossilized, EpochsInState: 10}
			w.used = 100
		}, tamiyo.Wait, -1, "parameter budget is spent (100 of 100)"},
		{"nothing fits", tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: 40}}, nil,
			tamiyo.Wait, -1, "no blueprint fits any candidate layer within 40 of 40 params left"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tc.cfg, linearHosts(2))
			w := newWorld(2, 1)
			w.run(t, c, flat[:3]...)
			if tc.setup != nil {
				tc.setup(w, c)
			}
			ds := c.Decide(w.obs(flat[3]))
			d := ds[len(ds)-1]
			if d.Op != tc.op || d.Layer != tc.layer || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("decision %+v", d)
			}
		})
	}
}

func TestCooldown(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cooldown  int
		blocked   lifecycle.State
		op        tamiyo.Op
		layer     int
		reasonHas string
	}{
		{"layer 1 busy, layer 0 cooling", 10, lifecycle.Fossilized, tamiyo.Wait, -1, "(1 cooling down)"},
		{"skips to the next layer", 10, lifecycle.Dormant, tamiyo.Germinate, 1, "layer 1 (fc1)"},
		{"cooldown over", 4, lifecycle.Fossilized, tamiyo.Germinate, 0, "layer 0 (fc0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(tc.cooldown)}}, linearHosts(2))
			w := newWorld(2, 1)
			c.Governor().RecordGermination(0, 0)
			w.seed(1, 0).State = tc.blocked
			ds := w.run(t, c, 1, 1, 1, 1, 1)
			d := ds[len(ds)-1]
			if d.Op != tc.op || d.Layer != tc.layer || !strings.Contains(d.Reason, tc.reasonHas) {
				t.Fatalf("decision %+v", d)
			}
		})
	}
}

func TestWidthShrinksToBudget(t *testing.T) {
	// residual_mlp on 32 -> 32 costs 32 + 65 w: width 32 is 2112 params. It
	// is lowered to a quarter of 32 at most (width 8, 552 params); below
	// that the next template that fits is used if it has at least a quarter
	// of 2112 params (528), and otherwise nothing germinates.
	cases := []struct {
		budget   int64
		template string // "": nothing germinates
		knob     string
		size     int64
	}{
		{5000, "residual_mlp", "width", 32},
		{2112, "residual_mlp", "width", 32},
		{2111, "residual_mlp", "width", 31},
		{1000, "residual_mlp", "width", 14},
		{552, "residual_mlp", "width", 8},
		{551, "bottleneck", "width", 7},
		{540, "", "", 0}, // bottleneck width 7 is 543 params, width 6 under 528
		{97, "", "", 0},  // lowrank rank 1 would fit in 64
	}
	for _, tc := range cases {
		c := newController(t, tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: tc.budget}}, linearHosts(1))
		w := newWorld(1, 1)
		ds := w.run(t, c, flat...)
		last := ds[len(ds)-1]
		if tc.template == "" {
			want := fmt.Sprintf("no blueprint fits any candidate layer within %d of %d params left", tc.budget, tc.budget)
			if last.Op != tamiyo.Wait || !strings.Contains(last.Reason, want) {
				t.Fatalf("budget %d: %+v", tc.budget, last)
			}
			continue
		}
		if last.Op != tamiyo.Germinate || last.Template != tc.template || last.Params[tc.knob] != tc.size || last.ParamCount > tc.budget {
			t.Fatalf("budget %d: %+v", tc.budget, last)
		}
		if tc.template == "residual_mlp" && tc.size < 32 && !strings.Contains(last.Reason, "width lowered from 32 to") {
			t.Fatalf("reason %q", last.Reason)
		}
	}
}

func TestTemplateFallbackForConv(t *testing.T) {
	// A template other than the configured one is named, with the reason, in
	// the decision's reason; the configured one used says nothing of it.
	conv := []blueprint.Host{{Kind: blueprint.HostConv2d, In: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1}}
	pair := []blueprint.Host{{Kind: blueprint.HostConv2dPair, In: 3, Mid: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1,
		ConsumerKernel: 3, ConsumerStride: 1, ConsumerPadding: 1, Activation: "relu"}}
	cases := []struct {
		name     string
		cfg      tamiyo.Config
		hosts    []blueprint.Host
		template string
		reason   string // "": the reason names no configured template
	}{
		{"residual_mlp on conv2d", tamiyo.Config{Params: blueprint.Params{"width": int64(16)}}, conv, "conv3x3",
			"the configured template residual_mlp does not support conv2d hosts, so conv3x3 with its default parameters"},
		{"conv3x3 on conv2d", tamiyo.Config{Template: "conv3x3"}, conv, "conv3x3", ""},
		{"residual_mlp over budget", tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: 551}}, linearHosts(1), "bottleneck",
			"the configured template residual_mlp did not fit (tamiyo: residual_mlp needs 552 params at width 8"},
		{"residual_mlp on linear", tamiyo.Config{}, linearHosts(1), "residual_mlp", ""},
		{"residual_mlp on conv2d_pair", tamiyo.Config{}, pair, "widen",
			"the configured template residual_mlp does not support conv2d_pair hosts, so widen with its default parameters"},
		{"widen on conv2d_pair", tamiyo.Config{Template: "widen", Params: blueprint.Params{"width": int64(4)}}, pair, "widen", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tc.cfg, tc.hosts)
			d := only(t, newWorld(1, 1).run(t, c, flat...), tamiyo.Germinate)
			if d.Template != tc.template || d.Blueprint.Host.Kind != tc.hosts[0].Kind {
				t.Fatalf("decision %+v", d)
			}
			if tc.reason == "" && strings.Contains(d.Reason, "configured template") ||
				tc.reason != "" && !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to hold %q", d.Reason, tc.reason)
			}
		})
	}
}

func TestJudgeHeldSeeds(t *testing.T) {
	cases := []struct {
		name     string
		contrib  []tamiyo.Contribution
		epochsIn int
		val      float64
		op       tamiyo.Op
		reason   string
	}{
		{"helps", []tamiyo.Contribution{{Layer: 0, Slot: 0, DeltaLoss: 0.02}}, 1, 1, tamiyo.Fossilize, "reaches the bar 0"},
		{"hurts", []tamiyo.Contribution{{Layer: 0, Slot: 0, DeltaLoss: -0.01}}, 1, 1, tamiyo.Prune, "is below the bar 0"},
		{"unmeasured, improved", nil, 1, 0.9, tamiyo.Fossilize, "validation loss improved 10.00% since germination at epoch 0"},
		{"unmeasured, flat", nil, 1, 1, tamiyo.Prune, "improved only 0.00%"},
		{"unmeasured, early", nil, 0, 1, tamiyo.Wait, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{MinGain: floatp(0.01)}, linearHosts(1))
			w := newWorld(1, 2)
			w.run(t, c, 1) // epoch 0: val 1
			*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: tc.epochsIn,
				ParamCount: 10, GerminatedEpoch: 0, GerminatedStep: 5}
			ds := c.Decide(w.obs(tc.val, tc.contrib...))
			if ds[0].Op != tc.op || !strings.Contains(ds[0].Reason, tc.reason) {
				t.Fatalf("decisions %+v", ds)
			}
			if tc.op != tamiyo.Wait && (ds[0].Layer != 0 || ds[0].Slot != 0) {
				t.Fatalf("wrong seed %+v", ds[0])
			}
		})
	}
}

func TestJudgedSeedFreesConcurrency(t *testing.T) {
	c := newController(t, tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: 3000, CooldownEpochs: intp(0)}}, linearHosts(2))
	w := newWorld(2, 2)
	w.run(t, c, flat[:3]...)
	*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 2000, GerminatedEpoch: -5}
	w.used = 2000
	ds := c.Decide(w.obs(flat[3], tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: 0}))
	// The pruned seed frees its concurrency and budget at once; its layer is
	// saturated (it did not help at all, nor did it hurt), so the germination
	// goes to the other layer.
	if len(ds) != 2 || ds[0].Op != tamiyo.Prune || ds[1].Op != tamiyo.Germinate || ds[1].Layer != 1 || ds[1].Params["width"] != int64(32) {
		t.Fatalf("decisions %+v", ds)
	}
}

// TestHurtingSeedSaturatesRun judges a seed on layer 0 of two and checks
// whether the other layer may still grow: a seed the validation loss is
// better without by at least its bar ends growth everywhere when no seed of
// the run has paid; one just under zero (noise), any negative one when there
// is no bar to measure it by, or one after a fossilized seed saturates its
// own layer only.
func TestHurtingSeedSaturatesRun(t *testing.T) {
	cases := []struct {
		name       string
		minGain    float64
		delta      float64
		paid       bool // a fossilized seed on layer 0, slot 1
		otherGrows bool
		reason     string
	}{
		{"hurt by twice the bar", 0.01, -0.02, false, false, "every layer is saturated: the seed hurt"},
		{"hurt by the bar exactly", 0.01, -0.00997, false, false, "every layer is saturated: the seed hurt"},
		{"hurt after a seed paid", 0.01, -0.02, true, true, "layer 0 is saturated: the seed did not help at all"},
		{"just under zero: noise", 0.01, -0.005, false, true, "layer 0 is saturated: the seed did not help at all"},
		{"no bar to measure by", 0, -0.5, false, true, "layer 0 is saturated: the seed did not help at all"},
		{"a near miss", 0.01, 0.005, false, true, "layer 0 may grow again"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{MinGain: floatp(tc.minGain), Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(2))
			w := newWorld(2, 2)
			w.run(t, c, flat[:3]...)
			*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 10, GerminatedEpoch: -5}
			if tc.paid {
				*w.seed(0, 1) = tamiyo.SeedView{Layer: 0, Slot: 1, State: lifecycle.Fossilized, EpochsInState: 9, ParamCount: 10, GerminatedEpoch: -20}
			}
			ds := c.Decide(w.obs(flat[3], tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: tc.delta}))
			if len(ds) != 2 || ds[0].Op != tamiyo.Prune || !strings.Contains(ds[0].Reason, tc.reason) {
				t.Fatalf("judgement %+v, want a prune saying %q", ds, tc.reason)
			}
			if grew := ds[1].Op == tamiyo.Germinate; grew != tc.otherGrows {
				t.Fatalf("after the prune: %+v; a germination: %v, want %v", ds[1], grew, tc.otherGrows)
			}
			if !tc.otherGrows && !strings.Contains(ds[1].Reason, "every layer is saturated") {
				t.Fatalf("the wait does not say why: %+v", ds[1])
			}
			// Run-wide saturation is in the state a checkpoint keeps.
			st, err := c.State()
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Saturated[1]; got == tc.otherGrows {
				t.Fatalf("state saturated %v", st.Saturated)
			}
		})
	}
}

func TestMinGainSaturatesLayer(t *testing.T) {
	cases := []struct {
		name    string
		minGain *float64
		delta   float64
		op      tamiyo.Op
		reason  string
	}{
		{"below relative bar, harmless", floatp(0.01), 0.005, tamiyo.Prune, "layer 0 may grow again"},
		{"above relative bar", floatp(0.01), 0.02, tamiyo.Fossilize, "reaches the bar 0.01"},
		{"relative bar off", floatp(0), 0.005, tamiyo.Fossilize, "reaches the bar 0"},
		{"harmful seed", floatp(0), -0.1, tamiyo.Prune, "layer 0 is saturated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{MinGain: tc.minGain, Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(1))
			w := newWorld(1, 2)
			w.run(t, c, 1, 1, 1)
			*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 10}
			ds := c.Decide(w.obs(1, tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: tc.delta}))
			if ds[0].Op != tc.op || !strings.Contains(ds[0].Reason, tc.reason) {
				t.Fatalf("decisions %+v", ds)
			}
			if !strings.Contains(tc.reason, "saturated") {
				return
			}
			// Saturated: a later plateau grows nowhere, and says why; the state keeps it.
			if ds[1].Op != tamiyo.Wait || !strings.Contains(ds[1].Reason, "every layer is saturated") {
				t.Fatalf("after the prune: %+v", ds[1])
			}
			st, err := c.State()
			if err != nil {
				t.Fatal(err)
			}
			fresh := newController(t, tamiyo.Config{MinGain: tc.minGain}, linearHosts(1))
			if err := fresh.SetState(st); err != nil {
				t.Fatal(err)
			}
			w.seed(0, 0).State = lifecycle.Dormant
			if d := fresh.Decide(w.obs(1)); d[len(d)-1].Op != tamiyo.Wait || !strings.Contains(d[len(d)-1].Reason, "saturated") {
				t.Fatalf("restored controller: %+v", d)
			}
		})
	}
}

// TestSaturationNeedsEvidence plays seeds on one layer one after another,
// each judged with the given contribution (validation loss 1, so min_gain
// 0.01 is a bar of 0.01), and checks after each judgement whether the
// layer is saturated and, when it is not, that the next plateau grows there
// again.
func TestSaturationNeedsEvidence(t *testing.T) {
	cases := []struct {
		name          string
		saturateAfter int
		deltas        []float64
		saturated     []bool
		reason        string
	}{
		{"one near miss leaves the layer open", 2, []float64{0.005}, []bool{false}, "may grow again: 1 of 2"},
		{"two near misses in a row saturate", 2, []float64{0.005, 0.004}, []bool{false, true}, "2 seed(s) in a row fell short"},
		{"a seed that did not help saturates at once", 2, []float64{-0.005}, []bool{true}, "did not help at all"},
		{"a seed that hurt saturates every layer", 2, []float64{-0.1}, []bool{true}, "every layer is saturated: the seed hurt"},
		{"a seed of no effect saturates at once", 2, []float64{0}, []bool{true}, "did not help at all"},
		{"a fossilized seed clears the misses", 2, []float64{0.005, 0.02, 0.005}, []bool{false, false, false}, "may grow again: 1 of 2"},
		{"misses after a fossilized seed count again", 2, []float64{0.005, 0.02, 0.005, 0.001}, []bool{false, false, false, true}, "2 seed(s) in a row"},
		{"saturate_after 1: the first miss ends growth", 1, []float64{0.005}, []bool{true}, "1 seed(s) in a row fell short"},
		{"saturate_after 3", 3, []float64{0.005, 0.005, 0.005}, []bool{false, false, true}, "3 seed(s) in a row"},
		{"saturate_after 4", 4, []float64{0.005, 0.005, 0.005, 0.005}, []bool{false, false, false, true}, "4 seed(s) in a row"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{SaturateAfter: tc.saturateAfter, MinGain: floatp(0.01),
				Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(1))
			w := newWorld(1, len(tc.deltas)+1)
			var last tamiyo.Decision
			for i, delta := range tc.deltas {
				// Plateau until the layer germinates.
				slot := -1
				for e := 0; e < 8 && slot < 0; e++ {
					ds := c.Decide(w.obs(1))
					for _, d := range ds {
						if d.Op == tamiyo.Germinate {
							slot = d.Slot
						}
					}
					w.apply(t, c, ds)
				}
				if slot < 0 {
					t.Fatalf("seed %d: the layer did not germinate in 8 plateau epochs", i)
				}
				*w.seed(0, slot) = tamiyo.SeedView{Layer: 0, Slot: slot, State: lifecycle.Holding, EpochsInState: 1,
					ParamCount: 10, GerminatedEpoch: w.epoch - 1}
				ds := c.Decide(w.obs(1, tamiyo.Contribution{Layer: 0, Slot: slot, DeltaLoss: delta}))
				last = ds[0]
				w.apply(t, c, ds)
				if got := c.Saturated()[0]; got != tc.saturated[i] {
					t.Fatalf("after seed %d (delta %v): saturated %v, want %v (%+v)", i, delta, got, tc.saturated[i], ds)
				}
			}
			if !strings.Contains(last.Reason, tc.reason) {
				t.Fatalf("last judgement %q does not say %q", last.Reason, tc.reason)
			}
			// A saturated layer never germinates again; an open one does.
			grew := false
			for e := 0; e < 8; e++ {
				ds := c.Decide(w.obs(1))
				for _, d := range ds {
					grew = grew || d.Op == tamiyo.Germinate
				}
				w.apply(t, c, ds)
			}
			if want := !tc.saturated[len(tc.saturated)-1]; grew != want {
				t.Fatalf("grew again %v, want %v", grew, want)
			}
			// The misses survive a save and restore: one more near miss saturates
			// a layer at saturate_after - 1 misses.
			st, err := c.State()
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Misses) != 1 {
				t.Fatalf("state misses %v", st.Misses)
			}
		})
	}
}

func TestRestoredMissesCount(t *testing.T) {
	c := newController(t, tamiyo.Config{MinGain: floatp(0.01), SaturateAfter: 2, Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(1))
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	st.Misses = []int{1}
	fresh := newController(t, tamiyo.Config{MinGain: floatp(0.01), SaturateAfter: 2}, linearHosts(1))
	if err := fresh.SetState(st); err != nil {
		t.Fatal(err)
	}
	w := newWorld(1, 2)
	*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 10}
	ds := fresh.Decide(w.obs(1, tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: 0.005}))
	if !strings.Contains(ds[0].Reason, "2 seed(s) in a row") || !fresh.Saturated()[0] {
		t.Fatalf("restored misses not counted: %+v", ds)
	}
	for _, bad := range [][]int{{-1}, {0, 0}} {
		st.Misses = bad
		if err := fresh.SetState(st); !errors.Is(err, tamiyo.ErrState) {
			t.Fatalf("misses %v: err %v, want ErrState", bad, err)
		}
	}
}

func floatp(v float64) *float64 { return &v }

func TestRollbackOnEpochLoss(t *testing.T) {
	c := newController(t, tamiyo.Config{}, linearHosts(1))
	w := newWorld(1, 1)
	w.seed(0, 0).State = lifecycle.Blending
	o := w.obs(1)
	o.Metrics.TrainLoss = nissa.Measure(math.Inf(1))
	ds := c.Decide(o)
	if len(ds) != 1 || ds[0].Op != tamiyo.Rollback || ds[0].Layer != 0 || !strings.Contains(ds[0].Reason, "training loss is +Inf") {
		t.Fatalf("decisions %+v", ds)
	}
}

// A non-finite validation loss is a rollback and nothing else: no germination on a
// plateau that would otherwise call for one, no judgement of a held seed on NaN.
func TestRollbackOnNonfiniteValLoss(t *testing.T) {
	for _, kind := range []tamiyo.Kind{tamiyo.Heuristic, tamiyo.Random, tamiyo.Manual} {
		for _, v := range []float64{math.NaN(), math.Inf(1)} {
			c := newController(t, tamiyo.Config{Kind: kind, Patience: 1}, linearHosts(2))
			w := newWorld(2, 1)
			if kind != tamiyo.Manual {
				// Control: the same run with a finite loss germinates on this plateau.
				ctl := newController(t, tamiyo.Config{Kind: kind, Patience: 1}, linearHosts(2))
				wc := newWorld(2, 1)
				wc.run(t, ctl, flat[:1]...)
				if ds := ctl.Decide(wc.obs(flat[1])); only(t, ds, tamiyo.Germinate).Layer < 0 {
					t.Fatalf("control: %+v", ds)
				}
			}
			w.run(t, c, flat[:1]...)
			o := w.obs(flat[1])
			o.Metrics.ValLoss = nissa.Measure(v)
			ds := c.Decide(o)
			if len(ds) != 1 || ds[0].Op != tamiyo.Rollback || ds[0].Layer != -1 ||
				!strings.Contains(ds[0].Reason, "validation loss is") || !strings.Contains(ds[0].Reason, "no seed in flight") {
				t.Fatalf("%v, val %v: decisions %+v", kind, v, ds)
			}
			w.seed(1, 0).State = lifecycle.Holding
			o = w.obs(1, tamiyo.Contribution{Layer: 1, Slot: 0, DeltaLoss: 0.5})
			o.Metrics.ValLoss = nissa.Measure(v)
			if ds = c.Decide(o); len(ds) != 1 || ds[0].Op != tamiyo.Rollback || ds[0].Layer != 1 || ds[0].Slot != 0 {
				t.Fatalf("%v, val %v, a held seed: decisions %+v", kind, v, ds)
			}
		}
	}
}

func TestManualDecidesNothing(t *testing.T) {
	c := newController(t, tamiyo.Config{Kind: tamiyo.Manual}, linearHosts(1))
	w := newWorld(1, 1)
	if ds := w.run(t, c, flat...); len(ds) != 0 {
		t.Fatalf("manual decided %+v", ds)
	}
	o := w.obs(1)
	o.Metrics.TrainLoss = nissa.Measure(math.NaN())
	if ds := c.Decide(o); len(ds) != 1 || ds[0].Op != tamiyo.Rollback {
		t.Fatalf("manual must still roll back: %+v", ds)
	}
}

// layersChosen runs the random policy through several germinations and
// returns the layers it chose.
func layersChosen(t *testing.T, seed uint64) []int {
	t.Helper()
	c := newController(t, tamiyo.Config{Kind: tamiyo.Random, Seed: seed, Patience: 1,
		Governor: tamiyo.GovernorConfig{MaxConcurrent: 64, CooldownEpochs: intp(0)}}, linearHosts(8))
	w := newWorld(8, 4)
	var out []int
	for e := 0; e < 12; e++ {
		for _, d := range c.Decide(w.obs(1)) {
			if d.Op == tamiyo.Germinate {
				out = append(out, d.Layer)
				if !strings.Contains(d.Reason, "drawn at random from 8 candidates") {
					t.Fatalf("reason %q", d.Reason)
				}
			}
		}
		w.apply(t, c, nil)
		w.run(t, c) // keep epochs moving without decisions
	}
	return out
}

func TestRandomPolicyDeterministic(t *testing.T) {
	a, b, other := layersChosen(t, 7), layersChosen(t, 7), layersChosen(t, 8)
	if len(a) == 0 || !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different choices: %v %v", a, b)
	}
	if reflect.DeepEqual(a, other) {
		t.Fatalf("seeds 7 and 8 chose identically: %v", a)
	}
	distinct := map[int]bool{}
	for _, l := range a {
		distinct[l] = true
	}
	if len(distinct) < 3 {
		t.Fatalf("random placement looks fixed: %v", a)
	}
}

func TestStateRoundTrip(t *testing.T) {
	cfg := tamiyo.Config{Kind: tamiyo.Random, Seed: 3, Patience: 1, Governor: tamiyo.GovernorConfig{MaxConcurrent: 8, CooldownEpochs: intp(0)}}
	a := newController(t, cfg, linearHosts(4))
	wa := newWorld(4, 2)
	wa.run(t, a, 1, 1, 1)
	for _, l := range []float32{1, 1.1, 0.9} {
		a.Governor().ObserveStep(l, 0)
	}
	st, err := a.State()
	if err != nil {
		t.Fatal(err)
	}
	b64, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back tamiyo.State
	if err := json.Unmarshal(b64, &back); err != nil {
		t.Fatal(err)
	}
	b := newController(t, cfg, linearHosts(4))
	if err := b.SetState(back); err != nil {
		t.Fatal(err)
	}
	wb := &world{layers: wa.layers, seeds: append([]tamiyo.SeedView(nil), wa.seeds...), slots: 2, epoch: wa.epoch, used: wa.used}
	for e := 0; e < 5; e++ {
		da, db := a.Decide(wa.obs(1)), b.Decide(wb.obs(1))
		if !reflect.DeepEqual(stripIR(da), stripIR(db)) {
			t.Fatalf("epoch %d: diverged\n%+v\n%+v", e, da, db)
		}
		wa.apply(t, a, da)
		wb.apply(t, b, db)
	}
	sa, _ := a.State()
	sb, _ := b.State()
	if !reflect.DeepEqual(sa, sb) {
		t.Fatal("states diverged")
	}
}

func stripIR(ds []tamiyo.Decision) []tamiyo.Decision {
	out := append([]tamiyo.Decision(nil), ds...)
	for i := range out {
		out[i].Blueprint = nil
	}
	return out
}

func TestSetStateRejects(t *testing.T) {
	c := newController(t, tamiyo.Config{}, linearHosts(2))
	good, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(*tamiyo.State)
	}{
		{"rng", func(s *tamiyo.State) { s.RNG = []byte("junk") }},
		{"val order", func(s *tamiyo.State) { s.ValHistory = []tamiyo.EpochValue{{Epoch: 2, Value: 1}, {Epoch: 1, Value: 1}} }},
		{"val NaN", func(s *tamiyo.State) { s.ValHistory = []tamiyo.EpochValue{{Epoch: 0, Value: math.NaN()}} }},
		{"layers", func(s *tamiyo.State) { s.Governor.Germinated = []int{-1} }},
		{"loss window", func(s *tamiyo.State) { s.Governor.Losses = make([]float64, 21) }},
		{"germinated after last", func(s *tamiyo.State) { s.Governor.Germinated = []int{5, -1} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := good
			st.Governor.Germinated = append([]int(nil), good.Governor.Germinated...)
			tc.edit(&st)
			if err := c.SetState(st); err == nil {
				t.Fatal("bad state accepted")
			}
		})
	}
}

// Placement tries every layer once, then goes where the seed gain is
// highest, whatever the measured payoffs (reported in the reason).
func TestPlacementTriesEveryLayerThenFollowsSeedGain(t *testing.T) {
	c := newController(t, tamiyo.Config{MinGain: floatp(0), Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(3))
	w := newWorld(3, 3)
	w.signal(0, nissa.SeedGain, 0.5)
	w.signal(1, nissa.SeedGain, 0.1)
	w.signal(2, nissa.SeedGain, 0.2)
	w.run(t, c, 1, 1, 1)
	// Layer 1 holds a seed that helped 5%, layer 0 one that helped 1%; layer 2 is untried.
	*w.seed(1, 0) = tamiyo.SeedView{Layer: 1, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 10}
	*w.seed(0, 0) = tamiyo.SeedView{Layer: 0, Slot: 0, State: lifecycle.Holding, EpochsInState: 1, ParamCount: 10}
	ds := c.Decide(w.obs(1, tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: 0.01}, tamiyo.Contribution{Layer: 1, Slot: 0, DeltaLoss: 0.05}))
	w.apply(t, c, ds)
	// Both fossilized: the plateau is measured afresh from here.
	ds = w.run(t, c, 1, 1, 1)
	last := ds[len(ds)-1]
	if last.Op != tamiyo.Germinate || last.Layer != 2 || !strings.Contains(last.Reason, "untried") {
		t.Fatalf("the untried layer should come first: %+v", ds)
	}
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.Trials[0] != 1 || st.Trials[1] != 1 || st.Trials[2] != 0 || st.Gain[1] <= st.Gain[0] {
		t.Fatalf("state gains %v trials %v", st.Gain, st.Trials)
	}
	// Once every layer is tried, the seed gain ranks: layer 0, despite layer 1's better payoff.
	w.seed(2, 0).State = lifecycle.Holding
	w.seed(2, 0).EpochsInState = 1
	w.apply(t, c, c.Decide(w.obs(1, tamiyo.Contribution{Layer: 2, Slot: 0, DeltaLoss: 0.02})))
	ds = w.run(t, c, 1, 1, 1)
	last = ds[len(ds)-1]
	want := "layer 0 (fc0) has growth score 1 (seed gain 0.5 x alive 1), and its 1 measured seed(s) lowered the validation loss by 1.00% on average"
	if last.Op != tamiyo.Germinate || last.Layer != 0 || !strings.Contains(last.Reason, want) {
		t.Fatalf("decisions %+v", ds)
	}
}

// After a fossilization the plateau test starts afresh: the model needs
// Patience+1 epochs at its new capacity before it can be short of it. A
// prune leaves the capacity as it was and changes nothing.
func TestPlateauIsMeasuredSinceTheLastFossilization(t *testing.T) {
	cases := []struct {
		name  string
		judge tamiyo.Op
		// waits is how many flat epochs pass with a wait after the judgement.
		waits int
		why   string
	}{
		{"fossilized", tamiyo.Fossilize, 3, "since the fossilization at epoch 5"},
		{"pruned", tamiyo.Prune, 0, "validation loss plateaued"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{Patience: 2, Threshold: 0.1, MinGain: floatp(0), PruneBelow: 0.05,
				Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(0)}}, linearHosts(2))
			w := newWorld(2, 2)
			ds := w.run(t, c, 1, 1, 1)
			g := only(t, ds, tamiyo.Germinate)
			w.run(t, c, 1, 1) // epochs 3 and 4: the seed trains; at epoch 5 it is held and measured
			s := w.seed(g.Layer, g.Slot)
			s.State, s.EpochsInState = lifecycle.Holding, 0
			delta := 0.1 // above prune_below: fossilized
			if tc.judge == tamiyo.Prune {
				delta = 0.01
			}
			ds = c.Decide(w.obs(1, tamiyo.Contribution{Layer: g.Layer, Slot: g.Slot, DeltaLoss: delta}))
			only(t, ds, tc.judge)
			last := ds[len(ds)-1]
			w.apply(t, c, ds)
			for i := 0; i < tc.waits; i++ {
				if last.Op != tamiyo.Wait || !strings.Contains(last.Reason, tc.why) {
					t.Fatalf("epoch %d: want a wait %q, got %+v", w.epoch-1, tc.why, last)
				}
				ds = w.run(t, c, 1)
				last = ds[len(ds)-1]
			}
			if last.Op != tamiyo.Germinate {
				t.Fatalf("after %d flat epochs: want a germination, got %+v", tc.waits, last)
			}
		})
	}
}

// With the run's length known, Tamiyo stops germinating when a seed could not
// repay its compute: fewer epochs left than twice its lifecycle. At 100 steps
// per epoch (the test world), a 250-step lifecycle is 3 epochs, plus 1 held.
func TestNoGerminationTooLateToRepay(t *testing.T) {
	cases := []struct {
		name     string
		epochs   int
		steps    int64
		at       int // the plateau starts here; Tamiyo decides 3 epochs later
		germ     bool
		contains string
	}{
		{"length unknown", 0, 250, 20, true, "validation loss plateaued"},
		{"lifecycle unknown", 21, 0, 20, true, "validation loss plateaued"},
		{"time enough", 32, 250, 20, true, "validation loss plateaued"},
		{"too late", 31, 250, 20, false, "7 of the run's 31 epochs are left, fewer than twice a seed's lifecycle (4 epochs: 250 steps at 100 steps per epoch, then 1 held)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tamiyo.Config{Epochs: tc.epochs}, linearHosts(1))
			w := newWorld(1, 1)
			for w.epoch < tc.at {
				w.apply(t, c, c.Decide(w.obs(1+float64(tc.at-w.epoch)))) // falling fast: no plateau
			}
			w.epoch = tc.at
			for _, v := range []float64{1, 1, 1} {
				w.apply(t, c, c.Decide(w.obs(v)))
			}
			o := w.obs(1)
			o.LifecycleSteps = tc.steps
			o.Step = int64(w.epoch+1) * 100
			ds := c.Decide(o)
			last := ds[len(ds)-1]
			if (last.Op == tamiyo.Germinate) != tc.germ || !strings.Contains(last.Reason, tc.contains) {
				t.Fatalf("decision %+v", last)
			}
		})
	}
}
