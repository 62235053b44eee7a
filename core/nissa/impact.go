package nissa

import (
	"fmt"
	"math"
)

// Impact analysis: every adaptation (germination) that ends is compared
// with what its policy predicted. The measured gain is the seed's last
// measured contribution (validation loss without it minus with it, the
// number the trainer reports at the end of an epoch in HOLDING, the same
// one its outcome record holds); the predicted gain is the policy's, when
// it made one. A comparison without a prediction is recorded as such and
// leaves the running error unchanged.

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
	// PredictedGain is the policy's predicted contribution (nil: no
	// prediction); MeasuredGain the last measured one (nil: never
	// measured, e.g. pruned before HOLDING); Error is measured minus
	// predicted (nil unless both exist).
	PredictedGain *float64 `json:"predicted_gain"`
	MeasuredGain  *float64 `json:"measured_gain"`
	Error         *float64 `json:"error"`
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
	gen       []int
	predicted []float64 // NaN: none
	measured  []float64 // NaN: none
	stats     ImpactStats
}

// NewImpacts returns a tracker for slots seed slots.
func NewImpacts(slots int) *Impacts {
	t := &Impacts{gen: make([]int, slots), predicted: make([]float64, slots), measured: make([]float64, slots)}
	for i := range t.predicted {
		t.predicted[i], t.measured[i] = math.NaN(), math.NaN()
	}
	return t
}

// Germinated starts slot i's adaptation number generation, with no
// prediction and no measurement yet.
func (t *Impacts) Germinated(i, generation int) {
	t.gen[i], t.predicted[i], t.measured[i] = generation, math.NaN(), math.NaN()
}

// Predicted records the policy's predicted gain for slot i's adaptation
// (a non-finite value counts as no prediction).
func (t *Impacts) Predicted(i int, gain float64) {
	if !math.IsInf(gain, 0) {
		t.predicted[i] = gain
	}
}

// Measured records a measured contribution of slot i's seed; the last one
// before it ends is the one compared.
func (t *Impacts) Measured(i int, gain float64) {
	if !math.IsNaN(gain) && !math.IsInf(gain, 0) {
		t.measured[i] = gain
	}
}

// LastMeasured returns the last contribution measured for slot i's
// adaptation (NaN when none was measured since it germinated).
func (t *Impacts) LastMeasured(i int) float64 {
	if i < 0 || i >= len(t.measured) {
		return math.NaN()
	}
	return t.measured[i]
}

// Ended closes slot i's adaptation (of layer/slot) with outcome and
// returns its comparison; ok is false when no adaptation was in flight
// there (generation 0: nothing germinated since the tracker started).
func (t *Impacts) Ended(i, layer, slot int, outcome string, step int64, epoch int) (Impact, bool) {
	if t.gen[i] == 0 {
		return Impact{}, false
	}
	im := Impact{Layer: layer, Slot: slot, Generation: t.gen[i], Outcome: outcome, Step: step, Epoch: epoch}
	p, m := t.predicted[i], t.measured[i]
	t.stats.Ended++
	if !math.IsNaN(p) {
		im.PredictedGain = &p
		t.stats.Predicted++
	}
	if !math.IsNaN(m) {
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
	t.gen[i], t.predicted[i], t.measured[i] = 0, math.NaN(), math.NaN()
	return im, true
}

// Stats returns the running totals.
func (t *Impacts) Stats() ImpactStats { return t.stats }

// ImpactState is the tracker's state as a snapshot holds it.
type ImpactState struct {
	Generation []int       `json:"generation"`
	Predicted  []Num       `json:"predicted"`
	Measured   []Num       `json:"measured"`
	Stats      ImpactStats `json:"stats"`
}

// State returns a copy of the tracker's state.
func (t *Impacts) State() ImpactState {
	st := ImpactState{Generation: append([]int(nil), t.gen...), Predicted: make([]Num, len(t.gen)),
		Measured: make([]Num, len(t.gen)), Stats: t.stats}
	for i := range t.gen {
		st.Predicted[i], st.Measured[i] = Num(t.predicted[i]), Num(t.measured[i])
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
		t.predicted[i], t.measured[i] = float64(st.Predicted[i]), float64(st.Measured[i])
	}
	t.stats = s
	return nil
}
