package gnn

import (
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	"gonum.org/v1/gonum/floats"
)

// Input is one encoded graph (its JSON names are the graph document's
// "encoded" field, docs/simic.md).
type Input struct {
	// Nodes and Features give X's shape; X holds the node features, row
	// major.
	Nodes    int       `json:"nodes"`
	Features int       `json:"features"`
	X        []float64 `json:"x"`
	// Src and Dst are the directed edges (node indices): messages flow from
	// Src[i] to Dst[i].
	Src []int `json:"src"`
	Dst []int `json:"dst"`
	// Global holds the graph's global features.
	Global []float64 `json:"global"`
	// Layers is how many of the nodes are layers (the first Layers nodes).
	Layers int `json:"layers"`
	// TargetLayer and TargetSeed hold, per target slot, its layer's node
	// and its seed's node (-1 when the slot has no seed).
	TargetLayer []int `json:"target_layer"`
	TargetSeed  []int `json:"target_seed"`
}

// check validates in against the network.
func (n *Net) check(in *Input) error {
	switch {
	case in.Nodes < 1 || in.Features != n.cfg.NodeFeatures || len(in.X) != in.Nodes*in.Features:
		return fmt.Errorf("gnn: input has %d nodes x %d features (%d values); the network takes %d features per node and at least one node: %w",
			in.Nodes, in.Features, len(in.X), n.cfg.NodeFeatures, ErrSpec)
	case len(in.Global) != n.cfg.GlobalFeatures:
		return fmt.Errorf("gnn: input has %d global features, the network takes %d: %w", len(in.Global), n.cfg.GlobalFeatures, ErrSpec)
	case len(in.Src) != len(in.Dst):
		return fmt.Errorf("gnn: input has %d edge sources and %d destinations: %w", len(in.Src), len(in.Dst), ErrSpec)
	case in.Layers < 1 || in.Layers > in.Nodes:
		return fmt.Errorf("gnn: input has %d layers among %d nodes: %w", in.Layers, in.Nodes, ErrSpec)
	case len(in.TargetLayer) != len(in.TargetSeed):
		return fmt.Errorf("gnn: input has %d target layers and %d target seeds: %w", len(in.TargetLayer), len(in.TargetSeed), ErrSpec)
	}
	for i := range in.Src {
		if in.Src[i] < 0 || in.Src[i] >= in.Nodes || in.Dst[i] < 0 || in.Dst[i] >= in.Nodes {
			return fmt.Errorf("gnn: edge %d (%d -> %d) is outside the %d nodes: %w", i, in.Src[i], in.Dst[i], in.Nodes, ErrSpec)
		}
	}
	for t := range in.TargetLayer {
		if l := in.TargetLayer[t]; l < 0 || l >= in.Layers {
			return fmt.Errorf("gnn: target %d's layer %d is outside the %d layers: %w", t, l, in.Layers, ErrSpec)
		}
		if s := in.TargetSeed[t]; s < -1 || s >= in.Nodes {
			return fmt.Errorf("gnn: target %d's seed node %d is outside the %d nodes: %w", t, s, in.Nodes, ErrSpec)
		}
	}
	return nil
}

// State is the network run on one input: the node embeddings and the
// summary, from which the heads are computed on demand. A State can be run
// again (Net.RunInto): it keeps its buffers, so a warm State allocates
// nothing. The slices its heads return are its own, valid until its next
// run.
//
// Inside, every per-node matrix is feature-major (Hidden x Nodes, node i
// being column i), so that each product is one gonum Dgemm whose inner
// loops run over the nodes (long contiguous rows) rather than over the 16
// to 64 features of one node.
type State struct {
	n  *Net
	in *Input
	// xt is the input transposed (Features x Nodes); h the node embeddings,
	// a the MLPs' hidden activations, agg the neighbour means (each Hidden x
	// Nodes); deg the in-degrees; mu and inv the layer norm's per-node mean
	// and inverse deviation.
	xt, h, a, agg, deg, mu, inv []float64
	// cols lists the input features left in xt (the others are 0 at every
	// node) and wc holds the embedding's first layer's columns for them.
	cols []int
	wc   []float64
	// glob is the global embedding, shared the message's global share,
	// tmp an MLP's hidden activation on one vector, summary the mean and
	// max of h and glob (3 x Hidden).
	glob, shared, tmp, summary []float64
	// value, op, template and size hold the heads' outputs; tplIn and
	// sizeIn their inputs.
	value, op, template, size, tplIn, sizeIn []float64
	// targetPre is the summary's share of the target head's first layer's
	// pre-activation (bias included); tLayer and tSeed the layer and seed
	// nodes' shares (Hidden x Layers, Hidden x Nodes); tAct the hidden
	// activations (Hidden x targets); targets the logits, valid when
	// targetsOK.
	targetPre, tLayer, tSeed, tAct, targets []float64
	targetsOK                               bool
}

