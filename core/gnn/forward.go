package gnn

import (
	"fmt"
	"math"

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
// summary, from which the heads are computed on demand.
type State struct {
	n  *Net
	in *Input
	// h holds the node embeddings (Nodes x Hidden); glob the global
	// embedding; summary the mean and max of h and glob (3 x Hidden).
	h, glob, summary []float64
	// targetPre is the summary's share of the target head's first layer's
	// pre-activation (bias included); targets the target logits, once
	// computed.
	targetPre, targets []float64
}

// Run runs the message passing on in and returns the state the heads read.
func (n *Net) Run(in *Input) (*State, error) {
	if err := n.check(in); err != nil {
		return nil, err
	}
	hid, nodes := n.cfg.Hidden, in.Nodes
	s := &State{n: n, in: in}
	s.h = n.embed.batch(in.X, nodes)
	s.glob = n.glob.batch(in.Global, 1)
	degree := make([]float64, nodes)
	for _, d := range in.Dst {
		degree[d]++
	}
	// A message's first layer takes [h, the neighbour mean, glob]: the glob
	// share (with the bias) is the same for every node, computed once.
	agg := make([]float64, nodes*hid)
	pre := make([]float64, nodes*hid)
	for r, msg := range n.message {
		clear(agg)
		for e, src := range in.Src {
			d := in.Dst[e]
			a := agg[d*hid : (d+1)*hid]
			for j, v := range s.h[src*hid : (src+1)*hid] {
				a[j] += v
			}
		}
		for i := range nodes {
			if degree[i] > 1 {
				a := agg[i*hid : (i+1)*hid]
				for j := range a {
					a[j] /= degree[i]
				}
			}
		}
		shared := msg.l1.partial(s.glob, 2*hid)
		for i := range nodes {
			copy(pre[i*hid:(i+1)*hid], shared)
		}
		msg.l1.columnsAdd(pre, s.h, nodes, 0, hid)
		msg.l1.columnsAdd(pre, agg, nodes, hid, hid)
		for i, v := range pre {
			pre[i] = math.Tanh(v)
		}
		m := msg.l2.batch(pre, nodes)
		for i := range nodes {
			row := s.h[i*hid : (i+1)*hid]
			for j := range row {
				row[j] += m[i*hid+j]
			}
			layerNorm(row, n.normW[r], n.normB[r])
		}
	}
	s.summary = make([]float64, 3*hid)
	mean, mx := s.summary[:hid], s.summary[hid:2*hid]
	copy(mx, s.h[:hid])
	for i := range nodes {
		for j, v := range s.h[i*hid : (i+1)*hid] {
			mean[j] += v
			mx[j] = math.Max(mx[j], v)
		}
	}
	for j := range mean {
		mean[j] /= float64(nodes)
	}
	copy(s.summary[2*hid:], s.glob)
	return s, nil
}

// Value is the value head's estimate.
func (s *State) Value() float64 { return s.n.value.batch(s.summary, 1)[0] }

// OpLogits are the op head's logits (NumOps).
func (s *State) OpLogits() []float64 { return s.n.op.batch(s.summary, 1) }

// TargetLogits returns the target head's logits, NumTargetOps x targets
// (row major: op k's logits for every target slot are row k). They are
// computed once per state.
func (s *State) TargetLogits() []float64 {
	if s.targets != nil {
		return s.targets
	}
	n, hid := s.n, s.n.cfg.Hidden
	l1 := n.target.l1 // columns: layer node (hid), seed node (hid), has-seed (1), summary (3 hid)
	s.targetPre = l1.partial(s.summary, 2*hid+1)
	// The layer nodes' shares (the first Layers nodes), once per layer.
	layerPart := l1.columns(s.h, s.in.Layers, 0, hid)
	t := len(s.in.TargetLayer)
	pre := make([]float64, t*hid)
	for i := range t {
		row := pre[i*hid : (i+1)*hid]
		copy(row, s.targetPre)
		l := s.in.TargetLayer[i]
		for j := range row {
			row[j] += layerPart[l*hid+j]
		}
		if sd := s.in.TargetSeed[i]; sd >= 0 {
			hs := s.h[sd*hid : (sd+1)*hid]
			for j := range row {
				row[j] += floats.Dot(l1.w[j*l1.in+hid:j*l1.in+2*hid], hs) + l1.w[j*l1.in+2*hid]
			}
		}
		for j := range row {
			row[j] = math.Tanh(row[j])
		}
	}
	out := n.target.l2.batch(pre, t) // t x NumTargetOps
	s.targets = make([]float64, NumTargetOps*t)
	for i := range t {
		for k := range NumTargetOps {
			s.targets[k*t+i] = out[i*NumTargetOps+k]
		}
	}
	return s.targets
}

// TemplateLogits are the template head's logits at layer node layer.
func (s *State) TemplateLogits(layer int) []float64 {
	hid := s.n.cfg.Hidden
	x := make([]float64, 0, 4*hid)
	x = append(append(x, s.h[layer*hid:(layer+1)*hid]...), s.summary...)
	return s.n.template.batch(x, 1)
}

// SizeLogits are the size head's logits at layer node layer for template
// index template.
func (s *State) SizeLogits(layer, template int) []float64 {
	hid := s.n.cfg.Hidden
	x := make([]float64, 0, 5*hid)
	x = append(append(append(x, s.h[layer*hid:(layer+1)*hid]...), s.n.temb[template*hid:(template+1)*hid]...), s.summary...)
	return s.n.size.batch(x, 1)
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

// Dense computes every head on every layer, template and size.
func (s *State) Dense() Dense {
	n, hid, layers := s.n, s.n.cfg.Hidden, s.in.Layers
	d := Dense{Value: s.Value(), Op: s.OpLogits(), Target: s.TargetLogits()}
	tl1 := n.template.l1
	tpre := tl1.partial(s.summary, hid)
	tnode := tl1.columns(s.h, layers, 0, hid)
	for i := range tnode {
		tnode[i] = math.Tanh(tnode[i] + tpre[i%hid])
	}
	d.Template = n.template.l2.batch(tnode, layers)
	sl1 := n.size.l1
	spre := sl1.partial(s.summary, 2*hid)
	snode := sl1.columns(s.h, layers, 0, hid)
	stemp := sl1.columns(n.temb, n.cfg.Templates, hid, hid)
	k := n.cfg.Templates
	pre := make([]float64, layers*k*hid)
	for l := range layers {
		for t := range k {
			row := pre[(l*k+t)*hid : (l*k+t+1)*hid]
			for j := range row {
				row[j] = math.Tanh(spre[j] + snode[l*hid+j] + stemp[t*hid+j])
			}
		}
	}
	d.Size = n.size.l2.batch(pre, layers*k)
	return d
}

// batch runs the MLP on rows rows of x (row major) and returns rows x out.
func (m *mlp) batch(x []float64, rows int) []float64 {
	a := m.l1.batch(x, rows)
	for i, v := range a {
		a[i] = math.Tanh(v)
	}
	return m.l2.batch(a, rows)
}

// serialRows is the most rows one matrix product takes: gonum's Dgemm
// splits a product of 4 or more 64 x 64 blocks over goroutines, which on
// these small products costs more than it saves (and competes with
// PyTorch's threads); 128 rows by at most 64 outputs stay on one core.
const serialRows = 128

// gemm adds x (rows x width, row major) times W's columns [from,
// from+width) transposed to out (rows x out), in row chunks that gonum
// runs serially (outputs wider than 64 are rare here and go parallel).
func (d *dense) gemm(out, x []float64, rows, from, width int) {
	impl := gonum.Implementation{}
	for r := 0; r < rows; r += serialRows {
		n := min(serialRows, rows-r)
		impl.Dgemm(blas.NoTrans, blas.Trans, n, d.out, width, 1, x[r*width:(r+n)*width], width, d.w[from:], d.in, 1,
			out[r*d.out:(r+n)*d.out], d.out)
	}
}

// batch computes W x + b for rows rows of x (rows x in, row major).
func (d *dense) batch(x []float64, rows int) []float64 {
	out := make([]float64, rows*d.out)
	for r := range rows {
		copy(out[r*d.out:(r+1)*d.out], d.b)
	}
	d.gemm(out, x, rows, 0, d.in)
	return out
}

// columns computes, for rows rows of x (each width wide), the product with
// W's columns [from, from+width): rows x out, no bias.
func (d *dense) columns(x []float64, rows, from, width int) []float64 {
	out := make([]float64, rows*d.out)
	d.gemm(out, x, rows, from, width)
	return out
}

// columnsAdd adds to out (rows x out) the product of rows rows of x (each
// width wide) with W's columns [from, from+width).
func (d *dense) columnsAdd(out, x []float64, rows, from, width int) {
	d.gemm(out, x, rows, from, width)
}

// partial is W's columns from `from` on times x, plus the bias: the share
// of the pre-activation of the inputs that end the input vector.
func (d *dense) partial(x []float64, from int) []float64 {
	out := make([]float64, d.out)
	for o := range d.out {
		s := d.b[o]
		row := d.w[o*d.in+from : (o+1)*d.in]
		for j, w := range row {
			s += w * x[j]
		}
		out[o] = s
	}
	return out
}

// layerNorm normalises x in place (biased variance, LayerNormEps) and
// applies the affine weights.
func layerNorm(x, w, b []float64) {
	var mean, v float64
	for _, e := range x {
		mean += e
	}
	mean /= float64(len(x))
	for _, e := range x {
		v += (e - mean) * (e - mean)
	}
	inv := 1 / math.Sqrt(v/float64(len(x))+LayerNormEps)
	for i := range x {
		x[i] = (x[i]-mean)*inv*w[i] + b[i]
	}
}
