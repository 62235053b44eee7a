package nn

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/safetensors"
)

// ErrSpec is returned for a spec or weights that do not make a network:
// a missing tensor, shapes that do not chain, a non-finite weight, a std
// that is not positive, an unknown activation, or an input of the wrong
// size. [INVALID]
var ErrSpec = errcode.New(errcode.Invalid, "invalid network")

// MaxLayers bounds Spec.Layers.
const MaxLayers = 64

// Activation names, as a spec writes them.
const (
	Identity = "identity"
	ReLU     = "relu"
	Tanh     = "tanh"
	Sigmoid  = "sigmoid"
)

// LayerSpec names one dense layer's tensors and its activation.
type LayerSpec struct {
	// Weight and Bias are tensor names: weight [out, in], bias [out].
	Weight string `json:"weight"`
	Bias   string `json:"bias"`
	// Activation is applied after the affine map: "relu", "tanh",
	// "sigmoid" or "identity" ("" is identity).
	Activation string `json:"activation"`
}

// Spec describes a network stored in a safetensors file. Its JSON names
// are the manifest's (docs/simic.md).
type Spec struct {
	// Layers are applied in order.
	Layers []LayerSpec `json:"layers"`
	// XMean and XStd name optional [in] tensors that normalise the input;
	// both or neither.
	XMean string `json:"x_mean,omitempty"`
	XStd  string `json:"x_std,omitempty"`
	// YMean and YStd name optional [out] tensors that scale the output
	// back (y * y_std + y_mean); both or neither.
	YMean string `json:"y_mean,omitempty"`
	YStd  string `json:"y_std,omitempty"`
}

type layer struct {
	in, out int
	w, b    []float64
	act     func(float64) float64
}

// MLP is a loaded network. It is immutable and safe for concurrent use.
type MLP struct {
	layers       []layer
	xMean, xStd  []float64
	yMean, yStd  []float64
	in, out, max int
}

func activation(name string) (func(float64) float64, error) {
	switch name {
	case "", Identity:
		return nil, nil
	case ReLU:
		return func(v float64) float64 { return math.Max(0, v) }, nil
	case Tanh:
		return math.Tanh, nil
	case Sigmoid:
		return func(v float64) float64 { return 1 / (1 + math.Exp(-v)) }, nil
	}
	return nil, fmt.Errorf("nn: activation %q is not one of identity, relu, tanh, sigmoid: %w", name, ErrSpec)
}

// LoadMLP reads the network that spec describes from the safetensors file
// at path. Errors wrap ErrSpec (or safetensors.ErrInvalid for a malformed
// file) and name the tensor.
func LoadMLP(path string, spec Spec) (*MLP, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nn: load: %w", err)
	}
	m, err := FromFile(f, spec)
	if err != nil {
		return nil, fmt.Errorf("nn: load %s: %w", path, err)
	}
	return m, nil
}

// FromFile builds the network that spec describes from a parsed file.
func FromFile(f *safetensors.File, spec Spec) (*MLP, error) {
	if len(spec.Layers) == 0 || len(spec.Layers) > MaxLayers {
		return nil, fmt.Errorf("nn: %d layers, want 1 to %d: %w", len(spec.Layers), MaxLayers, ErrSpec)
	}
	m := &MLP{}
	for i, ls := range spec.Layers {
		act, err := activation(ls.Activation)
		if err != nil {
			return nil, fmt.Errorf("layers[%d]: %w", i, err)
		}
		w, ws, err := tensor(f, ls.Weight)
		if err != nil {
			return nil, fmt.Errorf("layers[%d] weight: %w", i, err)
		}
		if len(ws) != 2 || ws[0] == 0 || ws[1] == 0 {
			return nil, fmt.Errorf("nn: layers[%d] weight %q has shape %v, want [out, in] with both > 0: %w", i, ls.Weight, ws, ErrSpec)
		}
		out, in := int(ws[0]), int(ws[1])
		if i > 0 && in != m.layers[i-1].out {
			return nil, fmt.Errorf("nn: layers[%d] weight %q takes %d inputs, layers[%d] gives %d: %w", i, ls.Weight, in, i-1, m.layers[i-1].out, ErrSpec)
		}
		b, bs, err := tensor(f, ls.Bias)
		if err != nil {
			return nil, fmt.Errorf("layers[%d] bias: %w", i, err)
		}
		if len(bs) != 1 || int(bs[0]) != out {
			return nil, fmt.Errorf("nn: layers[%d] bias %q has shape %v, want [%d]: %w", i, ls.Bias, bs, out, ErrSpec)
		}
		m.layers = append(m.layers, layer{in: in, out: out, w: w, b: b, act: act})
		m.max = max(m.max, in, out)
	}
	m.in, m.out = m.layers[0].in, m.layers[len(m.layers)-1].out
	var err error
	if m.xMean, m.xStd, err = affine(f, "x", spec.XMean, spec.XStd, m.in); err != nil {
		return nil, err
	}
	if m.yMean, m.yStd, err = affine(f, "y", spec.YMean, spec.YStd, m.out); err != nil {
		return nil, err
	}
	return m, nil
}

// tensor reads a named tensor and checks that every value is finite.
func tensor(f *safetensors.File, name string) ([]float64, []uint64, error) {
	if name == "" {
		return nil, nil, fmt.Errorf("nn: tensor name is empty: %w", ErrSpec)
	}
	v, shape, err := f.Float64s(name)
	if err != nil {
		return nil, nil, fmt.Errorf("nn: %v: %w", err, ErrSpec)
	}
	for i, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, nil, fmt.Errorf("nn: tensor %q holds a non-finite value (%v at flat index %d): %w", name, x, i, ErrSpec)
		}
	}
	return v, shape, nil
}

