package lifecycle

import (
	"strconv"

	"github.com/esper-morph/esper/core/errcode"
)

// Sentinel errors. Each carries a stable code from core/errcode, so
// errcode.Of reports the right code for any error that wraps one.
var (
	// ErrIllegalTransition is returned (wrapped in a *TransitionError) when a
	// seed is asked to move to a state the transition table does not allow
	// from its current state.
	ErrIllegalTransition = errcode.New(errcode.State, "lifecycle: illegal transition")

	// ErrUnknownState is returned when a state name or value is not one of
	// the eleven seed states.
	ErrUnknownState = errcode.New(errcode.Invalid, "lifecycle: unknown state")

	// ErrUnknownSchedule is returned when an alpha schedule name is not one
	// of the known schedules.
	ErrUnknownSchedule = errcode.New(errcode.Invalid, "lifecycle: unknown schedule")

	// ErrInvalidSeed is returned when a seed record (decoded from a snapshot,
	// or an argument such as a negative parameter count) is inconsistent.
	ErrInvalidSeed = errcode.New(errcode.Invalid, "lifecycle: invalid seed record")

	// ErrGateBlocked is returned by Verdict.Err when a gate other than the
	// budget holds a transition back (too few steps in state, a non-finite
	// value).
	ErrGateBlocked = errcode.New(errcode.State, "lifecycle: gate blocked")

	// ErrOverBudget is returned by Verdict.Err when the budget gate holds a
	// transition back.
	ErrOverBudget = errcode.New(errcode.Budget, "lifecycle: over budget")
)

// TransitionError describes a refused transition. It unwraps to
// ErrIllegalTransition.
type TransitionError struct {
	Layer, Slot int
	From, To    State
}

// Error implements error, e.g.
// "lifecycle: seed 0/1: TRAINING -> FOSSILIZED is not a legal transition".
func (e *TransitionError) Error() string {
	return "lifecycle: seed " + strconv.Itoa(e.Layer) + "/" + strconv.Itoa(e.Slot) + ": " +
		e.From.String() + " -> " + e.To.String() + " is not a legal transition"
}

// Unwrap returns ErrIllegalTransition.
func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }
