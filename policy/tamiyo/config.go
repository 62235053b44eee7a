package tamiyo

import (
	"fmt"
	"math"
	"strings"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/infer"
)

// Kind selects the policy.
type Kind uint8

// The policies.
const (
	// Heuristic grows on a validation plateau at the layer with the
	// strongest growth score and judges held seeds by their contribution.
	Heuristic Kind = iota
	// Random is the baseline: the same budget and timing as Heuristic, but
	// the layer is drawn at random (deterministically from Config.Seed).
	Random
	// Manual never germinates, prunes or fossilizes on its own; the
	// governor still calls for rollbacks. "none" is accepted as a synonym.
	Manual
	// Learned grows with the value model (policy/value, docs/simic.md):
	// at each end of epoch it predicts the value of every candidate
	// germination (layer x template x size) and grows the best when its
	// predicted value reaches ValueThreshold, else waits. Held seeds are
	// judged as by Heuristic; the governor rules as for every policy.
	Learned
	// PPO is Simic's graph policy (policy/graphpolicy, docs/simic.md): the
	// controller itself decides only the governor's rollbacks, as Manual;
	// at each end of epoch the session runs the network in PPOModel on the
	// layer graph and carries out its moves through the gates and the
	// governor.
	PPO

	numKinds
)

var kindNames = [numKinds]string{"heuristic", "random", "manual", "learned", "ppo"}

// String returns "heuristic", "random", "manual", "learned" or "ppo".
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ParseKind returns the policy called name ("none" is Manual).
func ParseKind(name string) (Kind, error) {
	if strings.EqualFold(name, "none") {
		return Manual, nil
	}
	for i, n := range kindNames {
		if strings.EqualFold(n, name) {
			return Kind(i), nil
		}
	}
	return 0, fmt.Errorf("tamiyo: policy %q is not one of heuristic, random, manual, learned, ppo: %w", name, ErrConfig)
}

