package session

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/metrics"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/tamiyo"
	"github.com/esper-morph/esper/policy/value"
)

// Monitoring: the run's metrics (core/metrics), Nissa's alarms and the
// impact analysis. Everything here runs under the session's lock except
// the metrics Set, which reads the session through metricsView.

// MetricsConfig labels the run's metrics.
type MetricsConfig struct {
	// Run and Rank become the constant labels "run" and "rank" of every
	// series (default "" and 0); a rank is a process of a multi-process
	// run, each with its own endpoint.
	Run  string `json:"run,omitempty"`
	Rank int    `json:"rank,omitempty"`
}

// MaxPendingReports bounds the alarms and impact records waiting for
// Reports; older ones are dropped first (they stay in the growth log).
const MaxPendingReports = 1024

// Reports are the alarms and impact records raised since the last call of
// Session.Reports.
type Reports struct {
	Alarms  []nissa.Alarm  `json:"alarms"`
	Impacts []nissa.Impact `json:"impacts"`
	// Dropped counts reports dropped because nobody read them in time.
	Dropped int64 `json:"dropped"`
}

// monitor is the session's monitoring state; guarded by Session.mu.
type monitor struct {
	watch   *nissa.Watch
	impacts *nissa.Impacts
	// alarms counts the alarms raised by this session object, by kind.
	alarms map[string]int64
	trips  int64
	// pending holds the reports not yet read.
	pending Reports
	// mark is when the last measured window began (zero: none); stepAt
	// when steps were last reported; rate the step rate (NaN: none).
	mark, stepAt time.Time
	rate         float64
	stall        *time.Timer
	stallFired   bool
	// latency is the end-of-epoch decision latency histogram.
	latency metrics.Latency
	// set is the metrics registry; never replaced.
	set *metrics.Set
}

// startMonitor builds the monitoring state for the session's settings.
func (s *Session) startMonitor() error {
	watch, err := nissa.NewWatch(s.set.cfg.Alerts)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	set, err := metrics.New(s.metricsView)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	s.mon = &monitor{watch: watch, impacts: nissa.NewImpacts(len(s.seeds)), alarms: make(map[string]int64),
		rate: math.NaN(), set: set}
	for _, k := range nissa.AlarmKinds {
		s.mon.alarms[k] = 0
	}
	return nil
}

// resetMonitorLocked rebuilds the checks for a restored configuration; the
// alarm counts and the metrics registry stay.
func (s *Session) resetMonitorLocked(impacts *nissa.Impacts) error {
	watch, err := nissa.NewWatch(s.set.cfg.Alerts)
	if err != nil {
		return fmt.Errorf("session: restore: %w", err)
	}
	s.mon.watch, s.mon.impacts = watch, impacts
	s.mon.mark, s.mon.stallFired = time.Time{}, false
	return nil
}

// stopMonitor stops the stall timer and the metrics server.
func (s *Session) stopMonitor() error {
	s.mu.Lock()
	if s.mon.stall != nil {
		s.mon.stall.Stop()
	}
	s.mu.Unlock()
	return s.mon.set.Close()
}

// alarmLocked raises an alarm: counted, logged, queued for Reports.
func (s *Session) alarmLocked(a nissa.Alarm) {
	s.mon.alarms[a.Kind]++
	if len(s.mon.pending.Alarms) >= MaxPendingReports {
		s.mon.pending.Alarms = s.mon.pending.Alarms[1:]
		s.mon.pending.Dropped++
	}
	s.mon.pending.Alarms = append(s.mon.pending.Alarms, a)
	e := a
	s.recordLocked(LogEntry{Kind: "alarm", Step: a.Step, Epoch: a.Epoch, Alarm: &e}, "alarm", &e)
}

// governorAlarmLocked reports a rollback the governor called for.
func (s *Session) governorAlarmLocked(reason string) {
	s.alarmLocked(nissa.Alarm{Kind: nissa.AlarmRollback, Source: "governor", Step: s.step, Epoch: s.epoch,
		Value: nissa.Num(s.counters.Alarms), Threshold: nissa.Num(math.NaN()), Message: reason})
}

