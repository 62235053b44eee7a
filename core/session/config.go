package session

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Defaults and limits of Config.
const (
	DefaultSlotsPerLayer = 1
	DefaultTrainSteps    = 100
	DefaultBlendSteps    = 100
	DefaultEmbargoSteps  = 100
	DefaultPolicy        = "heuristic"
	DefaultFailures      = 3
	DefaultGrowthLogMax  = 10000

	MaxLayers        = 4096
	MaxSlotsPerLayer = 64
	MaxSlots         = 1 << 16
	MaxSteps         = 1 << 40
	MaxNameLen       = 256
	MaxConfigBytes   = 4 << 20
	// MaxSignalValues bounds Nissa's ring buffers: (2 + 7 x layers) x
	// signals.window measurements, 12 bytes each (a float32 and its step),
	// so at most 48 MiB. The default window (64) fits every layer count.
	MaxSignalValues = nissa.MaxValues
	// MaxGrowthLog bounds growth_log_max (entries are a few hundred bytes).
	MaxGrowthLog = 1 << 20
)

// LayerConfig describes one wrapped layer, in the order of the signals
// buffer and the alphas: its name, its host (kind, in/out or dim, conv
// geometry, spatial extents: see blueprint.Host; Stride defaults to 1 for
// conv layers) and its own parameter count. In JSON the host's fields sit
// beside name and params.
type LayerConfig struct {
	// Name is the layer's name (its module path); required, unique.
	Name string `json:"name"`
	blueprint.Host
	// Params is the host layer's own parameter count (reported in Stats;
	// not part of the seed budget). Default 0, >= 0.
	Params int64 `json:"params,omitempty"`
}

// BreakerConfig configures the per-seed circuit breakers.
//
// A seed's breaker counts consecutive failing steps, in the session's step
// count: a failure reported (ReportFailure) while the session is at step t
// fails step t; several failures at the same step count once; a failure at
// step t after one at step t-1 extends the streak; a step with no failure
// reported between two failures ends it (the next failure starts a new
// streak of 1). The breaker opens when the streak reaches Failures, and the
// seed is pruned at once: there is no cool-down, a pruned seed never comes
// back (its slot is embargoed; the next seed there starts with no failures).
type BreakerConfig struct {
	// Failures is the number of consecutive failing steps that opens a
	// seed's breaker and prunes it. Default 3, in [1, 1<<20].
	Failures int `json:"failures,omitempty"`
}

// SignalsConfig configures Nissa's rolling statistics.
type SignalsConfig struct {
	// Window is the number of recent measurements per layer and signal the
	// statistics cover. Default 64, in [2, 65536], and (2 + 7 x layers) x
	// window at most MaxSignalValues (Nissa's buffers stay under 48 MiB).
	Window int `json:"window,omitempty"`
	// EWMA is the moving average's smoothing factor. Default 0.1, in (0, 1].
	EWMA float64 `json:"ewma,omitempty"`
}

