package nissa_test

import (
	"encoding/json"
	"errors"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
)

func TestMetricJSON(t *testing.T) {
	cases := []struct {
		in       string
		measured bool
		value    float64
		out      string
	}{
		{`null`, false, 0, `null`},
		{`1.25`, true, 1.25, `1.25`},
		{`-3e-7`, true, -3e-7, `-3e-7`},
		{`"NaN"`, true, math.NaN(), `"NaN"`},
		{`"nan"`, true, math.NaN(), `"NaN"`},
		{`"Infinity"`, true, math.Inf(1), `"Infinity"`},
		{`"inf"`, true, math.Inf(1), `"Infinity"`},
		{`"+inf"`, true, math.Inf(1), `"Infinity"`},
		{`"-Infinity"`, true, math.Inf(-1), `"-Infinity"`},
		{`"-inf"`, true, math.Inf(-1), `"-Infinity"`},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			var m nissa.Metric
			if err := json.Unmarshal([]byte(tc.in), &m); err != nil {
				t.Fatal(err)
			}
			if m.Measured != tc.measured || !(m.Value == tc.value || (math.IsNaN(m.Value) && math.IsNaN(tc.value))) {
				t.Fatalf("got %+v", m)
			}
			b, err := json.Marshal(m)
			if err != nil || string(b) != tc.out {
				t.Fatalf("marshal %s, %v", b, err)
			}
			if m.Finite() != (tc.measured && !math.IsNaN(tc.value) && !math.IsInf(tc.value, 0)) {
				t.Fatalf("Finite() = %v", m.Finite())
			}
		})
	}
	for _, bad := range []string{`"one"`, `true`, `[1]`, `{}`, `"1.5"`} {
		t.Run("bad "+bad, func(t *testing.T) {
			var m nissa.Metric
			if err := json.Unmarshal([]byte(bad), &m); !errors.Is(err, nissa.ErrMetric) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	var absent struct {
		V nissa.Metric `json:"v"`
	}
	if err := json.Unmarshal([]byte(`{}`), &absent); err != nil || absent.V.Measured {
		t.Fatalf("absent field %+v %v", absent, err)
	}
}

func TestNumJSON(t *testing.T) {
	b, err := json.Marshal([]nissa.Num{1.5, nissa.Num(math.NaN()), nissa.Num(math.Inf(1))})
	if err != nil || string(b) != `[1.5,null,null]` {
		t.Fatalf("%s %v", b, err)
	}
	var back []nissa.Num
	if err := json.Unmarshal(b, &back); err != nil || back[0] != 1.5 || !math.IsNaN(float64(back[1])) {
		t.Fatalf("%v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`["x"]`), &back); !errors.Is(err, nissa.ErrMetric) {
		t.Fatalf("bad number: %v", err)
	}
}

func FuzzMetricJSON(f *testing.F) {
	for _, s := range []string{`null`, `1`, `"NaN"`, `"-inf"`, `"x"`, `1e400`, `-0`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m nissa.Metric
		if err := m.UnmarshalJSON(b); err != nil {
			return
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %+v: %v", m, err)
		}
		var back nissa.Metric
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if back.Measured != m.Measured || (m.Measured && !(back.Value == m.Value || (math.IsNaN(back.Value) && math.IsNaN(m.Value)))) {
			t.Fatalf("round trip %+v -> %s -> %+v", m, out, back)
		}
	})
}
