"""`esper suite`: the demo's protocol on every task of the suite's families.

For each task (a family and an index) and each seed (the split, the initialisation and the controller's
seed, shared by every arm: the comparisons are paired), the *arms* are the 5-size fixed sweep, the grown run
(``MorphConfig()`` defaults, told the run's length) and the grown run's final shape trained from scratch;
a negative control's arms are grown runs of 30 and 60 epochs. Every arm trains with the demo's loop, picks
its model on validation, reads test once and counts training FLOPs (``esper.demo``: one implementation).

Arms run in spawned workers (one per core, :func:`esper.demo.jobs.default_workers`), each cached as a JSON
file under ``<out>/cache`` as soon as it ends: an interrupted run resumes where it stopped. The cache key
holds everything the arm depends on (family, task, seed, arm, quick, epochs, sweep, settings, library
version and commit), so changed settings never read stale results.

Writes ``<out>/results.json`` (every arm's figures, per-task bars, per-family summaries, the outcome-record
run ids of grown runs) and ``<out>/suite.png`` (test metric against training FLOPs per family: grown vs the
sweep vs scratch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any

import torch

from .. import build_info
from ..demo.experiments import (
    RunResult,
    Setup,
    fixed_run,
    grown_run,
    mean,
    pick_best,
    scratch_run,
    setup_task,
    std,
)
from ..demo.jobs import default_workers, one_thread, run_pool
from ..demo.run import growth_bars
from ..tolaria import MorphConfig
from .families import FAMILIES, TRAIN, Family, families, load

__all__ = ["Arm", "Settings", "main", "plan", "settings_of", "setup_for", "run_arm", "CONTROL_EPOCHS"]

#: A negative control is judged at these run lengths (at most one germination at each).
CONTROL_EPOCHS = (30, 60)
#: Epochs of every run in quick mode (a smoke run: nothing is judged).
QUICK_EPOCHS = 3
#: Tasks per family unless told otherwise.
DEFAULT_TASKS = 2
#: Version of the cache's file layout and of the protocol: bump it when either changes.
PROTOCOL = 1


#: Settings: ``MorphConfig`` fields that override its defaults for every grown run of a suite run, as
#: sorted (name, value) pairs (hashable, so an Arm stays frozen). Empty: the library's defaults.
Settings = tuple[tuple[str, Any], ...]


def settings_of(overrides: dict[str, Any] | None) -> Settings:
    """The Settings of a dict of ``MorphConfig`` field overrides; an unknown field is an error."""
    names = {f.name for f in fields(MorphConfig)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise ValueError(f"esper suite: {unknown} are not MorphConfig fields")
    return tuple(sorted((overrides or {}).items()))


def setup_for(family: Family, index: int, quick: bool, reader: str, settings: Settings = ()) -> Setup:
    """The demo Setup of task ``index`` of ``family``: its model, sweep, epochs and data source, and for
    growth ``MorphConfig()`` with ``settings`` applied (none: the defaults, no per-task settings)."""
    return Setup(task=f"{family.name}/{index}", depth=family.depth, start_width=family.start_width,
                 sweep=list(family.sweep), targets=family.targets, epochs=QUICK_EPOCHS if quick else family.epochs,
                 morph=replace(MorphConfig(), **dict(settings)), arch=family.arch,
                 source=partial(load, family.name, index, quick, reader))


@dataclass(frozen=True)
class Arm:
    """One training run of the suite.

    Attributes:
        family, index: the task.
        seed: the paired seed.
        arm: "fixed@<width>", "grown", "scratch" (needs the grown arm of the same task and seed) or
            "control@<epochs>".
        quick: tiny tasks and QUICK_EPOCHS epochs.
        reader: "train" when the run may feed fitting (only training families), else "eval".
        cache: the JSON file the result goes to.
        urza: the Urza store grown runs record their outcomes to.
        settings: ``MorphConfig`` overrides of the grown runs (see :data:`Settings`).
    """

    family: str
    index: int
    seed: int
    arm: str
    quick: bool
    reader: str
    cache: str
    urza: str
    settings: Settings = ()

    def setup(self) -> Setup:
        """The task's Setup."""
        return setup_for(FAMILIES[self.family], self.index, self.quick, self.reader, self.settings)


