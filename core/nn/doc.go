// Package nn is a small native forward pass for multilayer perceptrons,
// used to run Esper's learned policies in Go without a runtime library
// (docs/simic.md, "The model folder").
//
// A network is a list of dense layers, each y = act(W x + b) with W of
// shape [out, in] (PyTorch's nn.Linear layout) and b of shape [out], read
// by name from a safetensors file (F32 or F64). Optional tensors normalise
// the input, x' = (x - x_mean) / x_std, and scale the output back,
// y' = y * y_std + y_mean. Weights are checked at load: shapes must chain,
// every value must be finite and every std positive.
//
// Math: weights are held as float64 (exact copies of the stored float32
// values) and every layer accumulates in float64; Forward rounds the
// result to float32 once at the end. Against PyTorch's float32 forward
// the two differ by float32 rounding only (relative ~1e-7 per layer).
package nn
