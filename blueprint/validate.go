package blueprint

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Analysis is what Analyze learns about an IR on a host.
type Analysis struct {
	// Input is the seed's input shape (the host's input shape).
	Input Shape `json:"input"`
	// Output is the shape of the output op.
	Output Shape `json:"output"`
	// Shapes holds every op's output shape, by op id.
	Shapes map[string]Shape `json:"shapes"`
	// Order lists the op ids in a topological order.
	Order []string `json:"order"`
	// ParamCount is the number of trainable parameters.
	ParamCount int64 `json:"param_count"`
	// FLOPsPerSample is the forward cost of one sample at the host's extents.
	FLOPsPerSample int64 `json:"flops_per_sample"`
	// Mergeable is true when every op is linear or kron_linear (a chain
	// with no activation), so the seed can be merged into a linear host's
	// weight, or when the host is a conv pair (its seeds are widenings,
	// which merge into the pair's convs).
	Mergeable bool `json:"mergeable"`
}

// Analyze validates ir's structure and propagates shapes from host's input:
// every op must be known with valid attributes, inputs must exist, the graph
// must be acyclic with every op reaching the output, the output shape must
// equal host's output shape and the output must be zero at initialisation.
// It does not look at ir.Host (pass it to check an IR on its own host), nor at
// ir.ParamCount and ir.FLOPsPerSample.
func Analyze(ir *IR, host Host) (*Analysis, error) {
	if ir.Version != Version {
		return nil, fmt.Errorf("%w: version %d is not supported (want %d)", ErrInvalid, ir.Version, Version)
	}
	if err := host.Validate(); err != nil {
		return nil, err
	}
	if err := checkHeader(ir); err != nil {
		return nil, err
	}
	byID, err := checkOps(ir)
	if err != nil {
		return nil, err
	}
	order, err := topoOrder(ir, byID)
	if err != nil {
		return nil, err
	}
	a := &Analysis{Input: host.InputShape(), Shapes: make(map[string]Shape, len(ir.Ops)), Order: order, Mergeable: true}
	ext := host.extents()
	zero := make(map[string]bool, len(ir.Ops))
	for _, id := range order {
		op := byID[id]
		spec := opTable[op.Op]
		in := make([]Shape, len(op.Inputs))
		inZero := make([]bool, len(op.Inputs))
		for i, name := range op.Inputs {
			if name == InputName {
				in[i] = a.Input
			} else {
				in[i], inZero[i] = a.Shapes[name], zero[name]
			}
		}
		out, c, err := spec.infer(attrs(op.Attrs), in, ext)
		if err != nil {
			var oe *opErr
			if errors.As(err, &oe) {
				return nil, fmt.Errorf("%w: op %q (%s): %s", oe.kind, op.ID, op.Op, oe.msg)
			}
			return nil, fmt.Errorf("%w: op %q (%s): %v", ErrShape, op.ID, op.Op, err)
		}
		a.Shapes[id] = out
		zero[id] = spec.zero(attrs(op.Attrs), inZero)
		a.ParamCount = satAdd(a.ParamCount, c.params)
		a.FLOPsPerSample = satAdd(a.FLOPsPerSample, c.flops)
		if op.Op != OpLinear && op.Op != OpKron {
			a.Mergeable = false
		}
	}
	a.Output = a.Shapes[ir.Output]
	if want := host.OutputShape(); !a.Output.Equal(want) {
		return nil, fmt.Errorf("%w: output %q has shape %v, the %s host's output is %v", ErrShape, ir.Output, a.Output, host.Kind, want)
	}
	if !zero[ir.Output] {
		return nil, fmt.Errorf("%w: output %q can be non-zero at initialisation: end in an op with init %q (bias off or zeroed) or multiply by one", ErrNotZeroInit, ir.Output, InitZero)
	}
	if host.IsPair() {
		if err := checkWidening(ir, host, byID); err != nil {
			return nil, err
		}
		a.Mergeable = true
	}
	return a, nil
}

