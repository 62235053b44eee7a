package lifecycle_test

import (
	"errors"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
)

func TestGates(t *testing.T) {
	training := &lifecycle.Seed{State: lifecycle.Training, StepsInState: 40}
	cases := []struct {
		name   string
		v      lifecycle.Verdict
		gate   lifecycle.Gate
		reason string
		code   errcode.Code
	}{
		{"min steps blocks", lifecycle.MinSteps(training, 100), lifecycle.MinStepsGate,
			"min_steps: TRAINING has 40 of 100 steps", errcode.State},
		{"min steps passes at bound", lifecycle.MinSteps(training, 40), lifecycle.Pass, "", errcode.OK},
		{"finite passes", lifecycle.Finite("loss", 1.5), lifecycle.Pass, "", errcode.OK},
		{"NaN blocks", lifecycle.Finite("train_loss", math.NaN()), lifecycle.FiniteGate, "finite: train_loss is NaN", errcode.State},
		{"Inf blocks", lifecycle.Finite("alpha", math.Inf(-1)), lifecycle.FiniteGate, "finite: alpha is -Inf", errcode.State},
		{"budget passes", lifecycle.Budget("params", 1000, 500, 1500), lifecycle.Pass, "", errcode.OK},
		{"budget unlimited", lifecycle.Budget("params", 1e12, 1e12, 0), lifecycle.Pass, "", errcode.OK},
		{"budget blocks", lifecycle.Budget("params", 1200, 500, 1500), lifecycle.BudgetGate,
			"budget: params would be 1700, over the limit of 1500", errcode.Budget},
		{"first picks first block", lifecycle.First(lifecycle.Finite("a", 1), lifecycle.Budget("params", 2, 2, 3),
			lifecycle.Finite("b", math.NaN())), lifecycle.BudgetGate, "budget: params would be 4, over the limit of 3", errcode.Budget},
		{"first all pass", lifecycle.First(), lifecycle.Pass, "", errcode.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v.Gate != tc.gate || tc.v.OK() != (tc.gate == lifecycle.Pass) {
				t.Fatalf("gate %v, want %v", tc.v.Gate, tc.gate)
			}
			if got := tc.v.Reason(); got != tc.reason {
				t.Fatalf("Reason() = %q, want %q", got, tc.reason)
			}
			err := tc.v.Err()
			if errcode.Of(err) != tc.code {
				t.Fatalf("Err() = %v (code %v), want code %v", err, errcode.Of(err), tc.code)
			}
			if err != nil && err.Error() != tc.reason+": "+errorText(tc.code) {
				t.Fatalf("Err() text %q", err)
			}
		})
	}
	if !errors.Is(lifecycle.Budget("params", 2, 2, 3).Err(), lifecycle.ErrOverBudget) {
		t.Fatal("budget error must wrap ErrOverBudget")
	}
	if lifecycle.Pass.String() != "pass" || lifecycle.BudgetGate.String() != "budget" {
		t.Fatal("gate names")
	}
}

func errorText(c errcode.Code) string {
	if c == errcode.Budget {
		return lifecycle.ErrOverBudget.Error()
	}
	return lifecycle.ErrGateBlocked.Error()
}

func TestGatesDoNotAllocate(t *testing.T) {
	s := &lifecycle.Seed{State: lifecycle.Training, StepsInState: 1}
	n := testing.AllocsPerRun(100, func() {
		v := lifecycle.First(lifecycle.MinSteps(s, 10), lifecycle.Finite("x", 1), lifecycle.Budget("params", 1, 1, 10))
		if v.OK() {
			panic("must block")
		}
	})
	if n != 0 {
		t.Fatalf("gates allocate %v times per check", n)
	}
}
