"""ABI figures: the cost of one call into Go and the throughput of a batched
call carrying a float buffer (the path health signals take)."""

from __future__ import annotations

import statistics
import time
from ctypes import POINTER, byref, c_double, c_float
from typing import Any

import numpy as np

from .. import _lib

__all__ = ["bench_abi"]


def _per_call(fn: Any, inner: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - start) / inner)
    return out


def bench_abi(rounds: int = 7) -> list[dict[str, Any]]:
    """Measure the no-op call and the 1 M float batched call.

    Returns:
        Rows: {name, value, unit, spread, target, ok}.
    """
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
    rate = [floats.size / s for s in batched_s]
    rows = [
        {
            "name": "ABI: no-op call (Python -> Go)",
            "value": statistics.median(noop_s) * 1e6,
            "unit": "us",
            "spread": [min(noop_s) * 1e6, max(noop_s) * 1e6],
            "baseline": statistics.median(py_s) * 1e6,
            "baseline_name": "plain Python function call",
            "target": "<= 2 us",
            "ok": statistics.median(noop_s) * 1e6 <= 2.0,
        },
        {
            "name": "ABI: batched call carrying 1 M float32",
            "value": statistics.median(rate) / 1e6,
            "unit": "M floats/s",
            "spread": [min(rate) / 1e6, max(rate) / 1e6],
            "call_ms": statistics.median(batched_s) * 1e3,
            "target": ">= 50 M floats/s",
            "ok": statistics.median(rate) >= 50e6,
        },
    ]
    return rows
