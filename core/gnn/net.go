package gnn

import (
	"fmt"
	"math"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/safetensors"
)

// ErrSpec is returned for weights that do not make the network (a missing
// tensor, a shape that does not fit, a non-finite value) and for an input
// that does not fit it. [INVALID]
var ErrSpec = errcode.New(errcode.Invalid, "invalid graph network")

// LayerNormEps is the epsilon of the layer norms (PyTorch's default).
const LayerNormEps = 1e-5

// MaxRounds bounds Config.Rounds.
const MaxRounds = 16

// Heads' output counts that do not depend on the weights: the op head
// scores NumOps ops, the target head scores each target for each of the
// NumTargetOps ops that take a target (every op but wait).
const (
	NumOps       = 5
	NumTargetOps = NumOps - 1
)

// Config is the network's shape, as the model's manifest states it; Load
// checks every tensor against it.
type Config struct {
	// NodeFeatures and GlobalFeatures are the input widths.
	NodeFeatures   int `json:"node_features"`
	GlobalFeatures int `json:"global_features"`
	// Hidden is the width of the node embeddings and of every MLP.
	Hidden int `json:"hidden"`
	// Rounds is the number of message passing rounds.
	Rounds int `json:"rounds"`
	// Templates and Sizes are the template and size heads' output counts.
	Templates int `json:"templates"`
	Sizes     int `json:"sizes"`
}

// dense is one linear map y = W x + b, W of shape [out, in] row major.
type dense struct {
	in, out int
	w, b    []float64
}

// mlp is Linear, tanh, Linear.
type mlp struct{ l1, l2 dense }

// Net is a loaded graph policy network. It is immutable and safe for
// concurrent use.
type Net struct {
	cfg      Config
	embed    mlp
	glob     mlp
	message  []mlp
	normW    [][]float64
	normB    [][]float64
	op       mlp
	target   mlp
	template mlp
	size     mlp
	value    mlp
	// temb is the template embedding, Templates x Hidden.
	temb []float64
}

// Config returns the network's shape.
func (n *Net) Config() Config { return n.cfg }

// Load reads the network of shape cfg from the safetensors file at path.
func Load(path string, cfg Config) (*Net, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gnn: load: %w", err)
	}
	n, err := FromFile(f, cfg)
	if err != nil {
		return nil, fmt.Errorf("gnn: load %s: %w", path, err)
	}
	return n, nil
}

// FromFile builds the network of shape cfg from a parsed file, reading the
// tensors by GraphPolicy's state_dict names (embed.0.weight, ...,
// message.<round>.0.weight, norm.<round>.weight, op_head.0.weight,
// target_head..., template_head..., template_embed.weight, size_head...,
// value_head...).
func FromFile(f *safetensors.File, cfg Config) (*Net, error) {
	h := cfg.Hidden
	switch {
	case cfg.NodeFeatures < 1 || cfg.GlobalFeatures < 1 || h < 1 || cfg.Templates < 1 || cfg.Sizes < 1:
		return nil, fmt.Errorf("gnn: config %+v: every width must be >= 1: %w", cfg, ErrSpec)
	case cfg.Rounds < 0 || cfg.Rounds > MaxRounds:
		return nil, fmt.Errorf("gnn: config rounds %d is not in [0, %d]: %w", cfg.Rounds, MaxRounds, ErrSpec)
	}
	n := &Net{cfg: cfg}
	summary := 3 * h
	// Every MLP is in -> Hidden -> out.
	specs := []struct {
		dst     *mlp
		name    string
		in, out int
	}{
		{&n.embed, "embed", cfg.NodeFeatures, h},
		{&n.glob, "glob", cfg.GlobalFeatures, h},
		{&n.op, "op_head", summary, NumOps},
		{&n.target, "target_head", 2*h + 1 + summary, NumTargetOps},
		{&n.template, "template_head", h + summary, cfg.Templates},
		{&n.size, "size_head", 2*h + summary, cfg.Sizes},
		{&n.value, "value_head", summary, 1},
	}
	for _, s := range specs {
		m, err := readMLP(f, s.name, s.in, h, s.out)
		if err != nil {
			return nil, err
		}
		*s.dst = m
	}
	for r := range cfg.Rounds {
		m, err := readMLP(f, fmt.Sprintf("message.%d", r), 3*h, h, h)
		if err != nil {
			return nil, err
		}
		n.message = append(n.message, m)
		w, err := read(f, fmt.Sprintf("norm.%d.weight", r), h)
		if err != nil {
			return nil, err
		}
		b, err := read(f, fmt.Sprintf("norm.%d.bias", r), h)
		if err != nil {
			return nil, err
		}
		n.normW, n.normB = append(n.normW, w), append(n.normB, b)
	}
	var err error
	if n.temb, err = read(f, "template_embed.weight", cfg.Templates, h); err != nil {
		return nil, err
	}
	return n, nil
}

func readMLP(f *safetensors.File, prefix string, in, hidden, out int) (mlp, error) {
	var m mlp
	var err error
	for _, l := range []struct {
		d       *dense
		idx     int
		in, out int
	}{{&m.l1, 0, in, hidden}, {&m.l2, 2, hidden, out}} {
		l.d.in, l.d.out = l.in, l.out
		if l.d.w, err = read(f, fmt.Sprintf("%s.%d.weight", prefix, l.idx), l.out, l.in); err != nil {
			return m, err
		}
		if l.d.b, err = read(f, fmt.Sprintf("%s.%d.bias", prefix, l.idx), l.out); err != nil {
			return m, err
		}
	}
	return m, nil
}

// read returns the named tensor, checked to have shape want and finite
// values.
func read(f *safetensors.File, name string, want ...int) ([]float64, error) {
	v, shape, err := f.Float64s(name)
	if err != nil {
		return nil, fmt.Errorf("gnn: %v: %w", err, ErrSpec)
	}
	ok := len(shape) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = int(shape[i]) == want[i]
	}
	if !ok {
		return nil, fmt.Errorf("gnn: tensor %q has shape %v, want %v (the manifest's shape): %w", name, shape, want, ErrSpec)
	}
	for i, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("gnn: tensor %q holds a non-finite value (%v at flat index %d): %w", name, x, i, ErrSpec)
		}
	}
	return v, nil
}
