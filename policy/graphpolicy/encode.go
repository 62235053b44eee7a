package graphpolicy

import (
	"fmt"
	"math"
	"slices"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
)

// Encoded is a graph as the network's input (gnn.Input): node features,
// edges in both directions, global features and the target slots' nodes.
type Encoded = gnn.Input

// hostKinds are the host kinds with a feature of their own; any other
// counts as "other".
var hostKinds = []string{blueprint.HostLinear, blueprint.HostConv1d, blueprint.HostConv2d, blueprint.HostResidual,
	blueprint.HostBlock, blueprint.HostConv1dPair, blueprint.HostConv2dPair}

// NodeFeatureNames returns the names of a node's features, in the order of
// Encoded.X's columns:
//   - is_layer, is_seed: the node's kind;
//   - position: the layer's index / (layers - 1);
//   - host:<kind> (and host:other): the layer's host kind, one-hot (zeros
//     for a seed);
//   - log_in, log_out, log_params: log1p of the host's widths and of the
//     node's own parameters;
//   - per Nissa signal <name>: symlog of its window mean, and
//     <name>:measured (1 when measured and finite, else both 0);
//   - cooldown, dormant: the governor's cooldown epochs and the layer's
//     dormant slots;
//   - state:<STATE>: a seed's lifecycle state, one-hot;
//   - alpha, log_steps_in_state, epochs_in_state;
//   - contribution: symlog of the seed's last measured contribution over
//     the last validation loss; contribution:measured.
func NodeFeatureNames() []string {
	out := []string{"is_layer", "is_seed", "position"}
	for _, k := range hostKinds {
		out = append(out, "host:"+k)
	}
	out = append(out, "host:other", "log_in", "log_out", "log_params")
	for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
		out = append(out, sig.String(), sig.String()+":measured")
	}
	out = append(out, "cooldown", "dormant")
	for st := lifecycle.State(0); st < lifecycle.NumStates; st++ {
		out = append(out, "state:"+st.String())
	}
	return append(out, "alpha", "log_steps_in_state", "epochs_in_state", "contribution", "contribution:measured")
}

// GlobalFeatureNames returns the names of the global features, in order:
// progress (epoch / planned epochs, 0 when unknown), epochs_known,
// log_params_used (log1p), budget_left (the share of the parameter budget
// left, 1 without one), active_frac (seeds in flight / their limit),
// val_loss (symlog of the last validation loss), val_change_1 and
// val_change_3 (its relative fall over 1 and 3 epochs, 0 when unknown),
// val_known (validation losses known / 8).
func GlobalFeatureNames() []string {
	return []string{"progress", "epochs_known", "log_params_used", "budget_left", "active_frac", "val_loss",
		"val_change_1", "val_change_3", "val_known"}
}

// symlog is sign(x) * log1p(|x|).
func symlog(x float64) float64 { return math.Copysign(math.Log1p(math.Abs(x)), x) }

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Encode returns g's encoding (see NodeFeatureNames and GlobalFeatureNames):
// the one definition the Go forward and the PyTorch trainer read.
func Encode(g *Graph) (*Encoded, error) {
	e := &Encoded{}
	if err := EncodeInto(e, g); err != nil {
		return nil, err
	}
	return e, nil
}

// EncodeInto writes g's encoding (Encode's) into e, reusing e's slices:
// once e has held a graph of this size, it allocates nothing.
func EncodeInto(e *Encoded, g *Graph) error {
	layers, slots := g.Layers, g.Slots
	if layers < 1 || len(g.Nodes) < layers {
		return fmt.Errorf("graphpolicy: encode: a graph of %d layers has %d nodes: %w", layers, len(g.Nodes), ErrGraph)
	}
	nf := numNodeFeatures
	e.Nodes, e.Features, e.Layers = len(g.Nodes), nf, layers
	e.X, e.Src, e.Dst = resizeF(e.X, 0), resize(e.Src, 0), resize(e.Dst, 0)
	val := 1.0
	if n := len(g.Global.ValLosses); n > 0 {
		val = g.Global.ValLosses[n-1].Value
	}
	for i := range g.Nodes {
		x, err := appendNode(e.X, &g.Nodes[i], layers, val)
		if err != nil {
			return err
		}
		e.X = x
	}
	for _, ed := range g.Edges {
		e.Src = append(e.Src, ed.From)
		e.Dst = append(e.Dst, ed.To)
	}
	for _, ed := range g.Edges {
		e.Src = append(e.Src, ed.To)
		e.Dst = append(e.Dst, ed.From)
	}
	e.Global = appendGlobal(resizeF(e.Global, 0), g)
	e.TargetLayer, e.TargetSeed = resize(e.TargetLayer, layers*slots), resize(e.TargetSeed, layers*slots)
	for t := range e.TargetLayer {
		e.TargetLayer[t] = t / max(slots, 1)
		e.TargetSeed[t] = -1
	}
	for i := range g.Nodes {
		n := &g.Nodes[i]
		if n.Kind == "seed" {
			t := n.Layer*slots + n.Slot
			if n.Layer < 0 || n.Layer >= layers || n.Slot < 0 || n.Slot >= slots {
				return fmt.Errorf("graphpolicy: encode: seed node %d at %d/%d is outside %d layers x %d slots: %w", i, n.Layer, n.Slot, layers, slots, ErrGraph)
			}
			e.TargetSeed[t] = i
		}
	}
	return nil
}

