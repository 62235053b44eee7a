package blueprint

// Builders of the template library. Each gets resolved params and a valid
// host of a supported layout; Instantiate validates what they return.

func linearOp(id, in string, nIn, nOut int64, bias, zero bool) Op {
	a := Attrs{"in": nIn, "out": nOut, "bias": bias}
	if zero {
		a["init"] = InitZero
	}
	return Op{ID: id, Op: OpLinear, Inputs: []string{in}, Attrs: a}
}

// convOp returns a conv1d or conv2d op (nd spatial dims).
func convOp(nd int, id, in string, cIn, cOut, k, s, p, groups int64, zero bool) Op {
	name := OpConv2d
	if nd == 1 {
		name = OpConv1d
	}
	a := Attrs{"in": cIn, "out": cOut, "kernel": k, "stride": s, "padding": p, "groups": groups, "bias": true}
	if zero {
		a["init"] = InitZero
	}
	return Op{ID: id, Op: name, Inputs: []string{in}, Attrs: a}
}

func actOp(id, in string, p Params) Op {
	return Op{ID: id, Op: p["activation"].(string), Inputs: []string{in}}
}

func width(p Params, name string) int64 {
	n, _ := asInt(p[name])
	return n
}

func buildResidualMLP(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	w := width(p, "width")
	return []Op{
		linearOp("fc1", InputName, in, w, true, false),
		actOp("act", "fc1", p),
		linearOp("fc2", "act", w, out, true, true),
	}, "fc2"
}

func buildLowRank(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	r := width(p, "rank")
	return []Op{
		linearOp("down", InputName, in, r, false, false),
		linearOp("up", "down", r, out, false, true),
	}, "up"
}

func buildLinear(_ Params, h Host) ([]Op, string) {
	in, out := h.channels()
	return []Op{linearOp("proj", InputName, in, out, false, true)}, "proj"
}

func buildBottleneck(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	w := width(p, "width")
	if h.spatialDims() == 0 {
		return []Op{
			linearOp("reduce", InputName, in, w, true, false),
			actOp("act1", "reduce", p),
			linearOp("mix", "act1", w, w, true, false),
			actOp("act2", "mix", p),
			linearOp("expand", "act2", w, out, true, true),
		}, "expand"
	}
	_, s, _ := h.geometry()
	k, pad := h.matchKernel(3)
	return []Op{
		convOp(2, "reduce", InputName, in, w, 1, 1, 0, 1, false),
		actOp("act1", "reduce", p),
		convOp(2, "mix", "act1", w, w, k, s, pad, 1, false),
		actOp("act2", "mix", p),
		convOp(2, "expand", "act2", w, out, 1, 1, 0, 1, true),
	}, "expand"
}

func buildNormMLP(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	w := width(p, "width")
	return []Op{
		{ID: "norm", Op: OpLayerNorm, Inputs: []string{InputName}, Attrs: Attrs{"dim": in}},
		linearOp("fc1", "norm", in, w, true, false),
		actOp("act", "fc1", p),
		linearOp("fc2", "act", w, out, true, true),
	}, "fc2"
}

// buildSpatialBlock is conv3x3 (nd 2) and conv1d_block (nd 1).
func buildSpatialBlock(nd int, p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	w := width(p, "width")
	_, s, _ := h.geometry()
	k, pad := h.matchKernel(3)
	return []Op{
		convOp(nd, "conv1", InputName, in, w, k, s, pad, 1, false),
		actOp("act", "conv1", p),
		convOp(nd, "conv2", "act", w, out, 3, 1, 1, 1, true),
	}, "conv2"
}

func buildConv3x3(p Params, h Host) ([]Op, string) { return buildSpatialBlock(2, p, h) }

func buildConv1dBlock(p Params, h Host) ([]Op, string) { return buildSpatialBlock(1, p, h) }

func buildDepthwise(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	nd := h.spatialDims()
	mid := in * width(p, "multiplier")
	_, s, _ := h.geometry()
	k, pad := h.matchKernel(width(p, "kernel"))
	return []Op{
		convOp(nd, "dw", InputName, in, mid, k, s, pad, in, false),
		actOp("act", "dw", p),
		convOp(nd, "pw", "act", mid, out, 1, 1, 0, 1, true),
	}, "pw"
}

func buildLowRankConv(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	nd := h.spatialDims()
	r := width(p, "rank")
	_, s, _ := h.geometry()
	k, pad := h.matchKernel(3)
	down := convOp(nd, "down", InputName, in, r, k, s, pad, 1, false)
	up := convOp(nd, "up", "down", r, out, 1, 1, 0, 1, true)
	down.Attrs["bias"], up.Attrs["bias"] = false, false
	return []Op{down, up}, "up"
}

func buildGLU(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	w := width(p, "width")
	return []Op{
		linearOp("value", InputName, in, w, false, false),
		linearOp("gate", InputName, in, w, false, false),
		{ID: "gate_act", Op: p["gate"].(string), Inputs: []string{"gate"}},
		{ID: "glu", Op: OpMul, Inputs: []string{"value", "gate_act"}},
		linearOp("proj", "glu", w, out, true, true),
	}, "proj"
}

// largestDivisor returns the largest divisor of n that is at most limit.
func largestDivisor(n, limit int64) int64 {
	for d := min(n, limit); d > 1; d-- {
		if n%d == 0 {
			return d
		}
	}
	return 1
}

func buildKron(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	f := width(p, "factor")
	a := Attrs{"in": in, "out": out, "in_factor": largestDivisor(in, f), "out_factor": largestDivisor(out, f), "init": InitZero}
	return []Op{{ID: "kron", Op: OpKron, Inputs: []string{InputName}, Attrs: a}}, "kron"
}

func buildSEGate(p Params, h Host) ([]Op, string) {
	in, out := h.channels()
	hidden := max(1, in/width(p, "reduction"))
	_, s, _ := h.geometry()
	k, pad := h.matchKernel(1)
	return []Op{
		convOp(2, "branch", InputName, in, out, k, s, pad, 1, true),
		{ID: "pool", Op: OpAvgPool, Inputs: []string{InputName}},
		convOp(2, "squeeze", "pool", in, hidden, 1, 1, 0, 1, false),
		{ID: "squeeze_act", Op: OpReLU, Inputs: []string{"squeeze"}},
		convOp(2, "excite", "squeeze_act", hidden, out, 1, 1, 0, 1, false),
		{ID: "gate", Op: OpSigmoid, Inputs: []string{"excite"}},
		{ID: "out", Op: OpMul, Inputs: []string{"branch", "gate"}},
	}, "out"
}

func buildAttentionHead(p Params, h Host) ([]Op, string) {
	dim, _ := h.channels()
	attn := Attrs{"dim": dim, "heads": width(p, "heads"), "init": InitZero}
	if p["mask"] == "causal" {
		attn["causal"] = true
	}
	return []Op{
		{ID: "norm", Op: OpLayerNorm, Inputs: []string{InputName}, Attrs: Attrs{"dim": dim}},
		{ID: "attn", Op: OpAttention, Inputs: []string{"norm"}, Attrs: attn},
	}, "attn"
}
