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
#define ESPER_ABI_VERSION 7

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
 * goarch, gomaxprocs, pid, nats} to *out (free with esper_free). "nats" is
 * false in a library built without the NATS client (go build -tags
 * esper_nonats, make nonats-lib): there esper_oona_new with a "nats"
 * section, esper_oona_measure_nats and esper_oona_follow_* return
 * ESPER_EUNAVAILABLE, saying so. */
int esper_build_info(char **out);

/* Applies runtime settings from a JSON object (NULL = defaults):
 * {"max_procs": int (GOMAXPROCS, 0 = keep), "max_threads": int (>= 8,
 * 0 = keep), "log_level": "debug"|"info"|"warn"|"error", "esper_home":
 * string (replaces $ESPER_HOME for the default Urza store, "" = ~/.esper;
 * absent or null = keep; Go copies the environment at load, so a value set
 * later by the caller is passed here), "onnxruntime_lib": string (the ONNX
 * Runtime library esper_nn_open's "onnx" runtime loads, the caller's
 * $ESPER_ONNXRUNTIME_LIB; absent, null or "" = keep, which starts as
 * libonnxruntime.so.1 in the folder of libesper.so), "env": {name: value}
 * (the caller's current AWS_* and ESPER_* variables, read when a store is opened: each
 * listed one is set in Go's copy of the environment, every other AWS_* and
 * ESPER_* one is unset; absent or null = keep; a name outside those two
 * families is ESPER_EINVALID)}. Unknown keys are ESPER_EINVALID. May be
 * called again to change the settings. */
int esper_init(const char *settings_json);

/* Releases a string or buffer returned by the library. NULL is a no-op. */
void esper_free(void *p);

/* Returns the code of the last error on handle (or on the calling thread
 * when handle is 0 or not a live handle: a failed call on an unknown, forged
 * or freed handle records its error for the calling thread) and copies its
 * message, NUL-terminated and truncated to capacity, into buf (may be NULL;
 * at most strlen(message)+1 bytes are written, whatever capacity says).
 * *needed (may be NULL) receives the buffer size the whole message needs,
 * NUL included. Returns ESPER_OK and an empty message when nothing failed.
 * The library keeps one message per live handle and per thread (the 1024
 * most recent threads), each cut at 16 KiB: failing calls cannot grow it. */
int32_t esper_last_error(uint64_t handle, char *buf, size_t capacity, size_t *needed);

/* Cancels the long operations in flight on handle (they return
 * ESPER_ECANCELLED); later operations run normally. */
int esper_cancel(uint64_t handle);

/* Writes the Go runtime's memory figures as JSON to *out_json (free with
 * esper_free): {"heap_alloc", "heap_inuse", "heap_sys", "heap_objects",
 * "sys" (bytes Go obtained from the OS), "num_gc", "goroutines", "handles"
 * (live handles)}. Reading them stops the world briefly (tens of
 * microseconds): for monitoring, not for the training loop. */
int esper_runtime_stats(char **out_json);

/* Does nothing and returns ESPER_OK: measures the cost of a call. */
int esper_noop(void);

/* Sums n floats at data into *out (compensated sum): measures the
 * throughput of a batched call and checks what arrived. NaN input is
 * ESPER_EINVALID. */
int esper_checksum_f32(const float *data, size_t n, double *out);

#ifdef ESPER_TEST_LIBRARY
/* Exports of the test variant of the library only (go build -tags
 * esper_test, `make test-lib`: build/test/libesper.so); the production
 * library does not have them. */

/* Panics inside the export (in_goroutine = 0) or inside a goroutine it
 * starts (in_goroutine != 0). Always returns ESPER_EINTERNAL with the
 * panic's message: it proves that panics never reach the caller. */
int esper_test_panic(int32_t in_goroutine);
#endif /* ESPER_TEST_LIBRARY */

/* @@ sections below are owned by their components; keep each delimited. */

/* @@ begin karn-urza-cache: blueprint/, core/urza, core/cache ------------ */

/* ------------------------------------------------------------------------ */
/* Karn: blueprint IR, templates, constraints, mutation (blueprint/)         */
/* ------------------------------------------------------------------------ */
/*
 * JSON documents (docs/internals.md, "Blueprint IR"):
 *   host:   {"kind": "linear"|"block"|"conv1d"|"conv2d"|"residual"|
 *            "conv1d_pair"|"conv2d_pair", "in", "out", "kernel", "stride",
 *            "padding", "dim", "spatial": [L] | [H, W]; conv pairs also
 *            "mid", "consumer_kernel", "consumer_stride" [1],
 *            "consumer_padding", "activation": "identity"|"relu"|"gelu"|
 *            "silu"|"tanh"|"sigmoid"}
 *           (fields that do not apply to the kind must be absent or 0).
 *   params: {"width": 32, "activation": "relu", ...}; NULL or "{}" means
 *           every template default.
 *   budget: {"max_params": int, "max_flops": int}; 0, absent or NULL
 *           means no limit.
 * All documents are parsed strictly: unknown fields, duplicate keys and
 * wrong types are ESPER_EINVALID with a message naming the field. Errors of
 * these functions are kept per calling thread: read them with
 * esper_last_error(0, ...). IRs returned are canonical JSON (sorted keys,
 * compact) with param_count and flops_per_sample filled in.
 */

/* Writes the template library as a JSON array to *out_json (free with
 * esper_free): [{"name", "description", "layouts": [...], "params":
 * [{"name", "kind": "int"|"enum", "default", "min", "max", "choices",
 * "doc"}], "mergeable"}], sorted by name. */
int esper_blueprint_templates(char **out_json);

/* Builds template_name with params_json (may be NULL) for host_json and
 * writes the validated IR to *out_ir_json (free with esper_free). Errors:
 * ESPER_ENOTFOUND unknown template; ESPER_EINVALID bad host, unknown or
 * out-of-range parameter, template not supporting the host's layout. */
int esper_blueprint_instantiate(const char *template_name, const char *params_json,
                                const char *host_json, char **out_ir_json);

/* Parses and validates ir_json against its own host and writes its
 * canonical bytes to *out_canonical and its id (64 lowercase hex digits,
 * the SHA-256 of the canonical bytes) to *out_id; free both with
 * esper_free. A non-zero param_count or flops_per_sample must equal Karn's
 * count. Errors: ESPER_EINVALID, with a message naming the op, attribute,
 * input or shape at fault. */
int esper_blueprint_canonical(const char *ir_json, char **out_canonical, char **out_id);

/* Returns ESPER_OK when ir_json fits host_json (NULL: the IR's own host)
 * within budget_json (NULL: no limits). Otherwise ESPER_EINVALID for a
 * malformed IR or a shape mismatch (the message shows expected and actual
 * shapes), ESPER_EBUDGET when over budget ("param_count N > max_params M"). */
int esper_blueprint_check(const char *ir_json, const char *host_json, const char *budget_json);

/* Validates ir_json on host_json (NULL: the IR's own host) and writes
 * {"input", "output", "shapes": {op id: shape}, "order": [op ids],
 * "param_count", "flops_per_sample", "mergeable"} to *out_json (free with
 * esper_free); a shape is {"leading": bool, "dims": [{"size"} | {"sym",
 * "off", "div"}]}. Errors as esper_blueprint_check. */
