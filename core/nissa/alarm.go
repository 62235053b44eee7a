package nissa

import (
	"fmt"
	"math"
	"slices"
)

// The alarm kinds (Alarm.Kind). An alarm is a report: it changes nothing in
// the run. The governor (policy/tamiyo) is what acts on a bad loss; its
// rollbacks are reported as alarms of kind AlarmRollback.
const (
	// AlarmRollback: the governor called for a rollback (a non-finite
	// signal, a training loss that spiked above its rolling mean or went
	// non-finite, a non-finite validation loss). Source "governor".
	AlarmRollback = "rollback"
	// AlarmStepTime: the mean step time of StepTimePatience consecutive
	// windows exceeded StepTimeFactor x the median of the windows before.
	AlarmStepTime = "step_time"
	// AlarmFailureRate: seed failures were reported in at least
	// FailureRate x FailureWindow of the last FailureWindow steps.
	AlarmFailureRate = "failure_rate"
	// AlarmStalled: no step was reported for StallSeconds.
	AlarmStalled = "stalled"
	// AlarmNoImprovement: the validation loss has not improved on its best
	// for NoImprovementEpochs epochs.
	AlarmNoImprovement = "no_improvement"
)

// AlarmKinds lists every alarm kind, in a fixed order (metrics report each
// of them, zero included).
var AlarmKinds = []string{AlarmRollback, AlarmStepTime, AlarmFailureRate, AlarmStalled, AlarmNoImprovement}

// Alarm is one anomaly Nissa flagged.
type Alarm struct {
	// Kind is one of the Alarm* constants.
	Kind string `json:"kind"`
	// Source is "nissa" for the checks of this package and "governor" for
	// the governor's rollbacks.
	Source string `json:"source"`
	// Step and Epoch say when (the session's counts).
	Step  int64 `json:"step"`
	Epoch int   `json:"epoch"`
	// Value is the measurement that crossed Threshold (seconds per step,
	// a failure fraction, seconds without a step, epochs without
	// improvement; the count of rollbacks for AlarmRollback).
	Value     Num `json:"value"`
	Threshold Num `json:"threshold"`
	// Message says what happened, in words.
	Message string `json:"message"`
}

// AlertConfig holds the alarm thresholds (the "alerts" section of the
// session configuration). A zero value switches that check off, except
// FailureRate and its window, whose zero means the default. Governor
// rollbacks are always reported.
type AlertConfig struct {
	// StepTimeFactor raises AlarmStepTime when the mean time per step of
	// StepTimePatience consecutive measured windows exceeds this multiple
	// of the median of the StepTimeWindow windows before them. A window is
	// the steps between two signal-carrying Step calls (the evaluation
	// between epochs is not timed). 0: off (the default; timing is noisy
	// on a shared machine); else > 1.
	StepTimeFactor float64 `json:"step_time_factor,omitempty"`
	// StepTimeWindow is how many recent windows the median covers, and how
	// many must be measured before the check is armed. Default 16, in [2,
	// 4096].
	StepTimeWindow int `json:"step_time_window,omitempty"`
	// StepTimePatience is how many consecutive slow windows raise the
	// alarm. Default 3, in [1, 1024].
	StepTimePatience int `json:"step_time_patience,omitempty"`
	// FailureRate raises AlarmFailureRate when at least this fraction of
	// the last FailureWindow steps had a seed failure reported. Default
	// 0.2, in (0, 1]; negative: off. The breaker prunes a seed after
	// consecutive failing steps; this catches intermittent ones.
	FailureRate float64 `json:"failure_rate,omitempty"`
	// FailureWindow is the window of FailureRate, in steps. Default 100,
	// in [1, 1<<20].
	FailureWindow int64 `json:"failure_window,omitempty"`
	// StallSeconds raises AlarmStalled when no Step call arrives for this
	// many seconds (a timer, so it fires while the trainer hangs). 0: off
	// (the default); else in [0.01, 1e6].
	StallSeconds float64 `json:"stall_seconds,omitempty"`
	// NoImprovementEpochs raises AlarmNoImprovement when the validation
	// loss has not gone below its best for this many epochs. 0: off (the
	// default); else in [1, 1<<20].
	NoImprovementEpochs int `json:"no_improvement_epochs,omitempty"`
}

