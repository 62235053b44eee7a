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
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"unsafe"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

// abiVersion is bumped whenever a package and a library built apart could no
// longer work together, added exports included (an older library lacks them).
// It must equal ESPER_ABI_VERSION in esper.h and ABI_VERSION in
// python/esper/_lib.py.
const abiVersion = 7

// version is the release version, set at link time from the VERSION file
// (-ldflags "-X main.version=...").
var version = "dev"

// commit is the source commit, set at link time.
var commit = "unknown"

//export esper_abi_version
func esper_abi_version() C.int32_t { return abiVersion }

//export esper_build_info
func esper_build_info(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		info := map[string]any{
			"version":     version,
			"commit":      commit,
			"abi_version": abiVersion,
			"go_version":  runtime.Version(),
			"goos":        runtime.GOOS,
			"goarch":      runtime.GOARCH,
			"gomaxprocs":  runtime.GOMAXPROCS(0),
			"pid":         os.Getpid(),
			"nats":        natsBuilt,
		}
		b, err := json.Marshal(info)
		if err != nil {
			return fmt.Errorf("build info: %w", err)
		}
		setString(out, string(b))
		return nil
	})
}

//export esper_runtime_stats
func esper_runtime_stats(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		sched := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
		metrics.Read(sched)
		created := uint64(0)
		if sched[0].Value.Kind() == metrics.KindUint64 {
			created = sched[0].Value.Uint64()
		}
		return setJSON(out, map[string]any{
			"heap_alloc":         m.HeapAlloc,
			"heap_inuse":         m.HeapInuse,
			"heap_sys":           m.HeapSys,
			"heap_objects":       m.HeapObjects,
			"sys":                m.Sys,
			"num_gc":             m.NumGC,
			"mallocs":            m.Mallocs,
			"goroutines":         runtime.NumGoroutine(),
			"goroutines_created": created,
			"handles":            handles.count(),
		})
	})
}

// initSettings are the runtime settings esper_init accepts. Zero values mean
// "leave as is".
type initSettings struct {
	// MaxProcs caps the OS threads running Go code at once (GOMAXPROCS), so
	// the core does not fight PyTorch's threads. 0 keeps the current value.
	MaxProcs int `json:"max_procs"`
	// MaxThreads caps the total number of OS threads the Go runtime may
	// create (debug.SetMaxThreads). 0 keeps Go's default.
	MaxThreads int `json:"max_threads"`
	// LogLevel is one of "debug", "info", "warn", "error" ("" keeps "warn").
	LogLevel string `json:"log_level"`
	// EsperHome replaces $ESPER_HOME for the default Urza store
	// ($ESPER_HOME/urza; "" means ~/.esper). Go copies the environment when
	// the library is loaded, so a value the caller's language set later is
	// passed here. Absent (null) keeps the current setting, which starts as
	// the environment's.
	EsperHome *string `json:"esper_home"`
	// OnnxruntimeLib is the ONNX Runtime library the ONNX runtime of
	// esper_nn_open loads (the caller's $ESPER_ONNXRUNTIME_LIB); absent,
	// null or "" keeps the current one, which starts as libonnxruntime.so.1
	// beside libesper.so.
	OnnxruntimeLib *string `json:"onnxruntime_lib"`
	// Env holds the caller's current values of the environment variables
	// named AWS_* and ESPER_* (ESPER_URZA_URL, ESPER_S3_ENDPOINT, the S3
	// credentials), which Go reads when a store is opened but copied at
	// load. Absent (null) leaves Go's environment alone; a map replaces
	// those variables: each listed one is set, each other AWS_*/ESPER_*
	// one is unset.
	Env map[string]string `json:"env"`
}

// syncedEnvPrefixes are the families of variables Env mirrors.
var syncedEnvPrefixes = [...]string{"AWS_", "ESPER_"}

func syncedEnvName(name string) bool {
	for _, p := range syncedEnvPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// syncEnv makes Go's copy of the AWS_*/ESPER_* variables equal to env,
// touching only those that differ.
func syncEnv(env map[string]string) error {
	for name := range env {
		if !syncedEnvName(name) || strings.ContainsAny(name, "=\x00") {
			return fmt.Errorf("init: env: %q is not an AWS_* or ESPER_* variable name: %w", name, errcode.ErrInvalid)
		}
		if strings.ContainsRune(env[name], 0) {
			return fmt.Errorf("init: env: %s contains NUL: %w", name, errcode.ErrInvalid)
		}
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, keep := env[name]; !keep && syncedEnvName(name) {
			if err := os.Unsetenv(name); err != nil {
				return fmt.Errorf("init: env: unset %s: %w", name, err)
			}
		}
	}
	for name, v := range env {
		if cur, ok := os.LookupEnv(name); !ok || cur != v {
			if err := os.Setenv(name, v); err != nil {
				return fmt.Errorf("init: env: set %s: %w", name, err)
			}
		}
	}
	return nil
}

// homeMu guards esperHome.
var homeMu sync.Mutex

// esperHome is the ESPER_HOME given to esper_init; nil: none given, the
// environment's (as copied at load) applies.
var esperHome *string

// defaultUrzaRoot returns the default store: $ESPER_URZA_URL when set (an
// s3:// URL or a directory), else the root under the ESPER_HOME given to
// esper_init, or the environment's when none was given.
func defaultUrzaRoot() (string, error) {
	if u := os.Getenv(urza.EnvURL); u != "" {
		return u, nil
	}
	homeMu.Lock()
	home := esperHome
	homeMu.Unlock()
	if home == nil {
		return urza.DefaultRoot()
	}
	return urza.RootUnder(*home)
}

// modelCacheDir returns where rolling deployments materialise the model
// versions they load from Urza: models/ under the ESPER_HOME given to
// esper_init (or the environment's; "" means ~/.esper).
func modelCacheDir() (string, error) {
	homeMu.Lock()
	home := esperHome
	homeMu.Unlock()
	h := os.Getenv("ESPER_HOME")
	if home != nil {
		h = *home
	}
	root, err := urza.RootUnder(h)
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(root), "models"), nil
}

