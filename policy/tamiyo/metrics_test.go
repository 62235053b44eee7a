package tamiyo_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func TestParseMetrics(t *testing.T) {
	m, err := tamiyo.ParseMetrics([]byte(`{"epoch": 3, "train_loss": 0.5, "val_loss": "NaN", "val_metric": null,
		"contributions": [{"layer": 0, "slot": 1, "delta_loss": 0.02}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if *m.Epoch != 3 || m.TrainLoss.Value != 0.5 || !m.ValLoss.Measured || !math.IsNaN(m.ValLoss.Value) ||
		m.ValMetric.Measured || len(m.Contributions) != 1 || m.Contributions[0].DeltaLoss != 0.02 {
		t.Fatalf("%+v", m)
	}
	if m, err := tamiyo.ParseMetrics([]byte(`{}`)); err != nil || m.Epoch != nil || m.TrainLoss.Measured {
		t.Fatalf("empty: %+v %v", m, err)
	}
	bad := []string{
		``, `[]`, `{"epoch": -1}`, `{"epoch": 1.5}`, `{"val_loss": "high"}`, `{"lr": 0.1}`, `{} {}`,
		`{"contributions": [{"layer": 0, "slot": 0, "delta_loss": "NaN"}]}`,
		`{"contributions": [{"layer": 0, "slot": 0, "delta_loss": 1}, {"layer": 0, "slot": 0, "delta_loss": 2}]}`,
	}
	for _, in := range bad {
		t.Run(in, func(t *testing.T) {
			_, err := tamiyo.ParseMetrics([]byte(in))
			if !errors.Is(err, tamiyo.ErrMetrics) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func FuzzParseMetrics(f *testing.F) {
	for _, s := range []string{
		`{"epoch": 3, "train_loss": 0.5, "val_loss": 0.4, "val_metric": 0.9, "contributions": [{"layer": 0, "slot": 1, "delta_loss": 0.02}]}`,
		`{"train_loss": "Infinity"}`, `{"epoch": null}`, `{}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := tamiyo.ParseMetrics(b)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v: %v", errcode.Of(err), err)
			}
			return
		}
		if m.Epoch != nil && *m.Epoch < 0 {
			t.Fatalf("negative epoch accepted")
		}
		for _, c := range m.Contributions {
			if math.IsNaN(c.DeltaLoss) || math.IsInf(c.DeltaLoss, 0) {
				t.Fatalf("non-finite contribution accepted")
			}
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := tamiyo.ParseMetrics(out); err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
	})
}

func TestParseMetricsRefusesDuplicateKeys(t *testing.T) {
	for _, doc := range []string{
		`{"val_loss": 0.5, "val_loss": 0.1}`,
		`{"contributions": [{"layer": 0, "slot": 0, "delta_loss": 0.1, "delta_loss": 0.2}]}`,
	} {
		if _, err := tamiyo.ParseMetrics([]byte(doc)); err == nil || !strings.Contains(err.Error(), "duplicate object key") {
			t.Fatalf("%s: err = %v", doc, err)
		}
	}
	if _, err := tamiyo.ParseMetrics([]byte(`{"val_loss": 0.5}`)); err != nil {
		t.Fatalf("negative control: %v", err)
	}
}
