package metrics

import (
	"bytes"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/urza"
)

// ErrServing is returned by Serve when the Set already serves.
var ErrServing = errcode.New(errcode.State, "metrics: already serving")

// ErrListen is returned by Serve when the address cannot be bound.
var ErrListen = errcode.New(errcode.IO, "metrics: cannot listen")

// ErrEncode is returned by Text when the registry cannot be gathered or
// encoded.
var ErrEncode = errcode.New(errcode.Internal, "metrics: cannot encode")

// StateCount is the number of seed slots in one lifecycle state.
type StateCount struct {
	State string
	N     int
}

// Breaker is one live seed's circuit breaker: its consecutive failing
// steps (Streak) against the number that opens it (Limit).
type Breaker struct {
	Layer         string
	Slot          int
	Streak, Limit int
}

// View is what one collection reads from the session.
type View struct {
	// Run and Rank are the labels "run" and "rank" of every series (read
	// at each collection: a restored checkpoint's run goes on under its
	// own id).
	Run  string
	Rank int
	// Step is the optimizer steps so far, Epoch the epoch in progress.
	Step  int64
	Epoch int
	// States counts the slots by lifecycle state (every state listed).
	States []StateCount
	// The run's counters (core/session.Counters).
	Germinations, Fossilizations, Prunes, Cancels, Rollbacks, Failures, Decisions, Events int64
	// BreakerTrips counts breakers that opened; Breakers lists the live
	// seeds' breakers.
	BreakerTrips int64
	Breakers     []Breaker
	// Alarms counts the alarms raised, by kind (nissa.AlarmKinds).
	Alarms map[string]int64
	// StepRate is the recent training speed in steps per second (NaN:
	// not measured yet); SinceStep the seconds since the last step was
	// reported (NaN: none yet).
	StepRate, SinceStep float64
	// ParamsUsed is the parameters of live and fossilized seeds.
	ParamsUsed int64
	// Impact is the impact analysis' running totals.
	Impact nissa.ImpactStats
	// Decisions is the end-of-epoch decision latency histogram.
	DecisionLatency Latency
	// Bus is the counts of the run's event bus (core/oona), nil while the
	// session publishes to none.
	Bus *oona.Stats
}

// Latency is a histogram of durations over DecisionBuckets, kept by its
// owner under its own lock (a plain value: no atomics, no allocation).
type Latency struct {
	// Counts holds, per bucket, the observations at or below its bound
	// and above the previous one.
	Counts [len(DecisionBuckets)]uint64
	// N and Sum are the number and the sum (seconds) of all observations.
	N   uint64
	Sum float64
}

// Observe records one duration.
func (l *Latency) Observe(d time.Duration) {
	s := d.Seconds()
	l.N++
	l.Sum += s
	for i, b := range DecisionBuckets {
		if s <= b {
			l.Counts[i]++
			return
		}
	}
}

// cumulative returns the histogram's buckets as Prometheus wants them
// (upper bound -> observations at or below it).
func (l *Latency) cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(DecisionBuckets))
	var c uint64
	for i, b := range DecisionBuckets {
		c += l.Counts[i]
		out[b] = c
	}
	return out
}

// Source fills v from its owner's state; an error makes the collection
// report it (the scrape fails with the error's text).
type Source func(v *View) error

// Set is one run's metric registry. Create it with New.
type Set struct {
	reg *prometheus.Registry

	// mu guards caches, stores and server.
	mu     sync.Mutex
	caches []*cache.Cache
	stores []*urza.Store
	server *Server
}

// DecisionBuckets are the decision latency histogram's upper bounds, in
// seconds (10 us to 1 s).
var DecisionBuckets = [...]float64{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1}

// New returns a Set reading src; every series carries the labels run and
// rank of the View.
func New(src Source) (*Set, error) {
	s := &Set{reg: prometheus.NewRegistry()}
	if err := s.reg.Register(newCollector(src, s)); err != nil {
		return nil, fmt.Errorf("metrics: register: %v: %w", err, errcode.ErrInternal)
	}
	return s, nil
}

// AttachCache makes the Set report c's counters, in place of the cache
// attached before (a process has one kernel cache at a time; one that was
// replaced is no longer reported).
func (s *Set) AttachCache(c *cache.Cache) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.caches = []*cache.Cache{c}
}

// AttachStore makes the Set report st's operation counts (a store attached
// twice is reported once).
func (s *Set) AttachStore(st *urza.Store) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, have := range s.stores {
		if have == st {
			return
		}
	}
	s.stores = append(s.stores, st)
}

func (s *Set) attached() ([]*cache.Cache, []*urza.Store) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*cache.Cache(nil), s.caches...), append([]*urza.Store(nil), s.stores...)
}

// Registry returns the Set's registry (tests gather from it directly).
func (s *Set) Registry() *prometheus.Registry { return s.reg }

// Text returns the metrics in the Prometheus text exposition format
// (version 0.0.4).
func (s *Set) Text() ([]byte, error) {
	mfs, err := s.reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("metrics: gather: %v: %w", err, ErrEncode)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, fmt.Errorf("metrics: encode %s: %v: %w", mf.GetName(), err, ErrEncode)
		}
	}
	return buf.Bytes(), nil
}

// Close stops the server, if one runs. The Set can still be read.
func (s *Set) Close() error {
	s.mu.Lock()
	srv := s.server
	s.server = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// num turns NaN into "absent" for gauges that have no value yet.
func num(v float64) (float64, bool) { return v, !math.IsNaN(v) }
