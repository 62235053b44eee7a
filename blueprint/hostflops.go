package blueprint

// ForwardFLOPs returns the host layer's own forward cost of one sample, in
// Karn's units (a multiply-add is 2 FLOPs, a bias add 1; one sample is a
// feature vector for a linear host, an image at the host's spatial extents,
// DefaultExtent per dim when absent, for a conv host), given the layer's
// parameter count. It counts linear, conv1d and conv2d hosts whose params
// are exactly their weights (in x out, or in x out x kernel^dims) with or
// without a bias of out; it returns false for every other host (block,
// residual, conv pairs, grouped convs, parameter counts that match
// neither), whose forward the signature does not determine.
func (h Host) ForwardFLOPs(params int64) (int64, bool) {
	if h.Validate() != nil {
		return 0, false
	}
	var weights, positions int64
	switch h.Kind {
	case HostLinear:
		weights, positions = satMul(h.In, h.Out), 1
	case HostConv1d, HostConv2d:
		weights = satMul(h.In, h.Out)
		for range h.spatialDims() {
			weights = satMul(weights, h.Kernel)
		}
		positions = h.OutputShape().elements(h.extents()) / h.Out
	default:
		return 0, false
	}
	var bias int64
	switch params {
	case weights:
	case satAdd(weights, h.Out):
		bias = h.Out
	default:
		return 0, false
	}
	return satMul(positions, satAdd(satMul(2, weights), bias)), true
}