// validName reports whether s is an identifier: [A-Za-z_][A-Za-z0-9_]*, at
// most maxName bytes (usable as a torch ModuleDict key).
func validName(s string) bool {
	if s == "" || len(s) > maxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func checkHeader(ir *IR) error {
	if ir.Template != "" && !validName(ir.Template) {
		return fmt.Errorf("%w: template name %q is not an identifier of at most %d bytes", ErrInvalid, ir.Template, maxName)
	}
	for k, v := range ir.Params {
		if !validName(k) {
			return fmt.Errorf("%w: parameter name %q is not an identifier of at most %d bytes", ErrInvalid, k, maxName)
		}
		switch x := v.(type) {
		case string:
			if len(x) > maxParamString {
				return fmt.Errorf("%w: parameter %q is longer than %d bytes", ErrInvalid, k, maxParamString)
			}
		case bool:
		default:
			if _, ok := asInt(v); !ok {
				return fmt.Errorf("%w: parameter %q must be an integer, string or boolean, got %s", ErrInvalid, k, describe(v))
			}
		}
	}
	if len(ir.Ops) == 0 {
		return fmt.Errorf("%w: no ops", ErrGraph)
	}
	if len(ir.Ops) > MaxOps {
		return fmt.Errorf("%w: %d ops, limit %d", ErrGraph, len(ir.Ops), MaxOps)
	}
	return nil
}

// checkOps checks ids, op names, attributes, input references and the
// output, and returns the ops by id.
func checkOps(ir *IR) (map[string]*Op, error) {
	byID := make(map[string]*Op, len(ir.Ops))
	for i := range ir.Ops {
		op := &ir.Ops[i]
		if !validName(op.ID) || op.ID == InputName {
			return nil, fmt.Errorf("%w: op %d: id %q must be an identifier of at most %d bytes other than %q", ErrGraph, i, op.ID, maxName, InputName)
		}
		if _, dup := byID[op.ID]; dup {
			return nil, fmt.Errorf("%w: duplicate op id %q", ErrGraph, op.ID)
		}
		byID[op.ID] = op
		spec, ok := opTable[op.Op]
		if !ok {
			return nil, fmt.Errorf("%w: op %q: %q is not one of %s", ErrUnknownOp, op.ID, op.Op, strings.Join(OpNames(), ", "))
		}
		if len(op.Inputs) != spec.arity {
			return nil, fmt.Errorf("%w: op %q (%s) takes %d input(s), got %d", ErrGraph, op.ID, op.Op, spec.arity, len(op.Inputs))
		}
		if err := validateAttrs(op, spec); err != nil {
			return nil, err
		}
	}
	for i := range ir.Ops {
		op := &ir.Ops[i]
		for _, in := range op.Inputs {
			if in == op.ID {
				return nil, fmt.Errorf("%w: op %q takes its own output as input", ErrGraph, op.ID)
			}
			if _, ok := byID[in]; !ok && in != InputName {
				return nil, fmt.Errorf("%w: op %q: input %q is neither %q nor an op id", ErrGraph, op.ID, in, InputName)
			}
		}
	}
	if ir.Output == "" {
		return nil, fmt.Errorf("%w: output is not set", ErrGraph)
	}
	if _, ok := byID[ir.Output]; !ok {
		return nil, fmt.Errorf("%w: output %q is not an op id", ErrGraph, ir.Output)
	}
	return byID, nil
}

// topoOrder returns the op ids in a topological order (declaration order
// breaks ties), refusing cycles and ops that do not reach the output.
func topoOrder(ir *IR, byID map[string]*Op) ([]string, error) {
	indeg := make(map[string]int, len(ir.Ops))
	users := make(map[string][]string, len(ir.Ops))
	for _, op := range ir.Ops {
		for _, in := range op.Inputs {
			if in != InputName {
				indeg[op.ID]++
				users[in] = append(users[in], op.ID)
			}
		}
	}
	order := make([]string, 0, len(ir.Ops))
	done := make(map[string]bool, len(ir.Ops))
	for len(order) < len(ir.Ops) {
		progressed := false
		for _, op := range ir.Ops {
			if done[op.ID] || indeg[op.ID] > 0 {
				continue
			}
			done[op.ID] = true
			order = append(order, op.ID)
			for _, u := range users[op.ID] {
				indeg[u]--
			}
			progressed = true
		}
		if !progressed {
			var cyc []string
			for _, op := range ir.Ops {
				if !done[op.ID] {
					cyc = append(cyc, op.ID)
				}
			}
			sort.Strings(cyc)
			return nil, fmt.Errorf("%w: cycle among ops %s", ErrGraph, strings.Join(cyc, ", "))
		}
	}
	// Every op must reach the output: walk back from it.
	reach := map[string]bool{ir.Output: true}
	stack := []string{ir.Output}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, in := range byID[id].Inputs {
			if in != InputName && !reach[in] {
				reach[in] = true
				stack = append(stack, in)
			}
		}
	}
	for _, op := range ir.Ops {
		if !reach[op.ID] {
			return nil, fmt.Errorf("%w: op %q does not reach the output %q", ErrGraph, op.ID, ir.Output)
		}
	}
	return order, nil
}
