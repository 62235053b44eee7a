package lifecycle_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
)

// docTable is the transition table exactly as docs/internals.md writes it,
// parsed independently of the package's own table.
const docTable = `
DORMANT    -> GERMINATED
GERMINATED -> TRAINING | CANCELLED
TRAINING   -> BLENDING | PRUNED | CANCELLED | ROLLED_BACK
BLENDING   -> HOLDING  | PRUNED | ROLLED_BACK
HOLDING    -> FOSSILIZED | PRUNED | ROLLED_BACK
PRUNED     -> EMBARGOED
CANCELLED  -> EMBARGOED
ROLLED_BACK-> EMBARGOED
EMBARGOED  -> RESETTING
RESETTING  -> DORMANT
`

func parseDocTable(t testing.TB) map[[2]string]bool {
	t.Helper()
	out := make(map[[2]string]bool)
	for _, line := range strings.Split(strings.TrimSpace(docTable), "\n") {
		from, tos, ok := strings.Cut(line, "->")
		if !ok {
			t.Fatalf("bad doc line %q", line)
		}
		for _, to := range strings.Split(tos, "|") {
			out[[2]string{strings.TrimSpace(from), strings.TrimSpace(to)}] = true
		}
	}
	return out
}

func TestStateValues(t *testing.T) {
	want := []string{"DORMANT", "GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED",
		"PRUNED", "EMBARGOED", "RESETTING", "CANCELLED", "ROLLED_BACK"}
	states := lifecycle.States()
	if len(states) != len(want) || lifecycle.NumStates != len(want) {
		t.Fatalf("got %d states, want %d", len(states), len(want))
	}
	for i, name := range want {
		s := lifecycle.State(i)
		if s.String() != name {
			t.Errorf("State(%d).String() = %q, want %q", i, s, name)
		}
		for _, in := range []string{name, strings.ToLower(name), fmt.Sprint(i)} {
			got, err := lifecycle.ParseState(in)
			if err != nil || got != s {
				t.Errorf("ParseState(%q) = %v, %v; want %v", in, got, err, s)
			}
		}
	}
}

func TestParseStateErrors(t *testing.T) {
	for _, in := range []string{"", "ALIVE", "11", "-1", "TRAINING "} {
		t.Run(in, func(t *testing.T) {
			_, err := lifecycle.ParseState(in)
			if !errors.Is(err, lifecycle.ErrUnknownState) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("ParseState(%q) err = %v", in, err)
			}
		})
	}
	if got := lifecycle.State(42).String(); got != "State(42)" {
		t.Fatalf("State(42).String() = %q", got)
	}
}

// TestTransitionTable checks every (from, to) pair against the documented
// table, through both CanTransition and Seed.Transition.
func TestTransitionTable(t *testing.T) {
	doc := parseDocTable(t)
	for _, from := range lifecycle.States() {
		for _, to := range lifecycle.States() {
			want := doc[[2]string{from.String(), to.String()}]
			t.Run(from.String()+"->"+to.String(), func(t *testing.T) {
				if got := lifecycle.CanTransition(from, to); got != want {
					t.Fatalf("CanTransition = %v, want %v", got, want)
				}
				s := &lifecycle.Seed{Layer: 0, Slot: 1, State: from, StepsInState: 7, Generation: 1}
				tr, err := s.Transition(to, "test", 99)
				if want {
					if err != nil {
						t.Fatalf("Transition: %v", err)
					}
					if s.State != to || s.StepsInState != 0 || tr.From != from || tr.To != to || tr.Step != 99 || tr.Reason != "test" {
						t.Fatalf("after transition: seed %+v, record %+v", s, tr)
					}
					if len(s.History) != 1 || s.History[0] != tr {
						t.Fatalf("history %+v", s.History)
					}
					return
				}
				wantMsg := fmt.Sprintf("lifecycle: seed 0/1: %s -> %s is not a legal transition", from, to)
				if err == nil || err.Error() != wantMsg {
					t.Fatalf("err = %v, want %q", err, wantMsg)
				}
				if !errors.Is(err, lifecycle.ErrIllegalTransition) || errcode.Of(err) != errcode.State {
					t.Fatalf("err %v: code %v", err, errcode.Of(err))
				}
				var te *lifecycle.TransitionError
				if !errors.As(err, &te) || te.From != from || te.To != to {
					t.Fatalf("errors.As: %+v", te)
				}
				if s.State != from || s.StepsInState != 7 || len(s.History) != 0 {
					t.Fatalf("refused transition changed the seed: %+v", s)
				}
			})
		}
	}
	if lifecycle.CanTransition(lifecycle.State(11), lifecycle.Dormant) || lifecycle.CanTransition(lifecycle.Dormant, lifecycle.State(200)) {
		t.Fatal("invalid states must never transition")
	}
}

