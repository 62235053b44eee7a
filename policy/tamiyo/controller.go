package tamiyo

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
)

// MaxValHistory bounds the validation losses a Controller remembers.
const MaxValHistory = 1024

// fallbackTemplates is the order templates are tried in for layers the
// configured template does not support; templates not listed follow by
// name.
var fallbackTemplates = []string{"conv3x3", "conv1d_block", "widen", "residual_mlp", "bottleneck", "lowrank", "linear"}

// sizeParams are the template parameters that scale a blueprint's size,
// lowered to fit a budget.
var sizeParams = []string{"width", "rank"}

// EpochValue is a metric recorded at the end of an epoch.
type EpochValue struct {
	Epoch int     `json:"epoch"`
	Value float64 `json:"value"`
}

// Controller runs one policy and its governor over a run. It is not safe
// for concurrent use.
type Controller struct {
	cfg   Config
	gov   *Governor
	hosts []blueprint.Host
	// templates holds, per layer, the templates to try in order with the
	// parameters to start from.
	templates [][]candidateTemplate
	// least holds, per layer, the fewest parameters a seed there may have
	// (see minSizeDivisor); 0 when the first template does not instantiate.
	least []int64
	pcg   *rand.PCG
	rng   *rand.Rand
	// vals holds the finite validation losses, oldest first.
	vals []EpochValue
	// saturated marks, per layer, that growth there stopped paying (see
	// saturation.go); misses counts, per layer, the seeds in a row that fell
	// short there since its last fossilized seed.
	saturated []bool
	misses    []int
	// gain and trials hold, per layer, the sum of the relative
	// contributions measured for its seeds and how many were measured:
	// placement prefers untried layers, then the best measured payoff.
	gain   []float64
	trials []int
	// karn answers blueprint requests when Config.Search is on.
	karn *karn.Service
	// learned holds the learned policy's model and candidates (nil for
	// other policies).
	learned *learner
	// instances memoizes the templates' instances this controller makes
	// (fit, leastParams): a germination of a template and size made before
	// on the same host reuses its IR, canonical document and id.
	instances *blueprint.Instances
}

type candidateTemplate struct {
	t      blueprint.Template
	params blueprint.Params
}

