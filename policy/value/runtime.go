package value

import (
	"fmt"
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

// predictONNX is PredictX on the ONNX runtime.
func (m *Model) predictONNX(x []float64) (float64, error) {
	y, err := m.predictBatchONNX(nil, [][]float64{x})
	if err != nil {
		return 0, err
	}
	return y[0], nil
}

// predictBatchONNX is PredictBatchX on the ONNX runtime: one float32 batch
// in, one forward, float32 out.
func (m *Model) predictBatchONNX(dst []float64, xs [][]float64) ([]float64, error) {
	n := len(m.manifest.Features)
	batch := make([]float32, 0, len(xs)*n)
	for i, x := range xs {
		if len(x) != n {
			return nil, fmt.Errorf("value: predict: row %d has %d features, the model takes %d: %w", i, len(x), n, ErrModel)
		}
		for _, v := range x {
			batch = append(batch, float32(v))
		}
	}
	return m.runONNX(dst, batch, len(xs))
}

// predictPreparedONNX is PredictPrepared on the ONNX runtime: each row is
// the prepared blueprint's features with the context features of its row
// (FillPrepared's result), all rows in one forward.
func (m *Model) predictPreparedONNX(dst []float64, ps []*Prepared, ctx [][]float64) ([]float64, error) {
	if len(ps) != len(ctx) {
		return nil, fmt.Errorf("value: predict: %d prepared blueprints for %d context rows: %w", len(ps), len(ctx), ErrModel)
	}
	n := len(m.manifest.Features)
	batch := make([]float32, len(ps)*n)
	for i, p := range ps {
		row := batch[i*n : (i+1)*n]
		for j, v := range p.x {
			row[j] = float32(v)
		}
		if len(ctx[i]) != len(m.ctxIdx) {
			return nil, fmt.Errorf("value: predict: context row %d has %d values, want %d: %w", i, len(ctx[i]), len(m.ctxIdx), ErrModel)
		}
		for k, j := range m.ctxIdx {
			row[j] = float32(ctx[i][k])
		}
	}
	return m.runONNX(dst, batch, len(ps))
}

// runONNX runs rows rows of batch and appends the predictions to dst[:0].
func (m *Model) runONNX(dst []float64, batch []float32, rows int) ([]float64, error) {
	dst = dst[:0]
	if rows == 0 {
		return dst, nil
	}
	y, err := m.onnx.Forward(batch, rows)
	if err != nil {
		return nil, fmt.Errorf("value: predict: %w", err)
	}
	for _, v := range y {
		dst = append(dst, float64(v))
	}
	return checkFinite(dst)
}
