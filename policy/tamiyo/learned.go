package tamiyo

import (
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/policy/value"
)

// sizeMultipliers are the sizes the learned policy considers for the
// configured template (when it has a size parameter): half, the configured
// size, and double, within the parameter's bounds. Every other template
// that supports the layer is considered at its default size: 8 layers then
// make 56 candidates on linear hosts, scored in one batched forward pass.
var sizeMultipliers = []float64{0.5, 1, 2}

// option is one blueprint the learned policy may grow on a layer, before
// the budget left is known.
type option struct {
	t      blueprint.Template
	params blueprint.Params
	ir     *blueprint.IR
	// prepared holds ir's blueprint-only features.
	prepared *value.Prepared
}

// learner is the learned policy's state: its model and, per layer, the
// blueprints it chooses among.
type learner struct {
	c       *Controller
	model   *value.Model
	options [][]option
	// cands, prepared, rows and preds are reused from epoch to epoch: the
	// candidates, their prepared blueprints, context rows and predictions.
	cands    []scored
	prepared []*value.Prepared
	rows     [][]float64
	preds    []float64
}

// row returns context row i, allocated on first use.
func (l *learner) row(i int) []float64 {
	for len(l.rows) <= i {
		l.rows = append(l.rows, make([]float64, l.model.ContextLen()))
	}
	return l.rows[i]
}

// newLearner loads the value model named by the configuration and lists
// each layer's options.
func newLearner(c *Controller) (*learner, error) {
	m, err := value.LoadOn(c.cfg.ValueModel, infer.Options{Runtime: c.cfg.ValueRuntime})
	if err != nil {
		return nil, fmt.Errorf("tamiyo: learned policy: %w", err)
	}
	l := &learner{c: c, model: m, options: make([][]option, len(c.hosts))}
	for layer, host := range c.hosts {
		seen := map[string]bool{}
		for i, ct := range c.templates[layer] {
			for _, p := range sizes(ct, i == 0 && ct.t.Name == c.cfg.Template) {
				ir, err := ct.t.Instantiate(p, host)
				if err != nil || ir.ParamCount < c.least[layer] {
					continue
				}
				key := fmt.Sprintf("%s/%d/%d", ct.t.Name, ir.ParamCount, ir.FLOPsPerSample)
				if seen[key] {
					continue
				}
				seen[key] = true
				o := option{t: ct.t, params: ir.Params, ir: ir}
				o.prepared = m.Prepare(&value.Candidate{Sample: sample(ir, host)})
				l.options[layer] = append(l.options[layer], o)
			}
		}
	}
	return l, nil
}

// sizes returns the template's parameters at each of sizeMultipliers when
// vary is set, else (or when it has no size parameter) its parameters alone.
func sizes(ct candidateTemplate, vary bool) []blueprint.Params {
	resolved, err := ct.t.Resolve(ct.params)
	if err != nil {
		return nil
	}
	knob, spec, ok := sizeKnob(ct.t)
	base, isInt := resolved[knob].(int64)
	if !vary || !ok || !isInt {
		return []blueprint.Params{resolved}
	}
	var out []blueprint.Params
	for _, m := range sizeMultipliers {
		v := int64(math.Round(float64(base) * m))
		v = max(v, spec.Min, 1)
		if spec.Max > 0 {
			v = min(v, spec.Max)
		}
		p := make(blueprint.Params, len(resolved))
		for k, x := range resolved {
			p[k] = x
		}
		p[knob] = v
		out = append(out, p)
	}
	return out
}

// scored is one candidate germination with its predicted value.
type scored struct {
	layer, slot int
	ir          *blueprint.IR
	value       float64
	note        string
}

