package value

import (
	"fmt"
	"math"
	"slices"
)

// contextNames are the features that depend on the run's state (the
// layer's signals, the losses, timing, budget and run scale); every other
// feature depends only on the blueprint and its host.
var contextNames = append([]string{"grad_norm", "act_var", "val_loss", "train_loss", "dead_frac", "seed_gain", "eff_rank_frac"}, extraNames...)

// Prepared holds a blueprint's features that do not depend on the run's
// state, computed once (by FillFeatures) for a candidate the policy scores
// at every epoch.
type Prepared struct {
	x []float64
	// fixed is the network's first-layer share of x's blueprint-only
	// features (nn.Split.Fixed).
	fixed []float64
}

// Prepare computes the blueprint-only features of c (its Sample's
// template, parameters, host and counts; the context fields are ignored).
func (m *Model) Prepare(c *Candidate) *Prepared {
	p := &Prepared{x: make([]float64, len(m.manifest.Features))}
	FillFeatures(m.manifest.Features, c, p.x)
	p.fixed, _ = m.split.Fixed(p.x) // x has the network's input length: Load checked it
	return p
}

// ContextLen is the length of a context row (FillContext).
func (m *Model) ContextLen() int { return len(m.ctxIdx) }

// FillContext writes the candidate's context features (those that depend
// on the run's state) into ctx (ContextLen values), with FillFeatures.
func (m *Model) FillContext(c *Candidate, ctx []float64) {
	FillFeatures(m.ctxNames, c, ctx)
}

// PredictPrepared returns the predictions for candidates given by their
// prepared blueprints and context rows (FillContext), appended to dst[:0]:
// the same values as Predict, with the blueprint-only share of the first
// layer computed once per blueprint (nn.Split). A non-finite prediction is
// an error naming the row.
func (m *Model) PredictPrepared(dst []float64, ps []*Prepared, ctx [][]float64) ([]float64, error) {
	fixed := make([][]float64, len(ps))
	for i, p := range ps {
		fixed[i] = p.fixed
	}
	y, err := m.split.ForwardBatch(dst, fixed, ctx)
	if err != nil {
		return nil, fmt.Errorf("value: predict: %w", err)
	}
	return checkFinite(y)
}

func checkFinite(y []float64) ([]float64, error) {
	for i, v := range y {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("value: predict: the model gave %v for row %d: %w", v, i, ErrModel)
		}
	}
	return y, nil
}

// FillPrepared writes the features of a candidate whose blueprint p was
// prepared from into x (len of the model's features): p's features, with
// the context features recomputed by FillFeatures. It equals
// FillFeatures(features, c, x).
func (m *Model) FillPrepared(p *Prepared, c *Candidate, x []float64) {
	copy(x, p.x)
	var buf [32]float64
	ctx := buf[:0]
	if len(m.ctxIdx) > len(buf) {
		ctx = make([]float64, len(m.ctxIdx))
	}
	ctx = ctx[:len(m.ctxIdx)]
	FillFeatures(m.ctxNames, c, ctx)
	for i, j := range m.ctxIdx {
		x[j] = ctx[i]
	}
}

// PredictBatchX returns the predictions for feature rows (in the order of
// the model's features) in one batched forward pass, appended to dst[:0]. A non-finite
// prediction is an error naming the row.
func (m *Model) PredictBatchX(dst []float64, xs [][]float64) ([]float64, error) {
	y, err := m.net.ForwardBatch64(dst, xs)
	if err != nil {
		return nil, fmt.Errorf("value: predict: %w", err)
	}
	return checkFinite(y)
}

// contextIndex lists the context features of names and their positions.
func contextIndex(names []string) ([]string, []int) {
	var out []string
	var idx []int
	for i, n := range names {
		if slices.Contains(contextNames, n) {
			out = append(out, n)
			idx = append(idx, i)
		}
	}
	return out, idx
}
