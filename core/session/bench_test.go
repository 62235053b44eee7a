package session_test

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/esper-morph/esper/blueprint"

	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// benchConfig is 8 linear layers x 2 slots with a seed live in each layer.
func benchSession(tb testing.TB, layers int) *session.Session {
	tb.Helper()
	cfg := session.Config{SlotsPerLayer: 2, Policy: "manual", TrainSteps: 1 << 30}
	cfg.Governor.MaxConcurrent = 64
	for l := 0; l < layers; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l), Host: blueprint.Host{Kind: "linear", In: 64, Out: 64}})
	}
	s := newSession(tb, cfg)
	for l := 0; l < layers; l++ {
		germinate(tb, s, l, 0, `{"template": "lowrank"}`)
	}
	step(tb, s, 2)
	events(tb, s)
	return s
}

func benchStep(b *testing.B, layers int, withSignals bool) {
	s := benchSession(b, layers)
	alphas := make([]float32, layers*2)
	var buf []float32
	if withSignals {
		buf = make([]float32, nissa.Len(layers))
		for i := range buf {
			buf[i] = 0.5 + float32(i%5)*0.1
		}
		buf[nissa.NonfiniteCount] = 0
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Step(1, buf, alphas); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStep8Layers(b *testing.B)          { benchStep(b, 8, true) }
func BenchmarkStep8LayersNoSignals(b *testing.B) { benchStep(b, 8, false) }
func BenchmarkStep64Layers(b *testing.B)         { benchStep(b, 64, true) }

func TestStepDoesNotAllocate(t *testing.T) {
	s := benchSession(t, 8)
	alphas := make([]float32, 16)
	buf := make([]float32, nissa.Len(8))
	buf[0] = 1
	n := testing.AllocsPerRun(500, func() {
		if _, err := s.Step(1, buf, alphas); err != nil {
			panic(err)
		}
	})
	if n != 0 {
		t.Fatalf("Step allocates %v times per call", n)
	}
}

func BenchmarkEndEpoch(b *testing.B) {
	cfg := heuristicConfig()
	s := newSession(b, cfg)
	b.ReportAllocs()
	for i := range b.N {
		if _, err := s.EndEpoch(metrics(i, 1/float64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStepIngest1000Layers measures health-signal ingestion through
// the per-step call: 6002 floats per step, reported in floats per second.
func BenchmarkStepIngest1000Layers(b *testing.B) {
	cfg := session.Config{Policy: "manual"}
	for l := 0; l < 1000; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l), Host: blueprint.Host{Kind: "linear", In: 8, Out: 8}})
	}
	s := newSession(b, cfg)
	alphas := make([]float32, 1000)
	buf := make([]float32, nissa.Len(1000))
	for i := range buf {
		buf[i] = 0.5 + float32(i%5)*0.1
	}
	buf[nissa.NonfiniteCount] = 0
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Step(1, buf, alphas); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf))*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mfloats/s")
}

// BenchmarkEndEpochGerminate measures an end of epoch on a plateau that
// germinates: Tamiyo decides, the session instantiates the blueprint and
// records the event. Each iteration uses its own session, restored from a
// snapshot outside the timer.
func BenchmarkEndEpochGerminate(b *testing.B) {
	s := newSession(b, heuristicConfig())
	for e := range 2 {
		endEpoch(b, s, metrics(e, 1))
	}
	snap, err := s.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := range b.N {
		b.StopTimer()
		r := newSession(b, heuristicConfig())
		if err := r.Restore(snap); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res := endEpoch(b, r, metrics(2, 1))
		if i == 0 && (len(res.Decisions) == 0 || res.Decisions[0].Op != tamiyo.Germinate) {
			b.Fatalf("no germination: %+v", res.Decisions)
		}
	}
}

// plateauSnapshot is a heuristic session of 8 linear 64x64 layers x 2 slots
// one epoch before it germinates, as the bench's Session.end_epoch row
// (python/esper/bench/native.py): one step of signals with a seed gain per
// layer, two epochs of a flat loss.
func plateauSnapshot(b testing.TB) (session.Config, []byte) {
	b.Helper()
	cfg := session.Config{SlotsPerLayer: 2, Policy: "heuristic", Controller: tamiyo.Config{Patience: 2}}
	for l := 0; l < 8; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("fc%d", l),
			Host: blueprint.Host{Kind: "linear", In: 64, Out: 64}, Params: 64*64 + 64})
	}
	s := newSession(b, cfg)
	buf := make([]float32, nissa.Len(8))
	for i := range buf {
		buf[i] = 0.5
	}
	buf[nissa.NonfiniteCount] = 0
	for l := 0; l < 8; l++ {
		buf[nissa.Index(l, nissa.SeedGain)] = float32(l + 1)
	}
	if _, err := s.Step(1, buf, make([]float32, 16)); err != nil {
		b.Fatal(err)
	}
	for e := range 2 {
		endEpoch(b, s, metrics(e, 1))
	}
	snap, err := s.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	return cfg, snap
}

