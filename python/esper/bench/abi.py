"""ABI figures: the cost of one call into Go and the throughput of a batched
call carrying a float buffer (the path health signals take)."""

from __future__ import annotations

import statistics
import time
from ctypes import POINTER, byref, c_double, c_float
from typing import Any

import numpy as np

from .. import _lib
from ..kasmina import SIGNALS
from .rows import Row, samples_row, value_at_least, value_at_most

__all__ = ["bench_abi", "bench_cold"]


def _per_call(fn: Any, inner: int, rounds: int) -> list[float]:
    """CPU seconds of this process per call, over ``rounds`` blocks of ``inner`` calls."""
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(inner):
            fn()
        out.append((time.process_time() - start) / inner)
    return out


def _after_work(fn: Any, gap_s: float, calls: int) -> float:
    """Median wall seconds of one call of fn made after ``gap_s`` seconds of PyTorch work, as in a
    training loop (caches and the Go runtime have gone cold since the last call)."""
    import torch

    x = torch.randn(64, 64)
    times = []
    for _ in range(calls):
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            x @ x
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cold(rounds: int = 7, calls: int = 60, gap_s: float = 0.001) -> list[Row]:
    """The no-op call and the session step call as a training loop sees them: one call after
    ``gap_s`` of PyTorch work, against a libc call through ctypes after the same work; with one
    torch thread (as every other row) and with torch on every core (its default)."""
    import ctypes
    import ctypes.util
    import os

    import numpy as np_
    import torch

    from ..session import Session

    cdll = _lib.lib()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    getpid = libc.getpid
    noop = cdll.esper_noop
    layers = [{"name": f"fc{i}", "kind": "linear", "in": 64, "out": 64} for i in range(8)]
    signals = np_.full(2 + len(SIGNALS) * 8, 0.5, dtype=np_.float32)
    signals[1] = 0.0
    threads = torch.get_num_threads()
    rows = []
    try:
        with Session({"layers": layers, "slots_per_layer": 2, "policy": "manual"}) as s:
            for n in sorted({1, os.cpu_count() or 1}):
                torch.set_num_threads(n)
                got: dict[str, list[float]] = {"noop": [], "libc": [], "step": []}
                for _ in range(rounds):
                    got["noop"].append(_after_work(noop, gap_s, calls) * 1e6)
                    got["libc"].append(_after_work(getpid, gap_s, calls) * 1e6)
                    got["step"].append(_after_work(lambda: s.step(1, signals), gap_s, calls) * 1e6)
                libc_us = statistics.median(got["libc"])
                what = (f"one call after {gap_s * 1e3:g} ms of PyTorch work (64x64 matmuls, {n} torch thread(s)), "
                        f"median of {calls} per round; wall time")
                tag = f"{n} torch thread{'s' if n > 1 else ''}"
                rows += [
                    samples_row("abi", f"no-op call after 1 ms of torch work, {tag}", "cpu", got["noop"], "us",
                                target=value_at_most(2.0, "<= 2 us"), source="ABI", baseline=libc_us,
                                baseline_name="libc getpid through ctypes after the same work",
                                note=f"{what}: what a call into Go costs inside a training loop; missed because "
                                     "Go's sysmon takes back the scheduler P the thread keeps while it runs torch, and "
                                     "the next call takes the slow path (golang/go#57103; docs/internals.md)"),
                    samples_row("abi", f"session step after 1 ms of torch work, {tag}", "cpu", got["step"], "us",
                                target=None, source="ABI", baseline=libc_us,
                                baseline_name="libc getpid through ctypes after the same work",
                                note=f"{what}; Session.step, 8 layers, 50 signal floats in, 16 alphas out"),
                ]
    finally:
        torch.set_num_threads(threads)
    return rows


def bench_abi(rounds: int = 7) -> list[Row]:
    """Measure the no-op call and the 1 M float batched call (medians over rounds)."""
    cdll = _lib.lib()
    noop = cdll.esper_noop
    _per_call(noop, 10_000, 1)
    noop_s = _per_call(noop, 100_000, rounds)

    # A pure-Python call of the same shape, to show what is ctypes and what is Go.
    def py_noop() -> int:
        return 0

    py_s = _per_call(py_noop, 100_000, rounds)

    floats = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    ptr = floats.ctypes.data_as(POINTER(c_float))
    out = c_double()
    checksum = cdll.esper_checksum_f32

    def batched() -> None:
        rc = checksum(ptr, floats.size, byref(out))
        if rc:
            _lib.check(rc)

    batched_s = _per_call(batched, 20, rounds)
    rate = [floats.size / t / 1e6 for t in batched_s]
    return [
        samples_row("abi", "no-op call (Python -> Go)", "cpu", [t * 1e6 for t in noop_s], "us",
                    target=value_at_most(2.0, "<= 2 us"), source="ABI",
                    baseline=statistics.median(py_s) * 1e6, baseline_name="plain Python function call",
                    note="esper_noop through ctypes, 100k calls per round"),
        samples_row("abi", "batched call carrying 1 M float32", "cpu", rate, "M floats/s",
                    target=value_at_least(50.0, ">= 50 M floats/s"), source="ABI",
                    note=f"esper_checksum_f32 over 1 M floats (pointer + length), "
                         f"{statistics.median(batched_s) * 1e3:.2f} ms per call"),
    ]
