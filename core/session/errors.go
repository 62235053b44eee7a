package session

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors, each with a stable code from core/errcode. Errors from
// the packages a session drives (lifecycle, nissa, tamiyo, blueprint) are
// wrapped with their own codes intact.
var (
	// ErrConfig is returned when a session configuration is malformed or
	// out of range.
	ErrConfig = errcode.New(errcode.Invalid, "session: bad config")

	// ErrArgument is returned when an argument is out of range: a layer or
	// slot index, a negative step count, a signals buffer of the wrong
	// length, a failure kind, a malformed blueprint or metrics document.
	ErrArgument = errcode.New(errcode.Invalid, "session: bad argument")

	// ErrAlphaBuffer is returned when the alphas buffer is shorter than
	// layers x slots_per_layer.
	ErrAlphaBuffer = errcode.New(errcode.Buffer, "session: alphas buffer too small")

	// ErrSeedState is returned when an operation does not apply to a seed
	// in its current state (advancing a dormant seed, a failure reported
	// for a dormant slot, an epoch that already ended).
	ErrSeedState = errcode.New(errcode.State, "session: operation illegal in this state")

	// ErrSnapshot is returned when a snapshot cannot be restored: malformed,
	// of another version, inconsistent, or for other layers.
	ErrSnapshot = errcode.New(errcode.Invalid, "session: bad snapshot")

	// ErrClosed is returned by every method after Close.
	ErrClosed = errcode.New(errcode.State, "session: closed")
)
