package value

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/nn"
)

// Kind and Schema are a value model manifest's "kind" and "schema".
const (
	Kind   = "value_mlp"
	Schema = 1
)

// Artifact file names inside a model folder.
const (
	ManifestFile = "manifest.json"
	WeightsFile  = "model.safetensors"
)

// MaxManifestBytes bounds manifest.json.
const MaxManifestBytes = 1 << 20

// ErrModel is returned for a model folder that cannot be used: missing
// files, a malformed manifest, another kind, schema, feature list or
// target, or weights that do not make the network. [INVALID]
var ErrModel = errcode.New(errcode.Invalid, "invalid value model")

// Manifest is a value model's manifest.json (docs/simic.md, "The model
// folder").
type Manifest struct {
	Kind     string   `json:"kind"`
	Schema   int      `json:"schema"`
	Features []string `json:"features"`
	nn.Spec
	Target string `json:"target"`
	// Training is the free-form record of how the model was trained.
	Training json.RawMessage `json:"training,omitempty"`
}

// Model is a loaded value model. It is immutable and safe for concurrent
// use.
type Model struct {
	dir      string
	manifest Manifest
	net      *nn.MLP
	// ctxNames and ctxIdx are the context features and their positions
	// (PredictPrepared).
	ctxNames []string
	ctxIdx   []int
	split    *nn.Split
}

// retrain is the advice every load error ends with.
const retrain = "train one with `esper simic train` (docs/simic.md)"

// Load reads the value model in dir: manifest.json and model.safetensors.
// The manifest's features must be distinct names of FeatureNames, in any
// order and not necessarily all (a template added to the library later
// adds a feature the model simply does not read); its target must be
// TargetName; the network must take len(features) inputs and give 1.
func Load(dir string) (*Model, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("value: model %s: %s; %s: %w", dir, fmt.Sprintf(format, args...), retrain, ErrModel)
	}
	path := filepath.Join(dir, ManifestFile)
	st, err := os.Stat(path)
	if err != nil {
		return nil, bad("no %s (%v)", ManifestFile, err)
	}
	if st.Size() > MaxManifestBytes {
		return nil, bad("%s is %d bytes, limit %d", ManifestFile, st.Size(), MaxManifestBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, bad("%v", err)
	}
	var m Manifest
	if err := canon.DecodeStrict(b, &m); err != nil {
		return nil, bad("%s: %v", ManifestFile, err)
	}
	switch {
	case m.Kind != Kind:
		return nil, bad("kind %q is not %q", m.Kind, Kind)
	case m.Schema != Schema:
		return nil, bad("schema %d is not %d", m.Schema, Schema)
	case m.Target != TargetName:
		return nil, bad("target %q is not this library's %q", m.Target, TargetName)
	}
	if len(m.Features) == 0 {
		return nil, bad("it lists no features")
	}
	known := FeatureNames()
	seen := map[string]bool{}
	for i, f := range m.Features {
		if !slices.Contains(known, f) {
			return nil, bad("features[%d] %q is not a feature of this library (it has %d: see esper.valuemodel.feature_names())", i, f, len(known))
		}
		if seen[f] {
			return nil, bad("features[%d] %q is listed twice", i, f)
		}
		seen[f] = true
	}
	net, err := nn.LoadMLP(filepath.Join(dir, WeightsFile), m.Spec)
	if err != nil {
		return nil, bad("%v", err)
	}
	if net.In() != len(m.Features) || net.Out() != 1 {
		return nil, bad("the network maps %d inputs to %d outputs, want %d to 1", net.In(), net.Out(), len(m.Features))
	}
	ctxNames, ctxIdx := contextIndex(m.Features)
	split, err := net.Split(ctxIdx)
	if err != nil {
		return nil, bad("%v", err)
	}
	return &Model{dir: dir, manifest: m, net: net, ctxNames: ctxNames, ctxIdx: ctxIdx, split: split}, nil
}

// Dir is the folder the model was loaded from.
func (m *Model) Dir() string { return m.dir }

// Manifest returns the model's manifest.
func (m *Model) Manifest() Manifest { return m.manifest }

// PredictX returns the prediction for one feature vector, in the order of
// the model's features (Manifest().Features). A non-finite prediction is
// an error.
func (m *Model) PredictX(x []float64) (float64, error) {
	y, err := m.net.Forward64(nil, x)
	if err != nil {
		return 0, fmt.Errorf("value: predict: %w", err)
	}
	if math.IsNaN(y[0]) || math.IsInf(y[0], 0) {
		return 0, fmt.Errorf("value: predict: the model gave %v: %w", y[0], ErrModel)
	}
	return y[0], nil
}

// Predict returns the prediction for a candidate.
func (m *Model) Predict(c *Candidate) (float64, error) {
	x := make([]float64, len(m.manifest.Features))
	FillFeatures(m.manifest.Features, c, x)
	return m.PredictX(x)
}
