"""Side-by-side timing: candidates are run interleaved, round after round, so
that drift of the machine hits all of them alike; each round times a block of
calls; the figure is the median over rounds, the spread is min..max."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Timing", "compare", "ratio", "time_block"]


@dataclass
class Timing:
    """Per-call seconds of one candidate over several rounds."""

    name: str
    rounds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.rounds), max(self.rounds)


def time_block(fn: Callable[[], object], inner: int) -> float:
    """Seconds per call of fn, over inner consecutive calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def compare(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    inner: int = 50,
    warmup: int = 5,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every candidate in interleaved rounds.

    Args:
        candidates: name -> a zero-argument callable doing one unit of work.
        rounds: how many rounds (the median is over these; at least 5).
        inner: calls per round and candidate.
        warmup: untimed calls of each candidate first.
        sync: called after each block (e.g. torch.cuda.synchronize).
        clock: seconds now: ``time.perf_counter`` (wall) by default; ``time.process_time`` (CPU
            time of this process, every thread) discounts the time the process waits for a core
            on a shared machine. Use wall time where work runs outside this process (a GPU).

    Returns:
        name -> Timing.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    if sync:
        sync()
    out = {name: Timing(name, []) for name in candidates}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            # Alternate the order every round so neither side always goes first.
            names = list(candidates) if r % 2 == 0 else list(reversed(candidates))
            for name in names:
                fn = candidates[name]
                if sync:
                    sync()
                start = clock()
                for _ in range(inner):
                    fn()
                if sync:
                    sync()
                out[name].rounds.append((clock() - start) / inner)
    finally:
        if gc_was:
            gc.enable()
    return out


def ratio(candidate: Timing, baseline: Timing) -> tuple[float, float, float]:
    """Median and min..max over rounds of candidate / baseline, round by round."""
    rs = [c / b for c, b in zip(candidate.rounds, baseline.rounds)]
    return statistics.median(rs), min(rs), max(rs)
