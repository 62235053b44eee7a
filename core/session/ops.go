package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// MaxFailureMessage bounds the failure message a session keeps (longer
// ones are cut).
const MaxFailureMessage = 4096

// ParseBlueprint returns the blueprint a germination document describes
// for host: either a complete IR (a document with "ops"; see
// docs/internals.md), whose host must equal host, or a template reference
// {"template": "residual_mlp", "params": {"width": 16}} (params optional)
// instantiated for host by Karn. Errors have code INVALID (NOTFOUND for an
// unknown template).
func ParseBlueprint(data []byte, host blueprint.Host) (*blueprint.IR, error) {
	if len(data) > blueprint.MaxIRBytes {
		return nil, fmt.Errorf("session: blueprint document is %d bytes, limit %d: %w", len(data), blueprint.MaxIRBytes, ErrArgument)
	}
	var keys map[string]json.RawMessage
	if err := decodeStrict(data, &keys); err != nil {
		return nil, fmt.Errorf("session: blueprint: %v: %w", err, ErrArgument)
	}
	if _, isIR := keys["ops"]; isIR {
		ir, err := blueprint.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("session: blueprint: %w", err)
		}
		if !sameHost(ir.Host, host) {
			return nil, fmt.Errorf("session: blueprint host %+v is not the layer's host %+v: %w", ir.Host, host, ErrArgument)
		}
		return ir, nil
	}
	var ref struct {
		Template string          `json:"template"`
		Params   json.RawMessage `json:"params"`
	}
	if err := decodeStrict(data, &ref); err != nil {
		return nil, fmt.Errorf("session: blueprint: want an IR with \"ops\" or {\"template\", \"params\"}: %v: %w", err, ErrArgument)
	}
	if ref.Template == "" {
		return nil, fmt.Errorf("session: blueprint: template reference without a template name: %w", ErrArgument)
	}
	params, err := blueprint.ParseParams(bytes.TrimSpace(ref.Params))
	if err != nil {
		return nil, fmt.Errorf("session: blueprint: %w", err)
	}
	ir, err := blueprint.Instantiate(ref.Template, params, host)
	if err != nil {
		return nil, fmt.Errorf("session: blueprint: %w", err)
	}
	return ir, nil
}

func sameHost(a, b blueprint.Host) bool {
	return a.Kind == b.Kind && a.In == b.In && a.Out == b.Out && a.Kernel == b.Kernel && a.Stride == b.Stride &&
		a.Padding == b.Padding && a.Dim == b.Dim && slices.Equal(a.Spatial, b.Spatial) && a.Mid == b.Mid &&
		a.ConsumerKernel == b.ConsumerKernel && a.ConsumerStride == b.ConsumerStride &&
		a.ConsumerPadding == b.ConsumerPadding && a.Activation == b.Activation
}

// GerminateSpec germinates the dormant seed at layer/slot with the
// blueprint a document describes (see ParseBlueprint). See Germinate.
func (s *Session) GerminateSpec(layer, slot int, spec []byte) ([]Event, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	host, err := s.hostLocked(layer)
	s.unlock()
	if err != nil {
		return nil, err
	}
	ir, err := ParseBlueprint(spec, host)
	if err != nil {
		return nil, err
	}
	return s.Germinate(layer, slot, ir, "")
}

func (s *Session) hostLocked(layer int) (blueprint.Host, error) {
	if layer < 0 || layer >= len(s.set.hosts) {
		return blueprint.Host{}, fmt.Errorf("session: layer %d is not in [0, %d): %w", layer, len(s.set.hosts), ErrArgument)
	}
	return s.hostOfLocked(layer), nil
}

