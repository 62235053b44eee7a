package session_test

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func ptr(v float64) *float64 { return &v }

// fullResult is an EpochResult with every field set, values chosen to
// reach each branch of the hand encoder: strings that need escaping,
// floats in both of encoding/json's notations, parameters of every kind,
// a blueprint with space and HTML characters and one without.
func fullResult() session.EpochResult {
	canonical := json.RawMessage(`{"flops_per_sample":8320,"host":{"in":64,"kind":"linear","out":64},"ops":[],"output":"fc2"}`)
	return session.EpochResult{
		Epoch: 7,
		Decisions: []session.DecisionResult{
			{Decision: tamiyo.Decision{Op: tamiyo.Germinate, Layer: 3, Slot: 1, Template: "residual_mlp",
				Params: blueprint.Params{"width": int64(32), "rank": 4, "activation": "gelu", "bias": true, "scale": 0.25,
					"q<&>": "é\u2028"},
				ParamCount: 4192, Blueprint: &blueprint.IR{Version: 1}, Reason: "plateau: 1 < 2 & \"quoted\"\n\ttab é",
				PredictedGain: ptr(1e-7), PredictedValue: ptr(0.125), ValueEstimate: ptr(-3e21)},
				Applied: false, Error: "refused: <budget>"},
			{Decision: tamiyo.Decision{Op: tamiyo.Wait, Layer: -1, Slot: -1, Reason: "no plateau"}, Applied: true},
			{Decision: tamiyo.Decision{Op: tamiyo.Prune, Layer: 0, Slot: 0, Reason: "", PredictedGain: ptr(0)}, Applied: true},
		},
		Rollout: []session.RolloutEvent{{Action: "switch", Artifact: "value_model", Model: "m", From: "v1", To: "v2",
			Epoch: 7, ValLoss: nissa.Measure(math.Inf(1)), Baseline: 0.5, Reason: "better"}},
		Events: []session.Event{
			{Layer: 3, Slot: 1, From: lifecycle.Dormant, To: lifecycle.Germinated, Step: 1 << 40, Epoch: 7, Alpha: 0,
				Reason: "why <&>", BlueprintID: "9f7c", Blueprint: canonical, ParamCount: 4192, Generation: 2},
			{Layer: 1, Slot: 0, From: lifecycle.Blending, To: lifecycle.Holding, Step: 9, Epoch: 7, Alpha: 0.3333333333333333,
				Reason: "blend", Blueprint: json.RawMessage("{ \"a\" : [1, 2],\n \"s\": \"<x> & \u2028 \u2026\" }")},
			{Layer: 0, Slot: 1, From: lifecycle.Training, To: lifecycle.Pruned, Alpha: 1.5e-9, Reason: "ünïcode \x01"},
		},
	}
}

// TestEpochResultAppendJSON holds the hand encoder of esper_session_end_epoch's
// result to json.Marshal, byte for byte, on every field (and on empty and nil
// slices); where json.Marshal fails, the encoder fails too.
func TestEpochResultAppendJSON(t *testing.T) {
	full := fullResult()
	cases := []struct {
		name    string
		res     session.EpochResult
		wantErr bool
	}{
		{"every field set", full, false},
		{"empty slices", session.EpochResult{Epoch: 0, Decisions: []session.DecisionResult{}, Events: []session.Event{}}, false},
		{"nil slices", session.EpochResult{Epoch: 2}, false},
		{"decisions only", session.EpochResult{Epoch: 1, Decisions: full.Decisions}, false},
		{"events only", session.EpochResult{Epoch: 1, Events: full.Events}, false},
		{"non-finite alpha", session.EpochResult{Events: []session.Event{{Alpha: math.NaN()}}}, true},
		{"infinite prediction", session.EpochResult{Decisions: []session.DecisionResult{
			{Decision: tamiyo.Decision{PredictedGain: ptr(math.Inf(-1))}}}}, true},
		{"invalid state", session.EpochResult{Events: []session.Event{{To: lifecycle.State(200)}}}, true},
		{"invalid op", session.EpochResult{Decisions: []session.DecisionResult{{Decision: tamiyo.Decision{Op: tamiyo.Op(99)}}}}, true},
		{"invalid blueprint", session.EpochResult{Events: []session.Event{{Blueprint: json.RawMessage("{ \"a\": }")}}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want, wantErr := json.Marshal(tc.res)
			got, err := tc.res.AppendJSON([]byte("prefix"))
			if tc.wantErr {
				if wantErr == nil || err == nil {
					t.Fatalf("json.Marshal error %v, AppendJSON error %v: want both to fail", wantErr, err)
				}
				return
			}
			if wantErr != nil || err != nil {
				t.Fatalf("json.Marshal error %v, AppendJSON error %v", wantErr, err)
			}
			if !bytes.HasPrefix(got, []byte("prefix")) {
				t.Fatalf("AppendJSON did not append: %q", got)
			}
			if got = got[len("prefix"):]; !bytes.Equal(got, want) {
				t.Fatalf("AppendJSON differs from json.Marshal:\n got %s\nwant %s", got, want)
			}
			evs, err := session.AppendEventsJSON(nil, tc.res.Events)
			if wantEvs, _ := json.Marshal(tc.res.Events); err != nil || !bytes.Equal(evs, wantEvs) {
				t.Fatalf("AppendEventsJSON = %s, %v; json.Marshal %s", evs, err, wantEvs)
			}
		})
	}
}