// grow returns buf resized to n (its contents undefined), reallocating only
// when its capacity is short.
func grow(buf []float64, n int) []float64 {
	if cap(buf) < n {
		return make([]float64, n)
	}
	return buf[:n]
}

// Run runs the message passing on in and returns the state the heads read
// (a new State; RunInto reuses one).
func (n *Net) Run(in *Input) (*State, error) {
	s := &State{}
	if err := n.RunInto(s, in); err != nil {
		return nil, err
	}
	return s, nil
}

// RunInto runs the message passing on in into s, reusing s's buffers: once
// s has run on a graph of this size, it allocates nothing. s must not be
// used by two goroutines at once; in must not change while s is read.
func (n *Net) RunInto(s *State, in *Input) error {
	if err := n.check(in); err != nil {
		return err
	}
	hid, nodes, nf := n.cfg.Hidden, in.Nodes, in.Features
	s.n, s.in, s.targetsOK = n, in, false
	s.xt = grow(s.xt, nf*nodes)
	for i := range nodes {
		for f, v := range in.X[i*nf : (i+1)*nf] {
			s.xt[f*nodes+i] = v
		}
	}
	s.a, s.h = grow(s.a, hid*nodes), grow(s.h, hid*nodes)
	embed := s.liveFeatures(&n.embed, nf)
	embed.runT(s.h, s.a, s.xt, nodes)
	s.tmp, s.glob = grow(s.tmp, hid), grow(s.glob, hid)
	n.glob.vec(s.glob, s.tmp, in.Global)
	s.deg = grow(s.deg, nodes)
	clear(s.deg)
	for _, d := range in.Dst {
		s.deg[d]++
	}
	s.agg, s.shared = grow(s.agg, hid*nodes), grow(s.shared, hid)
	s.mu, s.inv = grow(s.mu, nodes), grow(s.inv, nodes)
	for r, msg := range n.message {
		s.messageRound(&msg, n.normW[r], n.normB[r])
	}
	s.summary = grow(s.summary, 3*hid)
	mean, mx := s.summary[:hid], s.summary[hid:2*hid]
	for j := range hid {
		row := s.h[j*nodes : (j+1)*nodes]
		sum, best := 0.0, row[0]
		for _, v := range row {
			sum += v
			best = math.Max(best, v)
		}
		mean[j], mx[j] = sum/float64(nodes), best
	}
	copy(s.summary[2*hid:], s.glob)
	return nil
}

// liveFeatures drops from s.xt the features that are 0 at every node (a
// graph's one-hot columns are mostly so: host kinds and seed states it does
// not hold) and returns the embedding MLP with its first layer's columns
// for the features left (in s.wc). A dropped feature's terms are exact
// zeros, so the products are those of the whole input.
func (s *State) liveFeatures(embed *mlp, nf int) mlp {
	nodes, hid := s.in.Nodes, s.n.cfg.Hidden
	live := 0
	for f := range nf {
		row := s.xt[f*nodes : (f+1)*nodes]
		if !allZero(row) {
			if live != f {
				copy(s.xt[live*nodes:(live+1)*nodes], row)
			}
			s.cols = append(s.cols[:live], f)
			live++
		}
	}
	if live == nf {
		return *embed
	}
	s.wc = grow(s.wc, hid*live)
	for o := range hid {
		w := embed.l1.w[o*nf : (o+1)*nf]
		for k, f := range s.cols[:live] {
			s.wc[o*live+k] = w[f]
		}
	}
	m := *embed
	m.l1 = dense{in: live, out: hid, w: s.wc, b: embed.l1.b}
	return m
}