// Config is a session's configuration (the JSON given to
// esper_session_new). Zero values and absent fields mean the documented
// defaults.
type Config struct {
	// Layers are the wrapped layers, in order (1 to 4096).
	Layers []LayerConfig `json:"layers"`
	// SlotsPerLayer is the number of seed slots of each layer. Default 1,
	// in [1, 64]; layers x slots at most 65536.
	SlotsPerLayer int `json:"slots_per_layer,omitempty"`
	// TrainSteps is how many optimizer steps a seed trains in isolation
	// before it blends (TRAINING -> BLENDING). Default 100, >= 1.
	TrainSteps int64 `json:"train_steps,omitempty"`
	// BlendSteps is the blending tempo: alpha rises from 0 to 1 over this
	// many steps, then BLENDING -> HOLDING. Default 100, >= 1.
	BlendSteps int64 `json:"blend_steps,omitempty"`
	// Schedule is the alpha schedule: "linear" (default) or "cosine".
	Schedule string `json:"schedule,omitempty"`
	// EmbargoSteps is how many steps a slot rests after a prune, cancel or
	// rollback before it resets (EMBARGOED -> RESETTING). Default 100; an
	// explicit 0 means none.
	EmbargoSteps *int64 `json:"embargo_steps,omitempty"`
	// Policy is the controller: "heuristic" (default), "random", "manual"
	// ("none"), or "learned" (the value model in controller.value_model).
	Policy string `json:"policy,omitempty"`
	// Controller holds the policy's settings (see tamiyo.Config): patience
	// (3), threshold (0.01), prune_below (0), min_gain (0.01), saturate_after (2), holding_epochs (1), template
	// ("residual_mlp"), params ({}), seed (0).
	Controller tamiyo.Config `json:"controller"`
	// Governor holds the safety limits (see tamiyo.GovernorConfig):
	// max_params (0 = no limit), max_concurrent (1), cooldown_epochs (2),
	// loss_window (20), loss_factor (3), loss_min_delta (0.05), min_loss_samples (5).
	Governor tamiyo.GovernorConfig `json:"governor"`
	// Breaker configures the per-seed circuit breakers.
	Breaker BreakerConfig `json:"breaker"`
	// Signals configures the rolling statistics.
	Signals SignalsConfig `json:"signals"`
	// AutoAdvance applies the automatic transitions in Step (and right
	// after a prune, cancel or rollback). Default true. When false, seeds
	// move only through Advance, Prune, Fossilize, Cancel and decisions.
	AutoAdvance *bool `json:"auto_advance,omitempty"`
	// GrowthLogMax bounds the growth log kept in memory; when it is full
	// the oldest quarter is dropped (and counted). Default 10000, in [1,
	// MaxGrowthLog].
	GrowthLogMax int `json:"growth_log_max,omitempty"`
	// LogPath, when set, names a file the session appends JSON-lines
	// records to (events, decisions, alarms, and signals when
	// LogSignalsEvery > 0). Default "" (no file).
	LogPath string `json:"log_path,omitempty"`
	// Urza is the Urza store folder Karn reads the outcome history from
	// when controller.search is on ("": no history, the prior ranks; the
	// C ABI fills in the default store, $ESPER_HOME/urza).
	Urza string `json:"urza,omitempty"`
	// LogSignalsEvery writes every n-th signals buffer to the log. Default
	// 0 (never), >= 0.
	LogSignalsEvery int `json:"log_signals_every,omitempty"`
	// Alerts holds Nissa's alarm thresholds (see nissa.AlertConfig and
	// docs/metrics.md): step_time_factor (0: off), step_time_window (16),
	// step_time_patience (3), failure_rate (0.2), failure_window (100),
	// stall_seconds (0: off), no_improvement_epochs (0: off).
	Alerts nissa.AlertConfig `json:"alerts"`
	// KarnPredictor is the predictor Karn's search ranks with
	// (controller.search only): "" (the default) fits one on the outcome
	// history as it grows; a predictor folder (karn.WritePredictor) is used
	// as it is; "urza:<name>" uses the newest version of <name> published
	// to Urza and follows newer ones by rolling deployment (rollout.go).
	KarnPredictor string `json:"karn_predictor,omitempty"`
	// Rollout sets the rolling deployment of a model published to Urza
	// (controller.value_model or karn_predictor "urza:<name>"): margin
	// (0.05) and epochs (2); see RolloutConfig.
	Rollout RolloutConfig `json:"rollout"`
	// Metrics labels the run's metrics (run, rank).
	Metrics MetricsConfig `json:"metrics"`
}

// ParseConfig decodes a configuration document strictly: unknown fields,
// wrong types, trailing data and documents over 4 MiB are errors wrapping
// ErrConfig (code INVALID). The result is not yet validated (New does it).
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if len(data) > MaxConfigBytes {
		return c, fmt.Errorf("session: config is %d bytes, limit %d: %w", len(data), MaxConfigBytes, ErrConfig)
	}
	if err := decodeStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("session: config: %v: %w", err, ErrConfig)
	}
	return c, nil
}

// decodeStrict is canon.DecodeStrict: one strictness for every JSON document
// (duplicate keys, unknown fields and trailing data are refused).
func decodeStrict(data []byte, v any) error {
	return canon.DecodeStrict(data, v)
}

