package recovery

import (
	"context"
	"errors"
	"syscall"

	"github.com/esper-morph/esper/core/errcode"
)

// Class is the recovery class of an error.
type Class int

const (
	// None is the class of a nil error.
	None Class = iota
	// Transient errors may succeed when retried: interrupted or would-block
	// system calls, a busy resource, timeouts, too many open files, and any
	// error marked with MarkTransient.
	Transient
	// Permanent errors fail the same way when retried: bad input, missing
	// objects, cancellation, and any error not otherwise classified.
	Permanent
	// Corrupt errors mean stored data failed verification (errcode.Corrupt):
	// retrying cannot help, and the data must not be used.
	Corrupt
)

// String returns the class name: "none", "transient", "permanent" or
// "corrupt".
func (c Class) String() string {
	switch c {
	case None:
		return "none"
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	case Corrupt:
		return "corrupt"
	}
	return "unknown"
}

// transientErrnos are the system errors worth retrying.
var transientErrnos = [...]syscall.Errno{
	syscall.EINTR, syscall.EAGAIN, syscall.EBUSY, syscall.ETIMEDOUT,
	syscall.ETXTBSY, syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS,
}

// transientError marks an error as transient.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// MarkTransient returns err marked as transient: Classify reports Transient
// for it (and for errors wrapping it) unless it is cancelled or corrupt.
// MarkTransient(nil) is nil.
func MarkTransient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// Classify returns the recovery class of err. Cancellation
// (context.Canceled, context.DeadlineExceeded, errcode.Cancelled) is always
// Permanent and corruption always Corrupt, whatever else the chain holds.
func Classify(err error) Class {
	if err == nil {
		return None
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Permanent
	}
	switch errcode.Of(err) {
	case errcode.Cancelled:
		return Permanent
	case errcode.Corrupt:
		return Corrupt
	}
	var te *transientError
	if errors.As(err, &te) {
		return Transient
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		for _, e := range transientErrnos {
			if errno == e {
				return Transient
			}
		}
		return Permanent
	}
	var to interface{ Timeout() bool }
	if errors.As(err, &to) && to.Timeout() {
		return Transient
	}
	return Permanent
}
