package main

/*
#include <stdlib.h>
#include <stdint.h>
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"unsafe"

	"github.com/esper-morph/esper/core/errcode"
)

// call runs fn as the body of an export on handle h (0 when the export has
// none): a panic becomes an INTERNAL error with its message, any error is
// recorded as h's last error, and the stable code is returned. Every export
// goes through call (XGBoost's API_BEGIN/API_END, in Go).
func call(h uint64, fn func() error) (rc C.int) {
	defer func() {
		if r := recover(); r != nil {
			msg := fmt.Sprintf("esper: internal error (recovered panic): %v", r)
			slog.Error(msg, "stack", string(debug.Stack()))
			lastErrors.set(h, errcode.Internal, msg)
			rc = C.int(errcode.Internal)
		}
	}()
	err := fn()
	if err == nil {
		return 0
	}
	code := errcode.Of(err)
	lastErrors.set(h, code, err.Error())
	return C.int(code)
}

// goSafe runs fn in a goroutine with a recover, sending a panic as an error
// on the returned channel (nil when fn returns normally).
func goSafe(fn func() error) <-chan error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- errcode.Errorf(errcode.Internal, "esper: internal error (recovered panic in goroutine): %v", r)
			}
		}()
		done <- fn()
	}()
	return done
}

// errNull reports a NULL pointer argument by name.
func errNull(name string) error {
	return fmt.Errorf("%s must not be NULL: %w", name, errcode.ErrInvalid)
}

// goString copies a C string argument, refusing NULL.
func goString(p *C.char, name string) (string, error) {
	if p == nil {
		return "", errNull(name)
	}
	return C.GoString(p), nil
}

// optString copies a C string that may be NULL ("" then).
func optString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// viewBytes returns the n bytes at p as a slice without copying, for use
// during the call only (callees copy what they keep); NULL with n > 0 is an
// error.
func viewBytes(p *C.uint8_t, n C.size_t, name string) ([]byte, error) {
	if n == 0 {
		return []byte{}, nil
	}
	if p == nil {
		return nil, errNull(name)
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)), nil
}

// setJSON marshals v into a malloc'd string in *out; the caller frees it
// with esper_free.
func setJSON(out **C.char, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	*out = (*C.char)(C.CBytes(append(b, 0))) // one copy, NUL-terminated; freed with esper_free
	return nil
}

// setAppended stores in *out, as setJSON does, the JSON that appendJSON
// appends (a hand encoder that writes what json.Marshal would, without its
// reflection).
func setAppended(out **C.char, appendJSON func([]byte) ([]byte, error)) error {
	b, err := appendJSON(make([]byte, 0, 2048))
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	*out = (*C.char)(C.CBytes(append(b, 0))) // one copy, NUL-terminated; freed with esper_free
	return nil
}

// setString stores a malloc'd copy of s in *out; the caller frees it with
// esper_free.
func setString(out **C.char, s string) {
	*out = C.CString(s)
}

// setBytes stores a malloc'd copy of b in *out and its length in *n; the
// caller frees *out with esper_free.
func setBytes(out **C.uint8_t, n *C.size_t, b []byte) {
	*n = C.size_t(len(b))
	if len(b) == 0 {
		*out = (*C.uint8_t)(C.malloc(1))
		return
	}
	*out = (*C.uint8_t)(C.CBytes(b))
}

// float32s views n floats at p without copying, for the duration of a call.
func float32s(p *C.float, n C.size_t) []float32 {
	if p == nil || n == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), int(n))
}

// queryJSON runs query on the object of type H behind h and writes its result
// as JSON to *out (released by the caller with esper_free); outName names the
// out-pointer in the NULL error.
func queryJSON[H any, T any](h C.uint64_t, out **C.char, outName string, query func(H) (T, error)) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull(outName)
		}
		v, err := lookup[H](uint64(h))
		if err != nil {
			return err
		}
		res, err := query(v)
		if err != nil {
			return err
		}
		return setJSON(out, res)
	})
}
