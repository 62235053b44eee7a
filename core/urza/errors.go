package urza

import (
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/safetensors"
)

// Sentinel errors; each returned error wraps one, with context. The stable
// code is in brackets.
var (
	// ErrNotFound is returned when no artifact has the id. [NOTFOUND]
	ErrNotFound = errcode.New(errcode.NotFound, "artifact not found")
	// ErrCorrupt is returned when stored data fails verification: a hash or
	// size mismatch, a missing weights file or an unreadable manifest.
	// [CORRUPT]
	ErrCorrupt = errcode.New(errcode.Corrupt, "artifact is corrupt")
	// ErrInvalidID is returned when an id is not 64 lowercase hex digits.
	// [INVALID]
	ErrInvalidID = errcode.New(errcode.Invalid, "invalid artifact id")
	// ErrInvalidManifest is returned by Put for a manifest that is malformed,
	// lacks a required field or contradicts the weights. [INVALID]
	ErrInvalidManifest = errcode.New(errcode.Invalid, "invalid manifest")
	// ErrInvalidWeights is returned by Put when the weights are not a
	// well-formed safetensors file. [INVALID]
	ErrInvalidWeights = safetensors.ErrInvalid
	// ErrInvalidQuery is returned by ParseQuery for a malformed query.
	// [INVALID]
	ErrInvalidQuery = errcode.New(errcode.Invalid, "invalid query")
	// ErrTooLarge is returned by Put when the weights exceed
	// Options.MaxWeights. [BUDGET]
	ErrTooLarge = errcode.New(errcode.Budget, "artifact too large")
	// ErrClosed is returned by every method after Close. [STATE]
	ErrClosed = errcode.New(errcode.State, "store is closed")
	// ErrCancelled is returned when Verify, GC or Reindex is cancelled
	// through its context. [CANCELLED]
	ErrCancelled = errcode.New(errcode.Cancelled, "cancelled")
	// ErrIO is returned when the operating system refuses a file operation;
	// the *fs.PathError stays in the chain. [IO]
	ErrIO = errcode.New(errcode.IO, "i/o error")
)
