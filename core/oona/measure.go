package oona

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// Throughput is what Measure found.
type Throughput struct {
	// Events were published in Seconds of wall time, to Subscribers
	// draining subscribers (and the run log, with RunLog), using
	// CPUSeconds of the process's CPU time (every thread, user and
	// system). EventsPerSecond is events per CPU second (what the bus
	// costs, whatever neighbours on a shared machine take), WallEventsPerSecond
	// events per wall second.
	Events              int     `json:"events"`
	Subscribers         int     `json:"subscribers"`
	RunLog              bool    `json:"run_log"`
	Seconds             float64 `json:"seconds"`
	CPUSeconds          float64 `json:"cpu_seconds"`
	EventsPerSecond     float64 `json:"events_per_s"`
	WallEventsPerSecond float64 `json:"wall_events_per_s"`
	// Delivered and Dropped are the bus's counts at the end (every
	// subscriber's buffer holds all events, so Dropped is 0 unless the
	// subscribers fell behind by more than that).
	Delivered int64 `json:"delivered"`
	Dropped   int64 `json:"dropped"`
	// LogBytes is what the run log wrote.
	LogBytes int64 `json:"log_bytes"`
}

// MaxMeasureEvents bounds Measure's event count.
const MaxMeasureEvents = 10_000_000

// Measure publishes events lifecycle events (the payload of a real
// transition) to a fresh bus with subscribers goroutines that each drain
// their channel, and, when dir is not "", a run log writing to dir: the
// time runs until every subscriber has received every event (and the run
// log has written them to the operating system). It is the bus's row of
// `make bench`.
func Measure(events, subscribers int, dir string) (Throughput, error) {
	if events < 1 || events > MaxMeasureEvents || subscribers < 0 || subscribers > 64 {
		return Throughput{}, fmt.Errorf("oona: measure: events %d must be in [1, %d] and subscribers %d in [0, 64]: %w",
			events, MaxMeasureEvents, subscribers, ErrConfig)
	}
	b, err := New(Config{Run: "measure"})
	if err != nil {
		return Throughput{}, err
	}
	defer b.Close()
	var wg sync.WaitGroup
	for range subscribers {
		s, err := b.Subscribe("measure", min(events, MaxBuffer))
		if err != nil {
			return Throughput{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < events; n++ {
				if _, ok := <-s.C(); !ok {
					return
				}
			}
		}()
	}
	var log *RunLog
	if dir != "" {
		tmp, err := os.MkdirTemp(dir, "oona-measure-")
		if err != nil {
			return Throughput{}, fmt.Errorf("oona: measure: %v: %w", err, ErrIO)
		}
		defer os.RemoveAll(tmp)
		if log, err = OpenRunLog(b, LogConfig{Dir: tmp, Buffer: min(events, MaxBuffer)}); err != nil {
			return Throughput{}, err
		}
		defer log.Close(10 * time.Second)
	}
	type transition struct {
		Layer  int     `json:"layer"`
		Slot   int     `json:"slot"`
		From   string  `json:"from"`
		To     string  `json:"to"`
		Alpha  float64 `json:"alpha"`
		Reason string  `json:"reason"`
	}
	data := transition{Layer: 3, Slot: 1, From: "TRAINING", To: "BLENDING", Alpha: 0, Reason: "trained 100 steps"}
	cpu0 := cpuSeconds()
	start := time.Now()
	for i := range events {
		if _, err := b.Publish(Header{Kind: KindLifecycle, Actor: ActorSchedule, Step: int64(i), Epoch: 1}, data); err != nil {
			return Throughput{}, err
		}
	}
	wg.Wait()
	if log != nil {
		if err := log.Flush(60 * time.Second); err != nil {
			return Throughput{}, err
		}
	}
	secs := time.Since(start).Seconds()
	cpu := max(cpuSeconds()-cpu0, 1e-9)
	st := b.Stats()
	out := Throughput{Events: events, Subscribers: subscribers, RunLog: log != nil, Seconds: secs, CPUSeconds: cpu,
		EventsPerSecond: float64(events) / cpu, WallEventsPerSecond: float64(events) / secs, Delivered: st.Delivered,
		Dropped: st.Dropped}
	if log != nil {
		out.LogBytes = log.Stats().Bytes
	}
	return out, nil
}

// cpuSeconds returns the process's CPU time so far (user + system, every
// thread).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
