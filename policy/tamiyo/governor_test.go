package tamiyo_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func newGovernor(t testing.TB, cfg tamiyo.GovernorConfig, layers int) *tamiyo.Governor {
	t.Helper()
	g, err := tamiyo.NewGovernor(cfg, layers)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestObserveStep(t *testing.T) {
	nan := float32(math.NaN())
	type obs struct {
		loss, nonfinite float32
		want            tamiyo.AlarmKind
	}
	cases := []struct {
		name  string
		steps []obs
	}{
		{"healthy", []obs{{1, 0, tamiyo.NoAlarm}, {0.9, 0, tamiyo.NoAlarm}}},
		{"nonfinite count", []obs{{1, 2, tamiyo.NonfiniteCount}}},
		{"unmeasured", []obs{{nan, nan, tamiyo.NoAlarm}}},
		{"inf loss", []obs{{float32(math.Inf(1)), 0, tamiyo.NonfiniteLoss}}},
		{"spike needs samples", []obs{{1, 0, 0}, {1, 0, 0}, {50, 0, tamiyo.NoAlarm}}},
		{"spike", []obs{{1, 0, 0}, {1, 0, 0}, {1, 0, 0}, {3.5, 0, tamiyo.LossSpike}, {2.9, 0, tamiyo.NoAlarm}}},
		{"spikes stay out of the window", []obs{{1, 0, 0}, {1, 0, 0}, {1, 0, 0}, {3.5, 0, tamiyo.LossSpike}, {1, 0, 0},
			{1, 0, 0}, {1, 0, 0}, {3.1, 0, tamiyo.LossSpike}}},
		// A rollback returns the model to an older state: the losses before it no longer describe it,
		// and the restored state's loss (here 3.1, 3x the mean before) is no spike.
		{"an alarm empties the window", []obs{{1, 0, 0}, {1, 0, 0}, {1, 0, 0}, {3.5, 0, tamiyo.LossSpike},
			{3.1, 0, 0}, {3.1, 0, 0}, {3.1, 0, 0}, {3.1, 0, 0}, {10, 0, tamiyo.LossSpike}}},
		{"a non-finite count empties the window", []obs{{1, 0, 0}, {1, 0, 0}, {1, 0, 0}, {1, 1, tamiyo.NonfiniteCount},
			{5, 0, 0}}},
		{"noise near zero is no spike", []obs{{0.001, 0, 0}, {0.001, 0, 0}, {0.001, 0, 0}, {0.004, 0, tamiyo.NoAlarm}}},
		{"a large rise near zero is", []obs{{0.001, 0, 0}, {0.001, 0, 0}, {0.001, 0, 0}, {0.2, 0, tamiyo.LossSpike}}},
		{"negative losses never spike", []obs{{-1, 0, 0}, {-1, 0, 0}, {-1, 0, 0}, {100, 0, tamiyo.NoAlarm}}},
		{"new level after a spike", []obs{{1, 0, 0}, {1, 0, 0}, {1, 0, 0},
			{10, 0, tamiyo.LossSpike}, {10, 0, tamiyo.NoAlarm}, {10, 0, tamiyo.NoAlarm},
			{10, 0, tamiyo.NoAlarm}, {10, 0, tamiyo.NoAlarm}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newGovernor(t, tamiyo.GovernorConfig{LossWindow: 10, MinLossSamples: 3}, 1)
			raised := int64(0)
			for i, o := range tc.steps {
				a := g.ObserveStep(o.loss, o.nonfinite)
				if a.Kind != o.want {
					t.Fatalf("step %d: alarm %v (%s), want %v", i, a.Kind, a.Reason(), o.want)
				}
				if a.Raised() != (a.Reason() != "") {
					t.Fatalf("step %d: Raised %v with reason %q", i, a.Raised(), a.Reason())
				}
				if a.Raised() {
					raised++
				}
			}
			if g.Alarms() != raised {
				t.Fatalf("Alarms() = %d, want %d", g.Alarms(), raised)
			}
		})
	}
}

func TestAlarmReasons(t *testing.T) {
	g := newGovernor(t, tamiyo.GovernorConfig{LossWindow: 4, MinLossSamples: 2}, 1)
	if a := g.ObserveStep(1, 3); a.Reason() != "governor: 3 non-finite values in the training step" {
		t.Fatalf("%q", a.Reason())
	}
	if a := g.ObserveEpoch(nissa.Measure(math.NaN())); a.Reason() != "governor: training loss is NaN" {
		t.Fatalf("%q", a.Reason())
	}
	if a := g.ObserveEpoch(nissa.Metric{}); a.Raised() {
		t.Fatal("an unmeasured epoch loss raised an alarm")
	}
	g.ObserveStep(2, 0)
	g.ObserveStep(2, 0)
	a := g.ObserveStep(7, 0)
	if a.Reason() != "governor: training loss 7 exceeds 3 x its rolling mean 2" {
		t.Fatalf("%q", a.Reason())
	}
	if m, n := g.RollingMean(); !math.IsNaN(m) || n != 0 {
		t.Fatalf("RollingMean after a spike = %v, %d; want the window emptied", m, n)
	}
}

func TestObserveValidation(t *testing.T) {
	cases := []struct {
		name   string
		loss   nissa.Metric
		raised bool
		reason string
	}{
		{"unmeasured", nissa.Metric{}, false, ""},
		{"finite", nissa.Measure(0.5), false, ""},
		{"huge but finite", nissa.Measure(1e300), false, ""},
		{"NaN", nissa.Measure(math.NaN()), true, "governor: validation loss is NaN"},
		{"+Inf", nissa.Measure(math.Inf(1)), true, "governor: validation loss is +Inf"},
		{"-Inf", nissa.Measure(math.Inf(-1)), true, "governor: validation loss is -Inf"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newGovernor(t, tamiyo.GovernorConfig{}, 1)
			a := g.ObserveValidation(c.loss)
			if a.Raised() != c.raised || a.Reason() != c.reason {
				t.Fatalf("ObserveValidation(%+v) = %+v (%q), want raised %v (%q)", c.loss, a, a.Reason(), c.raised, c.reason)
			}
			if want := map[bool]int64{false: 0, true: 1}[c.raised]; g.Alarms() != want {
				t.Fatalf("Alarms() = %d, want %d", g.Alarms(), want)
			}
			if n := func() int { _, n := g.RollingMean(); return n }(); n != 0 {
				t.Fatalf("the validation loss entered the training loss window (%d samples)", n)
			}
		})
	}
}

