package blueprint

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors. Every error this package returns wraps one of them; errcode.Of gives the stable code shown in brackets.
var (
	// ErrInvalid is returned when a document (IR, host, params, budget) is
	// malformed: bad JSON, an unknown field, a wrong type, an unsupported
	// version or an oversize document. [INVALID]
	ErrInvalid = errcode.New(errcode.Invalid, "blueprint: invalid document")
	// ErrUnknownOp is returned when an op names no entry of the op table.
	// [INVALID]
	ErrUnknownOp = errcode.New(errcode.Invalid, "blueprint: unknown op")
	// ErrAttr is returned when an op attribute is unknown, missing or has a
	// wrong type or value. [INVALID]
	ErrAttr = errcode.New(errcode.Invalid, "blueprint: invalid op attribute")
	// ErrGraph is returned when the op graph is malformed: a duplicate or bad
	// op id, a missing input, a cycle, a missing output or an op that does not
	// reach the output. [INVALID]
	ErrGraph = errcode.New(errcode.Invalid, "blueprint: invalid graph")
	// ErrShape is returned when shapes do not propagate (an op gets an input
	// it cannot take) or the output shape differs from the host's. [INVALID]
	ErrShape = errcode.New(errcode.Invalid, "blueprint: shape mismatch")
	// ErrHost is returned when a host description is malformed. [INVALID]
	ErrHost = errcode.New(errcode.Invalid, "blueprint: invalid host")
	// ErrNotZeroInit is returned when the output is not exactly zero at
	// initialisation. [INVALID]
	ErrNotZeroInit = errcode.New(errcode.Invalid, "blueprint: output not zero at initialisation")
	// ErrNotWidening is returned when a seed on a conv pair host is not a
	// widening of the pair (see Host.Kind HostConv2dPair). [INVALID]
	ErrNotWidening = errcode.New(errcode.Invalid, "blueprint: not a widening of the conv pair")
	// ErrUnknownTemplate is returned when a template name is not in the
	// library. [NOTFOUND]
	ErrUnknownTemplate = errcode.New(errcode.NotFound, "blueprint: unknown template")
	// ErrParam is returned when a template parameter is unknown, of the wrong
	// type or out of range. [INVALID]
	ErrParam = errcode.New(errcode.Invalid, "blueprint: invalid template parameter")
	// ErrUnsupportedHost is returned when a template does not support the
	// host's kind or layout. [INVALID]
	ErrUnsupportedHost = errcode.New(errcode.Invalid, "blueprint: template does not support host")
	// ErrOverBudget is returned by Check when a blueprint exceeds its
	// parameter or FLOP budget. [BUDGET]
	ErrOverBudget = errcode.New(errcode.Budget, "blueprint: over budget")
	// ErrNoMutation is returned by Mutate when the blueprint has no template
	// parameters to vary or no valid variant was found. [INVALID]
	ErrNoMutation = errcode.New(errcode.Invalid, "blueprint: no valid mutation")
)
