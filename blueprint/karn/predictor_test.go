package karn

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/urza"
)

// linearTrials returns n trials on a 64->64 linear host whose gain is a
// known function of the residual_mlp width (plus noise of amplitude
// noise), spread over runs.
func linearTrials(t testing.TB, n, runs int, noise float64, seed uint64) []Trial {
	t.Helper()
	host := blueprint.Host{Kind: blueprint.HostLinear, In: 64, Out: 64}
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]Trial, n)
	for i := range out {
		w := int64(1 + rng.IntN(64))
		ir, err := blueprint.Instantiate("residual_mlp", blueprint.Params{"width": w}, host)
		if err != nil {
			t.Fatal(err)
		}
		g := 0.02 + 0.01*math.Log1p(float64(ir.ParamCount)) + noise*(rng.Float64()-0.5)
		out[i] = Trial{Run: fmt.Sprintf("run%d", i%runs), Template: "residual_mlp", Params: ir.Params, Host: host,
			ParamCount: ir.ParamCount, FLOPsPerSample: ir.FLOPsPerSample, Gain: g, Signals: Signals{"grad_norm": rng.Float64()}}
	}
	return out
}

func TestFitTooFew(t *testing.T) {
	cases := []struct {
		name    string
		n, runs int
	}{
		{"too few records", MinRecords - 1, 5},
		{"too few runs", 40, MinRuns - 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			trials := linearTrials(t, tc.n, tc.runs, 0, 1)
			if _, err := Fit(trials); !errors.Is(err, ErrTooFew) {
				t.Fatalf("Fit: %v, want ErrTooFew", err)
			}
			if _, err := Evaluate(trials); !errors.Is(err, ErrTooFew) {
				t.Fatalf("Evaluate: %v, want ErrTooFew", err)
			}
		})
	}
}

func TestFitRecoversRelation(t *testing.T) {
	trials := linearTrials(t, 80, 8, 0, 2)
	p, err := Fit(trials)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range trials[:10] {
		s := TrialSample(&tr)
		if got := p.Predict(&s); math.Abs(got-tr.Gain) > 0.1*math.Abs(tr.Gain) {
			t.Fatalf("predicted %v for a noiseless gain %v", got, tr.Gain)
		}
	}
}

func TestEvaluate(t *testing.T) {
	cases := []struct {
		name       string
		noise      float64
		wantWithin float64 // at least
		wantBeat   bool    // MAE below the mean predictor's
	}{
		{"noiseless relation", 0, 0.9, true},
		{"noise only", 1, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			trials := linearTrials(t, 100, 7, tc.noise, 3)
			if tc.noise >= 1 {
				for i := range trials { // the gain no longer depends on the blueprint
					trials[i].Gain = tc.noise * (float64((i*7919)%101)/101 - 0.5)
				}
			}
			e, err := Evaluate(trials)
			if err != nil {
				t.Fatal(err)
			}
			if e.Records != 100 || e.Runs != 7 || e.Folds != EvalFolds {
				t.Fatalf("evaluated %+v", e)
			}
			if e.WithinShare < tc.wantWithin {
				t.Fatalf("within-20%% share %.2f, want >= %.2f", e.WithinShare, tc.wantWithin)
			}
			if beat := e.MAE < e.BaselineMAE; beat != tc.wantBeat {
				t.Fatalf("MAE %.4g vs baseline %.4g: beat = %v, want %v", e.MAE, e.BaselineMAE, beat, tc.wantBeat)
			}
		})
	}
}