def _key(family: Family, index: int, seed: int, arm: str, quick: bool, settings: Settings = ()) -> str:
    """The cache key: a digest of everything the arm's result depends on. A fixed-size run does not grow,
    so its key leaves the growth settings out: every settings search shares one sweep."""
    info = build_info()
    morph = None if arm.startswith("fixed@") else asdict(replace(MorphConfig(), **dict(settings)))
    doc = {"protocol": PROTOCOL, "family": asdict(replace(family, make=None)), "maker": family.make.__name__,
           "index": index, "seed": seed, "arm": arm, "quick": quick, "morph": morph,
           "quick_epochs": QUICK_EPOCHS, "control_epochs": CONTROL_EPOCHS, "version": info.get("version"),
           "commit": info.get("commit")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(which: str, tasks: int, seeds: int, quick: bool, out_dir: str, settings: Settings = (),
         urza: str | None = None, only: tuple[str, ...] = ()) -> list[Arm]:
    """Every arm of a suite run, in a fixed order: per task index, seed and family, the sweep, grown, scratch
    (or the control's runs). Every family gets its first task and seed before any gets a second: a run cut
    short has covered the families evenly, and its cache serves a smaller ``--tasks``/``--seeds`` at once.
    ``settings`` override ``MorphConfig`` for the grown runs; ``urza`` is their store (default
    ``<out_dir>/urza``); ``only`` keeps the named families of ``which`` (default all of them)."""
    reader = "train" if which == TRAIN else "eval"
    urza = urza or os.path.join(out_dir, "urza")
    arms = []
    for index in range(tasks):
        for seed in range(seeds):
            for family in families(which):
                if only and family.name not in only:
                    continue
                names = ([f"control@{e}" for e in CONTROL_EPOCHS] if family.control else
                         [f"fixed@{w}" for w in family.sweep] + ["grown", "scratch"])
                for name in names:
                    path = os.path.join(out_dir, "cache", family.name, str(index), str(seed),
                                        f"{name}-{_key(family, index, seed, name, quick, settings)}.json")
                    arms.append(Arm(family.name, index, seed, name, quick, reader, path, urza, settings))
    return arms


def _save(path: str, run: RunResult) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(run), f, default=_jsonable)
    os.replace(tmp, path)  # a killed run leaves no half-written result


def _jsonable(o: Any) -> Any:
    return None if isinstance(o, float) and math.isnan(o) else str(o)


def _load(path: str) -> RunResult:
    with open(path) as f:
        doc = json.load(f)
    names = {f.name for f in fields(RunResult)}
    doc = {k: v for k, v in doc.items() if k in names}
    for k in ("test_acc", "test_loss"):
        doc[k] = math.nan if doc.get(k) is None else doc[k]
    return RunResult(**doc)


def _sibling(arm: Arm, name: str) -> Arm:
    """The arm ``name`` of the same task and seed."""
    key = _key(FAMILIES[arm.family], arm.index, arm.seed, name, arm.quick, arm.settings)
    return replace(arm, arm=name, cache=os.path.join(os.path.dirname(arm.cache), f"{name}-{key}.json"))


def run_arm(arm: Arm, device: str = "cpu") -> list[tuple[str, RunResult]]:
    """Make one arm's run on one thread and cache it (a worker's job); returns (cache path, run) pairs.

    A grown arm also makes its scratch arm when that is not cached (the final shape trained from scratch
    needs the grown run's seeds), so one pass of workers does all; a scratch arm alone reads its grown arm
    from the cache.
    """
    with one_thread():
        setup = arm.setup()
        task = setup_task(setup, arm.seed, torch.device(device))
        kind, _, value = arm.arm.partition("@")
        out = []
        if kind == "fixed":
            run = fixed_run(task, setup, int(value), arm.seed)
        elif kind == "grown":
            run = grown_run(task, replace(setup, morph=replace(setup.morph, urza=arm.urza)), arm.seed)
        elif kind == "scratch":
            grown = _load(_sibling(arm, "grown").cache)
            run = scratch_run(task, setup, arm.seed, grown.final_seeds)
        elif kind == "control":
            epochs = QUICK_EPOCHS if arm.quick else int(value)
            # As the demo's controls: the library's defaults, without the horizon (what a user gets).
            run = grown_run(task, replace(setup, epochs=epochs, horizon=False,
                                          morph=replace(setup.morph, urza=arm.urza)), arm.seed)
        else:
            raise ValueError(f"unknown arm {arm.arm!r} (want fixed@W, grown, scratch or control@E)")
        _save(arm.cache, run)
        out.append((arm.cache, run))
        scratch = _sibling(arm, "scratch")
        if kind == "grown" and not os.path.exists(scratch.cache):
            run = scratch_run(task, setup, arm.seed, run.final_seeds)
            _save(scratch.cache, run)
            out.append((scratch.cache, run))
        return out


