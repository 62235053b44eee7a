// Package onnxrt runs small ONNX models (float32 [batch, n] in, float32
// [batch, k] out) through ONNX Runtime, by way of
// github.com/yalue/onnxruntime_go.
//
// ONNX Runtime is a shared library (libonnxruntime.so) loaded with dlopen
// when the first model is needed, never at process start: everything else in
// Esper works without it. onnxruntime_go v1.27.0 asks the library for C API
// version 24, which ONNX Runtime 1.24 and later provide; `make onnxruntime`
// installs 1.24.1 (from the npm package onnxruntime-node) beside libesper.so.
//
// Thread safety: the library and its environment are process-wide (one per
// process, never unloaded: onnxruntime_go keeps them in package state, and
// unloading a library a running process used is unsafe), so Load initialises
// them once under a lock and later calls return the same Runtime. A Model may
// be run from many goroutines at once (ONNX Runtime's Run is thread-safe;
// every call has its own tensors); Close waits for the runs in flight.
package onnxrt

import (
	"errors"
	"fmt"
	"os"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// APIVersion is the ONNX Runtime C API version onnxruntime_go v1.27.0 asks
// for: the library must be ONNX Runtime 1.24 or later.
const APIVersion = 24

// ErrNoLibrary reports that the ONNX Runtime library file does not exist.
var ErrNoLibrary = errors.New("onnxruntime library not found")

// Runtime is the process's loaded ONNX Runtime. There is at most one.
type Runtime struct {
	path    string
	version string
}

// process holds the one Runtime of the process and the library path Load
// uses when given none. ONNX Runtime's environment is process-global state
// owned by onnxruntime_go; this lock and these fields only record whether
// (and from where) it was initialised, and where to find it: like the
// library itself, they are per process.
var process struct {
	mu      sync.Mutex
	rt      *Runtime
	library string
}

// SetDefaultLibrary sets the path Load uses when it is given "" (the C ABI
// sets it: the caller's ESPER_ONNXRUNTIME_LIB, else the file beside
// libesper.so). It does not change an already loaded Runtime.
func SetDefaultLibrary(path string) {
	process.mu.Lock()
	defer process.mu.Unlock()
	process.library = path
}

// DefaultLibrary is the path Load uses when it is given "" ("" when none
// was set).
func DefaultLibrary() string {
	process.mu.Lock()
	defer process.mu.Unlock()
	return process.library
}

// Load loads the ONNX Runtime library at path ("" means DefaultLibrary) and
// initialises its environment, once per process. A later call returns the same Runtime when
// path names the same file, and an error when it names another (a process
// cannot hold two ONNX Runtimes). A failed load leaves nothing loaded, so a
// later call may try another path.
func Load(path string) (*Runtime, error) {
	process.mu.Lock()
	defer process.mu.Unlock()
	if path == "" {
		path = process.library
	}
	if rt := process.rt; rt != nil {
		if same(rt.path, path) {
			return rt, nil
		}
		return nil, fmt.Errorf("onnxrt: load %s: this process already loaded ONNX Runtime from %s, and a process holds one", path, rt.path)
	}
	if path == "" {
		return nil, fmt.Errorf("onnxrt: load: no library path given and no default set: %w", ErrNoLibrary)
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("onnxrt: load %s: %w", path, ErrNoLibrary)
		}
		return nil, fmt.Errorf("onnxrt: load %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("onnxrt: load %s: a directory, not a shared library", path)
	}
	ort.SetSharedLibraryPath(path)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		// GetVersion is filled in as soon as the library's API base was found,
		// so an ONNX Runtime too old for C API 24 names its version here.
		if v := ort.GetVersion(); v != "" {
			return nil, fmt.Errorf("onnxrt: load %s (ONNX Runtime %s; C API %d, ONNX Runtime >= 1.24, is needed): %w", path, v, APIVersion, err)
		}
		return nil, fmt.Errorf("onnxrt: load %s: %w", path, err)
	}
	process.rt = &Runtime{path: path, version: ort.GetVersion()}
	return process.rt, nil
}

// Loaded returns the process's Runtime, or nil when none was loaded.
func Loaded() *Runtime {
	process.mu.Lock()
	defer process.mu.Unlock()
	return process.rt
}

// Path is the file the library was loaded from.
func (r *Runtime) Path() string { return r.path }

// Version is ONNX Runtime's version string (e.g. "1.24.1").
func (r *Runtime) Version() string { return r.version }

// same reports whether a and b name the same file (paths may differ).
func same(a, b string) bool {
	if a == b {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}