// steppedLocked times the steps just reported (a window ends at a Step
// that carries signals) and re-arms the stall timer.
func (s *Session) steppedLocked(steps int64, withSignals bool) {
	if steps <= 0 {
		return
	}
	m := s.mon
	now := time.Now()
	if withSignals && !m.mark.IsZero() {
		if dt := now.Sub(m.mark).Seconds(); dt > 0 {
			r := float64(steps) / dt
			if math.IsNaN(m.rate) {
				m.rate = r
			} else {
				m.rate += 0.2 * (r - m.rate)
			}
			if a, ok := m.watch.StepTime(s.step, s.epoch, steps, dt); ok {
				s.alarmLocked(a)
			}
		}
	}
	m.mark, m.stepAt = now, now
	if d := m.watch.Config().StallSeconds; d > 0 {
		wait := time.Duration(d * float64(time.Second))
		m.stallFired = false
		if m.stall == nil {
			m.stall = time.AfterFunc(wait, s.stalled)
		} else {
			m.stall.Reset(wait)
		}
	}
}

// stalled runs on the stall timer's goroutine: no step for StallSeconds.
func (s *Session) stalled() {
	defer func() {
		if r := recover(); r != nil {
			slog.Error("esper session: stall check panicked", "panic", r)
		}
	}()
	if err := s.lock(); err != nil {
		return
	}
	defer s.unlock()
	m := s.mon
	d := m.watch.Config().StallSeconds
	since := time.Since(m.stepAt).Seconds()
	if m.stallFired || d <= 0 || since < d {
		return
	}
	m.stallFired = true
	s.alarmLocked(nissa.Alarm{Kind: nissa.AlarmStalled, Source: "nissa", Step: s.step, Epoch: s.epoch, Value: nissa.Num(since),
		Threshold: nissa.Num(d), Message: fmt.Sprintf("nissa: no step reported for %.3g s (threshold %g s)", since, d)})
}

// epochEndedLocked restarts the step timing after an end of epoch (the
// evaluation before it is not training time) and checks the plateau.
func (s *Session) epochEndedLocked(epoch int, m tamiyo.Metrics) {
	s.mon.mark = time.Now()
	if a, ok := s.mon.watch.Epoch(s.step, epoch, m.ValLoss); ok {
		s.alarmLocked(a)
	}
}

// failedLocked feeds a seed failure to the failure-rate check; open says
// whether it opened the seed's breaker.
func (s *Session) failedLocked(open bool) {
	if open {
		s.mon.trips++
	}
	if a, ok := s.mon.watch.Failure(s.step, s.epoch); ok {
		s.alarmLocked(a)
	}
}

// What made an impact record's prediction (nissa.Impact.Predictor).
const (
	// PredictorKarn is Karn's predictor: a relative gain, for a candidate
	// Tamiyo took from a search ranked by it.
	PredictorKarn = "karn"
	// PredictorValue is the learned policy's value model: a gain per
	// host-epoch of compute, times the seed's compute when it ends.
	PredictorValue = "value"
)

// endedLocked closes seed i's adaptation when it reaches a final or exit
// state, recording its impact comparison.
func (s *Session) endedLocked(i int, to lifecycle.State, step int64) {
	switch to {
	case lifecycle.Fossilized, lifecycle.Pruned, lifecycle.Cancelled, lifecycle.RolledBack:
	default:
		return
	}
	sd := s.seeds[i]
	im, ok := s.mon.impacts.Ended(i, sd.Layer, sd.Slot, to.String(), step, s.epoch, s.computeLocked(i, step))
	if !ok {
		return
	}
	if len(s.mon.pending.Impacts) >= MaxPendingReports {
		s.mon.pending.Impacts = s.mon.pending.Impacts[1:]
		s.mon.pending.Dropped++
	}
	s.mon.pending.Impacts = append(s.mon.pending.Impacts, im)
	s.recordLocked(LogEntry{Kind: "impact", Step: step, Epoch: s.epoch, Impact: &im}, "impact", &im)
}

// computeLocked returns the compute seed i cost by step, as the value
// model's target counts it (value.CostOf, floored by value.Charged): its
// size over the wrapped layers' times the epochs it ran (TRAINING,
// BLENDING, HOLDING: from its move to TRAINING to step, over the run's
// steps per epoch when it germinated; for a germination at step 0, the
// epochs since it germinated). A prediction of value per unit of compute
// times this is a predicted relative gain (the impact analysis' unit).
func (s *Session) computeLocked(i int, step int64) float64 {
	sd := s.seeds[i]
	var running int64
	trained := false
	for j := len(sd.History) - 1; j >= 0; j-- {
		tr := sd.History[j]
		if tr.To == lifecycle.Training {
			running, trained = max(0, step-tr.Step), true
			break
		}
		if tr.To == lifecycle.Germinated {
			break
		}
	}
	spanEpochs := 0
	if trained {
		spanEpochs = max(0, s.epoch-sd.GerminatedEpoch)
	}
	host := s.hostParams()
	if host <= 0 {
		return math.NaN()
	}
	_, _, cost := value.CostOf(sd.ParamCount, host, running, spanEpochs, sd.GerminatedStep, sd.GerminatedEpoch)
	return value.Charged(cost)
}

