package lifecycle

import (
	"encoding/json"
	"fmt"
)

// MaxHistory bounds the transitions a Seed keeps; older ones are dropped
// (and counted in HistoryDropped) so a slot recycled for a very long run
// holds bounded memory. One germinate-to-dormant cycle is at most 8
// transitions, so this keeps at least the last 32 cycles.
const MaxHistory = 256

// Transition is one recorded state change of a seed.
type Transition struct {
	// From and To are the states before and after.
	From State `json:"from"`
	To   State `json:"to"`
	// Step is the session's optimizer step at which it happened.
	Step int64 `json:"step"`
	// Reason says why, in words (a gate, a decision, a failure).
	Reason string `json:"reason"`
}

// Seed is the record of one seed slot of one Kasmina layer: its state, its
// counters and blend weight, its blueprint, and its history. The zero value
// with Layer and Slot set is a dormant slot. A Seed is not safe for
// concurrent use.
type Seed struct {
	// Layer and Slot locate the slot (layer index in the session config,
	// slot index within the layer).
	Layer int `json:"layer"`
	Slot  int `json:"slot"`
	// State is the current state.
	State State `json:"state"`
	// StepsInState counts optimizer steps since the last transition.
	StepsInState int64 `json:"steps_in_state"`
	// TotalSteps counts optimizer steps since the current seed germinated
	// (0 while the slot has never germinated).
	TotalSteps int64 `json:"total_steps"`
	// Alpha is the current blend weight in [0, 1].
	Alpha float64 `json:"alpha"`
	// BlueprintID is the SHA-256 id of the blueprint IR ("" when dormant).
	BlueprintID string `json:"blueprint_id,omitempty"`
	// Blueprint is the blueprint IR JSON (nil when dormant).
	Blueprint json.RawMessage `json:"blueprint,omitempty"`
	// ParamCount is the blueprint's parameter count (0 when dormant).
	ParamCount int64 `json:"param_count"`
	// Generation counts the germinations of this slot so far; it names the
	// current seed (breakers and the growth log key on it).
	Generation int `json:"generation"`
	// GerminatedStep and GerminatedEpoch say when the current seed
	// germinated (-1 before the first germination).
	GerminatedStep  int64 `json:"germinated_step"`
	GerminatedEpoch int   `json:"germinated_epoch"`
	// Failures counts failures reported for the current seed.
	Failures int `json:"failures"`
	// Streak counts the consecutive failing steps ending at FailedStep: a
	// failure reported at step FailedStep+1 extends it, one reported at
	// FailedStep again is the same failing step, any later step starts a
	// new streak of 1 (the steps between were clean). The seed's breaker
	// opens when Streak reaches breaker.failures.
	Streak int `json:"streak,omitempty"`
	// FailedStep is the session step of the last failure reported.
	FailedStep int64 `json:"failed_step,omitempty"`
	// History lists the transitions of this slot, oldest first, at most
	// MaxHistory of them.
	History []Transition `json:"history"`
	// HistoryDropped counts the transitions dropped from the front of
	// History to keep it within MaxHistory.
	HistoryDropped int `json:"history_dropped,omitempty"`
}

// NewSeed returns a dormant slot at layer/slot.
func NewSeed(layer, slot int) *Seed {
	return &Seed{Layer: layer, Slot: slot, GerminatedStep: -1, GerminatedEpoch: -1}
}

// Transition moves the seed to state to at the given step, recording reason.
// An illegal move is refused with a *TransitionError (code STATE) and leaves
// the seed unchanged. Entering a state resets StepsInState and sets Alpha to
// the state's alpha; entering Dormant clears the blueprint.
func (s *Seed) Transition(to State, reason string, step int64) (Transition, error) {
	if !CanTransition(s.State, to) {
		return Transition{}, &TransitionError{Layer: s.Layer, Slot: s.Slot, From: s.State, To: to}
	}
	t := Transition{From: s.State, To: to, Step: step, Reason: reason}
	s.State = to
	s.StepsInState = 0
	s.Alpha = to.Alpha()
	if to == Dormant {
		s.Blueprint = nil
		s.BlueprintID = ""
		s.ParamCount = 0
	}
	s.record(t)
	return t, nil
}