// record returns an outcome record as core/urza stores it, for a
// residual_mlp of width w on a 16->16 linear host measured at gain g (nil:
// no measurement).
func record(t testing.TB, run string, seq int, w int64, g *float64) []byte {
	t.Helper()
	host := blueprint.Host{Kind: blueprint.HostLinear, In: 16, Out: 16}
	ir, err := blueprint.Instantiate("residual_mlp", blueprint.Params{"width": w}, host)
	if err != nil {
		t.Fatal(err)
	}
	irb, _ := ir.Canonical()
	contribs := []any{}
	if g != nil {
		contribs = append(contribs, map[string]any{"epoch": 4, "val_loss": 0.5 * (1 - *g), "val_loss_without": 0.5, "delta_loss": 0.5 * *g})
	}
	rec := map[string]any{
		"run_id": run, "seq": seq, "layer": 0, "layer_name": "fc", "slot": 0, "policy": "heuristic", "reason": "plateau",
		"observation": map[string]any{"epoch": 3, "metrics": map[string]any{"val_loss": 0.7, "train_loss": "NaN"},
			"layer_signals": map[string]any{"grad_norm": map[string]any{"mean": 0.25}, "dead_frac": map[string]any{"mean": nil}}},
		"blueprint_id": strings.Repeat("ab", 32), "template": "residual_mlp", "template_params": ir.Params,
		"blueprint": json.RawMessage(irb), "host": host, "param_count": ir.ParamCount, "flops_per_sample": ir.FLOPsPerSample,
		"train_flops": 0, "contributions": contribs, "final_state": "FOSSILIZED", "ended_by": "fossilized", "final_reason": "",
		"germinated_step": 10 * seq, "germinated_epoch": 3, "ended_step": 10*seq + 5, "ended_epoch": 5,
		"states": []any{map[string]any{"state": "TRAINING", "from_step": 10 * seq, "to_step": 10*seq + 5, "steps": 5,
			"from_epoch": 3, "to_epoch": 5, "epochs": 2, "reason": "", "samples": 5, "train_flops": 0}},
	}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrialFromOutcome(t *testing.T) {
	g := 0.04
	tr, ok, err := TrialFromOutcome(record(t, "run-a", 0, 8, &g))
	if err != nil || !ok {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if math.Abs(tr.Gain-0.04) > 1e-12 || tr.Params["width"] != int64(8) || tr.Run != "run-a" || !tr.Fossilized {
		t.Fatalf("trial %+v", tr)
	}
	if len(tr.Signals) != 2 || tr.Signals["grad_norm"] != 0.25 || tr.Signals["val_loss"] != 0.7 {
		t.Fatalf("signals %v: want grad_norm and val_loss only (null and NaN are not measurements)", tr.Signals)
	}
	if _, ok, err := TrialFromOutcome(record(t, "run-a", 1, 8, nil)); ok || err != nil {
		t.Fatalf("a record without a measurement: ok %v err %v", ok, err)
	}
	if _, _, err := TrialFromOutcome([]byte(`{"contributions": 3}`)); err == nil {
		t.Fatal("a malformed record gave no error")
	}
}

// TestServiceRefitsFromUrza drives a Service over a real Urza store: the
// prior ranks until MinRecords measured records from MinRuns runs are
// stored, the predictor then, and it refits after RetrainEvery more.
func TestServiceRefitsFromUrza(t *testing.T) {
	store, err := urza.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	svc := NewService(store)
	req := Request{Host: blueprint.Host{Kind: blueprint.HostLinear, In: 16, Out: 16}, Budget: blueprint.Budget{MaxParams: 2000}}
	put := func(n, from int) {
		for i := from; i < from+n; i++ {
			g := 0.01 * float64(1+i%5)
			if _, err := store.PutOutcome(record(t, fmt.Sprintf("run-%d", i%4), i, int64(1+i%20), &g)); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(MinRecords-1, 0)
	if _, err := store.PutOutcome(record(t, "run-0", 999, 4, nil)); err != nil { // unmeasured: not counted
		t.Fatal(err)
	}
	ans, err := svc.Answer(req)
	if err != nil {
		t.Fatal(err)
	}
	if ans.RankedBy != RankedByPrior || !strings.Contains(ans.Predictor, "too few") || ans.Candidates[0].PredictedGain != nil {
		t.Fatalf("with %d records: ranked by %s (%s)", MinRecords-1, ans.RankedBy, ans.Predictor)
	}
	put(1, MinRecords-1)
	ans, err = svc.Answer(req)
	if err != nil {
		t.Fatal(err)
	}
	if ans.RankedBy != RankedByPredictor || ans.Candidates[0].PredictedGain == nil || svc.Stats().Fits != 1 {
		t.Fatalf("with %d records: ranked by %s (%s), fits %d", MinRecords, ans.RankedBy, ans.Predictor, svc.Stats().Fits)
	}
	put(RetrainEvery-1, MinRecords)
	if _, err := svc.Answer(req); err != nil || svc.Stats().Fits != 1 {
		t.Fatalf("refit before %d new records (fits %d, err %v)", RetrainEvery, svc.Stats().Fits, err)
	}
	put(1, MinRecords+RetrainEvery-1)
	if _, err := svc.Answer(req); err != nil || svc.Stats().Fits != 2 || svc.Stats().FittedOn != MinRecords+RetrainEvery {
		t.Fatalf("no refit after %d new records: %+v, err %v", RetrainEvery, svc.Stats(), err)
	}
	if st := svc.Stats(); st.Requests != 4 || st.Answered != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestServiceRereadsChangedRecords: a record rewritten under its key (an
// in-flight germination that ended with a measurement) is read again; an
// unchanged one is not decoded twice (its trial stays as it was).
func TestServiceRereadsChangedRecords(t *testing.T) {
	store, err := urza.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var _ FileSource = store
	svc := NewService(store)
	if _, err := store.PutOutcome(record(t, "run-a", 0, 4, nil)); err != nil {
		t.Fatal(err)
	}
	g := 0.1
	if _, err := store.PutOutcome(record(t, "run-a", 1, 4, &g)); err != nil {
		t.Fatal(err)
	}
	if err := svc.Refresh(); err != nil || svc.Stats().Trials != 1 {
		t.Fatalf("trials %d, err %v", svc.Stats().Trials, err)
	}
	if _, err := store.PutOutcome(record(t, "run-a", 0, 4, &g)); err != nil { // the same key, now measured
		t.Fatal(err)
	}
	if err := svc.Refresh(); err != nil || svc.Stats().Trials != 2 {
		t.Fatalf("the rewritten record was not read again: trials %d, err %v", svc.Stats().Trials, err)
	}
	if _, err := store.OutcomeRecord("run-a/../../x"); err == nil {
		t.Fatal("a key outside the run's folder was read")
	}
}

// TestRelativeGain: the share of the loss without the seed that it
// removed; values by hand, and the measurements that have none.
func TestRelativeGain(t *testing.T) {
	cases := []struct {
		val, delta float64
		want       float64
		ok         bool
	}{
		{0.6, 0.15, 0.2, true},         // 0.15 / 0.75
		{1, -0.25, -0.25 / 0.75, true}, // the seed hurt: 0.25 / 0.75 of the loss added
		{1, 0, 0, true},
		{0, 0, 0, false},      // no loss without the seed
		{0.5, -0.5, 0, false}, // the same
		{math.NaN(), 0.1, 0, false},
		{1, math.Inf(1), 0, false},
	}
	for _, c := range cases {
		got, ok := RelativeGain(c.val, c.delta)
		if ok != c.ok || (ok && math.Abs(got-c.want) > 1e-12) {
			t.Errorf("RelativeGain(%v, %v) = %v, %v; want %v, %v", c.val, c.delta, got, ok, c.want, c.ok)
		}
	}
}
