package safetensors_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/esper-morph/esper/core/safetensors"
)

func TestEncodeRead(t *testing.T) {
	b, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "a", Shape: []uint64{2, 2}, Data: []float32{1, -2, 0.5, 3}},
		{Name: "s", Shape: []uint64{}, Data: []float32{7}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	v, shape, err := f.Float64s("a")
	if err != nil || len(shape) != 2 || shape[0] != 2 || shape[1] != 2 {
		t.Fatalf("a: shape %v, %v", shape, err)
	}
	for i, want := range []float64{1, -2, 0.5, 3} {
		if v[i] != want {
			t.Fatalf("a[%d] = %v, want %v", i, v[i], want)
		}
	}
	if v, _, err := f.Float64s("s"); err != nil || len(v) != 1 || v[0] != 7 {
		t.Fatalf("scalar s = %v, %v; want [7]", v, err)
	}
	if _, _, err := f.Float64s("missing"); !errors.Is(err, safetensors.ErrInvalid) {
		t.Fatalf("missing tensor: %v, want ErrInvalid", err)
	}
}

func TestFloat64sDtypes(t *testing.T) {
	hdr := `{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"h":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}`
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	b = binary.LittleEndian.AppendUint64(b, 0x3FF8000000000000) // 1.5
	b = append(b, 0, 0x3c)                                      // F16 1.0
	f, err := safetensors.FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, _, err := f.Float64s("d"); err != nil || v[0] != 1.5 {
		t.Fatalf("F64 d = %v, %v; want 1.5", v, err)
	}
	if _, _, err := f.Float64s("h"); !errors.Is(err, safetensors.ErrInvalid) {
		t.Fatalf("F16: %v, want ErrInvalid (F32 and F64 only)", err)
	}
}

func TestEncodeErrors(t *testing.T) {
	cases := map[string][]safetensors.F32{
		"duplicate": {{Name: "a", Shape: []uint64{1}, Data: []float32{1}}, {Name: "a", Shape: []uint64{1}, Data: []float32{1}}},
		"reserved":  {{Name: "__metadata__", Shape: []uint64{1}, Data: []float32{1}}},
		"short":     {{Name: "a", Shape: []uint64{3}, Data: []float32{1}}},
	}
	for name, ts := range cases {
		if _, err := safetensors.EncodeF32(ts); !errors.Is(err, safetensors.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}