int esper_blueprint_analyze(const char *ir_json, const char *host_json, char **out_json);

/* Writes to *out_ir_json (free with esper_free) a variant of ir_json, an
 * instance of a library template, with one parameter changed within its
 * range, valid on the IR's host and within budget_json (NULL: no limits).
 * seed drives every random choice: the same seed gives the same variant.
 * Errors: ESPER_ENOTFOUND the IR names no library template;
 * ESPER_EINVALID no parameter can vary or no valid variant was found. */
int esper_blueprint_mutate(const char *ir_json, const char *budget_json, uint64_t seed,
                           char **out_ir_json);

/* ------------------------------------------------------------------------ */
/* Karn's search: requests answered with ranked candidates (blueprint/karn)  */
/* ------------------------------------------------------------------------ */

/* Answers the request request_json ({"host", "budget", "signals",
 * "history", "prefer", "count", "time_budget_ms", "evaluations", "seed"};
 * docs/karn.md) and writes the answer to *out_json (free with esper_free):
 * {"request", "candidates": [{"rank", "template", "params", "blueprint_id",
 * "param_count", "flops_per_sample", "predicted_gain" (null when ranked by
 * the prior), "prior_gain", "origin", "ir"}], "ranked_by": "predictor" |
 * "prior", "predictor", "evaluated", "valid", "history_seeds",
 * "elapsed_us", "note"}. Every candidate's IR is valid on the host and
 * within the budget. urza_root names the store whose outcome records give
 * the history (when the request has none) and fit the predictor: NULL for
 * none, "" for $ESPER_HOME/urza. Errors: ESPER_EINVALID a malformed
 * request (the message names the field); ESPER_EIO the store. */
int esper_karn_search(const char *request_json, const char *urza_root, char **out_json);

/* Measures the predictor's error on the outcome records of the store at
 * urza_root ("" for $ESPER_HOME/urza) by runs (each record predicted by a
 * predictor fitted on other runs only) and writes {"records", "measured",
 * "runs", "eval": {"records", "runs", "folds", "within_20pct_share",
 * "median_relative_error", "mae", "baseline_mae"} | null (too few records),
 * "note", "features", "min_records_runs"} to *out_json (free with
 * esper_free). Errors: ESPER_EIO, ESPER_ECORRUPT the store. */
int esper_karn_predictor_eval(const char *urza_root, char **out_json);

/* Fits Karn's predictor on every measured outcome record of the store at
 * urza_root ("" for $ESPER_HOME/urza) and writes it as a predictor folder
 * (manifest.json + model.safetensors) in out_dir; writes {"dir", "records",
 * "runs"} to *out_json (free with esper_free). Errors: ESPER_EINVALID too
 * few records (karn.MinRecords from karn.MinRuns runs, the message says how
 * many there are); ESPER_EIO, ESPER_ECORRUPT the store or the folder. */
int esper_karn_predictor_fit(const char *urza_root, const char *out_dir, char **out_json);

/* Publishes the predictor folder predictor_dir (checked to load first) to
 * the store as a version of name, like esper_value_publish: writes {"name",
 * "id", "weights_sha256", "weights_size", "published"} to *out_json (free
 * with esper_free). A run with karn_predictor "urza:<name>" switches to the
 * newest version at its next end of epoch (docs/karn.md, "Rolling
 * deployment"). Errors: ESPER_EINVALID (bad name, or a folder that does not
 * load, saying why), ESPER_EIO. */
int esper_karn_publish(uint64_t handle, const char *name, const char *predictor_dir, char **out_json);

/* ------------------------------------------------------------------------ */
/* The value model: features, target, training rows, predictions            */
/* (policy/value, docs/simic.md)                                            */
/* ------------------------------------------------------------------------ */

/* Builds the value model's training set from the outcome records of the
 * store at urza_root ("" for $ESPER_HOME/urza) and writes to *out_json
 * (free with esper_free): {"features": [names], "target":
 * "gain_per_compute_v1", "rows": [{"run", "seq", "layer", "template",
 * "policy", "x": [...], "y", "gain", "measured", "cost", "size_frac",
 * "epochs", "final_state", "ended_by", "prediction" (null unless the
 * learned policy chose it)}], "skipped": {"in_flight", "policy",
 * "no_scale"}}. options_json (NULL or "" for defaults): {"runs": [ids],
 * "policies": [names], "in_flight": false}. The features are computed by
 * the same Go function Tamiyo's learned policy uses at decision time.
 * Errors: ESPER_EINVALID malformed options; ESPER_EIO, ESPER_ECORRUPT the
 * store. */
int esper_value_dataset(const char *urza_root, const char *options_json, char **out_json);

/* Writes {"features": [names], "target", "kind": "value_mlp", "schema": 1}
 * to *out_json (free with esper_free): the value model's feature names in
 * order and what a model's manifest must declare (docs/simic.md). */
int esper_value_features(char **out_json);

/* Loads the value model in model_dir (manifest.json + model.safetensors,
 * docs/simic.md) and predicts each row of rows_json ({"x": [[...], ...]},
 * each row in the model's feature order); writes {"predictions": [...],
 * "features": [names], "target"} to *out_json (free with esper_free).
 * Errors: ESPER_EINVALID a model folder that cannot be used (the message
 * says why and how to train one), a malformed document or a row of the
 * wrong length. */
int esper_value_predict(const char *model_dir, const char *rows_json, char **out_json);

/* ------------------------------------------------------------------------ */
/* Urza: content-addressed artifact store (core/urza)                        */
/* ------------------------------------------------------------------------ */
/*
 * An artifact is a manifest (JSON: blueprint_id, blueprint, input_shape,
 * output_shape, dtype, param_count, device, validation, lineage, tags,
 * weights_sha256, weights_size) plus safetensors weights. Its id is the
 * SHA-256 of the canonical manifest, which includes the weights' hash.
 * Every read re-hashes both files: a corrupted, truncated or forged artifact
 * is ESPER_ECORRUPT and nothing is returned. Errors of calls on a store are
 * kept per handle.
 */

/* Opens (creating if needed) the store at root, a folder or an
 * s3://bucket/prefix URL (NULL or "": $ESPER_URZA_URL when set, else
 * $ESPER_HOME/urza, ESPER_HOME defaulting to ~/.esper), and writes its handle
 * to *out. An S3 store reads ESPER_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3,
 * AWS_ENDPOINT_URL), AWS_REGION and the AWS_* credentials (docs/urza.md);
 * each operation is retried with backoff. The index is reconciled with the
 * stored objects. Errors: ESPER_EIO (naming the folder or URL),
 * ESPER_EINVALID (a malformed URL or endpoint). */
int esper_urza_open(const char *root, uint64_t *out);

/* Closes a store handle. 0 is a no-op. Errors: ESPER_EHANDLE. */
int esper_urza_close(uint64_t handle);

/* Writes the store's absolute root folder to *out_root (free with
 * esper_free). */
int esper_urza_root(uint64_t handle, char **out_root);

