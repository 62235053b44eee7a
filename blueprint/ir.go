package blueprint

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/esper-morph/esper/blueprint/canon"
)

// Version is the IR schema version this package reads and writes.
const Version = 1

// Limits on IR documents.
const (
	// MaxIRBytes is the largest IR document Parse accepts.
	MaxIRBytes = 1 << 20
	// MaxOps is the largest number of ops in one IR.
	MaxOps = 256
	// maxName is the longest op id, template name or parameter name.
	maxName = 64
	// maxParamString is the longest string parameter value.
	maxParamString = 64
)

// InputName is the name ops use for the seed's input (the host's input).
const InputName = "x"

// IR is a blueprint: a small graph of typed ops (docs/internals.md).
type IR struct {
	// Version is the schema version; it must be Version.
	Version int `json:"version"`
	// Template names the template the IR came from ("" for a hand-written IR).
	Template string `json:"template,omitempty"`
	// Params are the template parameters the IR was built with.
	Params Params `json:"params,omitempty"`
	// Host is the layer the seed attaches to.
	Host Host `json:"host"`
	// Ops are the graph's nodes, in any order.
	Ops []Op `json:"ops"`
	// Output is the id of the op whose result is the seed's output.
	Output string `json:"output"`
	// ParamCount is the number of trainable parameters, computed by Karn.
	ParamCount int64 `json:"param_count"`
	// FLOPsPerSample is the forward cost of one sample, computed by Karn.
	FLOPsPerSample int64 `json:"flops_per_sample"`
}

// Op is one node of the graph.
type Op struct {
	// ID names the op's result; other ops refer to it in Inputs.
	ID string `json:"id"`
	// Op is the op's name in the op table (OpLinear, ...).
	Op string `json:"op"`
	// Inputs are op ids or InputName.
	Inputs []string `json:"inputs"`
	// Attrs are the op's attributes (see the op table).
	Attrs Attrs `json:"attrs,omitempty"`
}

// Attrs are op attributes. Values are int64, bool or string after Parse;
// Go code may also use int.
type Attrs map[string]any

// Params are template parameters. Values are int64, bool or string after
// Parse; Go code may also use int.
type Params map[string]any

// Clone returns a deep copy of ir.
func (ir *IR) Clone() *IR {
	c := *ir
	c.Params = maps.Clone(ir.Params)
	c.Host.Spatial = slices.Clone(ir.Host.Spatial)
	c.Ops = make([]Op, len(ir.Ops))
	for i, op := range ir.Ops {
		op.Inputs = slices.Clone(op.Inputs)
		op.Attrs = maps.Clone(op.Attrs)
		c.Ops[i] = op
	}
	return &c
}

// Parse decodes an IR document strictly (unknown fields, duplicate keys,
// wrong types, trailing data and documents over MaxIRBytes are refused),
// validates it against its own host and fills ParamCount and
// FLOPsPerSample. A non-zero count in the document must equal the computed
// one.
func Parse(data []byte) (*IR, error) {
	var ir IR
	if err := decodeDoc(data, MaxIRBytes, "IR", &ir); err != nil {
		return nil, err
	}
	if err := ir.normalize(); err != nil {
		return nil, err
	}
	if err := ir.Complete(); err != nil {
		return nil, err
	}
	return &ir, nil
}

// normalize converts decoded attribute and parameter values to int64, bool
// or string, refusing anything else.
func (ir *IR) normalize() error {
	if err := normalizeValues(ir.Params, func(k string) string { return fmt.Sprintf("params.%s", k) }); err != nil {
		return err
	}
	for i := range ir.Ops {
		op := &ir.Ops[i]
		if err := normalizeValues(op.Attrs, func(k string) string { return fmt.Sprintf("op %q attribute %q", op.ID, k) }); err != nil {
			return err
		}
	}
	return nil
}

func normalizeValues(m map[string]any, name func(string) string) error {
	for k, v := range m {
		switch x := v.(type) {
		case json.Number:
			n, ok := asInt(x)
			if !ok {
				return fmt.Errorf("%w: %s must be an integer, got %s", ErrInvalid, name(k), x)
			}
			m[k] = n
		case string, bool:
		default:
			return fmt.Errorf("%w: %s must be an integer, string or boolean, got %s", ErrInvalid, name(k), describe(v))
		}
	}
	return nil
}

// Validate checks ir against its own host (see the package documentation
// for what valid means). A non-zero ParamCount or FLOPsPerSample must equal
// the computed value.
func (ir *IR) Validate() error {
	_, err := ir.check()
	return err
}

// Complete validates ir and fills ParamCount and FLOPsPerSample.
func (ir *IR) Complete() error {
	a, err := ir.check()
	if err != nil {
		return err
	}
	ir.ParamCount, ir.FLOPsPerSample = a.ParamCount, a.FLOPsPerSample
	return nil
}

func (ir *IR) check() (*Analysis, error) {
	a, err := Analyze(ir, ir.Host)
	if err != nil {
		return nil, err
	}
	if ir.ParamCount != 0 && ir.ParamCount != a.ParamCount {
		return nil, fmt.Errorf("%w: param_count %d does not match the computed %d", ErrInvalid, ir.ParamCount, a.ParamCount)
	}
	if ir.FLOPsPerSample != 0 && ir.FLOPsPerSample != a.FLOPsPerSample {
		return nil, fmt.Errorf("%w: flops_per_sample %d does not match the computed %d", ErrInvalid, ir.FLOPsPerSample, a.FLOPsPerSample)
	}
	return a, nil
}

// Canonical returns the canonical JSON bytes of the validated IR with its
// counts filled in and default-valued optional attributes ("init":
// "default", "causal": false) left out, so equivalent IRs share one id; ir itself is not
// modified.
func (ir *IR) Canonical() ([]byte, error) {
	c := ir.Clone()
	if err := c.Complete(); err != nil {
		return nil, err
	}
	return c.marshalCanonical()
}

// CanonicalComplete returns the bytes Canonical returns, for an IR that
// Instantiate (or Complete) has just analysed and counted for its host,
// without analysing it again: a germination decided by Tamiyo instantiates
// its template once and records it with this. An IR built or changed any
// other way must go through Canonical, which validates it. An IR with no
// counts (param_count 0) is analysed, as Canonical does.
func (ir *IR) CanonicalComplete() ([]byte, error) {
	if ir.ParamCount == 0 {
		return ir.Canonical()
	}
	if b, ok := ir.appendCanonical(make([]byte, 0, 1024)); ok {
		return b, nil
	}
	return ir.Clone().marshalCanonical()
}

// marshalCanonical encodes ir, a completed clone, canonically; it drops
// default-valued optional attributes from ir.
func (ir *IR) marshalCanonical() ([]byte, error) {
	if b, ok := ir.appendCanonical(make([]byte, 0, 1024)); ok {
		return b, nil
	}
	for i := range ir.Ops {
		dropDefaults(&ir.Ops[i])
	}
	b, err := canon.Marshal(ir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return b, nil
}

// ID returns the blueprint id: the lowercase hex SHA-256 of Canonical.
func (ir *IR) ID() (string, error) {
	b, err := ir.Canonical()
	if err != nil {
		return "", err
	}
	return canon.ID(b), nil
}
