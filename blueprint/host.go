package blueprint

import (
	"fmt"
	"slices"
	"strings"
)

// Host kinds (Host.Kind).
const (
	// HostLinear is an nn.Linear: features In -> Out on the last dim.
	HostLinear = "linear"
	// HostBlock is any module mapping (*, In) to (*, Out), such as a whole
	// MLP. Seeds see it exactly as a linear host (layout LayoutLinear); it
	// is never merged into a weight, only kept as a residual branch.
	HostBlock = "block"
	// HostConv1d is an nn.Conv1d: (N, In, L) -> (N, Out, L').
	HostConv1d = "conv1d"
	// HostConv2d is an nn.Conv2d: (N, In, H, W) -> (N, Out, H', W').
	HostConv2d = "conv2d"
	// HostResidual is any module whose output has its input's shape, with Dim
	// features on the last dim, or Dim channels when Spatial is given.
	HostResidual = "residual"
	// HostConv1dPair is a conv pair of 1-D convs: a producer nn.Conv1d (In ->
	// Mid channels), an elementwise Activation, and the nn.Conv1d consuming
	// its channels (Mid -> Out). Its seeds widen the pair: they add output
	// channels to the producer and the matching input channels to the
	// consumer (template "widen"), and nothing else.
	HostConv1dPair = "conv1d_pair"
	// HostConv2dPair is HostConv1dPair with nn.Conv2d layers.
	HostConv2dPair = "conv2d_pair"
)

// Activations a conv pair may have between its convs (Host.Activation):
// ActIdentity (none) or one of the elementwise ops.
const ActIdentity = "identity"

var pairActivations = []string{ActIdentity, OpReLU, OpGELU, OpSiLU, OpTanh, OpSigmoid}

// Host layouts (Host.Layout), the unit templates declare support for.
const (
	LayoutLinear     = "linear"      // (*, In) -> (*, Out)
	LayoutConv1d     = "conv1d"      // (N, In, L) -> (N, Out, L')
	LayoutConv2d     = "conv2d"      // (N, In, H, W) -> (N, Out, H', W')
	LayoutResidual   = "residual"    // (*, Dim) -> (*, Dim), e.g. tokens (B, T, C)
	LayoutResidual1d = "residual_1d" // (N, Dim, L) -> (N, Dim, L)
	LayoutResidual2d = "residual_2d" // (N, Dim, H, W) -> (N, Dim, H, W)
	LayoutConv1dPair = "conv1d_pair" // (N, In, L) -> (N, Mid, L') -> (N, Out, L'')
	LayoutConv2dPair = "conv2d_pair" // (N, In, H, W) -> (N, Mid, H', W') -> (N, Out, H'', W'')
)

// DefaultExtent is the spatial extent FLOPs are evaluated at when a
// spatial host does not give Host.Spatial.
const DefaultExtent = 32

// maxExtent bounds every size in a host description.
const maxExtent = 1 << 24

// Host describes the layer a seed attaches to (docs/internals.md). Fields
// that do not apply to Kind must be zero.
type Host struct {
	// Kind is one of HostLinear, HostBlock, HostConv1d, HostConv2d,
	// HostResidual, HostConv1dPair, HostConv2dPair.
	Kind string `json:"kind"`
	// In and Out are features (linear) or channels (conv); for a conv pair,
	// the producer's input and the consumer's output channels.
	In  int64 `json:"in,omitempty"`
	Out int64 `json:"out,omitempty"`
	// Mid is a conv pair's channels between its convs: the producer's output,
	// the consumer's input.
	Mid int64 `json:"mid,omitempty"`
	// Kernel, Stride and Padding are the conv host's geometry (square), the
	// producer's for a conv pair. Stride must be >= 1 for conv hosts.
	Kernel  int64 `json:"kernel,omitempty"`
	Stride  int64 `json:"stride,omitempty"`
	Padding int64 `json:"padding,omitempty"`
	// ConsumerKernel, ConsumerStride and ConsumerPadding are a conv pair's
	// consumer geometry (square).
	ConsumerKernel  int64 `json:"consumer_kernel,omitempty"`
	ConsumerStride  int64 `json:"consumer_stride,omitempty"`
	ConsumerPadding int64 `json:"consumer_padding,omitempty"`
	// Activation is the elementwise op between a conv pair's convs:
	// ActIdentity or one of relu, gelu, silu, tanh, sigmoid.
	Activation string `json:"activation,omitempty"`
	// Dim is the residual host's feature or channel count.
	Dim int64 `json:"dim,omitempty"`
	// Spatial optionally gives the input's spatial extents: [L] for conv1d,
	// [H, W] for conv2d. For a residual host it selects a channel-first
	// layout, (N, Dim, L) or (N, Dim, H, W); without it the residual host has
	// Dim features on the last dim. Shapes are checked for every size; the
	// extents are used for FLOPs (DefaultExtent when absent).
	Spatial []int64 `json:"spatial,omitempty"`
}

