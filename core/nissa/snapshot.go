package nissa

import (
	"encoding/json"
	"slices"
	"strconv"
)

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
// The bytes are those json.Marshal writes for summaryJSON, appended
// directly (tested against it).
func (m Summary) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 160)
	b = strconv.AppendInt(append(b, `{"n":`...), int64(m.N), 10)
	b = strconv.AppendInt(append(b, `,"total":`...), m.Total, 10)
	b = strconv.AppendInt(append(b, `,"nonfinite":`...), m.Nonfinite, 10)
	b = appendNum64(append(b, `,"mean":`...), m.Mean)
	b = appendNum64(append(b, `,"var":`...), m.Var)
	b = appendNum64(append(b, `,"slope":`...), m.Slope)
	b = appendNum64(append(b, `,"ewma":`...), m.EWMA)
	b = appendNum64(append(b, `,"last":`...), m.Last)
	b = strconv.AppendInt(append(b, `,"last_step":`...), m.LastStep, 10)
	return append(b, '}'), nil
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

// MarshalJSON encodes the snapshot as encoding/json encodes its fields
// (map keys sorted), appending the bytes directly: a run's health event
// carries one at every end of epoch, and reflection over its hundreds of
// numbers cost more than the rest of the run log's work (tested against
// encoding/json).
func (s Snapshot) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 512+len(s.Layers)*1300)
	b = strconv.AppendInt(append(b, `{"window":`...), int64(s.Window), 10)
	b = appendFloat(append(b, `,"ewma":`...), s.EWMA)
	b = strconv.AppendInt(append(b, `,"ingests":`...), s.Ingests, 10)
	b = strconv.AppendInt(append(b, `,"last_step":`...), s.LastStep, 10)
	var err error
	if b, err = appendSummaries(append(b, `,"global":`...), s.Global); err != nil {
		return nil, err
	}
	b = append(b, `,"layers":`...)
	if s.Layers == nil {
		return append(b, "null}"...), nil
	}
	b = append(b, '[')
	for i, l := range s.Layers {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(append(b, `{"layer":`...), int64(l.Layer), 10)
		if l.Name != "" {
			name, err := json.Marshal(l.Name) // encoding/json's string escaping
			if err != nil {
				return nil, err
			}
			b = append(append(b, `,"name":`...), name...)
		}
		if b, err = appendSummaries(append(b, `,"signals":`...), l.Signals); err != nil {
			return nil, err
		}
		b = append(b, '}')
	}
	return append(b, "]}"...), nil
}

// appendSummaries appends m as encoding/json encodes a map (keys sorted,
// nil as null).
func appendSummaries(b []byte, m map[string]Summary) ([]byte, error) {
	if m == nil {
		return append(b, "null"...), nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		key, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		sum, _ := m[k].MarshalJSON()
		b = append(append(append(b, key...), ':'), sum...)
	}
	return append(b, '}'), nil
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
