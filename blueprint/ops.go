package blueprint

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
)

// Op names: the fixed table Tezzeret trusts (docs/internals.md).
const (
	OpLinear    = "linear"
	OpConv1d    = "conv1d"
	OpConv2d    = "conv2d"
	OpLayerNorm = "layernorm"
	OpGroupNorm = "groupnorm"
	OpReLU      = "relu"
	OpGELU      = "gelu"
	OpSiLU      = "silu"
	OpTanh      = "tanh"
	OpSigmoid   = "sigmoid"
	OpAdd       = "add"
	OpMul       = "mul"
	OpAvgPool   = "avgpool_spatial"
	OpAttention = "attention"
	// Activations added for the template "activation" choice; each is 0 at 0.
	OpLeakyReLU = "leaky_relu"
	OpELU       = "elu"
	OpMish      = "mish"
	OpHardswish = "hardswish"
	// OpKron is a Kronecker-factorised linear map (ops_factor.go).
	OpKron = "kron_linear"
)

// Values of the "init" attribute.
const (
	// InitDefault is PyTorch's default initialisation.
	InitDefault = "default"
	// InitZero zeroes the op's weight and bias.
	InitZero = "zero"
)

// maxAttrValue bounds integer attributes.
const maxAttrValue = maxExtent

// attrType is the type of an op attribute.
type attrType int

const (
	attrPos    attrType = iota // integer >= 1
	attrNonNeg                 // integer >= 0
	attrBool                   // true or false
	attrInit                   // "default" or "zero"
)

func (t attrType) String() string {
	switch t {
	case attrPos:
		return "an integer >= 1"
	case attrNonNeg:
		return "an integer >= 0"
	case attrBool:
		return "true or false"
	default:
		return `"default" or "zero"`
	}
}

type attrSpec struct {
	name     string
	typ      attrType
	optional bool
	// def is an optional attribute's value when absent (a bool or a
	// string); Canonical leaves out attributes equal to it.
	def any
}

// cost is what one op adds: trainable parameters and FLOPs per sample.
type cost struct {
	params, flops int64
}

// opSpec is one entry of the op table.
type opSpec struct {
	arity int
	attrs []attrSpec
	// infer returns the output shape and cost for validated attrs a and
	// input shapes in; ext holds the extents FLOPs are evaluated at.
	infer func(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error)
	// zero reports whether the output is exactly zero at initialisation,
	// given which inputs are.
	zero func(a attrs, inZero []bool) bool
}

var (
	initAttr   = attrSpec{name: "init", typ: attrInit, optional: true, def: InitDefault}
	causalAttr = attrSpec{name: "causal", typ: attrBool, optional: true, def: false}
	convAttr   = []attrSpec{{name: "in", typ: attrPos}, {name: "out", typ: attrPos}, {name: "kernel", typ: attrPos},
		{name: "stride", typ: attrPos}, {name: "padding", typ: attrNonNeg}, {name: "groups", typ: attrPos},
		{name: "bias", typ: attrBool}, initAttr}
)

