package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
)

// MaxFileBytes bounds a file Open reads.
const MaxFileBytes = 1 << 30

// File is a parsed safetensors file with its data section.
type File struct {
	tensors map[string]Tensor
	data    []byte
}

// Open reads and parses the safetensors file at path (Parse's checks).
func Open(path string) (*File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if st.Size() > MaxFileBytes {
		return nil, fmt.Errorf("safetensors: %s is %d bytes, limit %d: %w", path, st.Size(), MaxFileBytes, ErrInvalid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	f, err := FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	return f, nil
}

// FromBytes parses the safetensors file b (Parse's checks); the File keeps b.
func FromBytes(b []byte) (*File, error) {
	ts, err := Parse(b)
	if err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint64(b[:8])
	f := &File{tensors: make(map[string]Tensor, len(ts)), data: b[8+n:]}
	for _, t := range ts {
		f.tensors[t.Name] = t
	}
	return f, nil
}

// Tensor returns the header entry of the tensor called name.
func (f *File) Tensor(name string) (Tensor, bool) {
	t, ok := f.tensors[name]
	return t, ok
}

// Float64s decodes the tensor called name, of dtype F32 or F64, into
// float64 values in row-major order, with its shape. A missing tensor or
// another dtype is an error wrapping ErrInvalid; values are returned as
// stored (non-finite ones included: the caller decides).
func (f *File) Float64s(name string) ([]float64, []uint64, error) {
	t, ok := f.tensors[name]
	if !ok {
		return nil, nil, fmt.Errorf("safetensors: tensor %q is missing: %w", name, ErrInvalid)
	}
	raw := f.data[t.Begin:t.End]
	switch t.Dtype {
	case "F32":
		out := make([]float64, len(raw)/4)
		for i := range out {
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		}
		return out, t.Shape, nil
	case "F64":
		out := make([]float64, len(raw)/8)
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		}
		return out, t.Shape, nil
	}
	return nil, nil, fmt.Errorf("safetensors: tensor %q has dtype %s, want F32 or F64: %w", name, t.Dtype, ErrInvalid)
}

// F32 is a float32 tensor to encode: its name, shape and row-major values.
type F32 struct {
	Name  string
	Shape []uint64
	Data  []float32
}

// EncodeF32 writes tensors as a safetensors file (dtype F32, in the order
// given, no metadata). A name used twice, or values that do not fill the
// shape, is an error wrapping ErrInvalid.
func EncodeF32(tensors []F32) ([]byte, error) {
	head := map[string]tensorHeader{}
	var off uint64
	for _, t := range tensors {
		if _, dup := head[t.Name]; dup || t.Name == "__metadata__" {
			return nil, fmt.Errorf("safetensors: encode: tensor name %q used twice or reserved: %w", t.Name, ErrInvalid)
		}
		n := uint64(1)
		for _, d := range t.Shape {
			n *= d
		}
		if n != uint64(len(t.Data)) {
			return nil, fmt.Errorf("safetensors: encode: tensor %q has %d values, shape %v needs %d: %w", t.Name, len(t.Data), t.Shape, n, ErrInvalid)
		}
		shape := t.Shape
		if shape == nil {
			shape = []uint64{}
		}
		head[t.Name] = tensorHeader{Dtype: "F32", Shape: shape, DataOffsets: [2]uint64{off, off + 4*n}}
		off += 4 * n
	}
	hb, err := json.Marshal(head)
	if err != nil {
		return nil, fmt.Errorf("safetensors: encode: %w", err)
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	out := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(hb)+int(off)), uint64(len(hb)))
	out = append(out, hb...)
	for _, t := range tensors {
		for _, v := range t.Data {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
		}
	}
	return out, nil
}
