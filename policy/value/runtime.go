package value

import (
	"fmt"
	"math"
	"runtime"

	"github.com/esper-morph/esper/core/infer"
)

// LoadOn is Load with the network run on the runtime opts names: Native
// ("" too) is Load's own forward pass; ONNX runs the folder's model.onnx
// through ONNX Runtime (core/infer), after Load has checked the manifest,
// the features, the target and the safetensors network, and core/infer has
// checked that model.onnx has the same widths. The ONNX session is released
// when the Model is collected.
func LoadOn(dir string, opts infer.Options) (*Model, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if opts.Runtime == "" || opts.Runtime == infer.Native {
		return m, nil
	}
	net, err := infer.Open(dir, m.manifest.Spec, opts)
	if err != nil {
		return nil, fmt.Errorf("value: model %s on runtime %q: %w", dir, opts.Runtime, err)
	}
	m.onnx = net
	runtime.AddCleanup(m, func(n infer.Model) { n.Close() }, net)
	return m, nil
}

// Runtime is the runtime the model's predictions run on.
func (m *Model) Runtime() string {
	if m.onnx != nil {
		return m.onnx.Runtime()
	}
	return infer.Native
}

// predictONNX is PredictX on the ONNX runtime (float32 in and out).
func (m *Model) predictONNX(x []float64) (float64, error) {
	row := make([]float32, len(x))
	for i, v := range x {
		row[i] = float32(v)
	}
	y, err := m.onnx.Forward(row, 1)
	if err != nil {
		return 0, fmt.Errorf("value: predict: %w", err)
	}
	v := float64(y[0])
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("value: predict: the model gave %v: %w", v, ErrModel)
	}
	return v, nil
}
