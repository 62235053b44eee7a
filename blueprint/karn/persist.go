package karn

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/safetensors"
	"github.com/esper-morph/esper/core/urza"
)

// A fitted predictor as a model folder (docs/karn.md, "A published
// predictor"): manifest.json names the kind, the features in order, the
// gain range, the host layouts and what it was fitted on; model.safetensors
// holds the standardisation (mean, scale), the weights (w) and the
// intercept (b), as float32. Published to Urza under a name like any model
// folder, it is what a run with karn_predictor "urza:<name>" ranks with,
// and what a rolling deployment switches between.

// Predictor folder constants.
const (
	// PredictorKind is the manifest's kind; PredictorSchema its version.
	PredictorKind   = "esper.karn.predictor"
	PredictorSchema = 1
	// PredictorManifestFile and PredictorWeightsFile are the folder's files.
	PredictorManifestFile = "manifest.json"
	PredictorWeightsFile  = "model.safetensors"
)

// ErrPredictorFolder is returned for a predictor folder that does not load
// (missing files, another kind, features unknown to this Karn, values that
// are not finite). [INVALID]
var ErrPredictorFolder = errcode.New(errcode.Invalid, "karn: invalid predictor folder")

// predictorManifest is a predictor folder's manifest.json.
type predictorManifest struct {
	Kind     string          `json:"kind"`
	Schema   int             `json:"schema"`
	Features []string        `json:"features"`
	Lo       float64         `json:"gain_lo"`
	Hi       float64         `json:"gain_hi"`
	Layouts  []string        `json:"layouts"`
	Records  int             `json:"records"`
	Runs     int             `json:"runs"`
	Training json.RawMessage `json:"training,omitempty"`
}

// WritePredictor writes p as a predictor folder in dir (created if needed);
// training is recorded in the manifest as given (nil: none).
func WritePredictor(dir string, p *Predictor, training any) error {
	if p == nil {
		return fmt.Errorf("karn: write predictor: no predictor: %w", ErrPredictorFolder)
	}
	f32 := func(v []float64) []float32 {
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = float32(x)
		}
		return out
	}
	d := uint64(len(p.names))
	weights, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "mean", Shape: []uint64{d}, Data: f32(p.mean)},
		{Name: "scale", Shape: []uint64{d}, Data: f32(p.scale)},
		{Name: "w", Shape: []uint64{d}, Data: f32(p.w)},
		{Name: "b", Shape: []uint64{1}, Data: []float32{float32(p.b)}},
	})
	if err != nil {
		return fmt.Errorf("karn: write predictor: %w", err)
	}
	layouts := make([]string, 0, len(p.layouts))
	for l := range p.layouts {
		layouts = append(layouts, l)
	}
	slices.Sort(layouts)
	m := predictorManifest{Kind: PredictorKind, Schema: PredictorSchema, Features: p.names, Lo: p.lo, Hi: p.hi,
		Layouts: layouts, Records: p.Records, Runs: p.Runs}
	if training != nil {
		if m.Training, err = json.Marshal(training); err != nil {
			return fmt.Errorf("karn: write predictor: training: %w", err)
		}
	}
	doc, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("karn: write predictor: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("karn: write predictor %s: %v: %w", dir, err, errcode.ErrIO)
	}
	if err := os.WriteFile(filepath.Join(dir, PredictorWeightsFile), weights, 0o644); err != nil {
		return fmt.Errorf("karn: write predictor %s: %v: %w", dir, err, errcode.ErrIO)
	}
	if err := os.WriteFile(filepath.Join(dir, PredictorManifestFile), doc, 0o644); err != nil {
		return fmt.Errorf("karn: write predictor %s: %v: %w", dir, err, errcode.ErrIO)
	}
	return nil
}

