package tamiyo

import (
	"reflect"
	"testing"

	"github.com/esper-morph/esper/blueprint/canon"
)

// metricsDocs are documents on both sides of decodeMetricsPlain's subset.
var metricsDocs = []struct {
	doc   string
	plain bool // decodeMetricsPlain must read it
}{
	{`{"epoch": 2, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}`, true},
	{`{"epoch":0,"train_loss":null,"val_loss":-1.5e-3,"val_metric":12,"contributions":[{"layer":1,"slot":0,"delta_loss":0.25},{"slot":1,"layer":3,"delta_loss":-2E+2}],"samples_per_step":[64,0,-1]}`, true},
	{" \n{ \"val_loss\" : 0.1 ,\t\"samples_per_step\" : null , \"contributions\" : null, \"epoch\": null }\r\n", true},
	{`{}`, true},
	{`{"contributions":[{}],"samples_per_step":[]}`, true},
	{`{"epoch": -0, "train_loss": -0.0, "val_loss": 0e0, "val_metric": 1e308}`, true},
	{`{"epoch": 9223372036854775807}`, true},
	// Outside the subset: each goes to canon.DecodeStrict.
	{`{"val_loss": "NaN"}`, false},
	{`{"val_loss": "Infinity", "train_loss": 1}`, false},
	{`{"Epoch": 2}`, false},
	{`{"epoch": 2, "epoch": 3}`, false},
	{`{"epoch": 2.0}`, false},
	{`{"epoch": 1e2}`, false},
	{`{"epoch": 9223372036854775808}`, false},
	{`{"epoch": "2"}`, false},
	{`{"val_loss": 1e400}`, false},
	{`{"val_loss": 01}`, false},
	{`{"val_loss": .5}`, false},
	{`{"val_loss": 1.}`, false},
	{`{"val_loss": +1}`, false},
	{`{"val_loss": -}`, false},
	{`{"val_loss": 1} x`, false},
	{`{"val_loss": 1}{}`, false},
	{`{"unknown": 1}`, false},
	{`{"contributions":[{"layer":1,"layer":2}]}`, false},
	{`{"contributions":[{"layer":1,"extra":2}]}`, false},
	{`{"contributions":[{"layer":1.5}]}`, false},
	{`{"contributions":{"layer":1}}`, false},
	{`{"samples_per_step":[1,]}`, false},
	{`{"samples_per_step":[1 2]}`, false},
	{`{"samples_per_step":[1.5]}`, false},
	{`{"val_loss": 1,}`, false},
	{`{"val\u006coss": 1}`, false},
	{`{"val_loss": true}`, false},
	{`{"val_loss": nul}`, false},
	{`[]`, false},
	{``, false},
	{`{"val_loss": 1`, false},
}

// TestDecodeMetricsPlain holds the plain decoder to canon.DecodeStrict: what
// it reads, DecodeStrict reads to the same Metrics; what it leaves, it
// leaves whole (the table says which documents each side of its subset
// holds, so a decoder that gave up on everything would fail).
func TestDecodeMetricsPlain(t *testing.T) {
	for _, tc := range metricsDocs {
		t.Run(tc.doc, func(t *testing.T) {
			got, plain := decodeMetricsPlain([]byte(tc.doc))
			if plain != tc.plain {
				t.Fatalf("plain = %v, want %v", plain, tc.plain)
			}
			if !plain {
				if got.Epoch != nil || got.Contributions != nil || got.SamplesPerStep != nil || got.ValLoss.Measured {
					t.Fatalf("a refused document left values: %+v", got)
				}
				return
			}
			var want Metrics
			if err := canon.DecodeStrict([]byte(tc.doc), &want); err != nil {
				t.Fatalf("DecodeStrict refused what the plain decoder read: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("plain %+v\nDecodeStrict %+v", got, want)
			}
		})
	}
}

// FuzzDecodeMetricsPlain checks on any input that a document the plain
// decoder reads is one canon.DecodeStrict reads to the same Metrics.
func FuzzDecodeMetricsPlain(f *testing.F) {
	for _, tc := range metricsDocs {
		f.Add([]byte(tc.doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, plain := decodeMetricsPlain(data)
		if !plain {
			return
		}
		var want Metrics
		if err := canon.DecodeStrict(data, &want); err != nil {
			t.Fatalf("DecodeStrict refused %q, which the plain decoder read: %v", data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: plain %+v, DecodeStrict %+v", data, got, want)
		}
	})
}
