package blueprint

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Parameter kinds (ParamSpec.Kind).
const (
	ParamInt  = "int"
	ParamEnum = "enum"
)

// ParamSpec describes one template parameter.
type ParamSpec struct {
	// Name is the parameter's key in Params.
	Name string `json:"name"`
	// Kind is ParamInt or ParamEnum.
	Kind string `json:"kind"`
	// Default is used when the parameter is not given (int64 or string).
	Default any `json:"default"`
	// Min and Max bound an int parameter (inclusive).
	Min int64 `json:"min,omitempty"`
	Max int64 `json:"max,omitempty"`
	// Choices are an enum parameter's allowed values.
	Choices []string `json:"choices,omitempty"`
	// Doc says what the parameter means.
	Doc string `json:"doc"`
}

// Template is a parameterised blueprint family.
type Template struct {
	// Name is the template's name (IR.Template).
	Name string `json:"name"`
	// Description says what the seed computes.
	Description string `json:"description"`
	// Layouts lists the host layouts (Layout* constants) it supports.
	Layouts []string `json:"layouts"`
	// Params describes its parameters.
	Params []ParamSpec `json:"params"`
	// Mergeable is true when its seeds merge into their host's weights: a
	// linear host's weight, or a conv pair's two convs (widen).
	Mergeable bool `json:"mergeable"`

	// build returns the ops and output id for resolved params on a valid,
	// supported host.
	build func(p Params, h Host) ([]Op, string)
}

// Supports reports whether t can attach to host h.
func (t Template) Supports(h Host) bool { return slices.Contains(t.Layouts, h.Layout()) }

// activations are the choices of a template's "activation" parameter: every
// elementwise op that is 0 at 0 (so a zero input stays zero).
var activations = []string{OpReLU, OpGELU, OpSiLU, OpTanh, OpLeakyReLU, OpELU, OpMish, OpHardswish}

// gates are the choices of glu_mlp's "gate": sigmoid (GLU), silu (SwiGLU),
// gelu (GeGLU), relu (ReGLU), tanh.
var gates = []string{OpSiLU, OpSigmoid, OpGELU, OpReLU, OpTanh}

var (
	convLayouts  = []string{LayoutConv1d, LayoutConv2d, LayoutResidual1d, LayoutResidual2d}
	rankParam    = ParamSpec{Name: "rank", Kind: ParamInt, Default: int64(4), Min: 1, Max: 1024, Doc: "rank of the update"}
	kernelParam  = ParamSpec{Name: "kernel", Kind: ParamInt, Default: int64(3), Min: 1, Max: 15, Doc: "depthwise kernel size (the host's own when its parity cannot keep the host's output size)"}
	multiplParam = ParamSpec{Name: "multiplier", Kind: ParamInt, Default: int64(1), Min: 1, Max: 8, Doc: "depthwise channel multiplier: in*multiplier channels between the two convs"}
)

func widthParam(def int64, doc string) ParamSpec {
	return ParamSpec{Name: "width", Kind: ParamInt, Default: def, Min: 1, Max: 8192, Doc: doc}
}

func activationParam() ParamSpec {
	return ParamSpec{Name: "activation", Kind: ParamEnum, Default: OpReLU, Choices: activations, Doc: "elementwise activation between the projections"}
}

var featureLayouts = []string{LayoutLinear, LayoutResidual}