// Defaults of AlertConfig.
const (
	DefaultStepTimeWindow   = 16
	DefaultStepTimePatience = 3
	DefaultFailureRate      = 0.2
	DefaultFailureWindow    = 100
)

// WithDefaults returns the configuration with its defaults filled in, or
// an error wrapping ErrConfig naming the field out of range.
func (c AlertConfig) WithDefaults() (AlertConfig, error) {
	bad := func(format string, args ...any) (AlertConfig, error) {
		return AlertConfig{}, fmt.Errorf("nissa: alerts: "+format+": %w", append(args, ErrConfig)...)
	}
	if c.StepTimeWindow == 0 {
		c.StepTimeWindow = DefaultStepTimeWindow
	}
	if c.StepTimePatience == 0 {
		c.StepTimePatience = DefaultStepTimePatience
	}
	if c.FailureRate == 0 {
		c.FailureRate = DefaultFailureRate
	}
	if c.FailureWindow == 0 {
		c.FailureWindow = DefaultFailureWindow
	}
	switch {
	case !(c.StepTimeFactor == 0 || c.StepTimeFactor > 1) || math.IsInf(c.StepTimeFactor, 0):
		return bad("step_time_factor %v must be 0 (off) or a finite number > 1", c.StepTimeFactor)
	case c.StepTimeWindow < 2 || c.StepTimeWindow > 4096:
		return bad("step_time_window %d must be in [2, 4096]", c.StepTimeWindow)
	case c.StepTimePatience < 1 || c.StepTimePatience > 1024:
		return bad("step_time_patience %d must be in [1, 1024]", c.StepTimePatience)
	case math.IsNaN(c.FailureRate) || c.FailureRate > 1:
		return bad("failure_rate %v must be in (0, 1], or negative (off)", c.FailureRate)
	case c.FailureWindow < 1 || c.FailureWindow > 1<<20:
		return bad("failure_window %d must be in [1, %d]", c.FailureWindow, 1<<20)
	case !(c.StallSeconds == 0 || (c.StallSeconds >= 0.01 && c.StallSeconds <= 1e6)):
		return bad("stall_seconds %v must be 0 (off) or in [0.01, 1e6]", c.StallSeconds)
	case c.NoImprovementEpochs < 0 || c.NoImprovementEpochs > 1<<20:
		return bad("no_improvement_epochs %d must be 0 (off) or in [1, %d]", c.NoImprovementEpochs, 1<<20)
	}
	return c, nil
}

// Watch runs the alarm checks that read the run's measurements: step-time
// regressions, seed failure rates and validation plateaus (the stall timer
// lives with its owner, which knows when steps arrive). Each check raises
// once per episode and re-arms when the measurement is healthy again.
//
// Concurrency: like Stats, Watch is a single-threaded core; its owner
// (core/session) guards it with its own mutex.
type Watch struct {
	cfg AlertConfig
	// times is a ring of the last StepTimeWindow window means (seconds per
	// step); scratch is the median's work buffer.
	times   []float64
	head, n int
	scratch []float64
	slow    int  // consecutive slow windows
	slowOn  bool // an AlarmStepTime episode is open
	// failed holds the steps, ascending, of the last failing steps within
	// FailureWindow.
	failed []int64
	failOn bool
	// best is the best validation loss so far (NaN: none), since the
	// epochs since it improved.
	best   float64
	since  int
	stallE bool
}

// NewWatch returns the checks for cfg (defaults filled in, validated).
func NewWatch(cfg AlertConfig) (*Watch, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &Watch{cfg: cfg, times: make([]float64, cfg.StepTimeWindow), scratch: make([]float64, 0, cfg.StepTimeWindow),
		best: math.NaN()}, nil
}

// Config returns the configuration in use.
func (w *Watch) Config() AlertConfig { return w.cfg }

