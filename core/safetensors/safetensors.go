// Package safetensors reads the safetensors format (an 8-byte header
// length, a JSON header, a data section) without executing anything: Parse
// checks a file's structure, Open also decodes float tensors. Urza checks
// stored weights with it and core/nn reads network weights with it.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"sort"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
)

// ErrInvalid is returned for bytes that are not a well-formed safetensors
// file, or a tensor that cannot be read as asked. [INVALID]
var ErrInvalid = errcode.New(errcode.Invalid, "invalid safetensors weights")

// maxHeader bounds a safetensors header (the format's own limit).
const maxHeader = 100 << 20

// dtypeSizes are the bytes per element of the safetensors dtypes.
var dtypeSizes = map[string]uint64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
	"U16": 2, "I16": 2, "F16": 2, "BF16": 2,
	"U32": 4, "I32": 4, "F32": 4,
	"U64": 8, "I64": 8, "F64": 8,
}

// Tensor is one entry of a safetensors header.
type Tensor struct {
	Name  string   `json:"name"`
	Dtype string   `json:"dtype"`
	Shape []uint64 `json:"shape"`
	// Begin and End are byte offsets into the data section.
	Begin uint64 `json:"begin"`
	End   uint64 `json:"end"`
}

type tensorHeader struct {
	Dtype       string    `json:"dtype"`
	Shape       []uint64  `json:"shape"`
	DataOffsets [2]uint64 `json:"data_offsets"`
}

// Parse parses and checks the safetensors file b: an 8-byte little-endian
// header length, a JSON header (no duplicate keys) mapping tensor names to
// dtype, shape and data offsets (plus an optional "__metadata__" map of
// strings), and a data section that the tensors cover exactly, without
// holes or overlaps, each the size its dtype and shape imply. It returns
// the tensors sorted by offset. Errors wrap ErrInvalid.
func Parse(b []byte) ([]Tensor, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrInvalid, len(b))
	}
	n := binary.LittleEndian.Uint64(b[:8])
	if n > maxHeader || n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%w: header length %d does not fit in %d bytes (limit %d)", ErrInvalid, n, len(b)-8, maxHeader)
	}
	head := b[8 : 8+n]
	data := uint64(len(b)) - 8 - n
	if _, err := canon.Canonicalize(head); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrInvalid, err)
	}
	var raw map[string]json.RawMessage
	if err := canon.DecodeStrict(head, &raw); err != nil {
		return nil, fmt.Errorf("%w: header is not a JSON object: %v", ErrInvalid, err)
	}
	tensors := make([]Tensor, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			var meta map[string]string
			if err := canon.DecodeStrict(msg, &meta); err != nil {
				return nil, fmt.Errorf("%w: __metadata__ must map strings to strings: %v", ErrInvalid, err)
			}
			continue
		}
		var th tensorHeader
		if err := canon.DecodeStrict(msg, &th); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrInvalid, name, err)
		}
		size, ok := dtypeSizes[th.Dtype]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: unknown dtype %q", ErrInvalid, name, th.Dtype)
		}
		want := size
		for _, d := range th.Shape {
			hi, lo := bits.Mul64(want, d)
			if hi != 0 {
				return nil, fmt.Errorf("%w: tensor %q: shape %v overflows", ErrInvalid, name, th.Shape)
			}
			want = lo
		}
		begin, end := th.DataOffsets[0], th.DataOffsets[1]
		if begin > end || end > data {
			return nil, fmt.Errorf("%w: tensor %q: offsets [%d, %d] outside the %d-byte data section", ErrInvalid, name, begin, end, data)
		}
		if end-begin != want {
			return nil, fmt.Errorf("%w: tensor %q: %d bytes at [%d, %d], dtype %s and shape %v need %d", ErrInvalid, name, end-begin, begin, end, th.Dtype, th.Shape, want)
		}
		tensors = append(tensors, Tensor{Name: name, Dtype: th.Dtype, Shape: th.Shape, Begin: begin, End: end})
	}
	sort.Slice(tensors, func(i, j int) bool {
		if tensors[i].Begin != tensors[j].Begin {
			return tensors[i].Begin < tensors[j].Begin
		}
		return tensors[i].End < tensors[j].End
	})
	var at uint64
	for _, t := range tensors {
		if t.Begin != at {
			return nil, fmt.Errorf("%w: tensor %q starts at byte %d of the data section, expected %d (hole or overlap)", ErrInvalid, t.Name, t.Begin, at)
		}
		at = t.End
	}
	if at != data {
		return nil, fmt.Errorf("%w: tensors cover %d of %d data bytes", ErrInvalid, at, data)
	}
	return tensors, nil
}