/* Stores an artifact: manifest_json plus n bytes of safetensors weights
 * (read during the call only; NULL allowed when n is 0), and writes its id
 * to *out_id (free with esper_free). weights_sha256 / weights_size,
 * blueprint_id and param_count are filled in when absent and must match
 * when given; tags are sorted and deduplicated. Writing is atomic; storing
 * an artifact that is already intact is a no-op. Errors: ESPER_EINVALID
 * (malformed manifest or weights), ESPER_EBUDGET (weights too large),
 * ESPER_EIO. */
int esper_urza_put(uint64_t handle, const char *manifest_json, const uint8_t *weights,
                   size_t n, char **out_id);

/* Loads and verifies artifact id: writes the canonical manifest to
 * *out_manifest and the weights to *out_weights / *out_n (free both with
 * esper_free). Out-pointers are untouched on error. Errors: ESPER_EINVALID
 * (malformed id), ESPER_ENOTFOUND, ESPER_ECORRUPT (hash or size mismatch,
 * missing weights), ESPER_EUNAVAILABLE (the artifact failed to load 3
 * times in a row: fenced for 30 s; the message gives the last failure),
 * ESPER_EIO. */
int esper_urza_get(uint64_t handle, const char *id, char **out_manifest,
                   uint8_t **out_weights, size_t *out_n);

/* Writes artifact id's index entry {"id", "blueprint_id", "template",
 * "input_shape", "output_shape", "dtype", "device", "param_count", "tags",
 * "weights_size", "created"} to *out_json (free with esper_free). The
 * manifest's hash is checked, the weights' only by size. Errors as
 * esper_urza_get. */
int esper_urza_stat(uint64_t handle, const char *id, char **out_json);

/* Writes the index entries matching query_json (NULL: all) as a JSON array,
 * newest first, to *out_json (free with esper_free). Query: {"blueprint_id",
 * "template", "tags": [all of these], "input_shape", "output_shape" (-1
 * matches any size), "dtype", "device", "limit"}. */
int esper_urza_list(uint64_t handle, const char *query_json, char **out_json);

/* Re-hashes every artifact and writes {"checked", "ok", "bytes", "bad":
 * [problem], "leftovers": [problem]} to *out_report_json (free with
 * esper_free); a problem is {"id", "path" (relative to the root), "kind":
 * "corrupt"|"incomplete"|"unreadable"|"index" in bad, "temp"|"orphan"|
 * "unexpected" in leftovers, "detail"}. Changes nothing. Cancellable with
 * esper_cancel(handle): ESPER_ECANCELLED. */
int esper_urza_verify(uint64_t handle, char **out_report_json);

/* Removes artifacts that fail verification, and temp files and orphan
 * weights older than an hour (younger ones may belong to another process's
 * write); never files the store did not write. Writes {"removed":
 * [problem], "bytes"} to *out_report_json (free with esper_free).
 * Cancellable with esper_cancel(handle): ESPER_ECANCELLED. */
int esper_urza_gc(uint64_t handle, char **out_report_json);

/* Deletes artifact id. Errors: ESPER_EINVALID, ESPER_ENOTFOUND, ESPER_EIO. */
int esper_urza_delete(uint64_t handle, const char *id);

/* Outcome records (core/urza, outcome.go): one per germination of a
 * training run, written by Morphogenesis when the germination ends. Stores
 * record_json (schema 1; validated strictly, schema and write time stamped)
 * atomically as outcomes/<run_id>/<germinated_step>-<layer>-<slot>-<seq>.json
 * (the name is derived from the record's fields) and writes its key
 * "<run_id>/<name>" to *out_key (free with esper_free). Errors:
 * ESPER_EINVALID (malformed record, naming the field), ESPER_EIO. */
int esper_urza_put_outcome(uint64_t handle, const char *record_json, char **out_key);

/* Writes the outcome records of run (NULL or "": every run) as a JSON array,
 * ordered by run and germination step, to *out_json (free with esper_free).
 * Errors: ESPER_EINVALID (malformed run id), ESPER_ECORRUPT (a record that
 * does not decode), ESPER_EIO. */
int esper_urza_outcomes(uint64_t handle, const char *run, char **out_json);

/* Writes one summary per run with outcome records, newest first:
 * [{"run_id", "outcomes", "ended": {ended_by: count}, "params_fossilized",
 * "first_step", "last_step", "updated"}] to *out_json (free with
 * esper_free). */
int esper_urza_runs(uint64_t handle, char **out_json);

/* Experience records (core/urza, experience.go): one per episode of a policy
 * trainer (esper simic ppo train). Stores record_json (schema 1; validated
 * strictly: unknown, missing or null required fields are refused, naming the
 * field; schema and write time stamped) atomically as
 * experience/<trainer_run>/<mode>-<episode, 9 digits>.json, replacing a
 * record of the same trainer run, mode and episode, and writes its key
 * "<trainer_run>/<mode>-<episode>" to *out_key (free with esper_free).
 * Errors: ESPER_EINVALID (malformed record, naming the field), ESPER_EIO.
 * Added in ABI 7. */
int esper_urza_put_experience(uint64_t handle, const char *record_json, char **out_key);

/* Writes the experience records of trainer run run as a JSON array, in the
 * order the trainer ran them (mode "heuristic" then "policy", each by
 * episode; [] when it has none) to *out_json (free with esper_free).
 * Errors: ESPER_EINVALID (malformed or NULL run), ESPER_ECORRUPT (a record
 * that does not decode as one of that run), ESPER_EIO. Added in ABI 7. */
int esper_urza_experience(uint64_t handle, const char *run, char **out_json);

/* Writes one summary per trainer run with experience records, newest first:
 * [{"trainer_run", "episodes": {mode: count}, "last_episode": {mode:
 * episode}, "updated"}] to *out_json (free with esper_free), from the
 * listing alone. Errors: ESPER_EIO. Added in ABI 7. */
int esper_urza_experience_runs(uint64_t handle, char **out_json);

/* Publishes the value model folder model_dir (manifest.json +
 * model.safetensors, checked to load first) to the store as a version of
 * name (1-64 of a-z 0-9 _ . -, starting with a letter or digit): content-
 * addressed, verified on every read. Writes {"name", "id", "weights_sha256",
 * "weights_size", "published"} to *out_json (free with esper_free); the same
 * content published again is the same version. A learned policy with
 * value_model "urza:<name>" switches to the newest version at its next end
 * of epoch (docs/simic.md, "Rolling deployment"). Errors: ESPER_EINVALID (bad
 * name, or a folder with no usable model, saying why), ESPER_EIO. */
int esper_value_publish(uint64_t handle, const char *name, const char *model_dir, char **out_json);

/* Writes the published versions of model name, oldest first, as a JSON
 * array of esper_value_publish's objects to *out_json (free with
 * esper_free); none is []. Errors: ESPER_EINVALID (bad name), ESPER_EIO. */
int esper_urza_models(uint64_t handle, const char *name, char **out_json);