// MarshalText encodes the policy's name.
func (k Kind) MarshalText() ([]byte, error) {
	if k >= numKinds {
		return nil, fmt.Errorf("tamiyo: marshal policy %d: %w", uint8(k), ErrConfig)
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText decodes a policy name.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Defaults of Config and GovernorConfig.
const (
	DefaultPatience       = 3
	DefaultThreshold      = 0.01
	DefaultHoldingEpochs  = 1
	DefaultMinGain        = 0.01
	DefaultSaturateAfter  = 2
	DefaultTemplate       = "residual_mlp"
	DefaultMaxConcurrent  = 1
	DefaultCooldownEpochs = 2
	DefaultLossWindow     = 20
	// DefaultValueThreshold is Config.ValueThreshold's default.
	DefaultValueThreshold = 0.01
	DefaultLossFactor     = 3.0
	DefaultLossMinDelta   = 0.05
	DefaultMinLossSamples = 5
	// MaxLossWindow bounds GovernorConfig.LossWindow.
	MaxLossWindow = 1 << 16
	// MaxPatience bounds Config.Patience.
	MaxPatience = 1000
	// MaxEpochs bounds Config.Epochs.
	MaxEpochs = 1 << 24
	// MaxSaturateAfter bounds Config.SaturateAfter.
	MaxSaturateAfter = 1000
)

// Config configures a Controller. Zero values (nil pointers) mean the
// documented defaults.
type Config struct {
	// Kind is the policy: heuristic (default), random or manual.
	Kind Kind `json:"-"`
	// Patience is the number of recent epochs the plateau test looks at:
	// growth is considered when the best validation loss of the last
	// Patience epochs improves on the best before them by less than
	// Threshold (relative). Default 3, in [1, 1000].
	Patience int `json:"patience,omitempty"`
	// Threshold is the relative improvement of the validation loss below
	// which the run has plateaued. Default 0.01 (1%), in (0, 1].
	Threshold float64 `json:"threshold,omitempty"`
	// PruneBelow is the bar a held seed's contribution (delta_loss: the
	// validation loss without the seed minus with it; positive helps) must
	// reach to be fossilized; below it the seed is pruned. Default 0.
	PruneBelow float64 `json:"prune_below,omitempty"`
	// MinGain is the relative bar a held seed's contribution must also
	// reach: delta_loss >= MinGain x the validation loss with the seed. A
	// seed below it is pruned and counts as a miss of its layer; a layer is
	// saturated (Tamiyo grows there no more) on the evidence that seeds
	// there no longer pay: see SaturateAfter. Growth stops when every layer
	// is saturated. 0 disables the relative bar. Default 0.01 (1%), in
	// [0, 1].
	MinGain *float64 `json:"min_gain,omitempty"`
	// SaturateAfter is how many seeds in a row must fall short on a layer
	// (pruned by the bars above, with no fossilized seed between them)
	// before the layer is saturated. One seed that fell short but helped
	// (a contribution > 0) is a near miss, not evidence that the layer is
	// full: the layer may grow again. A seed that did not help at all
	// (contribution <= 0: the validation loss is no worse without it)
	// saturates its layer at once: the gain it predicts for another seed
	// there is none, below any cost. Default 2, in [1, MaxSaturateAfter];
	// 1 saturates a layer at its first miss.
	SaturateAfter int `json:"saturate_after,omitempty"`
	// HoldingEpochs is how many end-of-epoch calls a seed may stay in
	// HOLDING without a measured contribution before it is judged on the
	// validation loss since its germination instead. Default 1, >= 1.
	HoldingEpochs int `json:"holding_epochs,omitempty"`
	// Template is the blueprint template germinations use where it fits the
	// layer. Layers it does not support get the first supporting template
	// of conv3x3, conv1d_block, widen (conv pairs: the only template they
	// take), residual_mlp, bottleneck, lowrank, linear
	// (then any other), with its defaults; the germination's reason then
	// names the template used and why. Default "residual_mlp".
	Template string `json:"template,omitempty"`
	// Params are Template's parameters (missing ones take the template's
	// defaults). Its size parameter ("width" or "rank") is lowered as far
	// as needed to fit the remaining budget, to a quarter of the configured
	// size at most; no seed of any template is smaller than a quarter of the
	// configured seed's parameters. Default: none (all defaults).
	Params blueprint.Params `json:"params,omitempty"`
	// Search makes Tamiyo ask Karn for the blueprint (package
	// blueprint/karn): at the layer it chose, it sends a request whose
	// budget is the cost of the seed the fixed template would grow there
	// (its parameters and FLOPs per sample, after fitting the parameter
	// budget left), with the layer's signals and the outcome history on
	// hosts of that layout, and germinates the best candidate the governor
	// admits; the decision's reason names the request and the candidates'
	// predictions (or that the prior ranked them). Without a candidate the
	// fixed template grows, and the reason says why. Default false.
	Search bool `json:"search,omitempty"`
	// Epochs is the run's planned length in epochs, when the trainer knows
	// it (0, the default: unknown). Tamiyo then does not germinate when the
	// epochs left are fewer than twice a seed's lifecycle
	// (Observation.LifecycleSteps at the run's steps per epoch, plus
	// HoldingEpochs): a seed needs its lifecycle to reach full weight and
	// as long again to repay its compute. >= 0, at most MaxEpochs.
	Epochs int `json:"epochs,omitempty"`
	// Seed seeds the random policy's generator. Default 0.
	Seed uint64 `json:"seed,omitempty"`
	// ValueModel is the folder of the value model the learned policy loads
	// (manifest.json + model.safetensors, docs/simic.md). Required by, and
	// only read for, the learned policy; Python passes the shipped model's
	// folder when the user names none.
	ValueModel string `json:"value_model,omitempty"`
	// ValueRuntime is the runtime the value model runs on: "native" (Go's
	// forward pass over model.safetensors; "" too) or "onnx" (the folder's
	// model.onnx through ONNX Runtime, docs/simic.md "ONNX runtime").
	ValueRuntime string `json:"value_runtime,omitempty"`
	// PPOModel is the folder of the graph policy the ppo policy runs
	// (manifest.json + model.safetensors, docs/simic.md). Required by, and
	// only read for, the ppo policy; Python passes the shipped model's
	// folder when the user names none.
	PPOModel string `json:"ppo_model,omitempty"`
	// PPORuntime is the runtime the ppo policy's network runs on at each
	// decision: "native" (Go's forward pass over model.safetensors; ""
	// too) or "onnx" (the folder's model.onnx through ONNX Runtime,
	// docs/simic.md "Graph policy in Go").
	PPORuntime string `json:"ppo_runtime,omitempty"`
	// ValueThreshold is the predicted value (gain_per_compute_v1: the share
	// of the validation loss a seed removes per host-epoch of training
	// compute) the best candidate must reach for the learned policy to grow
	// now; below it, it waits. Default 0.01 (1% of the loss per host-epoch),
	// finite.
	ValueThreshold *float64 `json:"value_threshold,omitempty"`
	// Governor configures the safety governor.
	Governor GovernorConfig `json:"-"`
}

// GovernorConfig configures the Governor. Zero values (nil pointers) mean
// the documented defaults.
type GovernorConfig struct {
	// MaxParams bounds the parameters of live and fossilized seeds
	// together; a germination that would exceed it is refused. 0 (the
	// default) means no limit.
	MaxParams int64 `json:"max_params,omitempty"`
	// MaxConcurrent bounds the seeds in flight (GERMINATED, TRAINING,
	// BLENDING, HOLDING). Default 1, >= 1.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// CooldownEpochs is how many epochs a layer rests after a germination
	// before the policy may germinate there again. Default 2; an explicit
	// 0 means no cooldown.
	CooldownEpochs *int `json:"cooldown_epochs,omitempty"`
	// LossWindow is the number of recent finite training losses whose mean
	// the explosion test compares against. Default 20, in [1, 65536].
	LossWindow int `json:"loss_window,omitempty"`
	// LossFactor is k: a training loss above k times the rolling mean (a
	// positive mean over at least MinLossSamples losses) calls for a
	// rollback. Default 3, > 1.
	LossFactor float64 `json:"loss_factor,omitempty"`
	// LossMinDelta is how far, in loss units, a spike must also rise above
	// the rolling mean: near zero, losses are noisy in relative terms (0.004
	// against a mean of 0.001 is 4x, and harmless). Non-finite losses always
	// alarm. Default 0.05, >= 0 (0: the relative test alone).
	LossMinDelta *float64 `json:"loss_min_delta,omitempty"`
	// MinLossSamples is how many losses the window needs before the
	// explosion test applies. Default 5, in [1, LossWindow].
	MinLossSamples int `json:"min_loss_samples,omitempty"`
}

// WithDefaults returns c with every zero field set to its default, checked.
func (c GovernorConfig) WithDefaults() (GovernorConfig, error) {
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	c.CooldownEpochs = valueOr(c.CooldownEpochs, DefaultCooldownEpochs)
	if c.LossWindow == 0 {
		c.LossWindow = DefaultLossWindow
	}
	if c.LossFactor == 0 {
		c.LossFactor = DefaultLossFactor
	}
	c.LossMinDelta = valueOr(c.LossMinDelta, DefaultLossMinDelta)
	if c.MinLossSamples == 0 {
		c.MinLossSamples = min(DefaultMinLossSamples, c.LossWindow)
	}
	switch {
	case c.MaxParams < 0:
		return c, fmt.Errorf("tamiyo: governor max_params %d must be >= 0 (0 = no limit): %w", c.MaxParams, ErrConfig)
	case c.MaxConcurrent < 1:
		return c, fmt.Errorf("tamiyo: governor max_concurrent %d must be >= 1: %w", c.MaxConcurrent, ErrConfig)
	case *c.CooldownEpochs < 0:
		return c, fmt.Errorf("tamiyo: governor cooldown_epochs %d must be >= 0: %w", *c.CooldownEpochs, ErrConfig)
	case c.LossWindow < 1 || c.LossWindow > MaxLossWindow:
		return c, fmt.Errorf("tamiyo: governor loss_window %d is not in [1, %d]: %w", c.LossWindow, MaxLossWindow, ErrConfig)
	case !(c.LossFactor > 1) || math.IsInf(c.LossFactor, 0):
		return c, fmt.Errorf("tamiyo: governor loss_factor %v must be a finite number > 1: %w", c.LossFactor, ErrConfig)
	case !(*c.LossMinDelta >= 0) || math.IsInf(*c.LossMinDelta, 0):
		return c, fmt.Errorf("tamiyo: governor loss_min_delta %v must be a finite number >= 0: %w", *c.LossMinDelta, ErrConfig)
	case c.MinLossSamples < 1 || c.MinLossSamples > c.LossWindow:
		return c, fmt.Errorf("tamiyo: governor min_loss_samples %d is not in [1, loss_window %d]: %w", c.MinLossSamples, c.LossWindow, ErrConfig)
	}
	return c, nil
}

// WithDefaults returns c with every zero field set to its default, checked
// (the template must exist and accept Params).
func (c Config) WithDefaults() (Config, error) {
	if c.Kind >= numKinds {
		return c, fmt.Errorf("tamiyo: policy %d: %w", uint8(c.Kind), ErrConfig)
	}
	if c.Patience == 0 {
		c.Patience = DefaultPatience
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultThreshold
	}
	if c.HoldingEpochs == 0 {
		c.HoldingEpochs = DefaultHoldingEpochs
	}
	if c.Template == "" {
		c.Template = DefaultTemplate
	}
	c.MinGain = valueOr(c.MinGain, DefaultMinGain)
	c.ValueThreshold = valueOr(c.ValueThreshold, DefaultValueThreshold)
	if c.SaturateAfter == 0 {
		c.SaturateAfter = DefaultSaturateAfter
	}
	switch {
	case c.Patience < 1 || c.Patience > MaxPatience:
		return c, fmt.Errorf("tamiyo: patience %d is not in [1, %d]: %w", c.Patience, MaxPatience, ErrConfig)
	case !(c.Threshold > 0 && c.Threshold <= 1):
		return c, fmt.Errorf("tamiyo: threshold %v is not in (0, 1]: %w", c.Threshold, ErrConfig)
	case math.IsNaN(c.PruneBelow) || math.IsInf(c.PruneBelow, 0):
		return c, fmt.Errorf("tamiyo: prune_below %v is not finite: %w", c.PruneBelow, ErrConfig)
	case c.Epochs < 0 || c.Epochs > MaxEpochs:
		return c, fmt.Errorf("tamiyo: epochs %d is not in [0, %d] (0: unknown): %w", c.Epochs, MaxEpochs, ErrConfig)
	case c.HoldingEpochs < 1:
		return c, fmt.Errorf("tamiyo: holding_epochs %d must be >= 1: %w", c.HoldingEpochs, ErrConfig)
	case !(*c.MinGain >= 0 && *c.MinGain <= 1):
		return c, fmt.Errorf("tamiyo: min_gain %v is not in [0, 1]: %w", *c.MinGain, ErrConfig)
	case math.IsNaN(*c.ValueThreshold) || math.IsInf(*c.ValueThreshold, 0):
		return c, fmt.Errorf("tamiyo: value_threshold %v is not finite: %w", *c.ValueThreshold, ErrConfig)
	case c.ValueRuntime != "" && c.ValueRuntime != infer.Native && c.ValueRuntime != infer.ONNX:
		return c, fmt.Errorf("tamiyo: value_runtime %q is not %q or %q: %w", c.ValueRuntime, infer.Native, infer.ONNX, ErrConfig)
	case c.PPORuntime != "" && c.PPORuntime != infer.Native && c.PPORuntime != infer.ONNX:
		return c, fmt.Errorf("tamiyo: ppo_runtime %q is not %q or %q: %w", c.PPORuntime, infer.Native, infer.ONNX, ErrConfig)
	case c.Kind == Learned && c.ValueModel == "":
		return c, fmt.Errorf("tamiyo: the learned policy needs a value model: set value_model to a model folder, or train one with `esper simic train` (docs/simic.md): %w", ErrConfig)
	case c.Kind == PPO && c.PPOModel == "":
		return c, fmt.Errorf("tamiyo: the ppo policy needs a graph policy model: set ppo_model to a model folder, or train one with `esper simic ppo train --out DIR` (docs/simic.md): %w", ErrConfig)
	case c.SaturateAfter < 1 || c.SaturateAfter > MaxSaturateAfter:
		return c, fmt.Errorf("tamiyo: saturate_after %d is not in [1, %d]: %w", c.SaturateAfter, MaxSaturateAfter, ErrConfig)
	}
	t, err := blueprint.Lookup(c.Template)
	if err != nil {
		return c, fmt.Errorf("tamiyo: template: %v: %w", err, ErrConfig)
	}
	p, err := t.Resolve(c.Params)
	if err != nil {
		return c, fmt.Errorf("tamiyo: params: %v: %w", err, ErrConfig)
	}
	c.Params = p
	g, err := c.Governor.WithDefaults()
	if err != nil {
		return c, err
	}
	c.Governor = g
	return c, nil
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
