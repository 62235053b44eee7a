package session

import (
	"fmt"
	"math"
	"time"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// EndEpoch ends an epoch: Tamiyo decides from the metrics (validation
// plateau, contributions of held seeds, the signals' rolling statistics,
// the budget; the governor checks the training loss) and the session
// applies the decisions in order. metrics.Epoch, when given, must not be
// below the epoch in progress (code STATE); contributions must name
// existing slots (code INVALID). The result holds every decision with its
// reason and outcome, and every pending event (the queue is drained).
func (s *Session) EndEpoch(m tamiyo.Metrics) (EpochResult, error) {
	if err := s.lock(); err != nil {
		return EpochResult{}, err
	}
	defer s.unlock()
	for i, c := range m.Contributions {
		if _, err := s.indexLocked(c.Layer, c.Slot); err != nil {
			return EpochResult{}, fmt.Errorf("session: end epoch: contributions[%d]: %w", i, err)
		}
	}
	if err := s.checkSamplesLocked(m.SamplesPerStep); err != nil {
		return EpochResult{}, err
	}
	epoch := s.epoch
	if m.Epoch != nil {
		if *m.Epoch < s.epoch {
			return EpochResult{}, fmt.Errorf("session: end epoch: epoch %d has already ended (the epoch in progress is %d): %w",
				*m.Epoch, s.epoch, ErrSeedState)
		}
		epoch = *m.Epoch
	}
	s.epoch = epoch
	for i := range s.epochsIn {
		s.epochsIn[i]++
	}
	used, _ := s.paramsUsedLocked()
	obs := tamiyo.Observation{Epoch: epoch, Step: s.step, Metrics: m, Layers: s.layerViews,
		Seeds: s.seedViewsLocked(), ParamsUsed: used, HostParams: s.hostParams(), LifecycleSteps: s.set.cfg.TrainSteps + s.set.cfg.BlendSteps}
	for l := range obs.Layers {
		obs.Layers[l].Name = s.set.names[l]
		for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
			obs.Layers[l].Signals[sig], _ = s.stats.Layer(l, sig)
		}
	}
	if s.logger != nil {
		mc := m
		mc.Epoch = &epoch
		s.logq = append(s.logq, logRecord{kind: "metrics", step: s.step, payload: mc})
	}
	for _, c := range m.Contributions {
		gain := math.NaN() // relative gain: the impact analysis' unit, Karn's and the value model's
		if m.ValLoss.Finite() {
			if g, ok := karn.RelativeGain(m.ValLoss.Value, c.DeltaLoss); ok {
				gain = g
			}
		}
		s.mon.impacts.Measured(c.Layer*s.slots+c.Slot, c.DeltaLoss, gain)
	}
	began := time.Now()
	decisions := s.ctl.Decide(&obs)
	res := EpochResult{Epoch: epoch, Decisions: make([]DecisionResult, 0, len(decisions))}
	for _, d := range decisions {
		if d.Op == tamiyo.Rollback {
			s.counters.Alarms++
			s.governorAlarmLocked(d.Reason)
			s.publishAlarmLocked(d)
		}
		res.Decisions = append(res.Decisions, s.applyLocked(d))
	}
	s.mon.latency.Observe(time.Since(began))
	rolled := s.rolloutLocked(epoch, m.ValLoss)
	s.epochEndedLocked(epoch, m)
	s.flopsEpochLocked(m.SamplesPerStep)
	res.Rollout = rolled
	res.Events = s.drainLocked()
	if res.Events == nil {
		res.Events = []Event{}
	}
	s.publishEpochLocked(epoch, m, len(res.Decisions))
	s.epoch = epoch + 1
	if s.ppo != nil && len(decisions) == 0 {
		// The ppo policy moves once the epoch has ended, on the graph of the
		// epoch in progress: the graph its trainer reads after end_epoch
		// (Morphogenesis.graph()), so the network sees at decision time what
		// it saw in training. Its moves' events follow the epoch's.
		began := time.Now()
		res.Decisions = s.ppoMovesLocked(res.Decisions)
		res.Events = append(res.Events, s.drainLocked()...)
		s.mon.latency.Observe(time.Since(began))
	}
	return res, nil
}