// allZero reports whether every element of x is 0.
func allZero(x []float64) bool {
	for _, v := range x {
		if v != 0 {
			return false
		}
	}
	return true
}

// messageRound adds to every node the message MLP of [itself, the mean of
// its in-neighbours, the global embedding] and applies the layer norm
// (weights w, biases b).
func (s *State) messageRound(msg *mlp, w, b []float64) {
	hid, nodes, in := s.n.cfg.Hidden, s.in.Nodes, s.in
	clear(s.agg)
	dst := in.Dst[:len(in.Src)]
	for j := range hid { // one feature row at a time: the edges gather and scatter within it
		row, h := s.agg[j*nodes:(j+1)*nodes], s.h[j*nodes:(j+1)*nodes]
		for e, src := range in.Src {
			row[dst[e]] += h[src]
		}
		for i, dg := range s.deg[:len(row)] {
			if dg > 1 {
				row[i] /= dg
			}
		}
	}
	// The message's first layer takes [h, agg, glob]: the glob share (with
	// the bias) is the same for every node, computed once.
	msg.l1.partial(s.shared, s.glob, 2*hid)
	for j := range hid {
		fill(s.a[j*nodes:(j+1)*nodes], s.shared[j])
	}
	msg.l1.gemmT(s.a, s.h, nodes, 0, hid)
	msg.l1.gemmT(s.a, s.agg, nodes, hid, hid)
	tanh(s.a)
	// The residual: the message's bias, then its product, added into h.
	for j, bj := range msg.l2.b {
		row := s.h[j*nodes : (j+1)*nodes]
		for i := range row {
			row[i] += bj
		}
	}
	msg.l2.gemmT(s.h, s.a, nodes, 0, hid)
	clear(s.mu)
	for j := range hid {
		for i, v := range s.h[j*nodes : (j+1)*nodes] {
			s.mu[i] += v
		}
	}
	for i := range s.mu {
		s.mu[i] /= float64(hid)
	}
	clear(s.inv)
	for j := range hid {
		for i, v := range s.h[j*nodes : (j+1)*nodes] {
			d := v - s.mu[i]
			s.inv[i] += d * d
		}
	}
	for i, v := range s.inv {
		s.inv[i] = 1 / math.Sqrt(v/float64(hid)+LayerNormEps)
	}
	for j := range hid {
		row := s.h[j*nodes : (j+1)*nodes]
		for i := range row {
			row[i] = (row[i]-s.mu[i])*s.inv[i]*w[j] + b[j]
		}
	}
}

// node copies node i's embedding (column i of h) to dst.
func (s *State) node(dst []float64, i int) {
	for j := range dst {
		dst[j] = s.h[j*s.in.Nodes+i]
	}
}

// Value is the value head's estimate.
func (s *State) Value() float64 {
	s.value = grow(s.value, 1)
	s.n.value.vec(s.value, s.tmp, s.summary)
	return s.value[0]
}

// OpLogits are the op head's logits (NumOps; the State's buffer).
func (s *State) OpLogits() []float64 {
	s.op = grow(s.op, NumOps)
	s.n.op.vec(s.op, s.tmp, s.summary)
	return s.op
}