def _progress(total: int, quiet: bool) -> Any:
    from ..demo.run import progress_bar

    if quiet:
        class _Silent:
            def update(self, n: int = 1) -> None:
                pass

            def set_description(self, text: str) -> None:
                pass

            def close(self) -> None:
                pass

        return _Silent()
    return progress_bar(total)


def _execute(arms: list[Arm], device: str, workers: int, bar: Any) -> dict[str, RunResult]:
    """Runs the arms not cached yet, in one pass of workers (a grown arm makes its scratch arm); returns
    every arm's result by cache path."""
    results: dict[str, RunResult] = {}
    pending: list[Arm] = []
    for a in arms:
        if os.path.exists(a.cache):
            results[a.cache] = _load(a.cache)
            bar.update()
        elif a.arm != "scratch" or os.path.exists(_sibling(a, "grown").cache):
            pending.append(a)  # a scratch arm whose grown arm is not cached is made by that grown arm's job

    def done(i: int, made: list[tuple[str, RunResult]]) -> None:
        a = pending[i]
        for path, run in made:
            results[path] = run
        bar.set_description(f"{a.family}/{a.index} seed {a.seed}: {a.arm}")
        bar.update(len(made))

    run_pool(partial(run_arm, device=device), pending, workers, done)
    missing = [a.cache for a in arms if a.cache not in results]
    if missing:
        raise RuntimeError(f"esper suite: runs finished without a result: {missing}")
    return results


def _task_report(family: Family, index: int, seeds: int, runs: dict[str, list[RunResult]], quick: bool,
                 reader: str) -> dict[str, Any]:
    """One task's arms, summaries and bars."""
    from .families import describe

    _, _, params = describe(family.name, index, quick, reader)
    out: dict[str, Any] = {"params": params, "seeds": seeds,
                           "arms": {k: [r.summary() for r in v] for k, v in runs.items()}}
    if family.control:
        out["controls"] = {k: {"germinations": [r.germinations for r in v], "ok": max(r.germinations for r in v) <= 1,
                               "bar": "at most one germination"} for k, v in runs.items()}
        return out
    sweep_all = [r for k, v in runs.items() if k.startswith("fixed@") for r in v]
    best = [pick_best([r for r in sweep_all if r.seed == s]) for s in range(seeds)]
    out["sweep_best_widths"] = [r.width for r in best]
    out["bars"] = growth_bars(runs["grown"], runs["scratch"], best, sweep_all)
    out["grown"] = {"germinations": [r.germinations for r in runs["grown"]],
                    "fossilizations": [r.fossilizations for r in runs["grown"]],
                    "prunes": [r.prunes for r in runs["grown"]], "params": [r.params for r in runs["grown"]],
                    "run_ids": [r.run_id for r in runs["grown"]]}
    return out


