"""`esper tune`: choose ``MorphConfig``'s growth defaults on the suite's training families.

The library's defaults should be fitted, not hand-picked (issue 15, item 5), and fitted only where fitting
may look: the suite's **training** families (every task is loaded with reader ``"train"``, so a held-out
family raises :class:`esper.suite.families.HeldOutError`). The search is plain and rerunnable:

1. **Candidates**: the current defaults, then ``candidates`` settings drawn at random (generator seeded
   with ``seed``) from :data:`SPACE`, the fields that decide *when* and *how long* growth happens.
2. **Stage 1**: every candidate runs the suite's protocol on ``tasks`` task(s) x ``seeds`` seed(s) of every
   training family (the fixed sweep is shared: its runs do not depend on growth settings).
3. **Stage 2**: the ``top`` best of stage 1 (the defaults always among them) run again on twice the tasks and
   seeds; stage 1's runs are reused from the suite's cache.
4. **Score** (:func:`score`), compared in this order: every negative-control run with at most one
   germination; the share of bars (a) and (b) met over the tasks; the mean accuracy gap to the best of the
   sweep (points, higher is better); then fewer training FLOPs against the sweep. A candidate replaces the
   defaults only when it scores strictly better in stage 2.

Writes ``<out>/tune.json`` (the space, the seed, every candidate's settings and per-stage scores, the
winner, the command, commit and machine) and prints a table. The winner is adopted by editing
``MorphConfig``'s defaults in a commit that cites the file; docs/suite.md records the run that set them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .. import build_info
from ..demo.jobs import default_workers
from ..tolaria import MorphConfig
from .families import FAMILIES, TRAIN, HeldOutError, families
from .run import Arm, RunResult, Settings, _execute, _family_summary, _progress, _task_report, plan, settings_of

__all__ = ["SPACE", "Candidate", "score", "main"]

#: The search space: ``MorphConfig`` fields that decide when growth starts (plateau patience and threshold),
#: how long a seed's lifecycle takes (train and blend steps), how often a layer may grow (cooldown), and when
#: a seed or a layer is judged not to pay (min_gain, saturate_after). Other fields are budgets or mechanics a
#: user sets for their own reasons, not defaults to fit. ``saturate_after`` starts at 2: one seed that falls
#: short must not end growth on a layer for the rest of the run (issue 15, item 3), so 1 is not a default to
#: choose (the first search, at c044bb0, still had it and picked it).
SPACE: dict[str, tuple[Any, ...]] = {
    "patience": (1, 2, 3, 4),
    "threshold": (0.003, 0.01, 0.03),
    "train_steps": (25, 50, 100, 200),
    "blend_steps": (25, 50, 100, 200),
    "cooldown_epochs": (0, 1, 2, 4),
    "min_gain": (0.003, 0.01, 0.03),
    "saturate_after": (2, 3, 4),
}


@dataclass
class Candidate:
    """One point of the search: its overrides of ``MorphConfig`` (empty: the defaults) and its scores."""

    name: str
    settings: dict[str, Any]
    stages: dict[str, dict[str, Any]]


def draw(n: int, seed: int) -> list[Candidate]:
    """The defaults, then ``n`` distinct settings drawn from :data:`SPACE` (each different from the
    defaults on at least one field)."""
    rng = random.Random(seed)
    defaults = {k: getattr(MorphConfig(), k) for k in SPACE}
    seen = {tuple(sorted(defaults.items()))}
    out = [Candidate("defaults", {}, {})]
    tries = 0
    while len(out) < n + 1:
        tries += 1
        if tries > 100 * (n + 1):
            raise ValueError(f"esper tune: cannot draw {n} distinct candidates from the space")
        pick = {k: rng.choice(v) for k, v in SPACE.items()}
        key = tuple(sorted(pick.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(f"c{len(out)}", {k: v for k, v in pick.items() if v != defaults[k]}, {}))
    return out


def score(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A candidate's score on one stage from the suite's per-family summaries; ``key`` orders candidates
    (a larger key is better): controls all met, share of bars met, accuracy gap to the sweep's best, and
    fewer FLOPs against the sweep."""
    grown = [s for s in summaries.values() if not s["control"]]
    controls = [s for s in summaries.values() if s["control"]]
    tasks = sum(s["tasks"] for s in grown)
    met = sum(s["a_met"] + s["b_met"] for s in grown)
    share = met / (2 * tasks) if tasks else 0.0
    gap = sum(s["gap_vs_sweep_best"] * s["tasks"] for s in grown) / tasks if tasks else 0.0
    flops = sum(s["flops_vs_sweep"] * s["tasks"] for s in grown) / tasks if tasks else 0.0
    controls_ok = all(s["controls_met"] == s["controls"] for s in controls)
    return {"controls_ok": controls_ok, "bars_met": met, "bars": 2 * tasks, "share": share,
            "gap_vs_sweep_best": gap, "flops_vs_sweep": flops,
            "key": [int(controls_ok), round(share, 6), round(gap, 6), round(-flops, 6)]}


def _evaluate(arms: list[Arm], results: dict[str, RunResult], seeds: int, quick: bool) -> dict[str, Any]:
    """The per-family summaries of one candidate's arms."""
    grouped: dict[str, dict[int, dict[str, list[RunResult]]]] = {}
    for a in arms:
        grouped.setdefault(a.family, {}).setdefault(a.index, {}).setdefault(a.arm, []).append(results[a.cache])
    out = {}
    for name, tasks in grouped.items():
        family = FAMILIES[name]
        per_task = {str(i): _task_report(family, i, seeds, runs, quick, "train") for i, runs in sorted(tasks.items())}
        out[name] = _family_summary(family, per_task)
    return out


