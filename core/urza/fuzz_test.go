package urza_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

func FuzzParseManifest(f *testing.F) {
	f.Add(manifest(f, 4, []string{"a"}, nil))
	f.Add(manifest(f, 2, nil, map[string]any{"weights_size": 10, "validation": nil}))
	f.Add([]byte(`{"blueprint":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := urza.ParseManifest(data)
		if err != nil {
			if !errors.Is(err, urza.ErrInvalidManifest) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("error %v does not wrap ErrInvalidManifest", err)
			}
			return
		}
		if !canon.IsID(m.BlueprintID) || len(m.InputShape) == 0 || m.Dtype == "" || m.Device == "" {
			t.Fatalf("accepted an incomplete manifest: %+v", m)
		}
	})
}

func FuzzTensors(f *testing.F) {
	f.Add(safetensors(3, 1))
	f.Add(safetensors(0, 1))
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	hdr := []byte(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[1,1],"data_offsets":[4,5]}}`)
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	f.Add(append(append(b, hdr...), 1, 2, 3, 4, 5))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := urza.Tensors(data)
		if err != nil {
			if !errors.Is(err, urza.ErrInvalidWeights) {
				t.Fatalf("error %v does not wrap ErrInvalidWeights", err)
			}
			return
		}
		// Accepted tensors tile the data section exactly.
		n := binary.LittleEndian.Uint64(data)
		var at uint64
		for _, tn := range ts {
			if tn.Begin != at || tn.End < tn.Begin {
				t.Fatalf("tensors do not tile: %+v", ts)
			}
			at = tn.End
		}
		if at != uint64(len(data))-8-n {
			t.Fatalf("tensors cover %d of %d bytes", at, uint64(len(data))-8-n)
		}
	})
}

func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{`{"blueprint_id":"x","tags":["a"],"input_shape":[-1,3],"limit":2}`, `null`, `{}`, `{"limit":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := urza.ParseQuery(data)
		if err != nil {
			if !errors.Is(err, urza.ErrInvalidQuery) {
				t.Fatalf("error %v does not wrap ErrInvalidQuery", err)
			}
			return
		}
		if q.Limit < 0 {
			t.Fatalf("negative limit accepted")
		}
	})
}

func TestTensors(t *testing.T) {
	mk := func(hdr string, data int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
		return append(append(b, hdr...), make([]byte, data)...)
	}
	cases := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"valid", mk(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8), true},
		{"empty", mk(`{}`, 0), true},
		{"metadata only", mk(`{"__metadata__":{"k":"v"}}`, 0), true},
		{"short", []byte{1, 2}, false},
		{"header too long", binary.LittleEndian.AppendUint64(nil, 1<<40), false},
		{"not object", mk(`[1]`, 0), false},
		{"duplicate tensor", mk(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), false},
		{"unknown dtype", mk(`{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}`, 1), false},
		{"size mismatch", mk(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8), false},
		{"out of bounds", mk(`{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}`, 8), false},
		{"hole", mk(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, 8), false},
		{"overlap", mk(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, 6), false},
		{"trailing data", mk(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, 5), false},
		{"unknown field", mk(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"code":"x"}}`, 1), false},
		{"bad metadata", mk(`{"__metadata__":{"k":1}}`, 0), false},
		{"overflow", mk(`{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, 8), false},
		{"pickle", []byte("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := urza.Tensors(tc.b)
			if tc.ok != (err == nil) {
				t.Fatalf("Tensors: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, urza.ErrInvalidWeights) {
				t.Fatalf("error %v does not wrap ErrInvalidWeights", err)
			}
		})
	}
}

// FuzzIndexFile writes arbitrary bytes as index.json: opening the store must
// still list exactly the stored artifacts (a bad index is rebuilt, a stale
// one reconciled).
func FuzzIndexFile(f *testing.F) {
	root := f.TempDir()
	s, err := urza.Open(root, nil)
	if err != nil {
		f.Fatal(err)
	}
	id := put(f, s, manifest(f, 4, nil, nil), safetensors(10, 1))
	good, _ := os.ReadFile(filepath.Join(root, "index.json"))
	f.Add(good)
	f.Add([]byte(`{"version":1,"artifacts":[]}`))
	f.Add([]byte(`{"version":1,"artifacts":[{"id":"` + strings.Repeat("0", 64) + `"}]}`))
	f.Add([]byte(`{"version":1,"artifacts":[{"id":"../../x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(root, "index.json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := urza.Open(root, nil)
		if err != nil {
			t.Fatalf("Open with index %q: %v", data, err)
		}
		list, err := s.List(urza.Query{})
		if err != nil || len(list) != 1 || list[0].ID != id {
			t.Fatalf("index %q: List = %v, %v", data, list, err)
		}
	})
}