/* ------------------------------------------------------------------------ */
/* Kernel cache: byte-bounded LRU of artifacts (core/cache)                  */
/* ------------------------------------------------------------------------ */
/*
 * Entry metadata (meta_json): {"id", "input_shape": [-1 = any size],
 * "output_shape", "dtype", "device", "size", "tags"}. A Get states what it
 * needs (want_json: {"shape", "dtype", "device"}, NULL or absent fields
 * match anything); an entry counts as a hit only when it fits: same dtype,
 * same device (an entry for "cuda" fits "cuda:1"; an entry without a device
 * fits all), input shape equal wherever neither side is -1.
 */

/* Creates a cache holding at most max_bytes (> 0) bytes and writes its
 * handle to *out. Errors: ESPER_EINVALID. */
int esper_cache_new(int64_t max_bytes, uint64_t *out);

/* Frees a cache handle. 0 is a no-op. Errors: ESPER_EHANDLE. */
int esper_cache_free(uint64_t handle);

/* Stores n bytes at data (copied) under meta_json's id, replacing an entry
 * with that id; with n = 0 (data may be NULL) it stores metadata only,
 * counting meta "size" bytes. Evicts least recently used entries until
 * under the bound and writes their ids as a JSON array to
 * *out_evicted_json (free with esper_free). Errors: ESPER_EINVALID (bad
 * metadata, size disagreeing with n), ESPER_EBUDGET (entry larger than the
 * whole cache; nothing changes). */
int esper_cache_put(uint64_t handle, const char *meta_json, const uint8_t *data, size_t n,
                    char **out_evicted_json);

/* Looks up id for want_json (may be NULL). On a hit writes the entry's
 * metadata to *out_meta_json and a copy of its data to *out_data / *out_n
 * (free both with esper_free). A miss is ESPER_ENOTFOUND ("cache: miss"),
 * an entry that does not fit is ESPER_ENOTFOUND too ("cache: incompatible
 * entry: ... dtype float32, want float16"); they count separately in the
 * stats. */
int esper_cache_get(uint64_t handle, const char *id, const char *want_json, char **out_meta_json,
                    uint8_t **out_data, size_t *out_n);

/* Drops id (not counted as an eviction); *out_removed is 1 when it was
 * present, else 0. */
int esper_cache_remove(uint64_t handle, const char *id, int32_t *out_removed);

/* Writes {"hits", "misses", "compat_misses", "evictions", "rejected",
 * "bytes", "entries", "max_bytes"} to *out_json (free with esper_free). */
int esper_cache_stats(uint64_t handle, char **out_json);

/* @@ end karn-urza-cache ------------------------------------------------- */

/* @@ begin session: core/session, core/lifecycle, core/nissa, policy/tamiyo */

/* ------------------------------------------------------------------------ */
/* Session: one training run (core/session, Tamiyo in policy/tamiyo)         */
/* ------------------------------------------------------------------------ */
/*
 * A session holds the seed slots of every wrapped layer (their lifecycle,
 * docs/internals.md "Seed states"), the health-signal statistics (Nissa),
 * the controller and its governor (Tamiyo), per-seed circuit breakers and a
 * growth log. Every function below is safe to call from several threads on
 * one handle; errors are kept per handle (esper_last_error(handle, ...)),
 * except for esper_session_new and esper_session_free (per thread, pass 0).
 * JSON inputs are parsed strictly (unknown fields and trailing data are
 * ESPER_EINVALID with a message naming the field). JSON numbers cannot be
 * NaN: send a missing measurement as null and a non-finite one as the
 * string "NaN", "Infinity" or "-Infinity" (Python: json.dumps(...,
 * allow_nan=False) after mapping them).
 *
 * Seed states are the names of docs/internals.md ("DORMANT", "TRAINING",
 * ...). Layer and slot indices are 0-based; an index out of range is
 * ESPER_EINVALID. A transition the lifecycle forbids is ESPER_ESTATE with
 * a message like "lifecycle: seed 0/1: TRAINING -> FOSSILIZED is not a
 * legal transition".
 *
 * Config (esper_session_new), defaults in brackets:
 *   {"layers": [{"name": str (unique), "kind": "linear"|"block"|"conv1d"|
 *                "conv2d"|"residual"|"conv1d_pair"|"conv2d_pair", "in",
 *                "out" (linear/conv), "kernel", "stride" [1], "padding"
 *                (conv), "dim" (residual), conv pairs' fields as in Karn's
 *                host above,
 *                "spatial": [L] | [H, W] (optional), "params" [0]: the
 *                host layer's own parameter count}],   1..4096 layers
 *    "slots_per_layer" [1] (1..64), "train_steps" [100]: TRAINING length,
 *    "blend_steps" [100]: BLENDING tempo, "schedule" ["linear"]|"cosine",
 *    "embargo_steps" [100] (0 allowed),
 *    "policy" ["heuristic"]|"random"|"manual" ("none"),
 *    "controller": {"patience" [3] epochs, "threshold" [0.01] relative
 *        val-loss improvement, "prune_below" [0] contribution bar,
 *        "holding_epochs" [1], "template" ["residual_mlp"], "params" [{}]
 *        template params, "seed" [0] for the random policy},
 *    "governor": {"max_params" [0 = no limit] params of live + fossilized
 *        seeds, "max_concurrent" [1] seeds in flight, "cooldown_epochs" [2]
 *        (0 allowed), "loss_window" [20], "loss_factor" [3], "loss_min_delta" [0.05],
 *        "min_loss_samples" [5]},
 *    "breaker": {"failures" [3]: consecutive failing steps that prune a seed},
 *    "signals": {"window" [64] (2..65536, and (2 + 7 x layers) x window
 *        <= 4194304: at most 48 MiB of buffers), "ewma" [0.1]},
 *    "auto_advance" [true],
 *    "growth_log_max" [10000] (1..1048576), "log_path" [""]: JSON-lines log file
 *    (appended), "log_signals_every" [0 = never]}
 *
 * Event (every "events" array below):
 *   {"layer", "slot", "from", "to", "step", "epoch", "alpha", "reason",
 *    and on GERMINATED only: "blueprint_id", "blueprint" (canonical IR),
 *    "param_count", "generation" (the slot's germination count, >= 1)}
 * Functions that return events return every pending event, oldest first,
 * including those the call caused; the queue is then empty, so each event
 * is delivered exactly once.
 *
 * Decision (in end_epoch results and the growth log):
 *   {"op": "wait"|"germinate"|"prune"|"fossilize"|"rollback", "layer",
 *    "slot" (-1 for wait, and for a rollback with no seed to blame),
 *    "template", "params", "param_count" (germinate), "reason",
 *    "applied": bool, "error" (when not applied)}
 */

/* Writes the configuration a session fills in for the settings its config
 * leaves out, as config JSON without "layers" (settings whose default is
 * zero are left out): the one source of the defaults the Python package's
 * MorphConfig shows. Free *out_json with esper_free. */
int esper_session_defaults(char **out_json);

/* Creates a session from config_json (see above) and writes its handle to
 * *out. config_json is copied; the caller keeps it. Errors: ESPER_EINVALID
 * for a malformed or out-of-range config (the message names the field; an
 * unknown template is ESPER_EINVALID here), ESPER_EIO for a log_path that
 * cannot be opened. */
