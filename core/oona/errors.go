package oona

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors, each with a stable code from core/errcode.
var (
	// ErrConfig is returned when a bus or run log configuration is
	// malformed or out of range (a run id that is not a subject token, a
	// negative rank or buffer).
	ErrConfig = errcode.New(errcode.Invalid, "oona: bad config")

	// ErrEvent is returned when an event cannot be published: an unknown
	// kind or actor, or data that does not encode as a JSON object.
	ErrEvent = errcode.New(errcode.Invalid, "oona: bad event")

	// ErrClosed is returned by Publish, Subscribe and Flush after Close.
	ErrClosed = errcode.New(errcode.State, "oona: closed")

	// ErrTimeout is returned when Flush could not finish in time (the
	// writer is stuck on a slow disk); nothing is lost by it.
	ErrTimeout = errcode.New(errcode.Unavailable, "oona: timed out")

	// ErrIO is returned when the run log cannot be opened, written,
	// synced or rotated.
	ErrIO = errcode.New(errcode.IO, "oona: i/o error")
)
