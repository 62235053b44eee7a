package tamiyo

import (
	"fmt"
	"slices"
)

// Saturation: when a layer stops growing.
//
// A layer is saturated (no more growth there) on evidence that seeds there
// no longer pay, never on one unlucky seed:
//   - Config.SaturateAfter seeds in a row fell short on it (pruned by the
//     bars of judge, with no fossilized seed between them); or
//   - the last seed that fell short did not help at all: its measured
//     contribution was <= 0, so the validation loss is no worse without it.
//     That seed's gain is the layer's predicted gain for another seed of the
//     same kind, and a gain of none is below any cost.
//
// And every layer is saturated (growth stops for the run) when a seed hurt
// before any seed of the run paid: the validation loss was better without it
// by at least the bar it had to reach to be kept (PruneBelow or MinGain of
// the validation loss, when that bar is > 0), and no seed has been
// fossilized. A seed that makes the validation loss worse by a margin the
// controller treats as significant, in a run where growth has never paid, is
// evidence that the model fits noise at its size: more capacity anywhere is
// predicted to hurt too. On a negative control (a two-hidden-layer MLP on
// breast_cancer, the suite's cancer_control family) the plateau rule grew the
// next layer, and the next, each seed pruned at -7% to -35% of the
// validation loss. In every run of the run logs on the development machine
// (Dec 2026: suite, demo and test runs) where such a seed came before any
// fossilization, none of the seeds germinated after it was fossilized (13
// germinations); where seeds had paid before it, later seeds did pay (14 of
// 28), so there the seed that hurt saturates only its own layer, as does a
// seed just under zero (a few tenths of the bar: noise).
//
// A fossilized seed shows the layer still pays and clears its misses. A seed
// that helped but less than the bar (a near miss) leaves the layer open: the
// next plateau may grow there again (on a one-host MLP the first seed,
// judged early, fell short and ended growth for the rest of the run, the
// model two to three times under the size the best fixed width had).

// missed records that a seed of layer fell short: measured says whether its
// contribution was measured, delta is that contribution (validation loss
// without the seed minus with it) and bar the contribution it had to reach.
// It returns the note the prune's reason carries.
//
// paidRun says a seed of the run has been fossilized (growth has paid).
func (c *Controller) missed(layer int, delta float64, measured bool, bar float64, paidRun bool) string {
	if layer < 0 || layer >= len(c.misses) {
		return ""
	}
	c.misses[layer]++
	n, limit := c.misses[layer], c.cfg.SaturateAfter
	switch {
	case measured && bar > 0 && delta <= -bar && !paidRun && slices.Contains(c.saturated, false):
		for i := range c.saturated {
			c.saturated[i] = true
		}
		return fmt.Sprintf("; every layer is saturated: the seed hurt (the validation loss is better without it by %.6g, at least the bar %.6g), and no seed of the run has paid, so the model fits noise at this size and more capacity is predicted to hurt", -delta, bar)
	case c.saturated[layer]:
		return fmt.Sprintf("; layer %d was already saturated", layer)
	case measured && delta <= 0:
		c.saturated[layer] = true
		return fmt.Sprintf("; layer %d is saturated: the seed did not help at all (contribution <= 0), so another seed there is predicted to gain nothing", layer)
	case n >= limit:
		c.saturated[layer] = true
		return fmt.Sprintf("; layer %d is saturated: %d seed(s) in a row fell short there (saturate_after %d)", layer, n, limit)
	}
	return fmt.Sprintf("; layer %d may grow again: %d of %d seeds in a row fell short there (saturate_after), and this one helped a little", layer, n, limit)
}

// paid records that a seed of layer was fossilized: the layer still pays,
// and its misses are cleared.
func (c *Controller) paid(layer int) {
	if layer >= 0 && layer < len(c.misses) {
		c.misses[layer] = 0
	}
}

// Saturated reports, per layer, whether growth there has stopped (a copy).
func (c *Controller) Saturated() []bool { return append([]bool{}, c.saturated...) }