// clone returns a deep copy of c.
func (c Config) clone() Config {
	c.Layers = slices.Clone(c.Layers)
	for i := range c.Layers {
		c.Layers[i].Spatial = slices.Clone(c.Layers[i].Spatial)
	}
	c.EmbargoSteps = clonePtr(c.EmbargoSteps)
	c.AutoAdvance = clonePtr(c.AutoAdvance)
	c.Governor.CooldownEpochs = clonePtr(c.Governor.CooldownEpochs)
	c.Controller.Params = maps.Clone(c.Controller.Params)
	return c
}

// valueOr returns a pointer to a copy of *p, or to def when p is nil: a
// configuration with its defaults filled in shares no pointer with the
// caller's.
func valueOr[T any](p *T, def T) *T {
	if p != nil {
		def = *p
	}
	return &def
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// settings is a validated configuration in the forms the session uses.
type settings struct {
	cfg      Config // defaults filled in
	hosts    []blueprint.Host
	names    []string
	schedule lifecycle.Schedule
	embargo  int64
	auto     bool
	ctl      tamiyo.Config
}

// WithDefaults returns the configuration with every default filled in,
// validated; errors wrap ErrConfig or the code of the component that
// refused.
func (c Config) WithDefaults() (Config, error) {
	s, err := c.settings()
	return s.cfg, err
}

func (c Config) settings() (settings, error) {
	var s settings
	bad := func(format string, args ...any) (settings, error) {
		return settings{}, fmt.Errorf("session: config: "+format+": %w", append(args, ErrConfig)...)
	}
	if len(c.Layers) < 1 || len(c.Layers) > MaxLayers {
		return bad("%d layers, want 1 to %d", len(c.Layers), MaxLayers)
	}
	c.Layers = append([]LayerConfig(nil), c.Layers...)
	seen := make(map[string]int, len(c.Layers))
	for i := range c.Layers {
		l := &c.Layers[i]
		l.Spatial = append([]int64(nil), l.Spatial...)
		if len(l.Spatial) == 0 {
			l.Spatial = nil
		}
		if l.Name == "" || len(l.Name) > MaxNameLen || strings.ContainsAny(l.Name, "\x00\n") {
			return bad("layers[%d]: name %q must be 1 to %d characters without NUL or newline", i, l.Name, MaxNameLen)
		}
		if j, dup := seen[l.Name]; dup {
			return bad("layers[%d]: name %q repeats layers[%d]", i, l.Name, j)
		}
		seen[l.Name] = i
		if (l.Kind == blueprint.HostConv1d || l.Kind == blueprint.HostConv2d || l.IsPair()) && l.Stride == 0 {
			l.Stride = 1
		}
		if l.IsPair() && l.ConsumerStride == 0 {
			l.ConsumerStride = 1
		}
		if l.Params < 0 {
			return bad("layers[%d] (%s): params %d must be >= 0", i, l.Name, l.Params)
		}
		h := l.Host
		h.Spatial = slices.Clone(h.Spatial) // the session's hosts share nothing with the config
		if err := h.Validate(); err != nil {
			return bad("layers[%d] (%s): %v", i, l.Name, err)
		}
		s.hosts = append(s.hosts, h)
		s.names = append(s.names, l.Name)
	}
	if c.SlotsPerLayer == 0 {
		c.SlotsPerLayer = DefaultSlotsPerLayer
	}
	if c.SlotsPerLayer < 1 || c.SlotsPerLayer > MaxSlotsPerLayer || len(c.Layers)*c.SlotsPerLayer > MaxSlots {
		return bad("slots_per_layer %d must be in [1, %d] with layers x slots <= %d", c.SlotsPerLayer, MaxSlotsPerLayer, MaxSlots)
	}
	if c.TrainSteps == 0 {
		c.TrainSteps = DefaultTrainSteps
	}
	if c.BlendSteps == 0 {
		c.BlendSteps = DefaultBlendSteps
	}
	if c.TrainSteps < 1 || c.TrainSteps > MaxSteps {
		return bad("train_steps %d must be in [1, %d]", c.TrainSteps, int64(MaxSteps))
	}
	if c.BlendSteps < 1 || c.BlendSteps > MaxSteps {
		return bad("blend_steps %d must be in [1, %d]", c.BlendSteps, int64(MaxSteps))
	}
	c.EmbargoSteps = valueOr(c.EmbargoSteps, int64(DefaultEmbargoSteps))
	if *c.EmbargoSteps < 0 || *c.EmbargoSteps > MaxSteps {
		return bad("embargo_steps %d must be in [0, %d]", *c.EmbargoSteps, int64(MaxSteps))
	}
	if c.Schedule == "" {
		c.Schedule = lifecycle.Linear.String()
	}
	sched, err := lifecycle.ParseSchedule(c.Schedule)
	if err != nil {
		return bad("%v", err)
	}
	c.Schedule = sched.String()
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	kind, err := tamiyo.ParseKind(c.Policy)
	if err != nil {
		return bad("%v", err)
	}
	c.Policy = kind.String()
	ctl := c.Controller
	ctl.Kind = kind
	ctl.Governor = c.Governor
	ctl, err = ctl.WithDefaults()
	if err != nil {
		return bad("%v", err)
	}
	c.Controller = ctl
	c.Controller.Governor = tamiyo.GovernorConfig{}
	c.Governor = ctl.Governor
	if c.Breaker.Failures == 0 {
		c.Breaker.Failures = DefaultFailures
	}
	if c.Breaker.Failures < 1 || c.Breaker.Failures > 1<<20 {
		return bad("breaker failures %d must be in [1, %d]", c.Breaker.Failures, 1<<20)
	}
	sc := nissa.Config{Layers: len(c.Layers), Window: c.Signals.Window, EWMA: c.Signals.EWMA}
	if err := sc.Validate(); err != nil { // before anything is allocated
		return bad("signals: %v", err)
	}
	if c.Signals.Window == 0 {
		c.Signals.Window = nissa.DefaultWindow
	}
	if c.Signals.EWMA == 0 {
		c.Signals.EWMA = nissa.DefaultEWMA
	}
	c.AutoAdvance = valueOr(c.AutoAdvance, true)
	if c.GrowthLogMax == 0 {
		c.GrowthLogMax = DefaultGrowthLogMax
	}
	if c.GrowthLogMax < 1 || c.GrowthLogMax > MaxGrowthLog {
		return bad("growth_log_max %d must be in [1, %d]", c.GrowthLogMax, MaxGrowthLog)
	}
	if c.LogSignalsEvery < 0 {
		return bad("log_signals_every %d must be >= 0", c.LogSignalsEvery)
	}
	if strings.ContainsRune(c.LogPath, 0) {
		return bad("log_path contains NUL")
	}
	if strings.ContainsRune(c.Urza, 0) {
		return bad("urza contains NUL")
	}
	if c.KarnPredictor != "" && !ctl.Search {
		return bad("karn_predictor %q is read by Karn's search only: set controller.search (karn_search=True) or leave it empty", c.KarnPredictor)
	}
	if strings.ContainsRune(c.KarnPredictor, 0) {
		return bad("karn_predictor contains NUL")
	}
	if c.Rollout, err = c.Rollout.withDefaults(); err != nil {
		return bad("%v", err)
	}
	if c.Alerts, err = c.Alerts.WithDefaults(); err != nil {
		return bad("%v", err)
	}
	if len(c.Metrics.Run) > MaxNameLen || !utf8.ValidString(c.Metrics.Run) || c.Metrics.Rank < 0 || c.Metrics.Rank > 1<<20 {
		return bad("metrics: run %q must be valid UTF-8 of at most %d bytes and rank %d in [0, %d]",
			c.Metrics.Run, MaxNameLen, c.Metrics.Rank, 1<<20)
	}
	s.cfg = c
	s.schedule = sched
	s.embargo = *c.EmbargoSteps
	s.auto = *c.AutoAdvance
	s.ctl = ctl
	return s, nil
}
