// Package gnn is the native forward pass of Simic's graph policy network
// (docs/simic.md, "Graph policy in Go"): message passing over a graph's
// nodes with weights shared across nodes, then factored heads (op, target
// slot, template, size) and a value head. It is the mechanism only: the
// graph's encoding and the decision (masks, argmax) are policy/graphpolicy's.
//
// The network is the PyTorch module esper.simic.policy.GraphPolicy, read by
// its state_dict names from a safetensors file (F32 or F64). Every MLP is
// Linear, tanh, Linear; the layer norms are PyTorch's (biased variance,
// eps 1e-5, affine). Weights are held as float64 copies and every sum is
// accumulated in float64, so the forward differs from PyTorch's float32
// forward by float32 rounding only.
package gnn