// New returns a controller for layers with the given hosts (one per
// wrapped layer, in order).
func New(cfg Config, hosts []blueprint.Host) (*Controller, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	gov, err := NewGovernor(cfg.Governor, len(hosts))
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, gov: gov, hosts: slices.Clone(hosts), templates: make([][]candidateTemplate, len(hosts)),
		least: make([]int64, len(hosts)), saturated: make([]bool, len(hosts)), misses: make([]int, len(hosts)), gain: make([]float64, len(hosts)),
		trials: make([]int, len(hosts)), instances: &blueprint.Instances{}}
	c.pcg = rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)
	c.rng = rand.New(c.pcg)
	// Layers with equal hosts share their (read-only) template list: a model of many
	// identical layers keeps one list, not one per layer.
	byHost := map[string]int{}
	for i, h := range hosts {
		if err := h.Validate(); err != nil {
			return nil, fmt.Errorf("tamiyo: layer %d: %v: %w", i, err, ErrConfig)
		}
		key := fmt.Sprintf("%#v", h)
		if j, ok := byHost[key]; ok {
			c.templates[i], c.least[i] = c.templates[j], c.least[j]
			continue
		}
		byHost[key] = i
		c.templates[i] = templatesFor(cfg, h)
		c.least[i] = leastParams(c.instances, c.templates[i], h)
	}
	if cfg.Search {
		c.karn = karn.NewService(nil)
	}
	if cfg.Kind == Learned {
		if c.learned, err = newLearner(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// templatesFor lists the templates to try on host h, in order: the
// configured one with the configured params, then the fallbacks with their
// defaults.
func templatesFor(cfg Config, h blueprint.Host) []candidateTemplate {
	var out []candidateTemplate
	seen := map[string]bool{}
	add := func(t blueprint.Template, p blueprint.Params) {
		if seen[t.Name] || !t.Supports(h) {
			return
		}
		seen[t.Name] = true
		out = append(out, candidateTemplate{t: t, params: p})
	}
	if t, err := blueprint.Lookup(cfg.Template); err == nil {
		add(t, cfg.Params)
	}
	for _, name := range fallbackTemplates {
		if t, err := blueprint.Lookup(name); err == nil {
			add(t, nil)
		}
	}
	for _, t := range blueprint.Templates() {
		add(t, nil)
	}
	return out
}

// Config returns the configuration with defaults filled in.
func (c *Controller) Config() Config { return c.cfg }

// Governor returns the controller's governor.
func (c *Controller) Governor() *Governor { return c.gov }

// Instances returns the memo of the template instances the controller
// made (the IRs of its germinations come from it): its owner looks the
// canonical document and id of a decision's blueprint up there.
func (c *Controller) Instances() *blueprint.Instances { return c.instances }

// Decide returns the decisions for the epoch described by obs, in the
// order they should be applied: a rollback alone when the governor raises
// an alarm on the epoch's training loss or finds its validation loss
// non-finite (nothing is decided on a NaN); otherwise the judgements of
// held seeds (prune or fossilize) and then one germination or one wait. The
// manual and ppo policies return only rollbacks.
func (c *Controller) Decide(obs *Observation) []Decision {
	c.recordVal(obs.Epoch, obs.Metrics.ValLoss)
	if a := c.gov.ObserveEpoch(obs.Metrics.TrainLoss); a.Raised() {
		return []Decision{RollbackDecision(obs.Seeds, a)}
	}
	if a := c.gov.ObserveValidation(obs.Metrics.ValLoss); a.Raised() {
		return []Decision{RollbackDecision(obs.Seeds, a)}
	}
	if c.cfg.Kind == Manual || c.cfg.Kind == PPO {
		return nil // the ppo policy's moves are the session's (policy/graphpolicy)
	}
	out := c.judge(obs, nil)
	return append(out, c.grow(obs, out))
}

// RollbackDecision returns the decision for an alarm: roll back the newest
// seed in flight (see RollbackTarget), or a rollback with no seed (layer
// -1) when none can be blamed.
func RollbackDecision(seeds []SeedView, a Alarm) Decision {
	i := RollbackTarget(seeds)
	if i < 0 {
		return Decision{Op: Rollback, Layer: -1, Slot: -1, Reason: a.Reason() + "; no seed in flight to roll back"}
	}
	s := seeds[i]
	return Decision{Op: Rollback, Layer: s.Layer, Slot: s.Slot,
		Reason: fmt.Sprintf("%s; rolling back seed %d/%d, the newest in flight (%s, germinated at step %d)",
			a.Reason(), s.Layer, s.Slot, s.State, s.GerminatedStep)}
}

func (c *Controller) recordVal(epoch int, m nissa.Metric) {
	if !m.Finite() {
		return
	}
	if n := len(c.vals); n > 0 && c.vals[n-1].Epoch >= epoch {
		// A repeated or out-of-order epoch replaces what follows it.
		i, _ := slices.BinarySearchFunc(c.vals, epoch, func(e EpochValue, t int) int { return e.Epoch - t })
		c.vals = c.vals[:i]
	}
	if len(c.vals) == MaxValHistory {
		c.vals = append(c.vals[:0], c.vals[1:]...)
	}
	c.vals = append(c.vals, EpochValue{Epoch: epoch, Value: m.Value})
}

// valAtOrBefore returns the last validation loss recorded at or before
// epoch.
func (c *Controller) valAtOrBefore(epoch int) (float64, bool) {
	for i := len(c.vals) - 1; i >= 0; i-- {
		if c.vals[i].Epoch <= epoch {
			return c.vals[i].Value, true
		}
	}
	return 0, false
}

// relImprovement is (before - after) / |before|, guarded against zero.
func relImprovement(before, after float64) float64 {
	return (before - after) / math.Max(math.Abs(before), 1e-12)
}

func contribution(m *Metrics, layer, slot int) (float64, bool) {
	for _, c := range m.Contributions {
		if c.Layer == layer && c.Slot == slot {
			return c.DeltaLoss, true
		}
	}
	return 0, false
}

// paidRun reports whether growth has paid in the run: a seed is fossilized,
// or judged this epoch (in judged) to be.
func paidRun(obs *Observation, judged []Decision) bool {
	for i := range obs.Seeds {
		if obs.Seeds[i].State == lifecycle.Fossilized {
			return true
		}
	}
	return slices.ContainsFunc(judged, func(d Decision) bool { return d.Op == Fossilize })
}

// judge decides the fate of held seeds.
func (c *Controller) judge(obs *Observation, out []Decision) []Decision {
	for i := range obs.Seeds {
		s := &obs.Seeds[i]
		if s.State != lifecycle.Holding {
			continue
		}
		if d, ok := contribution(&obs.Metrics, s.Layer, s.Slot); ok {
			bar, rel := c.cfg.PruneBelow, ""
			if val := obs.Metrics.ValLoss; val.Finite() && *c.cfg.MinGain > 0 {
				if r := *c.cfg.MinGain * math.Abs(val.Value); r > bar {
					bar = r
					rel = fmt.Sprintf(" (min_gain %.2f%% of the validation loss %.6g)", 100**c.cfg.MinGain, val.Value)
				}
			}
			if val := obs.Metrics.ValLoss; val.Finite() && s.Layer >= 0 && s.Layer < len(c.gain) {
				c.gain[s.Layer] += d / math.Max(math.Abs(val.Value), 1e-12)
				c.trials[s.Layer]++
			}
			if d < bar {
				note := c.missed(s.Layer, d, true, bar, paidRun(obs, out))
				out = append(out, Decision{Op: Prune, Layer: s.Layer, Slot: s.Slot, Reason: fmt.Sprintf(
					"contribution %.6g (validation loss without the seed minus with it) is below the bar %.6g%s%s", d, bar, rel, note)})
			} else {
				c.paid(s.Layer)
				out = append(out, Decision{Op: Fossilize, Layer: s.Layer, Slot: s.Slot, Reason: fmt.Sprintf(
					"contribution %.6g (validation loss without the seed minus with it) reaches the bar %.6g%s", d, bar, rel)})
			}
			continue
		}
		if s.EpochsInState < c.cfg.HoldingEpochs {
			continue
		}
		before, ok1 := c.valAtOrBefore(s.GerminatedEpoch)
		now, ok2 := c.valAtOrBefore(obs.Epoch)
		if !ok1 || !ok2 {
			out = append(out, Decision{Op: Prune, Layer: s.Layer, Slot: s.Slot, Reason: fmt.Sprintf(
				"no contribution measured in %d epochs of HOLDING and no validation loss to judge by%s", s.EpochsInState,
				c.missed(s.Layer, 0, false, 0, true))})
			continue
		}
		rel := relImprovement(before, now)
		if rel >= c.cfg.Threshold {
			c.paid(s.Layer)
			out = append(out, Decision{Op: Fossilize, Layer: s.Layer, Slot: s.Slot, Reason: fmt.Sprintf(
				"no contribution measured in %d epochs of HOLDING; validation loss improved %.2f%% since germination at epoch %d (threshold %.2f%%)",
				s.EpochsInState, 100*rel, s.GerminatedEpoch, 100*c.cfg.Threshold)})
		} else {
			out = append(out, Decision{Op: Prune, Layer: s.Layer, Slot: s.Slot, Reason: fmt.Sprintf(
				"no contribution measured in %d epochs of HOLDING; validation loss improved only %.2f%% since germination at epoch %d (threshold %.2f%%)%s",
				s.EpochsInState, 100*rel, s.GerminatedEpoch, 100*c.cfg.Threshold, c.missed(s.Layer, 0, false, 0, true))})
		}
	}
	return out
}

// settledSince returns the last epoch at which the model gained capacity: the
// last germination, or the last fossilization (seen in obs or decided in
// judged this epoch) when that is later. A fossilized seed has just reached
// full weight; the host and its seeds need epochs at the new capacity before
// a plateau can say that capacity is short again (germinating straight after
// a fossilization stacks seeds, and seeds started together learn the same
// thing). A prune leaves the capacity as it was and does not count.
func (c *Controller) settledSince(obs *Observation, judged []Decision) (int, string) {
	since, what := c.gov.LastGermination(), "germination"
	for i := range obs.Seeds {
		s := &obs.Seeds[i]
		if s.State == lifecycle.Fossilized {
			if e := obs.Epoch - s.EpochsInState; e > since {
				since, what = e, "fossilization"
			}
		}
	}
	for _, d := range judged {
		if d.Op == Fossilize {
			since, what = obs.Epoch, "fossilization"
		}
	}
	return since, what
}

// plateau reports whether the validation loss has plateaued since the model
// last gained capacity (see settledSince), with the reason either way.
func (c *Controller) plateau(obs *Observation, judged []Decision) (bool, string) {
	since, event := c.settledSince(obs, judged)
	start := len(c.vals)
	for start > 0 && c.vals[start-1].Epoch > since {
		start--
	}
	recent := c.vals[start:]
	p := c.cfg.Patience
	if len(recent) < p+1 {
		what := "since the start"
		if since >= 0 {
			what = fmt.Sprintf("since the %s at epoch %d", event, since)
		}
		return false, fmt.Sprintf("watching for a plateau: %d of the %d epochs of validation loss needed %s",
			len(recent), p+1, what)
	}
	// Values are finite (recordVal keeps no others): plain comparisons.
	bestBefore, bestRecent := math.Inf(1), math.Inf(1)
	split := len(recent) - p
	for _, v := range recent[:split] {
		if v.Value < bestBefore {
			bestBefore = v.Value
		}
	}
	for _, v := range recent[split:] {
		if v.Value < bestRecent {
			bestRecent = v.Value
		}
	}
	rel := relImprovement(bestBefore, bestRecent)
	if rel <= -c.cfg.Threshold {
		// Not a plateau: a validation loss that rises by more than the
		// threshold is overfitting (or noise near zero), and a bigger model
		// would not help.
		return false, fmt.Sprintf("validation loss rising: best of the last %d epochs %.6g is %.2f%% above the best before %.6g (threshold %.2f%%): overfitting or noise, not a lack of capacity",
			p, bestRecent, -100*rel, bestBefore, 100*c.cfg.Threshold)
	}
	if rel >= c.cfg.Threshold {
		return false, fmt.Sprintf("validation loss still improving: best of the last %d epochs %.6g is %.2f%% below the best before %.6g (threshold %.2f%%)",
			p, bestRecent, 100*rel, bestBefore, 100*c.cfg.Threshold)
	}
	return true, fmt.Sprintf("validation loss plateaued: best of the last %d epochs %.6g improves on the best before %.6g by %.2f%% (threshold %.2f%%)",
		p, bestRecent, bestBefore, 100*rel, 100*c.cfg.Threshold)
}

// tooLate reports whether a seed germinated now could not repay its compute
// before the planned end of the run (Config.Epochs): it needs its lifecycle
// (training and blending at the run's steps per epoch, then HoldingEpochs)
// to reach full weight and to be judged, and as long again to be used.
func (c *Controller) tooLate(obs *Observation) (bool, string) {
	if c.cfg.Epochs <= 0 || obs.LifecycleSteps <= 0 || obs.Step <= 0 {
		return false, ""
	}
	perEpoch := float64(obs.Step) / float64(obs.Epoch+1)
	life := int(math.Ceil(float64(obs.LifecycleSteps)/perEpoch)) + c.cfg.HoldingEpochs
	left := c.cfg.Epochs - 1 - obs.Epoch
	if left >= 2*life {
		return false, ""
	}
	return true, fmt.Sprintf("%d of the run's %d epochs are left, fewer than twice a seed's lifecycle (%d epochs: %d steps at %.3g steps per epoch, then %d held): too late to repay a seed",
		left, c.cfg.Epochs, life, obs.LifecycleSteps, perEpoch, c.cfg.HoldingEpochs)
}

type growthCandidate struct {
	layer, slot int
	// score is raw normalised over the candidates, times alive.
	score float64
	// raw is the signal the score is made of: gain when byGain, else grad.
	raw      float64
	measured bool
	byGain   bool
	// gain is the layer's seed gain; grad its output gradient per unit.
	gain, grad, alive                         float64
	gainMeasured, gradMeasured, aliveMeasured bool
	// payoff is the mean relative gain of the layer's measured seeds;
	// tried says it has one.
	payoff float64
	tried  bool
}

// grow decides on a germination, given the judgements already made this
// epoch (they free concurrency and budget once applied).
func (c *Controller) grow(obs *Observation, judged []Decision) Decision {
	if c.learned != nil {
		return c.learned.grow(obs, judged)
	}
	ok, why := c.plateau(obs, judged)
	if !ok {
		return waitDecision("%s", why)
	}
	if late, note := c.tooLate(obs); late {
		return waitDecision("%s; but %s", why, note)
	}
	used, active := afterJudged(obs, judged)
	if err := c.gov.Admit(used, 0, active); err != nil {
		return waitDecision("%s; but %d seeds are in flight (max_concurrent %d)", why, active, c.gov.cfg.MaxConcurrent)
	}
	remaining := c.gov.Remaining(used)
	if remaining <= 0 {
		return waitDecision("%s; but the parameter budget is spent (%d of %d)", why, used, c.gov.cfg.MaxParams)
	}
	cands, cooling := c.candidates(obs)
	if len(cands) == 0 && !slices.Contains(c.saturated, false) {
		return waitDecision("%s; but every layer is saturated (seeds there fell short of min_gain: see saturate_after): growth has stopped paying", why)
	}
	if len(cands) == 0 {
		return waitDecision("%s; but no layer has a dormant slot outside its cooldown (%d cooling down)", why, cooling)
	}
	budget := "no parameter limit"
	if c.gov.cfg.MaxParams > 0 {
		budget = fmt.Sprintf("%d of %d params left", remaining, c.gov.cfg.MaxParams)
	}
	if c.cfg.Kind == Random {
		c.rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	} else {
		slices.SortStableFunc(cands, better)
	}
	for rank, cand := range cands {
		ir, note, err := c.fit(cand.layer, remaining)
		if err != nil {
			continue
		}
		var gain *float64
		if c.cfg.Search {
			if found, why, predicted := c.search(obs, cand.layer, ir, used, active); found != nil {
				ir, note, gain = found, why, predicted
			} else {
				note += why
			}
		}
		var where string
		if c.cfg.Kind == Random {
			where = fmt.Sprintf("layer %d (%s) drawn at random from %d candidates", cand.layer, c.layerName(obs, cand.layer), len(cands))
		} else {
			where = fmt.Sprintf("layer %d (%s) has growth score %.3g (%s x alive %.3g)%s%s",
				cand.layer, c.layerName(obs, cand.layer), cand.score, cand.signal(), cand.alive, c.payoffNote(cand), rankNote(rank))
		}
		return Decision{Op: Germinate, Layer: cand.layer, Slot: cand.slot, Template: ir.Template, Params: ir.Params,
			ParamCount: ir.ParamCount, Blueprint: ir, PredictedGain: gain,
			Reason: fmt.Sprintf("%s; %s; %s %s = %d params (%s%s)", why, where, ir.Template, describeParams(ir.Params), ir.ParamCount, budget, note)}
	}
	return waitDecision("%s; but no blueprint fits any candidate layer within %s", why, budget)
}

// afterJudged returns the parameters used and the seeds in flight once the
// judgements made this epoch are applied (each frees a slot of
// concurrency, a prune its parameters too).
func afterJudged(obs *Observation, judged []Decision) (used int64, active int) {
	used = obs.ParamsUsed
	for i := range obs.Seeds {
		if obs.Seeds[i].State.Active() {
			active++
		}
	}
	for _, d := range judged {
		active--
		if d.Op == Prune {
			for i := range obs.Seeds {
				if obs.Seeds[i].Layer == d.Layer && obs.Seeds[i].Slot == d.Slot {
					used -= obs.Seeds[i].ParamCount
				}
			}
		}
	}
	return used, active
}

// payoffNote says what the layer's measured seeds brought, or that it is
// untried.
func (c *Controller) payoffNote(cand growthCandidate) string {
	if !cand.tried {
		return ", untried"
	}
	return fmt.Sprintf(", and its %d measured seed(s) lowered the validation loss by %.2f%% on average", c.trials[cand.layer], 100*cand.payoff)
}

// signal describes the measurement a candidate's score is made of.
func (g growthCandidate) signal() string {
	switch {
	case !g.measured:
		return "no signal measured yet"
	case g.byGain:
		return fmt.Sprintf("seed gain %.3g", g.gain)
	}
	return fmt.Sprintf("output gradient per unit %.3g", g.grad)
}

func rankNote(rank int) string {
	if rank == 0 {
		return ", the strongest"
	}
	return fmt.Sprintf(", the strongest whose blueprint fits (rank %d)", rank+1)
}

func (c *Controller) layerName(obs *Observation, layer int) string {
	if layer < len(obs.Layers) && obs.Layers[layer].Name != "" {
		return obs.Layers[layer].Name
	}
	return fmt.Sprintf("layer%d", layer)
}

// candidates returns the layers with a dormant slot outside their
// cooldown, scored; and how many layers were skipped for cooldown.
func (c *Controller) candidates(obs *Observation) ([]growthCandidate, int) {
	var cands []growthCandidate
	cooling := 0
	for l := range c.hosts {
		slot := -1
		for i := range obs.Seeds {
			s := &obs.Seeds[i]
			if s.Layer == l && s.State == lifecycle.Dormant && (slot < 0 || s.Slot < slot) {
				slot = s.Slot
			}
		}
		if slot < 0 {
			continue
		}
		if c.saturated[l] {
			continue
		}
		if c.gov.Cooldown(l, obs.Epoch) > 0 {
			cooling++
			continue
		}
		cand := growthCandidate{layer: l, slot: slot, grad: math.NaN(), alive: 1}
		if l < len(obs.Layers) {
			sig := &obs.Layers[l].Signals
			if g := sig[nissa.SeedGain].Mean; g >= 0 && !math.IsInf(g, 0) { // false for NaN
				cand.gain, cand.gainMeasured = g, true
			}
			if g := sig[nissa.GradNorm].Mean; g >= 0 && !math.IsInf(g, 0) {
				cand.grad = g / math.Sqrt(float64(outFeatures(c.hosts[l])))
				cand.gradMeasured = true
			}
			if d := sig[nissa.DeadFrac].Mean; !math.IsNaN(d) {
				cand.alive = 1 - math.Min(1, math.Max(0, d))
				cand.aliveMeasured = true
			}
		}
		cands = append(cands, cand)
	}
	// The score is the seed gain where every candidate has one, else the
	// output gradient per unit; normalised to [0, 1] over the candidates.
	// Without any measurement every layer counts 1.
	useGain := len(cands) > 0
	for _, cd := range cands {
		useGain = useGain && cd.gainMeasured
	}
	maxScore := 0.0
	for i := range cands {
		cd := &cands[i]
		cd.byGain = useGain
		if useGain {
			cd.raw, cd.measured = cd.gain, true
		} else {
			cd.raw, cd.measured = cd.grad, cd.gradMeasured
		}
		if cd.measured {
			maxScore = math.Max(maxScore, cd.raw)
		}
	}
	unmeasured := !anyMeasured(cands)
	for i := range cands {
		cd := &cands[i]
		norm := 0.0
		switch {
		case unmeasured:
			norm = 1
		case cd.measured && maxScore > 0:
			norm = cd.raw / maxScore
		}
		cd.score = norm * cd.alive
		if n := c.trials[cd.layer]; n > 0 {
			cd.payoff, cd.tried = c.gain[cd.layer]/float64(n), true
		}
	}
	return cands, cooling
}

// better orders growth candidates for the heuristic: layers with no
// measured seed first (every layer is tried once), then by growth score;
// the layer index breaks ties. Measured payoffs are reported, not ranked
// on: a layer's first seed pays more than its later ones, so ranking on
// the mean payoff kept growing one layer past its returns (on spirals, three
// seeds in one layer was the worst plan measured).
func better(a, b growthCandidate) int {
	switch {
	case a.tried != b.tried:
		if !a.tried {
			return -1
		}
		return 1
	case a.score > b.score:
		return -1
	case a.score < b.score:
		return 1
	}
	return a.layer - b.layer
}

func anyMeasured(cands []growthCandidate) bool {
	for _, c := range cands {
		if c.measured {
			return true
		}
	}
	return false
}

// outFeatures is the number of output features or channels of a host.
func outFeatures(h blueprint.Host) int64 {
	if h.Kind == blueprint.HostResidual {
		return max(1, h.Dim)
	}
	return max(1, h.Out)
}