// spatialDims returns the number of spatial dims of h's input.
func (h Host) spatialDims() int {
	switch h.Kind {
	case HostConv1d, HostConv1dPair:
		return 1
	case HostConv2d, HostConv2dPair:
		return 2
	case HostResidual:
		return len(h.Spatial)
	}
	return 0
}

// IsPair reports whether h is a conv pair (HostConv1dPair, HostConv2dPair).
func (h Host) IsPair() bool { return h.Kind == HostConv1dPair || h.Kind == HostConv2dPair }

// symbols returns the spatial symbols of h's input, in order.
func (h Host) symbols() []string {
	switch h.spatialDims() {
	case 1:
		return []string{"L"}
	case 2:
		return []string{"H", "W"}
	}
	return nil
}

// Layout returns the host's layout (one of the Layout* constants), or ""
// when the host is invalid.
func (h Host) Layout() string {
	switch h.Kind {
	case HostLinear, HostBlock:
		return LayoutLinear
	case HostConv1d:
		return LayoutConv1d
	case HostConv2d:
		return LayoutConv2d
	case HostConv1dPair:
		return LayoutConv1dPair
	case HostConv2dPair:
		return LayoutConv2dPair
	case HostResidual:
		switch len(h.Spatial) {
		case 0:
			return LayoutResidual
		case 1:
			return LayoutResidual1d
		case 2:
			return LayoutResidual2d
		}
	}
	return ""
}

// Validate checks the host description.
func (h Host) Validate() error {
	var bad []string
	need := func(name string, v, lo int64) {
		if v < lo || v > maxExtent {
			bad = append(bad, fmt.Sprintf("%s = %d must be in [%d, %d]", name, v, lo, maxExtent))
		}
	}
	none := func(name string, v int64) {
		if v != 0 {
			bad = append(bad, fmt.Sprintf("%s host has no field %s (got %d)", h.Kind, name, v))
		}
	}
	if !h.IsPair() {
		none("mid", h.Mid)
		none("consumer_kernel", h.ConsumerKernel)
		none("consumer_stride", h.ConsumerStride)
		none("consumer_padding", h.ConsumerPadding)
		if h.Activation != "" {
			bad = append(bad, fmt.Sprintf("%s host has no field activation (got %q)", h.Kind, h.Activation))
		}
	}
	switch h.Kind {
	case HostLinear, HostBlock:
		need("in", h.In, 1)
		need("out", h.Out, 1)
		none("kernel", h.Kernel)
		none("stride", h.Stride)
		none("padding", h.Padding)
		none("dim", h.Dim)
		if len(h.Spatial) > 0 {
			bad = append(bad, h.Kind+" host has no field spatial")
		}
	case HostConv1d, HostConv2d:
		need("in", h.In, 1)
		need("out", h.Out, 1)
		need("kernel", h.Kernel, 1)
		need("stride", h.Stride, 1)
		need("padding", h.Padding, 0)
		none("dim", h.Dim)
		if len(h.Spatial) != 0 && len(h.Spatial) != h.spatialDims() {
			bad = append(bad, fmt.Sprintf("%s host spatial must have %d extents, got %d", h.Kind, h.spatialDims(), len(h.Spatial)))
		}
	case HostConv1dPair, HostConv2dPair:
		need("in", h.In, 1)
		need("mid", h.Mid, 1)
		need("out", h.Out, 1)
		need("kernel", h.Kernel, 1)
		need("stride", h.Stride, 1)
		need("padding", h.Padding, 0)
		need("consumer_kernel", h.ConsumerKernel, 1)
		need("consumer_stride", h.ConsumerStride, 1)
		need("consumer_padding", h.ConsumerPadding, 0)
		none("dim", h.Dim)
		if !slices.Contains(pairActivations, h.Activation) {
			bad = append(bad, fmt.Sprintf("%s host activation %q is not one of %s", h.Kind, h.Activation, strings.Join(pairActivations, ", ")))
		}
		if len(h.Spatial) != 0 && len(h.Spatial) != h.spatialDims() {
			bad = append(bad, fmt.Sprintf("%s host spatial must have %d extents, got %d", h.Kind, h.spatialDims(), len(h.Spatial)))
		}
	case HostResidual:
		need("dim", h.Dim, 1)
		none("in", h.In)
		none("out", h.Out)
		none("kernel", h.Kernel)
		none("stride", h.Stride)
		none("padding", h.Padding)
		if len(h.Spatial) > 2 {
			bad = append(bad, fmt.Sprintf("residual host spatial has at most 2 extents, got %d", len(h.Spatial)))
		}
	default:
		return fmt.Errorf("%w: kind %q is not one of linear, block, conv1d, conv2d, residual, conv1d_pair, conv2d_pair", ErrHost, h.Kind)
	}
	for i, e := range h.Spatial {
		need(fmt.Sprintf("spatial[%d]", i), e, 1)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrHost, strings.Join(bad, "; "))
	}
	if h.Kind == HostConv1d || h.Kind == HostConv2d || h.IsPair() {
		for i, e := range h.Spatial {
			if e+2*h.Padding < h.Kernel {
				return fmt.Errorf("%w: spatial[%d] = %d is smaller than kernel %d with padding %d", ErrHost, i, e, h.Kernel, h.Padding)
			}
			if !h.IsPair() {
				continue
			}
			if m := (e+2*h.Padding-h.Kernel)/h.Stride + 1; m+2*h.ConsumerPadding < h.ConsumerKernel {
				return fmt.Errorf("%w: spatial[%d] = %d gives the consumer an extent %d, smaller than its kernel %d with padding %d",
					ErrHost, i, e, m, h.ConsumerKernel, h.ConsumerPadding)
			}
		}
	}
	return nil
}

