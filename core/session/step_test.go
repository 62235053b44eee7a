package session_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func TestStepArgumentErrors(t *testing.T) {
	s := newSession(t, baseConfig())
	germinate(t, s, 0, 0, `{"template": "residual_mlp", "params": {"width": 4}}`)
	cases := []struct {
		name    string
		steps   int64
		signals []float32
		alphas  int
		code    errcode.Code
		msg     string
	}{
		{"negative steps", -1, nil, 4, errcode.Invalid, "steps -1"},
		{"short signals", 1, make([]float32, 15), 4, errcode.Invalid, "signals buffer has 15 floats, want 0 or 16 (2 globals + 7 x 2 layers)"},
		{"long signals", 1, make([]float32, 17), 4, errcode.Invalid, "has 17 floats"},
		{"alphas", 1, nil, 3, errcode.Buffer, "alphas buffer holds 3 floats, want 4 (2 layers x 2 slots)"},
		{"nil alphas", 1, nil, 0, errcode.Buffer, "holds 0 floats"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Step(tc.steps, tc.signals, make([]float32, tc.alphas))
			if errcode.Of(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
		})
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Step != 0 || seedState(t, s, 0, 0).StepsInState != 0 || st.Signals.Ingests != 0 {
		t.Fatalf("a refused step changed the session: step %d", st.Step)
	}
}

func TestLifecycleThroughSteps(t *testing.T) {
	s := newSession(t, baseConfig())
	evs := germinate(t, s, 1, 1, `{"template": "residual_mlp", "params": {"width": 4}}`)
	if len(evs) != 1 || evs[0].To != lifecycle.Germinated || evs[0].Reason != "manual germination" {
		t.Fatalf("germinate events %+v", evs)
	}
	ir, err := blueprint.Parse(evs[0].Blueprint)
	if err != nil {
		t.Fatalf("event blueprint: %v", err)
	}
	if ir.ParamCount != 32*4+4+4*8+8 || evs[0].ParamCount != ir.ParamCount || len(evs[0].BlueprintID) != 64 {
		t.Fatalf("blueprint %+v, event %+v", ir, evs[0])
	}
	var alphas []float32
	var got []string
	var ramp []float32
	for i := 0; i < 20; i++ {
		alphas = step(t, s, 1)
		got = append(got, transitions(events(t, s))...)
		ramp = append(ramp, alphas[3])
	}
	want := []string{
		"1/1 GERMINATED->TRAINING@1",
		"1/1 TRAINING->BLENDING@11",
		"1/1 BLENDING->HOLDING@15",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
	// Step 1: TRAINING; steps 2..11 train; 12..14 blend at 1/4, 2/4, 3/4; 15 on: 1.
	wantRamp := []float32{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1}
	if !reflect.DeepEqual(ramp, wantRamp) {
		t.Fatalf("alpha ramp %v, want %v", ramp, wantRamp)
	}
	if alphas[0] != 0 || alphas[1] != 0 || alphas[2] != 0 {
		t.Fatalf("dormant slots have alpha %v", alphas)
	}
	evs, err = s.Fossilize(1, 1, "")
	if err != nil || len(evs) != 1 || evs[0].To != lifecycle.Fossilized || evs[0].Alpha != 1 {
		t.Fatalf("fossilize %+v %v", evs, err)
	}
	info := seedState(t, s, 1, 1)
	if info.TotalSteps != 20 || info.Generation != 1 || len(info.History) != 5 || info.Name != "fc2" {
		t.Fatalf("seed %+v", info)
	}
}

func TestBigStepCrossesTransitions(t *testing.T) {
	s := newSession(t, baseConfig())
	germinate(t, s, 0, 1, `{"template": "lowrank", "params": {"rank": 2}}`)
	step(t, s, 3)
	alphas := step(t, s, 10) // 13: trained at 11, blending 2 of 4 steps
	got := transitions(events(t, s))
	want := []string{"0/1 GERMINATED->TRAINING@1", "0/1 TRAINING->BLENDING@11"}
	if !reflect.DeepEqual(got, want) || alphas[1] != 0.5 {
		t.Fatalf("transitions %v alphas %v", got, alphas)
	}
	evs, err := s.Prune(0, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := transitions(evs); !reflect.DeepEqual(got, []string{"0/1 BLENDING->PRUNED@13", "0/1 PRUNED->EMBARGOED@13"}) {
		t.Fatalf("prune %v", got)
	}
	if evs[0].Reason != "manual prune" || evs[1].Reason != "embargo of 5 steps" {
		t.Fatalf("reasons %q %q", evs[0].Reason, evs[1].Reason)
	}
	step(t, s, 100)
	if got := transitions(events(t, s)); !reflect.DeepEqual(got, []string{"0/1 EMBARGOED->RESETTING@18", "0/1 RESETTING->DORMANT@19"}) {
		t.Fatalf("exit path %v", got)
	}
	info := seedState(t, s, 0, 1)
	if info.State != lifecycle.Dormant || info.Blueprint != nil || info.StepsInState != 94 || info.Generation != 1 {
		t.Fatalf("recycled slot %+v", info)
	}
	germinate(t, s, 0, 1, `{"template": "linear"}`)
	if info := seedState(t, s, 0, 1); info.Generation != 2 || info.TotalSteps != 0 {
		t.Fatalf("second generation %+v", info)
	}
}

func TestZeroEmbargoAndCosine(t *testing.T) {
	cfg := baseConfig()
	zero := int64(0)
	cfg.EmbargoSteps = &zero
	cfg.Schedule = "cosine"
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 11)
	a := step(t, s, 1)
	if math.Abs(float64(a[0])-(1-math.Cos(math.Pi/4))/2) > 1e-7 {
		t.Fatalf("cosine alpha %v", a[0])
	}
	events(t, s)
	evs, err := s.Prune(0, 0, "bad seed")
	if err != nil {
		t.Fatal(err)
	}
	if got := transitions(evs); !reflect.DeepEqual(got, []string{"0/0 BLENDING->PRUNED@12", "0/0 PRUNED->EMBARGOED@12", "0/0 EMBARGOED->RESETTING@12"}) {
		t.Fatalf("zero embargo %v", got)
	}
	step(t, s, 1)
	if got := transitions(events(t, s)); !reflect.DeepEqual(got, []string{"0/0 RESETTING->DORMANT@13"}) {
		t.Fatalf("reset %v", got)
	}
}

func TestManualTransitions(t *testing.T) {
	cfg := baseConfig()
	off := false
	cfg.AutoAdvance = &off
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 500)
	if evs := events(t, s); len(evs) != 0 {
		t.Fatalf("auto_advance off, yet %v", transitions(evs))
	}
	var got []string
	for _, want := range []lifecycle.State{lifecycle.Training, lifecycle.Blending, lifecycle.Holding, lifecycle.Fossilized} {
		evs, err := s.Advance(0, 0, "")
		if err != nil {
			t.Fatalf("advance to %v: %v", want, err)
		}
		got = append(got, transitions(evs)...)
	}
	if len(got) != 4 {
		t.Fatalf("advances %v", got)
	}
	cases := []struct {
		name string
		call func() ([]session.Event, error)
		code errcode.Code
		msg  string
	}{
		{"advance fossilized", func() ([]session.Event, error) { return s.Advance(0, 0, "") }, errcode.State, "a FOSSILIZED seed has no next state"},
		{"advance dormant", func() ([]session.Event, error) { return s.Advance(0, 1, "") }, errcode.State, "a DORMANT seed has no next state"},
		{"prune fossilized", func() ([]session.Event, error) { return s.Prune(0, 0, "x") }, errcode.State,
			"lifecycle: seed 0/0: FOSSILIZED -> PRUNED is not a legal transition"},
		{"fossilize dormant", func() ([]session.Event, error) { return s.Fossilize(1, 0, "") }, errcode.State,
			"lifecycle: seed 1/0: DORMANT -> FOSSILIZED is not a legal transition"},
		{"cancel dormant", func() ([]session.Event, error) { return s.Cancel(1, 1, "") }, errcode.State, "DORMANT -> CANCELLED"},
		{"germinate fossilized", func() ([]session.Event, error) {
			return s.GerminateSpec(0, 0, []byte(`{"template": "linear"}`))
		}, errcode.State, "FOSSILIZED -> GERMINATED"},
		{"layer out of range", func() ([]session.Event, error) { return s.Advance(2, 0, "") }, errcode.Invalid, "seed 2/0: layer must be in [0, 2)"},
		{"slot out of range", func() ([]session.Event, error) { return s.Prune(0, -1, "") }, errcode.Invalid, "slot in [0, 2)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.call()
			if errcode.Of(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
		})
	}
	germinate(t, s, 1, 0, `{"template": "linear"}`)
	evs, err := s.Cancel(1, 0, "changed my mind")
	if err != nil || len(evs) != 1 || evs[0].To != lifecycle.Cancelled || evs[0].Reason != "changed my mind" {
		t.Fatalf("cancel with auto_advance off: %+v %v", evs, err)
	}
}

func TestGerminateRefusals(t *testing.T) {
	cfg := baseConfig()
	cfg.Governor.MaxParams = 1000
	cfg.Governor.MaxConcurrent = 2
	s := newSession(t, cfg)
	cases := []struct {
		name        string
		layer, slot int
		spec        string
		code        errcode.Code
		msg         string
	}{
		{"not JSON", 0, 0, `{`, errcode.Invalid, "blueprint"},
		{"no template", 0, 0, `{"params": {}}`, errcode.Invalid, "without a template name"},
		{"unknown field", 0, 0, `{"template": "linear", "rank": 2}`, errcode.Invalid, "rank"},
		{"unknown template", 0, 0, `{"template": "mystery"}`, errcode.NotFound, "mystery"},
		{"bad params", 0, 0, `{"template": "lowrank", "params": {"rank": 0}}`, errcode.Invalid, "rank"},
		{"unsupported host", 0, 0, `{"template": "conv3x3"}`, errcode.Invalid, "conv3x3"},
		{"over budget", 0, 0, `{"template": "residual_mlp", "params": {"width": 64}}`, errcode.Budget,
			"budget: params would be 3168, over the limit of 1000"},
		{"bad layer", 5, 0, `{"template": "linear"}`, errcode.Invalid, "layer 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.GerminateSpec(tc.layer, tc.slot, []byte(tc.spec))
			if errcode.Of(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
		})
	}
	germinate(t, s, 0, 0, `{"template": "lowrank", "params": {"rank": 4}}`) // 4*(16+32) = 192
	germinate(t, s, 1, 0, `{"template": "lowrank", "params": {"rank": 4}}`) // 4*(32+8) = 160
	_, err := s.GerminateSpec(1, 1, []byte(`{"template": "linear"}`))
	if !errors.Is(err, errcode.ErrBudget) && errcode.Of(err) != errcode.Budget || !strings.Contains(err.Error(), "2 seeds in flight, max_concurrent is 2") {
		t.Fatalf("concurrency: %v", err)
	}
	if st, _ := s.Stats(); st.ParamsUsed != 352 || st.Active != 2 || st.Counters.Germinations != 2 || st.HostParams != 808 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGerminateWithIR(t *testing.T) {
	s := newSession(t, baseConfig())
	ir, err := blueprint.Instantiate("residual_mlp", blueprint.Params{"width": 3}, blueprint.Host{Kind: "linear", In: 16, Out: 32})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(ir)
	if err != nil {
		t.Fatal(err)
	}
	evs := germinate(t, s, 0, 1, string(doc))
	if evs[0].ParamCount != ir.ParamCount {
		t.Fatalf("event %+v", evs[0])
	}
	if _, err := s.GerminateSpec(1, 0, doc); errcode.Of(err) != errcode.Invalid || !strings.Contains(err.Error(), "is not the layer's host") {
		t.Fatalf("IR for another host: %v", err)
	}
	if _, err := s.Germinate(1, 0, nil, ""); errcode.Of(err) != errcode.Invalid {
		t.Fatalf("nil IR: %v", err)
	}
}

func TestGovernorRollsBackOnStep(t *testing.T) {
	cfg := baseConfig()
	cfg.Governor.MaxConcurrent = 4
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 3)
	germinate(t, s, 1, 1, `{"template": "linear"}`)
	step(t, s, 2)
	events(t, s)
	alphas := make([]float32, 4)
	n, err := s.Step(1, signals(2, 0.5, 2), alphas)
	if err != nil {
		t.Fatal(err)
	}
	evs := events(t, s)
	if n != len(evs) {
		t.Fatalf("Step reported %d events, %d pending", n, len(evs))
	}
	if got := transitions(evs); !reflect.DeepEqual(got, []string{"1/1 TRAINING->ROLLED_BACK@6", "1/1 ROLLED_BACK->EMBARGOED@6"}) {
		t.Fatalf("rollback %v", got)
	}
	if !strings.Contains(evs[0].Reason, "governor: 2 non-finite values") || !strings.Contains(evs[0].Reason, "rolling back seed 1/1") {
		t.Fatalf("reason %q", evs[0].Reason)
	}
	// A loss spike rolls back the next newest.
	for i := 0; i < 6; i++ {
		if _, err := s.Step(1, signals(2, 1, 0), alphas); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Step(1, signals(2, 10, 0), alphas); err != nil {
		t.Fatal(err)
	}
	want := []string{"0/0 TRAINING->BLENDING@11", "1/1 EMBARGOED->RESETTING@11", "1/1 RESETTING->DORMANT@12",
		"0/0 BLENDING->ROLLED_BACK@13", "0/0 ROLLED_BACK->EMBARGOED@13"}
	if got := transitions(events(t, s)); !reflect.DeepEqual(got, want) {
		t.Fatalf("spike rollback %v", got)
	}
	// Nothing left to blame: logged, no event.
	if _, err := s.Step(1, signals(2, float32(math.Inf(1)), 0), alphas); err != nil {
		t.Fatal(err)
	}
	if evs := events(t, s); len(evs) != 0 {
		t.Fatalf("events without a seed %v", transitions(evs))
	}
	log, err := s.GrowthLog()
	if err != nil {
		t.Fatal(err)
	}
	last := log.Entries[len(log.Entries)-1]
	if last.Kind != "decision" || last.Decision.Layer != -1 || !strings.Contains(last.Decision.Reason, "no seed in flight") {
		t.Fatalf("last growth entry %+v", last)
	}
	st, _ := s.Stats()
	if st.Counters.Rollbacks != 2 || st.Counters.Alarms != 3 || st.Governor.Alarms != 3 {
		t.Fatalf("counters %+v governor %+v", st.Counters, st.Governor)
	}
}

func TestSignalsReachNissa(t *testing.T) {
	s := newSession(t, baseConfig())
	buf := signals(2, 0.5, 0)
	buf[nissa.Index(1, nissa.GradNorm)] = 2
	alphas := make([]float32, 4)
	for i := 0; i < 3; i++ {
		buf[nissa.Index(1, nissa.GradNorm)] = float32(2 + i)
		if _, err := s.Step(1, buf, alphas); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	g := st.Signals.Layers[1].Signals["grad_norm"]
	if st.Signals.Ingests != 3 || g.N != 3 || g.Mean != 3 || g.Slope != 1 || st.Signals.Layers[1].Name != "fc2" {
		t.Fatalf("signals %+v", st.Signals)
	}
	if st.Governor.LossSamples != 3 || float64(st.Governor.LossMean) != 0.5 {
		t.Fatalf("governor %+v", st.Governor)
	}
}

func TestReportFailure(t *testing.T) {
	cfg := baseConfig()
	cfg.Breaker.Failures = 2
	cfg.Governor.MaxConcurrent = 4
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 3)
	events(t, s)
	evs, err := s.ReportFailure(0, 0, session.FailureNonfinite, "output has NaN")
	if err != nil || len(evs) != 0 {
		t.Fatalf("first failure: %v %v", evs, err)
	}
	if info := seedState(t, s, 0, 0); info.Failures != 1 || info.State != lifecycle.Training || info.Breaker != "closed" {
		t.Fatalf("after one failure %+v", info)
	}
	step(t, s, 1)
	evs, err = s.ReportFailure(0, 0, session.FailureShape, "got (4, 3)")
	if err != nil {
		t.Fatal(err)
	}
	if got := transitions(evs); !reflect.DeepEqual(got, []string{"0/0 TRAINING->PRUNED@4", "0/0 PRUNED->EMBARGOED@4"}) {
		t.Fatalf("breaker prune %v", got)
	}
	if evs[0].Reason != "circuit breaker open after 2 consecutive failing steps (last: shape: got (4, 3))" {
		t.Fatalf("reason %q", evs[0].Reason)
	}
	// Late reports for a seed on its way out are ignored.
	if evs, err := s.ReportFailure(0, 0, session.FailureException, "late"); err != nil || len(evs) != 0 {
		t.Fatalf("late failure %v %v", evs, err)
	}
	// A germinated seed whose breaker opens is cancelled: two failures at
	// the same step are one failing step, a third at the next step opens it
	// (auto_advance off keeps the seed GERMINATED across the step).
	off := false
	cfg2 := cfg
	cfg2.AutoAdvance = &off
	s2 := newSession(t, cfg2)
	germinate(t, s2, 1, 0, `{"template": "linear"}`)
	s2.ReportFailure(1, 0, session.FailureException, "boom")
	if evs, _ := s2.ReportFailure(1, 0, session.FailureException, "boom"); len(evs) != 0 || seedState(t, s2, 1, 0).Streak != 1 {
		t.Fatalf("two failures in one step: %v %+v", transitions(evs), seedState(t, s2, 1, 0))
	}
	step(t, s2, 1)
	evs, _ = s2.ReportFailure(1, 0, session.FailureException, "boom")
	if len(evs) < 1 || evs[0].To != lifecycle.Cancelled {
		t.Fatalf("germinated breaker %v", transitions(evs))
	}
	cases := []struct {
		name        string
		layer, slot int
		kind        session.FailureKind
		code        errcode.Code
	}{
		{"dormant", 1, 1, session.FailureOther, errcode.State},
		{"bad kind", 1, 1, 7, errcode.Invalid},
		{"bad slot", 1, 2, session.FailureOther, errcode.Invalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.ReportFailure(tc.layer, tc.slot, tc.kind, "x"); errcode.Of(err) != tc.code {
				t.Fatalf("err = %v", err)
			}
		})
	}
	st, _ := s.Stats()
	if st.Counters.Failures != 2 || st.Counters.Prunes != 1 || st.Counters.Cancels != 0 {
		t.Fatalf("counters %+v", st.Counters)
	}
	log, _ := s.GrowthLog()
	failures := 0
	for _, e := range log.Entries {
		if e.Kind == "failure" {
			failures++
		}
	}
	if failures != 3 {
		t.Fatalf("%d failures logged", failures)
	}
}

func TestClosed(t *testing.T) {
	s, err := session.New(baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Step(1, nil, make([]float32, 4)); !errors.Is(err, session.ErrClosed) {
		t.Fatalf("Step after Close: %v", err)
	}
	if _, err := s.Snapshot(); !errors.Is(err, session.ErrClosed) {
		t.Fatalf("Snapshot after Close: %v", err)
	}
}

// Alarms counts every rollback the governor calls for, in Step and in EndEpoch, with or without a
// seed to blame: the only way a trainer learns of one that emits no event.
func TestAlarmsCountEveryRollback(t *testing.T) {
	cfg := baseConfig()
	cfg.Policy = "manual"
	s := newSession(t, cfg)
	alarms := func() int64 {
		t.Helper()
		n, err := s.Alarms()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	alphas := make([]float32, 4)
	mustStep := func(buf []float32) int {
		t.Helper()
		n, err := s.Step(1, buf, alphas)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	mustStep(signals(2, 0.5, 0))
	mustStep(nil)
	if n := alarms(); n != 0 {
		t.Fatalf("healthy steps raised %d alarms", n)
	}
	// No seed in flight: no event, but the count moves.
	if n := mustStep(signals(2, 0.5, 1)); n != 0 || alarms() != 1 {
		t.Fatalf("non-finite count without a seed: %d events, %d alarms", n, alarms())
	}
	// With a seed in flight: its ROLLED_BACK event, and the count moves as well.
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 2)
	events(t, s)
	mustStep(signals(2, float32(math.Inf(1)), 0))
	if got := transitions(events(t, s)); len(got) != 2 || !strings.Contains(got[0], "ROLLED_BACK") || alarms() != 2 {
		t.Fatalf("infinite loss with a seed: %v, %d alarms", got, alarms())
	}
	// A NaN validation loss at the end of an epoch.
	m := metrics(0, 0.5)
	m.ValLoss = nissa.Measure(math.NaN())
	res, err := s.EndEpoch(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Decisions) != 1 || res.Decisions[0].Op != tamiyo.Rollback || !res.Decisions[0].Applied ||
		!strings.Contains(res.Decisions[0].Reason, "validation loss is NaN") || alarms() != 3 {
		t.Fatalf("NaN validation loss: %+v, %d alarms", res.Decisions, alarms())
	}
	if _, err := s.EndEpoch(metrics(1, 0.5)); err != nil || alarms() != 3 {
		t.Fatalf("a healthy epoch: %v, %d alarms", err, alarms())
	}
	// The count travels with the snapshot.
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	other := newSession(t, cfg)
	if err := other.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if n, err := other.Alarms(); err != nil || n != 3 {
		t.Fatalf("restored session: %d alarms, %v", n, err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Alarms(); !errors.Is(err, session.ErrClosed) {
		t.Fatalf("Alarms on a closed session: %v", err)
	}
}

// newManual is a manual session whose seeds move only when told.
func newManual(t testing.TB) *session.Session {
	t.Helper()
	cfg := baseConfig()
	off := false
	cfg.AutoAdvance = &off
	return newSession(t, cfg)
}

func TestSeedFailed(t *testing.T) {
	cases := []struct {
		name    string
		advance int // manual advances after germination
		want    lifecycle.State
	}{
		{"germinated is cancelled", 0, lifecycle.Cancelled},
		{"training is cancelled", 1, lifecycle.Cancelled},
		{"blending is pruned", 2, lifecycle.Pruned},
		{"holding is pruned", 3, lifecycle.Pruned},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newManual(t)
			evs, err := s.GerminateSpec(0, 0, []byte(`{"template":"residual_mlp","params":{"width":4}}`))
			if err != nil {
				t.Fatal(err)
			}
			germ := evs[len(evs)-1]
			if germ.To != lifecycle.Germinated || germ.Generation != 1 || germ.ParamCount == 0 || germ.BlueprintID == "" {
				t.Fatalf("GERMINATED event %+v: want generation 1, a parameter count and an id", germ)
			}
			for k := 0; k < tc.advance; k++ {
				if _, err := s.Advance(0, 0, ""); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.SeedFailed(0, 0, 2, "wrong generation"); err != nil {
				t.Fatal(err)
			}
			if st := seedState(t, s, 0, 0).State; !st.Live() {
				t.Fatalf("a report for another generation removed the seed (state %s)", st)
			}
			evs, err = s.SeedFailed(0, 0, 1, "op 'training' clashes")
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 || evs[0].To != tc.want || !strings.Contains(evs[0].Reason, "seed failed to build: op 'training' clashes") {
				t.Fatalf("events %+v: want %s with the reason", evs, tc.want)
			}
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Counters.Failures != 1 {
				t.Fatalf("failures counted %d, want 1", st.Counters.Failures)
			}
			// Gone: a second report is recorded and ignored.
			if evs, err := s.SeedFailed(0, 0, 1, "again"); err != nil || len(evs) != 0 {
				t.Fatalf("second report: %v, %v", evs, err)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		s := newManual(t)
		if _, err := s.SeedFailed(0, 0, 0, "x"); !errors.Is(err, session.ErrArgument) {
			t.Fatalf("generation 0: %v", err)
		}
		if _, err := s.SeedFailed(9, 0, 1, "x"); !errors.Is(err, session.ErrArgument) {
			t.Fatalf("bad layer: %v", err)
		}
		if _, err := s.GerminateSpec(0, 0, []byte(`{"template":"residual_mlp","params":{"width":4}}`)); err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 4; k++ {
			if _, err := s.Advance(0, 0, ""); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.SeedFailed(0, 0, 1, "x"); !errors.Is(err, session.ErrSeedState) {
			t.Fatalf("fossilized: %v", err)
		}
	})
}

// TestBreakerCountsConsecutiveFailingSteps: the breaker opens after
// breaker.failures consecutive failing steps; a clean step between two
// failures resets the streak, several failures in one step count once, and
// a snapshot carries the streak.
func TestBreakerCountsConsecutiveFailingSteps(t *testing.T) {
	// A script is a list of gaps: before each failure, the session is stepped
	// by gap steps (0: the same step as the previous failure).
	cases := []struct {
		name     string
		gaps     []int64
		streaks  []int // the streak after each failure
		pruneAt  int   // index of the failure that prunes; -1: none
		failures int
	}{
		{"three in a row", []int64{1, 1, 1}, []int{1, 2, 3}, 2, 3},
		{"spread with clean steps", []int64{1, 10, 10}, []int{1, 1, 1}, -1, 3},
		{"one clean step resets", []int64{1, 1, 2, 1, 1}, []int{1, 2, 1, 2, 3}, 4, 3},
		{"same step counts once", []int64{1, 0, 0, 1, 0}, []int{1, 1, 1, 2, 2}, -1, 3},
		{"same step then next", []int64{1, 0, 1, 1}, []int{1, 1, 2, 3}, 3, 3},
		{"one failure opens at 1", []int64{5}, []int{1}, 0, 1},
		{"clean window between", []int64{1, 1, 50, 1}, []int{1, 2, 1, 2}, -1, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Breaker.Failures = tc.failures
			cfg.TrainSteps = 1000 // the seed stays TRAINING through the script
			s := newSession(t, cfg)
			germinate(t, s, 0, 0, `{"template": "linear"}`)
			step(t, s, 1)
			events(t, s)
			pruned := -1
			for i, gap := range tc.gaps {
				if gap > 0 {
					step(t, s, gap)
				}
				evs, err := s.ReportFailure(0, 0, session.FailureException, "boom")
				if err != nil {
					t.Fatalf("failure %d: %v", i, err)
				}
				if len(evs) > 0 && evs[0].To == lifecycle.Pruned {
					if pruned >= 0 {
						t.Fatalf("pruned twice")
					}
					pruned = i
					if want := fmt.Sprintf("circuit breaker open after %d consecutive failing steps", tc.failures); !strings.HasPrefix(evs[0].Reason, want) {
						t.Fatalf("reason %q", evs[0].Reason)
					}
					break
				}
				if got := seedState(t, s, 0, 0).Streak; got != tc.streaks[i] {
					t.Fatalf("failure %d: streak %d, want %d", i, got, tc.streaks[i])
				}
				// A snapshot round trip keeps the streak: the next failure counts the same.
				snap, err := s.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Restore(snap); err != nil {
					t.Fatal(err)
				}
			}
			if pruned != tc.pruneAt {
				t.Fatalf("pruned at failure %d, want %d", pruned, tc.pruneAt)
			}
			if pruned < 0 {
				info := seedState(t, s, 0, 0)
				if info.State != lifecycle.Training || info.Breaker != "closed" || info.Failures != len(tc.gaps) {
					t.Fatalf("survivor %+v", info)
				}
			}
		})
	}
}

// TestRestoreRefusesOpenStreak: a snapshot whose active seed already has a
// full streak (its breaker would have pruned it) is refused.
func TestRestoreRefusesOpenStreak(t *testing.T) {
	cfg := baseConfig()
	cfg.Breaker.Failures = 2
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 2)
	if _, err := s.ReportFailure(0, 0, session.FailureException, "boom"); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(snap), `"failures":1,"streak":1`, `"failures":2,"streak":2`, 1)
	if forged == string(snap) {
		t.Fatal("snapshot holds no streak")
	}
	if err := s.Restore([]byte(forged)); err == nil || !strings.Contains(err.Error(), "consecutive failing steps would have opened its breaker") {
		t.Fatalf("restore: %v", err)
	}
}

// TestDuplicateKeysRefused: the session's documents (blueprint references,
// snapshots) share the one strict JSON syntax.
func TestDuplicateKeysRefused(t *testing.T) {
	s := newSession(t, baseConfig())
	if _, err := s.GerminateSpec(0, 0, []byte(`{"template": "linear", "template": "residual_mlp"}`)); err == nil ||
		!strings.Contains(err.Error(), `duplicate object key "template"`) {
		t.Fatalf("germinate: %v", err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	dup := append(append([]byte(nil), snap[:len(snap)-1]...), []byte(`, "step": 0}`)...)
	if err := s.Restore(dup); err == nil || !strings.Contains(err.Error(), `duplicate object key "step"`) {
		t.Fatalf("restore: %v", err)
	}
	if err := s.Restore(snap); err != nil {
		t.Fatalf("negative control: %v", err)
	}
}
