package graphpolicy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/onnxrt"
)

// ONNX inputs and outputs of model.onnx (esper.simic.export.DenseGraphNet).
var (
	onnxInputs  = []string{"x", "adj", "glob", "layer_nodes", "target_layer", "target_seed"}
	onnxOutputs = []string{"value", "op", "target", "template", "size"}
)

// ONNXInputs returns model.onnx's inputs for an encoded graph: x [N, F],
// adj [N, N] (adj[d][s] = edges s -> d over d's in-degree, at least 1: the
// neighbour mean as a product), glob [G], layer_nodes [L], target_layer
// and target_seed [T] (int64).
func ONNXInputs(e *Encoded) []onnxrt.Tensor {
	n := e.Nodes
	x := make([]float32, len(e.X))
	for i, v := range e.X {
		x[i] = float32(v)
	}
	deg := make([]float64, n)
	for _, d := range e.Dst {
		deg[d]++
	}
	adj := make([]float32, n*n)
	counts := make([]float64, n*n)
	for i, s := range e.Src {
		counts[e.Dst[i]*n+s]++
	}
	for i, c := range counts {
		if c > 0 {
			adj[i] = float32(c / max(deg[i/n], 1))
		}
	}
	glob := make([]float32, len(e.Global))
	for i, v := range e.Global {
		glob[i] = float32(v)
	}
	ints := func(v []int) []int64 {
		out := make([]int64, len(v))
		for i, x := range v {
			out[i] = int64(x)
		}
		return out
	}
	layers := make([]int, e.Layers)
	for i := range layers {
		layers[i] = i
	}
	t := int64(len(e.TargetLayer))
	return []onnxrt.Tensor{
		{Name: "x", Shape: []int64{int64(n), int64(e.Features)}, F32: x},
		{Name: "adj", Shape: []int64{int64(n), int64(n)}, F32: adj},
		{Name: "glob", Shape: []int64{int64(len(glob))}, F32: glob},
		{Name: "layer_nodes", Shape: []int64{int64(e.Layers)}, I64: ints(layers)},
		{Name: "target_layer", Shape: []int64{t}, I64: ints(e.TargetLayer)},
		{Name: "target_seed", Shape: []int64{t}, I64: ints(e.TargetSeed)},
	}
}

// openONNX opens the folder's model.onnx through ONNX Runtime (the library
// at lib, "" for onnxrt.DefaultLibrary) and checks that its inputs are
// model.onnx's.
func (m *Model) openONNX(lib string) (*onnxrt.TensorModel, error) {
	path := filepath.Join(m.dir, ONNXFile)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("graphpolicy: model %s has no %s (`%s` writes one when the onnx package is installed): %w",
			m.dir, ONNXFile, TrainCommand, infer.ErrNoModel)
	}
	if lib == "" {
		lib = onnxrt.DefaultLibrary()
	}
	rt, err := onnxrt.Load(lib)
	if err != nil {
		if errors.Is(err, onnxrt.ErrNoLibrary) {
			return nil, fmt.Errorf("graphpolicy: ONNX Runtime (libonnxruntime.so.1 >= 1.24) not found at %q: run `make onnxruntime` or set ESPER_ONNXRUNTIME_LIB: %w",
				lib, infer.ErrNoRuntime)
		}
		return nil, fmt.Errorf("graphpolicy: %w: %w", err, infer.ErrNoRuntime)
	}
	om, err := rt.OpenTensors(path, onnxrt.Options{})
	if err != nil {
		return nil, fmt.Errorf("graphpolicy: %w: %w", err, errcode.ErrInvalid)
	}
	if !slices.Equal(om.Inputs(), onnxInputs) {
		_ = om.Close()
		return nil, fmt.Errorf("graphpolicy: %s takes %v, not %v: %w", path, om.Inputs(), onnxInputs, errcode.ErrInvalid)
	}
	return om, nil
}

// ForwardONNX runs the folder's model.onnx on g through ONNX Runtime (the
// library at lib, "" for onnxrt.DefaultLibrary) and returns every head's
// output, as Forward does natively.
func (m *Model) ForwardONNX(g *Graph, lib string) (gnn.Dense, error) {
	if err := m.fits(g); err != nil {
		return gnn.Dense{}, err
	}
	om, err := m.openONNX(lib)
	if err != nil {
		return gnn.Dense{}, err
	}
	defer om.Close()
	enc, err := Encode(g)
	if err != nil {
		return gnn.Dense{}, err
	}
	return m.runONNX(om, enc)
}

// runONNX runs m's opened model.onnx on an encoded graph and returns every
// head's output.
func (m *Model) runONNX(om *onnxrt.TensorModel, enc *Encoded) (gnn.Dense, error) {
	path := filepath.Join(m.dir, ONNXFile)
	outs, err := om.Run(ONNXInputs(enc))
	if err != nil {
		return gnn.Dense{}, fmt.Errorf("graphpolicy: %w: %w", err, errcode.ErrInvalid)
	}
	var d gnn.Dense
	f64 := func(v []float32) []float64 {
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	for _, o := range outs {
		switch o.Name {
		case "value":
			if len(o.F32) != 1 {
				return gnn.Dense{}, fmt.Errorf("graphpolicy: %s's value output has %d values: %w", path, len(o.F32), errcode.ErrInvalid)
			}
			d.Value = float64(o.F32[0])
		case "op":
			d.Op = f64(o.F32)
		case "target":
			d.Target = f64(o.F32)
		case "template":
			d.Template = f64(o.F32)
		case "size":
			d.Size = f64(o.F32)
		}
	}
	if d.Op == nil || d.Target == nil || d.Template == nil || d.Size == nil {
		return gnn.Dense{}, fmt.Errorf("graphpolicy: %s's outputs %v are not %v: %w", path, om.Outputs(), onnxOutputs, errcode.ErrInvalid)
	}
	t, l := len(enc.TargetLayer), enc.Layers
	if len(d.Op) != gnn.NumOps || len(d.Target) != gnn.NumTargetOps*t || len(d.Template) == 0 || len(d.Template)%l != 0 ||
		len(d.Size)%len(d.Template) != 0 {
		return gnn.Dense{}, fmt.Errorf("graphpolicy: %s's outputs have %d, %d, %d and %d values for %d targets and %d layers: %w",
			path, len(d.Op), len(d.Target), len(d.Template), len(d.Size), t, l, errcode.ErrInvalid)
	}
	return d, nil
}
