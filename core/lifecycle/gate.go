package lifecycle

import (
	"fmt"
	"math"
	"strconv"
)

// Gate names the check that held a transition back.
type Gate uint8

// The gates.
const (
	// Pass: nothing blocks.
	Pass Gate = iota
	// MinStepsGate: the seed has not spent enough steps in its state.
	MinStepsGate
	// FiniteGate: a value that must be finite is NaN or infinite.
	FiniteGate
	// BudgetGate: the change would exceed a budget.
	BudgetGate
)

// String returns the gate's name: "pass", "min_steps", "finite", "budget".
func (g Gate) String() string {
	switch g {
	case Pass:
		return "pass"
	case MinStepsGate:
		return "min_steps"
	case FiniteGate:
		return "finite"
	case BudgetGate:
		return "budget"
	}
	return "Gate(" + strconv.Itoa(int(g)) + ")"
}

// Verdict is what a gate says. The zero Verdict passes. Checking a gate
// never allocates; Reason and Err format only when asked.
type Verdict struct {
	// Gate is Pass when the transition may proceed, else the gate that
	// blocks it.
	Gate Gate
	// What names what was checked: a state (min_steps), a value (finite) or
	// a resource (budget).
	What string
	// Value is what was seen: steps in state, the offending value, or the
	// total after the change.
	Value float64
	// Limit is the bound: steps needed or the budget (unused for finite).
	Limit float64
}

// OK reports whether the verdict lets the transition proceed.
func (v Verdict) OK() bool { return v.Gate == Pass }

// Reason says in words why the gate blocks ("" when it passes), e.g.
// "min_steps: TRAINING has 40 of 100 steps".
func (v Verdict) Reason() string {
	switch v.Gate {
	case Pass:
		return ""
	case MinStepsGate:
		return fmt.Sprintf("min_steps: %s has %d of %d steps", v.What, int64(v.Value), int64(v.Limit))
	case FiniteGate:
		return fmt.Sprintf("finite: %s is %v", v.What, v.Value)
	case BudgetGate:
		return fmt.Sprintf("budget: %s would be %d, over the limit of %d", v.What, int64(v.Value), int64(v.Limit))
	}
	return v.Gate.String()
}

// Err returns nil when the verdict passes, else an error with the reason
// that wraps ErrOverBudget (code BUDGET) for the budget gate and
// ErrGateBlocked (code STATE) for the others.
func (v Verdict) Err() error {
	switch v.Gate {
	case Pass:
		return nil
	case BudgetGate:
		return fmt.Errorf("%s: %w", v.Reason(), ErrOverBudget)
	}
	return fmt.Errorf("%s: %w", v.Reason(), ErrGateBlocked)
}

// MinSteps blocks until s has spent at least n steps in its current state.
func MinSteps(s *Seed, n int64) Verdict {
	if s.StepsInState >= n {
		return Verdict{}
	}
	return Verdict{Gate: MinStepsGate, What: s.State.String(), Value: float64(s.StepsInState), Limit: float64(n)}
}

// Finite blocks when v is NaN or infinite; what names the value.
func Finite(what string, v float64) Verdict {
	if !math.IsNaN(v) && !math.IsInf(v, 0) {
		return Verdict{}
	}
	return Verdict{Gate: FiniteGate, What: what, Value: v}
}

// Budget blocks when adding add to used would exceed limit; what names the
// resource ("params"). A limit <= 0 means unlimited.
func Budget(what string, used, add, limit int64) Verdict {
	if limit <= 0 || used+add <= limit {
		return Verdict{}
	}
	return Verdict{Gate: BudgetGate, What: what, Value: float64(used + add), Limit: float64(limit)}
}

// First returns the first blocking verdict of vs, or a passing one.
func First(vs ...Verdict) Verdict {
	for _, v := range vs {
		if !v.OK() {
			return v
		}
	}
	return Verdict{}
}
