package lifecycle_test

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
)

// walk moves s through the given states, failing the test on any refusal.
func walk(t testing.TB, s *lifecycle.Seed, step int64, to ...lifecycle.State) int64 {
	t.Helper()
	for _, st := range to {
		s.Tick(3)
		step += 3
		if _, err := s.Transition(st, "walk", step); err != nil {
			t.Fatalf("walk to %v: %v", st, err)
		}
	}
	return step
}

func TestSeedFullCycle(t *testing.T) {
	s := lifecycle.NewSeed(2, 1)
	if s.State != lifecycle.Dormant || s.GerminatedStep != -1 || s.GerminatedEpoch != -1 {
		t.Fatalf("new seed %+v", s)
	}
	s.Tick(5)
	if s.TotalSteps != 0 || s.StepsInState != 5 {
		t.Fatalf("dormant slot counted total steps: %+v", s)
	}
	bp := json.RawMessage(`{"template":"residual_mlp"}`)
	if _, err := s.Germinate(bp, "abc", 1210, "plateau", 10, 3); err != nil {
		t.Fatal(err)
	}
	bp[2] = 'X' // the seed must hold its own copy
	if string(s.Blueprint) != `{"template":"residual_mlp"}` || s.BlueprintID != "abc" || s.ParamCount != 1210 ||
		s.Generation != 1 || s.GerminatedStep != 10 || s.GerminatedEpoch != 3 {
		t.Fatalf("after germinate %+v", s)
	}
	step := walk(t, s, 10, lifecycle.Training, lifecycle.Blending)
	s.Tick(2)
	s.UpdateAlpha(lifecycle.Linear, 4)
	if s.Alpha != 0.5 {
		t.Fatalf("blending alpha %v", s.Alpha)
	}
	step = walk(t, s, step, lifecycle.Holding)
	if s.Alpha != 1 {
		t.Fatalf("holding alpha %v", s.Alpha)
	}
	s.Failures = 2
	walk(t, s, step, lifecycle.Pruned, lifecycle.Embargoed, lifecycle.Resetting, lifecycle.Dormant)
	if s.Blueprint != nil || s.BlueprintID != "" || s.ParamCount != 0 || s.Alpha != 0 {
		t.Fatalf("dormant seed keeps its blueprint: %+v", s)
	}
	if len(s.History) != 8 {
		t.Fatalf("history has %d entries", len(s.History))
	}
	if _, err := s.Germinate(nil, "def", 10, "again", 100, 9); err != nil {
		t.Fatal(err)
	}
	if s.Generation != 2 || s.Failures != 0 || s.TotalSteps != 0 {
		t.Fatalf("second generation %+v", s)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestGerminateRefusals(t *testing.T) {
	s := &lifecycle.Seed{State: lifecycle.Training, Generation: 1}
	if _, err := s.Germinate(nil, "x", 1, "r", 1, 0); errcode.Of(err) != errcode.State {
		t.Fatalf("germinate a training seed: %v", err)
	}
	d := lifecycle.NewSeed(0, 0)
	if _, err := d.Germinate(nil, "x", -1, "r", 1, 0); !errors.Is(err, lifecycle.ErrInvalidSeed) {
		t.Fatalf("negative params: %v", err)
	}
	if d.State != lifecycle.Dormant || d.Generation != 0 {
		t.Fatalf("refused germinate changed the seed: %+v", d)
	}
}

func TestHistoryBounded(t *testing.T) {
	s := lifecycle.NewSeed(0, 0)
	step := int64(0)
	cycles := lifecycle.MaxHistory/5 + 3
	for i := 0; i < cycles; i++ {
		step++
		if _, err := s.Germinate(nil, "id", 1, "g", step, i); err != nil {
			t.Fatal(err)
		}
		step = walk(t, s, step, lifecycle.Cancelled, lifecycle.Embargoed, lifecycle.Resetting, lifecycle.Dormant)
	}
	if len(s.History) != lifecycle.MaxHistory || s.HistoryDropped != cycles*5-lifecycle.MaxHistory {
		t.Fatalf("history %d, dropped %d", len(s.History), s.HistoryDropped)
	}
	if last := s.History[len(s.History)-1]; last.To != lifecycle.Dormant || last.Step != step {
		t.Fatalf("last entry %+v", last)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSeedJSONRoundTrip(t *testing.T) {
	s := lifecycle.NewSeed(1, 0)
	if _, err := s.Germinate(json.RawMessage(`{"a":1}`), "id", 5, "g", 1, 0); err != nil {
		t.Fatal(err)
	}
	walk(t, s, 1, lifecycle.Training, lifecycle.Blending)
	s.Tick(1)
	s.UpdateAlpha(lifecycle.Cosine, 3)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back lifecycle.Seed
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, s) {
		t.Fatalf("round trip:\n%+v\n%+v", &back, s)
	}
	c := s.Clone()
	c.History[0].Reason = "changed"
	c.Blueprint[1] = 'b'
	if s.History[0].Reason == "changed" || s.Blueprint[1] == 'b' {
		t.Fatal("Clone shares memory")
	}
}

func TestValidate(t *testing.T) {
	good := func() *lifecycle.Seed {
		s := lifecycle.NewSeed(0, 0)
		if _, err := s.Germinate(nil, "id", 5, "g", 1, 0); err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name   string
		break_ func(s *lifecycle.Seed)
	}{
		{"bad state", func(s *lifecycle.Seed) { s.State = 20 }},
		{"alpha NaN", func(s *lifecycle.Seed) { s.Alpha = math.NaN() }},
		{"alpha above 1", func(s *lifecycle.Seed) { s.Alpha = 1.5 }},
		{"negative steps", func(s *lifecycle.Seed) { s.StepsInState = -1 }},
		{"live never germinated", func(s *lifecycle.Seed) { s.Generation = 0 }},
		{"illegal history", func(s *lifecycle.Seed) { s.History[0].To = lifecycle.Holding }},
		{"history not chained", func(s *lifecycle.Seed) {
			s.History = append(s.History, lifecycle.Transition{From: lifecycle.Training, To: lifecycle.Blending, Step: 2})
		}},
		{"history ends elsewhere", func(s *lifecycle.Seed) { s.State = lifecycle.Training }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.break_(s)
			if err := s.Validate(); errcode.Of(err) != errcode.Invalid {
				t.Fatalf("Validate = %v", err)
			}
		})
	}
}

func FuzzSeedJSON(f *testing.F) {
	f.Add([]byte(`{"layer":0,"slot":1,"state":"TRAINING","generation":1,"history":[{"from":"DORMANT","to":"GERMINATED","step":1,"reason":"x"},{"from":"GERMINATED","to":"TRAINING","step":2,"reason":"y"}]}`))
	f.Add([]byte(`{"state":"FOSSILIZED","alpha":2}`))
	f.Add([]byte(`{"state":7}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s lifecycle.Seed
		if err := json.Unmarshal(b, &s); err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			if errcode.Of(err) != errcode.Invalid && errcode.Of(err) != errcode.State {
				t.Fatalf("Validate code %v: %v", errcode.Of(err), err)
			}
			return
		}
		// A valid record must survive a transition attempt and a re-encode.
		if next, ok := s.State.Next(); ok {
			if _, err := s.Transition(next, "fuzz", 1<<40); err != nil {
				t.Fatalf("natural transition refused: %v", err)
			}
		}
		if _, err := json.Marshal(&s); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}