// resizeF is resize for float64s.
func resizeF(x []float64, n int) []float64 {
	if x == nil || cap(x) < n {
		return make([]float64, n)
	}
	return x[:n]
}

// numNodeFeatures is len(NodeFeatureNames()).
var numNodeFeatures = len(NodeFeatureNames())

// resize returns x with length n, reallocating only when its capacity is
// short (or x is nil: an encoding's slices are never nil, so that its JSON
// holds [] and not null).
func resize(x []int, n int) []int {
	if x == nil || cap(x) < n {
		return make([]int, n)
	}
	return x[:n]
}

// appendNode appends node n's features to x.
func appendNode(x []float64, n *Node, layers int, val float64) ([]float64, error) {
	isLayer := n.Kind == "layer"
	x = append(x, b2f(isLayer), b2f(!isLayer), float64(n.Layer)/float64(max(1, layers-1)))
	host := len(hostKinds)
	if i := slices.Index(hostKinds, n.Host); i >= 0 {
		host = i
	}
	for k := range len(hostKinds) + 1 {
		x = append(x, b2f(isLayer && k == host))
	}
	x = append(x, math.Log1p(float64(max(0, n.In))), math.Log1p(float64(max(0, n.Out))), math.Log1p(float64(max(0, n.Params))))
	for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
		v, ok := n.Signals[sig.String()]
		if ok && finite(float64(v)) {
			x = append(x, symlog(float64(v)), 1)
		} else {
			x = append(x, 0, 0)
		}
	}
	x = append(x, float64(n.Cooldown), float64(n.Dormant))
	state := -1
	if !isLayer {
		st, err := lifecycle.ParseState(n.State)
		if err != nil {
			return nil, fmt.Errorf("graphpolicy: encode: seed %d/%d: %v: %w", n.Layer, n.Slot, err, ErrGraph)
		}
		state = int(st)
	}
	for st := range int(lifecycle.NumStates) {
		x = append(x, b2f(st == state))
	}
	x = append(x, n.Alpha, math.Log1p(float64(max(0, n.StepsInState))), float64(n.EpochsInState))
	if c := float64(n.Contribution); finite(c) {
		x = append(x, symlog(c/math.Max(math.Abs(val), 1e-12)), 1)
	} else {
		x = append(x, 0, 0)
	}
	return x, nil
}

// appendGlobal appends g's global features to out.
func appendGlobal(out []float64, g *Graph) []float64 {
	gl := &g.Global
	progress, known := 0.0, 0.0
	if gl.Epochs > 0 {
		progress, known = float64(g.Epoch)/float64(gl.Epochs), 1
	}
	left := 1.0
	if r := float64(gl.Remaining); finite(r) && gl.MaxParams > 0 {
		left = r / float64(gl.MaxParams)
	}
	vals := gl.ValLosses
	last := 0.0
	if len(vals) > 0 {
		last = vals[len(vals)-1].Value
	}
	change := func(k int) float64 {
		if len(vals) <= k {
			return 0
		}
		before := vals[len(vals)-1-k].Value
		return (before - last) / math.Max(math.Abs(before), 1e-12)
	}
	return append(out, progress, known, math.Log1p(float64(gl.ParamsUsed)), left,
		float64(gl.Active)/float64(max(1, gl.MaxConcurrent)), symlog(last), change(1), change(3), float64(len(vals))/8)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