// TargetLogits returns the target head's logits, NumTargetOps x targets
// (row major: op k's logits for every target slot are row k; the State's
// buffer). They are computed once per run.
func (s *State) TargetLogits() []float64 {
	if s.targetsOK {
		return s.targets
	}
	n, hid, nodes, layers := s.n, s.n.cfg.Hidden, s.in.Nodes, s.in.Layers
	l1 := &n.target.l1 // columns: layer node (hid), seed node (hid), has-seed (1), summary (3 hid)
	s.targetPre = grow(s.targetPre, hid)
	l1.partial(s.targetPre, s.summary, 2*hid+1)
	// The layer nodes' shares (the first Layers nodes, once per layer) and
	// the seed nodes' (every node: a target's seed may be any of them).
	s.tLayer, s.tSeed = grow(s.tLayer, hid*layers), grow(s.tSeed, hid*nodes)
	clear(s.tLayer)
	l1.gemm(s.tLayer, layers, s.h, nodes, layers, 0, hid)
	first := nodes // the seed nodes' shares, from the first seed node on
	for _, sd := range s.in.TargetSeed {
		if sd >= 0 {
			first = min(first, sd)
		}
	}
	if first < nodes {
		clear(s.tSeed)
		l1.gemm(s.tSeed[first:], nodes, s.h[first:], nodes, nodes-first, hid, hid)
	}
	t := len(s.in.TargetLayer)
	s.tAct = grow(s.tAct, hid*t)
	for j := range hid {
		row, pre, has := s.tAct[j*t:(j+1)*t], s.targetPre[j], l1.w[j*l1.in+2*hid]
		lp, sp := s.tLayer[j*layers:(j+1)*layers], s.tSeed[j*nodes:(j+1)*nodes]
		for i := range row {
			v := pre + lp[s.in.TargetLayer[i]]
			if sd := s.in.TargetSeed[i]; sd >= 0 {
				v += sp[sd] + has
			}
			row[i] = math.Tanh(v)
		}
	}
	// NumTargetOps x t: the logits' own layout.
	s.targets = grow(s.targets, NumTargetOps*t)
	n.target.l2.biasT(s.targets, t)
	n.target.l2.gemmT(s.targets, s.tAct, t, 0, hid)
	s.targetsOK = true
	return s.targets
}

// TemplateLogits are the template head's logits at layer node layer (the
// State's buffer).
func (s *State) TemplateLogits(layer int) []float64 {
	hid := s.n.cfg.Hidden
	s.tplIn, s.template = grow(s.tplIn, 4*hid), grow(s.template, s.n.cfg.Templates)
	s.node(s.tplIn[:hid], layer)
	copy(s.tplIn[hid:], s.summary)
	s.n.template.vec(s.template, s.tmp, s.tplIn)
	return s.template
}

// SizeLogits are the size head's logits at layer node layer for template
// index template (the State's buffer).
func (s *State) SizeLogits(layer, template int) []float64 {
	hid := s.n.cfg.Hidden
	s.sizeIn, s.size = grow(s.sizeIn, 5*hid), grow(s.size, s.n.cfg.Sizes)
	s.node(s.sizeIn[:hid], layer)
	copy(s.sizeIn[hid:2*hid], s.n.temb[template*hid:(template+1)*hid])
	copy(s.sizeIn[2*hid:], s.summary)
	s.n.size.vec(s.size, s.tmp, s.sizeIn)
	return s.size
}

// Dense is every head's output on one graph: what a parity test compares.
type Dense struct {
	Value float64   `json:"value"`
	Op    []float64 `json:"op"`
	// Target is NumTargetOps x targets, Template layers x Templates, Size
	// layers x Templates x Sizes (row major).
	Target   []float64 `json:"target"`
	Template []float64 `json:"template"`
	Size     []float64 `json:"size"`
}

// Dense computes every head on every layer, template and size (new slices,
// not the State's buffers).
func (s *State) Dense() Dense {
	n, hid, layers, nodes := s.n, s.n.cfg.Hidden, s.in.Layers, s.in.Nodes
	d := Dense{Value: s.Value(), Op: slices.Clone(s.OpLogits()), Target: slices.Clone(s.TargetLogits())}
	k, z := n.cfg.Templates, n.cfg.Sizes
	// Template head: Hidden x layers activations, Templates x layers logits.
	tl1 := &n.template.l1
	tpre := make([]float64, hid)
	tl1.partial(tpre, s.summary, hid)
	tact := make([]float64, hid*layers)
	for j := range hid {
		fill(tact[j*layers:(j+1)*layers], tpre[j])
	}
	tl1.gemm(tact, layers, s.h, nodes, layers, 0, hid)
	tanh(tact)
	tout := make([]float64, k*layers)
	n.template.l2.biasT(tout, layers)
	n.template.l2.gemmT(tout, tact, layers, 0, hid)
	d.Template = transpose(tout, k, layers)
	// Size head: Hidden x (layers x Templates) activations.
	sl1 := &n.size.l1
	spre := make([]float64, hid)
	sl1.partial(spre, s.summary, 2*hid)
	snode := make([]float64, hid*layers)
	sl1.gemm(snode, layers, s.h, nodes, layers, 0, hid)
	stemp := make([]float64, hid*k)
	sl1.gemm(stemp, k, transpose(n.temb, k, hid), k, k, hid, hid)
	cols := layers * k
	sact := make([]float64, hid*cols)
	for j := range hid {
		for l := range layers {
			for t := range k {
				sact[j*cols+l*k+t] = math.Tanh(spre[j] + snode[j*layers+l] + stemp[j*k+t])
			}
		}
	}
	sout := make([]float64, z*cols)
	n.size.l2.biasT(sout, cols)
	n.size.l2.gemmT(sout, sact, cols, 0, hid)
	d.Size = transpose(sout, z, cols)
	return d
}

