package session

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Option configures a Session beyond its Config.
type Option func(*options)

type options struct {
	log        io.Writer
	modelCache string
}

// WithLog makes the session write its JSON-lines log (see nissa.Logger) to
// w; the caller keeps ownership of w. It takes precedence over
// Config.LogPath.
func WithLog(w io.Writer) Option { return func(o *options) { o.log = w } }

// WithModelCache sets the folder where a rolling deployment materialises
// the value model versions it loads from Urza (default $ESPER_HOME/models,
// ESPER_HOME as this process's environment has it).
func WithModelCache(dir string) Option { return func(o *options) { o.modelCache = dir } }

// logRecord is a log line waiting to be written once the state lock is
// released.
type logRecord struct {
	kind    string
	step    int64
	payload any
	signals []float32 // set for kind "signals"
}

// Session is one training run. All methods are safe for concurrent use.
type Session struct {
	// Set at New and never changed.
	logger  *nissa.Logger
	logFile *os.File
	// logErr holds the first log write error.
	logErr atomic.Pointer[string]
	// logMu orders log writes: it is taken before mu is released, so
	// records reach the writer in the order they were made while the
	// writer itself never runs under mu.
	logMu sync.Mutex

	// mu guards every field below.
	mu       sync.Mutex
	set      settings
	slots    int
	step     int64
	epoch    int // the epoch in progress
	seeds    []*lifecycle.Seed
	epochsIn []int // per slot: end-of-epoch calls since its last transition
	stats    *nissa.Stats
	ctl      *tamiyo.Controller
	pending  []Event
	growth   []LogEntry
	dropped  int64
	counters Counters
	// flops counts the run's training FLOPs (flops.go).
	flops   flopCount
	reasons [lifecycle.NumStates]string // automatic transitions' reasons, by from-state
	logq    []logRecord
	views   []tamiyo.SeedView // scratch for rollbacks
	// layerViews is EndEpoch's scratch for the controller's view of every
	// layer (the controller keeps nothing of an observation after Decide).
	layerViews []tamiyo.LayerView
	source     *outcomeSource    // Karn's outcome history (search on, urza set)
	rolls      []*rollout        // rolling deployments (value_model, karn_predictor "urza:<name>"), in kind order
	ppo        *ppoPolicy        // the ppo policy (nil for other policies; ppo.go)
	tplByID    map[string]string // blueprint id -> its template's name (Graph's seed nodes)
	modelCache string            // where rolls materialise model versions ("": the default)
	closed     bool
	mon        *monitor // metrics, alarms, impact analysis (monitor.go)
	// bus receives the session's events (nil: none); busq holds those
	// queued under mu, published by unlock; actor is who acts in the
	// call in progress (oona.go).
	bus   *oona.Bus
	busq  []oona.Record
	actor oona.Actor
	// sizeParams caches the seed sizes of the graph's masks (graph.go):
	// they follow from the hosts alone.
	sizeParams [][][]int64
	tplNames   []string // the template names sizeParams is indexed by
}

// New starts a session. cfg is validated first; nothing is created when it
// is refused.
func New(cfg Config, opts ...Option) (*Session, error) {
	set, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Session{modelCache: o.modelCache}
	if err := s.reset(set, nil, nil); err != nil {
		return nil, err
	}
	if err := s.startMonitor(); err != nil {
		return nil, err
	}
	switch {
	case o.log != nil:
		s.logger = nissa.NewLogger(o.log)
	case set.cfg.LogPath != "":
		f, err := os.OpenFile(set.cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("session: open log %s: %v: %w", set.cfg.LogPath, err, errcode.ErrIO)
		}
		s.logFile = f
		s.logger = nissa.NewLogger(f)
	}
	return s, nil
}

