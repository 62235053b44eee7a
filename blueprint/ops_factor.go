package blueprint

// Ops beyond the first table: the Kronecker-factorised linear map, and the
// removal of default-valued optional attributes for the canonical form.

// inferKron checks and costs a kron_linear op: y = (A ⊗ B) x on the last
// dim, A of shape (out_factor, in_factor), B of shape (out/out_factor,
// in/in_factor), no bias. Tezzeret computes it as A · X · Bᵀ with X the
// input's last dim viewed as (in_factor, in/in_factor), so a row costs
// 2·in·(out/out_factor) + 2·in_factor·out FLOPs instead of 2·in·out.
func inferKron(a attrs, in []Shape, ext map[string]int64) (Shape, cost, error) {
	x, nIn, nOut := in[0], a.int("in"), a.int("out")
	fIn, fOut := a.int("in_factor"), a.int("out_factor")
	if len(x.Dims) == 0 || x.last() != Known(nIn) {
		return Shape{}, cost{}, shapeErr("expects %d features on the last dim, input is %v", nIn, x)
	}
	if nIn%fIn != 0 || nOut%fOut != 0 {
		return Shape{}, cost{}, attrErr("in %d must be divisible by in_factor %d and out %d by out_factor %d", nIn, fIn, nOut, fOut)
	}
	bIn, bOut := nIn/fIn, nOut/fOut
	params := satAdd(satMul(fOut, fIn), satMul(bOut, bIn))
	perRow := satAdd(satMul(2, satMul(nIn, bOut)), satMul(2, satMul(fIn, nOut)))
	rows := x.elements(ext) / nIn
	return x.with(len(x.Dims)-1, Known(nOut)), cost{params: params, flops: satMul(rows, perRow)}, nil
}

// dropDefaults removes op's optional attributes that hold their default, so
// IRs that differ only in spelling a default out share one canonical form.
func dropDefaults(op *Op) {
	spec, ok := opTable[op.Op]
	if !ok {
		return
	}
	for _, s := range spec.attrs {
		if v, present := op.Attrs[s.name]; present && s.optional && s.def != nil && v == s.def {
			delete(op.Attrs, s.name)
		}
	}
}
