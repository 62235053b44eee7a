package nissa_test

import (
	"errors"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
)

func TestAlertConfigValidation(t *testing.T) {
	cases := []struct {
		name string
		cfg  nissa.AlertConfig
		ok   bool
	}{
		{"zero is the defaults", nissa.AlertConfig{}, true},
		{"step time factor 1 is refused", nissa.AlertConfig{StepTimeFactor: 1}, false},
		{"step time factor 2", nissa.AlertConfig{StepTimeFactor: 2}, true},
		{"infinite factor", nissa.AlertConfig{StepTimeFactor: math.Inf(1)}, false},
		{"window 1", nissa.AlertConfig{StepTimeWindow: 1}, false},
		{"failure rate above 1", nissa.AlertConfig{FailureRate: 1.5}, false},
		{"failure rate off", nissa.AlertConfig{FailureRate: -1}, true},
		{"failure rate NaN", nissa.AlertConfig{FailureRate: math.NaN()}, false},
		{"stall too short", nissa.AlertConfig{StallSeconds: 0.001}, false},
		{"stall negative", nissa.AlertConfig{StallSeconds: -1}, false},
		{"plateau negative", nissa.AlertConfig{NoImprovementEpochs: -1}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.WithDefaults()
			if tc.ok != (err == nil) {
				t.Fatalf("WithDefaults(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
			}
			if err != nil && !errors.Is(err, nissa.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			if err == nil && (got.StepTimeWindow != nissa.DefaultStepTimeWindow || got.FailureWindow != nissa.DefaultFailureWindow) {
				t.Fatalf("defaults not filled: %+v", got)
			}
		})
	}
}

func newWatch(t *testing.T, cfg nissa.AlertConfig) *nissa.Watch {
	t.Helper()
	w, err := nissa.NewWatch(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestStepTimeRegression(t *testing.T) {
	cases := []struct {
		name   string
		cfg    nissa.AlertConfig
		times  []float64 // seconds per window of 10 steps
		raised []int     // indexes of the windows that raise
	}{
		{"off by default", nissa.AlertConfig{}, []float64{1, 1, 1, 1, 9, 9, 9}, nil},
		{"steady", nissa.AlertConfig{StepTimeFactor: 2, StepTimeWindow: 4, StepTimePatience: 1}, []float64{1, 1.1, 0.9, 1, 1.2, 1.9, 1}, nil},
		{"one slow window with patience 1", nissa.AlertConfig{StepTimeFactor: 2, StepTimeWindow: 4, StepTimePatience: 1},
			[]float64{1, 1, 1, 1, 3, 1}, []int{4}},
		{"not armed before the window fills", nissa.AlertConfig{StepTimeFactor: 2, StepTimeWindow: 4, StepTimePatience: 1},
			[]float64{1, 5, 1, 1, 1}, nil},
		{"patience 3 needs three in a row", nissa.AlertConfig{StepTimeFactor: 2, StepTimeWindow: 4, StepTimePatience: 3},
			[]float64{1, 1, 1, 1, 3, 3, 1, 3, 3, 3, 3}, []int{9}},
		{"one alarm per episode, re-armed after", nissa.AlertConfig{StepTimeFactor: 2, StepTimeWindow: 4, StepTimePatience: 1},
			[]float64{1, 1, 1, 1, 3, 3, 3, 1, 3}, []int{4, 8}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWatch(t, tc.cfg)
			var got []int
			for i, s := range tc.times {
				a, ok := w.StepTime(int64(10*(i+1)), 0, 10, s)
				if ok {
					if a.Kind != nissa.AlarmStepTime || float64(a.Value) != s/10 || a.Message == "" {
						t.Fatalf("alarm %+v", a)
					}
					got = append(got, i)
				}
			}
			if len(got) != len(tc.raised) {
				t.Fatalf("raised at %v, want %v", got, tc.raised)
			}
			for i := range got {
				if got[i] != tc.raised[i] {
					t.Fatalf("raised at %v, want %v", got, tc.raised)
				}
			}
		})
	}
}

func TestFailureRate(t *testing.T) {
	w := newWatch(t, nissa.AlertConfig{FailureRate: 0.3, FailureWindow: 10})
	raised := 0
	// Every other step fails: 5 of 10 >= 0.3 x 10, raised once.
	for step := int64(1); step <= 40; step += 2 {
		if _, ok := w.Failure(step, 0); ok {
			raised++
			if step != 5 {
				t.Fatalf("raised at step %d, want 5 (the third failing step of the window)", step)
			}
		}
		w.Failure(step, 0) // a second failure of the same step counts once
	}
	if raised != 1 {
		t.Fatalf("raised %d alarms, want 1", raised)
	}
	// Rare failures stay under the rate, and re-arm the check.
	for step := int64(100); step <= 200; step += 50 {
		if _, ok := w.Failure(step, 0); ok {
			t.Fatalf("rare failure at %d raised", step)
		}
	}
	for step := int64(300); step < 303; step++ {
		if _, ok := w.Failure(step, 0); ok {
			raised++
		}
	}
	if raised != 2 {
		t.Fatalf("raised %d alarms, want 2 (re-armed after the quiet spell)", raised)
	}
	off := newWatch(t, nissa.AlertConfig{FailureRate: -1})
	for step := int64(1); step <= 20; step++ {
		if _, ok := off.Failure(step, 0); ok {
			t.Fatal("a disabled check raised")
		}
	}
}

func TestNoImprovement(t *testing.T) {
	w := newWatch(t, nissa.AlertConfig{NoImprovementEpochs: 2})
	vals := []float64{1, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85, 0.85}
	var at []int
	for e, v := range vals {
		if a, ok := w.Epoch(0, e, nissa.Measure(v)); ok {
			at = append(at, e)
			if a.Kind != nissa.AlarmNoImprovement || a.Value != 2 {
				t.Fatalf("alarm %+v", a)
			}
		}
	}
	// 0.9 at epoch 1 is the best until epoch 5: epochs 2 and 3 do not improve (raised at 3, once);
	// 0.8 at 5 re-arms, 6 and 7 do not improve (raised at 7).
	if len(at) != 2 || at[0] != 3 || at[1] != 7 {
		t.Fatalf("raised at epochs %v, want [3 7]", at)
	}
	if _, ok := w.Epoch(0, 8, nissa.Metric{}); ok {
		t.Fatal("an unmeasured epoch raised")
	}
}

func TestImpacts(t *testing.T) {
	tr := nissa.NewImpacts(4)
	if _, ok := tr.Ended(0, 0, 0, "PRUNED", 5, 1, 1); ok {
		t.Fatal("an adaptation that never began ended")
	}
	tr.Germinated(0, 1)
	tr.Measured(0, 0.2, 0.1)
	im, ok := tr.Ended(0, 0, 0, "FOSSILIZED", 10, 2, 1)
	if !ok || im.PredictedGain != nil || im.Error != nil || im.Note != "no prediction" || *im.MeasuredGain != 0.1 ||
		*im.MeasuredDeltaLoss != 0.2 || im.Unit != "relative_gain" || im.Predictor != "" {
		t.Fatalf("without a prediction: %+v", im)
	}
	if _, ok := tr.Stats().MeanAbsError(); ok {
		t.Fatal("a running error exists without any prediction")
	}
	tr.Germinated(1, 1)
	tr.Predicted(1, 0.5, "karn")
	tr.Measured(1, 0.1, 0.05)
	tr.Measured(1, 0.3, 0.3)                          // the last measurement is compared
	im, _ = tr.Ended(1, 0, 1, "FOSSILIZED", 12, 2, 7) // compute plays no part in a gain predicted as such
	if im.Error == nil || math.Abs(*im.Error-(-0.2)) > 1e-12 || im.Note != "" || im.Predictor != "karn" || im.Compute != nil {
		t.Fatalf("with a prediction: %+v", im)
	}
	tr.Germinated(2, 4)
	tr.Predicted(2, 0.1, "karn")
	im, _ = tr.Ended(2, 0, 2, "PRUNED", 13, 2, 1)
	if im.Note != "not measured" || im.Error != nil || im.Generation != 4 {
		t.Fatalf("pruned before measurement: %+v", im)
	}
	// A gain per unit of compute: 0.4 per host-epoch x 0.25 host-epochs = a gain of 0.1; measured 0.16: error 0.06.
	tr.Germinated(3, 2)
	tr.PredictedPerCompute(3, 0.4, "value")
	tr.Measured(3, 0.2, 0.16)
	im, _ = tr.Ended(3, 1, 0, "FOSSILIZED", 14, 3, 0.25)
	if im.PredictedGain == nil || math.Abs(*im.PredictedGain-0.1) > 1e-12 || *im.PredictedValue != 0.4 || *im.Compute != 0.25 ||
		math.Abs(*im.Error-0.06) > 1e-12 || im.Predictor != "value" {
		t.Fatalf("per unit of compute: %+v", im)
	}
	st := tr.Stats()
	mae, ok := st.MeanAbsError()
	if st.Ended != 4 || st.Predicted != 3 || st.Measured != 3 || st.Compared != 2 || !ok || math.Abs(mae-0.13) > 1e-12 {
		t.Fatalf("stats %+v, mae %v", st, mae)
	}
	// The state round-trips with an adaptation in flight, and a state for other slots is refused.
	tr.Germinated(0, 2)
	tr.PredictedPerCompute(0, 0.5, "value")
	tr.Measured(0, 0.3, 0.2)
	back := nissa.NewImpacts(4)
	if err := back.Restore(tr.State()); err != nil || back.Stats() != st {
		t.Fatalf("restore: %v, %+v", err, back.Stats())
	}
	if im, _ := back.Ended(0, 0, 0, "FOSSILIZED", 20, 4, 0.2); im.PredictedGain == nil || math.Abs(*im.PredictedGain-0.1) > 1e-12 ||
		math.Abs(*im.Error-0.1) > 1e-12 || im.Predictor != "value" {
		t.Fatalf("restored in flight: %+v", im)
	}
	if err := nissa.NewImpacts(2).Restore(tr.State()); !errors.Is(err, nissa.ErrState) {
		t.Fatalf("restore into 2 slots: %v", err)
	}
	// A snapshot from before the relative gains: its measurement has no relative gain.
	old := tr.State()
	old.PerCompute, old.Source, old.Gain = nil, nil, nil
	back = nissa.NewImpacts(4)
	if err := back.Restore(old); err != nil {
		t.Fatal(err)
	}
	if im, _ := back.Ended(0, 0, 0, "FOSSILIZED", 20, 4, 0.2); im.PredictedGain != nil || im.MeasuredGain != nil ||
		*im.MeasuredDeltaLoss != 0.3 || im.Note != "no prediction" {
		t.Fatalf("older state: %+v", im)
	}
}
