"""Where a training step's overhead goes, in figures that a loaded machine does not blur.

For a bench pair (a dormant wrapped model against the plain one, or one active seed against the
model written by hand; the pairs of :mod:`esper.bench.steps`), over one signal interval
(``signal_every`` steps: one sampling step, one flush):

- the Python function calls (``cProfile``) and the top-level ATen ops (``torch.profiler``) of each
  side: deterministic counts, the same on any machine;
- the CPU time (this thread) of the sampling step and of the ordinary step before it, over many
  intervals: the minimum and the 20th percentile (load only adds time, so the low quantiles are
  the cost), and their difference, the sampling step's extra cost; and the baseline's step, timed
  in the same intervals (an ordinary step against it is what every step but one in
  ``signal_every`` costs).

Run ``python -m esper.bench.stepcost dormant:TinyMLP dormant:Deep1 active:TinyMLP:HOLDING:step``
(``dormant:<model>``, ``active:<model>:<BLENDING|HOLDING>:<guard>``; ``Deep<n>`` for ``Deep(n)``).
The module imports ``esper`` by its absolute name, so that the same file can measure another
checkout's package (``PYTHONPATH=<other>/python python path/to/stepcost.py ...``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["build", "counts", "sampling_cost", "main"]


def build(what: str, device: torch.device) -> tuple[Callable[[], None], Callable[[], None], Any]:
    """(Esper step, baseline step, morph) of ``dormant:<model>`` or
    ``active:<model>:<state>:<guard>`` (a residual_mlp seed of width 32 on fc2, as the bench's rows)."""
    from esper.bench import steps

    def spec(label: str) -> Any:
        if label.startswith("Deep"):
            return steps._deep_spec(int(label[4:].strip("()")))
        return steps._BY_LABEL[label]

    kind, _, rest = what.partition(":")
    if kind == "dormant":
        esper_step, plain, morph = steps.dormant_pair(spec(rest), device)
        return esper_step, plain, morph
    if kind == "active":
        label, state, guard = rest.split(":")
        esper_step, hand, morph, _ = steps.active_pair(spec(label), device, state, guard=guard, width=32)
        return esper_step, hand, morph
    raise ValueError(f"unknown pair {what!r}: use dormant:<model> or active:<model>:<state>:<guard>")


def _top_level_ops(fn: Callable[[], None], n: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
    return sum(1 for ev in prof.events() if ev.name.startswith("aten::")
               and (ev.cpu_parent is None or not ev.cpu_parent.name.startswith("aten::")))


def _python_calls(fn: Callable[[], None], n: int) -> int:
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        fn()
    pr.disable()
    return int(pstats.Stats(pr).total_calls)  # type: ignore[attr-defined]


def counts(esper_step: Callable[[], None], baseline: Callable[[], None], every: int) -> dict[str, int]:
    """Python calls and top-level ATen ops of each side over one interval of ``every`` steps."""
    return {"calls_esper": _python_calls(esper_step, every), "calls_baseline": _python_calls(baseline, every),
            "ops_esper": _top_level_ops(esper_step, every), "ops_baseline": _top_level_ops(baseline, every)}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def sampling_cost(esper_step: Callable[[], None], morph: Any, intervals: int,
                  baseline: Callable[[], None] | None = None) -> dict[str, float]:
    """CPU time (us, this thread) of the sampling step and of the ordinary step before it, min and
    20th percentile over ``intervals`` intervals; with ``baseline``, also the baseline's step, timed
    interleaved with Esper's ordinary steps (``baseline_min``, ``baseline_p20``)."""
    every = morph.config.signal_every
    while morph.steps % every:
        esper_step()
    sampled: list[float] = []
    ordinary: list[float] = []
    base: list[float] = []
    clock = time.thread_time_ns
    for _ in range(intervals):
        for i in range(every):
            start = clock()
            esper_step()
            took = (clock() - start) / 1e3
            if i == every - 1:
                sampled.append(took)
            elif i == every - 2:
                ordinary.append(took)
            if baseline is not None and i == every - 3:
                start = clock()
                baseline()
                base.append((clock() - start) / 1e3)
    out = {}
    for name, q in (("min", 0.0), ("p20", 0.2)):
        out[f"sampling_{name}"] = _quantile(sampled, q)
        out[f"ordinary_{name}"] = _quantile(ordinary, q)
        out[f"extra_{name}"] = out[f"sampling_{name}"] - out[f"ordinary_{name}"]
        if base:
            out[f"baseline_{name}"] = _quantile(base, q)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="dormant:<model> or active:<model>:<state>:<guard>")
    p.add_argument("--intervals", type=int, default=40, help="signal intervals timed per pair")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    import esper

    print(f"esper at {esper.__file__}")
    for what in args.pairs:
        esper_step, baseline, morph = build(what, device)
        every = morph.config.signal_every
        for _ in range(2 * every):
            esper_step()
            baseline()
        c = counts(esper_step, baseline, every)
        t = sampling_cost(esper_step, morph, args.intervals, baseline)
        morph.close()
        print(f"{what}: per interval of {every} steps: Python calls {c['calls_esper']} vs {c['calls_baseline']} "
              f"(+{c['calls_esper'] - c['calls_baseline']}), top-level ATen ops {c['ops_esper']} vs "
              f"{c['ops_baseline']} (+{c['ops_esper'] - c['ops_baseline']}); sampling step "
              f"{t['sampling_min']:.0f}/{t['sampling_p20']:.0f} us, ordinary step {t['ordinary_min']:.0f}/"
              f"{t['ordinary_p20']:.0f} us (min/p20 CPU time), extra {t['extra_min']:.0f}/{t['extra_p20']:.0f} us; "
              f"the baseline's step {t['baseline_min']:.0f}/{t['baseline_p20']:.0f} us",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
