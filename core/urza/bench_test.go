package urza_test

import (
	"encoding/binary"
	"testing"

	"github.com/esper-morph/esper/core/urza"
)

// BenchmarkPut1MB stores distinct 1 MB artifacts (fsync included).
func BenchmarkPut1MB(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	w := safetensors(1<<18-32, 1)
	m := manifest(b, 4, nil, nil)
	b.SetBytes(int64(len(w)))
	i := uint64(0)
	for b.Loop() {
		binary.LittleEndian.PutUint64(w[len(w)-8:], i)
		i++
		if _, err := s.Put(m, w); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet1MB loads and verifies a 1 MB artifact.
func BenchmarkGet1MB(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	w := safetensors(1<<18-32, 1)
	id := put(b, s, manifest(b, 4, nil, nil), w)
	b.SetBytes(int64(len(w)))
	for b.Loop() {
		if _, err := s.Get(id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkList lists 200 indexed artifacts with a tag filter.
func BenchmarkList(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	w := safetensors(16, 1)
	for i := 0; i < 200; i++ {
		binary.LittleEndian.PutUint64(w[len(w)-8:], uint64(i))
		put(b, s, manifest(b, 1+i%8, []string{"t"}, nil), w)
	}
	for b.Loop() {
		if _, err := s.List(urza.Query{Tags: []string{"t"}, Limit: 10}); err != nil {
			b.Fatal(err)
		}
	}
}