// reset (re)builds the state for set: every slot dormant, step 0. With
// models published to Urza (a value model, Karn's predictor), rolls are the
// rolling deployments' states to resume (none for a kind: load the newest
// version) and prev rollouts whose open stores may be reused.
func (s *Session) reset(set settings, rolls []RolloutState, prev []*rollout) error {
	n := len(set.hosts) * set.cfg.SlotsPerLayer
	stats, err := nissa.New(nissa.Config{Layers: len(set.hosts), Window: set.cfg.Signals.Window, EWMA: set.cfg.Signals.EWMA})
	if err != nil {
		return fmt.Errorf("session: signals: %w", err)
	}
	ctlCfg := set.ctl
	var opened []*rollout
	open := func(key, setting string) (string, error) {
		name, ok := urzaModelName(setting)
		if !ok {
			return setting, nil
		}
		kind, _ := kindOf(key)
		r, dir, err := openRollout(kind, set.cfg.Urza, name, s.modelCache, stateFor(rolls, key), rollFor(prev, key))
		if err != nil {
			return "", err
		}
		opened = append(opened, r)
		return dir, nil
	}
	if ctlCfg.Kind == tamiyo.Learned {
		if ctlCfg.ValueModel, err = open(ArtifactValueModel, ctlCfg.ValueModel); err != nil {
			return fmt.Errorf("session: controller: %w", err)
		}
	}
	predictor := ""
	if ctlCfg.Search {
		if predictor, err = open(ArtifactKarnPredictor, set.cfg.KarnPredictor); err != nil {
			releaseRolls(opened, prev)
			return fmt.Errorf("session: karn: %w", err)
		}
	}
	ctl, err := tamiyo.New(ctlCfg, set.hosts)
	if err != nil {
		releaseRolls(opened, prev)
		return fmt.Errorf("session: controller: %w", err)
	}
	if ctlCfg.Search {
		svc := s.karnService(set.cfg.Urza)
		if predictor != "" {
			p, err := karn.LoadPredictor(predictor)
			if err != nil {
				releaseRolls(opened, prev)
				return fmt.Errorf("session: karn_predictor: %w", err)
			}
			note := "predictor folder " + predictor
			if r := rollFor(opened, ArtifactKarnPredictor); r != nil {
				note = predictorNote(r.st.Name, r.st.Active, p)
			}
			svc.UsePredictor(p, note)
		}
		ctl.SetKarn(svc)
	}
	var ppo *ppoPolicy
	if ctlCfg.Kind == tamiyo.PPO {
		model, err := graphpolicy.LoadOn(ctlCfg.PPOModel, infer.Options{Runtime: ctlCfg.PPORuntime})
		if err != nil {
			releaseRolls(opened, prev)
			return fmt.Errorf("session: controller: ppo policy: %w", err)
		}
		ppo = &ppoPolicy{dec: model.NewDecider()}
	}
	s.ppo = ppo
	s.rolls = opened
	s.set = set
	s.sizeParams = nil
	s.slots = set.cfg.SlotsPerLayer
	s.step, s.epoch = 0, 0
	s.seeds = make([]*lifecycle.Seed, n)
	for i := range s.seeds {
		s.seeds[i] = lifecycle.NewSeed(i/s.slots, i%s.slots)
	}
	s.epochsIn = make([]int, n)
	s.stats, s.ctl = stats, ctl
	s.pending, s.growth, s.dropped, s.counters = nil, nil, 0, Counters{}
	s.flops = newFLOPCount(set, n)
	s.views = make([]tamiyo.SeedView, n)
	s.layerViews = make([]tamiyo.LayerView, len(set.hosts))
	s.initReasons()
	return nil
}

func (s *Session) initReasons() {
	c := s.set.cfg
	s.reasons = [lifecycle.NumStates]string{}
	s.reasons[lifecycle.Germinated] = "germinated; training begins"
	s.reasons[lifecycle.Training] = "trained " + strconv.FormatInt(c.TrainSteps, 10) + " steps"
	s.reasons[lifecycle.Blending] = "blended in over " + strconv.FormatInt(c.BlendSteps, 10) + " steps (" + c.Schedule + ")"
	s.reasons[lifecycle.Pruned] = "embargo of " + strconv.FormatInt(s.set.embargo, 10) + " steps"
	s.reasons[lifecycle.Cancelled] = s.reasons[lifecycle.Pruned]
	s.reasons[lifecycle.RolledBack] = s.reasons[lifecycle.Pruned]
	s.reasons[lifecycle.Embargoed] = "embargo of " + strconv.FormatInt(s.set.embargo, 10) + " steps served"
	s.reasons[lifecycle.Resetting] = "slot reset"
}

