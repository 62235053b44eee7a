package nissa

import (
	"fmt"
	"math"
)

// Impact analysis: every adaptation (germination) that ends is compared
// with what its policy predicted, in one unit, ImpactUnit: the relative
// gain, the share of the validation loss without the seed that the seed
// removed (delta_loss / (val_loss + delta_loss), the unit of Karn's
// trials and predictor and of the value model's target). The measured
// gain is the seed's last measured contribution (validation loss without
// it minus with it, the number the trainer reports at the end of an epoch
// in HOLDING, the same one its outcome record holds) over the validation
// loss without it at that epoch; the predicted gain is the policy's, when
// it made one: given as a gain (Karn's predictor), or as a gain per unit
// of compute (the value model) that the owner turns into a gain with the
// seed's compute when it ends. A comparison without a prediction is
// recorded as such and leaves the running error unchanged. The caller
// converts; this package only keeps and compares the numbers.

// ImpactUnit names the unit of an Impact's gains and error.
const ImpactUnit = "relative_gain"

// Impact is one ended adaptation's prediction against its measurement.
type Impact struct {
	Layer      int `json:"layer"`
	Slot       int `json:"slot"`
	Generation int `json:"generation"`
	// Outcome is the state it ended in (FOSSILIZED, PRUNED, CANCELLED,
	// ROLLED_BACK); Step and Epoch say when.
	Outcome string `json:"outcome"`
	Step    int64  `json:"step"`
	Epoch   int    `json:"epoch"`
	// Unit is ImpactUnit: the unit of PredictedGain, MeasuredGain and
	// Error.
	Unit string `json:"unit"`
	// PredictedGain is the policy's predicted relative gain (nil: no
	// prediction); MeasuredGain the last measured one (nil: never
	// measured, e.g. pruned before HOLDING, or no finite validation loss
	// then); Error is measured minus predicted (nil unless both exist).
	PredictedGain *float64 `json:"predicted_gain"`
	MeasuredGain  *float64 `json:"measured_gain"`
	Error         *float64 `json:"error"`
	// Predictor names what made the prediction ("" when none; the session
	// writes "karn" or "value").
	Predictor string `json:"predictor"`
	// PredictedValue and Compute are set for a prediction per unit of
	// compute (the value model's): PredictedGain = PredictedValue x
	// Compute, the compute the seed cost by its end (host-epochs, floored
	// as the value model's target floors it).
	PredictedValue *float64 `json:"predicted_value,omitempty"`
	Compute        *float64 `json:"compute,omitempty"`
	// MeasuredDeltaLoss is the last measured contribution in loss units
	// (validation loss without the seed minus with it; nil: never
	// measured).
	MeasuredDeltaLoss *float64 `json:"measured_delta_loss"`
	// Note says why there is no error: "no prediction", "not measured",
	// or "" when there is one.
	Note string `json:"note"`
}

// ImpactStats are the running totals of the comparisons.
type ImpactStats struct {
	// Ended counts ended adaptations; Predicted those with a prediction,
	// Measured those with a measurement, Compared those with both.
	Ended     int64 `json:"ended"`
	Predicted int64 `json:"predicted"`
	Measured  int64 `json:"measured"`
	Compared  int64 `json:"compared"`
	// AbsErrorSum and SqErrorSum sum |error| and error^2 over Compared.
	AbsErrorSum float64 `json:"abs_error_sum"`
	SqErrorSum  float64 `json:"sq_error_sum"`
}

// MeanAbsError returns the mean absolute error over the comparisons, and
// false when there was none (no policy made a prediction).
func (s ImpactStats) MeanAbsError() (float64, bool) {
	if s.Compared == 0 {
		return 0, false
	}
	return s.AbsErrorSum / float64(s.Compared), true
}

