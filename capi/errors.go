package main

/*
#include <pthread.h>
*/
import "C"

import (
	"sync"

	"github.com/esper-morph/esper/core/errcode"
)

// lastError is the code and text of the most recent failure.
type lastError struct {
	code errcode.Code
	msg  string
}

// errorKey names a slot: calls on a handle keep their error per handle;
// calls without one (constructors, free functions) keep it per OS thread,
// so two threads never read each other's message.
type errorKey struct {
	handle uint64
	thread uint64
}

// errorTable holds the last error per handle (and per thread for handle 0).
type errorTable struct {
	// mu guards slots.
	mu    sync.Mutex
	slots map[errorKey]lastError
}

var lastErrors = &errorTable{slots: make(map[errorKey]lastError)}

func keyFor(h uint64) errorKey {
	if h != 0 {
		return errorKey{handle: h}
	}
	return errorKey{thread: uint64(C.pthread_self())}
}

// set records err for h (or the calling thread when h is 0).
func (t *errorTable) set(h uint64, code errcode.Code, msg string) {
	k := keyFor(h)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.slots[k] = lastError{code: code, msg: msg}
}

// get returns the last error recorded for h (or the calling thread).
func (t *errorTable) get(h uint64) lastError {
	k := keyFor(h)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slots[k]
}

// drop forgets the slot of a freed handle.
func (t *errorTable) drop(h uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.slots, errorKey{handle: h})
}
