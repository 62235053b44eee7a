package recovery

import "github.com/esper-morph/esper/core/errcode"

var (
	// ErrCancelled is returned by Retry when its context ends before the
	// operation succeeds; the context's error and the last failure are kept
	// in the chain. [CANCELLED]
	ErrCancelled = errcode.New(errcode.Cancelled, "recovery: cancelled")
	// ErrOpen is returned by Breakers.Do when the key's breaker is open (or
	// half-open with its probes in flight): the call was not made.
	// [UNAVAILABLE]
	ErrOpen = errcode.New(errcode.Unavailable, "recovery: circuit breaker open")
	// ErrConfig is returned when a Policy or Config is invalid. [INVALID]
	ErrConfig = errcode.New(errcode.Invalid, "recovery: invalid configuration")
)
