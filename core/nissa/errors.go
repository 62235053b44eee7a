package nissa

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors, each with a stable code from core/errcode.
var (
	// ErrLayout is returned when a signals buffer does not have the length
	// the layout requires (2 + 6 * layers floats) or when steps go
	// backwards.
	ErrLayout = errcode.New(errcode.Invalid, "nissa: bad signals buffer")

	// ErrConfig is returned when a Config is out of range.
	ErrConfig = errcode.New(errcode.Invalid, "nissa: bad config")

	// ErrState is returned when a saved State cannot be restored
	// (inconsistent sizes or values).
	ErrState = errcode.New(errcode.Invalid, "nissa: bad saved state")

	// ErrMetric is returned when a metric's JSON is neither a number, null,
	// nor one of the non-finite spellings.
	ErrMetric = errcode.New(errcode.Invalid, "nissa: bad metric value")

	// ErrLogWrite is returned when the logger's writer fails.
	ErrLogWrite = errcode.New(errcode.IO, "nissa: log write failed")
)
