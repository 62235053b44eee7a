package session

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// SnapshotVersion is the version of the snapshot document.
const SnapshotVersion = 1

// MaxSnapshotBytes bounds a snapshot document Restore accepts.
const MaxSnapshotBytes = 256 << 20

// snapshot is the whole state of a session as JSON.
type snapshot struct {
	Version       int               `json:"version"`
	Config        Config            `json:"config"`
	Step          int64             `json:"step"`
	Epoch         int               `json:"epoch"`
	Seeds         []*lifecycle.Seed `json:"seeds"`
	EpochsInState []int             `json:"epochs_in_state"`
	Signals       nissa.State       `json:"signals"`
	Controller    tamiyo.State      `json:"controller"`
	Pending       []Event           `json:"pending"`
	GrowthLog     []LogEntry        `json:"growth_log"`
	GrowthDropped int64             `json:"growth_dropped"`
	Counters      Counters          `json:"counters"`
	// Impacts is the impact analysis' state (absent in older snapshots:
	// the adaptations in flight then end without a comparison).
	Impacts *nissa.ImpactState `json:"impacts,omitempty"`
	// TrainFLOPs is the run's training FLOPs counted at the last end of
	// epoch (absent in older snapshots: 0).
	TrainFLOPs int64 `json:"train_flops,omitempty"`
	// FLOPsPending is, per layer, the forward FLOPs per sample summed over
	// the steps since the last end of epoch (absent in older snapshots: a
	// run resumed mid-epoch then counts that epoch from the resume).
	FLOPsPending []int64 `json:"flops_pending,omitempty"`
	// Rollouts are the rolling deployments, one per artifact kind followed
	// (absent without one).
	Rollouts []RolloutState `json:"rollouts,omitempty"`
	// Rollout is the value model's rolling deployment in older snapshots
	// (read, never written: Rollouts holds it now).
	Rollout *RolloutState `json:"rollout,omitempty"`
}

// Snapshot returns the entire state as JSON: the configuration, the step
// and epoch, every seed (state, counters, alpha, blueprint, history), the
// signal statistics, the controller's and governor's state (random
// generator included), pending events, the growth log and the counters.
// Restore of it continues identically.
func (s *Session) Snapshot() ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	ctl, err := s.ctl.State()
	if err != nil {
		return nil, fmt.Errorf("session: snapshot: %w", err)
	}
	snap := snapshot{Version: SnapshotVersion, Config: s.set.cfg, Step: s.step, Epoch: s.epoch,
		Seeds: s.seeds, EpochsInState: s.epochsIn, Signals: s.stats.State(), Controller: ctl,
		Pending: s.pending, GrowthLog: s.growth, GrowthDropped: s.dropped, Counters: s.counters, TrainFLOPs: s.flops.total,
		FLOPsPending: s.flops.pendingNow()}
	im := s.mon.impacts.State()
	snap.Impacts = &im
	snap.Rollouts = s.rolloutStatesLocked()
	if snap.Pending == nil {
		snap.Pending = []Event{}
	}
	if snap.GrowthLog == nil {
		snap.GrowthLog = []LogEntry{}
	}
	b, err := json.Marshal(&snap)
	if err != nil {
		return nil, fmt.Errorf("session: snapshot: %w", err)
	}
	return b, nil
}

// Restore replaces the whole state with a snapshot taken by Snapshot. The
// snapshot must be for the same layers (names and shapes) and slots per
// layer; the session keeps its own log settings. The snapshot is checked
// completely before anything changes; errors wrap ErrSnapshot (code
// INVALID) or the code of the component that refused. The run log records
// a "resume" run event.
func (s *Session) Restore(data []byte) error { return s.restore(data, false) }

// Apply is Restore for a rank of a data-parallel job taking rank 0's state
// after a decision rank 0 made (a session that was rank 0's equal before
// it): the same checks and the same state afterwards, but the run log
// records what the decision did, as rank 0's does, instead of a resume:
// each growth log entry the snapshot holds beyond this session's (the
// decisions, the transitions with their actors, the rolling deployments'
// switches and reverts) is published as its event.
func (s *Session) Apply(data []byte) error { return s.restore(data, true) }

