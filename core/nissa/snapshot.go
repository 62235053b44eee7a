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
	return m.appendJSON(make([]byte, 0, 160)), nil
}

// appendJSON appends the bytes MarshalJSON returns to b.
func (m Summary) appendJSON(b []byte) []byte {
	b = strconv.AppendInt(append(b, `{"n":`...), int64(m.N), 10)
	b = strconv.AppendInt(append(b, `,"total":`...), m.Total, 10)
	b = strconv.AppendInt(append(b, `,"nonfinite":`...), m.Nonfinite, 10)
	b = appendNum64(append(b, `,"mean":`...), m.Mean)
	b = appendNum64(append(b, `,"var":`...), m.Var)
	b = appendNum64(append(b, `,"slope":`...), m.Slope)
	b = appendNum64(append(b, `,"ewma":`...), m.EWMA)
	b = appendNum64(append(b, `,"last":`...), m.Last)
	b = strconv.AppendInt(append(b, `,"last_step":`...), m.LastStep, 10)
	return append(b, '}')
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
// (map keys sorted), appending the bytes directly (AppendJSON).
func (s Snapshot) MarshalJSON() ([]byte, error) {
	return s.AppendJSON(nil), nil
}

// AppendJSON appends the bytes MarshalJSON returns to b: a run's health
// event carries a snapshot at every end of epoch, and reflection over its
// hundreds of numbers cost more than the rest of the run log's work. The
// bus takes them as they are (oona.Appender); tests hold them to
// encoding/json's output.
func (s Snapshot) AppendJSON(b []byte) []byte {
	b = slices.Grow(b, 512+len(s.Layers)*1300) // one allocation for the whole document
	b = strconv.AppendInt(append(b, `{"window":`...), int64(s.Window), 10)
	b = AppendJSONFloat(append(b, `,"ewma":`...), s.EWMA)
	b = strconv.AppendInt(append(b, `,"ingests":`...), s.Ingests, 10)
	b = strconv.AppendInt(append(b, `,"last_step":`...), s.LastStep, 10)
	b = appendSummaries(append(b, `,"global":`...), s.Global)
	b = append(b, `,"layers":`...)
	if s.Layers == nil {
		return append(b, "null}"...)
	}
	b = append(b, '[')
	for i, l := range s.Layers {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(append(b, `{"layer":`...), int64(l.Layer), 10)
		if l.Name != "" {
			b = AppendJSONString(append(b, `,"name":`...), l.Name)
		}
		b = appendSummaries(append(b, `,"signals":`...), l.Signals)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendSummaries appends m as encoding/json encodes a map (keys sorted,
// nil as null).
func appendSummaries(b []byte, m map[string]Summary) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	var buf [16]string
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = m[k].appendJSON(append(AppendJSONString(b, k), ':'))
	}
	return append(b, '}')
}

// AppendJSONString appends s as encoding/json encodes a string: quoted as it
// is when it holds only printable ASCII that needs no escape (signal and
// layer names, in practice), else by encoding/json itself.
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	return append(append(append(b, '"'), s...), '"')
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