int esper_session_new(const char *config_json, uint64_t *out);

/* Frees the session (closing its log file; ESPER_EIO if that fails, the
 * handle is freed anyway). Freeing 0 is a no-op; an unknown or already
 * freed handle is ESPER_EHANDLE. */
int esper_session_free(uint64_t handle);

/* One optimizer step (or steps of them, >= 0): advances the step counters,
 * applies the automatic transitions whose gates open (GERMINATED ->
 * TRAINING on the next step, TRAINING -> BLENDING after train_steps,
 * BLENDING -> HOLDING when the ramp completes, PRUNED/CANCELLED/
 * ROLLED_BACK -> EMBARGOED at once, EMBARGOED -> RESETTING after
 * embargo_steps, RESETTING -> DORMANT on the next step), ingests signals,
 * lets the governor check the loss (nonfinite_count > 0, a non-finite
 * train loss or one above loss_factor x its rolling mean and loss_min_delta
 * above it is an alarm: it rolls back the newest seed in flight, and with
 * or without one counts in esper_session_alarms), and writes one alpha per
 * slot, layer-major
 * (layer * slots_per_layer + slot), to alphas_out.
 *   signals: n_signals floats read during the call only (not kept): 0, or
 *     exactly 2 + 7 * layers in the layout [train_loss_mean,
 *     nonfinite_count, per layer: act_mean, act_var, dead_frac, grad_norm,
 *     weight_norm, eff_rank, seed_gain]; NaN = not measured. May be NULL when
 *     n_signals is 0.
 *   alphas_out: caller buffer of alphas_cap floats, written during the
 *     call; alphas_cap must be >= layers * slots_per_layer.
 *   *out_n_events: number of events waiting (drain with
 *     esper_session_events when > 0).
 * Arguments are checked before anything changes. Errors: ESPER_EINVALID
 * (negative steps, wrong n_signals, NULL pointers), ESPER_EBUFFER
 * (alphas_cap too small), ESPER_EHANDLE. */
int esper_session_step(uint64_t handle, int64_t steps, const float *signals, size_t n_signals,
                       float *alphas_out, size_t alphas_cap, int32_t *out_n_events);

/* esper_session_step, then the reads of esper_session_waiting, in one call:
 * the governor's rollback count so far to *out_alarms and the number of
 * reports waiting for esper_session_reports to *out_reports, both as they
 * are after the steps. A trainer makes this its one call per flush (a call
 * into Go after a pause takes the scheduler's slow path; see
 * docs/performance.md). Arguments and errors as esper_session_step's, plus
 * ESPER_EINVALID for a NULL out_alarms or out_reports; nothing is written
 * when the step fails. */
int esper_session_step_waiting(uint64_t handle, int64_t steps, const float *signals, size_t n_signals,
                               float *alphas_out, size_t alphas_cap, int32_t *out_n_events,
                               int64_t *out_alarms, int32_t *out_reports);

/* Writes to out the alpha every slot will have after each of the next n
 * steps, were esper_session_step called once per step with nothing else in
 * between: row k (0-based) holds layers * slots_per_layer floats,
 * layer-major, the alphas after k + 1 steps. A BLENDING seed follows its
 * ramp (1 once it ends); every other slot keeps its alpha of now. Nothing
 * changes: a trainer takes the table once, blends with row k at step k + 1,
 * and sends the steps in one esper_session_step later (a call per step
 * while a seed blends costs the thread handoff each time).
 *   n: in [0, 65536].
 *   out: caller buffer of out_cap floats, written during the call; out_cap
 *     must be >= n * layers * slots_per_layer. May be NULL when out_cap is 0.
 * Errors: ESPER_EINVALID (n out of range, NULL out), ESPER_EBUFFER (out_cap
 * too small), ESPER_EHANDLE. */
int esper_session_alphas_ahead(uint64_t handle, int32_t n, float *out, size_t out_cap);

/* Drains the pending events into *out_json, a JSON array of events ("[]"
 * when none; free with esper_free). */
int esper_session_events(uint64_t handle, char **out_json);

/* Writes to *out_alarms the number of rollbacks the governor has called for
 * so far: one per alarm, raised by esper_session_step (nonfinite_count > 0,
 * a non-finite or exploding train loss) or esper_session_end_epoch (the
 * epoch's train loss, a non-finite val_loss), whether or not a seed could
 * be blamed. A rollback that blames a seed also emits its ROLLED_BACK
 * event; one with no seed to blame emits none, so a trainer reads this
 * after each esper_session_step that carried signals and restores its last
 * good state when it grew. Part of the snapshot. Errors: ESPER_EINVALID
 * (NULL out_alarms), ESPER_EHANDLE. */
int esper_session_alarms(uint64_t handle, int64_t *out_alarms);

/* Ends an epoch: Tamiyo decides and the session applies the decisions.
 * metrics_json: {"epoch": int >= 0 (optional; default the epoch in
 * progress, must not be below it), "train_loss", "val_loss", "val_metric"
 * (number, null = not measured, or "NaN"/"Infinity"/"-Infinity"),
 * "contributions": [{"layer", "slot", "delta_loss": val loss without the
 * seed minus with it, finite; positive helps}]}. A non-finite train_loss
 * or val_loss is an alarm: the only decision is a rollback (see
 * esper_session_alarms). Writes {"epoch",
 * "decisions": [decision...], "events": [event...]} to *out_json (free
 * with esper_free). Errors: ESPER_EINVALID (malformed metrics, a
 * contribution naming no slot), ESPER_ESTATE (an epoch that already
 * ended). A decision that cannot be applied is reported in the result
 * ("applied": false, "error"), not as an error of the call. */
int esper_session_end_epoch(uint64_t handle, const char *metrics_json, char **out_json);

/* Germinates the DORMANT seed at layer/slot. blueprint_json is either a
 * complete IR (docs/internals.md "Blueprint IR", with "ops"), whose host
 * must equal the layer's, or a template reference {"template": name,
 * "params": {...} (optional)} built for the layer's host. Writes the
 * events (the GERMINATED one, carrying the canonical IR, last) to
 * *out_json (free with esper_free). Errors: ESPER_EINVALID (bad document,
 * host mismatch, template unfit for the layer), ESPER_ENOTFOUND (unknown
 * template), ESPER_EBUDGET (over max_params, or max_concurrent seeds in
 * flight), ESPER_ESTATE (the slot is not DORMANT). */
int esper_session_germinate(uint64_t handle, int32_t layer, int32_t slot, const char *blueprint_json,
                            char **out_json);

/* Manual transitions of the seed at layer/slot; reason (may be NULL: a
 * default such as "manual prune") is recorded in the event and the seed's
 * history. Each writes the events to *out_json (free with esper_free).
 *   advance:   to the natural next state now, without waiting for the step
 *              gate (ESPER_ESTATE for a DORMANT or FOSSILIZED seed).
 *   prune:     from TRAINING, BLENDING or HOLDING (then EMBARGOED at once
 *              when auto_advance).
 *   fossilize: from HOLDING.
 *   cancel:    from GERMINATED or TRAINING.
 * Errors: ESPER_ESTATE for a transition the lifecycle forbids,
 * ESPER_EINVALID for an index out of range. */
