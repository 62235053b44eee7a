package session_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// impactOf drains the session's reports and returns the impact record of
// layer/slot's first adaptation, failing when there is none.
func impactOf(t *testing.T, s *session.Session, layer, slot int) nissa.Impact {
	t.Helper()
	r, err := s.Reports()
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range r.Impacts {
		if im.Layer == layer && im.Slot == slot && im.Generation == 1 {
			return im
		}
	}
	t.Fatalf("no impact record for %d/%d generation 1 in %+v", layer, slot, r.Impacts)
	return nissa.Impact{}
}

// endSeed ends layer/slot's seed at the current step unless the policy
// already did.
func endSeed(t *testing.T, s *session.Session, layer, slot int) {
	t.Helper()
	if st := seedState(t, s, layer, slot).State; st == lifecycle.Holding {
		if _, err := s.Fossilize(layer, slot, "kept by the test"); err != nil {
			t.Fatal(err)
		}
	}
}

func near(p *float64, want float64) bool { return p != nil && math.Abs(*p-want) < 1e-9 }

// TestImpactOfKarnPrediction: a germination Tamiyo took from a Karn search
// ranked by its predictor carries Karn's predicted relative gain into the
// impact record; the measured contribution is compared as a relative gain.
// The control, the heuristic with the fixed template, predicts nothing.
func TestImpactOfKarnPrediction(t *testing.T) {
	root := t.TempDir()
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	host := blueprint.Host{Kind: "linear", In: 16, Out: 32}
	// 24 records from 4 runs (over Karn's 20 from 3): every one removed 5% of the loss
	// (val_loss 0.95 with the seed, delta 0.05), so the fitted predictor, clamped to the
	// gains it saw, predicts 0.05 for any candidate.
	for i := range 24 {
		putRecord(t, store, fmt.Sprintf("run-%d", i%4), i, host, 2+int64(i%5), 0.05)
	}
	_ = store.Close()
	for _, search := range []bool{true, false} {
		t.Run(fmt.Sprintf("search=%v", search), func(t *testing.T) {
			cfg := baseConfig()
			cfg.Layers = cfg.Layers[:1]
			cfg.Policy = "heuristic"
			cfg.Controller = tamiyo.Config{Search: search, Patience: 1, Threshold: 0.5}
			cfg.Urza = root
			s := newSession(t, cfg)
			var germ *session.DecisionResult
			for e := 0; e < 4 && germ == nil; e++ {
				res, err := s.EndEpoch(tamiyo.Metrics{ValLoss: nissa.Measure(1), TrainLoss: nissa.Measure(1)})
				if err != nil {
					t.Fatal(err)
				}
				for i := range res.Decisions {
					if res.Decisions[i].Op == tamiyo.Germinate {
						germ = &res.Decisions[i]
					}
				}
			}
			if germ == nil || !germ.Applied || germ.Layer != 0 || germ.Slot != 0 {
				t.Fatalf("no germination applied at 0/0: %+v", germ)
			}
			step(t, s, 20) // TRAINING 10, BLENDING 4: HOLDING
			// Validation loss 0.6 with the seed, 0.75 without: it removed 0.15 / 0.75 = 20% of the loss.
			if _, err := s.EndEpoch(tamiyo.Metrics{ValLoss: nissa.Measure(0.6), TrainLoss: nissa.Measure(0.6),
				Contributions: []tamiyo.Contribution{{Layer: 0, Slot: 0, DeltaLoss: 0.15}}}); err != nil {
				t.Fatal(err)
			}
			endSeed(t, s, 0, 0)
			im := impactOf(t, s, 0, 0)
			if im.Unit != "relative_gain" || !near(im.MeasuredGain, 0.2) || !near(im.MeasuredDeltaLoss, 0.15) {
				t.Fatalf("measurement: %+v", im)
			}
			if !search {
				if im.PredictedGain != nil || im.Error != nil || im.Note != "no prediction" || im.Predictor != "" {
					t.Fatalf("the heuristic predicted: %+v", im)
				}
				return
			}
			if germ.PredictedGain == nil || !near(germ.PredictedGain, 0.05) {
				t.Fatalf("decision's predicted gain %v, want Karn's 0.05 (%s)", germ.PredictedGain, germ.Reason)
			}
			if im.Predictor != "karn" || !near(im.PredictedGain, 0.05) || !near(im.Error, 0.15) || im.Note != "" ||
				im.PredictedValue != nil {
				t.Fatalf("karn's impact: %+v", im)
			}
			if m := metricsOf(t, s); math.Abs(m["esper_prediction_abs_error"]-0.15) > 1e-9 {
				t.Fatalf("running error metric: %v", m)
			}
		})
	}
}

// TestImpactOfValuePrediction: the learned policy's predicted value (gain
// per host-epoch) is turned into a relative gain with the seed's compute
// when it ends, and compared with the measured relative gain.
func TestImpactOfValuePrediction(t *testing.T) {
	cfg, _ := learnedConfig(t, 0.5) // the model predicts 0.5 for every candidate
	s := newSession(t, cfg)
	step(t, s, 10)
	res, err := s.EndEpoch(metrics(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	d := res.Decisions[0]
	if d.Op != tamiyo.Germinate || !d.Applied || !near(d.PredictedValue, 0.5) {
		t.Fatalf("decision %+v, want an applied germination predicting 0.5", d)
	}
	var trainedAt int64 = -1
	for _, e := range step2(t, s, 30) {
		if e.Layer == d.Layer && e.Slot == d.Slot && e.To == lifecycle.Training {
			trainedAt = e.Step
		}
	}
	if trainedAt < 0 || seedState(t, s, d.Layer, d.Slot).State != lifecycle.Holding {
		t.Fatalf("the seed did not train into HOLDING (trained at %d)", trainedAt)
	}
	// Validation loss 0.6 with the seed, 0.75 without: a relative gain of 0.2.
	if _, err := s.EndEpoch(metrics(1, 0.6, tamiyo.Contribution{Layer: d.Layer, Slot: d.Slot, DeltaLoss: 0.15})); err != nil {
		t.Fatal(err)
	}
	endSeed(t, s, d.Layer, d.Slot)
	im := impactOf(t, s, d.Layer, d.Slot)
	// Compute by hand: size = its params over the wrapped layers' (544 + 264); epochs = steps it ran
	// (TRAINING at trainedAt to the end at step 40) over the steps per epoch when it germinated
	// (step 10 in epoch 0: 10); gain predicted = 0.5 x size x epochs.
	size := float64(d.ParamCount) / 808
	epochs := float64(40-trainedAt) / 10
	want := 0.5 * math.Max(size*epochs, 0.01)
	t.Logf("params %d, trained at %d: size %v, epochs %v, predicted %v, error %v", d.ParamCount, trainedAt, size, epochs, want, 0.2-want)
	if im.Predictor != "value" || !near(im.PredictedValue, 0.5) || !near(im.Compute, size*epochs) ||
		!near(im.PredictedGain, want) || !near(im.MeasuredGain, 0.2) || !near(im.Error, 0.2-want) || im.Note != "" {
		t.Fatalf("value's impact %+v; want predicted %v (size %v x epochs %v x 0.5)", im, want, size, epochs)
	}
}

// step2 runs n steps and returns the events they raised.
func step2(t *testing.T, s *session.Session, n int64) []session.Event {
	t.Helper()
	step(t, s, n)
	return events(t, s)
}
