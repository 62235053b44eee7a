package gnn

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/esper-morph/esper/core/safetensors"
)

// RandomTensors returns a network of shape cfg with random weights, by
// GraphPolicy's state_dict names: each linear map uniform in
// ±1/sqrt(inputs) (PyTorch's default), the template embedding standard
// normal, the layer norms' weights in [0.5, 1.5] and biases in [-0.2, 0.2]
// (away from the identity, so that a test exercises them), all drawn from a
// generator seeded with seed. It makes models of a given size for tests and
// benchmarks.
func RandomTensors(cfg Config, seed uint64) ([]safetensors.F32, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	uniform := func(n int, lo, hi float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(lo + (hi-lo)*rng.Float64())
		}
		return out
	}
	var out []safetensors.F32
	linear := func(name string, in, o int) {
		b := 1 / math.Sqrt(float64(in))
		out = append(out,
			safetensors.F32{Name: name + ".weight", Shape: []uint64{uint64(o), uint64(in)}, Data: uniform(o*in, -b, b)},
			safetensors.F32{Name: name + ".bias", Shape: []uint64{uint64(o)}, Data: uniform(o, -b, b)})
	}
	h := cfg.Hidden
	mlp := func(name string, in, o int) {
		linear(name+".0", in, h)
		linear(name+".2", h, o)
	}
	if h < 1 || cfg.NodeFeatures < 1 || cfg.GlobalFeatures < 1 || cfg.Templates < 1 || cfg.Sizes < 1 || cfg.Rounds < 0 || cfg.Rounds > MaxRounds {
		return nil, fmt.Errorf("gnn: random tensors: config %+v: %w", cfg, ErrSpec)
	}
	mlp("embed", cfg.NodeFeatures, h)
	mlp("glob", cfg.GlobalFeatures, h)
	for r := range cfg.Rounds {
		mlp(fmt.Sprintf("message.%d", r), 3*h, h)
		out = append(out,
			safetensors.F32{Name: fmt.Sprintf("norm.%d.weight", r), Shape: []uint64{uint64(h)}, Data: uniform(h, 0.5, 1.5)},
			safetensors.F32{Name: fmt.Sprintf("norm.%d.bias", r), Shape: []uint64{uint64(h)}, Data: uniform(h, -0.2, 0.2)})
	}
	mlp("op_head", 3*h, NumOps)
	mlp("target_head", 2*h+1+3*h, NumTargetOps)
	mlp("template_head", h+3*h, cfg.Templates)
	emb := make([]float32, cfg.Templates*h)
	for i := range emb {
		emb[i] = float32(rng.NormFloat64())
	}
	out = append(out, safetensors.F32{Name: "template_embed.weight", Shape: []uint64{uint64(cfg.Templates), uint64(h)}, Data: emb})
	mlp("size_head", 2*h+3*h, cfg.Sizes)
	mlp("value_head", 3*h, 1)
	return out, nil
}