int esper_session_advance(uint64_t handle, int32_t layer, int32_t slot, const char *reason, char **out_json);
int esper_session_prune(uint64_t handle, int32_t layer, int32_t slot, const char *reason, char **out_json);
int esper_session_fossilize(uint64_t handle, int32_t layer, int32_t slot, const char *reason, char **out_json);
int esper_session_cancel(uint64_t handle, int32_t layer, int32_t slot, const char *reason, char **out_json);

/* Records a failure of the seed at layer/slot in its circuit breaker, as a
 * failure of the step the session is at (step the session to the failure's
 * step first). kind: 0 exception, 1 non-finite output, 2 wrong shape, 3
 * other; msg (may be NULL; cut at 4096 bytes) says what happened. The
 * breaker counts consecutive failing steps (several failures in one step
 * count once; a step without failure between two resets the count); when
 * breaker.failures of them open it, the seed is pruned with the reason
 * (cancelled if still GERMINATED; a FOSSILIZED seed is only recorded); a
 * failure for a seed already on its way out is recorded and ignored.
 * Writes the events to *out_json (free with esper_free). Errors:
 * ESPER_EINVALID (bad kind or index), ESPER_ESTATE (the slot is DORMANT). */
int esper_session_report_failure(uint64_t handle, int32_t layer, int32_t slot, int32_t kind, const char *msg,
                                 char **out_json);

/* Reports that the trainer could not build the seed of layer/slot whose
 * GERMINATED event carried "generation", or that the module it built
 * disagrees with the event (its parameter count is not the event's
 * "param_count"). The session is the only validator and hasher: the trainer
 * never re-derives the blueprint id or re-decides validity, it reports. The
 * seed is removed with the reason: cancelled while GERMINATED or TRAINING,
 * pruned in BLENDING or HOLDING. A report for a seed already gone (another
 * generation, an exit state, a DORMANT slot) is recorded and ignored.
 * reason (may be NULL; cut at 4096 bytes) says what failed. Writes the
 * events to *out_json (free with esper_free). Errors: ESPER_EINVALID (bad
 * index, generation < 1), ESPER_ESTATE (the seed is FOSSILIZED: final). */
int esper_session_seed_failed(uint64_t handle, int32_t layer, int32_t slot, int32_t generation, const char *reason,
                              char **out_json);

/* Writes the entire state as JSON to *out_json (free with esper_free):
 * {"version": 1, "config", "step", "epoch", "seeds", "epochs_in_state",
 * "signals", "controller" (random generator included), "pending",
 * "growth_log", "growth_dropped", "counters"}. Restoring it continues
 * identically, also in the middle of BLENDING. Treat it as opaque. */
int esper_session_snapshot(uint64_t handle, char **out_json);

/* Replaces the whole state with snapshot_json (from esper_session_snapshot
 * of a session with the same layers and slots_per_layer; the session keeps
 * its own log settings). The snapshot is checked completely first: on
 * error nothing changes. Errors: ESPER_EINVALID (malformed, other version,
 * inconsistent, other layers). */
int esper_session_restore(uint64_t handle, const char *snapshot_json);

/* esper_session_restore for a rank of a data-parallel job taking rank 0's
 * state after a decision rank 0 made: the same checks and state, but the
 * run log (Oona) records what the decision did, as rank 0's does (each
 * growth log entry the snapshot holds beyond this session's: decisions,
 * transitions with their actors, rolling deployments' switches and
 * reverts), instead of a "resume" run event. Errors: as
 * esper_session_restore. */
int esper_session_apply(uint64_t handle, const char *snapshot_json);

/* Writes a digest of the session state to *out_json (free with esper_free):
 * {"sha256": hex over every part, "parts": [{"name", "sha256", "summary"}]},
 * parts in a fixed order: "step", "epoch", "config" (without the log
 * settings), one "seed <layer>/<slot>" per slot, "signals", "controller",
 * "counters", "pending events", "growth log". The ranks of a data-parallel
 * run compare it to find the first part on which their sessions differ. */
int esper_session_state_hash(uint64_t handle, char **out_json);

/* Writes a summary to *out_json (free with esper_free): {"step", "epoch"
 * (in progress), "policy", "counters": {"germinations", "fossilizations",
 * "prunes", "cancels", "rollbacks", "failures", "alarms", "decisions",
 * "events"}, "params_used", "max_params", "host_params", "active",
 * "states": {state: count}, "pending_events", "governor": {"alarms",
 * "loss_mean", "loss_samples", "cooldowns": [per layer]}, "signals":
 * {"window", "ewma", "ingests", "last_step", "global": {name: stats},
 * "layers": [{"layer", "name", "signals": {name: stats}}]}, "growth_log",
 * "growth_dropped", "log_error"}; stats = {"n", "total", "nonfinite",
 * "mean", "var", "slope" (per step), "ewma", "last", "last_step"}, null
 * where not available. */
int esper_session_stats(uint64_t handle, char **out_json);

/* Writes every slot, layer-major, as a JSON array to *out_json (free with
 * esper_free): [{"layer", "slot", "name", "state", "steps_in_state",
 * "total_steps", "epochs_in_state", "alpha", "blueprint_id", "blueprint",
 * "param_count", "generation", "germinated_step", "germinated_epoch",
 * "failures", "streak" (consecutive failing steps, omitted when 0),
 * "failed_step", "breaker": "closed"|"open", "waiting" (why the
 * next automatic transition waits), "history": [{"from", "to", "step",
 * "reason"}]}]. */
int esper_session_seeds(uint64_t handle, char **out_json);

/* Writes the growth log to *out_json (free with esper_free): {"entries":
 * [{"kind": "event"|"decision"|"failure"|"alarm"|"impact"|"rollout", "step",
 * "epoch", "event" | "decision" | "failure": {"layer", "slot", "kind",
 * "message", "failures", "streak", "breaker_open", "outcome"} | "alarm" |
 * "impact" | "rollout", "actor" (kind "event": who caused the transition)}],
 * "dropped": entries dropped beyond growth_log_max}. */
int esper_session_growth_log(uint64_t handle, char **out_json);

/* Writes Tamiyo's layer graph with the legal moves to *out_json (free with
 * esper_free), what a learned policy observes: {"epoch", "step", "layers",
 * "slots", "nodes": [{"kind": "layer"|"seed", "layer", "slot" (-1 for a
 * layer), "name", "host", "in", "out", "params", "signals": {name: window
 * mean or null}, "cooldown", "dormant", "state", "alpha", "steps_in_state",
 * "epochs_in_state", "template", "generation", "contribution" (last measured;
 * null: none)}], "edges": [{"from", "to",
 * "kind": "flow"|"seed"}], "global": {"params_used", "max_params",
 * "remaining", "host_params", "active", "max_concurrent", "epochs",
 * "lifecycle_steps", "val_losses": [{"epoch", "value"}]}, "ops", "templates",
 * "sizes", "masks": {"op": [bool per op], "target": {op: [bool per slot,
 * layer-major]}, "template": [[bool per template] per layer], "size":
 * [[[bool per size] per template] per layer], "size_params"}}. The masks are
 * the rules esper_session_propose applies; "encoded": the graph as the graph
 * policy's input ({"nodes", "features", "x" (row major), "src", "dst",
 * "global", "layers", "target_layer", "target_seed"}: policy/graphpolicy's
 * Encode, the one encoding the trainer and Go's forward read). See
 * docs/simic.md. */