// StepTime checks one measured window: steps optimizer steps in seconds
// (wall time). It returns the alarm and true when it raises one.
func (w *Watch) StepTime(step int64, epoch int, steps int64, seconds float64) (Alarm, bool) {
	if w.cfg.StepTimeFactor == 0 || steps <= 0 || !(seconds >= 0) || math.IsInf(seconds, 0) {
		return Alarm{}, false
	}
	per := seconds / float64(steps)
	var a Alarm
	raised := false
	if w.n == len(w.times) {
		w.scratch = append(w.scratch[:0], w.times...)
		slices.Sort(w.scratch)
		med := w.scratch[len(w.scratch)/2]
		if len(w.scratch)%2 == 0 {
			med = (med + w.scratch[len(w.scratch)/2-1]) / 2
		}
		limit := w.cfg.StepTimeFactor * med
		if per > limit {
			w.slow++
			if w.slow >= w.cfg.StepTimePatience && !w.slowOn {
				w.slowOn, raised = true, true
				a = Alarm{Kind: AlarmStepTime, Source: "nissa", Step: step, Epoch: epoch, Value: Num(per), Threshold: Num(limit),
					Message: fmt.Sprintf("nissa: %d consecutive windows took %.3g s per step, above %g x the median %.3g s of the %d windows before",
						w.slow, per, w.cfg.StepTimeFactor, med, len(w.times))}
			}
			// A slow window does not enter the baseline: a regression must
			// not become the new normal while it lasts.
			return a, raised
		}
		w.slow, w.slowOn = 0, false
	}
	w.times[w.head] = per
	w.head = (w.head + 1) % len(w.times)
	w.n = min(w.n+1, len(w.times))
	return a, raised
}

// Failure records a seed failure reported at step (several at one step
// count once) and checks the failure rate.
func (w *Watch) Failure(step int64, epoch int) (Alarm, bool) {
	if w.cfg.FailureRate < 0 {
		return Alarm{}, false
	}
	if n := len(w.failed); n == 0 || w.failed[n-1] != step {
		if n > 0 && step < w.failed[n-1] { // a restored or replayed run: start over
			w.failed = w.failed[:0]
		}
		w.failed = append(w.failed, step)
	}
	lo := step - w.cfg.FailureWindow // the window is (lo, step]
	i := 0
	for i < len(w.failed) && w.failed[i] <= lo {
		i++
	}
	if i > 0 {
		w.failed = append(w.failed[:0], w.failed[i:]...)
	}
	rate := float64(len(w.failed)) / float64(w.cfg.FailureWindow)
	if rate < w.cfg.FailureRate {
		w.failOn = false
		return Alarm{}, false
	}
	if w.failOn {
		return Alarm{}, false
	}
	w.failOn = true
	return Alarm{Kind: AlarmFailureRate, Source: "nissa", Step: step, Epoch: epoch, Value: Num(rate), Threshold: Num(w.cfg.FailureRate),
		Message: fmt.Sprintf("nissa: seed failures in %d of the last %d steps (%.3g, threshold %g)",
			len(w.failed), w.cfg.FailureWindow, rate, w.cfg.FailureRate)}, true
}

// Epoch checks the validation loss of an ended epoch (unmeasured or
// non-finite: not counted).
func (w *Watch) Epoch(step int64, epoch int, val Metric) (Alarm, bool) {
	if w.cfg.NoImprovementEpochs == 0 || !val.Finite() {
		return Alarm{}, false
	}
	if math.IsNaN(w.best) || val.Value < w.best {
		w.best, w.since, w.stallE = val.Value, 0, false
		return Alarm{}, false
	}
	w.since++
	if w.since < w.cfg.NoImprovementEpochs || w.stallE {
		return Alarm{}, false
	}
	w.stallE = true
	return Alarm{Kind: AlarmNoImprovement, Source: "nissa", Step: step, Epoch: epoch, Value: Num(w.since),
		Threshold: Num(w.cfg.NoImprovementEpochs),
		Message:   fmt.Sprintf("nissa: validation loss %.6g has not improved on its best %.6g for %d epochs", val.Value, w.best, w.since)}, true
}