func (s *Session) restore(data []byte, apply bool) error {
	if len(data) > MaxSnapshotBytes {
		return fmt.Errorf("session: restore: snapshot is %d bytes, limit %d: %w", len(data), MaxSnapshotBytes, ErrSnapshot)
	}
	var snap snapshot
	if err := decodeStrict(data, &snap); err != nil {
		return fmt.Errorf("session: restore: %v: %w", err, ErrSnapshot)
	}
	if snap.Version != SnapshotVersion {
		return fmt.Errorf("session: restore: snapshot version %d, want %d: %w", snap.Version, SnapshotVersion, ErrSnapshot)
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.unlock()
	snap.Config.LogPath, snap.Config.LogSignalsEvery = s.set.cfg.LogPath, s.set.cfg.LogSignalsEvery
	snap.Config.Urza = s.set.cfg.Urza                 // the store this process was given, not the saving machine's path
	snap.Config.Metrics.Rank = s.set.cfg.Metrics.Rank // the run goes on under its own id, on this rank
	if vm := s.set.cfg.Controller.ValueModel; vm != "" {
		snap.Config.Controller.ValueModel = vm // this process's model folder (an install's path), not the saving machine's
	}
	if kp := s.set.cfg.KarnPredictor; kp != "" {
		snap.Config.KarnPredictor = kp // likewise
	}
	if pm := s.set.cfg.Controller.PPOModel; pm != "" {
		snap.Config.Controller.PPOModel = pm // likewise
	}
	if snap.Rollouts == nil && snap.Rollout != nil {
		snap.Rollouts = []RolloutState{*snap.Rollout}
	}
	set, err := snap.Config.settings()
	if err != nil {
		return fmt.Errorf("session: restore: %w", err)
	}
	if diff := layersDiff(set, set.cfg.SlotsPerLayer, s.set, s.slots); diff != "" {
		return fmt.Errorf("session: restore: %s: %w", diff, ErrSnapshot)
	}
	next := &Session{modelCache: s.modelCache}
	if err := next.reset(set, snap.Rollouts, s.rolls); err != nil {
		return fmt.Errorf("session: restore: %w", err)
	}
	if err := next.load(&snap); err != nil {
		releaseRolls(next.rolls, s.rolls)
		return err
	}
	impacts := nissa.NewImpacts(len(next.seeds))
	if snap.Impacts != nil {
		if err := impacts.Restore(*snap.Impacts); err != nil {
			releaseRolls(next.rolls, s.rolls)
			return fmt.Errorf("session: restore: %v: %w", err, ErrSnapshot)
		}
	}
	seen := int64(len(s.growth)) + s.dropped // entries this session recorded, dropped ones included
	s.set, s.step, s.epoch = next.set, next.step, next.epoch
	s.seeds, s.epochsIn, s.stats, s.ctl = next.seeds, next.epochsIn, next.stats, next.ctl
	s.pending, s.growth, s.dropped, s.counters = next.pending, next.growth, next.dropped, next.counters
	s.flops = next.flops
	s.views, s.reasons, s.layerViews = next.views, next.reasons, next.layerViews
	if s.source != nil {
		s.source.close()
	}
	s.source = next.source
	releaseRolls(s.rolls, next.rolls)
	s.rolls = next.rolls
	if err := s.resetMonitorLocked(impacts); err != nil {
		return err
	}
	if !apply {
		s.publishRunLocked("resume", nil)
		return nil
	}
	for _, e := range s.growth[min(int64(len(s.growth)), max(0, seen-s.dropped)):] {
		s.publishEntryLocked(e)
	}
	return nil
}

// maxDiffs bounds the differing layers layersDiff names.
const maxDiffs = 4

// layersDiff says how the layers of a snapshot (snap, with snapSlots slots
// each) differ from this session's (cur, curSlots): the layer count, then
// each layer whose name or host differs (up to maxDiffs), then the slots;
// "" when they agree.
func layersDiff(snap settings, snapSlots int, cur settings, curSlots int) string {
	if len(snap.names) != len(cur.names) {
		return fmt.Sprintf("the snapshot is for %d layers %v, this session has %d layers %v", len(snap.names), snap.names,
			len(cur.names), cur.names)
	}
	var diffs []string
	for i := range snap.names {
		switch {
		case snap.names[i] != cur.names[i]:
			diffs = append(diffs, fmt.Sprintf("layer %d is %q in the snapshot, %q in this session", i, snap.names[i], cur.names[i]))
		case !sameHost(snap.hosts[i], cur.hosts[i]):
			diffs = append(diffs, fmt.Sprintf("layer %d (%s) has host %s in the snapshot, %s in this session", i, cur.names[i],
				hostString(snap.hosts[i]), hostString(cur.hosts[i])))
		}
	}
	if n := len(diffs); n > maxDiffs {
		diffs = append(diffs[:maxDiffs], fmt.Sprintf("%d more", n-maxDiffs))
	}
	if snapSlots != curSlots {
		diffs = append(diffs, fmt.Sprintf("the snapshot has %d slots per layer, this session %d", snapSlots, curSlots))
	}
	if len(diffs) == 0 {
		return ""
	}
	return "the snapshot is for another model: " + strings.Join(diffs, "; ")
}

// hostString describes a host by its kind and the fields that shape a
// seed, e.g. "linear(in 16, out 32)".
func hostString(h blueprint.Host) string {
	var f []string
	for _, kv := range []struct {
		name string
		v    int64
	}{{"in", h.In}, {"mid", h.Mid}, {"out", h.Out}, {"kernel", h.Kernel}, {"stride", h.Stride}, {"padding", h.Padding},
		{"consumer_kernel", h.ConsumerKernel}, {"consumer_stride", h.ConsumerStride}, {"consumer_padding", h.ConsumerPadding},
		{"dim", h.Dim}} {
		if kv.v != 0 {
			f = append(f, fmt.Sprintf("%s %d", kv.name, kv.v))
		}
	}
	if h.Activation != "" {
		f = append(f, "activation "+h.Activation)
	}
	if len(h.Spatial) > 0 {
		f = append(f, fmt.Sprintf("spatial %v", h.Spatial))
	}
	return h.Kind + "(" + strings.Join(f, ", ") + ")"
}

// load fills a freshly reset session from snap, checking it.
func (s *Session) load(snap *snapshot) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("session: restore: "+format+": %w", append(args, ErrSnapshot)...)
	}
	n := len(s.seeds)
	switch {
	case snap.Step < 0 || snap.Step > MaxSteps:
		return bad("step %d is out of range", snap.Step)
	case snap.Epoch < 0:
		return bad("epoch %d is negative", snap.Epoch)
	case len(snap.Seeds) != n || len(snap.EpochsInState) != n:
		return bad("%d seeds and %d epoch counters for %d slots", len(snap.Seeds), len(snap.EpochsInState), n)
	case snap.GrowthDropped < 0 || snap.Counters.Germinations < 0 || snap.Counters.Fossilizations < 0 ||
		snap.Counters.Prunes < 0 || snap.Counters.Cancels < 0 || snap.Counters.Rollbacks < 0 ||
		snap.Counters.Proposals < 0 || snap.Counters.Refused < 0 ||
		snap.Counters.Failures < 0 || snap.Counters.Alarms < 0 || snap.Counters.Decisions < 0 || snap.Counters.Events < 0:
		return bad("negative counters")
	}
	for i, sd := range snap.Seeds {
		if sd == nil {
			return bad("seeds[%d] is null", i)
		}
		if sd.Layer != i/s.slots || sd.Slot != i%s.slots {
			return bad("seeds[%d] is seed %d/%d, want %d/%d", i, sd.Layer, sd.Slot, i/s.slots, i%s.slots)
		}
		if err := sd.Validate(); err != nil {
			return fmt.Errorf("session: restore: %w", err)
		}
		if snap.EpochsInState[i] < 0 {
			return bad("epochs_in_state[%d] is negative", i)
		}
		if sd.State.Live() {
			if len(sd.Blueprint) == 0 || canon.ID(sd.Blueprint) != sd.BlueprintID {
				return bad("seed %d/%d: blueprint does not match its id %q", sd.Layer, sd.Slot, sd.BlueprintID)
			}
			if sd.State.Active() && sd.Streak >= s.set.cfg.Breaker.Failures {
				return bad("seed %d/%d: %d consecutive failing steps would have opened its breaker", sd.Layer, sd.Slot, sd.Streak)
			}
			if sd.FailedStep > snap.Step {
				return bad("seed %d/%d failed at step %d, after step %d", sd.Layer, sd.Slot, sd.FailedStep, snap.Step)
			}
		}
		if sd.GerminatedStep > snap.Step {
			return bad("seed %d/%d germinated at step %d, after step %d", sd.Layer, sd.Slot, sd.GerminatedStep, snap.Step)
		}
	}
	if snap.TrainFLOPs < 0 {
		return bad("train_flops %d must be >= 0", snap.TrainFLOPs)
	}
	if snap.FLOPsPending != nil && len(snap.FLOPsPending) != len(s.set.hosts) {
		return bad("flops_pending has %d values, want one per layer (%d)", len(snap.FLOPsPending), len(s.set.hosts))
	}
	for l, v := range snap.FLOPsPending {
		if v < 0 {
			return bad("flops_pending[%d] %d must be >= 0", l, v)
		}
	}
	stats, err := nissa.FromState(snap.Signals)
	if err != nil {
		return fmt.Errorf("session: restore: signals: %w", err)
	}
	if got, want := stats.Config(), s.stats.Config(); got != want {
		return bad("signals statistics configured %+v, want %+v", got, want)
	}
	if stats.LastStep() > snap.Step {
		return bad("signals ingested at step %d, after step %d", stats.LastStep(), snap.Step)
	}
	if err := s.ctl.SetState(snap.Controller); err != nil {
		return fmt.Errorf("session: restore: controller: %w", err)
	}
	for i, ev := range snap.Pending {
		if ev.Layer < 0 || ev.Layer >= len(s.set.hosts) || ev.Slot < 0 || ev.Slot >= s.slots || !ev.From.Valid() || !ev.To.Valid() {
			return bad("pending[%d] names seed %d/%d or invalid states", i, ev.Layer, ev.Slot)
		}
	}
	growth := snap.GrowthLog
	dropped := snap.GrowthDropped
	if limit := s.set.cfg.GrowthLogMax; len(growth) > limit {
		dropped += int64(len(growth) - limit)
		growth = growth[len(growth)-limit:]
	}
	s.step, s.epoch = snap.Step, snap.Epoch
	s.seeds, s.epochsIn = snap.Seeds, snap.EpochsInState
	s.stats = stats
	s.pending = snap.Pending
	if len(s.pending) == 0 {
		s.pending = nil
	}
	s.growth, s.dropped, s.counters = growth, dropped, snap.Counters
	s.flops.total = snap.TrainFLOPs
	if snap.FLOPsPending != nil {
		copy(s.flops.pending, snap.FLOPsPending)
	}
	return nil
}

