"""What recording a run to Urza costs: one of the demo's grown runs (digits, Tamiyo's settings, the
demo's seed 0) with outcome records on and off, interleaved round after round.

Both sides validate and cache their builds the same way (the store is on the training path either
way); what differs is ``MorphConfig.record_outcomes``: the outcome recorder, its writer thread, and
the trained kernels it publishes. Each round times one whole run of each side, wall clock as the
issue's bar asks (the writer thread runs beside training, so its cost shows as wall time only where
it takes the training thread's core) and CPU time of the process (every thread, the writer's
included: what the recording costs the machine).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from .harness import Timing
from .rows import Row, ratio_at_most, timing_row

__all__ = ["recording_rows", "RECORDING"]

#: The bar: a run that records its outcomes takes at most 1% longer than one that does not.
RECORDING = ratio_at_most(1.01)


def _demo_run(record: bool, epochs: int) -> Callable[[], Any]:
    """A zero-argument callable making one grown digits run of the demo (seed 0) with recording on or off."""
    from ..demo.data import load_task
    from ..demo.experiments import SETUPS, grown_run

    base = SETUPS["digits"]
    setup = replace(base, epochs=epochs, morph=replace(base.morph, record_outcomes=record))
    task = load_task("digits", 0, "cpu")
    return lambda: grown_run(task, setup, 0)


def recording_rows(rounds: int, quick: bool = False) -> list[Row]:
    """A demo run's wall time and CPU time with Urza recording on against off (a fresh ``ESPER_HOME``)."""
    epochs = 60  # the demo's run length: shorter runs end before Tamiyo's first germination
    rounds = min(rounds, 3) if quick else rounds
    runs = {"on": _demo_run(True, epochs), "off": _demo_run(False, epochs)}
    wall: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    germinations = 0
    before_home, before_threads = os.environ.get("ESPER_HOME"), torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="esper-bench-recording-") as home:
        os.environ["ESPER_HOME"] = home
        torch.set_num_threads(1)
        try:
            for name in ("on", "off"):  # warm-up: the first builds are validated and cached here
                runs[name]()
            for r in range(rounds):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    w0, c0 = time.perf_counter(), time.process_time()
                    result = runs[name]()
                    wall[name].append(time.perf_counter() - w0)
                    cpu[name].append(time.process_time() - c0)
                    germinations = result.germinations
        finally:
            torch.set_num_threads(before_threads)
            if before_home is None:
                os.environ.pop("ESPER_HOME", None)
            else:
                os.environ["ESPER_HOME"] = before_home
    what = (f"esper.demo's grown digits run (seed 0, {epochs} epochs, {germinations} germinations, one torch "
            f"thread), MorphConfig.record_outcomes True against False, a fresh ESPER_HOME; one whole run per "
            f"round and side, sides alternating")
    return [
        timing_row("cache", "demo run, Urza recording on vs off (wall time)", "cpu", Timing("on", wall["on"]),
                   Timing("off", wall["off"]), baseline_name="the same run, record_outcomes=False",
                   target=RECORDING, unit="s", note=what, extra={"germinations": germinations}),
        timing_row("cache", "demo run, Urza recording on vs off (CPU time, every thread)", "cpu",
                   Timing("on", cpu["on"]), Timing("off", cpu["off"]),
                   baseline_name="the same run, record_outcomes=False", target=None, unit="s",
                   note=what + "; CPU time includes the outcome writer's thread"),
    ]
