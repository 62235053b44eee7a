"""One side of the end-of-epoch rows, alone in its process, for a profiler (issue 18).

``python -m esper.bench.epochcost SIDE [EPOCHS]`` trains the dormant wrapped TinyMLP of the bench
(``esper.bench.steps.MODELS``) for EPOCHS epochs (default 400) of 20 steps and ``end_epoch``, with
SIDE one of: ``off`` (session detached from its bus: nothing published, written or sent), ``log``
(bus and run log, in a temporary folder) or ``nats`` (bus, run log and the NATS sink to a local
nats-server with JetStream, build/bin/esper-nats). It prints the CPU time of this process per
``end_epoch`` (mean and median, microseconds), with one torch thread as the bench, and counts: the
context switches of all the process's threads per
epoch (voluntary: a thread that waited, e.g. a goroutine's thread parked or the Go runtime's
``sysmon`` sleeping between its polls; involuntary: preempted), from /proc/self/task/*/status, the
CPU time of the whole epoch (steps included: the goroutines' work that outlasts ``end_epoch``), the
Go heap allocations and goroutines started per epoch (``esper_runtime_stats``), and with ``nats``
the sink's bursts and events sent per epoch (its stats). For the Go threads' system calls per epoch
(futex wake-ups and waits, socket reads and writes, ``sysmon``'s sleeps), which the machine's load
changes little but for ``sysmon``'s, run it under ``perf trace -s -o FILE`` and then ``python -m
esper.bench.epochcost --perf-trace FILE EPOCHS``: the calls of every thread of the process but the
main one, over EPOCHS + 5 epochs (the warm-up's included). Run it under a
sampling profiler to see where an end of epoch goes, side by side, e.g. with a library built with
symbols::

    CGO_ENABLED=1 go build -buildmode=c-shared -o /tmp/sym.so ./capi
    ESPER_LIBRARY=/tmp/sym.so perf record -F 4000 -g python -m esper.bench.epochcost nats

then ``perf report --children --comm python`` (docs/performance.md, "The end of an epoch with the
run log, bus, NATS and metrics on").
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

__all__ = ["epoch_cost", "switches", "go_syscalls"]

SIDES = ("off", "log", "nats")


def switches() -> tuple[int, int]:
    """Voluntary and involuntary context switches of every live thread of this process."""
    vol = invol = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return vol, invol


def epoch_cost(side: str, epochs: int = 400, counts: dict[str, float] | None = None) -> list[float]:
    """CPU seconds of this process per ``end_epoch`` on ``side`` (see the module doc). ``counts``, when
    given, receives the per-epoch counts over the timed epochs (see the module doc)."""
    from .. import _lib, wrap
    from . import models
    from .native import local_nats
    from .steps import MODELS, _adam, _morph, make_step

    if side not in SIDES:
        raise ValueError(f"side {side!r}: want one of {SIDES}")
    spec = next(m for m in MODELS if m.label == "TinyMLP")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(local_nats()) if side == "nats" else ""
        runs = stack.enter_context(tempfile.TemporaryDirectory(prefix="esper-bench-epochcost-"))
        torch.manual_seed(0)
        plain = spec.build()
        x, y = models.make_batch(spec.batch_kind, spec.batch, torch.device("cpu"))
        model = wrap(copy.deepcopy(plain), list(spec.targets))
        opt = _adam(model)
        morph = _morph(model, opt, runs=runs, nats_url=url)
        stack.callback(morph.close)
        if side == "off":
            morph.session.attach_oona(None)
        step = make_step(model, opt, x, y, morph)
        got = []
        before: tuple[tuple[int, int], dict[str, Any], dict[str, Any]] | None = None
        whole = 0.0
        for e in range(epochs + 5):  # the first 5 warm up
            if e == 5:
                nats0 = _nats_counts(morph, settle=True)  # the warm-up's events all acknowledged
                before = (switches(), nats0, _lib.runtime_stats())
                whole = time.process_time()
            for _ in range(20):
                step()
            start = time.process_time()
            morph.end_epoch(val_loss=1.0)
            if e >= 5:
                got.append(time.process_time() - start)
        if counts is not None and before is not None:
            (vol0, invol0), nats0, go0 = before
            vol1, invol1 = switches()
            go1 = _lib.runtime_stats()
            counts["epoch_cpu_us"] = (time.process_time() - whole) / epochs * 1e6
            counts["voluntary_switches"] = (vol1 - vol0) / epochs
            counts["involuntary_switches"] = (invol1 - invol0) / epochs
            counts["go_mallocs"] = (go1["mallocs"] - go0["mallocs"]) / epochs
            counts["goroutines_created"] = (go1["goroutines_created"] - go0["goroutines_created"]) / epochs
            for k, v in _nats_counts(morph, settle=True).items():
                counts[f"nats_{k}"] = (v - nats0[k]) / epochs
    return got


def _nats_counts(morph: Any, settle: bool = False) -> dict[str, Any]:
    """The sink's cumulative counts (none without a sink); with ``settle``, once every event
    published so far is acknowledged (at most 10 s), so that the counts between two settled reads
    are those of the epochs between them."""
    nats = morph.oona.stats().get("nats") if morph.oona is not None else None
    if not nats:
        return {}
    deadline = time.monotonic() + 10
    while settle and nats["pending"] and time.monotonic() < deadline:
        time.sleep(0.01)
        nats = morph.oona.stats()["nats"]
    return {k: nats[k] for k in ("sent", "bursts") if k in nats}


def go_syscalls(trace: str, epochs: int) -> dict[str, float]:
    """System calls per epoch of the Go threads (every ``python`` thread but the main one, the
    lowest id) in ``perf trace -s`` output ``trace`` of a run of ``epochs`` epochs and its warm-up."""
    text = open(trace).read()
    parts = re.split(r"\n (\S+) \((\d+)\), \d+ events", text)
    threads = [(parts[i], int(parts[i + 1]), parts[i + 2]) for i in range(1, len(parts) - 2, 3)]
    ours = [t for t in threads if t[0] == "python"]
    if not ours:
        raise ValueError(f"{trace}: no python thread in this perf trace -s output")
    main = min(tid for _, tid, _ in ours)
    calls: dict[str, int] = {}
    for _, tid, body in ours:
        if tid != main:
            for m in re.finditer(r"^\s+(\w+)\s+(\d+)\s+\d+", body, re.M):
                calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    n = epochs + 5
    return {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--perf-trace":
        per = go_syscalls(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 400)
        print("Go threads' system calls per epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
        sys.exit(0)
    torch.set_num_threads(1)  # as the bench
    side = sys.argv[1] if len(sys.argv) > 1 else "nats"
    counts: dict[str, float] = {}
    got = epoch_cost(side, int(sys.argv[2]) if len(sys.argv) > 2 else 400, counts)
    print(f"{side}: end_epoch CPU time mean {statistics.mean(got) * 1e6:.0f} us, "
          f"median {statistics.median(got) * 1e6:.0f} us over {len(got)} epochs; per epoch: "
          + ", ".join(f"{k} {v:.2f}" for k, v in counts.items()))