// Reports drains the alarms and impact records raised since the last call
// (empty lists when none).
func (s *Session) Reports() (Reports, error) {
	if err := s.lock(); err != nil {
		return Reports{}, err
	}
	defer s.unlock()
	r := s.mon.pending
	s.mon.pending = Reports{}
	if r.Alarms == nil {
		r.Alarms = []nissa.Alarm{}
	}
	if r.Impacts == nil {
		r.Impacts = []nissa.Impact{}
	}
	return r, nil
}

// Waiting returns the governor's rollback count (as Alarms does) and the
// number of reports waiting for Reports, in one call: a trainer that reads
// the first after every step that carried signals learns of reports at no
// extra cost.
func (s *Session) Waiting() (alarms int64, reports int, err error) {
	if err := s.lock(); err != nil {
		return 0, 0, err
	}
	defer s.unlock()
	return s.counters.Alarms, len(s.mon.pending.Alarms) + len(s.mon.pending.Impacts), nil
}

// metricsView fills a metrics view (the metrics Set's Source).
func (s *Session) metricsView(v *metrics.View) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.unlock()
	c := s.counters
	v.Run, v.Rank = s.set.cfg.Metrics.Run, s.set.cfg.Metrics.Rank
	v.DecisionLatency = s.mon.latency
	v.Step, v.Epoch = s.step, s.epoch
	v.Germinations, v.Fossilizations, v.Prunes, v.Cancels = c.Germinations, c.Fossilizations, c.Prunes, c.Cancels
	v.Rollbacks, v.Failures, v.Decisions, v.Events = c.Rollbacks, c.Failures, c.Decisions, c.Events
	var counts [lifecycle.NumStates]int
	for _, sd := range s.seeds {
		counts[sd.State]++
		if sd.State.Live() && sd.Streak > 0 {
			v.Breakers = append(v.Breakers, metrics.Breaker{Layer: s.set.names[sd.Layer], Slot: sd.Slot, Streak: sd.Streak,
				Limit: s.set.cfg.Breaker.Failures})
		}
	}
	v.States = make([]metrics.StateCount, lifecycle.NumStates)
	for st := range lifecycle.NumStates {
		v.States[st] = metrics.StateCount{State: lifecycle.State(st).String(), N: counts[st]}
	}
	v.BreakerTrips = s.mon.trips
	v.Alarms = make(map[string]int64, len(s.mon.alarms))
	for k, n := range s.mon.alarms {
		v.Alarms[k] = n
	}
	v.StepRate, v.SinceStep = s.mon.rate, math.NaN()
	if !s.mon.stepAt.IsZero() {
		v.SinceStep = time.Since(s.mon.stepAt).Seconds()
	}
	v.ParamsUsed, _ = s.paramsUsedLocked()
	v.Impact = s.mon.impacts.Stats()
	if s.bus != nil {
		st := s.bus.Stats()
		v.Bus = &st
	}
	return nil
}

// MetricsText returns the run's metrics in the Prometheus text format.
func (s *Session) MetricsText() ([]byte, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return s.mon.set.Text()
}

// ServeMetrics serves the run's metrics at http://host:port/metrics until
// the session closes (port 0 picks a free port) and returns the address
// bound. host is required ("127.0.0.1" keeps it on loopback).
func (s *Session) ServeMetrics(host string, port int) (net.Addr, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	addr, err := s.mon.set.Serve(host, port)
	if err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	return addr, nil
}

// AttachCache makes the run's metrics report the kernel cache c.
func (s *Session) AttachCache(c *cache.Cache) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	s.mon.set.AttachCache(c)
	return nil
}

// AttachStore makes the run's metrics report the Urza store st.
func (s *Session) AttachStore(st *urza.Store) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	s.mon.set.AttachStore(st)
	return nil
}

func (s *Session) checkOpen() error {
	if err := s.lock(); err != nil {
		return err
	}
	s.unlock()
	return nil
}
