package tamiyo

import (
	"fmt"
	"strings"

	"github.com/esper-morph/esper/blueprint"
)

// Op is what a decision does.
type Op uint8

// The decision ops.
const (
	// Wait changes nothing; its reason says why no seed germinates.
	Wait Op = iota
	// Germinate grows a seed with Blueprint at Layer/Slot.
	Germinate
	// Prune removes the seed at Layer/Slot.
	Prune
	// Fossilize keeps the held seed at Layer/Slot for good.
	Fossilize
	// Rollback removes the seed at Layer/Slot after a non-finite signal, a
	// non-finite or exploding training loss, or a non-finite validation
	// loss (Layer -1 when no seed can be blamed); in every case the trainer
	// restores its last good state (weights and optimizer state).
	Rollback
	// Advance moves the seed at Layer/Slot to its next state without
	// waiting for the step gate (a graph policy's move, policy/graphpolicy).
	Advance

	numOps
)

var opNames = [numOps]string{"wait", "germinate", "prune", "fossilize", "rollback", "advance"}

// String returns the op's name: "wait", "germinate", "prune", "fossilize",
// or "rollback".
func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Valid reports whether o is one of the ops.
func (o Op) Valid() bool { return o < numOps }

// MarshalText encodes the op's name.
func (o Op) MarshalText() ([]byte, error) {
	if o >= numOps {
		return nil, fmt.Errorf("tamiyo: marshal op %d: %w", uint8(o), ErrState)
	}
	return []byte(opNames[o]), nil
}

// UnmarshalText decodes an op name.
func (o *Op) UnmarshalText(b []byte) error {
	for i, n := range opNames {
		if strings.EqualFold(n, string(b)) {
			*o = Op(i)
			return nil
		}
	}
	return fmt.Errorf("tamiyo: op %q is not one of wait, germinate, prune, fossilize, rollback, advance: %w", b, ErrState)
}

// Decision is one thing the controller wants done, with its reason.
type Decision struct {
	// Op is what to do.
	Op Op `json:"op"`
	// Layer and Slot name the seed (-1 for Wait, and for a Rollback that
	// has no seed to blame).
	Layer int `json:"layer"`
	Slot  int `json:"slot"`
	// Template, Params and ParamCount describe a germination's blueprint.
	Template   string           `json:"template,omitempty"`
	Params     blueprint.Params `json:"params,omitempty"`
	ParamCount int64            `json:"param_count,omitempty"`
	// Blueprint is a germination's validated IR (its JSON travels in the
	// GERMINATED event, not in the decision).
	Blueprint *blueprint.IR `json:"-"`
	// Reason says why, in words.
	Reason string `json:"reason"`
	// PredictedGain is a germination's predicted relative gain (the share
	// of the validation loss its seed is expected to remove,
	// karn.RelativeGain's unit), when a predictor made one: Karn's, for a
	// candidate Tamiyo took from a search ranked by its predictor (see
	// controller.search); nil otherwise (the heuristic and random policies'
	// rules, the fixed template, a search ranked by the prior). The session
	// compares it with the measured gain when the seed's adaptation ends
	// (impact analysis, docs/metrics.md).
	PredictedGain *float64 `json:"predicted_gain,omitempty"`
	// PredictedValue is the learned policy's predicted value for a
	// germination (policy/value's target, gain_per_compute_v1: relative
	// gain per host-epoch of compute); nil for other policies. The outcome
	// record keeps it as "prediction"; the impact analysis turns it into a
	// gain with the seed's cost when it ends (value.CostOf).
	PredictedValue *float64 `json:"predicted_value,omitempty"`
	// ValueEstimate is the ppo graph policy's value head at the decision
	// (its estimate of the episode's return, the trainer's reward); nil for
	// other policies. Simic's evaluation reads it for the critic's
	// explained variance on held-out episodes.
	ValueEstimate *float64 `json:"value_estimate,omitempty"`
}

func waitDecision(format string, args ...any) Decision {
	return Decision{Op: Wait, Layer: -1, Slot: -1, Reason: fmt.Sprintf(format, args...)}
}
