package session

import (
	"errors"
	"log/slog"
	"math"
	"slices"
	"strconv"

	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// The session's events on an Oona bus (docs/events.md). Every entry of
// the growth log (lifecycle events, decisions, failures, Nissa's alarms,
// impact records) is published, and so are the governor's alarms, the end of each epoch (metrics, parameters, seeds by
// state, counters) with the health statistics, and the run's start,
// resume and end. Events are queued under the state lock and published
// after it is released, in order (see unlock), so a publish never runs
// under the state lock; Publish itself never blocks.

// lifecycleData is a lifecycle event's data: the transition as the trainer
// receives it, less the blueprint's IR (its id names it; Urza holds it),
// with the layer's name.
type lifecycleData struct {
	Event
	LayerName string `json:"layer_name"`
}

// decisionData is a decision event's data.
type decisionData struct {
	DecisionResult
	LayerName string `json:"layer_name,omitempty"`
}

// alarmData is an alarm event's data.
type alarmData struct {
	// Reason says what was seen; Layer and Slot name the seed rolled back
	// (-1 when none could be blamed, and for Nissa's alarms); Alarms
	// counts the governor's alarms for a governor alarm, and the alarms
	// of this kind raised by this session for one of Nissa's.
	Reason string `json:"reason"`
	Layer  int    `json:"layer"`
	Slot   int    `json:"slot"`
	Alarms int64  `json:"alarms"`
	// Alarm is the alarm's kind (nissa.AlarmKinds: "rollback" for the
	// governor's) and Source "governor" or "nissa"; Value is the
	// measurement that crossed Threshold (null when there is none).
	Alarm     string    `json:"alarm"`
	Source    string    `json:"source"`
	Value     nissa.Num `json:"value"`
	Threshold nissa.Num `json:"threshold"`
}

// impactData is an impact event's data: the comparison with the layer's
// name and the running totals after it.
type impactData struct {
	nissa.Impact
	LayerName string        `json:"layer_name"`
	Running   impactRunning `json:"running"`
}

// impactRunning is nissa.ImpactStats with its mean absolute error (null
// while no adaptation had both a prediction and a measurement).
type impactRunning struct {
	nissa.ImpactStats
	MeanAbsError nissa.Num `json:"mean_abs_error"`
}

func runningImpact(st nissa.ImpactStats) impactRunning {
	mae, ok := st.MeanAbsError()
	if !ok {
		mae = math.NaN()
	}
	return impactRunning{ImpactStats: st, MeanAbsError: nissa.Num(mae)}
}

// epochData is an epoch event's data.
type epochData struct {
	Metrics    tamiyo.Metrics `json:"metrics"`
	ParamsUsed int64          `json:"params_used"`
	Seeds      map[string]int `json:"seeds"`
	Decisions  int            `json:"decisions"`
	Counters   Counters       `json:"counters"`
	// TrainFLOPs is the run's training FLOPs so far, this epoch included
	// (flopCount: the wrapped layers and their live seeds).
	TrainFLOPs int64 `json:"train_flops"`
}

// AppendJSON appends d as encoding/json encodes it (oona.Appender: an
// end of epoch publishes one, and reflection cost more than the rest of
// its event; tested against encoding/json). A non-finite delta_loss, which
// ParseMetrics refuses, is written null.
func (d epochData) AppendJSON(b []byte) []byte {
	m := d.Metrics
	b = append(b, `{"metrics":{`...)
	if m.Epoch != nil {
		b = strconv.AppendInt(append(b, `"epoch":`...), int64(*m.Epoch), 10)
		b = append(b, ',')
	}
	b = m.TrainLoss.AppendJSON(append(b, `"train_loss":`...))
	b = m.ValLoss.AppendJSON(append(b, `,"val_loss":`...))
	b = m.ValMetric.AppendJSON(append(b, `,"val_metric":`...))
	if len(m.Contributions) > 0 {
		b = append(b, `,"contributions":[`...)
		for i, c := range m.Contributions {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(append(b, `{"layer":`...), int64(c.Layer), 10)
			b = strconv.AppendInt(append(b, `,"slot":`...), int64(c.Slot), 10)
			b = append(nissa.AppendNum(append(b, `,"delta_loss":`...), c.DeltaLoss), '}')
		}
		b = append(b, ']')
	}
	if len(m.SamplesPerStep) > 0 {
		b = append(b, `,"samples_per_step":[`...)
		for i, n := range m.SamplesPerStep {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, n, 10)
		}
		b = append(b, ']')
	}
	b = strconv.AppendInt(append(b, `},"params_used":`...), d.ParamsUsed, 10)
	b = append(b, `,"seeds":`...)
	if d.Seeds == nil {
		b = append(b, "null"...)
	} else {
		keys := make([]string, 0, len(d.Seeds))
		for k := range d.Seeds {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys { // lifecycle state names: letters and '_' only
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(append(append(append(b, '"'), k...), `":`...), int64(d.Seeds[k]), 10)
		}
		b = append(b, '}')
	}
	b = strconv.AppendInt(append(b, `,"decisions":`...), int64(d.Decisions), 10)
	c := d.Counters
	for _, f := range []struct {
		key string
		n   int64
	}{{`,"counters":{"germinations":`, c.Germinations}, {`,"fossilizations":`, c.Fossilizations},
		{`,"prunes":`, c.Prunes}, {`,"cancels":`, c.Cancels}, {`,"rollbacks":`, c.Rollbacks},
		{`,"failures":`, c.Failures}, {`,"alarms":`, c.Alarms}, {`,"decisions":`, c.Decisions},
		{`,"events":`, c.Events}, {`,"proposals":`, c.Proposals}, {`,"refused":`, c.Refused}} {
		b = strconv.AppendInt(append(b, f.key...), f.n, 10)
	}
	b = strconv.AppendInt(append(b, `},"train_flops":`...), d.TrainFLOPs, 10)
	return append(b, '}')
}

// runData is a run event's data.
type runData struct {
	// Phase is "start", "resume" or "end".
	Phase  string   `json:"phase"`
	Layers []string `json:"layers"`
	Slots  int      `json:"slots_per_layer"`
	Policy string   `json:"policy"`
	// Counters are the run's counts so far.
	Counters Counters `json:"counters"`
	// Bus is the bus's counts (at the end only).
	Bus *oona.Stats `json:"bus,omitempty"`
}

// AttachBus makes the session publish its events to b from now on (nil
// stops it) and publishes a run event: "start" on a fresh session,
// "resume" on one that has already stepped or restored a snapshot. The
// caller keeps ownership of b (the session never closes it).
func (s *Session) AttachBus(b *oona.Bus) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.unlock()
	s.bus = b
	phase := "start"
	if s.step > 0 || s.epoch > 0 {
		phase = "resume"
	}
	s.publishRunLocked(phase, nil)
	return nil
}

