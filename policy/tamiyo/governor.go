package tamiyo

import (
	"fmt"
	"math"

	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
)

// AlarmKind says why the governor calls for a rollback.
type AlarmKind uint8

// The alarms.
const (
	// NoAlarm: the loss looks healthy.
	NoAlarm AlarmKind = iota
	// NonfiniteCount: the trainer counted non-finite values since the last
	// flush (nonfinite_count > 0).
	NonfiniteCount
	// NonfiniteLoss: the training loss itself is NaN or infinite.
	NonfiniteLoss
	// LossSpike: the training loss exceeds k times its rolling mean.
	LossSpike
	// NonfiniteValLoss: the validation loss is NaN or infinite.
	NonfiniteValLoss
)

// Alarm is the governor's verdict on a training loss. The zero Alarm means
// healthy. Checking never allocates; Reason formats only when asked.
type Alarm struct {
	Kind AlarmKind
	// Value is the offending value (the count, or the loss).
	Value float64
	// Mean and Factor are the rolling mean and k (LossSpike only).
	Mean, Factor float64
}

// Raised reports whether the alarm calls for a rollback.
func (a Alarm) Raised() bool { return a.Kind != NoAlarm }

// Reason says in words why the governor called for a rollback.
func (a Alarm) Reason() string {
	switch a.Kind {
	case NonfiniteCount:
		return fmt.Sprintf("governor: %g non-finite values in the training step", a.Value)
	case NonfiniteLoss:
		return fmt.Sprintf("governor: training loss is %v", a.Value)
	case LossSpike:
		return fmt.Sprintf("governor: training loss %.6g exceeds %g x its rolling mean %.6g", a.Value, a.Factor, a.Mean)
	case NonfiniteValLoss:
		return fmt.Sprintf("governor: validation loss is %v", a.Value)
	}
	return ""
}

// Governor enforces the safety limits: the parameter budget, the number of
// seeds in flight, per-layer cooldowns, and the rollback trigger on the
// training loss. It is not safe for concurrent use.
type Governor struct {
	cfg GovernorConfig
	// losses is a ring of the last LossWindow finite training losses that
	// raised no alarm since the last alarm: a rollback returns the model to
	// an older state, and the losses measured since describe weights that
	// are gone (the restored state's loss, judged against them, would spike
	// again and blame the next seed for nothing).
	losses []float64
	head   int
	n      int
	// germinated holds, per layer, the epoch of its last germination (-1:
	// never).
	germinated []int
	// lastGerminated is the epoch of the last germination anywhere (-1).
	lastGerminated int
	// alarms counts the alarms raised.
	alarms int64
}

// NewGovernor returns a governor for layers wrapped layers.
func NewGovernor(cfg GovernorConfig, layers int) (*Governor, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	if layers < 0 {
		return nil, fmt.Errorf("tamiyo: governor for %d layers: %w", layers, ErrConfig)
	}
	g := &Governor{cfg: cfg, losses: make([]float64, cfg.LossWindow), germinated: make([]int, layers), lastGerminated: -1}
	for i := range g.germinated {
		g.germinated[i] = -1
	}
	return g, nil
}

// Config returns the configuration with defaults filled in.
func (g *Governor) Config() GovernorConfig { return g.cfg }

// Alarms returns the number of alarms raised so far.
func (g *Governor) Alarms() int64 { return g.alarms }

// ObserveStep checks one flush of the per-step signals: the mean training
// loss since the last flush and the count of non-finite values. A NaN in
// either means "not measured". Every alarm empties the loss window (see
// Governor). It does not allocate.
func (g *Governor) ObserveStep(loss, nonfinite float32) Alarm {
	if nonfinite > 0 { // false for NaN
		return g.raise(Alarm{Kind: NonfiniteCount, Value: float64(nonfinite)})
	}
	if loss != loss {
		return Alarm{}
	}
	return g.observeLoss(float64(loss))
}

// ObserveEpoch checks the epoch's training loss (unmeasured: no alarm).
func (g *Governor) ObserveEpoch(loss nissa.Metric) Alarm {
	if !loss.Measured {
		return Alarm{}
	}
	return g.observeLoss(loss.Value)
}

// ObserveValidation checks the epoch's validation loss: a non-finite one
// (the model diverged, or its evaluation did) calls for a rollback, and no
// other decision is made on it. Unmeasured: no alarm.
func (g *Governor) ObserveValidation(loss nissa.Metric) Alarm {
	if !loss.Measured || !(math.IsNaN(loss.Value) || math.IsInf(loss.Value, 0)) {
		return Alarm{}
	}
	return g.raise(Alarm{Kind: NonfiniteValLoss, Value: loss.Value})
}

