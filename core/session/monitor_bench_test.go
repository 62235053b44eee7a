package session_test

import (
	"testing"
)

// BenchmarkMetricsText is one scrape's work in Go: read the session,
// gather and encode the text exposition.
func BenchmarkMetricsText(b *testing.B) {
	s := newSession(b, baseConfig())
	germinate(b, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	step(b, s, 3)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.MetricsText(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStepWithSignals is the per-flush call the monitor adds a clock
// read to.
func BenchmarkStepWithSignals(b *testing.B) {
	s := newSession(b, baseConfig())
	sig := signals(2, 1, 0)
	alphas := make([]float32, 4)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Step(1, sig, alphas); err != nil {
			b.Fatal(err)
		}
	}
}
