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
With ``--phases`` (dormant pairs), the median CPU time of each part of the sampling step instead:
forward, backward, optimizer step, ``morph.step``, and inside it the flush, the health read, the
call into Go, the forward and backward taps.
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

__all__ = ["build", "counts", "phases", "sampling_cost", "main"]


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


# Where the sampling step's time goes: (owner module attribute path, function, label). Wrapped only by
# phases(), for its measurement, and put back after.
_PHASES = (
    ("esper.tolaria", "Morphogenesis", "_flush", "flush"),
    ("esper.tolaria", None, "gather_health", "gather_health"),
    ("esper.tolaria", None, "set_sampling", "set_sampling"),
    ("esper.session", "Session", "step", "go_step"),
    ("esper.session", "Session", "waiting", "go_waiting"),
    ("esper.session", "Session", "step_waiting", "go_step_waiting"),
    ("esper.kasmina", "KasminaLayer", "_sample_eager", "forward_taps"),
    ("esper.kasmina", "KasminaLayer", "_record_grad", "backward_taps"),
)


def phases(what: str, device: torch.device, intervals: int) -> dict[str, tuple[float, float]]:
    """CPU time (us, this thread; median over ``intervals``) of each part of the sampling step and of
    the ordinary step before it: the forward (with the loss), the backward, the optimizer step,
    ``morph.step``, and the Esper functions named in ``_PHASES`` (0 where a checkout lacks one).

    Returns:
        label -> (sampling step, ordinary step).
    """
    import importlib

    import torch.nn.functional as F

    from esper import wrap
    from esper.bench import models, steps

    acc: dict[str, int] = {}
    clock = time.thread_time_ns
    saved = []
    for module_name, owner_name, name, label in _PHASES:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        fn = getattr(owner, name, None)
        if fn is None:
            continue

        def timed(*args: Any, _fn: Any = fn, _label: str = label, **kwargs: Any) -> Any:
            start = clock()
            try:
                return _fn(*args, **kwargs)
            finally:
                acc[_label] = acc.get(_label, 0) + clock() - start

        saved.append((owner, name, fn))
        setattr(owner, name, timed)
    try:
        kind, _, label = what.partition(":")
        if kind != "dormant":
            raise ValueError(f"phases measures dormant pairs (dormant:<model>), got {what!r}")
        spec = steps._deep_spec(int(label[4:].strip("()"))) if label.startswith("Deep") else steps._BY_LABEL[label]
        torch.manual_seed(0)
        model = wrap(spec.build().to(device), list(spec.targets))
        x, y = models.make_batch(spec.batch_kind, spec.batch, device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        morph = steps._morph(model, opt)
        marks: dict[str, int] = {}

        def step() -> None:
            t0 = clock()
            loss = F.cross_entropy(model(x), y)
            t1 = clock()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = clock()
            opt.step()
            t3 = clock()
            morph.step(loss)
            t4 = clock()
            marks.update(forward=t1 - t0, backward=t2 - t1, optimizer=t3 - t2, morph_step=t4 - t3, total=t4 - t0)

        every = morph.config.signal_every
        for _ in range(3 * every):
            step()
        while morph.steps % every:
            step()
        sampled: list[dict[str, int]] = []
        ordinary: list[dict[str, int]] = []
        for _ in range(intervals):
            for i in range(every):
                acc.clear()
                step()
                if i >= every - 2:
                    (sampled if i == every - 1 else ordinary).append({**marks, **acc})
        morph.close()
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    labels = ["total", "forward", "backward", "optimizer", "morph_step"] + [p[3] for p in _PHASES]

    def median(rows: list[dict[str, int]], key: str) -> float:
        return _quantile([r.get(key, 0) / 1e3 for r in rows], 0.5)

    return {k: (median(sampled, k), median(ordinary, k)) for k in labels}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="dormant:<model> or active:<model>:<state>:<guard>")
    p.add_argument("--intervals", type=int, default=40, help="signal intervals timed per pair")
    p.add_argument("--phases", action="store_true",
                   help="instead: the median CPU time of each part of the sampling step and of the ordinary "
                        "step before it (dormant pairs)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    import esper

    print(f"esper at {esper.__file__}")
    if args.phases:
        for what in args.pairs:
            got = phases(what, device, args.intervals)
            print(f"{what}: median CPU time (us, this thread) over {args.intervals} intervals, sampling step / "
                  "ordinary step before it")
            for label, (on, off) in got.items():
                print(f"  {label:16s} {on:8.0f} {off:8.0f}")
        return 0
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
