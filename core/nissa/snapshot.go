package nissa

import "encoding/json"

// summaryJSON is how a Summary is encoded: NaN values become null.
type summaryJSON struct {
	N         int   `json:"n"`
	Total     int64 `json:"total"`
	Nonfinite int64 `json:"nonfinite"`
	Mean      Num   `json:"mean"`
	Var       Num   `json:"var"`
	Slope     Num   `json:"slope"`
	EWMA      Num   `json:"ewma"`
	Last      Num   `json:"last"`
	LastStep  int64 `json:"last_step"`
}

// MarshalJSON encodes the summary as {"n", "total", "nonfinite", "mean",
// "var", "slope", "ewma", "last", "last_step"}, with null for values that
// are not available.
func (m Summary) MarshalJSON() ([]byte, error) {
	return json.Marshal(summaryJSON{N: m.N, Total: m.Total, Nonfinite: m.Nonfinite,
		Mean: Num(m.Mean), Var: Num(m.Var), Slope: Num(m.Slope), EWMA: Num(m.EWMA),
		Last: Num(m.Last), LastStep: m.LastStep})
}

// UnmarshalJSON decodes what MarshalJSON writes (null becomes NaN).
func (m *Summary) UnmarshalJSON(b []byte) error {
	var j summaryJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*m = Summary{N: j.N, Total: j.Total, Nonfinite: j.Nonfinite, Mean: float64(j.Mean),
		Var: float64(j.Var), Slope: float64(j.Slope), EWMA: float64(j.EWMA), Last: float64(j.Last),
		LastStep: j.LastStep}
	return nil
}

// Snapshot is the users' view of the statistics, made to be encoded as
// JSON.
type Snapshot struct {
	// Window and EWMA are the configuration in use.
	Window int     `json:"window"`
	EWMA   float64 `json:"ewma"`
	// Ingests counts buffers ingested; LastStep is the step of the last.
	Ingests  int64 `json:"ingests"`
	LastStep int64 `json:"last_step"`
	// Global maps each global signal's name to its statistics.
	Global map[string]Summary `json:"global"`
	// Layers holds each layer's statistics, in layer order.
	Layers []LayerSnapshot `json:"layers"`
}

// LayerSnapshot is the statistics of one layer.
type LayerSnapshot struct {
	// Layer is the layer's index and Name its name ("" when not given).
	Layer int    `json:"layer"`
	Name  string `json:"name,omitempty"`
	// Signals maps each signal's name to its statistics.
	Signals map[string]Summary `json:"signals"`
}

// Snapshot returns the statistics of every series. names, when it has one
// entry per layer, labels the layers.
func (s *Stats) Snapshot(names []string) Snapshot {
	snap := Snapshot{
		Window:   s.cfg.Window,
		EWMA:     s.cfg.EWMA,
		Ingests:  s.ingests,
		LastStep: s.step,
		Global:   make(map[string]Summary, NumGlobals),
		Layers:   make([]LayerSnapshot, s.cfg.Layers),
	}
	for g := Global(0); g < NumGlobals; g++ {
		snap.Global[g.String()], _ = s.Global(g)
	}
	for l := range snap.Layers {
		ls := LayerSnapshot{Layer: l, Signals: make(map[string]Summary, NumSignals)}
		if len(names) == s.cfg.Layers {
			ls.Name = names[l]
		}
		for sig := Signal(0); sig < NumSignals; sig++ {
			ls.Signals[sig.String()], _ = s.Layer(l, sig)
		}
		snap.Layers[l] = ls
	}
	return snap
}
