package lifecycle

import (
	"fmt"
	"strconv"
	"strings"
)

// State is the lifecycle state of one seed slot. The integer values are
// stable: they cross the C ABI (docs/internals.md, "Seed states").
type State uint8

// The seed states, in ABI order.
const (
	// Dormant: the slot is empty; no module exists in Python.
	Dormant State = 0
	// Germinated: a blueprint was chosen; Python builds the seed module.
	Germinated State = 1
	// Training: the seed learns in isolation; alpha is 0.
	Training State = 2
	// Blending: alpha ramps from 0 to 1 on the schedule.
	Blending State = 3
	// Holding: alpha is 1; the controller measures the seed's contribution.
	Holding State = 4
	// Fossilized: kept and frozen; terminal.
	Fossilized State = 5
	// Pruned: removed after judgement or failure; embargo follows at once.
	Pruned State = 6
	// Embargoed: the slot rests before it may be reused.
	Embargoed State = 7
	// Resetting: the slot is being cleared; dormant again next.
	Resetting State = 8
	// Cancelled: stopped before it touched the host's output.
	Cancelled State = 9
	// RolledBack: the governor restored a checkpoint and removed the seed.
	RolledBack State = 10

	// NumStates is the number of states.
	NumStates = 11
)

// names holds the state names in ABI order.
var names = [NumStates]string{
	"DORMANT", "GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED",
	"PRUNED", "EMBARGOED", "RESETTING", "CANCELLED", "ROLLED_BACK",
}

// legal is the table of legal transitions, the single source of truth:
// legal[from] has bit `to` set when from -> to is allowed
// (docs/internals.md, "Legal transitions"). It is never modified.
var legal = [NumStates]uint16{
	Dormant:    bits(Germinated),
	Germinated: bits(Training, Cancelled),
	Training:   bits(Blending, Pruned, Cancelled, RolledBack),
	Blending:   bits(Holding, Pruned, RolledBack),
	Holding:    bits(Fossilized, Pruned, RolledBack),
	Fossilized: 0,
	Pruned:     bits(Embargoed),
	Embargoed:  bits(Resetting),
	Resetting:  bits(Dormant),
	Cancelled:  bits(Embargoed),
	RolledBack: bits(Embargoed),
}

// natural is the state each state moves to when it simply runs its course
// (the "Advance" of a seed): the forward path of the lifecycle. Dormant has
// none (it needs a blueprint: germinate it) and Fossilized none (terminal).
var natural = [NumStates]State{
	Dormant:    Dormant,
	Germinated: Training,
	Training:   Blending,
	Blending:   Holding,
	Holding:    Fossilized,
	Fossilized: Fossilized,
	Pruned:     Embargoed,
	Embargoed:  Resetting,
	Resetting:  Dormant,
	Cancelled:  Embargoed,
	RolledBack: Embargoed,
}

func bits(ss ...State) uint16 {
	var b uint16
	for _, s := range ss {
		b |= 1 << s
	}
	return b
}

// States returns every state in ABI order.
func States() []State {
	out := make([]State, NumStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}

// Valid reports whether s is one of the eleven states.
func (s State) Valid() bool { return s < NumStates }

// String returns the state's name as in docs/internals.md, e.g. "TRAINING",
// or "State(42)" for an invalid value.
func (s State) String() string {
	if s.Valid() {
		return names[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// ParseState returns the state with the given name. Names match
// case-insensitively ("training" is Training); a decimal ABI value ("2") is
// accepted too.
func ParseState(name string) (State, error) {
	for i, n := range names {
		if strings.EqualFold(n, name) {
			return State(i), nil
		}
	}
	if v, err := strconv.Atoi(name); err == nil && v >= 0 && v < NumStates {
		return State(v), nil
	}
	return 0, fmt.Errorf("lifecycle: parse state %q: %w", name, ErrUnknownState)
}

// MarshalText encodes the state as its name; an invalid state is an error.
func (s State) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("lifecycle: marshal state %d: %w", uint8(s), ErrUnknownState)
	}
	return []byte(names[s]), nil
}

// UnmarshalText decodes a state name (see ParseState).
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// CanTransition reports whether from -> to is a legal transition.
func CanTransition(from, to State) bool {
	return from.Valid() && to.Valid() && legal[from]&(1<<to) != 0
}

// Successors returns the states legally reachable from s in one transition,
// in ABI order.
func Successors(s State) []State {
	var out []State
	if !s.Valid() {
		return out
	}
	for to := State(0); to < NumStates; to++ {
		if legal[s]&(1<<to) != 0 {
			out = append(out, to)
		}
	}
	return out
}

// Next returns the state s moves to when it runs its course, and false for
// Dormant (which needs a blueprint) and Fossilized (terminal).
func (s State) Next() (State, bool) {
	if !s.Valid() || s == Dormant || s == Fossilized {
		return s, false
	}
	return natural[s], true
}

// Live reports whether a seed module exists in Python in state s:
// Germinated, Training, Blending, Holding and Fossilized. Live seeds count
// against the parameter budget.
func (s State) Live() bool {
	switch s {
	case Germinated, Training, Blending, Holding, Fossilized:
		return true
	}
	return false
}

// Active reports whether a seed in state s is in flight: live and not yet
// fossilized (Germinated, Training, Blending, Holding). Active seeds count
// against the governor's concurrency limit.
func (s State) Active() bool { return s.Live() && s != Fossilized }

// Exiting reports whether s is on the way back to Dormant (Pruned,
// Cancelled, RolledBack, Embargoed, Resetting).
func (s State) Exiting() bool {
	switch s {
	case Pruned, Cancelled, RolledBack, Embargoed, Resetting:
		return true
	}
	return false
}

// Alpha returns the blend weight a seed has in state s outside of Blending
// (whose alpha follows the schedule): 1 in Holding and Fossilized, 0 in
// every other state.
func (s State) Alpha() float64 {
	if s == Holding || s == Fossilized {
		return 1
	}
	return 0
}
