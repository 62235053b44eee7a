package natsink

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
	"github.com/nats-io/nats.go"
)

// Latency is what MeasureLatency found, in microseconds.
type Latency struct {
	Events int     `json:"events"`
	P50    float64 `json:"p50_us"`
	P99    float64 `json:"p99_us"`
	Max    float64 `json:"max_us"`
}

// MaxMeasureEvents bounds MeasureLatency's event count.
const MaxMeasureEvents = 100_000

// MeasureLatency publishes events one at a time on a fresh bus with a Sink
// to the server at url, and times each from Bus.Publish until a second
// connection, subscribed to the run's subjects, receives it (the sink
// stores it in JetStream on the way). It is the NATS row of `make bench`;
// url must be a loopback server the caller started.
func MeasureLatency(url string, events int) (Latency, error) {
	if events < 1 || events > MaxMeasureEvents {
		return Latency{}, fmt.Errorf("natsink: measure: events %d must be in [1, %d]: %w", events, MaxMeasureEvents, ErrConfig)
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return Latency{}, fmt.Errorf("natsink: measure: %w", err)
	}
	run := "measure-" + hex.EncodeToString(id[:])
	b, err := oona.New(oona.Config{Run: run})
	if err != nil {
		return Latency{}, err
	}
	defer b.Close()
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return Latency{}, fmt.Errorf("natsink: measure: connect %s: %v: %w", url, err, errcode.ErrUnavailable)
	}
	defer nc.Close()
	got := make(chan uint64, events)
	sub, err := nc.Subscribe("esper.v1."+run+".>", func(m *nats.Msg) {
		msgID := m.Header.Get(nats.MsgIdHdr)
		if seq, err := strconv.ParseUint(msgID[strings.LastIndexByte(msgID, '-')+1:], 10, 64); err == nil {
			got <- seq
		}
	})
	if err != nil {
		return Latency{}, fmt.Errorf("natsink: measure: subscribe: %v: %w", err, errcode.ErrUnavailable)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return Latency{}, fmt.Errorf("natsink: measure: %v: %w", err, errcode.ErrUnavailable)
	}
	s, err := Open(b, Config{URL: url})
	if err != nil {
		return Latency{}, err
	}
	defer s.Close(time.Second)
	us := make([]float64, 0, events)
	for i := range events {
		start := time.Now()
		ev, err := b.Publish(oona.Header{Kind: oona.KindLifecycle, Actor: oona.ActorSchedule, Step: int64(i)},
			map[string]any{"layer": 3, "slot": 1, "from": "TRAINING", "to": "BLENDING", "reason": "trained 100 steps"})
		if err != nil {
			return Latency{}, err
		}
		for {
			select {
			case seq := <-got:
				if seq != ev.Seq {
					continue
				}
			case <-time.After(10 * time.Second):
				return Latency{}, fmt.Errorf("natsink: measure: event %d not received in 10 s (%+v): %w", i, s.Stats(), errcode.ErrUnavailable)
			}
			break
		}
		us = append(us, float64(time.Since(start).Nanoseconds())/1e3)
	}
	slices.Sort(us)
	q := func(p float64) float64 { return us[min(len(us)-1, int(p*float64(len(us))))] }
	return Latency{Events: events, P50: q(0.50), P99: q(0.99), Max: us[len(us)-1]}, nil
}
