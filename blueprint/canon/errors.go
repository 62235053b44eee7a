package canon

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors. Their messages carry no package prefix because callers
// always wrap them with their own context ("blueprint: invalid document:
// host: JSON does not fit the schema: unknown field \"bias\""). Both have
// code errcode.Invalid.
var (
	// ErrSyntax is returned when a document is not acceptable JSON: a
	// syntax error, invalid UTF-8, trailing data, a duplicate object key, a
	// number out of float64 range or nesting deeper than MaxDepth.
	ErrSyntax = errcode.New(errcode.Invalid, "invalid JSON")
	// ErrSchema is returned by DecodeStrict when valid JSON does not fit the
	// target: an unknown field or a value of the wrong type.
	ErrSchema = errcode.New(errcode.Invalid, "JSON does not fit the schema")
)
