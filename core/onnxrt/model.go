package onnxrt

import (
	"fmt"

	ort "github.com/yalue/onnxruntime_go"
)

// Output describes one model output: its name and its width k (the output is
// [batch, k]; a [batch] output has width 1).
type Output struct {
	Name  string `json:"name"`
	Width int    `json:"width"`
}

// Options tune a Model's session.
type Options struct {
	// Threads is the number of threads one Run may use (ONNX Runtime's
	// intra-op pool). 0 means 1: the models are small, and Esper's core must
	// not compete with PyTorch's threads.
	Threads int
}

// Model is one ONNX model opened for inference: one float32 input [batch, n]
// (batch may be dynamic) and one or more float32 outputs [batch, k] or
// [batch]. It is a TensorModel whose signature was checked to have that
// shape, run on rows of features.
type Model struct {
	tm       *TensorModel
	features int
	outputs  []Output
}

// Open reads the ONNX model at path and creates its session. It checks the
// model's signature: one float32 input of rank 2 whose second dimension is
// fixed, and float32 outputs of rank 1 or 2 whose first dimension is the
// batch.
func (r *Runtime) Open(path string, opts Options) (*Model, error) {
	data, ins, outs, err := readModel(path)
	if err != nil {
		return nil, err
	}
	if len(ins) != 1 {
		return nil, fmt.Errorf("onnxrt: model %s has %d inputs; one float32 [batch, n] input is supported", path, len(ins))
	}
	in := ins[0]
	if in.OrtValueType != ort.ONNXTypeTensor || in.DataType != ort.TensorElementDataTypeFloat || len(in.Dimensions) != 2 || in.Dimensions[1] <= 0 {
		return nil, fmt.Errorf("onnxrt: model %s: input %s; a float32 [batch, n] tensor with a fixed n is supported", path, in.String())
	}
	m := &Model{features: int(in.Dimensions[1])}
	for _, o := range outs {
		if o.OrtValueType != ort.ONNXTypeTensor || o.DataType != ort.TensorElementDataTypeFloat || len(o.Dimensions) < 1 || len(o.Dimensions) > 2 {
			return nil, fmt.Errorf("onnxrt: model %s: output %s; float32 [batch] or [batch, k] tensors are supported", path, o.String())
		}
		width := 1
		if len(o.Dimensions) == 2 {
			// A dynamic width (-1) is read from each run's result.
			width = int(o.Dimensions[1])
		}
		m.outputs = append(m.outputs, Output{Name: o.Name, Width: width})
	}
	if m.tm, err = newTensorModel(path, data, ins, outs, opts); err != nil {
		return nil, err
	}
	return m, nil
}

// Path is the model file the session was created from.
func (m *Model) Path() string { return m.tm.path }

// Features is n, the width of the model's input [batch, n].
func (m *Model) Features() int { return m.features }

// Outputs describes the model's outputs, in order (a width of -1 is dynamic).
func (m *Model) Outputs() []Output { return append([]Output(nil), m.outputs...) }

// Run evaluates the model on rows rows of x (row-major, rows*Features()
// values) and returns each output's values row-major ([rows*k] for an output
// of width k), in the order of Outputs. x is not modified or kept.
func (m *Model) Run(x []float32, rows int) ([][]float32, error) {
	if rows <= 0 {
		return nil, fmt.Errorf("onnxrt: run %s: rows %d must be > 0", m.tm.path, rows)
	}
	if len(x) != rows*m.features {
		return nil, fmt.Errorf("onnxrt: run %s: %d values for %d rows of %d features (want %d)", m.tm.path, len(x), rows, m.features, rows*m.features)
	}
	outs, err := m.tm.Run([]Tensor{{Name: m.tm.inputs[0], Shape: []int64{int64(rows), int64(m.features)}, F32: x}})
	if err != nil {
		return nil, err
	}
	res := make([][]float32, len(outs))
	for i, t := range outs {
		if len(t.Shape) == 0 || t.Shape[0] != int64(rows) {
			return nil, fmt.Errorf("onnxrt: run %s: output %s has shape %v for %d rows", m.tm.path, t.Name, t.Shape, rows)
		}
		res[i] = t.F32
	}
	return res, nil
}

// Close releases the session. Safe to call more than once; Run after Close
// returns an error; Close waits for the runs in flight.
func (m *Model) Close() error { return m.tm.Close() }
