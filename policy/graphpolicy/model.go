package graphpolicy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/onnxrt"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Kind and Schema are a graph policy manifest's "kind" and "schema".
const (
	Kind   = "graph_policy"
	Schema = 1
)

// Artifact file names inside a model folder.
const (
	ManifestFile = "manifest.json"
	WeightsFile  = "model.safetensors"
	ONNXFile     = "model.onnx"
)

// MaxManifestBytes bounds manifest.json.
const MaxManifestBytes = 1 << 20

// TrainCommand is the command that trains a graph policy, named by every
// error about a missing or unusable model.
const TrainCommand = "esper simic ppo train --out DIR"

// ErrModel is returned for a model folder that cannot be used. [INVALID]
var ErrModel = errcode.New(errcode.Invalid, "invalid graph policy model")

// ErrGraph is returned for a graph the policy cannot read (another
// library's ops, templates or sizes; a malformed graph). [INVALID]
var ErrGraph = errcode.New(errcode.Invalid, "graph does not fit the graph policy")

// Manifest is a graph policy's manifest.json (docs/simic.md).
type Manifest struct {
	Kind   string `json:"kind"`
	Schema int    `json:"schema"`
	// NodeFeatures and GlobalFeatures are the input names, in the network's
	// order: they must equal NodeFeatureNames and GlobalFeatureNames.
	NodeFeatures   []string `json:"node_features"`
	GlobalFeatures []string `json:"global_features"`
	// Ops, Templates and Sizes name the heads' outputs, as the graph does.
	Ops       []string  `json:"ops"`
	Templates []string  `json:"templates"`
	Sizes     []float64 `json:"sizes"`
	Hidden    int       `json:"hidden"`
	Rounds    int       `json:"rounds"`
	// Training is the free-form record of how the model was made.
	Training json.RawMessage `json:"training,omitempty"`
}

// Config is the network shape the manifest states.
func (m Manifest) Config() gnn.Config {
	return gnn.Config{NodeFeatures: len(m.NodeFeatures), GlobalFeatures: len(m.GlobalFeatures), Hidden: m.Hidden,
		Rounds: m.Rounds, Templates: len(m.Templates), Sizes: len(m.Sizes)}
}

// Model is a loaded graph policy: immutable, safe for concurrent use.
type Model struct {
	dir      string
	manifest Manifest
	net      *gnn.Net
	// onnx, when set (LoadOn with the ONNX runtime), runs the decisions'
	// forward instead of net.
	onnx *onnxrt.TensorModel
}

// Dir is the model folder.
func (m *Model) Dir() string { return m.dir }

// Manifest returns the model's manifest.
func (m *Model) Manifest() Manifest { return m.manifest }

// Net is the loaded network.
func (m *Model) Net() *gnn.Net { return m.net }

// ReadManifest reads and checks dir's manifest.json against this library:
// its kind and schema, its feature names and its ops.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	bad := func(format string, args ...any) error {
		return fmt.Errorf("graphpolicy: model %s: %s; train one with `%s` (docs/simic.md): %w", dir, fmt.Sprintf(format, args...), TrainCommand, ErrModel)
	}
	path := filepath.Join(dir, ManifestFile)
	st, err := os.Stat(path)
	if err != nil {
		return m, bad("no %s (%v)", ManifestFile, err)
	}
	if st.Size() > MaxManifestBytes {
		return m, bad("%s is %d bytes, limit %d", ManifestFile, st.Size(), MaxManifestBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return m, bad("%v", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, bad("%s: %v", ManifestFile, err)
	}
	switch {
	case m.Kind != Kind || m.Schema != Schema:
		return m, bad("kind %q schema %d, want %q schema %d", m.Kind, m.Schema, Kind, Schema)
	case !slices.Equal(m.NodeFeatures, NodeFeatureNames()):
		return m, bad("its node features (%d) are not this library's (%d, esper_graph_features)", len(m.NodeFeatures), len(NodeFeatureNames()))
	case !slices.Equal(m.GlobalFeatures, GlobalFeatureNames()):
		return m, bad("its global features (%d) are not this library's (%d)", len(m.GlobalFeatures), len(GlobalFeatureNames()))
	case !slices.Equal(m.Ops, tamiyo.MoveOps()):
		return m, bad("its ops %v are not this library's %v", m.Ops, tamiyo.MoveOps())
	case !slices.Equal(m.Sizes, tamiyo.SizeScales()):
		return m, bad("its sizes %v are not this library's %v", m.Sizes, tamiyo.SizeScales())
	case len(m.Templates) == 0:
		return m, bad("it names no template")
	}
	return m, nil
}

// Load reads the graph policy in dir: manifest.json and model.safetensors.
func Load(dir string) (*Model, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	net, err := gnn.Load(filepath.Join(dir, WeightsFile), m.Config())
	if err != nil {
		return nil, fmt.Errorf("graphpolicy: model %s: %w; train one with `%s`", dir, err, TrainCommand)
	}
	return &Model{dir: dir, manifest: m, net: net}, nil
}

// LoadOn reads the graph policy in dir (Load) and opens it on the runtime
// opts names: infer.Native ("" too) runs Go's forward over
// model.safetensors; infer.ONNX runs the folder's model.onnx through ONNX
// Runtime (infer.ErrNoModel without one, infer.ErrNoRuntime without the
// library), the weights' native forward staying loaded (Forward, the
// parity tests). The ONNX session is released when the Model is collected.
func LoadOn(dir string, opts infer.Options) (*Model, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	switch opts.Runtime {
	case "", infer.Native:
		return m, nil
	case infer.ONNX:
	default:
		return nil, fmt.Errorf("graphpolicy: runtime %q is not %q or %q: %w", opts.Runtime, infer.Native, infer.ONNX, ErrModel)
	}
	om, err := m.openONNX(opts.ONNXRuntimeLib)
	if err != nil {
		return nil, fmt.Errorf("graphpolicy: model %s on runtime %q: %w", dir, opts.Runtime, err)
	}
	m.onnx = om
	runtime.AddCleanup(m, func(om *onnxrt.TensorModel) { _ = om.Close() }, om)
	return m, nil
}

// Runtime is the runtime the model's decisions run on (infer.Native or
// infer.ONNX).
func (m *Model) Runtime() string {
	if m.onnx != nil {
		return infer.ONNX
	}
	return infer.Native
}
