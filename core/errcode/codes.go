package errcode

// Code is a stable numeric error code that crosses the C ABI. Values never
// change once released; new codes are appended.
type Code int32

// The codes, in ABI order. 0 means success.
const (
	// OK is success.
	OK Code = 0
	// Invalid is returned when an argument or input document is malformed.
	Invalid Code = 1
	// Handle is returned when a handle is unknown, freed or of the wrong kind.
	Handle Code = 2
	// State is returned when an operation is illegal in the current state
	// (for example an illegal seed lifecycle transition).
	State Code = 3
	// NotFound is returned when a named object does not exist.
	NotFound Code = 4
	// Corrupt is returned when stored data fails verification (hash mismatch,
	// truncation, malformed manifest).
	Corrupt Code = 5
	// IO is returned when the operating system refuses a file operation.
	IO Code = 6
	// Budget is returned when a constraint or budget refuses an operation.
	Budget Code = 7
	// Cancelled is returned when a long operation was cancelled by the caller.
	Cancelled Code = 8
	// Internal is returned when the core hit a bug, including a recovered panic.
	Internal Code = 9
	// Buffer is returned when a caller-provided buffer is too small.
	Buffer Code = 10
	// Unavailable is returned when an optional component is not available
	// (for example an open circuit breaker, or a missing runtime library).
	Unavailable Code = 11
)

// Entry describes one code: its value, the C name suffix (ESPER_E<Name>),
// the Python exception class and a one-line description.
type Entry struct {
	Code   Code
	Name   string
	Python string
	Doc    string
}

// Table lists every code in ABI order. It is the source of truth that the
// header and the Python package are checked against.
var Table = [...]Entry{
	{OK, "OK", "", "success"},
	{Invalid, "INVALID", "InvalidArgumentError", "an argument or input document is malformed"},
	{Handle, "HANDLE", "HandleError", "a handle is unknown, freed or of the wrong kind"},
	{State, "STATE", "StateError", "the operation is illegal in the current state"},
	{NotFound, "NOTFOUND", "NotFoundError", "the named object does not exist"},
	{Corrupt, "CORRUPT", "CorruptError", "stored data failed verification"},
	{IO, "IO", "StorageError", "a file operation failed"},
	{Budget, "BUDGET", "BudgetError", "a constraint or budget refused the operation"},
	{Cancelled, "CANCELLED", "CancelledError", "the operation was cancelled"},
	{Internal, "INTERNAL", "InternalError", "an internal error or recovered panic"},
	{Buffer, "BUFFER", "BufferError_", "a caller buffer is too small"},
	{Unavailable, "UNAVAILABLE", "UnavailableError", "a component is unavailable"},
}

// String returns the code's C name suffix, e.g. "INVALID".
func (c Code) String() string {
	if c >= 0 && int(c) < len(Table) {
		return Table[c].Name
	}
	return "UNKNOWN"
}