// germinatingEndEpoch returns the result of the end of epoch that
// germinates on the plateau session of plateauSnapshot.
func germinatingEndEpoch(tb testing.TB) session.EpochResult {
	tb.Helper()
	cfg, snap := plateauSnapshot(tb)
	s := newSession(tb, cfg)
	if err := s.Restore(snap); err != nil {
		tb.Fatal(err)
	}
	res := endEpoch(tb, s, metrics(2, 1))
	if len(res.Decisions) == 0 || res.Decisions[0].Op != tamiyo.Germinate {
		tb.Fatalf("no germination: %+v", res.Decisions)
	}
	return res
}

// BenchmarkEndEpochGerminateABI measures what esper_session_end_epoch does
// for an end of epoch that germinates (the bench's Session.end_epoch row):
// the metrics JSON decoded, EndEpoch, the result encoded as JSON (the
// ABI's hand encoder, EpochResult.AppendJSON). Sessions
// are restored from a snapshot in batches outside the timer, and their
// garbage collected there, so the figure is the call's own work (its own
// garbage included). Besides ns/op (wall time) it reports cpu-ns/op: the
// CPU time of the process (every thread, the collector's included) over
// the timed calls, the figure that holds on a machine shared with other
// work.
func BenchmarkEndEpochGerminateABI(b *testing.B) {
	cfg, snap := plateauSnapshot(b)
	doc := []byte(`{"epoch": 2, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}`)
	const batch = 64
	ready := make([]*session.Session, 0, batch)
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		for _, s := range ready {
			_ = s.Close()
		}
		ready = ready[:0]
		for range min(batch, b.N-done) {
			r, err := session.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Restore(snap); err != nil {
				b.Fatal(err)
			}
			ready = append(ready, r)
		}
		runtime.GC()
		b.StartTimer()
		began := processCPU(b)
		for _, s := range ready {
			m, err := tamiyo.ParseMetrics(doc)
			if err != nil {
				b.Fatal(err)
			}
			res, err := s.EndEpoch(m)
			if err != nil {
				b.Fatal(err)
			}
			out, err := res.AppendJSON(make([]byte, 0, 2048)) // as capi's setAppended
			if err != nil {
				b.Fatal(err)
			}
			if done == 0 && (len(res.Decisions) == 0 || res.Decisions[0].Op != tamiyo.Germinate || len(out) == 0) {
				b.Fatalf("no germination: %+v", res.Decisions)
			}
			done++
		}
		cpu += processCPU(b) - began
	}
	b.StopTimer()
	for _, s := range ready {
		_ = s.Close()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU returns the CPU time this process has used (user and system,
// every thread).
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSessionMemory reports the Go heap a session keeps per wrapped
// layer (after New, a step with signals and an end of epoch, collected
// garbage excluded), for 10, 100 and 1000 linear 32x32 layers with 1, 2
// and 4 slots each: metric "heapB/layer-L<layers>-S<slots>". The bench's
// scaling rows read it (python/esper/bench/scale.py).
func BenchmarkSessionMemory(b *testing.B) {
	for _, layers := range []int{10, 100, 1000} {
		for _, slots := range []int{1, 2, 4} {
			cfg := session.Config{SlotsPerLayer: slots, Policy: "heuristic"}
			for l := 0; l < layers; l++ {
				cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("layers.%d", l),
					Host: blueprint.Host{Kind: "linear", In: 32, Out: 32}, Params: 32*32 + 32})
			}
			keep := max(1, 2000/layers)
			buf := make([]float32, nissa.Len(layers))
			for i := range buf {
				buf[i] = 0.5
			}
			buf[nissa.NonfiniteCount] = 0
			alphas := make([]float32, layers*slots)
			var perLayer float64
			for range b.N {
				sessions := make([]*session.Session, 0, keep)
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for range keep {
					s, err := session.New(cfg)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.Step(1, buf, alphas); err != nil {
						b.Fatal(err)
					}
					endEpoch(b, s, metrics(0, 1))
					sessions = append(sessions, s)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perLayer = float64(after.HeapAlloc-before.HeapAlloc) / float64(keep*layers)
				for _, s := range sessions {
					_ = s.Close()
				}
			}
			b.ReportMetric(perLayer, fmt.Sprintf("heapB/layer-L%d-S%d", layers, slots))
		}
	}
}

// BenchmarkEndEpoch1000Layers measures an end of epoch that waits (the
// loss improving) on 1000 linear layers x 2 slots, every signal's window
// full (nissa.DefaultWindow steps with signals): the session summarises
// every layer's statistics for Tamiyo. It allocates no per-layer memory
// (the layer views are the session's scratch).
func BenchmarkEndEpoch1000Layers(b *testing.B) {
	cfg := session.Config{SlotsPerLayer: 2, Policy: "heuristic"}
	for l := 0; l < 1000; l++ {
		cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: fmt.Sprintf("layers.%d", l),
			Host: blueprint.Host{Kind: "linear", In: 32, Out: 32}, Params: 32*32 + 32})
	}
	s := newSession(b, cfg)
	buf := make([]float32, nissa.Len(1000))
	for i := range buf {
		buf[i] = 0.5 + float32(i%5)*0.1
	}
	buf[nissa.NonfiniteCount] = 0
	for range nissa.DefaultWindow {
		if _, err := s.Step(1, buf, make([]float32, 2000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		endEpoch(b, s, metrics(i, 1/float64(i+1)))
	}
}
