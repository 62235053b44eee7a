package tamiyo

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// State is the complete saved state of a Controller and its Governor:
// restoring it into a controller with the same configuration continues
// identically (the random policy's generator included).
type State struct {
	// ValHistory holds the finite validation losses remembered, oldest
	// first.
	ValHistory []EpochValue `json:"val_history"`
	// RNG is the random policy's PCG generator state (binary, base64 in
	// JSON).
	RNG []byte `json:"rng"`
	// Governor is the governor's state.
	Governor GovernorState `json:"governor"`
	// Saturated marks, per layer, that growth there stopped paying.
	Saturated []bool `json:"saturated"`
	// Misses counts, per layer, the seeds in a row that fell short there
	// since its last fossilized seed (absent in snapshots written before
	// saturation took several misses: read as none).
	Misses []int `json:"misses,omitempty"`
	// Gain and Trials are, per layer, the summed relative contributions of
	// its measured seeds and their number.
	Gain   []float64 `json:"gain"`
	Trials []int     `json:"trials"`
}

// GovernorState is the saved state of a Governor.
type GovernorState struct {
	// Losses are the rolling window's training losses, oldest first.
	Losses []float64 `json:"losses"`
	// Germinated holds, per layer, the epoch of its last germination (-1:
	// never); LastGerminated is the latest of them.
	Germinated     []int `json:"germinated"`
	LastGerminated int   `json:"last_germinated"`
	// Spikes is kept for snapshots written before every alarm emptied the
	// loss window: written as 0, and only checked (>= 0) when read.
	// Alarms counts alarms raised.
	Spikes int   `json:"spikes"`
	Alarms int64 `json:"alarms"`
}

// State returns a deep copy of the controller's state.
func (c *Controller) State() (State, error) {
	rng, err := c.pcg.MarshalBinary()
	if err != nil {
		return State{}, fmt.Errorf("tamiyo: save rng: %w", err)
	}
	return State{ValHistory: append([]EpochValue{}, c.vals...), RNG: rng, Governor: c.gov.State(),
		Saturated: append([]bool{}, c.saturated...), Misses: append([]int{}, c.misses...), Gain: append([]float64{}, c.gain...),
		Trials: append([]int{}, c.trials...)}, nil
}

// SetState replaces the controller's state with st, checked for
// consistency with the controller's configuration; on error nothing
// changes and the error wraps ErrState.
func (c *Controller) SetState(st State) error {
	if len(st.ValHistory) > MaxValHistory {
		return fmt.Errorf("tamiyo: restore: %d validation losses, at most %d: %w", len(st.ValHistory), MaxValHistory, ErrState)
	}
	for i, v := range st.ValHistory {
		if math.IsNaN(v.Value) || math.IsInf(v.Value, 0) || v.Epoch < 0 || (i > 0 && v.Epoch <= st.ValHistory[i-1].Epoch) {
			return fmt.Errorf("tamiyo: restore: val_history[%d] = %+v is not finite or not in epoch order: %w", i, v, ErrState)
		}
	}
	pcg := rand.NewPCG(0, 0)
	if err := pcg.UnmarshalBinary(st.RNG); err != nil {
		return fmt.Errorf("tamiyo: restore: rng: %v: %w", err, ErrState)
	}
	if err := c.gov.checkState(st.Governor); err != nil {
		return err
	}
	if st.Saturated != nil && len(st.Saturated) != len(c.saturated) {
		return fmt.Errorf("tamiyo: restore: saturation for %d layers, want %d: %w", len(st.Saturated), len(c.saturated), ErrState)
	}
	if st.Misses != nil && len(st.Misses) != len(c.misses) {
		return fmt.Errorf("tamiyo: restore: misses for %d layers, want %d: %w", len(st.Misses), len(c.misses), ErrState)
	}
	for i, m := range st.Misses {
		if m < 0 {
			return fmt.Errorf("tamiyo: restore: layer %d has %d misses: %w", i, m, ErrState)
		}
	}
	if (st.Gain != nil || st.Trials != nil) && (len(st.Gain) != len(c.gain) || len(st.Trials) != len(c.trials)) {
		return fmt.Errorf("tamiyo: restore: gains for %d layers and trials for %d, want %d: %w", len(st.Gain), len(st.Trials), len(c.gain), ErrState)
	}
	for i, g := range st.Gain {
		if math.IsNaN(g) || math.IsInf(g, 0) || st.Trials[i] < 0 {
			return fmt.Errorf("tamiyo: restore: layer %d gain %v over %d trials is not valid: %w", i, g, st.Trials[i], ErrState)
		}
	}
	c.vals = append(c.vals[:0], st.ValHistory...)
	c.pcg = pcg
	c.rng = rand.New(pcg)
	c.gov.setState(st.Governor)
	clear(c.saturated)
	copy(c.saturated, st.Saturated)
	clear(c.misses)
	copy(c.misses, st.Misses)
	clear(c.gain)
	copy(c.gain, st.Gain)
	clear(c.trials)
	copy(c.trials, st.Trials)
	return nil
}

// State returns a deep copy of the governor's state.
func (g *Governor) State() GovernorState {
	st := GovernorState{Losses: make([]float64, g.n), Germinated: append([]int{}, g.germinated...),
		LastGerminated: g.lastGerminated, Alarms: g.alarms}
	start := g.head - g.n
	if start < 0 {
		start += len(g.losses)
	}
	for k := range st.Losses {
		st.Losses[k] = g.losses[(start+k)%len(g.losses)]
	}
	return st
}

func (g *Governor) checkState(st GovernorState) error {
	switch {
	case len(st.Losses) > len(g.losses):
		return fmt.Errorf("tamiyo: restore: %d losses for a window of %d: %w", len(st.Losses), len(g.losses), ErrState)
	case len(st.Germinated) != len(g.germinated):
		return fmt.Errorf("tamiyo: restore: germination epochs for %d layers, want %d: %w", len(st.Germinated), len(g.germinated), ErrState)
	case st.Spikes < 0 || st.Alarms < 0 || st.LastGerminated < -1:
		return fmt.Errorf("tamiyo: restore: negative counters: %w", ErrState)
	}
	for i, v := range st.Losses {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("tamiyo: restore: loss %d is not finite: %w", i, ErrState)
		}
	}
	for i, e := range st.Germinated {
		if e < -1 || e > st.LastGerminated {
			return fmt.Errorf("tamiyo: restore: layer %d germinated at epoch %d, after the last germination %d: %w", i, e, st.LastGerminated, ErrState)
		}
	}
	return nil
}

func (g *Governor) setState(st GovernorState) {
	n := copy(g.losses, st.Losses)
	g.n = n
	g.head = n % len(g.losses)
	copy(g.germinated, st.Germinated)
	g.lastGerminated = st.LastGerminated
	g.alarms = st.Alarms
}
