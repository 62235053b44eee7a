package session

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Event is one lifecycle transition, as the trainer receives it
// (docs/internals.md, "Events").
type Event struct {
	// Layer and Slot name the seed.
	Layer int `json:"layer"`
	Slot  int `json:"slot"`
	// From and To are the states before and after.
	From lifecycle.State `json:"from"`
	To   lifecycle.State `json:"to"`
	// Step is the optimizer step at which it happened; Epoch the epoch in
	// progress (or ending, for events caused by EndEpoch).
	Step  int64 `json:"step"`
	Epoch int   `json:"epoch"`
	// Alpha is the seed's blend weight after the transition.
	Alpha float64 `json:"alpha"`
	// Reason says why.
	Reason string `json:"reason"`
	// BlueprintID, Blueprint (canonical IR JSON) and ParamCount describe
	// the seed, and Generation names it (the slot's germination count, the
	// argument of SeedFailed); only on transitions to GERMINATED. The
	// trainer builds the seed from them and checks it against them; it
	// never re-derives the id or re-decides validity.
	BlueprintID string          `json:"blueprint_id,omitempty"`
	Blueprint   json.RawMessage `json:"blueprint,omitempty"`
	ParamCount  int64           `json:"param_count,omitempty"`
	Generation  int             `json:"generation,omitempty"`
}

// DecisionResult is a controller decision and what became of it.
type DecisionResult struct {
	tamiyo.Decision
	// Applied is true when the session carried the decision out (a wait,
	// or a rollback with no seed to blame, is carried out by doing
	// nothing).
	Applied bool `json:"applied"`
	// Error says why it could not be applied ("" when applied).
	Error string `json:"error,omitempty"`
}

// EpochResult is what EndEpoch returns.
type EpochResult struct {
	// Epoch is the epoch that ended.
	Epoch int `json:"epoch"`
	// Decisions are the controller's decisions, in the order applied.
	Decisions []DecisionResult `json:"decisions"`
	// Rollout holds the value model's switch, revert or refusal at this
	// epoch's end (rolling deployment; absent when none).
	Rollout []RolloutEvent `json:"rollout,omitempty"`
	// Events are every pending event, in order, those the decisions caused
	// included; the queue is empty afterwards.
	Events []Event `json:"events"`
}

// LogEntry is one entry of the growth log.
type LogEntry struct {
	// Kind is "event", "decision", "failure", "alarm" or "impact".
	Kind string `json:"kind"`
	// Step and Epoch say when.
	Step  int64 `json:"step"`
	Epoch int   `json:"epoch"`
	// Event is set for kind "event".
	Event *Event `json:"event,omitempty"`
	// Decision is set for kind "decision" (decisions of the controller and
	// the governor's rollbacks).
	Decision *DecisionResult `json:"decision,omitempty"`
	// Failure is set for kind "failure".
	Failure *Failure `json:"failure,omitempty"`
	// Alarm is set for kind "alarm" (Nissa's checks and the governor's
	// rollbacks, see docs/metrics.md).
	Alarm *nissa.Alarm `json:"alarm,omitempty"`
	// Impact is set for kind "impact": an ended adaptation's predicted
	// gain against its measured contribution.
	Impact *nissa.Impact `json:"impact,omitempty"`
	// Rollout is set for kind "rollout": a switch, revert or refusal of
	// a model version (rolling deployment).
	Rollout *RolloutEvent `json:"rollout,omitempty"`
	// Actor is who caused a kind "event" transition (policy, manual,
	// schedule, ...), as its run log event names it; absent in older
	// snapshots.
	Actor oona.Actor `json:"actor,omitempty"`
}

// Failure is a seed failure reported by the trainer.
type Failure struct {
	Layer int         `json:"layer"`
	Slot  int         `json:"slot"`
	Kind  FailureKind `json:"kind"`
	// Message is the trainer's description.
	Message string `json:"message"`
	// Failures counts the seed's failures so far, Streak its consecutive
	// failing steps (BreakerConfig); BreakerOpen says whether its breaker
	// opened.
	Failures    int  `json:"failures"`
	Streak      int  `json:"streak"`
	BreakerOpen bool `json:"breaker_open"`
	// Outcome says what the session did.
	Outcome string `json:"outcome"`
}

// Counters count what happened over the run.
type Counters struct {
	Germinations   int64 `json:"germinations"`
	Fossilizations int64 `json:"fossilizations"`
	Prunes         int64 `json:"prunes"`
	Cancels        int64 `json:"cancels"`
	Rollbacks      int64 `json:"rollbacks"`
	Failures       int64 `json:"failures"`
	Alarms         int64 `json:"alarms"`
	Decisions      int64 `json:"decisions"`
	Events         int64 `json:"events"`
	// Proposals counts the moves proposed from outside (Propose). Refused
	// counts the moves the session did not carry out: a policy's decision
	// or an outside proposal that the lifecycle, the budget or the governor
	// refused (a refused move is never executed).
	Proposals int64 `json:"proposals"`
	Refused   int64 `json:"refused"`
}

// FailureKind classifies a seed failure (the int32 kind of
// esper_session_report_failure).
type FailureKind int32

// The failure kinds.
const (
	// FailureException: the seed's forward or backward raised.
	FailureException FailureKind = 0
	// FailureNonfinite: the seed's output held NaN or infinity.
	FailureNonfinite FailureKind = 1
	// FailureShape: the seed's output had the wrong shape or dtype.
	FailureShape FailureKind = 2
	// FailureOther: anything else.
	FailureOther FailureKind = 3

	numFailureKinds = 4
)

var failureNames = [numFailureKinds]string{"exception", "nonfinite", "shape", "other"}

// String returns "exception", "nonfinite", "shape" or "other".
func (k FailureKind) String() string {
	if k >= 0 && k < numFailureKinds {
		return failureNames[k]
	}
	return fmt.Sprintf("FailureKind(%d)", int32(k))
}

// Valid reports whether k is one of the failure kinds.
func (k FailureKind) Valid() bool { return k >= 0 && k < numFailureKinds }

// MarshalText encodes the kind's name.
func (k FailureKind) MarshalText() ([]byte, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("session: failure kind %d: %w", int32(k), ErrArgument)
	}
	return []byte(failureNames[k]), nil
}

// UnmarshalText decodes a kind's name.
func (k *FailureKind) UnmarshalText(b []byte) error {
	for i, n := range failureNames {
		if strings.EqualFold(n, string(b)) {
			*k = FailureKind(i)
			return nil
		}
	}
	return fmt.Errorf("session: failure kind %q is not one of exception, nonfinite, shape, other: %w", b, ErrArgument)
}