// Germinate germinates the dormant seed at layer/slot with blueprint ir,
// which must fit the layer's host. The governor's hard limits apply: the
// parameter budget (code BUDGET) and the seeds in flight (code BUDGET); a
// slot that is not dormant is refused (code STATE). reason defaults to
// "manual germination". It returns every pending event, the GERMINATED one
// (carrying the canonical IR) last.
func (s *Session) Germinate(layer, slot int, ir *blueprint.IR, reason string) ([]Event, error) {
	if ir == nil {
		return nil, fmt.Errorf("session: germinate %d/%d: no blueprint: %w", layer, slot, ErrArgument)
	}
	if reason == "" {
		reason = "manual germination"
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	s.actor = oona.ActorManual
	i, err := s.indexLocked(layer, slot)
	if err != nil {
		return nil, err
	}
	if err := blueprint.Check(ir, s.hostOfLocked(layer), blueprint.Budget{}); err != nil {
		return nil, fmt.Errorf("session: germinate %d/%d: %w", layer, slot, err)
	}
	if err := s.germinateLocked(i, ir, reason, false); err != nil {
		return nil, err
	}
	return s.drainLocked(), nil
}

// germinateLocked germinates seed i with a checked ir, enforcing the
// governor's limits. analysed says that ir comes from Instantiate for this
// layer's host (Tamiyo's decisions): its counts are then trusted and the
// IR is not analysed again to be recorded.
func (s *Session) germinateLocked(i int, ir *blueprint.IR, reason string, analysed bool) error {
	sd := s.seeds[i]
	if !lifecycle.CanTransition(sd.State, lifecycle.Germinated) {
		return &lifecycle.TransitionError{Layer: sd.Layer, Slot: sd.Slot, From: sd.State, To: lifecycle.Germinated}
	}
	if !sameHost(ir.Host, s.hostOfLocked(sd.Layer)) {
		return fmt.Errorf("session: germinate %d/%d: blueprint host %+v is not the layer's host: %w", sd.Layer, sd.Slot, ir.Host, ErrArgument)
	}
	used, active := s.paramsUsedLocked()
	err := s.ctl.Governor().Admit(used, ir.ParamCount, active)
	if err != nil {
		return fmt.Errorf("session: germinate %d/%d: %w", sd.Layer, sd.Slot, err)
	}
	var doc []byte
	var id string
	kept := false
	if analysed {
		// An instance the controller made: its document and id are
		// computed once per template, parameters and host in the session.
		doc, id, kept, err = s.ctl.Instances().Canonical(ir)
	}
	if !kept && err == nil {
		canonical := ir.Canonical
		if analysed {
			canonical = ir.CanonicalComplete
		}
		if doc, err = canonical(); err == nil {
			id = canon.ID(doc)
		}
	}
	if err != nil {
		return fmt.Errorf("session: germinate %d/%d: %w", sd.Layer, sd.Slot, err)
	}
	if _, err := sd.Germinate(doc, id, ir.ParamCount, reason, s.step, s.epoch); err != nil {
		return err
	}
	if ir.FLOPsPerSample > 0 {
		// The document's count (a non-zero count is checked against
		// Karn's by Canonical, and is the one CanonicalComplete writes):
		// the FLOP count takes it from here instead of decoding the
		// document again.
		s.flops.seedID[i], s.flops.seedFLOPs[i] = id, ir.FLOPsPerSample
	}
	sd.UpdateAlpha(s.set.schedule, s.set.cfg.BlendSteps)
	s.epochsIn[i] = 0
	s.counters.Germinations++
	s.mon.impacts.Germinated(i, sd.Generation)
	s.ctl.Governor().RecordGermination(sd.Layer, s.epoch)
	s.emitLocked(Event{Layer: sd.Layer, Slot: sd.Slot, From: lifecycle.Dormant, To: lifecycle.Germinated, Step: s.step,
		Epoch: s.epoch, Alpha: sd.Alpha, Reason: reason, BlueprintID: id, Blueprint: sd.Blueprint, ParamCount: sd.ParamCount,
		Generation: sd.Generation})
	return nil
}

// moveLocked transitions layer/slot to state to at the current step, then
// applies any transition due at once.
func (s *Session) moveLocked(layer, slot int, to lifecycle.State, reason string) error {
	i, err := s.indexLocked(layer, slot)
	if err != nil {
		return err
	}
	if err := s.transitionLocked(i, to, reason, s.step); err != nil {
		return err
	}
	s.settleLocked(i)
	return nil
}

// manual runs a manual transition and drains the events.
func (s *Session) manual(layer, slot int, to func(*lifecycle.Seed) (lifecycle.State, error), reason string) ([]Event, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	s.actor = oona.ActorManual
	i, err := s.indexLocked(layer, slot)
	if err != nil {
		return nil, err
	}
	st, err := to(s.seeds[i])
	if err != nil {
		return nil, err
	}
	if err := s.moveLocked(layer, slot, st, reason); err != nil {
		return nil, err
	}
	return s.drainLocked(), nil
}

func fixed(st lifecycle.State) func(*lifecycle.Seed) (lifecycle.State, error) {
	return func(*lifecycle.Seed) (lifecycle.State, error) { return st, nil }
}

// Advance moves the seed at layer/slot to its natural next state now
// (GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED, and the
// exit path to DORMANT), without waiting for the step gate. A dormant seed
// (germinate it) and a fossilized one (final) are refused with code STATE.
// reason defaults to "manual advance". It returns every pending event.
func (s *Session) Advance(layer, slot int, reason string) ([]Event, error) {
	if reason == "" {
		reason = "manual advance"
	}
	return s.manual(layer, slot, func(sd *lifecycle.Seed) (lifecycle.State, error) {
		next, ok := sd.State.Next()
		if !ok {
			return 0, fmt.Errorf("session: advance %d/%d: a %s seed has no next state (germinate a dormant seed; a fossilized one is final): %w",
				sd.Layer, sd.Slot, sd.State, ErrSeedState)
		}
		return next, nil
	}, reason)
}

// Prune prunes the seed at layer/slot (legal from TRAINING, BLENDING and
// HOLDING; code STATE otherwise); with auto_advance the slot enters its
// embargo at once. reason defaults to "manual prune". It returns every
// pending event.
func (s *Session) Prune(layer, slot int, reason string) ([]Event, error) {
	if reason == "" {
		reason = "manual prune"
	}
	return s.manual(layer, slot, fixed(lifecycle.Pruned), reason)
}

// Fossilize fossilizes the held seed at layer/slot (legal from HOLDING
// only; code STATE otherwise). reason defaults to "manual fossilize". It
// returns every pending event.
func (s *Session) Fossilize(layer, slot int, reason string) ([]Event, error) {
	if reason == "" {
		reason = "manual fossilize"
	}
	return s.manual(layer, slot, fixed(lifecycle.Fossilized), reason)
}

// Cancel cancels the seed at layer/slot before it touches the host (legal
// from GERMINATED and TRAINING; code STATE otherwise). reason defaults to
// "manual cancel". It returns every pending event.
func (s *Session) Cancel(layer, slot int, reason string) ([]Event, error) {
	if reason == "" {
		reason = "manual cancel"
	}
	return s.manual(layer, slot, fixed(lifecycle.Cancelled), reason)
}

// ReportFailure records a failure of the seed at layer/slot (its forward
// raised, returned NaN/Inf or the wrong shape; the trainer fell back to the
// host's output) as a failure of the session's current step, and counts it
// in the seed's breaker (BreakerConfig: consecutive failing steps; a clean
// step between two failures resets the count). A trainer that batches steps
// reports each failure after stepping the session to the step it happened
// in. When the streak reaches breaker.failures the seed is pruned with the
// reason (cancelled if it is still GERMINATED; a fossilized seed cannot be
// pruned and is only recorded). A failure for a seed already on its way out
// is recorded and ignored; one for a dormant slot is refused (code STATE).
// It returns every pending event.
func (s *Session) ReportFailure(layer, slot int, kind FailureKind, msg string) ([]Event, error) {
	if !kind.Valid() {
		return nil, fmt.Errorf("session: report failure %d/%d: kind %d is not one of 0 (exception), 1 (nonfinite), 2 (shape), 3 (other): %w",
			layer, slot, int32(kind), ErrArgument)
	}
	if len(msg) > MaxFailureMessage {
		msg = msg[:MaxFailureMessage]
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	i, err := s.indexLocked(layer, slot)
	if err != nil {
		return nil, err
	}
	sd := s.seeds[i]
	f := &Failure{Layer: layer, Slot: slot, Kind: kind, Message: msg}
	record := func() {
		s.recordLocked(LogEntry{Kind: "failure", Step: s.step, Epoch: s.epoch, Failure: f}, "failure", f)
	}
	switch {
	case sd.State == lifecycle.Dormant:
		return nil, fmt.Errorf("session: report failure %d/%d: the slot is DORMANT, there is no seed to fail: %w", layer, slot, ErrSeedState)
	case sd.State.Exiting():
		f.Failures, f.Streak = sd.Failures, sd.Streak
		f.Outcome = "ignored: the seed is already " + sd.State.String()
		record()
		return s.drainLocked(), nil
	}
	sd.Failures++
	s.counters.Failures++
	switch {
	case sd.Streak > 0 && sd.FailedStep == s.step:
		// Another failure of a step already counted.
	case sd.Streak > 0 && sd.FailedStep == s.step-1:
		sd.Streak++
	default:
		sd.Streak = 1
	}
	sd.FailedStep = s.step
	open := sd.Streak >= s.set.cfg.Breaker.Failures
	f.Failures, f.Streak, f.BreakerOpen = sd.Failures, sd.Streak, open
	s.failedLocked(open)
	if !open {
		f.Outcome = fmt.Sprintf("recorded: %d of %d consecutive failing steps open the breaker", sd.Streak, s.set.cfg.Breaker.Failures)
		record()
		return s.drainLocked(), nil
	}
	reason := fmt.Sprintf("circuit breaker open after %d consecutive failing steps (last: %s: %s)", sd.Streak, kind, msg)
	to := lifecycle.Pruned
	switch sd.State {
	case lifecycle.Fossilized:
		f.Outcome = "breaker open, but a fossilized seed is final: it is kept and the trainer keeps falling back to the host"
		record()
		return s.drainLocked(), nil
	case lifecycle.Germinated:
		to = lifecycle.Cancelled
		f.Outcome = "breaker open: seed cancelled"
	default:
		f.Outcome = "breaker open: seed pruned"
	}
	record()
	s.actor = oona.ActorBreaker
	if err := s.moveLocked(layer, slot, to, reason); err != nil {
		return nil, err
	}
	return s.drainLocked(), nil
}

// MaxSeedFailedReason bounds the reason SeedFailed keeps (longer ones are
// cut).
const MaxSeedFailedReason = MaxFailureMessage

// SeedFailed records that the trainer could not build the seed of
// layer/slot's germination number generation (the Generation of its
// GERMINATED event), or that the module it built disagrees with the
// blueprint (its parameter count is not the blueprint's), and removes the
// seed with the reason: cancelled while GERMINATED or TRAINING (it has not
// touched the host), pruned in BLENDING or HOLDING. The session is the
// only validator, so this is how a blueprint it accepted but the trainer
// cannot build leaves both sides in agreement. A report for a seed that is
// already gone (another generation, an exit state, a dormant slot) is
// recorded and ignored; a fossilized seed is final and is refused (code
// STATE), as are a generation < 1 and a bad index (code INVALID). It
// returns every pending event.
func (s *Session) SeedFailed(layer, slot, generation int, reason string) ([]Event, error) {
	if generation < 1 {
		return nil, fmt.Errorf("session: seed failed %d/%d: generation %d must be >= 1 (the generation of its GERMINATED event): %w",
			layer, slot, generation, ErrArgument)
	}
	if reason == "" {
		reason = "no reason given"
	}
	if len(reason) > MaxSeedFailedReason {
		reason = reason[:MaxSeedFailedReason]
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	i, err := s.indexLocked(layer, slot)
	if err != nil {
		return nil, err
	}
	sd := s.seeds[i]
	f := &Failure{Layer: layer, Slot: slot, Kind: FailureOther, Message: "build: " + reason, Failures: sd.Failures}
	record := func() {
		s.recordLocked(LogEntry{Kind: "failure", Step: s.step, Epoch: s.epoch, Failure: f}, "failure", f)
	}
	if sd.Generation != generation || !sd.State.Live() {
		f.Outcome = fmt.Sprintf("ignored: seed generation %d is gone (the slot is %s at generation %d)", generation, sd.State, sd.Generation)
		record()
		return s.drainLocked(), nil
	}
	to := lifecycle.Pruned
	switch sd.State {
	case lifecycle.Fossilized:
		return nil, fmt.Errorf("session: seed failed %d/%d: a fossilized seed is final and cannot be removed: %w", layer, slot, ErrSeedState)
	case lifecycle.Germinated, lifecycle.Training:
		to = lifecycle.Cancelled
		f.Outcome = "seed failed to build: cancelled"
	default:
		f.Outcome = "seed failed to build: pruned"
	}
	s.counters.Failures++
	s.failedLocked(false)
	record()
	s.actor = oona.ActorTrainer
	if err := s.moveLocked(layer, slot, to, "seed failed to build: "+reason); err != nil {
		return nil, err
	}
	return s.drainLocked(), nil
}

// applyLocked carries out one decision and records it in the growth log.
func (s *Session) applyLocked(d tamiyo.Decision) DecisionResult {
	dr := &DecisionResult{Decision: d, Applied: true}
	was := s.actor
	s.actor = oona.ActorPolicy
	if d.Op == tamiyo.Rollback {
		s.actor = oona.ActorGovernor
	}
	defer func() { s.actor = was }()
	s.counters.Decisions++
	s.recordLocked(LogEntry{Kind: "decision", Step: s.step, Epoch: s.epoch, Decision: dr}, "decision", dr)
	var err error
	switch d.Op {
	case tamiyo.Wait:
	case tamiyo.Germinate:
		var i int
		if i, err = s.indexLocked(d.Layer, d.Slot); err == nil {
			if d.Blueprint == nil {
				err = fmt.Errorf("session: germinate decision for %d/%d without a blueprint: %w", d.Layer, d.Slot, ErrArgument)
			} else {
				err = s.germinateLocked(i, d.Blueprint, d.Reason, true) // instantiated by Tamiyo for this host
			}
			switch {
			case err != nil:
			case d.PredictedValue != nil: // per unit of compute: times the seed's cost when it ends
				s.mon.impacts.PredictedPerCompute(i, *d.PredictedValue, PredictorValue)
			case d.PredictedGain != nil:
				s.mon.impacts.Predicted(i, *d.PredictedGain, PredictorKarn)
			}
		}
	case tamiyo.Prune:
		err = s.moveLocked(d.Layer, d.Slot, lifecycle.Pruned, d.Reason)
	case tamiyo.Fossilize:
		err = s.moveLocked(d.Layer, d.Slot, lifecycle.Fossilized, d.Reason)
	case tamiyo.Advance:
		var i int
		if i, err = s.indexLocked(d.Layer, d.Slot); err == nil {
			if st := s.seeds[i].State; !tamiyo.AdvanceLegal(st) {
				err = fmt.Errorf("session: a policy may advance only a GERMINATED, TRAINING or BLENDING seed, %d/%d is %s: %w",
					d.Layer, d.Slot, st, ErrSeedState)
			} else {
				next, _ := st.Next()
				err = s.moveLocked(d.Layer, d.Slot, next, d.Reason)
			}
		}
	case tamiyo.Rollback:
		if d.Layer >= 0 {
			err = s.moveLocked(d.Layer, d.Slot, lifecycle.RolledBack, d.Reason)
		}
	default:
		err = fmt.Errorf("session: unknown decision op %v: %w", d.Op, ErrArgument)
	}
	if err != nil {
		dr.Applied, dr.Error = false, err.Error()
		s.counters.Refused++
	}
	return *dr
}