def _stage(name: str, cands: list[Candidate], tasks: int, seeds: int, quick: bool, out_dir: str, device: str,
           workers: int, quiet: bool, only: tuple[str, ...]) -> None:
    """Runs every candidate's arms for one stage (one pool; shared runs made once) and scores them."""
    per: dict[str, list[Arm]] = {}
    unique: dict[str, Arm] = {}
    for c in cands:
        settings: Settings = settings_of(c.settings)
        arms = plan(TRAIN, tasks, seeds, quick, out_dir, settings, urza=os.path.join(out_dir, "urza"), only=only)
        per[c.name] = arms
        for a in arms:
            unique.setdefault(a.cache, a)
    bar = _progress(len(unique), quiet)
    results = _execute(list(unique.values()), device, workers, bar)
    bar.close()
    for c in cands:
        summaries = _evaluate(per[c.name], results, seeds, quick)
        c.stages[name] = {"tasks": tasks, "seeds": seeds, "families": summaries, "score": score(summaries)}


def _key(c: Candidate, stage: str) -> list[float]:
    return c.stages[stage]["score"]["key"]


def main(candidates: int = 12, top: int = 3, seed: int = 0, tasks: int = 1, seeds: int = 1, quick: bool = False,
         out_dir: str = "tune_out", workers: int | None = None, quiet: bool = False,
         only: list[str] | None = None) -> int:
    """Run the search; returns 0. See the module docstring for the procedure.

    Args:
        candidates: settings drawn besides the defaults.
        top: candidates (the defaults included) that go on to stage 2.
        seed: seeds the draw of candidates.
        tasks, seeds: stage 1's tasks per family and paired seeds (stage 2 doubles both).
        quick: the suite's tiny tasks (a smoke run: nothing is chosen by it).
        out_dir: where tune.json, the suite's run cache and the outcome records go.
        workers: processes (default: one per core).
        quiet: no progress bars or table.
        only: search on these training families only (default: all of them).

    Raises:
        HeldOutError: ``only`` names a held-out family (the search never reads one).
        ValueError: a bad count, or ``only`` names no family.
    """
    if candidates < 0 or top < 1 or tasks < 1 or seeds < 1:
        raise ValueError("esper tune: candidates must be >= 0; top, tasks and seeds >= 1")
    train = {f.name for f in families(TRAIN)}  # the split is fixed in code: tuning reads training families only
    for name in only or []:
        if name not in FAMILIES:
            raise ValueError(f"esper tune: no family {name!r}; training families: {sorted(train)}")
        if name not in train:
            raise HeldOutError(f"esper tune: family {name!r} is held out: the settings search never reads it")
    picked = tuple(only or ())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = default_workers(device) if workers is None else workers
    start = time.perf_counter()
    cands = draw(candidates, seed)
    if not quiet:
        print(f"esper tune: {len(cands)} candidates on the training families; stage 1 {tasks} task(s) x {seeds} "
              f"seed(s), stage 2 the top {top} on {2 * tasks} x {2 * seeds}; {workers} worker(s); {out_dir}")
    _stage("stage1", cands, tasks, seeds, quick, out_dir, device, workers, quiet, picked)
    ranked = sorted(cands, key=lambda c: _key(c, "stage1"), reverse=True)
    finalists = ranked[:top]
    if not any(c.name == "defaults" for c in finalists):
        finalists = finalists[:top - 1] + [cands[0]]
    _stage("stage2", finalists, 2 * tasks, 2 * seeds, quick, out_dir, device, workers, quiet, picked)
    best = max(finalists, key=lambda c: _key(c, "stage2"))
    if _key(best, "stage2") <= _key(cands[0], "stage2"):
        best = cands[0]  # the defaults stay unless something beats them strictly
    info = build_info()
    report = {
        "command": {"candidates": candidates, "top": top, "seed": seed, "tasks": tasks, "seeds": seeds,
                    "quick": quick, "families": sorted(picked) or sorted(train)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": device,
                    "esper": info, "workers": workers, "cpus": os.cpu_count()},
        "space": {k: list(v) for k, v in SPACE.items()},
        "defaults": {k: getattr(MorphConfig(), k) for k in SPACE},
        "candidates": [asdict(c) for c in cands],
        "winner": {"name": best.name, "settings": best.settings,
                   "morph": {k: getattr(replace(MorphConfig(), **best.settings), k) for k in SPACE}},
        "wall_s": time.perf_counter() - start,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tune.json"), "w") as f:
        json.dump(report, f, indent=1)
    if not quiet:
        print(_table(cands, finalists))
        print(f"winner: {best.name} {best.settings or '(the current defaults)'}")
        print(f"wrote {out_dir}/tune.json in {report['wall_s']:.0f}s")
    return 0


def _table(cands: list[Candidate], finalists: list[Candidate]) -> str:
    lines = [f"{'name':<9} {'stage':<7} {'controls':>8} {'bars met':>9} {'gap pts':>8} {'FLOPs/swp':>9}  settings"]
    for c in cands:
        for stage in ("stage1", "stage2"):
            if stage not in c.stages:
                continue
            s = c.stages[stage]["score"]
            lines.append(f"{c.name:<9} {stage:<7} {'ok' if s['controls_ok'] else 'MISSED':>8} "
                         f"{s['bars_met']:>4}/{s['bars']:<4} {s['gap_vs_sweep_best']:>8.2f} "
                         f"{s['flops_vs_sweep']:>9.0%}  "
                         f"{json.dumps(c.settings, sort_keys=True)}")
    return "\n".join(lines)