// TestEpochResultAppendJSONGermination compares the encoders on the result of a
// real end of epoch that germinates (the bench's plateau session).
func TestEpochResultAppendJSONGermination(t *testing.T) {
	res := germinatingEndEpoch(t)
	if len(res.Events) == 0 || len(res.Events[len(res.Events)-1].Blueprint) == 0 {
		t.Fatalf("no GERMINATED event with a blueprint: %+v", res.Events)
	}
	want, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	got, err := res.AppendJSON(nil)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("AppendJSON = %s, %v\nwant %s", got, err, want)
	}
}

// TestGerminationsShareInstances runs a heuristic session to several
// germinations of the same template and size (one host for every layer):
// the controller's memo serves the later ones, and every GERMINATED event's
// id must still be the hash of its document and the id Karn gives the
// parsed document (computed here without the memo).
func TestGerminationsShareInstances(t *testing.T) {
	cfg, _ := plateauSnapshot(t)
	cfg.Governor.MaxConcurrent = 8
	cooldown := 1
	cfg.Governor.CooldownEpochs = &cooldown
	s := newSession(t, cfg)
	buf := make([]float32, nissa.Len(8))
	for i := range buf {
		buf[i] = 0.5
	}
	buf[nissa.NonfiniteCount] = 0
	for l := range 8 {
		buf[nissa.Index(l, nissa.SeedGain)] = float32(l + 1)
	}
	if _, err := s.Step(1, buf, make([]float32, 16)); err != nil {
		t.Fatal(err)
	}
	var germinated []session.Event
	for e := 0; e < 40 && len(germinated) < 3; e++ {
		res := endEpoch(t, s, metrics(e, 1))
		for _, ev := range res.Events {
			if ev.To == lifecycle.Germinated {
				germinated = append(germinated, ev)
			}
		}
	}
	if len(germinated) < 3 {
		t.Fatalf("%d germinations in 40 flat epochs, want 3", len(germinated))
	}
	for _, ev := range germinated {
		ir, err := blueprint.Parse(ev.Blueprint)
		if err != nil {
			t.Fatalf("%d/%d: %v", ev.Layer, ev.Slot, err)
		}
		id, err := ir.ID()
		if err != nil || id != ev.BlueprintID || canon.ID(ev.Blueprint) != ev.BlueprintID {
			t.Fatalf("%d/%d: event id %s, parsed IR's id %s (%v), document's hash %s", ev.Layer, ev.Slot, ev.BlueprintID, id, err, canon.ID(ev.Blueprint))
		}
		if !bytes.Equal(ev.Blueprint, germinated[0].Blueprint) {
			t.Fatalf("%d/%d: another blueprint than the first germination's: %s", ev.Layer, ev.Slot, ev.Blueprint)
		}
	}
}
