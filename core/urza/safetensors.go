package urza

import "github.com/esper-morph/esper/core/safetensors"

// Tensor is one entry of a safetensors header (core/safetensors).
type Tensor = safetensors.Tensor

// Tensors parses and checks the safetensors file b (safetensors.Parse):
// errors wrap ErrInvalidWeights.
func Tensors(b []byte) ([]Tensor, error) { return safetensors.Parse(b) }