// Impacts tracks every slot's adaptation in flight. Like Stats it is a
// single-threaded core guarded by its owner.
type Impacts struct {
	gen        []int
	predicted  []float64 // relative gain; NaN: none
	perCompute []float64 // gain per unit of compute; NaN: none
	source     []string  // what predicted
	measured   []float64 // delta loss; NaN: none
	gain       []float64 // relative gain of that measurement; NaN: none
	stats      ImpactStats
}

// NewImpacts returns a tracker for slots seed slots.
func NewImpacts(slots int) *Impacts {
	t := &Impacts{gen: make([]int, slots), predicted: make([]float64, slots), perCompute: make([]float64, slots),
		source: make([]string, slots), measured: make([]float64, slots), gain: make([]float64, slots)}
	for i := range t.gen {
		t.clear(i)
	}
	return t
}

func (t *Impacts) clear(i int) {
	t.predicted[i], t.perCompute[i], t.source[i], t.measured[i], t.gain[i] = math.NaN(), math.NaN(), "", math.NaN(), math.NaN()
}

// Germinated starts slot i's adaptation number generation, with no
// prediction and no measurement yet.
func (t *Impacts) Germinated(i, generation int) {
	t.clear(i)
	t.gen[i] = generation
}

// Predicted records source's predicted relative gain for slot i's
// adaptation (a non-finite value counts as no prediction).
func (t *Impacts) Predicted(i int, gain float64, source string) {
	if finite(gain) {
		t.predicted[i], t.perCompute[i], t.source[i] = gain, math.NaN(), source
	}
}

// PredictedPerCompute records source's predicted relative gain per unit
// of compute for slot i's adaptation; Ended multiplies it by the compute
// the seed cost (a non-finite value counts as no prediction).
func (t *Impacts) PredictedPerCompute(i int, value float64, source string) {
	if finite(value) {
		t.perCompute[i], t.predicted[i], t.source[i] = value, math.NaN(), source
	}
}

// Measured records a measured contribution of slot i's seed: deltaLoss in
// loss units and gain, the same measurement as a relative gain (NaN when
// it has none). The last one before it ends is the one compared; a
// non-finite deltaLoss is no measurement.
func (t *Impacts) Measured(i int, deltaLoss, gain float64) {
	if finite(deltaLoss) {
		t.measured[i], t.gain[i] = deltaLoss, math.NaN()
		if finite(gain) {
			t.gain[i] = gain
		}
	}
}

// LastMeasured returns the last contribution measured for slot i's
// adaptation in loss units (NaN when none was measured since it
// germinated).
func (t *Impacts) LastMeasured(i int) float64 {
	if i < 0 || i >= len(t.measured) {
		return math.NaN()
	}
	return t.measured[i]
}

// Ended closes slot i's adaptation (of layer/slot) with outcome and
// returns its comparison; compute is what the seed cost, the factor of a
// prediction per unit of compute (unused otherwise; a non-finite or
// negative one leaves such a prediction out). ok is false when no
// adaptation was in flight there (generation 0: nothing germinated since
// the tracker started).
func (t *Impacts) Ended(i, layer, slot int, outcome string, step int64, epoch int, compute float64) (Impact, bool) {
	if t.gen[i] == 0 {
		return Impact{}, false
	}
	im := Impact{Layer: layer, Slot: slot, Generation: t.gen[i], Outcome: outcome, Step: step, Epoch: epoch, Unit: ImpactUnit}
	p, m := t.predicted[i], t.gain[i]
	if v := t.perCompute[i]; finite(v) && finite(compute) && compute >= 0 {
		c := compute
		im.PredictedValue, im.Compute = &v, &c
		p = v * c
	}
	t.stats.Ended++
	if finite(p) {
		im.PredictedGain, im.Predictor = &p, t.source[i]
		t.stats.Predicted++
	}
	if d := t.measured[i]; finite(d) {
		im.MeasuredDeltaLoss = &d
	}
	if finite(m) {
		im.MeasuredGain = &m
		t.stats.Measured++
	}
	switch {
	case im.PredictedGain == nil:
		im.Note = "no prediction"
	case im.MeasuredGain == nil:
		im.Note = "not measured"
	default:
		e := m - p
		im.Error = &e
		t.stats.Compared++
		t.stats.AbsErrorSum += math.Abs(e)
		t.stats.SqErrorSum += e * e
	}
	t.gen[i] = 0
	t.clear(i)
	return im, true
}