def _family_summary(family: Family, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if family.control:
        checks = [c for t in tasks.values() for c in t["controls"].values()]
        return {"control": True, "tasks": len(tasks), "controls_met": sum(c["ok"] for c in checks),
                "controls": len(checks)}
    a = [t["bars"]["vs_scratch"] for t in tasks.values()]
    b = [t["bars"]["auto_size"] for t in tasks.values()]
    return {
        "control": False, "tasks": len(tasks),
        "a_met": sum(x["ok"] for x in a), "b_met": sum(x["ok"] for x in b),
        "grown_acc": mean([x["grown_acc"] for x in a]), "scratch_acc": mean([x["scratch_acc"] for x in a]),
        "sweep_best_acc": mean([x["sweep_best_acc"] for x in b]),
        "gap_vs_scratch": mean([x["gap"] for x in a]),
        "gap_vs_sweep_best": mean([x["grown_acc"] - x["sweep_best_acc"] for x in b]),
        "flops_vs_scratch": mean([x["flops_ratio"] for x in a]),
        "flops_vs_sweep": mean([x["flops_vs_sweep"] for x in b]),
        "germinations_mean": mean([float(g) for t in tasks.values() for g in t["grown"]["germinations"]]),
    }


def _plot(path: str, fams: list[Family], grouped: dict[str, dict[int, dict[str, list[RunResult]]]],
          summaries: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [f for f in fams if not f.control]
    cols = min(4, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, family in zip(axes.flat, shown):
        tasks = grouped[family.name]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (_, runs) in enumerate(sorted(tasks.items())):
            c = colors[i % len(colors)]
            widths = list(family.sweep)
            sx = [mean([r.flops for r in runs[f"fixed@{w}"]]) for w in widths]
            sy = [mean([r.test_acc for r in runs[f"fixed@{w}"]]) for w in widths]
            ax.plot(sx, sy, "-o", color=c, alpha=0.5, ms=3, label="fixed sweep" if i == 0 else None)
            gx, gy = mean([r.flops for r in runs["grown"]]), mean([r.test_acc for r in runs["grown"]])
            ax.errorbar(gx, gy, yerr=std([r.test_acc for r in runs["grown"]]), fmt="*", ms=11, color=c,
                        label="grown" if i == 0 else None)
            hx, hy = mean([r.flops for r in runs["scratch"]]), mean([r.test_acc for r in runs["scratch"]])
            ax.plot(hx, hy, "s", mfc="none", ms=8, color=c, label="final shape from scratch" if i == 0 else None)
            ax.annotate("", xy=(gx, gy), xytext=(hx, hy), arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.6})
        s = summaries[family.name]
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
        ax.set_title(f"{family.name} ({family.split}): (a) {s['a_met']}/{s['tasks']}, (b) {s['b_met']}/{s['tasks']}",
                     fontsize=9)
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("test R² %" if family.name in ("friedman", "tanh_regression") else "test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("esper suite: grown (star) vs the fixed sweep (line) vs its shape from scratch (square); "
                 "one colour per task", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _text(fams: list[Family], report: dict[str, Any]) -> str:
    lines = [f"{'family':<16} {'split':<9} {'tasks':>5} {'(a) met':>8} {'(b) met':>8} {'grown':>7} {'scratch':>8} "
             f"{'sweep*':>7} {'FLOPs/scr':>9} {'FLOPs/swp':>9} {'germ':>5}"]
    for family in fams:
        s = report["families"][family.name]["summary"]
        if family.control:
            lines.append(f"{family.name:<16} {family.split:<9} {s['tasks']:>5}   negative control: "
                         f"{s['controls_met']}/{s['controls']} runs with at most one germination")
            continue
        lines.append(f"{family.name:<16} {family.split:<9} {s['tasks']:>5} {s['a_met']:>8} {s['b_met']:>8} "
                     f"{s['grown_acc']:>7.2f} {s['scratch_acc']:>8.2f} {s['sweep_best_acc']:>7.2f} "
                     f"{s['flops_vs_scratch']:>9.0%} {s['flops_vs_sweep']:>9.0%} {s['germinations_mean']:>5.2f}")
    o = report["overall"]
    lines.append(f"bar (a) met on {o['a_met']}/{o['tasks']} tasks, bar (b) on {o['b_met']}/{o['tasks']}; "
                 f"negative controls {o['controls_met']}/{o['controls']}")
    return "\n".join(lines)


def main(which: str = TRAIN, seeds: int | None = None, tasks: int | None = None, quick: bool = False,
         as_json: bool = False, out_dir: str = "suite_out", workers: int | None = None, fresh: bool = False,
         settings: dict[str, Any] | None = None) -> int:
    """Run the suite; returns 0 (bars missed are reported, not fatal).

    Args:
        which: the families: "train", "held-out" or "all".
        seeds: paired seeds per task (default 3; 1 when quick).
        tasks: tasks per family (default DEFAULT_TASKS; 1 when quick).
        quick: tiny tasks, QUICK_EPOCHS epochs: a smoke run (its bars mean nothing).
        as_json: print results.json to stdout instead of the table.
        out_dir: where results.json, suite.png, the cache and the Urza store of the grown runs go.
        workers: processes (default: one per core, see :func:`esper.demo.jobs.default_workers`).
        fresh: clear the cache first.
        settings: ``MorphConfig`` field overrides for every grown run (default none: the library's defaults).
    """
    fams = families(which)  # checks ``which``
    chosen = settings_of(settings)
    seeds = seeds if seeds is not None else (1 if quick else 3)
    tasks = tasks if tasks is not None else (1 if quick else DEFAULT_TASKS)
    if seeds < 1 or tasks < 1:
        raise ValueError(f"esper suite: seeds and tasks must be >= 1, got {seeds} and {tasks}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = default_workers(device.type) if workers is None else workers
    if workers < 1:
        raise ValueError(f"esper suite: workers must be >= 1, got {workers}")
    if fresh:
        shutil.rmtree(os.path.join(out_dir, "cache"), ignore_errors=True)
    arms = plan(which, tasks, seeds, quick, out_dir, chosen)
    reader = arms[0].reader if arms else "eval"
    if not as_json:
        print(f"esper suite: {which} families ({', '.join(f.name for f in fams)}), {tasks} task(s) each, "
              f"{seeds} seed(s); {len(arms)} runs; device {device}, {min(workers, len(arms))} worker(s); "
              f"cache {os.path.join(out_dir, 'cache')}")
    start = time.perf_counter()
    bar = _progress(len(arms), as_json)
    results = _execute(arms, device.type, workers, bar)
    bar.close()

    grouped: dict[str, dict[int, dict[str, list[RunResult]]]] = {}
    for a in arms:
        grouped.setdefault(a.family, {}).setdefault(a.index, {}).setdefault(a.arm, []).append(results[a.cache])
    report: dict[str, Any] = {
        "command": {"families": which, "seeds": seeds, "tasks": tasks, "quick": quick},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(device),
                    "esper": build_info(), "workers": workers, "cpus": os.cpu_count()},
        "protocol": {"version": PROTOCOL, "morph": asdict(replace(MorphConfig(), **dict(chosen))),
                     "settings": dict(chosen), "control_epochs": list(CONTROL_EPOCHS),
                     "reader": reader, "urza": os.path.join(out_dir, "urza"),
                     "bars": {"a": "grown within 0.5 points of its final shape from scratch, with <= 70% of its "
                                   "FLOPs", "b": "within 0.5 points of the best of the 5-size sweep, with <= 25% "
                                                 "of the sweep's FLOPs", "control": "at most one germination"}},
        "families": {},
    }
    summaries: dict[str, dict[str, Any]] = {}
    for family in fams:
        per_task = {str(i): _task_report(family, i, seeds, runs, quick, reader)
                    for i, runs in sorted(grouped[family.name].items())}
        summaries[family.name] = _family_summary(family, per_task)
        report["families"][family.name] = {"split": family.split, "doc": family.doc, "arch": family.arch,
                                           "targets": family.targets, "start_width": family.start_width,
                                           "sweep": list(family.sweep), "epochs": family.epochs,
                                           "control": family.control, "tasks": per_task,
                                           "summary": summaries[family.name]}
    grown_tasks = [s for s in summaries.values() if not s["control"]]
    controls = [s for s in summaries.values() if s["control"]]
    report["overall"] = {"tasks": sum(s["tasks"] for s in grown_tasks), "a_met": sum(s["a_met"] for s in grown_tasks),
                         "b_met": sum(s["b_met"] for s in grown_tasks),
                         "controls": sum(s["controls"] for s in controls),
                         "controls_met": sum(s["controls_met"] for s in controls)}
    report["wall_s"] = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=_jsonable)
    _plot(os.path.join(out_dir, "suite.png"), fams, grouped, summaries)
    if as_json:
        json.dump(report, sys.stdout, indent=1, default=_jsonable)
        print()
    else:
        print(_text(fams, report))
        print(f"\nwrote {out_dir}/results.json and {out_dir}/suite.png in {report['wall_s']:.0f}s")
    return 0
