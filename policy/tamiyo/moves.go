package tamiyo

import (
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
)

// The ops of the move space a learned policy chooses in (see MoveOps).
const (
	MoveWait      = "wait"
	MoveGerminate = "germinate"
	MovePrune     = "prune"
	MoveFossilize = "fossilize"
	MoveAdvance   = "advance"
)

// MoveOps returns the ops of the move space in the order of a policy's op
// head: wait, germinate, prune, fossilize, advance.
func MoveOps() []string {
	return []string{MoveWait, MoveGerminate, MovePrune, MoveFossilize, MoveAdvance}
}

// SizeScales returns the sizes a learned policy chooses from, in the order
// of its size head: multiples of a template's default size parameter (width
// or rank; see Sized).
func SizeScales() []float64 { return []float64{0.25, 0.5, 1, 2} }

// defaultScale is the index of 1 in SizeScales: the only size of a
// template without a size parameter.
const defaultScale = 2

// Sized instantiates template t for host at size index k of SizeScales:
// its size parameter (width or rank) is its default times the scale,
// rounded, and at least the parameter's minimum. A template without a size
// parameter has one size, the default (index 2); other indices are errors,
// as are a host t does not support and a size the template refuses
// (errors wrapping blueprint.ErrInvalid).
func Sized(t blueprint.Template, host blueprint.Host, k int) (*blueprint.IR, error) {
	scales := SizeScales()
	if k < 0 || k >= len(scales) {
		return nil, fmt.Errorf("tamiyo: size %d is not in [0, %d): %w", k, len(scales), blueprint.ErrInvalid)
	}
	if !t.Supports(host) {
		return nil, fmt.Errorf("tamiyo: template %s does not support %s hosts: %w", t.Name, host.Kind, blueprint.ErrInvalid)
	}
	ir, err := t.Instantiate(nil, host)
	if err != nil {
		return nil, err
	}
	knob, spec, ok := sizeKnob(t)
	if !ok {
		if k != defaultScale {
			return nil, fmt.Errorf("tamiyo: template %s has no size parameter: only size %d (its default) exists: %w", t.Name, defaultScale, blueprint.ErrInvalid)
		}
		return ir, nil
	}
	if k == defaultScale {
		return ir, nil
	}
	def, _ := ir.Params[knob].(int64)
	v := max(spec.Min, int64(math.Round(float64(def)*scales[k])))
	if spec.Max > 0 && v > spec.Max {
		return nil, fmt.Errorf("tamiyo: template %s at size %d needs %s %d, above its maximum %d: %w", t.Name, k, knob, v, spec.Max, blueprint.ErrInvalid)
	}
	p := make(blueprint.Params, len(ir.Params))
	for name, x := range ir.Params {
		p[name] = x
	}
	p[knob] = v
	return t.Instantiate(p, host)
}

// AdvanceLegal reports whether a learned policy may advance a seed in
// state: it may cut short the step gate of GERMINATED, TRAINING and
// BLENDING only. HOLDING ends by fossilize or prune (their own ops), and
// the exit path advances by itself.
func AdvanceLegal(state lifecycle.State) bool {
	switch state {
	case lifecycle.Germinated, lifecycle.Training, lifecycle.Blending:
		return true
	}
	return false
}

// ValLosses returns the last n finite validation losses the controller
// recorded, oldest first (fewer when it has fewer).
func (c *Controller) ValLosses(n int) []EpochValue {
	start := max(0, len(c.vals)-n)
	out := make([]EpochValue, len(c.vals)-start)
	copy(out, c.vals[start:])
	return out
}
