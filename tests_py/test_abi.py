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
    InvalidArgumentError,
    LibraryError,
)
from esper.session import Session

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


@pytest.fixture(scope="session")
def test_library() -> str:
    """The test variant of the library (build/test/libesper.so, with the test-only exports),
    built with `make test-lib` (a no-op when it is up to date)."""
    proc = subprocess.run(["make", "-s", "test-lib"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = os.path.join(REPO, "build", "test", "libesper.so")
    assert os.path.isfile(path)
    return path


def test_panic_becomes_error_and_process_lives(test_library: str) -> None:
    # esper_test_panic lives only in the test variant: run it in a process that loads that one.
    proc = run_python(
        "from esper import _lib\n"
        "from esper.errors import InternalError\n"
        "for in_goroutine in (0, 1):\n"
        "    try:\n"
        "        _lib.check(_lib.lib().esper_test_panic(in_goroutine))\n"
        "    except InternalError as e:\n"
        "        print('caught:', e)\n"
        "print(_lib.lib().esper_noop())\n",
        env={"ESPER_LIBRARY": test_library},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().split("\n")
    assert lines[0].startswith("caught: esper: internal error (recovered panic): esper_test_panic: deliberate panic")
    assert lines[1].startswith("caught: esper: internal error (recovered panic in goroutine)")
    assert lines[2] == "0"


def test_production_library_has_no_test_exports(test_library: str) -> None:
    assert not hasattr(_lib.lib(), "esper_test_panic")
    assert ctypes.CDLL(test_library).esper_test_panic is not None  # negative control: the variant has it


def test_last_error_with_huge_capacity_does_not_abort() -> None:
    # capacity = SIZE_MAX once became a negative slice length: a panic outside any recover, and
    # the process aborted. Run in a subprocess so an abort shows as its exit status.
    proc = run_python(
        "import ctypes\n"
        "from esper import _lib\n"
        "cdll = _lib.lib()\n"
        "assert cdll.esper_init(b'{\"bogus\": 1}') != 0\n"
        "buf = ctypes.create_string_buffer(4096)\n"
        "code = cdll.esper_last_error(0, buf, 2**64 - 1, None)\n"
        "print(code, buf.value.decode())\n"
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    code, message = proc.stdout.split(" ", 1)
    assert int(code) == InvalidArgumentError.code and 'unknown field "bogus"' in message


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_error_table_stays_bounded_under_forged_handles() -> None:
    # Each failing call on a forged handle used to add a slot to Go's error table for good
    # (400k of them: +64 MB). Now an unknown handle's error goes to the calling thread's slot.
    cdll = _lib.lib()
    cdll.esper_cancel(1 << 50)  # warm up
    before = _rss_kib()
    for h in range(1 << 50, (1 << 50) + 200_000):
        assert cdll.esper_cancel(h) != 0
    grown_mib = (_rss_kib() - before) / 1024
    assert grown_mib < 8, f"RSS grew by {grown_mib:.1f} MiB over 200k failing calls on forged handles"
    with pytest.raises(HandleError, match=f"handle {(1 << 50) + 7} is unknown"):
        _lib.check(cdll.esper_cancel((1 << 50) + 7), (1 << 50) + 7)


def test_integers_out_of_range_are_refused_before_ctypes_truncates_them() -> None:
    session = Session({"layers": [{"name": "fc", "kind": "linear", "in": 4, "out": 4}],
                             "slots_per_layer": 2})
    try:
        with pytest.raises(ValueError, match=r"slot 4294967297 is out of range"):
            session.germinate(0, 2**32 + 1, {"template": "linear"})
        with pytest.raises(ValueError, match=r"layer -4294967296 is out of range"):
            session.prune(-(2**32), 0)
        with pytest.raises(ValueError, match=r"steps 9223372036854775808 is out of range"):
            session.step(2**63)
        assert all(s["state"] == "DORMANT" for s in session.seeds())  # nothing reached slot 1
        # Negative control: the same slot in range names a real slot and works.
        session.germinate(0, 1, {"template": "linear"})
        assert [s["state"] for s in session.seeds()] == ["DORMANT", "GERMINATED"]
        # Every declared integer argument is checked, also when called directly.
        with pytest.raises(ctypes.ArgumentError, match="out of range for int32"):
            _lib.lib().esper_session_prune(session.handle, 0, 2**32 + 1, b"x", ctypes.byref(c_void_p()))
        with pytest.raises(ctypes.ArgumentError, match="out of range for uint64"):
            _lib.lib().esper_cancel(-1)
    finally:
        session.close()


def test_failed_init_does_not_publish_the_library() -> None:
    proc = run_python(
        "import os, esper\n"
        "from esper import _lib\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        _lib.lib()\n"
        "        print('loaded')\n"
        "    except esper.EsperError as e:\n"
        "        print(type(e).__name__, _lib._lib is None)\n"
        "os.environ['ESPER_LOG_LEVEL'] = 'info'\n"  # fixed: the next call initialises and publishes
        "print(_lib.lib() is _lib._lib, _lib.lib().esper_noop())\n",
        env={"ESPER_LOG_LEVEL": "chatty"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().split("\n")
    assert lines == ["InvalidArgumentError True", "InvalidArgumentError True", "True 0"], proc.stdout


def test_duplicate_json_keys_are_refused_at_the_abi() -> None:
    with pytest.raises(InvalidArgumentError, match="duplicate object key"):
        _lib.check(_lib.lib().esper_init(b'{"log_level": "warn", "log_level": "debug"}'))
    layer = '{"name": "fc", "kind": "linear", "in": 4, "out": 4}'
    out = ctypes.c_uint64()
    rc = _lib.lib().esper_session_new(f'{{"layers": [{layer}], "slots_per_layer": 1, "slots_per_layer": 2}}'.encode(),
                                      ctypes.byref(out))
    with pytest.raises(InvalidArgumentError, match="duplicate object key"):
        _lib.check(rc)
    session = Session(json.loads(f'{{"layers": [{layer}]}}'))
    try:
        with pytest.raises(InvalidArgumentError, match="duplicate object key"):
            _lib.check(_lib.lib().esper_session_germinate(
                session.handle, 0, 0, b'{"template": "linear", "template": "residual_mlp"}',
                ctypes.byref(c_void_p())), session.handle)
        snap = session.snapshot()
        with pytest.raises(InvalidArgumentError, match="duplicate object key"):
            session.restore(snap[:-1] + ', "step": 0}')
        session.restore(snap)  # negative control
    finally:
        session.close()


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
        text = f.read()
    decl = r"(?m)^(?:int|int32_t|void)\s+\*?(esper_\w+)\s*\("
    test_block = re.compile(r"(?ms)^#ifdef ESPER_TEST_LIBRARY$.*?^#endif")
    test_only = set(re.findall(decl, "\n".join(test_block.findall(text))))
    header = set(re.findall(decl, test_block.sub("", text)))
    declared = set(_lib._SIGNATURES)
    assert header | test_only == declared, (sorted((header | test_only) - declared), sorted(declared - header))
    for name in header:
        assert getattr(_lib.lib(), name).argtypes is not None or name == "esper_abi_version", name
    assert test_only and not any(hasattr(_lib.lib(), name) for name in test_only)