func TestAdmitAndCooldown(t *testing.T) {
	g := newGovernor(t, tamiyo.GovernorConfig{MaxParams: 1000, MaxConcurrent: 2, CooldownEpochs: intp(2)}, 3)
	cases := []struct {
		name         string
		used, params int64
		active       int
		sentinel     error
	}{
		{"fits", 500, 500, 1, nil},
		{"over budget", 600, 500, 0, tamiyo.ErrOverBudget},
		{"too many in flight", 0, 1, 2, tamiyo.ErrConcurrency},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := g.Admit(tc.used, tc.params, tc.active)
			if tc.sentinel == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.sentinel) || errcode.Of(err) != errcode.Budget {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if err := g.Admit(600, 500, 0); !strings.Contains(err.Error(), "budget: params would be 1100, over the limit of 1000") {
		t.Fatalf("reason: %v", err)
	}
	if g.Remaining(300) != 700 || g.Remaining(2000) != 0 {
		t.Fatal("Remaining")
	}
	if g.Cooldown(1, 0) != 0 || g.LastGermination() != -1 {
		t.Fatal("fresh governor cools down")
	}
	g.RecordGermination(1, 4)
	for epoch, want := range map[int]int{4: 2, 5: 1, 6: 0, 9: 0} {
		if got := g.Cooldown(1, epoch); got != want {
			t.Fatalf("Cooldown(1, %d) = %d, want %d", epoch, got, want)
		}
	}
	if g.Cooldown(0, 5) != 0 || g.Cooldown(7, 5) != 0 || g.LastGermination() != 4 {
		t.Fatal("cooldown leaks to other layers")
	}
	unlimited := newGovernor(t, tamiyo.GovernorConfig{}, 1)
	if unlimited.Remaining(1<<40) != math.MaxInt64 || unlimited.Admit(1<<40, 1<<40, 0) != nil {
		t.Fatal("no budget must mean no limit")
	}
}

func TestRollbackTarget(t *testing.T) {
	sv := func(l, s int, st lifecycle.State, germ int64) tamiyo.SeedView {
		return tamiyo.SeedView{Layer: l, Slot: s, State: st, GerminatedStep: germ}
	}
	cases := []struct {
		name  string
		seeds []tamiyo.SeedView
		want  int
	}{
		{"none", []tamiyo.SeedView{sv(0, 0, lifecycle.Dormant, -1), sv(0, 1, lifecycle.Fossilized, 5)}, -1},
		{"germinated cannot roll back", []tamiyo.SeedView{sv(0, 0, lifecycle.Germinated, 9), sv(1, 0, lifecycle.Training, 3)}, 1},
		{"newest wins", []tamiyo.SeedView{sv(0, 0, lifecycle.Holding, 10), sv(1, 0, lifecycle.Blending, 30), sv(2, 0, lifecycle.Training, 20)}, 1},
		{"tie goes to the higher layer", []tamiyo.SeedView{sv(2, 0, lifecycle.Training, 7), sv(0, 0, lifecycle.Training, 7)}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tamiyo.RollbackTarget(tc.seeds); got != tc.want {
				t.Fatalf("RollbackTarget = %d, want %d", got, tc.want)
			}
		})
	}
	d := tamiyo.RollbackDecision(cases[0].seeds, tamiyo.Alarm{Kind: tamiyo.NonfiniteCount, Value: 1})
	if d.Op != tamiyo.Rollback || d.Layer != -1 || !strings.Contains(d.Reason, "no seed in flight") {
		t.Fatalf("rollback without a seed: %+v", d)
	}
	d = tamiyo.RollbackDecision(cases[2].seeds, tamiyo.Alarm{Kind: tamiyo.NonfiniteCount, Value: 1})
	if d.Layer != 1 || d.Slot != 0 || !strings.Contains(d.Reason, "rolling back seed 1/0, the newest in flight (BLENDING, germinated at step 30)") {
		t.Fatalf("rollback: %+v", d)
	}
}

func TestObserveStepDoesNotAllocate(t *testing.T) {
	g := newGovernor(t, tamiyo.GovernorConfig{}, 4)
	n := testing.AllocsPerRun(1000, func() {
		if g.ObserveStep(1, 0).Raised() {
			panic("alarm")
		}
	})
	if n != 0 {
		t.Fatalf("ObserveStep allocates %v", n)
	}
}
