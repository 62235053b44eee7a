package blueprint

import (
	"math"
	"slices"
	"unicode/utf8"

	"github.com/esper-morph/esper/blueprint/canon"
)

// appendCanonical appends the canonical JSON of ir (canon.Marshal's bytes,
// with default-valued optional attributes left out as marshalCanonical
// does) without encoding/json's reflection and a second pass to sort the
// keys: the keys are written in canonical (byte) order here. ok is false
// when ir holds something this encoder does not write exactly as
// canon.Marshal does (a value of another type than int, int64, float64,
// bool or string, a non-finite float, a string that is not valid UTF-8);
// the caller then uses canon.Marshal. TestAppendCanonicalMatchesMarshal
// holds the two to the same bytes.
func (ir *IR) appendCanonical(out []byte) (_ []byte, ok bool) {
	if !utf8.ValidString(ir.Template) || !utf8.ValidString(ir.Output) {
		return nil, false
	}
	out = append(out, `{"flops_per_sample":`...)
	out = canon.AppendInt(out, ir.FLOPsPerSample)
	out = append(out, `,"host":`...)
	if out, ok = ir.Host.appendCanonical(out); !ok {
		return nil, false
	}
	out = append(out, `,"ops":`...)
	out = append(out, '[') // nil too: the encoders before this one wrote a clone, whose ops are never nil
	for i := range ir.Ops {
		if i > 0 {
			out = append(out, ',')
		}
		if out, ok = ir.Ops[i].appendCanonical(out); !ok {
			return nil, false
		}
	}
	out = append(out, ']')
	out = append(out, `,"output":`...)
	out = canon.AppendString(out, ir.Output)
	out = append(out, `,"param_count":`...)
	out = canon.AppendInt(out, ir.ParamCount)
	if len(ir.Params) > 0 {
		out = append(out, `,"params":`...)
		if out, ok = appendMap(out, ir.Params, nil); !ok {
			return nil, false
		}
	}
	if ir.Template != "" {
		out = append(out, `,"template":`...)
		out = canon.AppendString(out, ir.Template)
	}
	out = append(out, `,"version":`...)
	out = canon.AppendInt(out, int64(ir.Version))
	return append(out, '}'), true
}

// appendCanonical appends the canonical JSON of h (its keys sorted, the
// omitempty ones left out when zero, as encoding/json does).
func (h *Host) appendCanonical(out []byte) ([]byte, bool) {
	if !utf8.ValidString(h.Kind) || !utf8.ValidString(h.Activation) {
		return nil, false
	}
	out = append(out, '{')
	sep := false
	num := func(key string, v int64) {
		if v == 0 {
			return
		}
		if sep {
			out = append(out, ',')
		}
		out = append(append(append(out, '"'), key...), `":`...)
		out = canon.AppendInt(out, v)
		sep = true
	}
	if h.Activation != "" {
		out = append(out, `"activation":`...)
		out = canon.AppendString(out, h.Activation)
		sep = true
	}
	num("consumer_kernel", h.ConsumerKernel)
	num("consumer_padding", h.ConsumerPadding)
	num("consumer_stride", h.ConsumerStride)
	num("dim", h.Dim)
	num("in", h.In)
	num("kernel", h.Kernel)
	if sep {
		out = append(out, ',')
	}
	out = append(out, `"kind":`...)
	out = canon.AppendString(out, h.Kind)
	num("mid", h.Mid)
	num("out", h.Out)
	num("padding", h.Padding)
	if len(h.Spatial) > 0 {
		out = append(out, `,"spatial":[`...)
		for i, v := range h.Spatial {
			if i > 0 {
				out = append(out, ',')
			}
			out = canon.AppendInt(out, v)
		}
		out = append(out, ']')
	}
	num("stride", h.Stride)
	return append(out, '}'), true
}

// appendCanonical appends the canonical JSON of op, leaving out its
// optional attributes that hold their default (dropDefaults).
func (op *Op) appendCanonical(out []byte) (_ []byte, ok bool) {
	if !utf8.ValidString(op.ID) || !utf8.ValidString(op.Op) {
		return nil, false
	}
	out = append(out, '{')
	spec := opTable[op.Op]
	skip := func(k string, v any) bool {
		if spec == nil {
			return false
		}
		for _, s := range spec.attrs {
			if s.name == k {
				return s.optional && s.def != nil && v == s.def
			}
		}
		return false
	}
	kept := 0
	for k, v := range op.Attrs {
		if !skip(k, v) {
			kept++
		}
	}
	if kept > 0 {
		out = append(out, `"attrs":`...)
		if out, ok = appendMap(out, op.Attrs, skip); !ok {
			return nil, false
		}
		out = append(out, ',')
	}
	out = append(out, `"id":`...)
	out = canon.AppendString(out, op.ID)
	out = append(out, `,"inputs":`...)
	if op.Inputs == nil {
		out = append(out, "null"...)
	} else {
		out = append(out, '[')
		for i, in := range op.Inputs {
			if !utf8.ValidString(in) {
				return nil, false
			}
			if i > 0 {
				out = append(out, ',')
			}
			out = canon.AppendString(out, in)
		}
		out = append(out, ']')
	}
	out = append(out, `,"op":`...)
	out = canon.AppendString(out, op.Op)
	return append(out, '}'), true
}

// appendMap appends the canonical JSON of m (keys sorted), leaving out the
// entries skip reports.
func appendMap[M ~map[string]any](out []byte, m M, skip func(string, any) bool) ([]byte, bool) {
	var buf [16]string
	keys := buf[:0]
	for k, v := range m {
		if skip == nil || !skip(k, v) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out = append(out, '{')
	for i, k := range keys {
		if !utf8.ValidString(k) {
			return nil, false
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = canon.AppendString(out, k)
		out = append(out, ':')
		switch v := m[k].(type) {
		case int64:
			out = canon.AppendInt(out, v)
		case int:
			out = canon.AppendInt(out, int64(v))
		case bool:
			if v {
				out = append(out, "true"...)
			} else {
				out = append(out, "false"...)
			}
		case string:
			if !utf8.ValidString(v) {
				return nil, false
			}
			out = canon.AppendString(out, v)
		case float64:
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, false
			}
			out = canon.AppendFloat(out, v)
		default:
			return nil, false
		}
	}
	return append(out, '}'), true
}