// transpose returns the cols x rows transpose of x (rows x cols, row major).
func transpose(x []float64, rows, cols int) []float64 {
	out := make([]float64, len(x))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = x[r*cols+c]
		}
	}
	return out
}

// runT runs the MLP on cols columns of xt (in x cols, feature-major) into
// out (out x cols), with a (Hidden x cols) for the hidden activations.
func (m *mlp) runT(out, a, xt []float64, cols int) {
	m.l1.biasT(a, cols)
	m.l1.gemmT(a, xt, cols, 0, m.l1.in)
	tanh(a)
	m.l2.biasT(out, cols)
	m.l2.gemmT(out, a, cols, 0, m.l2.in)
}

// vec runs the MLP on one vector x into out, with tmp (Hidden) for the
// hidden activation.
func (m *mlp) vec(out, tmp, x []float64) {
	m.l1.partial(tmp, x, 0)
	tanh(tmp)
	m.l2.partial(out, tmp, 0)
}

// serialCols is how many columns one product takes: gonum's Dgemm splits a
// product of 4 or more 64 x 64 blocks of the output over goroutines, which
// on these small products costs more than it saves (and competes with
// PyTorch's threads); up to 192 columns by at most 64 outputs stay on one
// core (wider outputs are rare here and take 64 columns at a time).
func serialCols(out int) int {
	if out <= 64 {
		return 192
	}
	return 64
}

// gemm adds to out (d.out x cols, leading dimension ldo) W's columns
// [from, from+width) times x (width x cols, leading dimension ldx), in
// column chunks gonum runs serially.
func (d *dense) gemm(out []float64, ldo int, x []float64, ldx, cols, from, width int) {
	impl := gonum.Implementation{}
	most := serialCols(d.out)
	chunks := max(1, (cols+most-1)/most)
	chunk := (cols + chunks - 1) / chunks // equal chunks (200 columns: 100 and 100, not 192 and 8)
	for c := 0; c < cols; c += chunk {
		n := min(chunk, cols-c)
		impl.Dgemm(blas.NoTrans, blas.NoTrans, d.out, n, width, 1, d.w[from:], d.in, x[c:], ldx, 1, out[c:], ldo)
	}
}

// gemmT is gemm on contiguous matrices: out is d.out x cols and x width x
// cols.
func (d *dense) gemmT(out, x []float64, cols, from, width int) {
	d.gemm(out, cols, x, cols, cols, from, width)
}

// biasT sets every column of out (d.out x cols) to the bias.
func (d *dense) biasT(out []float64, cols int) {
	for o, b := range d.b {
		fill(out[o*cols:(o+1)*cols], b)
	}
}

// partial sets out (d.out) to W's columns from `from` on times x, plus the
// bias: the whole map when from is 0, else the share of the
// pre-activation of the inputs that end the input vector.
func (d *dense) partial(out, x []float64, from int) {
	for o := range d.out {
		out[o] = d.b[o] + floats.Dot(d.w[o*d.in+from:(o+1)*d.in], x[:d.in-from])
	}
}

// fill sets every element of x to v.
func fill(x []float64, v float64) {
	for i := range x {
		x[i] = v
	}
}

// tanh applies math.Tanh to x in place.
func tanh(x []float64) {
	for i, v := range x {
		x[i] = math.Tanh(v)
	}
}
