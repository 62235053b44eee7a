package oona_test

import (
	"testing"

	"github.com/esper-morph/esper/core/oona"
)

func BenchmarkPublish(b *testing.B) {
	bus := newBus(b, "bench")
	s, _ := bus.Subscribe("drain", oona.MaxBuffer)
	go func() {
		for range s.C() {
		}
	}()
	data := map[string]any{"layer": 3, "slot": 1, "from": "TRAINING", "to": "BLENDING", "reason": "trained 100 steps"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := bus.Publish(lifecycle(int64(i)), data); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMeasure(t *testing.T) {
	th, err := oona.Measure(20000, 2, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if th.Delivered != 60000 || th.Dropped != 0 || th.LogBytes == 0 || th.EventsPerSecond <= 0 {
		t.Fatalf("%+v", th)
	}
	if _, err := oona.Measure(0, 1, ""); err == nil {
		t.Fatal("0 events accepted")
	}
}
