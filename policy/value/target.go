package value

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/urza"
)

// TargetName names the target definition below; a model's manifest must
// name it.
const TargetName = "gain_per_compute_v1"

// MinCost floors the compute a target divides by (host-epochs): a seed
// pruned within a few steps would otherwise divide its gain (0) or noise
// by almost nothing.
const MinCost = 0.01

// Target is a record's training target and its parts.
type Target struct {
	// Y is Gain / max(Cost, MinCost).
	Y float64 `json:"y"`
	// Gain is the share of the validation loss the seed removed at its
	// last HOLDING measurement (karn.MeasuredGain: delta_loss / (val_loss +
	// delta_loss), at most 1); 0 when it was never measured.
	Gain float64 `json:"gain"`
	// Measured says whether Gain comes from a measurement.
	Measured bool `json:"measured"`
	// Cost is the seed's training compute in host-epochs: SizeFrac x
	// Epochs.
	Cost float64 `json:"cost"`
	// SizeFrac is param_count / host_params: the seed's forward cost per
	// sample relative to the wrapped layers' (both see the same inputs, and
	// dense and conv FLOPs are proportional to parameters at a given
	// input).
	SizeFrac float64 `json:"size_frac"`
	// Epochs are the epochs the seed ran forward and backward (TRAINING,
	// BLENDING, HOLDING): its running steps over the run's steps per epoch
	// (the observation's step / (epoch + 1)), or the spans' epoch counts
	// when the germination came at step 0.
	Epochs float64 `json:"epochs"`
}

// ErrNoScale is returned by TargetOf for a record without host_params: its
// compute has no run-level scale.
var ErrNoScale = fmt.Errorf("value: outcome has no host_params, the scale its compute is measured against")

// TargetOf returns an outcome record's target (docs/simic.md, "The
// target"): the validation-loss share its seed removed per host-epoch of
// training compute it cost. Gain is 0 for a seed pruned, cancelled or
// rolled back before any measurement: it removed nothing and cost what it
// ran.
func TargetOf(o *urza.Outcome) (Target, error) {
	var obs struct {
		Step       int64  `json:"step"`
		Epoch      int    `json:"epoch"`
		HostParams *int64 `json:"host_params"`
	}
	if err := json.Unmarshal(o.Observation, &obs); err != nil {
		return Target{}, fmt.Errorf("value: outcome %s/%d: observation: %w", o.RunID, o.Seq, err)
	}
	if obs.HostParams == nil || *obs.HostParams <= 0 {
		return Target{}, fmt.Errorf("%w (record %s/%d)", ErrNoScale, o.RunID, o.Seq)
	}
	var t Target
	t.Gain, t.Measured = karn.MeasuredGain(o)
	var steps int64
	var spanEpochs int
	for _, sp := range o.States {
		switch sp.State {
		case "TRAINING", "BLENDING", "HOLDING":
			steps += sp.Steps
			spanEpochs += sp.Epochs
		}
	}
	t.SizeFrac, t.Epochs, t.Cost = CostOf(o.ParamCount, *obs.HostParams, steps, spanEpochs, obs.Step, obs.Epoch)
	t.Y = t.Gain / Charged(t.Cost)
	return t, nil
}

// CostOf returns a seed's training compute in host-epochs (Target.Cost)
// and its parts: sizeFrac = paramCount / hostParams, epochs = the seed's
// running steps (TRAINING, BLENDING, HOLDING) over the run's steps per
// epoch as seen when it was decided (step / (epoch + 1)), or spanEpochs
// (the epochs of those states) when it was decided at step 0; cost =
// sizeFrac x epochs. hostParams must be positive. TargetOf and the
// session's impact analysis (a predicted value back in gain units) share
// it.
func CostOf(paramCount, hostParams, runningSteps int64, spanEpochs int, step int64, epoch int) (sizeFrac, epochs, cost float64) {
	sizeFrac = float64(max(0, paramCount)) / float64(hostParams)
	if step > 0 {
		epochs = float64(runningSteps) * float64(epoch+1) / float64(step)
	} else {
		epochs = float64(spanEpochs)
	}
	return sizeFrac, epochs, sizeFrac * epochs
}

// Charged returns the compute a target divides its gain by: cost, floored
// at MinCost. A predicted value times Charged(cost) is a predicted gain.
func Charged(cost float64) float64 { return math.Max(cost, MinCost) }