int esper_session_graph(uint64_t handle, char **out_json);

/* Writes {"node": [names], "global": [names], "kind": "graph_policy",
 * "schema": 1, "ops", "sizes", "train_command"} to *out_json (free with
 * esper_free): the graph policy's input features in order, as a model's
 * manifest must list them (docs/simic.md, "Graph policy in Go"). */
int esper_graph_features(char **out_json);

/* Loads the graph policy in model_dir (manifest.json + model.safetensors)
 * and runs its forward on graph_json (a document of esper_session_graph; its
 * encoding is recomputed from it) on runtime "native" (Go's forward; NULL or
 * "" too) or "onnx" (the folder's model.onnx through ONNX Runtime); writes
 * {"dense": {"value", "op", "target" (4 x targets), "template" (layers x
 * templates), "size" (layers x templates x sizes)}, "action": {"op",
 * "layer", "slot", "template", "size", "value"}} (the masked argmax move the
 * ppo policy takes) to *out_json (free with esper_free). Errors:
 * ESPER_EINVALID a model folder that cannot be used (the message names the
 * command that trains one), a malformed graph or one of another library;
 * ESPER_ENOTFOUND no model.onnx; ESPER_EUNAVAILABLE no ONNX Runtime. The
 * action is always the native forward's. */
int esper_graph_forward(const char *model_dir, const char *runtime, const char *graph_json, char **out_json);

/* Carries out a move proposed from outside, {"op": "wait"|"germinate"|
 * "prune"|"fossilize"|"advance", "layer", "slot", "template", "size" (an
 * index of the graph's "sizes"), "reason"}, through the session's own
 * operations: every move passes the lifecycle's transitions and the
 * governor's limits. Writes {"proposal", "applied", "refused" (why, when not
 * applied), "events"} to *out_json (free with esper_free). A refused move is
 * not executed and is counted in the stats' counters "refused" (every move
 * in "proposals"). Errors: ESPER_EINVALID (malformed document),
 * ESPER_ESTATE (closed session). */
int esper_session_propose(uint64_t handle, const char *proposal_json, char **out_json);

/* @@ end session --------------------------------------------------------- */

/* @@ begin metrics: core/metrics, core/session/monitor.go, core/nissa alarms */

/* Drains the alarms and impact records raised since the last call into
 * *out_json (free with esper_free): {"alarms": [{"kind": "rollback" |
 * "step_time" | "failure_rate" | "stalled" | "no_improvement", "source":
 * "governor" | "nissa", "step", "epoch", "value", "threshold", "message"}],
 * "impacts": [{"layer", "slot", "generation", "outcome", "step", "epoch",
 * "predicted_gain", "measured_gain", "error" (null when absent), "note"}],
 * "dropped": reports dropped unread (1024 of each kind are kept)}. Both are
 * also in the growth log (kinds "alarm" and "impact"). See docs/metrics.md. */
int esper_session_reports(uint64_t handle, char **out_json);

/* Writes the governor's rollback count (as esper_session_alarms) to
 * *out_alarms and the number of reports waiting for esper_session_reports
 * to *out_reports, in one call. */
int esper_session_waiting(uint64_t handle, int64_t *out_alarms, int32_t *out_reports);

/* Writes the run's metrics in the Prometheus text exposition format
 * (version 0.0.4) to *out_text (free with esper_free). The registry is the
 * session's own; series are listed in docs/metrics.md. */
int esper_session_metrics_text(uint64_t handle, char **out_text);

/* Serves the run's metrics at http://host:port/metrics (promhttp) until the
 * session is freed, and writes the bound port to *out_port (port 0 picks a
 * free one). host is required and is bound as given: pass "127.0.0.1" to
 * stay on loopback. Errors: ESPER_ESTATE (this session already serves),
 * ESPER_EIO (the address cannot be bound), ESPER_EINVALID. */
int esper_session_serve_metrics(uint64_t handle, const char *host, int32_t port, int32_t *out_port);

/* Makes the run's metrics report another object's counters: a kernel cache
 * handle (esper_cache_new) or an Urza store handle (esper_urza_open). The
 * session reads them at each collection while both live. Errors:
 * ESPER_EHANDLE (neither). */
int esper_session_metrics_attach(uint64_t handle, uint64_t other);

/* @@ end metrics --------------------------------------------------------- */

/* @@ begin oona: core/oona (event bus, run log) --------------------------- */

/* ------------------------------------------------------------------------ */
/* Oona: one run's event bus and its run log (core/oona, docs/events.md)     */
/* ------------------------------------------------------------------------ */
/*
 * An oona handle is a bus for one run and rank with its run log, which
 * appends every event as one JSON line to <home>/<run>/events.jsonl
 * (events.rank<k>.jsonl for rank k > 0), flushed to the OS after each burst
 * of events, fsynced at run events and epoch ends (at most once a
 * second), rotated at max_bytes. A
 * session attached to it (esper_session_attach_oona) publishes its
 * lifecycle events, decisions, failures, alarms (the governor's and
 * Nissa's), impact records, epoch and health summaries and its
 * start/resume/end. Publishing never blocks: a full
 * subscriber buffer drops the event for that subscriber and counts it.
 * Every function is safe from several threads; errors are kept per handle
 * (esper_oona_new, esper_oona_free, esper_oona_runs_root and
 * esper_oona_measure: per thread, pass 0).
 *
 * Config (esper_oona_new), defaults in brackets:
 *   {"run": str (1..128 of [A-Za-z0-9_-]), "rank" [0],
 *    "home" [esper_oona_runs_root()]: the runs root,
 *    "log": {"max_bytes" [67108864] (>= 4096), "keep" [4] (rotated files
 *            kept, 0..1000; negative: none), "buffer" [8192] (events)},
 *    "nats" [absent: none]: {"url" (required), "creds", "user", "password",
 *            "token", "ca", "cert", "key", "allow_plaintext" [false],
 *            "stream" ["ESPER_EVENTS"], "buffer" [10000] (events)}}
 * With "nats", every event is also published to esper.v1.<run>.<rank>.<kind>
 * and stored in the JetStream stream (Nats-Msg-Id = the event id), from a
 * goroutine that retries while the server is unreachable (docs/events.md).
 * A plaintext url to a non-loopback host without allow_plaintext is
 * ESPER_EINVALID. esper_oona_stats then has "nats": {"url", "connected",
 * "sent", "retries", "unsent", "dropped", "pending", "reconnects",
 * "last_error"}.
 */

/* Open a bus and its run log (creating <home>/<run>/); *out receives the
 * handle. ESPER_EINVALID for a bad config, ESPER_EIO when the log cannot be
 * opened. */
int esper_oona_new(const char *config_json, uint64_t *out);

