package errcode

import (
	"errors"
	"fmt"
)

// Sentinel errors, one per code, for packages that have no more specific
// sentinel of their own. Wrap them with %w to attach a code.
var (
	// ErrInvalid is returned when an argument or document is malformed.
	ErrInvalid = &Error{Code: Invalid, Msg: "invalid argument"}
	// ErrHandle is returned when a handle is unknown or freed.
	ErrHandle = &Error{Code: Handle, Msg: "unknown handle"}
	// ErrState is returned when an operation is illegal in the current state.
	ErrState = &Error{Code: State, Msg: "illegal state"}
	// ErrNotFound is returned when a named object does not exist.
	ErrNotFound = &Error{Code: NotFound, Msg: "not found"}
	// ErrCorrupt is returned when stored data fails verification.
	ErrCorrupt = &Error{Code: Corrupt, Msg: "corrupt data"}
	// ErrIO is returned when a file operation fails.
	ErrIO = &Error{Code: IO, Msg: "i/o error"}
	// ErrBudget is returned when a budget or constraint refuses an operation.
	ErrBudget = &Error{Code: Budget, Msg: "over budget"}
	// ErrCancelled is returned when an operation was cancelled.
	ErrCancelled = &Error{Code: Cancelled, Msg: "cancelled"}
	// ErrInternal is returned for internal errors.
	ErrInternal = &Error{Code: Internal, Msg: "internal error"}
	// ErrBuffer is returned when a caller buffer is too small.
	ErrBuffer = &Error{Code: Buffer, Msg: "buffer too small"}
	// ErrUnavailable is returned when a component is unavailable.
	ErrUnavailable = &Error{Code: Unavailable, Msg: "unavailable"}
)

// Error is an error with a stable code. Packages define their own sentinels
// as *Error values so that errors.Is works and Code finds the code.
type Error struct {
	Code Code
	Msg  string
}

// Error implements error.
func (e *Error) Error() string { return e.Msg }

// New returns a new sentinel error with the given code and message.
func New(c Code, msg string) *Error { return &Error{Code: c, Msg: msg} }

// Errorf formats a message and wraps it so that Code(err) reports c.
func Errorf(c Code, format string, args ...any) error {
	return &wrapped{code: c, err: fmt.Errorf(format, args...)}
}

type wrapped struct {
	code Code
	err  error
}

func (w *wrapped) Error() string { return w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// Of returns the code carried by err: the first *Error or Errorf code found
// in its chain, Internal for an error with none, and OK for nil.
func Of(err error) Code {
	if err == nil {
		return OK
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch v := e.(type) {
		case *Error:
			return v.Code
		case *wrapped:
			return v.code
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				if c := Of(inner); c != Internal {
					return c
				}
			}
			return Internal
		}
	}
	return Internal
}
