package nn

import (
	"fmt"
	"slices"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Split divides a network's first layer between inputs known in advance
// (fixed) and inputs given at each call (free): Fixed computes the first
// layer's pre-activation from the fixed inputs once, ForwardBatch adds the
// free inputs' share and runs the rest. For a caller that scores the same
// candidates again and again with a few inputs changed (Tamiyo's learned
// policy), it saves most of the first layer's work. Results equal
// Forward64's up to float64 rounding order. A Split is immutable.
type Split struct {
	m    *MLP
	free []int
	// w is the first layer's weight restricted to the free inputs
	// (out x len(free), row major).
	w []float64
}

// Split returns the split of m whose free inputs are the positions free
// (distinct, in [0, In)).
func (m *MLP) Split(free []int) (*Split, error) {
	l := m.layers[0]
	seen := make([]bool, m.in)
	for _, j := range free {
		if j < 0 || j >= m.in || seen[j] {
			return nil, fmt.Errorf("nn: split: free input %d is out of [0, %d) or repeated: %w", j, m.in, ErrSpec)
		}
		seen[j] = true
	}
	w := make([]float64, l.out*len(free))
	for o := range l.out {
		for k, j := range free {
			w[o*len(free)+k] = l.w[o*l.in+j]
		}
	}
	return &Split{m: m, free: slices.Clone(free), w: w}, nil
}

// Fixed returns the first layer's pre-activation (bias included, before
// the activation) from x's fixed inputs (x has In values; those at free
// positions are ignored).
func (s *Split) Fixed(x []float64) ([]float64, error) {
	m, l := s.m, s.m.layers[0]
	if len(x) != m.in {
		return nil, fmt.Errorf("nn: split: input has %d values, the network takes %d: %w", len(x), m.in, ErrSpec)
	}
	isFree := make([]bool, m.in)
	for _, j := range s.free {
		isFree[j] = true
	}
	h := slices.Clone(l.b)
	for j, v := range x {
		if isFree[j] {
			continue
		}
		if m.xStd != nil {
			v = (v - m.xMean[j]) / m.xStd[j]
		}
		for o := range l.out {
			h[o] += l.w[o*l.in+j] * v
		}
	}
	return h, nil
}

// ForwardBatch runs the network on n rows, row r given by fixed[r] (a
// Fixed result) and free[r] (the values at the free positions, in the
// order Split was given them), and appends the n x Out outputs to dst[:0].
func (s *Split) ForwardBatch(dst []float64, fixed, free [][]float64) ([]float64, error) {
	m, l := s.m, s.m.layers[0]
	n, k := len(fixed), len(s.free)
	if len(free) != n {
		return nil, fmt.Errorf("nn: split: %d fixed rows and %d free rows: %w", n, len(free), ErrSpec)
	}
	if n == 0 {
		return dst[:0], nil
	}
	a := make([]float64, n*max(m.max, k))
	b := make([]float64, n*m.max)
	for r := range n {
		if len(fixed[r]) != l.out || len(free[r]) != k {
			return nil, fmt.Errorf("nn: split: row %d has %d fixed and %d free values, want %d and %d: %w", r, len(fixed[r]), len(free[r]), l.out, k, ErrSpec)
		}
		row := a[r*k : (r+1)*k]
		copy(row, free[r])
		if m.xStd != nil {
			for i, j := range s.free {
				row[i] = (row[i] - m.xMean[j]) / m.xStd[j]
			}
		}
		copy(b[r*l.out:(r+1)*l.out], fixed[r])
	}
	out := b[:n*l.out]
	if k > 0 {
		// out (n x l.out) += free (n x k) . Wfree^T (Wfree is l.out x k).
		gonum.Implementation{}.Dgemm(blas.NoTrans, blas.Trans, n, l.out, k, 1, a[:n*k], k, s.w, k, 1, out, l.out)
	}
	if l.act != nil {
		for i, v := range out {
			out[i] = l.act(v)
		}
	}
	if len(m.layers) == 1 {
		return m.scaleOut(append(dst[:0], out...)), nil
	}
	return m.layersBatch(dst, b, a, n, 1), nil
}
