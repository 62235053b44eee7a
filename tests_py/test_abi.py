"""The C ABI through the real library: round trips, typed errors, panics,
threads, fork, lazy loading."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from ctypes import c_double, c_float, c_size_t, c_void_p

import numpy as np
import pytest

import esper
from esper import _lib
from esper.errors import (
    EsperError,
    HandleError,
    InternalError,
    InvalidArgumentError,
    LibraryError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def checksum(values: np.ndarray) -> float:
    arr = np.ascontiguousarray(values, dtype=np.float32)
    out = c_double()
    ptr = arr.ctypes.data_as(ctypes.POINTER(c_float))
    _lib.check(_lib.lib().esper_checksum_f32(ptr, arr.size, ctypes.byref(out)))
    return out.value


def test_abi_version_and_build_info() -> None:
    assert _lib.lib().esper_abi_version() == _lib.ABI_VERSION
    info = esper.build_info()
    assert info["abi_version"] == _lib.ABI_VERSION
    with open(os.path.join(REPO, "VERSION")) as f:
        assert info["version"] == f.read().strip() == esper.__version__
    assert info["pid"] == os.getpid()
    assert info["gomaxprocs"] == int(os.environ.get("ESPER_GO_MAXPROCS", "2"))


def test_noop() -> None:
    assert _lib.lib().esper_noop() == 0


@pytest.mark.parametrize("n", [0, 1, 7, 1_000_000])
def test_checksum_carries_every_float(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.standard_normal(n).astype(np.float32)
    assert checksum(values) == pytest.approx(float(values.astype(np.float64).sum()), abs=1e-6 * max(n, 1))


def test_go_error_is_typed_with_go_message() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown field \"bogus\""):
        _lib.check(_lib.lib().esper_init(json.dumps({"bogus": 1}).encode()))
    with pytest.raises(InvalidArgumentError, match="log_level \"loud\""):
        _lib.check(_lib.lib().esper_init(b'{"log_level": "loud"}'))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        checksum(np.array([1.0, np.nan], dtype=np.float32))
    # The library still works after errors.
    _lib.check(_lib.lib().esper_init(b'{"max_procs": 2}'))


def test_null_out_pointer_is_an_error_not_a_crash() -> None:
    arr = np.ones(4, dtype=np.float32)
    rc = _lib.lib().esper_checksum_f32(arr.ctypes.data_as(ctypes.POINTER(c_float)), 4, None)
    with pytest.raises(InvalidArgumentError, match="out must not be NULL"):
        _lib.check(rc)
    with pytest.raises(InvalidArgumentError, match="data must not be NULL"):
        _lib.check(_lib.lib().esper_checksum_f32(None, 3, ctypes.byref(c_double())))
    with pytest.raises(InvalidArgumentError):
        _lib.check(_lib.lib().esper_build_info(None))


def test_unknown_handle() -> None:
    with pytest.raises(HandleError, match="handle 987654 is unknown"):
        _lib.check(_lib.lib().esper_cancel(987654), 987654)


@pytest.mark.parametrize("in_goroutine", [0, 1])
def test_panic_becomes_error_and_process_lives(in_goroutine: int) -> None:
    with pytest.raises(InternalError, match="deliberate panic"):
        _lib.check(_lib.lib().esper_test_panic(in_goroutine))
    assert _lib.lib().esper_noop() == 0
    assert checksum(np.arange(10, dtype=np.float32)) == 45.0


def test_last_error_truncates_into_small_buffer() -> None:
    with pytest.raises(InvalidArgumentError):
        _lib.check(_lib.lib().esper_init(b'{"bogus": 1}'))
    needed = c_size_t()
    buf = ctypes.create_string_buffer(8)
    code = _lib.lib().esper_last_error(0, buf, 8, ctypes.byref(needed))
    assert code == InvalidArgumentError.code
    assert len(buf.value) == 7 and needed.value > 8


def test_eight_threads_get_consistent_results() -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            rng = np.random.default_rng(i)
            values = rng.standard_normal(10_000).astype(np.float32)
            want = float(values.astype(np.float64).sum())
            barrier.wait()
            for _ in range(200):
                assert checksum(values) == pytest.approx(want, abs=1e-6)
                # Each thread's error message stays its own (per-thread slot).
                with pytest.raises(InvalidArgumentError, match=f"thread{i}\""):
                    _lib.check(_lib.lib().esper_init(json.dumps({f"thread{i}": 1}).encode()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_import_does_not_load_the_library() -> None:
    proc = run_python(
        "import esper, esper._lib as l\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(l._lib is None, 'libesper' in maps)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]


def test_forked_child_gets_clear_error_instead_of_hanging() -> None:
    code = (
        "import os, esper\n"
        "esper.build_info()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        esper.build_info()\n"
        "    except esper.ForkError as e:\n"
        "        os._exit(0 if 'spawn' in str(e) else 3)\n"
        "    os._exit(2)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
        "print(esper.build_info()['pid'] == os.getpid())\n"
    )
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True"]


def test_missing_library_lists_paths_tried() -> None:
    proc = run_python(
        "import esper\n"
        "try:\n"
        "    esper.build_info()\n"
        "except esper.LibraryError as e:\n"
        "    print(str(e))\n",
        env={"ESPER_LIBRARY": "/nonexistent/libesper.so"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "/nonexistent/libesper.so (not found)" in proc.stdout
    assert LibraryError.__mro__[1] is EsperError


def test_take_string_frees_library_memory() -> None:
    out = c_void_p()
    _lib.check(_lib.lib().esper_build_info(ctypes.byref(out)))
    text = _lib.take_string(out)
    assert json.loads(text)["abi_version"] == _lib.ABI_VERSION


def test_python_declares_every_export_of_the_header() -> None:
    import re

    with open(os.path.join(REPO, "capi", "esper.h")) as f:
        header = set(re.findall(r"(?m)^(?:int|int32_t|void)\s+\*?(esper_\w+)\s*\(", f.read()))
    declared = set(_lib._SIGNATURES)
    assert header == declared, (sorted(header - declared), sorted(declared - header))
    for name in header:
        assert getattr(_lib.lib(), name).argtypes is not None or name == "esper_abi_version", name
