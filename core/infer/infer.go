// Package infer runs a model folder (docs/simic.md, "The model folder") on
// one of two runtimes: Esper's native Go forward pass (core/nn, weights from
// model.safetensors) or ONNX Runtime (core/onnxrt, model.onnx). Both take a
// float32 batch [rows, In] and return [rows, Out]; the parity test
// (tests_py/test_onnx_parity.py) holds them to each other and to PyTorch.
//
// Models are safe for concurrent use; Close waits for the forwards in flight.
package infer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/nn"
	"github.com/esper-morph/esper/core/onnxrt"
)

// Runtime names, as configs and the ABI write them.
const (
	Native = "native"
	ONNX   = "onnx"
)

// File names inside a model folder.
const (
	ManifestFile    = "manifest.json"
	SafetensorsFile = "model.safetensors"
	ONNXFile        = "model.onnx"
)

// ErrNoRuntime is returned when the ONNX runtime is asked for and the ONNX
// Runtime library cannot be loaded. [UNAVAILABLE]
var ErrNoRuntime = errcode.New(errcode.Unavailable, "ONNX Runtime unavailable")

// ErrNoModel is returned when the folder lacks the file a runtime reads.
// [NOT_FOUND]
var ErrNoModel = errcode.New(errcode.NotFound, "model file not found")

// Model is a network loaded on one runtime.
type Model interface {
	// In and Out are the widths of an input and an output row.
	In() int
	Out() int
	// Runtime is Native or ONNX.
	Runtime() string
	// Forward runs rows rows of x (row-major, rows*In values) and returns
	// rows*Out values, row-major.
	Forward(x []float32, rows int) ([]float32, error)
	// Close releases the model; later forwards fail. Safe to call twice.
	Close() error
}

// Options choose the runtime.
type Options struct {
	// Runtime is Native ("" means Native) or ONNX.
	Runtime string
	// ONNXRuntimeLib is the path of libonnxruntime.so, read when Runtime is
	// ONNX ("" means onnxrt.DefaultLibrary; loaded once per process: see
	// core/onnxrt).
	ONNXRuntimeLib string
	// Threads is ONNX Runtime's thread count per forward (0: 1).
	Threads int
}

// ReadSpec reads the network part of dir's manifest.json (the layers and the
// normalisation tensors); the manifest's other fields are its owner's.
func ReadSpec(dir string) (nn.Spec, error) {
	var spec nn.Spec
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return spec, fmt.Errorf("infer: model folder %s has no %s: %w", dir, ManifestFile, ErrNoModel)
		}
		return spec, fmt.Errorf("infer: read manifest: %w: %w", err, errcode.ErrIO)
	}
	if err := canon.DecodeLenient(b, &spec); err != nil {
		return spec, fmt.Errorf("infer: %s: %v: %w", filepath.Join(dir, ManifestFile), err, errcode.ErrInvalid)
	}
	return spec, nil
}

// Open loads the network spec describes from dir on the runtime opts names.
// The native runtime reads model.safetensors; the ONNX runtime reads
// model.onnx and checks that its input and output widths are those of the
// weights in model.safetensors, so the two files describe one network.
func Open(dir string, spec nn.Spec, opts Options) (Model, error) {
	weights := filepath.Join(dir, SafetensorsFile)
	if _, err := os.Stat(weights); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("infer: model folder %s has no %s: %w", dir, SafetensorsFile, ErrNoModel)
	}
	mlp, err := nn.LoadMLP(weights, spec)
	if err != nil {
		return nil, fmt.Errorf("infer: %w", err)
	}
	switch opts.Runtime {
	case "", Native:
		return &native{mlp: mlp}, nil
	case ONNX:
		return openONNX(dir, mlp.In(), mlp.Out(), opts)
	}
	return nil, fmt.Errorf("infer: runtime %q is not %q or %q: %w", opts.Runtime, Native, ONNX, errcode.ErrInvalid)
}

// OpenDir is ReadSpec then Open.
func OpenDir(dir string, opts Options) (Model, error) {
	spec, err := ReadSpec(dir)
	if err != nil {
		return nil, err
	}
	return Open(dir, spec, opts)
}