// Germinate moves a dormant seed to Germinated with the given blueprint (IR
// JSON, its id and parameter count), starting a new generation: the step
// counters and failure count restart. The blueprint bytes are copied.
func (s *Seed) Germinate(blueprint json.RawMessage, id string, params int64, reason string, step int64, epoch int) (Transition, error) {
	if params < 0 {
		return Transition{}, fmt.Errorf("lifecycle: seed %d/%d: germinate with %d params: %w", s.Layer, s.Slot, params, ErrInvalidSeed)
	}
	t, err := s.Transition(Germinated, reason, step)
	if err != nil {
		return t, err
	}
	s.Blueprint = append(json.RawMessage(nil), blueprint...)
	s.BlueprintID = id
	s.ParamCount = params
	s.Generation++
	s.TotalSteps = 0
	s.Failures, s.Streak, s.FailedStep = 0, 0, 0
	s.GerminatedStep = step
	s.GerminatedEpoch = epoch
	return t, nil
}

func (s *Seed) record(t Transition) {
	if len(s.History) >= MaxHistory {
		n := len(s.History) - MaxHistory + 1
		s.History = append(s.History[:0], s.History[n:]...)
		s.HistoryDropped += n
	}
	s.History = append(s.History, t)
}

// Tick counts n optimizer steps spent in the current state. TotalSteps
// counts only once the slot has germinated.
func (s *Seed) Tick(n int64) {
	s.StepsInState += n
	if s.Generation > 0 {
		s.TotalSteps += n
	}
}

// UpdateAlpha sets Alpha from the state: in Blending it follows sched over
// tempo steps, elsewhere it is the state's alpha (State.Alpha).
func (s *Seed) UpdateAlpha(sched Schedule, tempo int64) {
	if s.State == Blending {
		s.Alpha = sched.Alpha(s.StepsInState, tempo)
		return
	}
	s.Alpha = s.State.Alpha()
}

// Clone returns a deep copy of s.
func (s *Seed) Clone() *Seed {
	c := *s
	c.Blueprint = append(json.RawMessage(nil), s.Blueprint...)
	c.History = append([]Transition(nil), s.History...)
	return &c
}

// Validate checks that a decoded record is consistent: a valid state, a
// finite alpha in [0, 1], non-negative counters, a blueprint on live seeds,
// and a history whose every entry is a legal transition ending in State.
func (s *Seed) Validate() error {
	id := fmt.Sprintf("lifecycle: seed %d/%d", s.Layer, s.Slot)
	switch {
	case !s.State.Valid():
		return fmt.Errorf("%s: state %d: %w", id, uint8(s.State), ErrUnknownState)
	case !(s.Alpha >= 0 && s.Alpha <= 1):
		return fmt.Errorf("%s: alpha %v is not in [0, 1]: %w", id, s.Alpha, ErrInvalidSeed)
	case s.StepsInState < 0 || s.TotalSteps < 0 || s.ParamCount < 0 || s.Generation < 0 ||
		s.Failures < 0 || s.Streak < 0 || s.Streak > s.Failures || s.FailedStep < 0 || s.HistoryDropped < 0:
		return fmt.Errorf("%s: negative counter: %w", id, ErrInvalidSeed)
	case s.State.Live() && s.Generation == 0:
		return fmt.Errorf("%s: %s seed has never germinated: %w", id, s.State, ErrInvalidSeed)
	case len(s.History) > MaxHistory:
		return fmt.Errorf("%s: history of %d entries exceeds %d: %w", id, len(s.History), MaxHistory, ErrInvalidSeed)
	}
	for i, t := range s.History {
		if !CanTransition(t.From, t.To) {
			return fmt.Errorf("%s: history[%d]: %s -> %s is not a legal transition: %w", id, i, t.From, t.To, ErrInvalidSeed)
		}
		if i > 0 && (t.From != s.History[i-1].To || t.Step < s.History[i-1].Step) {
			return fmt.Errorf("%s: history[%d] does not follow history[%d]: %w", id, i, i-1, ErrInvalidSeed)
		}
	}
	if n := len(s.History); n > 0 && s.History[n-1].To != s.State {
		return fmt.Errorf("%s: history ends in %s but the state is %s: %w", id, s.History[n-1].To, s.State, ErrInvalidSeed)
	}
	return nil
}