// Stats returns the running totals.
func (t *Impacts) Stats() ImpactStats { return t.stats }

// ImpactState is the tracker's state as a snapshot holds it. Snapshots
// written before predictions reached the tracker lack PerCompute, Source
// and Gain: they restore as none (a measurement then in flight compares
// as "not measured", having no relative gain).
type ImpactState struct {
	Generation []int `json:"generation"`
	// Predicted are relative gains, PerCompute gains per unit of compute,
	// Source what predicted them.
	Predicted  []Num    `json:"predicted"`
	PerCompute []Num    `json:"predicted_per_compute,omitempty"`
	Source     []string `json:"source,omitempty"`
	// Measured are the last contributions in loss units, Gain the same
	// measurements as relative gains.
	Measured []Num       `json:"measured"`
	Gain     []Num       `json:"measured_gain,omitempty"`
	Stats    ImpactStats `json:"stats"`
}

// State returns a copy of the tracker's state.
func (t *Impacts) State() ImpactState {
	n := len(t.gen)
	st := ImpactState{Generation: append([]int(nil), t.gen...), Predicted: make([]Num, n), PerCompute: make([]Num, n),
		Source: append([]string(nil), t.source...), Measured: make([]Num, n), Gain: make([]Num, n), Stats: t.stats}
	for i := range t.gen {
		st.Predicted[i], st.PerCompute[i] = Num(t.predicted[i]), Num(t.perCompute[i])
		st.Measured[i], st.Gain[i] = Num(t.measured[i]), Num(t.gain[i])
	}
	return st
}

// Restore replaces the tracker's state with st, which must be for the same
// number of slots (else ErrState, and nothing changes).
func (t *Impacts) Restore(st ImpactState) error {
	n := len(t.gen)
	if len(st.Generation) != n || len(st.Predicted) != n || len(st.Measured) != n {
		return fmt.Errorf("nissa: impacts: state for %d/%d/%d slots, want %d: %w",
			len(st.Generation), len(st.Predicted), len(st.Measured), n, ErrState)
	}
	for name, l := range map[string]int{"predicted_per_compute": len(st.PerCompute), "source": len(st.Source), "measured_gain": len(st.Gain)} {
		if l != 0 && l != n {
			return fmt.Errorf("nissa: impacts: %s for %d slots, want %d: %w", name, l, n, ErrState)
		}
	}
	s := st.Stats
	if s.Ended < 0 || s.Predicted < 0 || s.Measured < 0 || s.Compared < 0 || s.Predicted > s.Ended || s.Compared > s.Predicted ||
		!(s.AbsErrorSum >= 0) || !(s.SqErrorSum >= 0) {
		return fmt.Errorf("nissa: impacts: inconsistent totals %+v: %w", s, ErrState)
	}
	for i := range n {
		if st.Generation[i] < 0 {
			return fmt.Errorf("nissa: impacts: generation[%d] is negative: %w", i, ErrState)
		}
	}
	copy(t.gen, st.Generation)
	for i := range n {
		t.clear(i)
		t.predicted[i], t.measured[i] = float64(st.Predicted[i]), float64(st.Measured[i])
		if len(st.PerCompute) == n {
			t.perCompute[i] = float64(st.PerCompute[i])
		}
		if len(st.Source) == n {
			t.source[i] = st.Source[i]
		}
		if len(st.Gain) == n {
			t.gain[i] = float64(st.Gain[i])
		}
	}
	t.stats = s
	return nil
}