// Close releases the log file the session opened (if any). Later calls
// fail with ErrClosed; Close itself may be called again.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.source != nil {
		s.source.close()
	}
	closeRolls(s.rolls)
	bus := s.bus
	if bus != nil {
		st := bus.Stats()
		s.publishRunLocked("end", &st)
	}
	q := s.busq
	s.bus, s.busq = nil, nil
	s.logMu.Lock()
	s.mu.Unlock()
	if bus != nil {
		publish(bus, q)
	}
	var closeErr error
	if s.logFile != nil {
		if err := s.logFile.Close(); err != nil {
			closeErr = fmt.Errorf("session: close log: %v: %w", err, errcode.ErrIO)
		}
	}
	s.logMu.Unlock()
	// The metrics server is stopped holding no lock: its handlers take mu.
	if err := s.stopMonitor(); err != nil {
		slog.Warn("esper session: stopping the metrics server", "err", err)
	}
	return closeErr
}

// lock takes the state lock, refusing a closed session.
func (s *Session) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// unlock releases the state lock, then writes the queued log records and
// publishes the queued events (in the order the calls made them: logMu is
// taken before mu is released).
func (s *Session) unlock() {
	s.actor = ""
	if (len(s.logq) == 0 || s.logger == nil) && len(s.busq) == 0 {
		s.logq = s.logq[:0]
		s.mu.Unlock()
		return
	}
	q, bq, bus := s.logq, s.busq, s.bus
	s.logq, s.busq = nil, nil
	if s.logger == nil {
		q = nil
	}
	s.logMu.Lock()
	s.mu.Unlock()
	defer s.logMu.Unlock()
	if bus != nil {
		defer publish(bus, bq)
	}
	for _, r := range q {
		var err error
		if r.signals != nil {
			err = s.logger.Signals(r.step, r.signals)
		} else {
			err = s.logger.Record(r.kind, r.step, r.payload)
		}
		if err != nil && s.logErr.CompareAndSwap(nil, ptr(err.Error())) {
			slog.Warn("esper session: log write failed; later records may be lost", "err", err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Config returns a copy of the configuration in use, defaults filled in.
func (s *Session) Config() Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.cfg.clone()
}

// Layers returns the number of layers.
func (s *Session) Layers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set.hosts)
}

// Slots returns the number of slots per layer.
func (s *Session) Slots() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slots
}

// indexLocked returns the flat index of layer/slot, checked.
func (s *Session) indexLocked(layer, slot int) (int, error) {
	if layer < 0 || layer >= len(s.set.hosts) || slot < 0 || slot >= s.slots {
		return 0, fmt.Errorf("session: seed %d/%d: layer must be in [0, %d) and slot in [0, %d): %w",
			layer, slot, len(s.set.hosts), s.slots, ErrArgument)
	}
	return layer*s.slots + slot, nil
}