// opTable is read-only after package initialisation.
var opTable = map[string]*opSpec{
	OpLinear: {arity: 1, attrs: []attrSpec{{name: "in", typ: attrPos}, {name: "out", typ: attrPos}, {name: "bias", typ: attrBool}, initAttr},
		infer: inferLinear, zero: zeroAffine},
	OpConv1d:    {arity: 1, attrs: convAttr, infer: inferConv(1), zero: zeroAffine},
	OpConv2d:    {arity: 1, attrs: convAttr, infer: inferConv(2), zero: zeroAffine},
	OpLayerNorm: {arity: 1, attrs: []attrSpec{{name: "dim", typ: attrPos}}, infer: inferLayerNorm, zero: zeroIfInput},
	OpGroupNorm: {arity: 1, attrs: []attrSpec{{name: "groups", typ: attrPos}, {name: "channels", typ: attrPos}}, infer: inferGroupNorm, zero: zeroIfInput},
	OpReLU:      {arity: 1, infer: inferElementwise(1), zero: zeroIfInput},
	OpGELU:      {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpSiLU:      {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpTanh:      {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpSigmoid:   {arity: 1, infer: inferElementwise(4), zero: func(attrs, []bool) bool { return false }},
	OpAdd:       {arity: 2, infer: inferBroadcast, zero: func(_ attrs, z []bool) bool { return z[0] && z[1] }},
	OpMul:       {arity: 2, infer: inferBroadcast, zero: func(_ attrs, z []bool) bool { return z[0] || z[1] }},
	OpAvgPool:   {arity: 1, infer: inferAvgPool, zero: zeroIfInput},
	OpAttention: {arity: 1, attrs: []attrSpec{{name: "dim", typ: attrPos}, {name: "heads", typ: attrPos}, causalAttr, initAttr},
		infer: inferAttention, zero: func(a attrs, _ []bool) bool { return a.str("init") == InitZero }},
	OpLeakyReLU: {arity: 1, infer: inferElementwise(2), zero: zeroIfInput},
	OpELU:       {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpMish:      {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpHardswish: {arity: 1, infer: inferElementwise(4), zero: zeroIfInput},
	OpKron: {arity: 1, attrs: []attrSpec{{name: "in", typ: attrPos}, {name: "out", typ: attrPos},
		{name: "in_factor", typ: attrPos}, {name: "out_factor", typ: attrPos}, initAttr},
		infer: inferKron, zero: func(a attrs, z []bool) bool { return a.str("init") == InitZero || z[0] }},
}

// OpNames returns the names of every op in the table, sorted.
func OpNames() []string {
	names := make([]string, 0, len(opTable))
	for n := range opTable {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// attrs reads the attributes of an op whose attrs were validated.
type attrs Attrs

func (a attrs) int(name string) int64 {
	n, _ := asInt(a[name])
	return n
}

func (a attrs) bool(name string) bool {
	b, _ := a[name].(bool)
	return b
}

func (a attrs) str(name string) string {
	s, _ := a[name].(string)
	if s == "" && name == "init" {
		return InitDefault
	}
	return s
}

// asInt converts the integer forms an attribute or parameter may hold (Go
// integers, json.Number, integral float64) to int64.
func asInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case json.Number:
		if i, err := n.Int64(); err == nil {
			return i, true
		}
		f, err := n.Float64()
		if err != nil {
			return 0, false
		}
		return asInt(f)
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), true
		}
	}
	return 0, false
}

// validateAttrs checks op.Attrs against spec.
func validateAttrs(op *Op, spec *opSpec) error {
	known := make(map[string]*attrSpec, len(spec.attrs))
	for i := range spec.attrs {
		known[spec.attrs[i].name] = &spec.attrs[i]
	}
	keys := make([]string, 0, len(op.Attrs))
	for k := range op.Attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		as, ok := known[k]
		if !ok {
			names := make([]string, 0, len(spec.attrs))
			for _, s := range spec.attrs {
				names = append(names, s.name)
			}
			list := "none"
			if len(names) > 0 {
				list = strings.Join(names, ", ")
			}
			return fmt.Errorf("%w: op %q (%s): unknown attribute %q (known: %s)", ErrAttr, op.ID, op.Op, k, list)
		}
		if !attrValueOK(as.typ, op.Attrs[k]) {
			return fmt.Errorf("%w: op %q (%s): attribute %q must be %v, got %s", ErrAttr, op.ID, op.Op, k, as.typ, describe(op.Attrs[k]))
		}
	}
	for _, s := range spec.attrs {
		if _, ok := op.Attrs[s.name]; !ok && !s.optional {
			return fmt.Errorf("%w: op %q (%s): missing attribute %q (%v)", ErrAttr, op.ID, op.Op, s.name, s.typ)
		}
	}
	return nil
}

func attrValueOK(t attrType, v any) bool {
	switch t {
	case attrPos, attrNonNeg:
		n, ok := asInt(v)
		lo := int64(1)
		if t == attrNonNeg {
			lo = 0
		}
		return ok && n >= lo && n <= maxAttrValue
	case attrBool:
		_, ok := v.(bool)
		return ok
	default:
		s, ok := v.(string)
		return ok && (s == InitDefault || s == InitZero)
	}
}

func describe(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

// opErr is an error of one op's inference; the caller names the op.
type opErr struct {
	kind error // ErrShape or ErrAttr
	msg  string
}

func (e *opErr) Error() string { return e.msg }

func shapeErr(format string, args ...any) error {
	return &opErr{kind: ErrShape, msg: fmt.Sprintf(format, args...)}
}

func attrErr(format string, args ...any) error {
	return &opErr{kind: ErrAttr, msg: fmt.Sprintf(format, args...)}
}

func zeroAffine(a attrs, inZero []bool) bool {
	return a.str("init") == InitZero || (inZero[0] && !a.bool("bias"))
}

func zeroIfInput(_ attrs, inZero []bool) bool { return inZero[0] }

func inferLinear(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x, nIn, nOut := in[0], a.int("in"), a.int("out")
	if len(x.Dims) == 0 || x.last() != Known(nIn) {
		return Shape{}, cost{}, shapeErr("expects %d features on the last dim, input is %v", nIn, x)
	}
	rows := x.elements(ext) / nIn
	perRow := satMul(2, satMul(nIn, nOut))
	params := satMul(nIn, nOut)
	if a.bool("bias") {
		perRow = satAdd(perRow, nOut)
		params = satAdd(params, nOut)
	}
	return x.with(len(x.Dims)-1, Known(nOut)), cost{params: params, flops: satMul(rows, perRow)}, nil
}

func inferConv(nd int) func(attrs, []Shape, map[string]int64) (Shape, cost, error) {
	return func(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
		x := in[0]
		cIn, cOut, groups := a.int("in"), a.int("out"), a.int("groups")
		k, s, p := a.int("kernel"), a.int("stride"), a.int("padding")
		if !x.channelFirst(nd) {
			return Shape{}, cost{}, shapeErr("expects a channel-first input with %d spatial dims, (N, C%s), input is %v", nd, strings.Repeat(", _", nd), x)
		}
		if x.Dims[1] != Known(cIn) {
			return Shape{}, cost{}, shapeErr("expects %d input channels, input is %v", cIn, x)
		}
		if cIn%groups != 0 || cOut%groups != 0 {
			return Shape{}, cost{}, attrErr("in %d and out %d must both be divisible by groups %d", cIn, cOut, groups)
		}
		out := x.with(1, Known(cOut))
		positions := int64(1)
		for i := 2; i < len(out.Dims); i++ {
			d, err := out.Dims[i].conv(k, s, p)
			if err != nil {
				return Shape{}, cost{}, shapeErr("%v", err)
			}
			if d.eval(ext) < 1 {
				return Shape{}, cost{}, shapeErr("spatial dim %d collapses to %d at extent %v", i, d.eval(ext), ext)
			}
			out.Dims[i] = d
			positions = satMul(positions, d.eval(ext))
		}
		window := satMul(cIn/groups, k)
		for i := 1; i < nd; i++ {
			window = satMul(window, k)
		}
		params := satMul(cOut, window)
		perPos := satMul(2, params)
		if a.bool("bias") {
			params = satAdd(params, cOut)
			perPos = satAdd(perPos, cOut)
		}
		return out, cost{params: params, flops: satMul(positions, perPos)}, nil
	}
}

func inferLayerNorm(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x, dim := in[0], a.int("dim")
	if len(x.Dims) == 0 || x.last() != Known(dim) {
		return Shape{}, cost{}, shapeErr("normalises %d features on the last dim, input is %v", dim, x)
	}
	return x, cost{params: 2 * dim, flops: satMul(5, x.elements(ext))}, nil
}

func inferGroupNorm(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x, groups, channels := in[0], a.int("groups"), a.int("channels")
	if x.Leading || len(x.Dims) < 2 || x.Dims[0] != Symbol(SymBatch) || x.Dims[1] != Known(channels) {
		return Shape{}, cost{}, shapeErr("normalises %d channels on dim 1 of (N, C, ...), input is %v", channels, x)
	}
	if channels%groups != 0 {
		return Shape{}, cost{}, attrErr("channels %d must be divisible by groups %d", channels, groups)
	}
	return x, cost{params: 2 * channels, flops: satMul(5, x.elements(ext))}, nil
}

func inferElementwise(flopsPerElem int64) func(attrs, []Shape, map[string]int64) (Shape, cost, error) {
	return func(_ attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
		return in[0], cost{flops: satMul(flopsPerElem, in[0].elements(ext))}, nil
	}
}

func inferBroadcast(_ attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	out, err := broadcast(in[0], in[1])
	if err != nil {
		return Shape{}, cost{}, shapeErr("%v", err)
	}
	return out, cost{flops: out.elements(ext)}, nil
}

func inferAvgPool(_ attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x := in[0]
	if x.Leading || len(x.Dims) < 3 || x.Dims[0] != Symbol(SymBatch) {
		return Shape{}, cost{}, shapeErr("expects a channel-first input (N, C, spatial...), input is %v", x)
	}
	out := Shape{Dims: append([]Dim(nil), x.Dims...)}
	for i := 2; i < len(out.Dims); i++ {
		out.Dims[i] = Known(1)
	}
	return out, cost{flops: x.elements(ext)}, nil
}

func inferAttention(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x, dim, heads := in[0], a.int("dim"), a.int("heads")
	if len(x.Dims) == 0 || x.last() != Known(dim) || (!x.Leading && len(x.Dims) != 3) {
		return Shape{}, cost{}, shapeErr("expects tokens (B, T, %d), input is %v", dim, x)
	}
	if dim%heads != 0 {
		return Shape{}, cost{}, attrErr("dim %d must be divisible by heads %d", dim, heads)
	}
	// Four projections (q, k, v, out) with bias, as nn.MultiheadAttention.
	proj := satMul(dim, dim)
	params := satAdd(satMul(4, proj), 4*dim)
	rows := x.elements(ext) / dim
	return x, cost{params: params, flops: satMul(rows, satAdd(satMul(8, proj), 4*dim))}, nil
}
