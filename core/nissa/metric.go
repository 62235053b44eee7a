package nissa

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Num is a float64 that encodes NaN and infinities as JSON null (JSON
// numbers cannot carry them) and decodes null as NaN.
type Num float64

// MarshalJSON encodes a finite value as a number and anything else as null.
func (n Num) MarshalJSON() ([]byte, error) {
	return appendNum64(nil, float64(n)), nil
}

// appendNum64 appends v as Num encodes it: a finite value as encoding/json
// writes a float64, anything else as null.
func appendNum64(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	return AppendJSONFloat(b, v)
}

// AppendJSONFloat appends a finite v exactly as encoding/json writes a float64
// (its floatEncoder: 'e' notation below 1e-6 and from 1e21, "e-07" written
// "e-7"), without json.Marshal's reflection: the health event of every end
// of epoch encodes hundreds of these.
func AppendJSONFloat(b []byte, v float64) []byte {
	format := byte('f')
	if abs := math.Abs(v); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, v, format, -1, 64)
	if format == 'e' {
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// UnmarshalJSON decodes a number, or null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*n = Num(math.NaN())
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("nissa: number: %v: %w", err, ErrMetric)
	}
	*n = Num(v)
	return nil
}

// Metric is a scalar measurement as it crosses JSON. Null (or an absent
// field) means "not measured". A number is a measurement. Because JSON
// numbers cannot be NaN or infinite, a non-finite measurement (a loss that
// blew up) is written as one of the strings "NaN", "Infinity", "-Infinity"
// (case-insensitive; "nan", "inf", "+inf", "-inf" also accepted), which is
// what Python's float repr and JavaScript produce.
type Metric struct {
	// Value is the measurement (meaningless when Measured is false).
	Value float64
	// Measured is false when the metric was not reported.
	Measured bool
}

// Measure returns a measured Metric.
func Measure(v float64) Metric { return Metric{Value: v, Measured: true} }

// Finite reports whether the metric was measured and is finite.
func (m Metric) Finite() bool { return m.Measured && finite(m.Value) }

// MarshalJSON encodes the metric: null, a number, or a non-finite string.
func (m Metric) MarshalJSON() ([]byte, error) {
	return m.AppendJSON(nil), nil
}

// AppendJSON appends the bytes MarshalJSON returns to b.
func (m Metric) AppendJSON(b []byte) []byte {
	switch {
	case !m.Measured:
		return append(b, "null"...)
	case math.IsNaN(m.Value):
		return append(b, `"NaN"`...)
	case math.IsInf(m.Value, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(m.Value, -1):
		return append(b, `"-Infinity"`...)
	}
	return AppendJSONFloat(b, m.Value)
}

// AppendNum appends v as Num encodes it: a finite value as encoding/json
// writes a float64, anything else as null.
func AppendNum(b []byte, v float64) []byte { return appendNum64(b, v) }

// UnmarshalJSON decodes what MarshalJSON writes; anything else wraps
// ErrMetric.
func (m *Metric) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*m = Metric{}
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("nissa: metric %s: %v: %w", b, err, ErrMetric)
		}
		switch {
		case strings.EqualFold(s, "nan"):
			*m = Measure(math.NaN())
		case strings.EqualFold(s, "infinity"), strings.EqualFold(s, "inf"), strings.EqualFold(s, "+inf"), strings.EqualFold(s, "+infinity"):
			*m = Measure(math.Inf(1))
		case strings.EqualFold(s, "-infinity"), strings.EqualFold(s, "-inf"):
			*m = Measure(math.Inf(-1))
		default:
			return fmt.Errorf("nissa: metric %q is not a number, null, \"NaN\", \"Infinity\" or \"-Infinity\": %w", s, ErrMetric)
		}
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("nissa: metric %s: %v: %w", b, err, ErrMetric)
	}
	*m = Measure(v)
	return nil
}