// Step advances the run by steps optimizer steps (>= 0): step counters
// move, automatic transitions happen when their gates open, signals (empty,
// or exactly 2 + 7 x layers floats; NaN = not measured) are ingested and
// checked by the governor (nonfinite_count > 0, a non-finite loss or a loss
// spike is an alarm: it rolls the newest seed in flight back, or, with no
// seed to blame, is recorded as a rollback decision without an event; see
// Alarms), and every slot's alpha is
// written to alphasOut (layer-major, at least layers x slots floats). It
// returns the number of events waiting for Events. Arguments are checked
// before anything changes. signals is read during the call only.
func (s *Session) Step(steps int64, signals []float32, alphasOut []float32) (int, error) {
	if steps < 0 || steps > MaxSteps {
		return 0, fmt.Errorf("session: step: steps %d must be in [0, %d]: %w", steps, int64(MaxSteps), ErrArgument)
	}
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.unlock()
	if n := nissa.Len(len(s.set.hosts)); len(signals) != 0 && len(signals) != n {
		return 0, fmt.Errorf("session: step: signals buffer has %d floats, want 0 or %d (2 globals + %d x %d layers): %w",
			len(signals), n, nissa.NumSignals, len(s.set.hosts), ErrArgument)
	}
	if len(alphasOut) < len(s.seeds) {
		return 0, fmt.Errorf("session: step: alphas buffer holds %d floats, want %d (%d layers x %d slots): %w",
			len(alphasOut), len(s.seeds), len(s.set.hosts), s.slots, ErrAlphaBuffer)
	}
	if s.step+steps > MaxSteps {
		return 0, fmt.Errorf("session: step: the step count would pass %d: %w", int64(MaxSteps), ErrArgument)
	}
	s.actor = oona.ActorSchedule
	base := s.step
	s.flopsSteppedLocked(steps)
	for i := range s.seeds {
		s.advanceLocked(i, base, steps)
	}
	s.step = base + steps
	if len(signals) > 0 {
		if err := s.stats.Ingest(s.step, signals); err != nil {
			return 0, fmt.Errorf("session: step: %w", err)
		}
		if every := s.set.cfg.LogSignalsEvery; s.logger != nil && every > 0 && s.stats.Ingests()%int64(every) == 0 {
			s.logq = append(s.logq, logRecord{kind: "signals", step: s.step, signals: append([]float32(nil), signals...)})
		}
		if a := s.ctl.Governor().ObserveStep(signals[nissa.TrainLossMean], signals[nissa.NonfiniteCount]); a.Raised() {
			s.rollbackLocked(a)
		}
	}
	s.steppedLocked(steps, len(signals) > 0)
	for i, sd := range s.seeds {
		alphasOut[i] = float32(sd.Alpha)
	}
	return len(s.pending), nil
}

// durationLocked returns how many steps state st lasts before its automatic
// transition, and false for states without one (DORMANT, HOLDING,
// FOSSILIZED). Exit states (PRUNED, CANCELLED, ROLLED_BACK) last 0 steps.
func (s *Session) durationLocked(st lifecycle.State) (int64, bool) {
	switch st {
	case lifecycle.Germinated, lifecycle.Resetting:
		return 1, true
	case lifecycle.Training:
		return s.set.cfg.TrainSteps, true
	case lifecycle.Blending:
		return s.set.cfg.BlendSteps, true
	case lifecycle.Embargoed:
		return s.set.embargo, true
	case lifecycle.Pruned, lifecycle.Cancelled, lifecycle.RolledBack:
		return 0, true
	}
	return 0, false
}

// advanceLocked moves seed i forward by steps from step base, applying each
// automatic transition at the step its min-steps gate opens.
func (s *Session) advanceLocked(i int, base, steps int64) {
	sd := s.seeds[i]
	done := int64(0)
	for s.set.auto {
		dur, timed := s.durationLocked(sd.State)
		if !timed {
			break
		}
		need := max(0, dur-sd.StepsInState)
		if need > steps-done {
			break
		}
		sd.Tick(need)
		done += need
		next, _ := sd.State.Next() // the min-steps gate is open now
		s.transitionLocked(i, next, s.reasons[sd.State], base+done)
	}
	sd.Tick(steps - done)
	sd.UpdateAlpha(s.set.schedule, s.set.cfg.BlendSteps)
}

// settleLocked applies the automatic transitions due at once (an exit
// state's move to EMBARGOED, a zero embargo) after a transition outside
// Step.
func (s *Session) settleLocked(i int) {
	was := s.actor
	s.actor = oona.ActorSchedule
	s.advanceLocked(i, s.step, 0)
	s.actor = was
}

