// Package errcode is the single source of truth for Esper's stable numeric
// error codes. The same table feeds the Go constants, the ESPER_E* values in
// capi/esper.h and the Python exception classes in python/esper/errors.py; a
// test in tests_go checks that the three agree.
//
// Packages of the core define their sentinel errors (errors.go in each
// package) and wrap them in a *Error carrying a Code with New or Wrap, or
// simply wrap one of the sentinels below with %w. Code(err) walks the chain
// and returns the first code found, so callers never match on strings.
//
// Everything here is immutable and safe for concurrent use.
package errcode