// publishLocked queues an event for the bus (nothing without one).
func (s *Session) publishLocked(kind oona.Kind, actor oona.Actor, step int64, epoch int, data any) {
	if s.bus == nil {
		return
	}
	s.busq = append(s.busq, oona.Record{Header: oona.Header{Kind: kind, Actor: actor, Step: step, Epoch: epoch}, Data: data})
}

func (s *Session) publishRunLocked(phase string, bus *oona.Stats) {
	s.publishLocked(oona.KindRun, oona.ActorSystem, s.step, s.epoch, runData{Phase: phase,
		Layers: append([]string(nil), s.set.names...), Slots: s.slots, Policy: s.set.cfg.Policy, Counters: s.counters,
		Bus: bus})
}

// publishEntryLocked queues a growth log entry as its event: lifecycle
// transitions by the session's current actor, decisions by the policy
// (the governor's rollbacks by the governor), failures as the trainer
// reported them.
func (s *Session) publishEntryLocked(e LogEntry) {
	if s.bus == nil {
		return
	}
	switch {
	case e.Event != nil:
		ev := *e.Event
		ev.Blueprint = nil
		actor := e.Actor
		if actor == "" {
			actor = oona.ActorSchedule // an entry of an older snapshot
		}
		s.publishLocked(oona.KindLifecycle, actor, e.Step, e.Epoch, lifecycleData{Event: ev, LayerName: s.layerName(ev.Layer)})
	case e.Decision != nil:
		actor := oona.ActorPolicy
		if e.Decision.Op == tamiyo.Rollback {
			actor = oona.ActorGovernor
		}
		s.publishLocked(oona.KindDecision, actor, e.Step, e.Epoch, decisionData{DecisionResult: *e.Decision,
			LayerName: s.layerName(e.Decision.Layer)})
	case e.Failure != nil:
		s.publishLocked(oona.KindFailure, oona.ActorTrainer, e.Step, e.Epoch, *e.Failure)
	case e.Alarm != nil && e.Alarm.Source != "governor":
		// The governor's alarms are published by publishAlarmLocked, with
		// the seed they blame.
		a := *e.Alarm
		s.publishLocked(oona.KindAlarm, oona.ActorNissa, e.Step, e.Epoch, alarmData{Reason: a.Message, Layer: -1,
			Slot: -1, Alarms: s.mon.alarms[a.Kind], Alarm: a.Kind, Source: a.Source, Value: a.Value,
			Threshold: a.Threshold})
	case e.Rollout != nil:
		s.publishLocked(oona.KindPolicy, oona.ActorPolicy, e.Step, e.Epoch, *e.Rollout)
	case e.Impact != nil:
		s.publishLocked(oona.KindImpact, oona.ActorNissa, e.Step, e.Epoch, impactData{Impact: *e.Impact,
			LayerName: s.layerName(e.Impact.Layer), Running: runningImpact(s.mon.impacts.Stats())})
	}
}