/* Close the bus, let the run log write what it holds, fsync and close it
 * (waiting at most 10 s), and release the handle. A session still attached
 * publishes nothing more (its events are ignored, not errors). */
int esper_oona_free(uint64_t handle);

/* The counts as JSON in *out_json (release with esper_free): {"run", "rank",
 * "published", "delivered", "dropped", "subscribers": [{"name",
 * "delivered", "dropped", "pending", "buffer"}], "log": {"path", "lines",
 * "bytes", "rotations", "syncs", "dropped", "lost", "error"}}. */
int esper_oona_stats(uint64_t handle, char **out_json);

/* Wait until every event published before the call is written to the OS
 * (a killed process keeps it), at most timeout_ms (1..3600000).
 * ESPER_EUNAVAILABLE on time-out (nothing is lost), ESPER_EIO after a
 * write error. */
int esper_oona_flush(uint64_t handle, int64_t timeout_ms);

/* Publish one event: kind "run"|"lifecycle"|"decision"|"failure"|"alarm"|
 * "epoch"|"health"|"artifact"|"impact", actor "policy"|"governor"|"manual"|
 * "schedule"|"breaker"|"trainer"|"system"|"nissa", data_json a JSON object (NULL:
 * {}). ESPER_EINVALID for anything else; ESPER_ESTATE after free. */
int esper_oona_publish(uint64_t handle, const char *kind, const char *actor, int64_t step, int32_t epoch,
                       const char *data_json);

/* The default runs root in *out (release with esper_free): $ESPER_HOME/runs
 * (the ESPER_HOME given to esper_init, else the environment's; ~/.esper
 * when empty). */
int esper_oona_runs_root(char **out);

/* Measure the bus: publish `events` lifecycle events to a fresh bus with
 * `subscribers` draining subscribers (and a run log in a temporary folder
 * under dir, when dir is not NULL or ""), until all are received; *out_json
 * gets {"events", "subscribers", "run_log", "seconds", "cpu_seconds",
 * "events_per_s" (per CPU second of the process), "wall_events_per_s",
 * "delivered", "dropped", "log_bytes"}. For `make bench`. */
int esper_oona_measure(int64_t events, int32_t subscribers, const char *dir, char **out_json);

/* Measure NATS: publish `events` (1..100000) lifecycle events one at a
 * time on a fresh bus whose NATS transport sends them to the server at url
 * (stored in JetStream), timing each until a second connection subscribed
 * to the run's subjects receives it; *out_json gets {"events", "p50_us",
 * "p99_us", "max_us"}. For `make bench`, against a loopback server. */
int esper_oona_measure_nats(const char *url, int64_t events, char **out_json);

/* Make session `handle` publish its events to bus `oona_handle` (0:
 * stop), and publish a run event ("start" on a fresh session, "resume"
 * otherwise). The session never frees the bus. */
int esper_session_attach_oona(uint64_t handle, uint64_t oona_handle);

/* Following a run from NATS (the other end of the "nats" transport; core/
 * oona/natsink, docs/report.md "esper monitor --nats"). Config: the "nats"
 * object above ({"url", "creds", "user", "password", "token", "ca",
 * "cert", "key", "allow_plaintext", "stream", "buffer" [10000] (events
 * held for polls)}) plus what to follow: "run" (and "rank" [0]): the
 * subjects esper.v1.<run>.<rank>.>, or "subject" (a NATS subject, wildcards
 * allowed), not both. Connecting happens in the background (an absent
 * server is retried); once connected the follower reads the stream with
 * an ordered consumer from its first message on the subject (the run from
 * its start, then live) or, when the server has no such stream or no
 * JetStream, subscribes to the subject (live events only). The follower
 * decodes nothing: it hands out the messages, which are run log lines.
 * ESPER_EINVALID for a bad config (the same plaintext rule as "nats"). */
int esper_oona_follow_new(const char *config_json, uint64_t *out);

/* Wait at most timeout_ms (0..60000; esper_cancel(handle) ends the wait)
 * for an event, then return it with the others already received (at most
 * 4096): *out_json gets {"events": [event objects, oldest first], "url",
 * "subject", "stream", "mode" ("jetstream", "core", or "" before the
 * first connection), "connected", "received", "skipped" (messages that
 * were not JSON), "dropped" (lost by a core subscription that fell
 * behind), "pending" (messages of the subject the stream holds that were
 * not handed out yet: 0 once caught up; -1 when not known, as with a core
 * subscription), "last_error"}. */
int esper_oona_follow_poll(uint64_t handle, int64_t timeout_ms, char **out_json);

/* Stop following, close the connection and release the handle. */
int esper_oona_follow_free(uint64_t handle);

/* @@ end oona ------------------------------------------------------------ */

/* @@ begin nn: core/infer, core/nn, core/onnxrt (learned networks) -------- */

/* ------------------------------------------------------------------------ */
/* Networks: a model folder (docs/simic.md) on the native or ONNX runtime    */
/* ------------------------------------------------------------------------ */
/*
 * A model folder holds manifest.json, model.safetensors and optionally
 * model.onnx. The "native" runtime runs the network in Go from the
 * safetensors weights; the "onnx" runtime runs model.onnx through ONNX
 * Runtime (>= 1.24), loaded with dlopen on first use, once per process,
 * from the onnxruntime_lib given to esper_init or else libonnxruntime.so.1
 * beside libesper.so (`make onnxruntime` installs it there). Nothing else
 * in the library needs ONNX Runtime. A handle is safe from several threads;
 * esper_nn_free waits for the forwards in flight. Errors are kept per
 * handle (esper_nn_open: per thread, pass 0).
 */

/* Opens the network of a model folder: config_json is {"dir": string,
 * "runtime": "native" (default) | "onnx", "threads": int (ONNX Runtime's
 * threads per forward, 0..64, 0 = 1)}; writes its handle to *out. The onnx
 * runtime also checks that model.onnx takes and gives the widths of the
 * safetensors network. Errors: ESPER_EINVALID (config, manifest, weights or
 * model), ESPER_ENOTFOUND (manifest.json, model.safetensors or model.onnx
 * missing), ESPER_EUNAVAILABLE (ONNX Runtime cannot be loaded; the message
 * names the path tried, `make onnxruntime` and ESPER_ONNXRUNTIME_LIB). */
int esper_nn_open(const char *config_json, uint64_t *out);

/* Writes {"runtime", "in", "out", "onnxruntime": {"path", "version"} or
 * null} to *out_json (free with esper_free). */
int esper_nn_info(uint64_t handle, char **out_json);

/* Runs the network on rows rows of x (row-major, rows * in floats, read
 * during the call only) and writes rows * out floats to out; out_len must be
 * exactly rows * out. Errors: ESPER_EINVALID (rows 0 or over 2^24, NULL x
 * or out, out_len). */
int esper_nn_forward(uint64_t handle, const float *x, size_t rows, float *out, size_t out_len);

/* Releases a network handle. 0 is a no-op. Errors: ESPER_EHANDLE. */
int esper_nn_free(uint64_t handle);

/* @@ end nn -------------------------------------------------------------- */

#ifdef __cplusplus
}
#endif

#endif /* ESPER_H */