// SeedInfo is one slot as Seeds reports it.
type SeedInfo struct {
	lifecycle.Seed
	// Name is the layer's name.
	Name string `json:"name"`
	// EpochsInState counts end-of-epoch calls since the last transition.
	EpochsInState int `json:"epochs_in_state"`
	// Breaker is the seed's circuit breaker: "open" once its consecutive
	// failing steps (Streak) reached breaker.failures, else "closed".
	Breaker string `json:"breaker"`
	// Waiting says which gate holds the seed's automatic transition back
	// and why (e.g. "min_steps: TRAINING has 40 of 100 steps"); "" when
	// the state has no automatic transition or auto_advance is off.
	Waiting string `json:"waiting,omitempty"`
}

// Seeds returns every slot, layer-major: state, alpha, counters, blueprint
// and history (deep copies).
func (s *Session) Seeds() ([]SeedInfo, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	out := make([]SeedInfo, len(s.seeds))
	for i, sd := range s.seeds {
		breaker := "closed"
		if sd.State.Live() && sd.Streak >= s.set.cfg.Breaker.Failures {
			breaker = "open"
		}
		out[i] = SeedInfo{Seed: *sd.Clone(), Name: s.set.names[sd.Layer], EpochsInState: s.epochsIn[i], Breaker: breaker}
		if out[i].History == nil {
			out[i].History = []lifecycle.Transition{}
		}
		if dur, timed := s.durationLocked(sd.State); timed && s.set.auto {
			out[i].Waiting = lifecycle.MinSteps(sd, dur).Reason()
		}
	}
	return out, nil
}

