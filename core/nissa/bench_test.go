package nissa_test

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
)

// benchIngest ingests 1 M floats per op in buffers sized for layers, and
// reports floats per second.
func benchIngest(b *testing.B, layers int) {
	s, err := nissa.New(nissa.Config{Layers: layers})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]float32, nissa.Len(layers))
	for i := range buf {
		buf[i] = float32(i%13) * 0.25
		if i%17 == 0 {
			buf[i] = float32(math.NaN())
		}
	}
	const total = 1 << 20
	calls := total / len(buf)
	floats := calls * len(buf)
	b.SetBytes(int64(floats) * 4)
	b.ReportAllocs()
	step := int64(0)
	b.ResetTimer()
	for range b.N {
		for c := 0; c < calls; c++ {
			step++
			if err := s.Ingest(step, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(floats)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mfloats/s")
}

func BenchmarkIngest8Layers(b *testing.B)    { benchIngest(b, 8) }
func BenchmarkIngest1000Layers(b *testing.B) { benchIngest(b, 1000) }

func BenchmarkLayerSummary(b *testing.B) {
	s, _ := nissa.New(nissa.Config{Layers: 8})
	buf := make([]float32, nissa.Len(8))
	for step := int64(0); step < 100; step++ {
		buf[nissa.Index(3, nissa.GradNorm)] = float32(step)
		_ = s.Ingest(step, buf)
	}
	b.ReportAllocs()
	for range b.N {
		if _, ok := s.Layer(3, nissa.GradNorm); !ok {
			b.Fatal("range")
		}
	}
}

// BenchmarkSnapshotJSON encodes a 3-layer snapshot as the health event of
// every end of epoch does.
func BenchmarkSnapshotJSON(b *testing.B) {
	s, err := nissa.New(nissa.Config{Layers: 3})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]float32, nissa.Len(3))
	for step := int64(1); step <= 20; step++ {
		for i := range buf {
			buf[i] = float32(i%13)*0.25 + float32(step)*1e-3
		}
		if err := s.Ingest(step, buf); err != nil {
			b.Fatal(err)
		}
	}
	snap := s.Snapshot([]string{"fc1", "fc2", "fc3"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(snap); err != nil {
			b.Fatal(err)
		}
	}
}