// library is read-only after package initialisation; Templates returns
// copies.
var library = []Template{
	{
		Name:        "residual_mlp",
		Description: "two-layer MLP on the last dim: linear in->width, activation, linear width->out (zero init)",
		Layouts:     featureLayouts,
		Params:      []ParamSpec{widthParam(32, "hidden features"), activationParam()},
		build:       buildResidualMLP,
	},
	{
		Name:        "lowrank",
		Description: "low-rank adapter: linear in->rank and rank->out, no bias, the second zero-initialised; mergeable into a linear host",
		Layouts:     featureLayouts,
		Params:      []ParamSpec{rankParam},
		Mergeable:   true,
		build:       buildLowRank,
	},
	{
		Name:        "linear",
		Description: "full-rank linear in->out, no bias, zero-initialised; mergeable into a linear host",
		Layouts:     featureLayouts,
		Mergeable:   true,
		build:       buildLinear,
	},
	{
		Name: "bottleneck",
		Description: "bottleneck block: on features linear in->width, activation, linear width->width, activation, linear width->out (zero init); " +
			"on images conv1x1 in->width, activation, conv3x3 (host stride), activation, conv1x1 width->out (zero init)",
		Layouts: []string{LayoutLinear, LayoutResidual, LayoutConv2d, LayoutResidual2d},
		Params:  []ParamSpec{widthParam(16, "bottleneck features or channels"), activationParam()},
		build:   buildBottleneck,
	},
	{
		Name:        "norm_mlp",
		Description: "pre-norm MLP: layernorm over in features, linear in->width, activation, linear width->out (zero init)",
		Layouts:     featureLayouts,
		Params:      []ParamSpec{widthParam(32, "hidden features"), activationParam()},
		build:       buildNormMLP,
	},
	{
		Name: "conv3x3",
		Description: "3x3 conv block: conv3x3 in->width with the host's stride, activation, conv3x3 width->out (zero init); " +
			"the first conv takes the host's kernel and padding when a 3x3 kernel cannot reproduce its output size",
		Layouts: []string{LayoutConv2d, LayoutResidual2d},
		Params:  []ParamSpec{widthParam(32, "hidden channels"), activationParam()},
		build:   buildConv3x3,
	},
	{
		Name:        "depthwise",
		Description: "depthwise-separable block: depthwise kxk conv (groups = in, in*multiplier channels, host stride), activation, pointwise conv in*multiplier->out (zero init); conv1d or conv2d",
		Layouts:     convLayouts,
		Params:      []ParamSpec{activationParam(), kernelParam, multiplParam},
		build:       buildDepthwise,
	},
	{
		Name: "se_gate",
		Description: "squeeze-excitation gated 1x1 conv: conv1x1 in->out (host stride, zero init) multiplied by " +
			"sigmoid(conv1x1(relu(conv1x1(avgpool(x))))) with in/reduction hidden channels",
		Layouts: []string{LayoutConv2d, LayoutResidual2d},
		Params:  []ParamSpec{{Name: "reduction", Kind: ParamInt, Default: int64(4), Min: 1, Max: 256, Doc: "channel reduction of the gate's hidden layer"}},
		build:   buildSEGate,
	},
	{
		Name:        "conv1d_block",
		Description: "1-D conv block: conv1d k3 in->width with the host's stride, activation, conv1d k3 width->out (zero init)",
		Layouts:     []string{LayoutConv1d, LayoutResidual1d},
		Params:      []ParamSpec{widthParam(32, "hidden channels"), activationParam()},
		build:       buildConv1dBlock,
	},
	{
		Name: "widen",
		Description: "widens a conv pair: conv in->width with the producer's geometry, the pair's activation, conv width->out " +
			"with the consumer's geometry (no bias, zero init); merges into the producer's output and the consumer's input channels",
		Layouts:   []string{LayoutConv1dPair, LayoutConv2dPair},
		Params:    []ParamSpec{widthParam(16, "channels added between the producer and the consumer")},
		Mergeable: true,
		build:     buildWiden,
	},
	{
		Name:        "attention_head",
		Description: "pre-norm self-attention over tokens (B, T, C): layernorm, multi-head attention with a zero-initialised output projection",
		Layouts:     []string{LayoutResidual},
		Params: []ParamSpec{{Name: "heads", Kind: ParamInt, Default: int64(1), Min: 1, Max: 64, Doc: "attention heads; must divide the host's dim"},
			{Name: "mask", Kind: ParamEnum, Default: "none", Choices: []string{"none", "causal"}, Doc: "causal: each token attends to itself and earlier tokens only"}},
		build: buildAttentionHead,
	},
	{
		Name: "glu_mlp",
		Description: "gated MLP on the last dim: linear in->width (value) times gate(linear in->width), linear width->out (zero init); " +
			"gate silu is SwiGLU, sigmoid GLU, gelu GeGLU",
		Layouts: featureLayouts,
		Params: []ParamSpec{widthParam(32, "hidden features"),
			{Name: "gate", Kind: ParamEnum, Default: OpSiLU, Choices: gates, Doc: "activation of the gate branch"}},
		build: buildGLU,
	},
	{
		Name: "kron_adapter",
		Description: "Kronecker-factorised linear in->out, kron(A, B) x, no bias: A (at most factor x factor) zero-initialised, B the rest; " +
			"factors are the largest divisors of in and out not above factor; mergeable into a linear host",
		Layouts:   featureLayouts,
		Mergeable: true,
		Params:    []ParamSpec{{Name: "factor", Kind: ParamInt, Default: int64(4), Min: 1, Max: 1024, Doc: "largest size of A's sides"}},
		build:     buildKron,
	},
	{
		Name: "lowrank_conv",
		Description: "low-rank conv adapter: conv in->rank with the host's stride (3x3, or the host's kernel when 3x3 cannot keep its output size), " +
			"no bias, then conv1x1 rank->out, no bias, zero-initialised",
		Layouts: convLayouts,
		Params:  []ParamSpec{rankParam},
		build:   buildLowRankConv,
	},
}

