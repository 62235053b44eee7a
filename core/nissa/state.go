package nissa

import (
	"fmt"
	"math"
)

// State is the complete saved state of a Stats: restoring it gives a Stats
// that computes exactly the same statistics and continues identically.
type State struct {
	// Layers, Window and EWMA are the configuration (defaults filled in).
	Layers int     `json:"layers"`
	Window int     `json:"window"`
	EWMA   float64 `json:"ewma"`
	// Ingests and LastStep are the ingestion counters.
	Ingests  int64 `json:"ingests"`
	LastStep int64 `json:"last_step"`
	// Series holds one entry per buffer index (2 + 6 * Layers).
	Series []SeriesState `json:"series"`
}

// SeriesState is the saved state of one series.
type SeriesState struct {
	// Values and Steps are the window's measurements, oldest first.
	Values []float32 `json:"values"`
	Steps  []int64   `json:"steps"`
	// Total and Nonfinite count finite and infinite measurements ever.
	Total     int64 `json:"total"`
	Nonfinite int64 `json:"nonfinite"`
	// EWMA, Last and LastStep are the moving average and the latest
	// measurement (meaningless while Total is 0).
	EWMA     float64 `json:"ewma"`
	Last     float64 `json:"last"`
	LastStep int64   `json:"last_step"`
}

// State returns a deep copy of the state.
func (s *Stats) State() State {
	st := State{Layers: s.cfg.Layers, Window: s.cfg.Window, EWMA: s.cfg.EWMA,
		Ingests: s.ingests, LastStep: s.step, Series: make([]SeriesState, len(s.series))}
	w := s.cfg.Window
	for i := range s.series {
		p := &s.series[i]
		n := int(p.n)
		ss := SeriesState{Values: make([]float32, n), Steps: make([]int64, n), Total: p.total,
			Nonfinite: p.nonfinite, EWMA: p.ewma, Last: p.last, LastStep: p.lastStep}
		start := int(p.head) - n
		if start < 0 {
			start += w
		}
		for k := 0; k < n; k++ {
			j := start + k
			if j >= w {
				j -= w
			}
			ss.Values[k] = s.vals[i*w+j]
			ss.Steps[k] = s.steps[i*w+j]
		}
		st.Series[i] = ss
	}
	return st
}

// FromState rebuilds a Stats from a saved State, checking it for
// consistency; errors wrap ErrState (or ErrConfig for its configuration).
func FromState(st State) (*Stats, error) {
	s, err := New(Config{Layers: st.Layers, Window: st.Window, EWMA: st.EWMA})
	if err != nil {
		return nil, err
	}
	if s.cfg != (Config{Layers: st.Layers, Window: st.Window, EWMA: st.EWMA}) {
		return nil, fmt.Errorf("nissa: restore: configuration %+v is incomplete: %w", st, ErrState)
	}
	if len(st.Series) != len(s.series) {
		return nil, fmt.Errorf("nissa: restore: %d series for %d layers, want %d: %w",
			len(st.Series), st.Layers, len(s.series), ErrState)
	}
	if st.Ingests < 0 || st.LastStep < 0 {
		return nil, fmt.Errorf("nissa: restore: negative counters: %w", ErrState)
	}
	w := s.cfg.Window
	for i, ss := range st.Series {
		n := len(ss.Values)
		switch {
		case n != len(ss.Steps):
			return nil, fmt.Errorf("nissa: restore: series %d has %d values and %d steps: %w", i, n, len(ss.Steps), ErrState)
		case n > w:
			return nil, fmt.Errorf("nissa: restore: series %d has %d values, window is %d: %w", i, n, w, ErrState)
		case int64(n) != min(ss.Total, int64(w)) || ss.Nonfinite < 0:
			return nil, fmt.Errorf("nissa: restore: series %d counts %d measurements for %d values in a window of %d: %w",
				i, ss.Total, n, w, ErrState)
		case !finite(ss.EWMA) || !finite(ss.Last):
			return nil, fmt.Errorf("nissa: restore: series %d has a non-finite average: %w", i, ErrState)
		case ss.LastStep < 0 || ss.LastStep > st.LastStep:
			return nil, fmt.Errorf("nissa: restore: series %d last step %d is outside [0, %d]: %w", i, ss.LastStep, st.LastStep, ErrState)
		}
		for k := 0; k < n; k++ {
			if v := float64(ss.Values[k]); !finite(v) {
				return nil, fmt.Errorf("nissa: restore: series %d value %d is not finite: %w", i, k, ErrState)
			}
			if ss.Steps[k] < 0 || ss.Steps[k] > ss.LastStep || (k > 0 && ss.Steps[k] < ss.Steps[k-1]) {
				return nil, fmt.Errorf("nissa: restore: series %d steps are not ordered: %w", i, ErrState)
			}
			s.vals[i*w+k] = ss.Values[k]
			s.steps[i*w+k] = ss.Steps[k]
		}
		s.series[i] = series{head: int32(n % w), n: int32(n), total: ss.Total, nonfinite: ss.Nonfinite,
			ewma: ss.EWMA, last: ss.Last, lastStep: ss.LastStep}
	}
	s.ingests, s.step = st.Ingests, st.LastStep
	return s, nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
