package tamiyo

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/esper-morph/esper/blueprint"
)

// fit returns the blueprint for layer: the first of its templates that fits
// within remaining parameters, its size parameter lowered as far as needed
// (keeping the largest size that fits, and no lower than a
// minSizeDivisor-th of the configured size), checked by Karn's constraints.
// note says what was changed to fit.
func (c *Controller) fit(layer int, remaining int64) (*blueprint.IR, string, error) {
	host := c.hosts[layer]
	var last, configured error
	least := c.least[layer]
	for _, ct := range c.templates[layer] {
		if last != nil && configured == nil && ct.t.Name != c.cfg.Template {
			configured = last // why the configured template was passed over
		}
		ir, note, err := fitTemplate(c.instances, ct.t, ct.params, host, remaining)
		if err != nil {
			last = err
			continue
		}
		if ct.t.Name != c.cfg.Template {
			note += c.fallbackNote(host, ct.t.Name, configured)
		}
		if ir.ParamCount < least {
			last = fmt.Errorf("tamiyo: %s fits in %d params, under a %d-th of the %d-param seed asked for: %w",
				ct.t.Name, ir.ParamCount, minSizeDivisor, least*minSizeDivisor, ErrOverBudget)
			continue
		}
		// ir was instantiated (analysed, counted) for host just now: its counts are admitted
		// without a second analysis.
		if err := (blueprint.Budget{MaxParams: min(remaining, maxBudget)}).Admit(ir.ParamCount, ir.FLOPsPerSample); err != nil {
			last = err
			continue
		}
		return ir, note, nil
	}
	if last == nil {
		last = fmt.Errorf("tamiyo: no template supports the %s host of layer %d: %w", host.Kind, layer, ErrOverBudget)
	}
	return nil, "", last
}

// fallbackNote says why a seed on host uses template name and not the
// configured template: the configured one does not support the host, or
// did not fit (err).
func (c *Controller) fallbackNote(host blueprint.Host, name string, err error) string {
	if t, lerr := blueprint.Lookup(c.cfg.Template); lerr != nil || !t.Supports(host) {
		return fmt.Sprintf("; the configured template %s does not support %s hosts, so %s with its default parameters",
			c.cfg.Template, host.Kind, name)
	}
	if err == nil {
		return fmt.Sprintf("; the configured template %s did not fit, so %s with its default parameters", c.cfg.Template, name)
	}
	return fmt.Sprintf("; the configured template %s did not fit (%v), so %s with its default parameters", c.cfg.Template, err, name)
}

// minSizeDivisor bounds how small fit makes a seed: a template's size
// parameter is lowered to no less than its configured value divided by it,
// and no seed has fewer parameters than the configured seed's divided by
// it. A budget's last crumbs would otherwise buy seeds of width or rank 1
// (measured on spirals under a tight budget: seeds of 18 and 23
// parameters), each costing a lifecycle and a slot for nothing; growth
// stops there instead.
const minSizeDivisor = 4

// leastParams returns the fewest parameters a seed on host may have: a
// minSizeDivisor-th of the seed asked for (the first template, at its
// configured size), whatever template fits; 0 when there is none. The
// instance it makes is kept in m: it is the seed fit returns while the
// budget allows.
func leastParams(m *blueprint.Instances, templates []candidateTemplate, host blueprint.Host) int64 {
	if len(templates) == 0 {
		return 0
	}
	full, err := m.Instantiate(templates[0].t, templates[0].params, host)
	if err != nil {
		return 0
	}
	return (full.ParamCount + minSizeDivisor - 1) / minSizeDivisor
}

// maxBudget stands for "no limit" in blueprint.Budget (0 means none there
// too, but Check wants a positive bound when there is one).
const maxBudget = 1 << 62

// fitTemplate returns t with params on host, its size parameter lowered to
// fit within remaining parameters (see fit), instantiated through m. The
// IR is m's, shared: it must not be modified.
func fitTemplate(m *blueprint.Instances, t blueprint.Template, params blueprint.Params, host blueprint.Host, remaining int64) (*blueprint.IR, string, error) {
	ir, err := m.Instantiate(t, params, host)
	if err != nil {
		return nil, "", err
	}
	if ir.ParamCount <= remaining {
		return ir, "", nil
	}
	knob, spec, ok := sizeKnob(t)
	if !ok {
		return nil, "", fmt.Errorf("tamiyo: %s needs %d params, %d left, and has no size parameter: %w", t.Name, ir.ParamCount, remaining, ErrOverBudget)
	}
	resolved := ir.Params
	hi, _ := resolved[knob].(int64)
	lo := max(spec.Min, (hi+minSizeDivisor-1)/minSizeDivisor)
	at := func(v int64) (*blueprint.IR, error) {
		p := make(blueprint.Params, len(resolved))
		for k, x := range resolved {
			p[k] = x
		}
		p[knob] = v
		return m.Instantiate(t, p, host)
	}
	best, err := at(lo)
	if err != nil {
		return nil, "", err
	}
	if best.ParamCount > remaining {
		return nil, "", fmt.Errorf("tamiyo: %s needs %d params at %s %d (a %d-th of %d, the least it is lowered to), %d left: %w",
			t.Name, best.ParamCount, knob, lo, minSizeDivisor, hi, remaining, ErrOverBudget)
	}
	// Largest v in [lo, hi) whose count fits; counts grow with the size
	// parameter. Start from the linear estimate through (lo, hi), which is
	// exact for most templates, then bisect what is left.
	pLo, pHi := best.ParamCount, ir.ParamCount
	ok1, bad := lo, hi // ok1 fits, bad does not
	if hi > lo && pHi > pLo {
		est := lo + (remaining-pLo)*(hi-lo)/(pHi-pLo)
		for _, v := range []int64{est, est + 1} {
			if v <= ok1 || v >= bad {
				continue
			}
			cand, err := at(v)
			if err != nil {
				break
			}
			if cand.ParamCount <= remaining {
				ok1, best = v, cand
			} else {
				bad = v
				break
			}
		}
	}
	for bad-ok1 > 1 {
		mid := ok1 + (bad-ok1)/2
		cand, err := at(mid)
		if err != nil {
			return nil, "", err
		}
		if cand.ParamCount <= remaining {
			ok1, best = mid, cand
		} else {
			bad = mid
		}
	}
	return best, fmt.Sprintf("; %s lowered from %d to %d to fit", knob, hi, ok1), nil
}

// sizeKnob returns the template's integer size parameter, if any.
func sizeKnob(t blueprint.Template) (string, blueprint.ParamSpec, bool) {
	for _, name := range sizeParams {
		i := slices.IndexFunc(t.Params, func(p blueprint.ParamSpec) bool {
			return p.Name == name && p.Kind == blueprint.ParamInt
		})
		if i >= 0 {
			return name, t.Params[i], true
		}
	}
	return "", blueprint.ParamSpec{}, false
}

// describeParams formats template parameters as "{activation=relu width=16}".
func describeParams(p blueprint.Params) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, p[k])
	}
	b.WriteByte('}')
	return b.String()
}