//export esper_init
func esper_init(settingsJSON *C.char) C.int {
	return call(0, func() error {
		var s initSettings
		if settingsJSON != nil {
			if err := canon.DecodeStrict([]byte(C.GoString(settingsJSON)), &s); err != nil {
				return fmt.Errorf("init: settings: %v: %w", err, errcode.ErrInvalid)
			}
		}
		if s.MaxProcs < 0 || s.MaxThreads < 0 {
			return fmt.Errorf("init: max_procs and max_threads must be >= 0: %w", errcode.ErrInvalid)
		}
		if s.MaxThreads != 0 && s.MaxThreads < 8 {
			return fmt.Errorf("init: max_threads %d is below the runtime's minimum of 8: %w", s.MaxThreads, errcode.ErrInvalid)
		}
		var level slog.Level
		switch strings.ToLower(s.LogLevel) {
		case "debug":
			level = slog.LevelDebug
		case "info":
			level = slog.LevelInfo
		case "", "warn", "warning":
			level = slog.LevelWarn
		case "error":
			level = slog.LevelError
		default:
			return fmt.Errorf("init: log_level %q is not one of debug, info, warn, error: %w", s.LogLevel, errcode.ErrInvalid)
		}
		if s.Env != nil {
			if err := syncEnv(s.Env); err != nil {
				return err
			}
		}
		if s.MaxProcs > 0 {
			runtime.GOMAXPROCS(s.MaxProcs)
		}
		if s.MaxThreads > 0 {
			debug.SetMaxThreads(s.MaxThreads)
		}
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
		if s.OnnxruntimeLib != nil {
			setOnnxruntimeLib(*s.OnnxruntimeLib)
		} else {
			setOnnxruntimeLib("")
		}
		if s.EsperHome != nil {
			home := *s.EsperHome
			homeMu.Lock()
			esperHome = &home
			homeMu.Unlock()
		}
		return nil
	})
}

//export esper_free
func esper_free(p unsafe.Pointer) {
	if p != nil {
		C.free(p)
	}
}

//export esper_last_error
func esper_last_error(h C.uint64_t, buf *C.char, capacity C.size_t, needed *C.size_t) (code C.int32_t) {
	// The one export that does not go through call (it reads what call
	// recorded), so it recovers on its own: a bad pointer must not abort the
	// process.
	defer func() {
		if r := recover(); r != nil {
			slog.Error("esper_last_error: recovered panic", "panic", r)
			code = C.int32_t(errcode.Internal)
		}
	}()
	e := lastErrors.get(uint64(h))
	msg := e.msg
	if needed != nil {
		*needed = C.size_t(len(msg) + 1)
	}
	if buf != nil && capacity > 0 {
		// Write at most len(msg)+1 bytes: capacity is only a limit (a
		// capacity of SIZE_MAX is never turned into a slice length).
		n := uint64(len(msg))
		if uint64(capacity)-1 < n {
			n = uint64(capacity) - 1
		}
		dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), n+1)
		copy(dst, msg[:n])
		dst[n] = 0
	}
	return C.int32_t(e.code)
}

//export esper_cancel
func esper_cancel(h C.uint64_t) C.int {
	return call(uint64(h), func() error { return handles.cancelOps(uint64(h)) })
}

//export esper_noop
func esper_noop() C.int { return 0 }

//export esper_checksum_f32
func esper_checksum_f32(data *C.float, n C.size_t, out *C.double) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		if data == nil && n > 0 {
			return errNull("data")
		}
		// Kahan summation so the figure is exact enough to check in tests.
		var sum, comp float64
		for _, v := range float32s(data, n) {
			y := float64(v) - comp
			t := sum + y
			comp = (t - sum) - y
			sum = t
		}
		if math.IsNaN(sum) {
			return fmt.Errorf("checksum: input holds NaN: %w", errcode.ErrInvalid)
		}
		*out = C.double(sum)
		return nil
	})
}