// Stats is a summary of the run for users.
type Stats struct {
	// Step is the optimizer step count; Epoch the epoch in progress.
	Step  int64 `json:"step"`
	Epoch int   `json:"epoch"`
	// Policy is the controller's policy.
	Policy string `json:"policy"`
	// Counters count what happened.
	Counters Counters `json:"counters"`
	// ParamsUsed counts the parameters of live and fossilized seeds;
	// MaxParams is the budget (0: none); HostParams sums the layers' own
	// parameters as configured.
	ParamsUsed int64 `json:"params_used"`
	MaxParams  int64 `json:"max_params"`
	HostParams int64 `json:"host_params"`
	// TrainFLOPs is the run's training FLOPs of the wrapped layers and
	// their live seeds counted so far (at the ends of epoch; see
	// docs/events.md, "Training FLOPs").
	TrainFLOPs int64 `json:"train_flops"`
	// Active counts seeds in flight; States counts slots per state.
	Active int            `json:"active"`
	States map[string]int `json:"states"`
	// PendingEvents counts events not yet drained.
	PendingEvents int `json:"pending_events"`
	// Governor summarises the governor.
	Governor GovernorStats `json:"governor"`
	// Signals holds the rolling statistics of every signal.
	Signals nissa.Snapshot `json:"signals"`
	// GrowthLog counts the growth log's entries and GrowthDropped those
	// dropped beyond its bound.
	GrowthLog     int   `json:"growth_log"`
	GrowthDropped int64 `json:"growth_dropped"`
	// LogError is the first log write error ("" when none).
	LogError string `json:"log_error,omitempty"`
	// Karn counts Karn's requests and fits (controller.search only).
	Karn *karn.Stats `json:"karn,omitempty"`
}

