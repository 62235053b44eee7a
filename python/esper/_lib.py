"""Finding, loading and calling ``libesper.so``, the Go core.

The library is loaded lazily, on the first call that needs it, never at
``import esper``: the Go runtime starts threads when it is loaded, and a child
created by ``fork`` after that point would hang on its first call into Go. A
forked child therefore gets a :class:`~esper.errors.ForkError` that says what
to do instead.

Every symbol is declared in ``_SIGNATURES`` with its argument and result types,
and every status code goes through :func:`check`, which raises the matching
:class:`~esper.errors.EsperError` subclass with Go's message.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import json
import os
import threading
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_size_t, c_uint8, c_uint64, c_void_p
from pathlib import Path
from typing import Any

from .errors import EsperError, ForkError, LibraryError, error_for_code

__all__ = ["ABI_VERSION", "lib", "check", "take_string", "take_bytes", "library_path", "build_info", "Handle"]

#: Must equal ESPER_ABI_VERSION in capi/esper.h and abiVersion in capi/core.go.
ABI_VERSION = 7

_LIB_NAME = "libesper.so"

c_char_pp = POINTER(c_char_p)
c_uint8_p = POINTER(c_uint8)

# name -> (restype, argtypes). Every export of capi/esper.h is declared here.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "esper_abi_version": (c_int32, []),
    "esper_build_info": (c_int, [POINTER(c_void_p)]),
    "esper_init": (c_int, [c_char_p]),
    "esper_runtime_stats": (c_int, [POINTER(c_void_p)]),
    "esper_free": (None, [c_void_p]),
    "esper_last_error": (c_int32, [c_uint64, c_char_p, c_size_t, POINTER(c_size_t)]),
    "esper_cancel": (c_int, [c_uint64]),
    "esper_noop": (c_int, []),
    "esper_checksum_f32": (c_int, [POINTER(c_float), c_size_t, POINTER(c_double)]),
    "esper_test_panic": (c_int, [c_int32]),
    # session (core/session): one training run.
    "esper_session_defaults": (c_int, [POINTER(c_void_p)]),
    "esper_session_new": (c_int, [c_char_p, POINTER(c_uint64)]),
    "esper_session_free": (c_int, [c_uint64]),
    "esper_session_step": (
        c_int,
        [c_uint64, c_int64, POINTER(c_float), c_size_t, POINTER(c_float), c_size_t, POINTER(c_int32)],
    ),
    "esper_session_step_waiting": (
        c_int,
        [c_uint64, c_int64, POINTER(c_float), c_size_t, POINTER(c_float), c_size_t, POINTER(c_int32),
         POINTER(c_int64), POINTER(c_int32)],
    ),
    "esper_session_events": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_alarms": (c_int, [c_uint64, POINTER(c_int64)]),
    "esper_session_alphas_ahead": (c_int, [c_uint64, c_int32, POINTER(c_float), c_size_t]),
    "esper_session_end_epoch": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_session_germinate": (c_int, [c_uint64, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_advance": (c_int, [c_uint64, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_prune": (c_int, [c_uint64, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_fossilize": (c_int, [c_uint64, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_cancel": (c_int, [c_uint64, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_report_failure": (c_int, [c_uint64, c_int32, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_seed_failed": (c_int, [c_uint64, c_int32, c_int32, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_session_snapshot": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_restore": (c_int, [c_uint64, c_char_p]),
    "esper_session_apply": (c_int, [c_uint64, c_char_p]),
    "esper_session_state_hash": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_stats": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_seeds": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_growth_log": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_graph": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_graph_features": (c_int, [POINTER(c_void_p)]),
    "esper_graph_forward": (c_int, [c_char_p, c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_session_propose": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_session_attach_oona": (c_int, [c_uint64, c_uint64]),
    # oona (core/oona): one run's event bus and run log.
    "esper_oona_new": (c_int, [c_char_p, POINTER(c_uint64)]),
    "esper_oona_free": (c_int, [c_uint64]),
    "esper_oona_stats": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_oona_flush": (c_int, [c_uint64, c_int64]),
    "esper_oona_publish": (c_int, [c_uint64, c_char_p, c_char_p, c_int64, c_int32, c_char_p]),
    "esper_oona_runs_root": (c_int, [POINTER(c_void_p)]),
    "esper_oona_measure": (c_int, [c_int64, c_int32, c_char_p, POINTER(c_void_p)]),
    "esper_oona_measure_nats": (c_int, [c_char_p, c_int64, POINTER(c_void_p)]),
    "esper_oona_follow_new": (c_int, [c_char_p, POINTER(c_uint64)]),
    "esper_oona_follow_poll": (c_int, [c_uint64, c_int64, POINTER(c_void_p)]),
    "esper_oona_follow_free": (c_int, [c_uint64]),
    # karn-urza-cache (blueprint/, core/urza, core/cache). Out-strings and out-buffers are c_void_p
    # so that take_string / take_bytes can release them with esper_free.
    "esper_blueprint_templates": (c_int, [POINTER(c_void_p)]),
    "esper_blueprint_instantiate": (c_int, [c_char_p, c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_blueprint_canonical": (c_int, [c_char_p, POINTER(c_void_p), POINTER(c_void_p)]),
    "esper_blueprint_check": (c_int, [c_char_p, c_char_p, c_char_p]),
    "esper_blueprint_analyze": (c_int, [c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_blueprint_mutate": (c_int, [c_char_p, c_char_p, c_uint64, POINTER(c_void_p)]),
    "esper_karn_search": (c_int, [c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_karn_predictor_eval": (c_int, [c_char_p, POINTER(c_void_p)]),
    "esper_karn_predictor_fit": (c_int, [c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_karn_publish": (c_int, [c_uint64, c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_value_dataset": (c_int, [c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_value_predict": (c_int, [c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_value_features": (c_int, [POINTER(c_void_p)]),
    "esper_urza_open": (c_int, [c_char_p, POINTER(c_uint64)]),
    "esper_urza_close": (c_int, [c_uint64]),
    "esper_urza_root": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_urza_put": (c_int, [c_uint64, c_char_p, c_uint8_p, c_size_t, POINTER(c_void_p)]),
    "esper_urza_get": (c_int, [c_uint64, c_char_p, POINTER(c_void_p), POINTER(c_void_p), POINTER(c_size_t)]),
    "esper_urza_stat": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_list": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_verify": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_urza_gc": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_urza_delete": (c_int, [c_uint64, c_char_p]),
    "esper_urza_put_outcome": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_outcomes": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_runs": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_urza_put_experience": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_experience": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_urza_experience_runs": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_urza_models": (c_int, [c_uint64, c_char_p, POINTER(c_void_p)]),
    "esper_value_publish": (c_int, [c_uint64, c_char_p, c_char_p, POINTER(c_void_p)]),
    "esper_cache_new": (c_int, [c_int64, POINTER(c_uint64)]),
    "esper_cache_free": (c_int, [c_uint64]),
    "esper_cache_put": (c_int, [c_uint64, c_char_p, c_uint8_p, c_size_t, POINTER(c_void_p)]),
    "esper_cache_get": (
        c_int,
        [c_uint64, c_char_p, c_char_p, POINTER(c_void_p), POINTER(c_void_p), POINTER(c_size_t)],
    ),
    "esper_cache_remove": (c_int, [c_uint64, c_char_p, POINTER(c_int32)]),
    "esper_cache_stats": (c_int, [c_uint64, POINTER(c_void_p)]),
    # metrics (core/metrics, core/session/monitor.go): Prometheus exports, alarms, impact analysis.
    "esper_session_reports": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_waiting": (c_int, [c_uint64, POINTER(c_int64), POINTER(c_int32)]),
    "esper_session_metrics_text": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_session_serve_metrics": (c_int, [c_uint64, c_char_p, c_int32, POINTER(c_int32)]),
    "esper_session_metrics_attach": (c_int, [c_uint64, c_uint64]),
    # nn (core/infer): a model folder on the native or the ONNX runtime.
    "esper_nn_open": (c_int, [c_char_p, POINTER(c_uint64)]),
    "esper_nn_info": (c_int, [c_uint64, POINTER(c_void_p)]),
    "esper_nn_forward": (c_int, [c_uint64, POINTER(c_float), c_size_t, POINTER(c_float), c_size_t]),
    "esper_nn_free": (c_int, [c_uint64]),
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: str | None = None
_loaded_pid: int | None = None
_sent_settings: bytes | None = None  # what esper_init was last given
_in_fork_child = False


def _candidates() -> list[Path]:
    """Paths to try: ESPER_LIBRARY alone when set, else the package's _lib folder."""
    override = os.environ.get("ESPER_LIBRARY")
    if override:
        return [Path(override)]
    return [Path(__file__).resolve().parent / "_lib" / _LIB_NAME]