// grow predicts the value of every candidate germination the governor
// would admit now (a layer with a dormant slot outside its cooldown, each
// option fitted to the parameters left) and grows the best if its
// predicted value reaches ValueThreshold; otherwise it waits.
func (l *learner) grow(obs *Observation, judged []Decision) Decision {
	c := l.c
	used, active := afterJudged(obs, judged)
	if err := c.gov.Admit(used, 0, active); err != nil {
		return waitDecision("learned: %d seeds are in flight (max_concurrent %d)", active, c.gov.cfg.MaxConcurrent)
	}
	remaining := c.gov.Remaining(used)
	if remaining <= 0 {
		return waitDecision("learned: the parameter budget is spent (%d of %d)", used, c.gov.cfg.MaxParams)
	}
	threshold := *c.cfg.ValueThreshold
	l.cands, l.prepared = l.cands[:0], l.prepared[:0]
	cooling := 0
	for layer := range c.hosts {
		slot := dormantSlot(obs, layer)
		if slot < 0 {
			continue
		}
		if c.gov.Cooldown(layer, obs.Epoch) > 0 {
			cooling++
			continue
		}
		signals := layerSignals(obs, layer)
		for _, o := range l.options[layer] {
			ir, note := o.ir, ""
			if ir.ParamCount > remaining {
				var err error
				if ir, note, err = fitTemplate(c.instances, o.t, o.params, c.hosts[layer], remaining); err != nil || ir.ParamCount < c.least[layer] {
					continue
				}
			}
			cand := value.Candidate{Sample: sample(ir, c.hosts[layer]), Epoch: obs.Epoch, Epochs: c.cfg.Epochs, ParamsUsed: used,
				MaxParams: c.gov.cfg.MaxParams, HostParams: obs.HostParams}
			cand.Signals = signals
			p := o.prepared
			if ir != o.ir { // refitted to the budget left
				p = l.model.Prepare(&cand)
			}
			l.model.FillContext(&cand, l.row(len(l.cands)))
			l.prepared = append(l.prepared, p)
			l.cands = append(l.cands, scored{layer: layer, slot: slot, ir: ir, note: note})
		}
	}
	n := len(l.cands)
	var best *scored
	if n > 0 {
		var err error
		if l.preds, err = l.model.PredictPrepared(l.preds, l.prepared, l.rows[:n]); err != nil {
			return waitDecision("learned: %v", err)
		}
		for i := range l.cands {
			l.cands[i].value = l.preds[i]
			if best == nil || l.preds[i] > best.value {
				best = &l.cands[i]
			}
		}
	}
	if best == nil {
		switch {
		case cooling > 0:
			return waitDecision("learned: no layer has a dormant slot outside its cooldown (%d cooling down)", cooling)
		}
		return waitDecision("learned: no blueprint fits a layer with a dormant slot within %d params", remaining)
	}
	if best.value < threshold {
		return waitDecision("learned: the best of %d candidates, %s %s at layer %d (%s), predicts value %.4g, under value_threshold %.4g: wait",
			n, best.ir.Template, describeParams(best.ir.Params), best.layer, c.layerName(obs, best.layer), best.value, threshold)
	}
	v := best.value
	return Decision{Op: Germinate, Layer: best.layer, Slot: best.slot, Template: best.ir.Template, Params: best.ir.Params,
		ParamCount: best.ir.ParamCount, Blueprint: best.ir, PredictedValue: &v,
		Reason: fmt.Sprintf("learned: %s %s = %d params at layer %d (%s) predicts value %.4g (value_threshold %.4g), the best of %d candidates%s",
			best.ir.Template, describeParams(best.ir.Params), best.ir.ParamCount, best.layer, c.layerName(obs, best.layer), v, threshold, n, best.note)}
}

// sample is Karn's view of a blueprint on a host (no signals).
func sample(ir *blueprint.IR, host blueprint.Host) karn.Sample {
	return karn.Sample{Template: ir.Template, Params: ir.Params, Host: host, ParamCount: ir.ParamCount, FLOPsPerSample: ir.FLOPsPerSample}
}

// dormantSlot returns the layer's lowest dormant slot, or -1.
func dormantSlot(obs *Observation, layer int) int {
	slot := -1
	for i := range obs.Seeds {
		s := &obs.Seeds[i]
		if s.Layer == layer && s.State == lifecycle.Dormant && (slot < 0 || s.Slot < slot) {
			slot = s.Slot
		}
	}
	return slot
}

// SetValueModel has the learned policy use the value model in folder dir
// from now on (a rolling deployment's switch or revert). The model is
// loaded and validated first; on error the policy keeps its model and the
// error says why. It fails for policies other than the learned one.
func (c *Controller) SetValueModel(dir string) error {
	if c.learned == nil {
		return fmt.Errorf("tamiyo: set value model: the %s policy has no value model: %w", c.cfg.Kind, ErrConfig)
	}
	next := *c
	next.cfg.ValueModel = dir
	l, err := newLearner(&next)
	if err != nil {
		return err
	}
	l.c = c
	c.cfg.ValueModel, c.learned = dir, l
	return nil
}