// GovernorStats summarises the governor.
type GovernorStats struct {
	// Alarms counts the alarms it raised.
	Alarms int64 `json:"alarms"`
	// LossMean is the rolling mean of the training loss over LossSamples
	// losses (null when none).
	LossMean    nissa.Num `json:"loss_mean"`
	LossSamples int       `json:"loss_samples"`
	// Cooldowns holds, per layer, the epochs it still rests.
	Cooldowns []int `json:"cooldowns"`
}

// hostParams sums the wrapped layers' own parameters as configured.
func (s *Session) hostParams() int64 {
	var n int64
	for _, l := range s.set.cfg.Layers {
		n += l.Params
	}
	return n
}

// Stats returns a summary of the run.
func (s *Session) Stats() (Stats, error) {
	if err := s.lock(); err != nil {
		return Stats{}, err
	}
	defer s.unlock()
	used, active := s.paramsUsedLocked()
	gov := s.ctl.Governor()
	mean, n := gov.RollingMean()
	st := Stats{Step: s.step, Epoch: s.epoch, Policy: s.set.cfg.Policy, Counters: s.counters, ParamsUsed: used, TrainFLOPs: s.flops.total,
		MaxParams: gov.Config().MaxParams, Active: active, States: make(map[string]int), PendingEvents: len(s.pending),
		Governor: GovernorStats{Alarms: gov.Alarms(), LossMean: nissa.Num(mean), LossSamples: n, Cooldowns: make([]int, len(s.set.hosts))},
		Signals:  s.stats.Snapshot(s.set.names), GrowthLog: len(s.growth), GrowthDropped: s.dropped}
	st.HostParams = s.hostParams()
	for _, sd := range s.seeds {
		st.States[sd.State.String()]++
	}
	for l := range st.Governor.Cooldowns {
		st.Governor.Cooldowns[l] = gov.Cooldown(l, s.epoch)
	}
	if e := s.logErr.Load(); e != nil {
		st.LogError = *e
	}
	if k := s.ctl.Karn(); k != nil {
		ks := k.Stats()
		st.Karn = &ks
	}
	return st, nil
}

// GrowthLog is the growth log as GrowthLog returns it.
type GrowthLog struct {
	// Entries are every event, decision and failure, oldest first (at
	// most growth_log_max of them).
	Entries []LogEntry `json:"entries"`
	// Dropped counts older entries dropped to respect the bound.
	Dropped int64 `json:"dropped"`
}

// GrowthLog returns the growth log.
func (s *Session) GrowthLog() (GrowthLog, error) {
	if err := s.lock(); err != nil {
		return GrowthLog{}, err
	}
	defer s.unlock()
	entries := slices.Clone(s.growth)
	if entries == nil {
		entries = []LogEntry{}
	}
	return GrowthLog{Entries: entries, Dropped: s.dropped}, nil
}