func openONNX(dir string, in, out int, opts Options) (Model, error) {
	path := filepath.Join(dir, ONNXFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("infer: model folder %s has no %s (export one with esper.onnxrt.export_onnx, or use runtime %q): %w", dir, ONNXFile, Native, ErrNoModel)
	}
	lib := opts.ONNXRuntimeLib
	if lib == "" {
		lib = onnxrt.DefaultLibrary()
	}
	rt, err := onnxrt.Load(lib)
	if err != nil {
		if errors.Is(err, onnxrt.ErrNoLibrary) {
			return nil, fmt.Errorf("infer: runtime %q needs libonnxruntime.so.1 (ONNX Runtime >= 1.24), not found at %q: "+
				"run `make onnxruntime` (it installs it beside libesper.so) or set ESPER_ONNXRUNTIME_LIB to its path: %w",
				ONNX, lib, ErrNoRuntime)
		}
		return nil, fmt.Errorf("infer: %w: %w", err, ErrNoRuntime)
	}
	m, err := rt.Open(path, onnxrt.Options{Threads: opts.Threads})
	if err != nil {
		return nil, fmt.Errorf("infer: %w: %w", err, errcode.ErrInvalid)
	}
	outs := m.Outputs()
	if m.Features() != in || len(outs) != 1 || (outs[0].Width != out && outs[0].Width != -1) {
		m.Close()
		return nil, fmt.Errorf("infer: %s takes %d inputs and gives %v, but %s's network takes %d and gives %d: %w",
			path, m.Features(), outs, SafetensorsFile, in, out, errcode.ErrInvalid)
	}
	return &onnxModel{m: m, out: out}, nil
}

// native runs core/nn's batched forward pass (one matrix product per layer).
type native struct{ mlp *nn.MLP }

func (n *native) In() int         { return n.mlp.In() }
func (n *native) Out() int        { return n.mlp.Out() }
func (n *native) Runtime() string { return Native }
func (n *native) Close() error    { return nil }

func (n *native) Forward(x []float32, rows int) ([]float32, error) {
	in := n.mlp.In()
	if err := checkBatch(x, rows, in); err != nil {
		return nil, err
	}
	flat := make([]float64, rows*in)
	for i, v := range x {
		flat[i] = float64(v)
	}
	xs := make([][]float64, rows)
	for r := range xs {
		xs[r] = flat[r*in : (r+1)*in]
	}
	y, err := n.mlp.ForwardBatch64(nil, xs)
	if err != nil {
		return nil, fmt.Errorf("infer: native forward: %w", err)
	}
	res := make([]float32, len(y))
	for i, v := range y {
		res[i] = float32(v)
	}
	return res, nil
}

// onnxModel runs model.onnx through ONNX Runtime.
type onnxModel struct {
	m   *onnxrt.Model
	out int
}

func (o *onnxModel) In() int         { return o.m.Features() }
func (o *onnxModel) Out() int        { return o.out }
func (o *onnxModel) Runtime() string { return ONNX }
func (o *onnxModel) Close() error    { return o.m.Close() }

func (o *onnxModel) Forward(x []float32, rows int) ([]float32, error) {
	if err := checkBatch(x, rows, o.m.Features()); err != nil {
		return nil, err
	}
	res, err := o.m.Run(x, rows)
	if err != nil {
		return nil, fmt.Errorf("infer: onnx forward: %w", err)
	}
	if len(res[0]) != rows*o.out {
		return nil, fmt.Errorf("infer: onnx forward gave %d values for %d rows of %d: %w", len(res[0]), rows, o.out, errcode.ErrInvalid)
	}
	return res[0], nil
}

func checkBatch(x []float32, rows, in int) error {
	if rows <= 0 {
		return fmt.Errorf("infer: forward: rows %d must be > 0: %w", rows, errcode.ErrInvalid)
	}
	if len(x) != rows*in {
		return fmt.Errorf("infer: forward: %d values for %d rows of %d inputs: %w", len(x), rows, in, errcode.ErrInvalid)
	}
	return nil
}
