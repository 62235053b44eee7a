/*
 * esper.h - the C ABI of libesper, the Go core of Esper.
 *
 * This header is written by hand and is the contract. The header cgo emits
 * during the build is an artifact, not documentation.
 *
 * Conventions (every export follows them):
 *   - Every function returns int (0 = ok, otherwise one of ESPER_E*) unless
 *     documented otherwise, and writes results through out-pointers. A NULL
 *     out-pointer is ESPER_EINVAL, never a crash.
 *   - Objects are opaque non-zero uint64_t handles. Each esper_X_new/open has
 *     an esper_X_free/close; freeing 0 is a no-op; an unknown or freed
 *     handle gives ESPER_EHANDLE.
 *   - Inputs are copied on entry; the caller keeps ownership of every
 *     pointer it passes and may free it when the call returns.
 *   - Returned strings (NUL-terminated, usually JSON) and byte buffers are
 *     allocated by the library and released with esper_free.
 *   - After a failure, esper_last_error(handle, ...) returns the code and a
 *     message. Calls on a handle keep their error per handle; calls without
 *     one (constructors, free functions) keep it per calling thread (pass 0).
 *   - A Go panic inside an export is recovered and returned as
 *     ESPER_EINTERNAL with its message; the process lives on.
 *   - Exports are safe to call from several threads at once.
 */
#ifndef ESPER_H
#define ESPER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header; esper_abi_version() must return the same value. */
#define ESPER_ABI_VERSION 1

/* Status codes (source of truth: core/errcode/codes.go). */
#define ESPER_OK 0
#define ESPER_EINVALID 1     /* an argument or input document is malformed */
#define ESPER_EHANDLE 2      /* a handle is unknown, freed or of the wrong kind */
#define ESPER_ESTATE 3       /* the operation is illegal in the current state */
#define ESPER_ENOTFOUND 4    /* the named object does not exist */
#define ESPER_ECORRUPT 5     /* stored data failed verification */
#define ESPER_EIO 6          /* a file operation failed */
#define ESPER_EBUDGET 7      /* a constraint or budget refused the operation */
#define ESPER_ECANCELLED 8   /* the operation was cancelled */
#define ESPER_EINTERNAL 9    /* an internal error or recovered panic */
#define ESPER_EBUFFER 10     /* a caller buffer is too small */
#define ESPER_EUNAVAILABLE 11 /* a component is unavailable */

/* ------------------------------------------------------------------------ */
/* Library                                                                   */
/* ------------------------------------------------------------------------ */

/* Returns ESPER_ABI_VERSION of the library (no status code). */
int32_t esper_abi_version(void);

/* Writes a JSON object {version, commit, abi_version, go_version, goos,
 * goarch, gomaxprocs, pid} to *out (free with esper_free). */
int esper_build_info(char **out);

/* Applies runtime settings from a JSON object (NULL = defaults):
 * {"max_procs": int (GOMAXPROCS, 0 = keep), "max_threads": int (>= 8,
 * 0 = keep), "log_level": "debug"|"info"|"warn"|"error"}. Unknown keys are
 * ESPER_EINVALID. May be called again to change the settings. */
int esper_init(const char *settings_json);

/* Releases a string or buffer returned by the library. NULL is a no-op. */
void esper_free(void *p);

/* Returns the code of the last error on handle (or on the calling thread
 * when handle is 0) and copies its message, NUL-terminated and truncated to
 * capacity, into buf (may be NULL). *needed (may be NULL) receives the
 * buffer size the whole message needs, NUL included. Returns ESPER_OK and an
 * empty message when nothing failed. */
int32_t esper_last_error(uint64_t handle, char *buf, size_t capacity, size_t *needed);

/* Cancels the long operations in flight on handle (they return
 * ESPER_ECANCELLED); later operations run normally. */
int esper_cancel(uint64_t handle);

/* Does nothing and returns ESPER_OK: measures the cost of a call. */
int esper_noop(void);

/* Sums n floats at data into *out (compensated sum): measures the
 * throughput of a batched call and checks what arrived. NaN input is
 * ESPER_EINVALID. */
int esper_checksum_f32(const float *data, size_t n, double *out);

/* Test support: panics inside the export (in_goroutine = 0) or inside a
 * goroutine it starts (in_goroutine != 0). Always returns ESPER_EINTERNAL
 * with the panic's message: it proves that panics never reach the caller. */
int esper_test_panic(int32_t in_goroutine);

/* @@ sections below are owned by their components; keep each delimited. */

#ifdef __cplusplus
}
#endif

#endif /* ESPER_H */
