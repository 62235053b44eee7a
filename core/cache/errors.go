package cache

import "github.com/esper-morph/esper/core/errcode"

var (
	// ErrMiss is returned by Get when no entry has the id. [NOTFOUND]
	ErrMiss = errcode.New(errcode.NotFound, "cache: miss")
	// ErrIncompatible is returned by Get when the entry exists but does not
	// fit what the caller wants (shape, dtype or device); the message says
	// which. [NOTFOUND]
	ErrIncompatible = errcode.New(errcode.NotFound, "cache: incompatible entry")
	// ErrTooLarge is returned by Put when an entry alone exceeds the byte
	// bound. [BUDGET]
	ErrTooLarge = errcode.New(errcode.Budget, "cache: entry larger than the cache")
	// ErrInvalid is returned for invalid arguments or metadata. [INVALID]
	ErrInvalid = errcode.New(errcode.Invalid, "cache: invalid argument")
)