// publishAlarmLocked queues the governor's alarm for decision d.
func (s *Session) publishAlarmLocked(d tamiyo.Decision) {
	s.publishLocked(oona.KindAlarm, oona.ActorGovernor, s.step, s.epoch, alarmData{Reason: d.Reason, Layer: d.Layer,
		Slot: d.Slot, Alarms: s.counters.Alarms, Alarm: nissa.AlarmRollback, Source: "governor",
		Value: nissa.Num(s.counters.Alarms), Threshold: nissa.Num(math.NaN())})
}

// publishEpochLocked queues the end of an epoch: its summary, then the
// health statistics.
func (s *Session) publishEpochLocked(epoch int, m tamiyo.Metrics, decisions int) {
	if s.bus == nil {
		return
	}
	used, _ := s.paramsUsedLocked()
	seeds := map[string]int{}
	for _, sd := range s.seeds {
		if sd.State != lifecycle.Dormant {
			seeds[sd.State.String()]++
		}
	}
	m.Epoch = &epoch
	m.Contributions = append([]tamiyo.Contribution(nil), m.Contributions...)
	s.publishLocked(oona.KindEpoch, oona.ActorTrainer, s.step, epoch, epochData{Metrics: m, ParamsUsed: used,
		Seeds: seeds, Decisions: decisions, Counters: s.counters,
		TrainFLOPs: s.flops.total})
	s.publishLocked(oona.KindHealth, oona.ActorTrainer, s.step, epoch, s.stats.Snapshot(s.set.names))
}

// actorLocked returns who is acting now (ActorSchedule when no entry
// point said).
func (s *Session) actorLocked() oona.Actor {
	if s.actor == "" {
		return oona.ActorSchedule
	}
	return s.actor
}

func (s *Session) layerName(layer int) string {
	if layer >= 0 && layer < len(s.set.names) {
		return s.set.names[layer]
	}
	return ""
}

// publish publishes queued events (called with logMu held, not mu)
// together (Bus.PublishAll: an end of epoch's epoch and health events
// reach each subscriber in one burst). A refused event is a bug of this
// file: it is logged, never raised into training.
func publish(bus *oona.Bus, q []oona.Record) {
	if err := bus.PublishAll(q); err != nil && !errors.Is(err, oona.ErrClosed) {
		slog.Warn("esper session: events not published", "err", err)
	}
}
