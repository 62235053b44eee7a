package blueprint

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
)

// Budget bounds a blueprint. Zero fields mean "no limit".
type Budget struct {
	// MaxParams is the largest allowed parameter count.
	MaxParams int64 `json:"max_params,omitempty"`
	// MaxFLOPs is the largest allowed FLOPs per sample.
	MaxFLOPs int64 `json:"max_flops,omitempty"`
}

// Check reports whether ir can attach to host within budget: nil, or an
// error saying exactly why not. Structural problems and shape mismatches
// (expected versus actual shape) have code Invalid; a budget overrun
// (n > max) wraps ErrOverBudget, code Budget. Counts are computed for host,
// whatever ir.ParamCount says.
func Check(ir *IR, host Host, b Budget) error {
	if b.MaxParams < 0 || b.MaxFLOPs < 0 {
		return fmt.Errorf("%w: budget limits must be >= 0 (max_params %d, max_flops %d)", ErrInvalid, b.MaxParams, b.MaxFLOPs)
	}
	a, err := Analyze(ir, host)
	if err != nil {
		return err
	}
	return b.Admit(a.ParamCount, a.FLOPsPerSample)
}

// Admit reports whether counts already computed for an IR's host (by
// Instantiate, Parse or Complete) fit within b: nil, or an error wrapping
// ErrOverBudget. Check analyses the IR first; Admit does not.
func (b Budget) Admit(params, flops int64) error {
	if b.MaxParams > 0 && params > b.MaxParams {
		return fmt.Errorf("%w: param_count %d > max_params %d", ErrOverBudget, params, b.MaxParams)
	}
	if b.MaxFLOPs > 0 && flops > b.MaxFLOPs {
		return fmt.Errorf("%w: flops_per_sample %d > max_flops %d", ErrOverBudget, flops, b.MaxFLOPs)
	}
	return nil
}

// mutateTries is how many variants Mutate tries before giving up.
const mutateTries = 32

// Mutate returns a variant of ir, an instance of a library template: one
// parameter changes (an int is doubled, halved or stepped by about a quarter
// within its range; an enum takes another of its choices) and the result is
// valid on ir.Host and within b. rng supplies all randomness, so a seeded
// rng gives a reproducible search. ir is not modified.
func Mutate(ir *IR, b Budget, rng *rand.Rand) (*IR, error) {
	if rng == nil {
		return nil, fmt.Errorf("%w: Mutate needs a random source", ErrInvalid)
	}
	t, err := Lookup(ir.Template)
	if err != nil {
		return nil, err
	}
	if len(t.Params) == 0 {
		return nil, fmt.Errorf("%w: template %q has no parameters to vary", ErrNoMutation, t.Name)
	}
	base, err := t.Resolve(ir.Params)
	if err != nil {
		return nil, err
	}
	var last error
	for range mutateTries {
		s := t.Params[rng.IntN(len(t.Params))]
		p := maps.Clone(base)
		v, ok := mutateValue(s, base[s.Name], rng)
		if !ok {
			continue
		}
		p[s.Name] = v
		next, err := t.Instantiate(p, ir.Host)
		if err == nil {
			err = b.Admit(next.ParamCount, next.FLOPsPerSample)
		}
		if err == nil {
			return next, nil
		}
		last = err
	}
	if last == nil {
		return nil, fmt.Errorf("%w: template %q: every parameter is pinned by its range", ErrNoMutation, t.Name)
	}
	return nil, fmt.Errorf("%w: template %q: no valid variant in %d tries (last: %w)", ErrNoMutation, t.Name, mutateTries, last)
}

// mutateValue returns a different value for parameter s, or false when its
// range allows no other.
func mutateValue(s ParamSpec, cur any, rng *rand.Rand) (any, bool) {
	switch s.Kind {
	case ParamInt:
		n, _ := asInt(cur)
		step := max(1, n/4)
		cands := []int64{n * 2, n / 2, n + step, n - step}
		valid := cands[:0]
		for _, c := range cands {
			c = min(max(c, s.Min), s.Max)
			if c != n && !slices.Contains(valid, c) {
				valid = append(valid, c)
			}
		}
		if len(valid) == 0 {
			return nil, false
		}
		return valid[rng.IntN(len(valid))], true
	case ParamEnum:
		cur, _ := cur.(string)
		var others []string
		for _, c := range s.Choices {
			if c != cur {
				others = append(others, c)
			}
		}
		if len(others) == 0 {
			return nil, false
		}
		return others[rng.IntN(len(others))], true
	}
	return nil, false
}
