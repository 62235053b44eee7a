package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/esper-morph/esper/core/errcode"
)

// handleEntry is one live object behind an opaque handle, with the context
// that long operations on it run under (replaced on every esper_cancel).
type handleEntry struct {
	value  any
	ctx    context.Context
	cancel context.CancelFunc
}

// handleTable maps opaque non-zero handles to Go objects. runtime/cgo.Handle
// panics on an unknown value; this table returns an error instead, which is
// what the ABI promises for freed or forged handles.
type handleTable struct {
	// mu guards next and entries.
	mu      sync.Mutex
	next    uint64
	entries map[uint64]*handleEntry
}

// handles is the process's one handle table: the C ABI is process-wide by
// nature, so this is the single piece of package-level state besides errors.
var handles = &handleTable{entries: make(map[uint64]*handleEntry)}

// add stores v and returns its new handle (never 0, never reused).
func (t *handleTable) add(v any) uint64 {
	ctx, cancel := context.WithCancel(context.Background())
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.entries[t.next] = &handleEntry{value: v, ctx: ctx, cancel: cancel}
	return t.next
}

// remove deletes h and returns its value; ok is false for an unknown handle.
func (t *handleTable) remove(h uint64) (any, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[h]
	if !ok {
		return nil, false
	}
	delete(t.entries, h)
	e.cancel()
	return e.value, true
}

// count returns the number of live handles.
func (t *handleTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// live reports whether h is a handle in the table now.
func (t *handleTable) live(h uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.entries[h]
	return ok
}

// context returns the context long operations on h should run under.
func (t *handleTable) context(h uint64) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[h]; ok {
		return e.ctx
	}
	return context.Background()
}

// cancel cancels the operations in flight on h and arms a fresh context for
// the operations that follow.
func (t *handleTable) cancelOps(h uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[h]
	if !ok {
		return fmt.Errorf("cancel: handle %d is unknown or freed: %w", h, errcode.ErrHandle)
	}
	e.cancel()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return nil
}

// lookup returns the object behind h if it exists and has type T.
func lookup[T any](h uint64) (T, error) {
	var zero T
	if h == 0 {
		return zero, fmt.Errorf("handle 0 is not a valid %T: %w", zero, errcode.ErrHandle)
	}
	handles.mu.Lock()
	e, ok := handles.entries[h]
	handles.mu.Unlock()
	if !ok {
		return zero, fmt.Errorf("handle %d is unknown or freed: %w", h, errcode.ErrHandle)
	}
	v, ok := e.value.(T)
	if !ok {
		return zero, fmt.Errorf("handle %d holds a %T, not a %T: %w", h, e.value, zero, errcode.ErrHandle)
	}
	return v, nil
}

// free removes h if it holds a T, calling closeFn on it. Freeing 0 is a no-op.
func free[T any](h uint64, closeFn func(T) error) error {
	if h == 0 {
		return nil
	}
	if _, err := lookup[T](h); err != nil {
		return err
	}
	v, ok := handles.remove(h)
	if !ok {
		return fmt.Errorf("handle %d is unknown or freed: %w", h, errcode.ErrHandle)
	}
	if closeFn != nil {
		return closeFn(v.(T))
	}
	return nil
}
