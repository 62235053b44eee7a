package nissa_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
)

// The hand-written encoders (Num, Metric, Summary, Snapshot) write the bytes
// encoding/json writes for the same values: the reference here is
// json.Marshal of plain Go types.

func TestNumAndMetricEncodeAsEncodingJSON(t *testing.T) {
	values := []float64{0, math.Copysign(0, -1), 1, -1.5, 0.1, 1.0 / 3, 123456789.125, 1e-6, 9.99e-7, 1e-7,
		-2.5e-9, 1.234e-300, 5e-324, 1e20, 1e21, -1.5e21, 1e100, math.MaxFloat64, -math.MaxFloat64, 2.5e-7}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		values = append(values, (r.Float64()-0.5)*math.Pow(10, float64(r.IntN(80)-40)))
	}
	for _, v := range values {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := nissa.Num(v).MarshalJSON(); string(got) != string(want) {
			t.Fatalf("Num(%v) = %s, encoding/json %s", v, got, want)
		}
		if got, _ := nissa.Measure(v).MarshalJSON(); string(got) != string(want) {
			t.Fatalf("Metric(%v) = %s, encoding/json %s", v, got, want)
		}
	}
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if got, _ := nissa.Num(v).MarshalJSON(); string(got) != "null" {
			t.Fatalf("Num(%v) = %s, want null", v, got)
		}
	}
}

// refSummary and refSnapshot mirror the encoded layout with plain types.
type refSummary struct {
	N         int      `json:"n"`
	Total     int64    `json:"total"`
	Nonfinite int64    `json:"nonfinite"`
	Mean      *float64 `json:"mean"`
	Var       *float64 `json:"var"`
	Slope     *float64 `json:"slope"`
	EWMA      *float64 `json:"ewma"`
	Last      *float64 `json:"last"`
	LastStep  int64    `json:"last_step"`
}

type refLayer struct {
	Layer   int                   `json:"layer"`
	Name    string                `json:"name,omitempty"`
	Signals map[string]refSummary `json:"signals"`
}

type refSnapshot struct {
	Window   int                   `json:"window"`
	EWMA     float64               `json:"ewma"`
	Ingests  int64                 `json:"ingests"`
	LastStep int64                 `json:"last_step"`
	Global   map[string]refSummary `json:"global"`
	Layers   []refLayer            `json:"layers"`
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func refOf(m map[string]nissa.Summary) map[string]refSummary {
	if m == nil {
		return nil
	}
	out := map[string]refSummary{}
	for k, s := range m {
		out[k] = refSummary{N: s.N, Total: s.Total, Nonfinite: s.Nonfinite, Mean: num(s.Mean), Var: num(s.Var),
			Slope: num(s.Slope), EWMA: num(s.EWMA), Last: num(s.Last), LastStep: s.LastStep}
	}
	return out
}

func TestSnapshotEncodesAsEncodingJSON(t *testing.T) {
	s, err := nissa.New(nissa.Config{Layers: 3})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]float32, nissa.Len(3))
	r := rand.New(rand.NewPCG(3, 4))
	for step := int64(1); step <= 30; step++ {
		for i := range buf {
			buf[i] = float32((r.Float64() - 0.3) * math.Pow(10, float64(r.IntN(12)-8)))
			if r.IntN(23) == 0 {
				buf[i] = float32(math.NaN())
			}
		}
		if err := s.Ingest(step, buf); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]nissa.Snapshot{
		"named":   s.Snapshot([]string{"fc1", "blocks.0.<fc2>&\"x\"", "é"}),
		"unnamed": s.Snapshot(nil),
		"fresh":   mustNew(t).Snapshot(nil),
		"empty":   {},
	}
	for name, snap := range cases {
		ref := refSnapshot{Window: snap.Window, EWMA: snap.EWMA, Ingests: snap.Ingests, LastStep: snap.LastStep,
			Global: refOf(snap.Global)}
		if snap.Layers != nil {
			ref.Layers = []refLayer{}
		}
		for _, l := range snap.Layers {
			ref.Layers = append(ref.Layers, refLayer{Layer: l.Layer, Name: l.Name, Signals: refOf(l.Signals)})
		}
		want, err := json.Marshal(ref)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(snap)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("%s:\n got %s\nwant %s", name, got, want)
		}
		// AppendJSON (what the bus takes as it is) appends the same bytes.
		if app := snap.AppendJSON([]byte("prefix")); string(app) != "prefix"+string(want) {
			t.Fatalf("%s: AppendJSON after a prefix:\n got %s\nwant prefix%s", name, app, want)
		}
		var back nissa.Snapshot // and it decodes
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func mustNew(t *testing.T) *nissa.Stats {
	t.Helper()
	s, err := nissa.New(nissa.Config{Layers: 2})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