// LoadPredictor reads a predictor folder written by WritePredictor (or by
// hand in its format). Every feature must be one this Karn computes
// (FeatureNames), every value finite, and gain_lo <= gain_hi.
func LoadPredictor(dir string) (*Predictor, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("karn: predictor folder %s: "+format+": %w", append([]any{dir}, append(args, ErrPredictorFolder)...)...)
	}
	doc, err := os.ReadFile(filepath.Join(dir, PredictorManifestFile))
	if err != nil {
		return nil, bad("%v", err)
	}
	var m predictorManifest
	if err := json.Unmarshal(doc, &m); err != nil {
		return nil, bad("manifest.json: %v", err)
	}
	if m.Kind != PredictorKind || m.Schema != PredictorSchema {
		return nil, bad("manifest kind %q schema %d, want %q schema %d", m.Kind, m.Schema, PredictorKind, PredictorSchema)
	}
	known := FeatureNames()
	for _, n := range m.Features {
		if !slices.Contains(known, n) {
			return nil, bad("feature %q is not one this Karn computes", n)
		}
	}
	if len(m.Features) == 0 || m.Records < 0 || m.Runs < 0 || !finite(m.Lo) || !finite(m.Hi) || m.Lo > m.Hi {
		return nil, bad("%d features, %d records, %d runs, gain range [%v, %v]", len(m.Features), m.Records, m.Runs, m.Lo, m.Hi)
	}
	f, err := safetensors.Open(filepath.Join(dir, PredictorWeightsFile))
	if err != nil {
		return nil, bad("%v", err)
	}
	d := len(m.Features)
	vec := func(name string, n int) ([]float64, error) {
		v, _, err := f.Float64s(name)
		if err != nil {
			return nil, bad("%v", err)
		}
		if len(v) != n {
			return nil, bad("tensor %s has %d values, want %d", name, len(v), n)
		}
		for _, x := range v {
			if !finite(x) {
				return nil, bad("tensor %s holds %v", name, x)
			}
		}
		return v, nil
	}
	p := &Predictor{names: m.Features, lo: m.Lo, hi: m.Hi, layouts: map[string]bool{}, Records: m.Records, Runs: m.Runs}
	if p.mean, err = vec("mean", d); err != nil {
		return nil, err
	}
	if p.scale, err = vec("scale", d); err != nil {
		return nil, err
	}
	if p.w, err = vec("w", d); err != nil {
		return nil, err
	}
	b, err := vec("b", 1)
	if err != nil {
		return nil, err
	}
	p.b = b[0]
	for _, l := range m.Layouts {
		p.layouts[l] = true
	}
	return p, nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// PublishPredictor publishes the predictor folder dir as a version of name
// in store, once it loads (LoadPredictor).
func PublishPredictor(store *urza.Store, name, dir string) (urza.ModelVersion, error) {
	if err := urza.CheckModelName(name); err != nil {
		return urza.ModelVersion{}, fmt.Errorf("karn publish: %w", err)
	}
	if _, err := LoadPredictor(dir); err != nil {
		return urza.ModelVersion{}, fmt.Errorf("karn publish: %w", err)
	}
	manifest, err := os.ReadFile(filepath.Join(dir, PredictorManifestFile))
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("karn publish %s: %v: %w", dir, err, errcode.ErrIO)
	}
	weights, err := os.ReadFile(filepath.Join(dir, PredictorWeightsFile))
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("karn publish %s: %v: %w", dir, err, errcode.ErrIO)
	}
	v, err := store.PutModel(name, manifest, weights)
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("karn publish %s: %w", dir, err)
	}
	return v, nil
}

// FitFromStore fits a predictor on every measured outcome record of store
// and writes it as a predictor folder in dir (ErrTooFew below MinRecords
// records from MinRuns runs).
func FitFromStore(store *urza.Store, dir string) (*Predictor, error) {
	recs, err := store.Outcomes("")
	if err != nil {
		return nil, fmt.Errorf("karn fit: %w", err)
	}
	trials, _, err := TrialsFromOutcomes(recs)
	if err != nil {
		return nil, fmt.Errorf("karn fit: %w", err)
	}
	p, err := Fit(trials)
	if err != nil {
		return nil, fmt.Errorf("karn fit: %w", err)
	}
	training := map[string]any{"records": p.Records, "runs": p.Runs, "store": store.Root(), "lambda": Lambda}
	if err := WritePredictor(dir, p, training); err != nil {
		return nil, err
	}
	return p, nil
}
