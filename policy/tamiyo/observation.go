package tamiyo

import (
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
)

// Metrics is what the trainer reports at the end of an epoch
// (docs/internals.md, "esper_session_end_epoch"). Losses and the metric are
// nissa.Metric values: null or absent means not measured, a number is a
// measurement, and "NaN", "Infinity", "-Infinity" are non-finite
// measurements.
type Metrics struct {
	// Epoch is the epoch that ended (>= 0). Nil means "the one after the
	// previous" (the session counts).
	Epoch *int `json:"epoch,omitempty"`
	// TrainLoss, ValLoss and ValMetric are the epoch's training loss,
	// validation loss and validation metric.
	TrainLoss nissa.Metric `json:"train_loss"`
	ValLoss   nissa.Metric `json:"val_loss"`
	ValMetric nissa.Metric `json:"val_metric"`
	// Contributions are the contributions of held seeds measured this
	// epoch.
	Contributions []Contribution `json:"contributions,omitempty"`
	// SamplesPerStep is, per wrapped layer, the samples one training step
	// passes through it (feature vectors for a linear host, images for a
	// conv host), as the trainer last measured them. It is not a decision
	// input: the session counts the run's training FLOPs with it
	// (docs/events.md). Absent: the epoch's FLOPs are not counted.
	SamplesPerStep []int64 `json:"samples_per_step,omitempty"`
}

// Contribution is a held seed's measured effect on the validation loss.
type Contribution struct {
	// Layer and Slot name the seed.
	Layer int `json:"layer"`
	Slot  int `json:"slot"`
	// DeltaLoss is the validation loss without the seed minus with it:
	// positive means the seed helps. It must be a finite number.
	DeltaLoss float64 `json:"delta_loss"`
}

// MaxMetricsBytes bounds a metrics document.
const MaxMetricsBytes = 1 << 20

// ParseMetrics decodes an end-of-epoch metrics document strictly: unknown
// fields, trailing data, a negative epoch, a non-finite delta_loss and a
// seed named twice are errors wrapping ErrMetrics (code INVALID). Layer and
// slot ranges are checked by the session, which knows them. A document of
// plain numbers and nulls is read without reflection (decodeMetricsPlain,
// held to canon.DecodeStrict by its tests); any other goes through
// canon.DecodeStrict.
func ParseMetrics(data []byte) (Metrics, error) {
	var m Metrics
	if len(data) > MaxMetricsBytes {
		return m, fmt.Errorf("tamiyo: metrics document is %d bytes, limit %d: %w", len(data), MaxMetricsBytes, ErrMetrics)
	}
	var plain bool
	if m, plain = decodeMetricsPlain(data); !plain {
		if err := canon.DecodeStrict(data, &m); err != nil {
			return Metrics{}, fmt.Errorf("tamiyo: metrics: %v: %w", err, ErrMetrics)
		}
	}
	if m.Epoch != nil && *m.Epoch < 0 {
		return Metrics{}, fmt.Errorf("tamiyo: metrics: epoch %d must be >= 0: %w", *m.Epoch, ErrMetrics)
	}
	for i, n := range m.SamplesPerStep {
		if n < 0 {
			return Metrics{}, fmt.Errorf("tamiyo: metrics: samples_per_step[%d] is %d, must be >= 0: %w", i, n, ErrMetrics)
		}
	}
	seen := make(map[[2]int]bool, len(m.Contributions))
	for i, c := range m.Contributions {
		if math.IsNaN(c.DeltaLoss) || math.IsInf(c.DeltaLoss, 0) {
			return Metrics{}, fmt.Errorf("tamiyo: metrics: contributions[%d].delta_loss is not finite: %w", i, ErrMetrics)
		}
		k := [2]int{c.Layer, c.Slot}
		if seen[k] {
			return Metrics{}, fmt.Errorf("tamiyo: metrics: contributions[%d] names seed %d/%d twice: %w", i, c.Layer, c.Slot, ErrMetrics)
		}
		seen[k] = true
	}
	return m, nil
}

// LayerView is what the controller sees of one wrapped layer (its shape
// was given to New).
type LayerView struct {
	// Name is the layer's name.
	Name string
	// Signals holds Nissa's rolling statistics of the layer's six signals,
	// indexed by nissa.Signal.
	Signals [nissa.NumSignals]nissa.Summary
}

// SeedView is what the controller sees of one seed slot.
type SeedView struct {
	// Layer and Slot locate the slot.
	Layer, Slot int
	// State and StepsInState are the lifecycle state and the steps spent
	// in it; EpochsInState counts the end-of-epoch calls since it was
	// entered.
	State         lifecycle.State
	StepsInState  int64
	EpochsInState int
	// ParamCount is the seed's parameter count (0 when dormant).
	ParamCount int64
	// GerminatedStep and GerminatedEpoch say when the current seed
	// germinated (-1 never).
	GerminatedStep  int64
	GerminatedEpoch int
}

// Observation is everything the controller decides from at the end of an
// epoch.
type Observation struct {
	// Epoch is the epoch that ended and Step the optimizer step count.
	Epoch int
	Step  int64
	// Metrics are the epoch's metrics.
	Metrics Metrics
	// Layers holds one view per wrapped layer, in layer order.
	Layers []LayerView
	// Seeds holds every slot, layer-major (layer*slots + slot).
	Seeds []SeedView
	// ParamsUsed counts the parameters of live and fossilized seeds.
	ParamsUsed int64
	// HostParams sums the wrapped layers' own parameters (0: unknown); the
	// learned policy measures a seed's size against it.
	HostParams int64
	// LifecycleSteps is how many optimizer steps a seed takes from
	// germination to full weight (training plus blending); with
	// Config.Epochs it tells when growing is too late to pay. 0: unknown.
	LifecycleSteps int64
}