// raise counts an alarm and empties the loss window: the rollback it calls
// for returns the model to an older state (see Governor).
func (g *Governor) raise(a Alarm) Alarm {
	g.alarms++
	g.head, g.n = 0, 0
	return a
}

func (g *Governor) observeLoss(v float64) Alarm {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return g.raise(Alarm{Kind: NonfiniteLoss, Value: v})
	}
	if g.n >= g.cfg.MinLossSamples {
		mean := g.mean()
		if mean > 0 && v > g.cfg.LossFactor*mean && v-mean > *g.cfg.LossMinDelta {
			return g.raise(Alarm{Kind: LossSpike, Value: v, Mean: mean, Factor: g.cfg.LossFactor})
		}
	}
	g.losses[g.head] = v
	if g.head++; g.head == len(g.losses) {
		g.head = 0
	}
	if g.n < len(g.losses) {
		g.n++
	}
	return Alarm{}
}

// RollingMean returns the mean of the loss window and the number of losses
// in it (NaN, 0 when empty).
func (g *Governor) RollingMean() (float64, int) {
	if g.n == 0 {
		return math.NaN(), 0
	}
	return g.mean(), g.n
}

// mean sums the window oldest first (so a restored window, laid out
// differently, gives bit-identical results).
func (g *Governor) mean() float64 {
	i := g.head - g.n
	if i < 0 {
		i += len(g.losses)
	}
	var sum float64
	for k := 0; k < g.n; k++ {
		sum += g.losses[i]
		if i++; i == len(g.losses) {
			i = 0
		}
	}
	return sum / float64(g.n)
}

// Cooldown returns how many more epochs layer rests at epoch (0: free).
func (g *Governor) Cooldown(layer, epoch int) int {
	if layer < 0 || layer >= len(g.germinated) || g.germinated[layer] < 0 {
		return 0
	}
	return max(0, g.germinated[layer]+*g.cfg.CooldownEpochs-epoch)
}

// LastGermination returns the epoch of the last germination anywhere (-1
// when none).
func (g *Governor) LastGermination() int { return g.lastGerminated }

// RecordGermination notes that layer germinated a seed at epoch.
func (g *Governor) RecordGermination(layer, epoch int) {
	if layer >= 0 && layer < len(g.germinated) {
		g.germinated[layer] = epoch
	}
	g.lastGerminated = max(g.lastGerminated, epoch)
}

// Admit checks the hard limits on a germination of params parameters when
// used parameters are in live and fossilized seeds and active seeds are in
// flight: nil, or an error wrapping ErrOverBudget or ErrConcurrency
// (code BUDGET) that says why. Cooldowns are the policy's pacing and are
// not checked here (see Cooldown).
func (g *Governor) Admit(used, params int64, active int) error {
	if g.Admits(used, params, active) {
		return nil
	}
	if active >= g.cfg.MaxConcurrent {
		return fmt.Errorf("tamiyo: governor: %d seeds in flight, max_concurrent is %d: %w", active, g.cfg.MaxConcurrent, ErrConcurrency)
	}
	if v := lifecycle.Budget("params", used, params, g.cfg.MaxParams); !v.OK() {
		return fmt.Errorf("tamiyo: governor: %s (%d in seeds + %d new): %w", v.Reason(), used, params, ErrOverBudget)
	}
	return nil
}

// Admits reports whether Admit admits a seed of params parameters, without
// building the refusal's error (the layer graph's masks ask for every
// layer, template and size).
func (g *Governor) Admits(used, params int64, active int) bool {
	return active < g.cfg.MaxConcurrent && lifecycle.Budget("params", used, params, g.cfg.MaxParams).OK()
}

// Remaining returns the parameters left in the budget when used are taken
// (math.MaxInt64 when there is no limit).
func (g *Governor) Remaining(used int64) int64 {
	if g.cfg.MaxParams <= 0 {
		return math.MaxInt64
	}
	return max(0, g.cfg.MaxParams-used)
}

// RollbackTarget returns the index in seeds of the seed a rollback removes:
// the newest (latest germination step, then highest layer and slot) seed
// that may legally be rolled back (TRAINING, BLENDING or HOLDING), or -1.
func RollbackTarget(seeds []SeedView) int {
	best := -1
	for i := range seeds {
		s := &seeds[i]
		if !lifecycle.CanTransition(s.State, lifecycle.RolledBack) {
			continue
		}
		if best < 0 || newer(s, &seeds[best]) {
			best = i
		}
	}
	return best
}

func newer(a, b *SeedView) bool {
	if a.GerminatedStep != b.GerminatedStep {
		return a.GerminatedStep > b.GerminatedStep
	}
	if a.Layer != b.Layer {
		return a.Layer > b.Layer
	}
	return a.Slot > b.Slot
}