def _ranged(ctype: Any) -> Any:
    """A subclass of the integer ctype whose ``from_param`` refuses a Python int out of its range
    (plain ctypes keeps the low bits: slot 2**32+1 would arrive as slot 1)."""
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value < 0
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    name = f"{'int' if signed else 'uint'}{bits}"

    class Ranged(ctype):  # type: ignore[misc, valid-type]
        @classmethod
        def from_param(cls, value: Any) -> Any:
            if isinstance(value, int) and not lo <= value <= hi:
                raise OverflowError(f"{value} is out of range for {name} [{lo}, {hi}]; nothing was called")
            return ctype.from_param(value)

    Ranged.__name__ = f"ranged_{name}"
    return Ranged


# Integer argument types checked for range at every call (from_param costs a few hundred ns).
_RANGED = {t: _ranged(t) for t in (c_int, c_int32, c_int64, c_uint64, c_size_t)}


def _declare(cdll: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(cdll, name, None)
        if fn is None:
            # A symbol that is not there yet in an older library, or a test-only export that the
            # production library does not have, stays absent; calling it raises AttributeError.
            continue
        fn.restype = restype
        fn.argtypes = [_RANGED.get(t, t) for t in argtypes]


def unchecked(cdll: ctypes.CDLL, name: str) -> Any:
    """A separate function object for the symbol with the plain ctypes argument types (no range
    checks): for a hot path whose caller checks its integers itself (``Session.step``)."""
    fn = cdll[name]
    fn.restype, fn.argtypes = _SIGNATURES[name]
    return fn


def check_range(name: str, value: int, lo: int, hi: int) -> int:
    """Return ``value`` when it is an int in [lo, hi]; raise ValueError naming the argument
    otherwise (before ctypes would truncate it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} is out of range [{lo}, {hi}]")
    return value


INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1


def _init_settings() -> bytes:
    """Runtime settings for esper_init, from the environment (read here, in
    Python: Go copies its environment once at load, so ``os.environ`` changes
    made by the program are passed this way)."""
    settings: dict[str, Any] = {
        "max_procs": int(os.environ.get("ESPER_GO_MAXPROCS", "2")),
        "log_level": os.environ.get("ESPER_LOG_LEVEL", "warn"),
        "esper_home": os.environ.get("ESPER_HOME", ""),
        # "" keeps the library's default: libonnxruntime.so.1 beside libesper.so.
        "onnxruntime_lib": os.environ.get("ESPER_ONNXRUNTIME_LIB", ""),
        # What Go reads when it opens a store (ESPER_URZA_URL, ESPER_S3_ENDPOINT, the AWS_*
        # credentials), as os.environ holds it now; Go mirrors exactly these two families.
        "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "ESPER_"))},
    }
    return json.dumps(settings).encode()


def refresh_settings() -> None:
    """Send the settings again if the environment changed them since the library read them
    (e.g. ``os.environ["ESPER_HOME"]`` or ``ESPER_URZA_URL`` set after the first Esper call).
    Called where a setting is used: opening an Urza store."""
    global _sent_settings
    cdll = lib()
    settings = _init_settings()
    with _lock:
        if settings != _sent_settings:
            check(cdll.esper_init(settings))
            _sent_settings = settings


def _after_fork_in_child() -> None:
    """Mark a forked child of a process that had started the Go runtime."""
    global _in_fork_child
    if _lib is not None:
        _in_fork_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def lib() -> ctypes.CDLL:
    """Return the loaded library, loading it on first use.

    Raises:
        ForkError: in a child created by fork after the library was loaded.
        LibraryError: when no library is found, it fails to load, or its ABI
            version differs from this package's.
    """
    global _lib, _lib_path, _loaded_pid, _sent_settings
    cdll = _lib
    if cdll is not None:
        if _in_fork_child:
            raise ForkError(
                f"Esper's Go runtime was started in process {_loaded_pid}, and this process "
                f"({os.getpid()}) is a child created by fork afterwards: the Go runtime does not "
                "survive fork, and a call into it would hang. Start worker processes with the "
                "'spawn' or 'forkserver' method (multiprocessing.set_start_method('spawn'), or "
                "DataLoader(..., multiprocessing_context='spawn')), or keep Esper calls in the "
                "main process."
            )
        return cdll
    with _lock:
        if _lib is not None:
            return lib()
        tried: list[str] = []
        for path in _candidates():
            if not path.is_file():
                tried.append(f"{path} (not found)")
                continue
            try:
                loaded = ctypes.CDLL(str(path))
            except OSError as exc:
                tried.append(f"{path} ({exc})")
                continue
            version = loaded.esper_abi_version()
            if version != ABI_VERSION:
                raise LibraryError(
                    f"{path} has ABI version {version}, but this esper package needs {ABI_VERSION}: "
                    "rebuild the library (pip install . or make lib) or point ESPER_LIBRARY at a matching one"
                )
            _declare(loaded)
            settings = _init_settings()
            rc = loaded.esper_init(settings)
            if rc != 0:
                # Not published: the next call loads and initialises again (and fails the same
                # way until the settings are fixed) instead of using an uninitialised library.
                _code, message = _last_error_of(loaded, 0)
                raise error_for_code(rc)(f"esper_init with {settings.decode()} failed: {message}", rc)
            # Published only now that esper_init succeeded.
            _lib, _lib_path, _loaded_pid = loaded, str(path), os.getpid()
            _sent_settings = settings
            return loaded
        raise LibraryError(
            "could not load libesper.so; tried: " + "; ".join(tried) + ". Build it with `pip install .` "
            "(needs Go) or `make lib`, or set ESPER_LIBRARY to its path."
        )


def library_path() -> str:
    """Return the path of the loaded library (loading it if needed)."""
    lib()
    assert _lib_path is not None
    return _lib_path


def last_error(handle: int = 0) -> tuple[int, str]:
    """Return (code, message) of the last error on handle (0: this thread)."""
    return _last_error_of(lib(), handle)


def _last_error_of(cdll: ctypes.CDLL, handle: int) -> tuple[int, str]:
    needed = c_size_t(0)
    cdll.esper_last_error(handle, None, 0, ctypes.byref(needed))
    buf = ctypes.create_string_buffer(max(needed.value, 1))
    code = cdll.esper_last_error(handle, buf, len(buf), None)
    return int(code), buf.value.decode("utf-8", "replace")


def check(rc: int, handle: int = 0) -> None:
    """Raise the EsperError subclass for a non-zero status code, with Go's message."""
    if rc == 0:
        return
    code, message = last_error(handle)
    if code != rc or not message:
        message = message or f"esper call failed with status {rc}"
    raise error_for_code(rc)(message, rc)


def take_string(ptr: c_void_p) -> str:
    """Copy a library-allocated C string and release it with esper_free."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8")
    finally:
        lib().esper_free(ptr)


def take_json(ptr: c_void_p) -> Any:
    """Decode a library-allocated JSON string and release it (json.loads reads the UTF-8 bytes
    as they are, without a str made first)."""
    if not ptr.value:
        return json.loads("")
    try:
        return json.loads(ctypes.string_at(ptr.value))
    finally:
        lib().esper_free(ptr)


def take_bytes(ptr: c_void_p, n: int) -> bytes:
    """Copy n library-allocated bytes and release them with esper_free."""
    if not ptr.value:
        return b""
    try:
        return ctypes.string_at(ptr.value, n)
    finally:
        lib().esper_free(ptr)


def runtime_stats() -> dict[str, Any]:
    """The Go runtime's memory figures: heap_alloc, heap_inuse, heap_sys, heap_objects, sys (bytes
    Go obtained from the OS), num_gc, mallocs (heap objects allocated so far), goroutines,
    goroutines_created (so far), sched_samples (goroutines made to run so far, as the runtime samples
    them for its scheduling-latency histogram: about one in eight) and handles (live Go objects). It
    stops Go's world briefly: call it to monitor, not every step."""
    out = c_void_p()
    check(lib().esper_runtime_stats(ctypes.byref(out)))
    return take_json(out)


