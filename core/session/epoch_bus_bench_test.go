package session_test

import (
	"testing"
	"time"

	"github.com/esper-morph/esper/core/oona"
)

// BenchmarkEndEpochBus is an end of epoch (10 steps with signals, then
// EndEpoch) with the session on a bus whose run log writes every event and
// is flushed (as Morphogenesis.end_epoch does), against none: what the bus
// and the run log add to an epoch.
func BenchmarkEndEpochBus(b *testing.B) {
	for _, withBus := range []bool{false, true} {
		name := "off"
		if withBus {
			name = "runlog"
		}
		b.Run(name, func(b *testing.B) {
			s := newSession(b, baseConfig())
			var n *oona.Node
			if withBus {
				var err error
				n, err = oona.OpenNode(oona.NodeConfig{Run: "bench-run", Home: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = n.Close(5 * time.Second) })
				if err := s.AttachBus(n.Bus); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			epoch := 0
			for b.Loop() {
				step(b, s, 10)
				if _, err := s.EndEpoch(metrics(epoch, 1)); err != nil {
					b.Fatal(err)
				}
				epoch++
				if n != nil {
					if err := n.Log.Flush(5 * time.Second); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