// InputShape returns the symbolic shape of the host's input (and so of the
// seed's input "x"). The host must be valid.
func (h Host) InputShape() Shape {
	switch h.Kind {
	case HostLinear, HostBlock:
		return Shape{Leading: true, Dims: []Dim{Known(h.In)}}
	case HostConv1d, HostConv2d, HostConv1dPair, HostConv2dPair:
		return h.channelFirst(h.In)
	default:
		if len(h.Spatial) == 0 {
			return Shape{Leading: true, Dims: []Dim{Known(h.Dim)}}
		}
		return h.channelFirst(h.Dim)
	}
}

// OutputShape returns the symbolic shape the host (and so the seed) must
// produce. The host must be valid.
func (h Host) OutputShape() Shape {
	switch h.Kind {
	case HostLinear, HostBlock:
		return Shape{Leading: true, Dims: []Dim{Known(h.Out)}}
	case HostConv1d, HostConv2d:
		s := h.channelFirst(h.Out)
		for i := 2; i < len(s.Dims); i++ {
			// Symbolic dims never fail to convolve.
			s.Dims[i], _ = s.Dims[i].conv(h.Kernel, h.Stride, h.Padding)
		}
		return s
	case HostConv1dPair, HostConv2dPair:
		s := h.channelFirst(h.Out)
		for i := 2; i < len(s.Dims); i++ {
			s.Dims[i], _ = s.Dims[i].conv(h.Kernel, h.Stride, h.Padding)
			s.Dims[i], _ = s.Dims[i].conv(h.ConsumerKernel, h.ConsumerStride, h.ConsumerPadding)
		}
		return s
	default:
		return h.InputShape()
	}
}

func (h Host) channelFirst(c int64) Shape {
	dims := []Dim{Symbol(SymBatch), Known(c)}
	for _, s := range h.symbols() {
		dims = append(dims, Symbol(s))
	}
	return Shape{Dims: dims}
}

// extents returns the values symbolic dims are evaluated at for FLOPs.
func (h Host) extents() map[string]int64 {
	ext := map[string]int64{SymBatch: 1}
	for i, s := range h.symbols() {
		ext[s] = DefaultExtent
		if i < len(h.Spatial) {
			ext[s] = h.Spatial[i]
		}
	}
	return ext
}

// channels returns the host's (in, out) features or channels.
func (h Host) channels() (in, out int64) {
	if h.Kind == HostResidual {
		return h.Dim, h.Dim
	}
	return h.In, h.Out
}

// geometry returns the host's (kernel, stride, padding); a residual host
// keeps sizes, like a 1x1 conv with stride 1.
func (h Host) geometry() (k, s, p int64) {
	if h.Kind == HostResidual {
		return 1, 1, 0
	}
	return h.Kernel, h.Stride, h.Padding
}

// matchKernel returns the kernel and padding of a conv with kernel k and the
// host's stride whose output size equals the host's for every input size:
// (k, p) when k + 2*host_padding - host_kernel is even and non-negative,
// otherwise the host's own kernel and padding.
func (h Host) matchKernel(k int64) (kernel, padding int64) {
	hk, _, hp := h.geometry()
	if twoP := k + 2*hp - hk; twoP >= 0 && twoP%2 == 0 {
		return k, twoP / 2
	}
	return hk, hp
}