func TestSuccessorsAndNext(t *testing.T) {
	doc := parseDocTable(t)
	cases := []struct {
		from lifecycle.State
		next lifecycle.State
		ok   bool
	}{
		{lifecycle.Dormant, lifecycle.Dormant, false},
		{lifecycle.Germinated, lifecycle.Training, true},
		{lifecycle.Training, lifecycle.Blending, true},
		{lifecycle.Blending, lifecycle.Holding, true},
		{lifecycle.Holding, lifecycle.Fossilized, true},
		{lifecycle.Fossilized, lifecycle.Fossilized, false},
		{lifecycle.Pruned, lifecycle.Embargoed, true},
		{lifecycle.Embargoed, lifecycle.Resetting, true},
		{lifecycle.Resetting, lifecycle.Dormant, true},
		{lifecycle.Cancelled, lifecycle.Embargoed, true},
		{lifecycle.RolledBack, lifecycle.Embargoed, true},
	}
	if len(cases) != lifecycle.NumStates {
		t.Fatalf("cases cover %d states", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.from.String(), func(t *testing.T) {
			next, ok := tc.from.Next()
			if next != tc.next || ok != tc.ok {
				t.Fatalf("Next() = %v, %v; want %v, %v", next, ok, tc.next, tc.ok)
			}
			if ok && !lifecycle.CanTransition(tc.from, next) {
				t.Fatalf("natural next %v is not legal", next)
			}
			n := 0
			for _, to := range lifecycle.Successors(tc.from) {
				if !doc[[2]string{tc.from.String(), to.String()}] {
					t.Fatalf("successor %v not in the doc", to)
				}
				n++
			}
			for k := range doc {
				if k[0] == tc.from.String() {
					n--
				}
			}
			if n != 0 {
				t.Fatalf("Successors(%v) count differs from the doc by %d", tc.from, n)
			}
		})
	}
}

func TestStateClasses(t *testing.T) {
	cases := []struct {
		s                     lifecycle.State
		live, active, exiting bool
		alpha                 float64
	}{
		{lifecycle.Dormant, false, false, false, 0},
		{lifecycle.Germinated, true, true, false, 0},
		{lifecycle.Training, true, true, false, 0},
		{lifecycle.Blending, true, true, false, 0},
		{lifecycle.Holding, true, true, false, 1},
		{lifecycle.Fossilized, true, false, false, 1},
		{lifecycle.Pruned, false, false, true, 0},
		{lifecycle.Embargoed, false, false, true, 0},
		{lifecycle.Resetting, false, false, true, 0},
		{lifecycle.Cancelled, false, false, true, 0},
		{lifecycle.RolledBack, false, false, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.s.String(), func(t *testing.T) {
			if tc.s.Live() != tc.live || tc.s.Active() != tc.active || tc.s.Exiting() != tc.exiting || tc.s.Alpha() != tc.alpha {
				t.Fatalf("live %v active %v exiting %v alpha %v", tc.s.Live(), tc.s.Active(), tc.s.Exiting(), tc.s.Alpha())
			}
		})
	}
}

func TestStateJSON(t *testing.T) {
	b, err := json.Marshal(map[string]lifecycle.State{"s": lifecycle.RolledBack})
	if err != nil || string(b) != `{"s":"ROLLED_BACK"}` {
		t.Fatalf("marshal: %s, %v", b, err)
	}
	var m map[string]lifecycle.State
	if err := json.Unmarshal([]byte(`{"s":"holding"}`), &m); err != nil || m["s"] != lifecycle.Holding {
		t.Fatalf("unmarshal: %v, %v", m, err)
	}
	if err := json.Unmarshal([]byte(`{"s":"nope"}`), &m); !errors.Is(err, lifecycle.ErrUnknownState) {
		t.Fatalf("unmarshal bad: %v", err)
	}
	if _, err := json.Marshal(lifecycle.State(99)); err == nil {
		t.Fatal("marshal of an invalid state must fail")
	}
}

func FuzzParseState(f *testing.F) {
	for _, s := range []string{"DORMANT", "rolled_back", "3", "", "x", "10", "011"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := lifecycle.ParseState(in)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v", errcode.Of(err))
			}
			return
		}
		if !s.Valid() {
			t.Fatalf("ParseState(%q) = invalid %d", in, s)
		}
		back, err := lifecycle.ParseState(s.String())
		if err != nil || back != s {
			t.Fatalf("round trip %v: %v, %v", s, back, err)
		}
	})
}
