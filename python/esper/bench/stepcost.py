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
call into Go, the forward and backward taps. With ``--per-step``, counts per step instead
(:func:`per_step`): ATen ops (a dispatch mode: forward, backward, optimizer), the tensors they
allocate, Python calls (``sys.setprofile``) and calls into libesper, Esper's extra over the baseline
on the steps that do not sample and on the one that does. With ``--guards`` (active pairs), the
ordinary (not sampling) steps of the default guard and of guard "sampled" on the same model (the
layers' ``guard_every_step`` switched between steps) and the hand-written model's, in rotating
order: their CPU time and the median of the per-round differences (:func:`guard_cost`).
The module imports ``esper`` by its absolute name, so that the same file can measure another
checkout's package (``PYTHONPATH=<other>/python python path/to/stepcost.py ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["StepCounter", "build", "counts", "guard_cost", "per_step", "phases", "sampling_cost", "main"]


def build(what: str, device: torch.device, every: int | None = None
          ) -> tuple[Callable[[], None], Callable[[], None], Any]:
    """(Esper step, baseline step, morph) of ``dormant:<model>`` or
    ``active:<model>:<state>:<guard>`` (a residual_mlp seed of width 32 on fc2, as the bench's rows);
    ``every`` sets ``signal_every`` (the default otherwise)."""
    from esper.bench import steps

    def spec(label: str) -> Any:
        if label.startswith("Deep"):
            return steps._deep_spec(int(label[4:].strip("()")))
        return steps._BY_LABEL[label]

    kind, _, rest = what.partition(":")
    if kind == "dormant":
        esper_step, plain, morph = steps.dormant_pair(spec(rest), device,
                                                      **({} if every is None else {"signal_every": every}))
        return esper_step, plain, morph
    if kind == "active":
        label, state, guard = rest.split(":")
        if every is not None:
            raise ValueError("every is set for dormant pairs only")
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


@dataclass
class StepCounts:
    """What one training step did, counted (deterministic: load does not change it)."""

    aten: int = 0  #: ATen ops dispatched below autograd (forward, backward, optimizer and Esper's own)
    allocs: int = 0  #: tensors those ops made (outputs that share no input's storage: not views, not in-place)
    calls: int = 0  #: Python function calls (``sys.setprofile`` 'call' events), the counter's own left out
    go: int = 0  #: calls into libesper (every ``esper_*`` symbol called through ctypes)


def _storages(value: Any, out: set[int]) -> set[int]:
    if isinstance(value, torch.Tensor):
        if value.layout is torch.strided:
            out.add(value.untyped_storage().data_ptr())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _storages(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _storages(v, out)
    return out


class _Dispatched(TorchDispatchMode):
    """Counts the ATen ops dispatched while it is active, and the new tensors they return."""

    def __init__(self, counter: StepCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        now = self.counter.now
        now.aten += 1
        seen = _storages(kwargs or {}, _storages(args, set()))
        now.allocs += sum(1 for ptr in _storages(out, set()) if ptr not in seen)
        return out


@dataclass
class StepCounter:
    """Counts, step by step, the ATen ops, tensor allocations, Python calls and calls into libesper
    (:class:`StepCounts`) of the code run under :meth:`step`. Go calls are counted through every
    ``esper_*`` symbol of the loaded library, wrapped while :meth:`counting` is open: build the
    ``Morphogenesis`` (its session) inside it, so that the symbols its session keeps are the
    wrapped ones."""

    now: StepCounts = field(default_factory=StepCounts)
    _quiet: set[Any] = field(default_factory=set)  # code objects whose own frame is the counter's (callees count)

    @contextlib.contextmanager
    def counting(self) -> Iterator[StepCounter]:
        """Wraps the library's ``esper_*`` symbols (and :func:`esper._lib.unchecked`) to count the
        calls made through them; restores them on exit."""
        from esper import _lib

        cdll = _lib.lib()
        saved: list[tuple[Any, str, Any]] = []

        def counted(fn: Any) -> Any:
            def call(*args: Any) -> Any:
                self.now.go += 1
                return fn(*args)

            self._quiet.add(call.__code__)
            return call

        for name in _lib._SIGNATURES:
            fn = getattr(cdll, name, None)
            if fn is not None:
                saved.append((cdll, name, fn))
                setattr(cdll, name, counted(fn))
        real_unchecked = _lib.unchecked

        def unchecked(lib: Any, name: str) -> Any:
            return counted(real_unchecked(lib, name))

        saved.append((_lib, "unchecked", real_unchecked))
        _lib.unchecked = unchecked
        try:
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code not in self._quiet:
            self.now.calls += 1

    def step(self, fn: Callable[[], None], ops: bool) -> StepCounts:
        """Runs ``fn`` (one training step) and returns its counts: with ``ops``, its ATen ops and
        allocations (under a dispatch mode, whose own Python calls would be counted), else its
        Python calls and calls into libesper."""
        self.now = StepCounts()
        if ops:
            with _Dispatched(self):
                fn()
        else:
            sys.setprofile(self._profile)
            try:
                fn()
            finally:
                sys.setprofile(None)
        got, self.now = self.now, StepCounts()  # what runs between steps is counted nowhere
        return got


def per_step(pair: str, cycles: int = 10, every: int | None = None) -> dict[str, Any]:
    """Counts each step of ``cycles`` whole signal intervals of a bench pair (see :func:`build`),
    Esper's steps and the baseline's alternating, after two intervals of warm-up: the ATen ops and
    allocations over ``cycles`` intervals, then the Python calls and Go calls over the next
    ``cycles`` (a dispatch mode runs Python of its own for every op). The default, 10 intervals, is
    a whole cycle of the effective rank (sampled on every 10th sampling step). With ``every``, the
    pair's ``signal_every`` is set to it (the bench's default otherwise).

    Returns:
        ``{"every", "esper": [StepCounts per step], "baseline": [...], "sampling": [bool per step]}``:
        step ``k`` samples (its forward and backward are measured, its ``morph.step`` flushes) when
        ``sampling[k]``.
    """
    counter = StepCounter()
    with counter.counting():
        esper_step, baseline, morph = build(pair, torch.device("cpu"), every)
        try:
            n = morph.config.signal_every
            for _ in range(2 * n):
                esper_step()
                baseline()
            while morph.steps % n:
                esper_step()
            # A counter's first steps in a process run its own first-time work: not kept.
            for ops in (True, False):
                counter.step(baseline, ops)
            esper: list[StepCounts] = []
            plain: list[StepCounts] = []
            sampling: list[bool] = []
            for ops in (True, False):
                for k in range(cycles * n):
                    e, b = counter.step(esper_step, ops), counter.step(baseline, ops)
                    if ops:
                        esper.append(e)
                        plain.append(b)
                        sampling.append(morph.steps % n == 0)
                    else:
                        esper[k].calls, esper[k].go = e.calls, e.go
                        plain[k].calls, plain[k].go = b.calls, b.go
        finally:
            morph.close()
    return {"every": n, "esper": esper, "baseline": plain, "sampling": sampling}


def per_step_table(got: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Esper's extra over the baseline per kind of step: ``ordinary`` (mean over the steps that do
    not sample), ``ordinary_max``, ``sampling`` (mean over the sampling steps) and ``per_step`` (mean
    over every step), for each of aten, allocs, calls, go."""
    out: dict[str, dict[str, float]] = {}
    kinds = ("aten", "allocs", "calls", "go")
    extra = [{k: getattr(e, k) - getattr(b, k) for k in kinds} for e, b in zip(got["esper"], got["baseline"])]
    plain = [{k: getattr(b, k) for k in kinds} for b in got["baseline"]]
    ordinary = [d for d, s in zip(extra, got["sampling"]) if not s]
    sampled = [d for d, s in zip(extra, got["sampling"]) if s]
    for k in kinds:
        out[k] = {"baseline": sum(p[k] for p in plain) / len(plain),
                  "ordinary": sum(d[k] for d in ordinary) / max(len(ordinary), 1),
                  "ordinary_max": max((d[k] for d in ordinary), default=0),
                  "sampling": sum(d[k] for d in sampled) / max(len(sampled), 1),
                  "per_step": sum(d[k] for d in extra) / len(extra)}
    return out


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


def guard_cost(what: str, rounds: int) -> dict[str, dict[str, float]]:
    """What the default guard costs an ordinary step, measured so that load cancels: ``rounds``
    rounds of three ordinary steps (neither sampling nor setting sampling up), the active pair's
    model under the default guard ("step"), the same model under guard "sampled" (its layers'
    ``guard_every_step`` switched off for that step) and the hand-written model, in an order that
    rotates every round; CPU time of this thread (us).

    Returns:
        ``{"step"|"sampled"|"hand": {"min", "p20", "median"}, "step-sampled"|"step-hand"|
        "sampled-hand": {"median"}}``, the last three the median of the per-round differences.
    """
    import gc
    import statistics

    from esper.kasmina import KasminaLayer

    kind, _, rest = what.partition(":")
    if kind != "active" or not rest.endswith(":step"):
        raise ValueError(f"guard_cost measures active pairs under the default guard (active:<model>:<state>:step), "
                         f"got {what!r}")
    esper_step, hand, morph = build(what, torch.device("cpu"))
    layers = [m for m in morph.model.modules() if isinstance(m, KasminaLayer)]
    every = morph.config.signal_every
    for _ in range(2 * every):
        esper_step()
        hand()
    clock = time.thread_time_ns
    took: dict[str, list[float]] = {"step": [], "sampled": [], "hand": []}
    order = list(took)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for name in order[r % 3:] + order[:r % 3]:
                if name != "hand":
                    while (morph.steps + 1) % every in (0, every - 1):  # the sampling step, or its set-up
                        esper_step()
                    for layer in layers:
                        layer.guard_every_step = name == "step"
                fn = hand if name == "hand" else esper_step
                start = clock()
                fn()
                took[name].append((clock() - start) / 1e3)
            if r % 200 == 199:
                gc.collect()
    finally:
        if gc_was:
            gc.enable()
        for layer in layers:
            layer.guard_every_step = True
        morph.close()
    out: dict[str, dict[str, float]] = {
        name: {"min": min(v), "p20": _quantile(v, 0.2), "median": _quantile(v, 0.5)} for name, v in took.items()}
    for a, b in (("step", "sampled"), ("step", "hand"), ("sampled", "hand")):
        out[f"{a}-{b}"] = {"median": statistics.median(x - y for x, y in zip(took[a], took[b]))}
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
    # On CPU, a small output's backward tap (a copy of the gradient; _record_grad for other gradients).
    ("esper.kasmina", "KasminaLayer", "_record_grad_host", "backward_taps"),
    # ... and their reductions, in gather_health (layers of one shape together).
    ("esper.kasmina", None, "_host_rows", "host_reductions"),
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
    labels = ["total", "forward", "backward", "optimizer", "morph_step"] + list(dict.fromkeys(p[3] for p in _PHASES))

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
    p.add_argument("--per-step", action="store_true",
                   help="instead: ATen ops, tensor allocations, Python calls and calls into Go per step, Esper's "
                        "extra over the baseline on the steps that do not sample, on the sampling step and on "
                        "average (per_step: 10 signal intervals each, deterministic)")
    p.add_argument("--guards", action="store_true",
                   help="instead: ordinary steps under the default guard, under guard 'sampled' (same model) and "
                        "of the hand-written model, rotating: CPU time and per-round differences "
                        "(active:<model>:<state>:step)")
    p.add_argument("--rounds", type=int, default=2000, help="rounds of --guards")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    import esper

    print(f"esper at {esper.__file__}")
    if args.per_step:
        for what in args.pairs:
            table = per_step_table(per_step(what))
            print(f"{what}: per step, the baseline's count, then Esper's extra: ordinary steps (mean, max), "
                  "the sampling step (mean), every step (mean)")
            for kind, v in table.items():
                print(f"  {kind:7s} {v['baseline']:9.1f}  ordinary +{v['ordinary']:.2f} (max +{v['ordinary_max']})  "
                      f"sampling +{v['sampling']:.1f}  per step +{v['per_step']:.3f}", flush=True)
        return 0
    if args.guards:
        for what in args.pairs:
            g = guard_cost(what, args.rounds)
            print(f"{what}: ordinary steps, {args.rounds} rounds, CPU time of this thread (us): " + "; ".join(
                f"{k} min {g[k]['min']:.0f} p20 {g[k]['p20']:.0f} median {g[k]['median']:.0f}"
                for k in ("step", "sampled", "hand")) + "; per-round differences, median: " + ", ".join(
                f"{k} {g[k]['median']:+.1f}" for k in ("step-sampled", "step-hand", "sampled-hand")), flush=True)
        return 0
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