// affine reads an optional mean/std pair of length n.
func affine(f *safetensors.File, side, meanName, stdName string, n int) (mean, std []float64, err error) {
	if meanName == "" && stdName == "" {
		return nil, nil, nil
	}
	if meanName == "" || stdName == "" {
		return nil, nil, fmt.Errorf("nn: %s_mean and %s_std go together (got %q and %q): %w", side, side, meanName, stdName, ErrSpec)
	}
	for _, p := range []struct {
		name string
		dst  *[]float64
	}{{meanName, &mean}, {stdName, &std}} {
		v, shape, err := tensor(f, p.name)
		if err != nil {
			return nil, nil, fmt.Errorf("%s normalisation: %w", side, err)
		}
		if len(shape) != 1 || int(shape[0]) != n {
			return nil, nil, fmt.Errorf("nn: %s normalisation tensor %q has shape %v, want [%d]: %w", side, p.name, shape, n, ErrSpec)
		}
		*p.dst = v
	}
	for i, s := range std {
		if !(s > 0) {
			return nil, nil, fmt.Errorf("nn: %s_std %q[%d] is %v, must be > 0 (write 1 for a constant feature): %w", side, stdName, i, s, ErrSpec)
		}
	}
	return mean, std, nil
}

// In is the network's input size.
func (m *MLP) In() int { return m.in }

// Out is the network's output size.
func (m *MLP) Out() int { return m.out }

// Forward64 runs the network on x (len In) in float64 and writes Out
// values to dst (grown as needed), which it returns. A non-finite input
// is allowed and propagates.
func (m *MLP) Forward64(dst, x []float64) ([]float64, error) {
	if len(x) != m.in {
		return nil, fmt.Errorf("nn: forward: input has %d values, the network takes %d: %w", len(x), m.in, ErrSpec)
	}
	a := make([]float64, m.max)
	b := make([]float64, m.max)
	copy(a, x)
	for i := range m.in {
		if m.xStd != nil {
			a[i] = (a[i] - m.xMean[i]) / m.xStd[i]
		}
	}
	for _, l := range m.layers {
		for o := range l.out {
			s := l.b[o]
			row := l.w[o*l.in : (o+1)*l.in]
			for j, w := range row {
				s += w * a[j]
			}
			if l.act != nil {
				s = l.act(s)
			}
			b[o] = s
		}
		a, b = b, a
	}
	dst = append(dst[:0], a[:m.out]...)
	if m.yStd != nil {
		for i := range dst {
			dst[i] = dst[i]*m.yStd[i] + m.yMean[i]
		}
	}
	return dst, nil
}

// Forward runs the network on one input row (len In) and returns Out
// values, rounded to float32 once at the end.
func (m *MLP) Forward(x []float32) ([]float32, error) {
	in := make([]float64, len(x))
	for i, v := range x {
		in[i] = float64(v)
	}
	y, err := m.Forward64(nil, in)
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(y))
	for i, v := range y {
		out[i] = float32(v)
	}
	return out, nil
}

// ForwardBatch runs Forward on each row of xs; an error names the row.
func (m *MLP) ForwardBatch(xs [][]float32) ([][]float32, error) {
	out := make([][]float32, len(xs))
	for i, x := range xs {
		y, err := m.Forward(x)
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", i, err)
		}
		out[i] = y
	}
	return out, nil
}

// ForwardBatch64 runs the network on n rows at once (xs[i] of len In,
// each) and writes their n x Out outputs to dst (grown as needed, row
// major), which it returns. Each layer is one matrix product (gonum's
// Dgemm, assembly kernels on amd64), so many rows cost far less than n
// Forward64 calls; results equal Forward64's up to float64 rounding order.
func (m *MLP) ForwardBatch64(dst []float64, xs [][]float64) ([]float64, error) {
	n := len(xs)
	if n == 0 {
		return dst[:0], nil
	}
	a := make([]float64, n*m.max)
	b := make([]float64, n*m.max)
	for r, x := range xs {
		if len(x) != m.in {
			return nil, fmt.Errorf("nn: forward: row %d has %d values, the network takes %d: %w", r, len(x), m.in, ErrSpec)
		}
		row := a[r*m.in : (r+1)*m.in]
		copy(row, x)
		if m.xStd != nil {
			for i := range row {
				row[i] = (row[i] - m.xMean[i]) / m.xStd[i]
			}
		}
	}
	return m.layersBatch(dst, a, b, n, 0), nil
}

// layersBatch runs layers[from:] on n rows held in a (row major, the
// first of them taking layers[from].in values), using b as the other
// buffer (both n x max long), scales the output and appends it to dst[:0].
func (m *MLP) layersBatch(dst, a, b []float64, n, from int) []float64 {
	impl := gonum.Implementation{}
	for _, l := range m.layers[from:] {
		out := b[:n*l.out]
		for r := range n {
			copy(out[r*l.out:(r+1)*l.out], l.b)
		}
		// out (n x l.out) += a (n x l.in) . W^T (W is l.out x l.in).
		impl.Dgemm(blas.NoTrans, blas.Trans, n, l.out, l.in, 1, a[:n*l.in], l.in, l.w, l.in, 1, out, l.out)
		if l.act != nil {
			for i, v := range out {
				out[i] = l.act(v)
			}
		}
		a, b = b, a
	}
	return m.scaleOut(append(dst[:0], a[:n*m.out]...))
}

// scaleOut applies the output scaling to rows of Out values.
func (m *MLP) scaleOut(y []float64) []float64 {
	if m.yStd != nil {
		for i := range y {
			o := i % m.out
			y[i] = y[i]*m.yStd[o] + m.yMean[o]
		}
	}
	return y
}
