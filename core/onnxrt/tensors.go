package onnxrt

import (
	"fmt"
	"os"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// Tensor is one named input or output of a TensorModel: float32 (F32) or
// int64 (I64) values, row major, of shape Shape.
type Tensor struct {
	Name  string
	Shape []int64
	F32   []float32
	I64   []int64
}

// TensorModel is an ONNX model with any number of named float32 or int64
// inputs and float32 outputs of any shape (dynamic dimensions included):
// what a graph network takes. It is safe for concurrent use.
type TensorModel struct {
	mu      sync.RWMutex
	path    string
	sess    *ort.DynamicAdvancedSession
	inputs  []string
	outputs []string
}

// OpenTensors reads the ONNX model at path and creates its session. The
// inputs of Run must be given in the order Inputs lists.
func (r *Runtime) OpenTensors(path string, opts Options) (*TensorModel, error) {
	data, ins, outs, err := readModel(path)
	if err != nil {
		return nil, err
	}
	return newTensorModel(path, data, ins, outs, opts)
}

// readModel reads the ONNX model at path and its inputs' and outputs' signatures.
func readModel(path string) ([]byte, []ort.InputOutputInfo, []ort.InputOutputInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("onnxrt: open model: %w", err)
	}
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(data)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("onnxrt: open model %s: %w", path, err)
	}
	return data, ins, outs, nil
}

// newTensorModel creates the session of the model data (read from path, with
// those signatures): float32 or int64 tensor inputs, float32 tensor outputs.
func newTensorModel(path string, data []byte, ins, outs []ort.InputOutputInfo, opts Options) (*TensorModel, error) {
	m := &TensorModel{path: path}
	for _, in := range ins {
		if in.OrtValueType != ort.ONNXTypeTensor || (in.DataType != ort.TensorElementDataTypeFloat && in.DataType != ort.TensorElementDataTypeInt64) {
			return nil, fmt.Errorf("onnxrt: model %s: input %s; float32 or int64 tensors are supported", path, in.String())
		}
		m.inputs = append(m.inputs, in.Name)
	}
	for _, o := range outs {
		if o.OrtValueType != ort.ONNXTypeTensor || o.DataType != ort.TensorElementDataTypeFloat {
			return nil, fmt.Errorf("onnxrt: model %s: output %s; float32 tensors are supported", path, o.String())
		}
		m.outputs = append(m.outputs, o.Name)
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("onnxrt: session options: %w", err)
	}
	defer so.Destroy()
	threads := max(opts.Threads, 1)
	if err := so.SetIntraOpNumThreads(threads); err != nil {
		return nil, fmt.Errorf("onnxrt: session options: intra-op threads: %w", err)
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("onnxrt: session options: inter-op threads: %w", err)
	}
	if m.sess, err = ort.NewDynamicAdvancedSessionWithONNXData(data, m.inputs, m.outputs, so); err != nil {
		return nil, fmt.Errorf("onnxrt: open model %s: session: %w", path, err)
	}
	return m, nil
}

// Inputs names the model's inputs, in order.
func (m *TensorModel) Inputs() []string { return append([]string(nil), m.inputs...) }

// Outputs names the model's outputs, in order.
func (m *TensorModel) Outputs() []string { return append([]string(nil), m.outputs...) }

// Run evaluates the model on inputs (one per Inputs entry, by name, in any
// order) and returns its outputs in the order of Outputs, with their shapes.
func (m *TensorModel) Run(inputs []Tensor) ([]Tensor, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.sess == nil {
		return nil, fmt.Errorf("onnxrt: run %s: the model is closed", m.path)
	}
	vals := make([]ort.Value, len(m.inputs))
	defer func() {
		for _, v := range vals {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for _, in := range inputs {
		i := indexOf(m.inputs, in.Name)
		if i < 0 || vals[i] != nil {
			return nil, fmt.Errorf("onnxrt: run %s: input %q is not one of %v, or is given twice", m.path, in.Name, m.inputs)
		}
		// Only a tensor that was made goes into vals (a failed one would be a
		// typed nil the deferred Destroy calls).
		if in.I64 != nil {
			v, err := ort.NewTensor(ort.NewShape(in.Shape...), in.I64)
			if err != nil {
				return nil, fmt.Errorf("onnxrt: run %s: input %s: %w", m.path, in.Name, err)
			}
			vals[i] = v
		} else {
			v, err := ort.NewTensor(ort.NewShape(in.Shape...), in.F32)
			if err != nil {
				return nil, fmt.Errorf("onnxrt: run %s: input %s: %w", m.path, in.Name, err)
			}
			vals[i] = v
		}
	}
	for i, v := range vals {
		if v == nil {
			return nil, fmt.Errorf("onnxrt: run %s: input %q is missing", m.path, m.inputs[i])
		}
	}
	outs := make([]ort.Value, len(m.outputs))
	defer func() {
		for _, o := range outs {
			if o != nil {
				o.Destroy()
			}
		}
	}()
	if err := m.sess.Run(vals, outs); err != nil {
		return nil, fmt.Errorf("onnxrt: run %s: %w", m.path, err)
	}
	res := make([]Tensor, len(outs))
	for i, o := range outs {
		t, ok := o.(*ort.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("onnxrt: run %s: output %s is %T, not a float32 tensor", m.path, m.outputs[i], o)
		}
		res[i] = Tensor{Name: m.outputs[i], Shape: append([]int64(nil), t.GetShape()...), F32: append([]float32(nil), t.GetData()...)}
	}
	return res, nil
}

// Close releases the session. Safe to call more than once; Close waits for
// the runs in flight.
func (m *TensorModel) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sess == nil {
		return nil
	}
	err := m.sess.Destroy()
	m.sess = nil
	if err != nil {
		return fmt.Errorf("onnxrt: close %s: %w", m.path, err)
	}
	return nil
}

func indexOf(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}
