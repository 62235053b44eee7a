package karn

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/esper-morph/esper/core/urza"
)

// TestPredictorFolderRoundTrip: a fitted predictor written and loaded back
// predicts what it did (float32 weights: within 1e-5 relative), and the
// service that uses it never refits.
func TestPredictorFolderRoundTrip(t *testing.T) {
	trials := linearTrials(t, 60, 6, 0.001, 3)
	p, err := Fit(trials)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WritePredictor(dir, p, map[string]any{"by": "test"}); err != nil {
		t.Fatal(err)
	}
	q, err := LoadPredictor(dir)
	if err != nil {
		t.Fatal(err)
	}
	if q.Records != p.Records || q.Runs != p.Runs || !q.Covers("linear") {
		t.Fatalf("loaded %d records %d runs, covers linear %v", q.Records, q.Runs, q.Covers("linear"))
	}
	for i := range trials {
		s := TrialSample(&trials[i])
		a, b := p.Predict(&s), q.Predict(&s)
		if math.Abs(a-b) > 1e-5*math.Max(1, math.Abs(a)) {
			t.Fatalf("trial %d: fitted %v, loaded %v", i, a, b)
		}
	}
	svc := NewService(nil)
	svc.UsePredictor(q, "published predictor v1")
	if err := svc.Refresh(); err != nil || svc.Predictor() != q || svc.note() != "published predictor v1" || svc.Stats().Fits != 0 {
		t.Fatalf("service: %v, fits %d, note %q", err, svc.Stats().Fits, svc.note())
	}
}

// TestPredictorFolderRefused: folders that must not load.
func TestPredictorFolderRefused(t *testing.T) {
	p, err := Fit(linearTrials(t, 40, 4, 0, 4))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(t *testing.T, dir string, f func(m map[string]any)) {
		var m map[string]any
		b, _ := os.ReadFile(filepath.Join(dir, PredictorManifestFile))
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ = json.Marshal(m)
		if err := os.WriteFile(filepath.Join(dir, PredictorManifestFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		mod  func(t *testing.T, dir string)
	}{
		{"another kind", func(t *testing.T, dir string) { edit(t, dir, func(m map[string]any) { m["kind"] = "esper.value" }) }},
		{"unknown feature", func(t *testing.T, dir string) {
			edit(t, dir, func(m map[string]any) { m["features"].([]any)[0] = "no_such_feature" })
		}},
		{"gain range reversed", func(t *testing.T, dir string) { edit(t, dir, func(m map[string]any) { m["gain_lo"] = 5.0 }) }},
		{"fewer weights than features", func(t *testing.T, dir string) {
			edit(t, dir, func(m map[string]any) { m["features"] = append(m["features"].([]any), "log_in") })
		}},
		{"no weights", func(t *testing.T, dir string) { _ = os.Remove(filepath.Join(dir, PredictorWeightsFile)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WritePredictor(dir, p, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadPredictor(dir); err != nil {
				t.Fatalf("control: %v", err)
			}
			tc.mod(t, dir)
			if _, err := LoadPredictor(dir); !errors.Is(err, ErrPredictorFolder) {
				t.Fatalf("err = %v, want ErrPredictorFolder", err)
			}
			store, err := urza.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			if _, err := PublishPredictor(store, "pred", dir); !errors.Is(err, ErrPredictorFolder) {
				t.Fatalf("publish: %v, want ErrPredictorFolder", err)
			}
		})
	}
}

// TestPublishPredictor: a version published to Urza materialises as a
// folder that loads; the same folder again is the same version.
func TestPublishPredictor(t *testing.T) {
	p, err := Fit(linearTrials(t, 40, 4, 0, 5))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WritePredictor(dir, p, nil); err != nil {
		t.Fatal(err)
	}
	store, err := urza.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v, err := PublishPredictor(store, "pred", dir)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := PublishPredictor(store, "pred", dir); err != nil || again.ID != v.ID {
		t.Fatalf("again: %v %v", again.ID, err)
	}
	got, err := store.ModelFolder("pred", v.ID, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPredictor(got); err != nil {
		t.Fatal(err)
	}
}
