package urza

import "sync/atomic"

// Operation counts of a Store, for metrics (core/metrics reads them).

// Op names a counted store operation.
type Op int

// The counted operations.
const (
	OpPut Op = iota
	OpGet
	OpPutOutcome
	OpDelete
	OpList
	OpPutExperience
	numOps
)

var opNames = [numOps]string{"put", "get", "put_outcome", "delete", "list", "put_experience"}

// String returns the operation's name: "put", "get", "put_outcome",
// "delete", "list" or "put_experience".
func (o Op) String() string { return opNames[o] }

// Ops lists the counted operations.
var Ops = []Op{OpPut, OpGet, OpPutOutcome, OpDelete, OpList, OpPutExperience}

// OpCount is how many times one operation ran, and how many of those
// returned an error.
type OpCount struct {
	Calls  uint64 `json:"calls"`
	Errors uint64 `json:"errors"`
}

// opCounters are a store's counters (atomics: no lock).
type opCounters struct {
	calls, errors [numOps]atomic.Uint64
}

// count records one call of op that returned *err (deferred by the
// operation).
func (c *opCounters) count(op Op, err *error) {
	c.calls[op].Add(1)
	if *err != nil {
		c.errors[op].Add(1)
	}
}

// OpStats returns the operation counts of this Store (this process's
// calls through it), by operation.
func (s *Store) OpStats() map[Op]OpCount {
	out := make(map[Op]OpCount, numOps)
	for _, op := range Ops {
		out[op] = OpCount{Calls: s.ops.calls[op].Load(), Errors: s.ops.errors[op].Load()}
	}
	return out
}

// OpenBreakers returns the number of the store's circuit breakers that are
// open now (artifacts whose loads keep failing).
func (s *Store) OpenBreakers() int { return len(s.breakers.Open()) }
