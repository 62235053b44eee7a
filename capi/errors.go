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

// Bounds of the error table: a caller cannot grow it without bound by
// failing calls on forged handles or from ever new threads.
const (
	// maxThreadErrors is the number of per-thread slots kept; the oldest
	// is forgotten first.
	maxThreadErrors = 1024
	// maxErrorMessage is the longest message kept, in bytes (longer ones
	// are cut, with a note).
	maxErrorMessage = 16 << 10
)

// errorTable holds the last error per live handle, and per OS thread for
// calls without a live handle (constructors, free functions, and calls on
// an unknown, forged or freed handle), so two threads never read each
// other's message. A live handle's slot goes when the handle is freed;
// thread slots are at most maxThreadErrors. So the table holds at most
// (live handles + maxThreadErrors) messages of at most maxErrorMessage
// bytes.
type errorTable struct {
	// mu guards the fields below.
	mu      sync.Mutex
	handles map[uint64]lastError
	threads map[uint64]lastError
	// order lists the keys of threads, oldest first.
	order []uint64
}

var lastErrors = newErrorTable()

func newErrorTable() *errorTable {
	return &errorTable{handles: make(map[uint64]lastError), threads: make(map[uint64]lastError)}
}

func thisThread() uint64 { return uint64(C.pthread_self()) }

// set records err for h when h is a live handle, else for the calling
// thread.
func (t *errorTable) set(h uint64, code errcode.Code, msg string) {
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage] + " [... message cut]"
	}
	e := lastError{code: code, msg: msg}
	if h != 0 && handles.live(h) {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.handles[h] = e
		return
	}
	t.setThread(thisThread(), e)
}

// setThread records e for thread id, forgetting the oldest thread slot
// when the table is full.
func (t *errorTable) setThread(id uint64, e lastError) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.threads[id]; !ok {
		if len(t.order) >= maxThreadErrors {
			delete(t.threads, t.order[0])
			t.order = append(t.order[:0], t.order[1:]...)
		}
		t.order = append(t.order, id)
	}
	t.threads[id] = e
}

// get returns the last error recorded for h (a live handle), or for the
// calling thread when h is 0 or not a live handle.
func (t *errorTable) get(h uint64) lastError {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h != 0 {
		if e, ok := t.handles[h]; ok {
			return e
		}
		if handles.live(h) {
			return lastError{}
		}
	}
	return t.threads[thisThread()]
}

// drop forgets the slot of a freed handle.
func (t *errorTable) drop(h uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.handles, h)
}

// size returns the number of slots held (handles, threads).
func (t *errorTable) size() (int, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.handles), len(t.threads)
}