@functools.cache
def _session_defaults_doc() -> dict[str, Any]:
    """esper_session_defaults' document, read once per process (a library's defaults cannot change).
    Private and shared: callers get copies."""
    out = c_void_p()
    check(lib().esper_session_defaults(ctypes.byref(out)))
    doc = take_json(out)
    if not isinstance(doc, dict):
        raise EsperError(f"esper_session_defaults returned {type(doc).__name__}, not an object")
    return doc


def session_defaults() -> dict[str, Any]:
    """The settings a Go session fills in when its config leaves them out (config JSON without
    "layers"; zero-valued defaults are absent): the one source of ``MorphConfig``'s defaults."""
    return copy.deepcopy(_session_defaults_doc())


def session_default(path: tuple[str, ...], zero: Any) -> Any:
    """The default of the session setting at ``path`` (e.g. ``("controller", "patience")``), or
    ``zero`` where Go's default is the zero value it leaves out of the document."""
    node: Any = _session_defaults_doc()
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return zero
        node = node[key]
    return copy.deepcopy(node)


def build_info() -> dict[str, Any]:
    """Return the library's build information (version, commit, ABI, Go)."""
    out = c_void_p()
    check(lib().esper_build_info(ctypes.byref(out)))
    info = take_json(out)
    info["path"] = _lib_path
    return info


class Handle:
    """Base class of Python objects that own a Go handle.

    ``close()`` is idempotent; objects work as context managers and close when
    collected; using one after ``close()`` raises :class:`HandleError`-like
    :class:`EsperError`; pickling is refused (the handle means nothing in
    another process: save state with ``state_dict`` or the object's own export).
    """

    _free_symbol: str = ""

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._pid = os.getpid()

    @property
    def handle(self) -> int:
        """The live handle; raises if the object was closed."""
        if not self._handle:
            raise EsperError(f"{type(self).__name__} is closed")
        return self._handle

    def close(self) -> None:
        """Release the Go object. Safe to call more than once."""
        h, self._handle = self._handle, 0
        if h and self._pid == os.getpid():
            check(getattr(lib(), self._free_symbol)(h))

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds a Go handle and cannot be pickled; save its state instead")