// Templates returns the template library, sorted by name. The result is a
// copy the caller may keep.
func Templates() []Template {
	out := make([]Template, len(library))
	for i, t := range library {
		out[i] = t.clone()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup returns the template called name.
func Lookup(name string) (Template, error) {
	for _, t := range library {
		if t.Name == name {
			return t.clone(), nil
		}
	}
	names := make([]string, len(library))
	for i, t := range library {
		names[i] = t.Name
	}
	sort.Strings(names)
	return Template{}, fmt.Errorf("%w: %q is not one of %s", ErrUnknownTemplate, name, strings.Join(names, ", "))
}

func (t Template) clone() Template {
	t.Layouts = slices.Clone(t.Layouts)
	// Never nil: a template without parameters marshals "params": [], as
	// capi/esper.h documents, not null.
	t.Params = append([]ParamSpec{}, t.Params...)
	for i := range t.Params {
		t.Params[i].Choices = slices.Clone(t.Params[i].Choices)
	}
	return t
}

// Resolve checks params against the template's specs and returns a complete
// set: defaults filled in, ints as int64. An unknown name, a wrong type or a
// value out of range is an error naming the parameter.
func (t Template) Resolve(params Params) (Params, error) {
	out := make(Params, len(t.Params))
	for k := range params {
		if !slices.ContainsFunc(t.Params, func(s ParamSpec) bool { return s.Name == k }) {
			names := make([]string, len(t.Params))
			for i, s := range t.Params {
				names[i] = s.Name
			}
			known := "none"
			if len(names) > 0 {
				known = strings.Join(names, ", ")
			}
			return nil, fmt.Errorf("%w: template %q has no parameter %q (known: %s)", ErrParam, t.Name, k, known)
		}
	}
	for _, s := range t.Params {
		v, ok := params[s.Name]
		if !ok {
			out[s.Name] = s.Default
			continue
		}
		switch s.Kind {
		case ParamInt:
			n, isInt := asInt(v)
			if !isInt {
				return nil, fmt.Errorf("%w: template %q parameter %q must be an integer, got %s", ErrParam, t.Name, s.Name, describe(v))
			}
			if n < s.Min || n > s.Max {
				return nil, fmt.Errorf("%w: template %q parameter %q = %d is out of range [%d, %d]", ErrParam, t.Name, s.Name, n, s.Min, s.Max)
			}
			out[s.Name] = n
		case ParamEnum:
			str, isStr := v.(string)
			if !isStr || !slices.Contains(s.Choices, str) {
				return nil, fmt.Errorf("%w: template %q parameter %q must be one of %s, got %s", ErrParam, t.Name, s.Name, strings.Join(s.Choices, ", "), describe(v))
			}
			out[s.Name] = str
		}
	}
	return out, nil
}

// Instantiate builds the template called name with params (missing ones take
// their defaults) for host, and returns the validated IR with ParamCount and
// FLOPsPerSample filled in.
func Instantiate(name string, params Params, host Host) (*IR, error) {
	t, err := Lookup(name)
	if err != nil {
		return nil, err
	}
	return t.Instantiate(params, host)
}

// Instantiate builds t with params for host (see the function Instantiate).
func (t Template) Instantiate(params Params, host Host) (*IR, error) {
	if t.build == nil {
		return nil, fmt.Errorf("%w: %q is not a template of the library (use Lookup)", ErrUnknownTemplate, t.Name)
	}
	if err := host.Validate(); err != nil {
		return nil, err
	}
	if !t.Supports(host) {
		return nil, fmt.Errorf("%w: template %q supports %s hosts, not %s", ErrUnsupportedHost, t.Name, strings.Join(t.Layouts, ", "), host.Layout())
	}
	p, err := t.Resolve(params)
	if err != nil {
		return nil, err
	}
	ops, out := t.build(p, host)
	ir := &IR{Version: Version, Template: t.Name, Params: p, Host: host, Ops: ops, Output: out}
	if err := ir.Complete(); err != nil {
		return nil, fmt.Errorf("template %q with %s on host %s: %w", t.Name, describe(p), describe(host), err)
	}
	return ir, nil
}