// transitionLocked moves seed i to state to, queueing the event and logging
// it. It returns the lifecycle error for an illegal move.
func (s *Session) transitionLocked(i int, to lifecycle.State, reason string, step int64) error {
	sd := s.seeds[i]
	tr, err := sd.Transition(to, reason, step)
	if err != nil {
		return err
	}
	sd.UpdateAlpha(s.set.schedule, s.set.cfg.BlendSteps)
	s.epochsIn[i] = 0
	switch to {
	case lifecycle.Fossilized:
		s.counters.Fossilizations++
	case lifecycle.Pruned:
		s.counters.Prunes++
	case lifecycle.Cancelled:
		s.counters.Cancels++
	case lifecycle.RolledBack:
		s.counters.Rollbacks++
	}
	s.emitLocked(Event{Layer: sd.Layer, Slot: sd.Slot, From: tr.From, To: tr.To, Step: step, Epoch: s.epoch,
		Alpha: sd.Alpha, Reason: reason})
	s.endedLocked(i, to, step)
	return nil
}

// emitLocked queues ev for the trainer and records it.
func (s *Session) emitLocked(ev Event) {
	s.pending = append(s.pending, ev)
	s.counters.Events++
	s.flops.dirty = true // a seed changed state: the FLOPs count recomputes its layers' forward
	e := ev
	s.recordLocked(LogEntry{Kind: "event", Step: ev.Step, Epoch: ev.Epoch, Event: &e}, "event", &e)
}

// recordLocked appends an entry to the growth log and queues it for the
// log writer. A full log drops its oldest quarter at once, so recording
// stays O(1) amortised.
func (s *Session) recordLocked(e LogEntry, kind string, payload any) {
	if e.Event != nil && e.Actor == "" {
		e.Actor = s.actorLocked()
	}
	if limit := s.set.cfg.GrowthLogMax; len(s.growth) >= limit {
		n := len(s.growth) - limit + max(1, limit/4)
		s.growth = append(s.growth[:0], s.growth[n:]...)
		s.dropped += int64(n)
	}
	s.growth = append(s.growth, e)
	s.publishEntryLocked(e)
	if s.logger != nil {
		s.logq = append(s.logq, logRecord{kind: kind, step: e.Step, payload: payload})
	}
}

// Events drains and returns the pending events, oldest first (nil when
// none).
func (s *Session) Events() ([]Event, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	return s.drainLocked(), nil
}

func (s *Session) drainLocked() []Event {
	if len(s.pending) == 0 {
		return nil
	}
	out := s.pending
	s.pending = nil
	return out
}

// seedViewsLocked fills the scratch views of every slot.
func (s *Session) seedViewsLocked() []tamiyo.SeedView {
	for i, sd := range s.seeds {
		s.views[i] = tamiyo.SeedView{Layer: sd.Layer, Slot: sd.Slot, State: sd.State, StepsInState: sd.StepsInState,
			EpochsInState: s.epochsIn[i], ParamCount: sd.ParamCount, GerminatedStep: sd.GerminatedStep,
			GerminatedEpoch: sd.GerminatedEpoch}
	}
	return s.views
}

// Alarms returns the number of rollbacks the governor has called for so far:
// one per alarm, raised in Step (a non-finite signal, a non-finite or
// exploding training loss) or in EndEpoch (the epoch's training loss, a
// non-finite validation loss), whether or not a seed could be blamed. A
// rollback with a seed to blame also emits its ROLLED_BACK event; one
// without emits nothing, so a trainer compares this count after each Step
// that carried signals to learn that it must restore its last good state.
// The count is part of the snapshot.
func (s *Session) Alarms() (int64, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.unlock()
	return s.counters.Alarms, nil
}

// rollbackLocked answers a governor alarm raised during a step.
func (s *Session) rollbackLocked(a tamiyo.Alarm) {
	s.counters.Alarms++
	d := tamiyo.RollbackDecision(s.seedViewsLocked(), a)
	s.governorAlarmLocked(d.Reason)
	s.publishAlarmLocked(d)
	s.applyLocked(d)
}

// paramsUsedLocked counts the parameters of live and fossilized seeds and
// the seeds in flight.
func (s *Session) paramsUsedLocked() (used int64, active int) {
	for _, sd := range s.seeds {
		if sd.State.Live() {
			used += sd.ParamCount
		}
		if sd.State.Active() {
			active++
		}
	}
	return used, active
}

// hostOfLocked returns layer's blueprint host.
func (s *Session) hostOfLocked(layer int) blueprint.Host { return s.set.hosts[layer] }
