"""`esper demo` / `make demo`: grow models on digits and spirals against baselines.

Prints the comparison table, checks the bars of DESIGN §9, and writes
``results.json`` (every number) and ``growth.png`` (loss and accuracy over
time with germinations, fossilizations and prunes marked) into the output
folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .. import build_info
from .experiments import SETUPS, RunResult, Setup, mean, std
from .jobs import default_workers, job_runs, merge, plan_jobs, run_jobs

__all__ = ["main", "paired", "verdict", "at_equal_budget", "check_tasks", "growth_bars", "summary_row", "progress_bar"]

#: The growth tasks the demo runs unless told otherwise (`--tasks`).
TASKS = ("digits", "spirals")
#: Growth tasks that can be asked for: the default ones and make_classification.
ALL_TASKS = ("digits", "spirals", "classification")
CONTROLS = ("moons", "breast_cancer")
#: Seeds of the comparisons at the tight budgets, unless told otherwise.
BUDGET_SEEDS = 20


def progress_bar(total: int) -> Any:
    """A tqdm progress bar counting runs (plain printed descriptions without tqdm)."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm is a demo dependency
        class _Plain:
            def update(self, n: int = 1) -> None:
                pass

            def set_description(self, text: str) -> None:
                print(text, flush=True)

            def close(self) -> None:
                pass

        return _Plain()


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The growth tasks asked for, checked: one or more of ALL_TASKS.

    Raises:
        ValueError: none, or one that is not a growth task of the demo.
    """
    if not tasks or any(t not in ALL_TASKS for t in tasks):
        raise ValueError(f"esper demo: tasks must be some of {', '.join(ALL_TASKS)}, got {list(tasks)}")
    return tuple(tasks)


def summary_row(label: str, runs: list[RunResult]) -> dict[str, Any]:
    """A table row: the runs' mean and spread of test metric, parameters, FLOPs, wall time, lifecycle counts."""
    accs = [r.test_acc for r in runs]
    return {
        "config": label,
        "test_acc_mean": mean(accs),
        "test_acc_std": std(accs),
        "test_accs": accs,
        "params_mean": mean([float(r.params) for r in runs]),
        "train_flops_mean": mean([r.flops for r in runs]),
        "wall_s_mean": mean([r.wall for r in runs]),
        "germinations": sum(r.germinations for r in runs),
        "fossilizations": sum(r.fossilizations for r in runs),
        "prunes": sum(r.prunes for r in runs),
        "widths": [r.width for r in runs] if runs and runs[0].width is not None else None,
    }


def paired(grown: list[RunResult], other: list[RunResult], bar: str) -> dict[str, Any]:
    """Grown against another configuration run on the same seeds (same splits, same init).

    The verdict is "beats" when the mean paired difference in test accuracy is positive and at
    least twice its standard error, "loses" when it is as far below zero, and "tie within noise"
    otherwise: with a few hundred test points one point is 0.3-0.4%, so a higher mean alone is not
    evidence. ``flops_vs_grown`` is the other run's training FLOPs over the grown run's (mean over seeds).
    """
    diffs = [g.test_acc - o.test_acc for g, o in zip(grown, other, strict=True)]
    return {"grown_acc": mean([g.test_acc for g in grown]), "other_acc": mean([o.test_acc for o in other]),
            **verdict(diffs, bar), "flops_vs_grown": _flops_vs(grown, other)}


def verdict(diffs: list[float], bar: str) -> dict[str, Any]:
    """The verdict on paired differences (grown minus other, one per seed): see :func:`paired`."""
    m = mean(diffs)
    se = std(diffs) / math.sqrt(len(diffs)) if diffs else math.nan
    if m > 0 and m >= 2 * se:
        word = "beats"
    elif m < 0 and -m >= 2 * se:
        word = "loses"
    else:
        word = "tie within noise"
    return {"diff_mean": m, "diff_se": se, "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs), "verdict": word, "ok": word == "beats", "bar": bar}


def at_equal_budget(res: dict[str, list[RunResult]], budgets: tuple[int, ...], other: str, bar: str) -> dict[str, Any]:
    """Grown against ``other`` at equal budget: judged over the tight budgets, where the budget binds.

    Each seed's differences are averaged over the budgets first (a seed's runs share its split, so they
    are not independent), and the verdict is taken on those per-seed means. Each budget's own result and
    the loose budget's (``res["grown"]`` against ``res[other]``) are reported beside it. Without tight
    budgets the loose budget is judged.
    """
    loose = paired(res["grown"], res[other], bar)
    if not budgets:
        return {**loose, "budgets": []}
    per_budget = {str(b): paired(res[f"grown@{b}"], res[f"{other}@{b}"], bar) for b in budgets}
    seeds = len(res[f"grown@{budgets[0]}"])
    diffs = [mean([res[f"grown@{b}"][i].test_acc - res[f"{other}@{b}"][i].test_acc for b in budgets])
             for i in range(seeds)]
    grown = [r for b in budgets for r in res[f"grown@{b}"]]
    others = [r for b in budgets for r in res[f"{other}@{b}"]]
    return {"grown_acc": mean([r.test_acc for r in grown]), "other_acc": mean([r.test_acc for r in others]),
            **verdict(diffs, bar), "flops_vs_grown": _flops_vs(grown, others),
            "budgets": list(budgets), "per_budget": per_budget, "loose": loose}


def _flops_vs(grown: list[RunResult], other: list[RunResult]) -> float:
    """The mean, over seeds, of the other run's training FLOPs over the grown run's."""
    return mean([o.flops / g.flops for g, o in zip(grown, other, strict=True)])


def growth_bars(grown: list[RunResult], scratch: list[RunResult], best: list[RunResult],
                sweep_all: list[RunResult]) -> dict[str, Any]:
    """Bars (a) and (b) of DESIGN §9 over paired seeds: ``vs_scratch`` (grown within 0.5 points of its final
    shape from scratch with <= 70% of its FLOPs) and ``auto_size`` (within 0.5 points of the best of the sweep
    with <= 25% of the whole sweep's FLOPs, the sweep's runs of the same seed summed), and the largest output
    change measured at a germination."""
    sweep_flops = [sum(r.flops for r in sweep_all if r.seed == g.seed) for g in grown]
    acc = lambda rs: mean([r.test_acc for r in rs])  # noqa: E731
    flops_ratio = mean([g.flops / s.flops for g, s in zip(grown, scratch)])
    sweep_ratio = mean([g.flops / f for g, f in zip(grown, sweep_flops)])
    changes = [c for g in grown for c in g.output_changes]
    return {
        "vs_scratch": {
            "grown_acc": acc(grown), "scratch_acc": acc(scratch), "gap": acc(grown) - acc(scratch),
            "flops_ratio": flops_ratio,
            "ok": acc(grown) >= acc(scratch) - 0.5 and flops_ratio <= 0.70,
            "bar": "grown within 0.5 points of its final shape from scratch, with <= 70% of its FLOPs",
        },
        "auto_size": {
            "grown_acc": acc(grown), "sweep_best_acc": acc(best), "flops_vs_sweep": sweep_ratio,
            "ok": acc(grown) >= acc(best) - 0.5 and sweep_ratio <= 0.25,
            "bar": "within 0.5 points of the best of the 5-size sweep, with <= 25% of the sweep's FLOPs",
        },
        "germination_output_change_max": max(changes) if changes else 0.0,
    }


def _bars(res: dict[str, list[RunResult]], setup: Setup) -> dict[str, Any]:
    core = growth_bars(res["grown"], res["scratch"], res["sweep_best"], res["sweep_all"])
    return {
        "vs_scratch": core["vs_scratch"],
        "auto_size": core["auto_size"],
        "vs_random": (at_equal_budget(res, setup.tight_budgets, "random", "beats random placement at equal budget")
                      if setup.targets != "block" else
                      {"ok": None, "verdict": "n/a", "bar": "beats random placement at equal budget",
                       "note": "one host (the whole MLP is a block): random placement has no other choice"}),
        "vs_hand": at_equal_budget(res, setup.tight_budgets, "hand", "beats a hand schedule at equal budget"),
        "germination_output_change_max": core["germination_output_change_max"],
    }


def _paired_text(b: dict[str, Any]) -> str:
    return (f"{b['diff_mean']:+.2f} ± {b['diff_se']:.2f} points (paired mean ± se; {b['wins']} wins, {b['ties']} ties, "
            f"{b['losses']} losses): {b['verdict']} (its FLOPs {b['flops_vs_grown']:.0%} of the grown run's)")


def _command(quick: bool, seeds: int | None, budget_seeds: int | None, seed_offset: int,
             tasks: Sequence[str]) -> str:
    """The `esper demo` command line that makes this run (provenance for its figures)."""
    words = ["esper demo"]
    if quick:
        words.append("--quick")
    if seeds is not None:
        words.append(f"--seeds {seeds}")
    if budget_seeds is not None:
        words.append(f"--budget-seeds {budget_seeds}")
    if seed_offset:
        words.append(f"--seed-offset {seed_offset}")
    if tuple(tasks) != TASKS:
        words.append(f"--tasks {','.join(tasks)}")
    return " ".join(words)


def markdown_tables(report: dict[str, Any], command: str) -> str:
    """The README's demo tables, one per task, with each bar's verdict, and the run's provenance
    (command, commit, machine, wall time): ``demo_out/tables.md`` (paste into README.md)."""
    m = report["machine"]
    lib = m.get("esper") or {}
    out = [f"`{command}` at commit `{lib.get('commit', 'unknown')}` on {m['platform']} ({m['device']}, "
           f"{m['workers']} worker(s), torch {m['torch']}): {report['wall_s']:.0f} s.\n"]
    for name, task in report["tasks"].items():
        out.append(f"**{name}**\n\n| configuration | test acc % (mean ± sd) | final params | train FLOPs "
                   "| germ / foss / prune |\n|---|---|---|---|---|")
        for r in task["rows"]:
            out.append(f"| {r['config']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} | "
                       f"{r['params_mean']:.0f} | {r['train_flops_mean']:.3g} | "
                       f"{r['germinations']} / {r['fossilizations']} / {r['prunes']} |")
        bars = task["bars"]
        vs, au = bars["vs_scratch"], bars["auto_size"]
        verdict_of = lambda ok: "n/a" if ok is None else "met" if ok else "missed"  # noqa: E731
        lines = [f"grown {vs['grown_acc']:.2f}% against its final shape from scratch {vs['scratch_acc']:.2f}% with "
                 f"{vs['flops_ratio']:.0%} of its FLOPs (**{verdict_of(vs['ok'])}**)",
                 f"against the best of the 5-size sweep {au['sweep_best_acc']:.2f}% with {au['flops_vs_sweep']:.0%} "
                 f"of the sweep's FLOPs (**{verdict_of(au['ok'])}**)"]
        for key, label in (("vs_random", "random placement"), ("vs_hand", "hand schedule at equal budget")):
            b = bars[key]
            if b.get("ok") is None:
                lines.append(f"{label}: n/a")
                continue
            where = f" over budgets {', '.join(map(str, b['budgets']))}" if b.get("budgets") else ""
            lines.append(f"{label}{where}: {b['diff_mean']:+.2f} ± {b['diff_se']:.2f} points ({b['wins']} wins, "
                         f"{b['ties']} ties, {b['losses']} losses; its FLOPs {b['flops_vs_grown']:.0%} of the grown "
                         f"run's): {b['verdict']} (**{verdict_of(b['ok'])}**)")
        lines.append(f"largest output change at a germination {bars['germination_output_change_max']:.1e}")
        out.append("\nBars: " + "; ".join(lines) + ".\n")
    for name, c in report["controls"].items():
        out.append(f"Negative control `{name}`: germinations per seed {c['germinations']} "
                   f"(at most one: **{'met' if c['ok'] else 'missed'}**).\n")
    return "\n".join(out)


def _fmt_table(name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"\n{name}", f"  {'configuration':<40} {'test acc %':>14} {'params':>8} {'train FLOPs':>12} "
             f"{'wall s':>7} {'germ/foss/prune':>16}"]
    for r in rows:
        lines.append(
            f"  {r['config']:<40} {r['test_acc_mean']:>7.2f} ±{r['test_acc_std']:>5.2f} {r['params_mean']:>8.0f} "
            f"{r['train_flops_mean']:>12.3g} {r['wall_s_mean']:>7.2f} "
            f"{r['germinations']:>6}/{r['fossilizations']}/{r['prunes']}"
        )
    return "\n".join(lines)


def _plot(path: str, results: dict[str, dict[str, list[RunResult]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), squeeze=False)
    marks = {"GERMINATED": ("tab:green", "germinated"), "FOSSILIZED": ("tab:blue", "fossilized"),
             "PRUNED": ("tab:red", "pruned")}
    for col, (name, res) in enumerate(results.items()):
        curves = [("fixed small", res["small"][0]), ("fixed large", res["large"][0]), ("grown", res["grown"][0]),
                  ("same shape from scratch", res["scratch"][0])]
        for label, run in curves:
            epochs = range(1, len(run.history["val_loss"]) + 1)
            axes[0][col].plot(epochs, run.history["val_loss"], label=label)
            axes[1][col].plot(epochs, run.history["val_acc"], label=label)
        seen = set()
        for ev in res["grown"][0].events:
            if ev["to"] in marks:
                color, label = marks[ev["to"]]
                for ax in (axes[0][col], axes[1][col]):
                    ax.axvline(ev["epoch"] + 1, color=color, alpha=0.5, linestyle="--",
                               label=label if (ax is axes[1][col] and label not in seen) else None)
                seen.add(label)
        axes[0][col].set_title(f"{name}: validation loss (seed 0)")
        axes[0][col].set_yscale("log")
        axes[1][col].set_title(f"{name}: validation accuracy % (seed 0)")
        axes[1][col].set_xlabel("epoch")
        lo = min(min(r.history["val_acc"][5:] or [0]) for _, r in curves)
        axes[1][col].set_ylim(max(0, lo - 2), 100)
        axes[1][col].legend(fontsize=8, loc="lower right")
        axes[0][col].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool = False, out_dir: str = "demo_out", seeds: int | None = None,
         budget_seeds: int | None = None, workers: int | None = None, tasks: tuple[str, ...] | None = None,
         seed_offset: int = 0) -> int:
    """Run the demo; returns 0 (bars missed are reported, not fatal).

    Args:
        quick: one task, one seed, 15 epochs: a smoke run.
        out_dir: where results.json and growth.png go.
        seeds: seeds of the comparisons at the loose budget (default 10; 1 when quick).
        budget_seeds: seeds of the comparisons at the tight budgets (default 20, or ``seeds`` when that is
            more or when quick):
            their differences are a few tenths of a point against a per-seed spread near one point, which
            10 seeds cannot resolve.
        tasks: growth tasks to run, from ALL_TASKS (default TASKS; the first of them when quick).
        seed_offset: the first seed (default 0): ``seed_offset=20`` reruns every comparison on seeds 20 onward,
            fresh seeds that no setting was chosen on.
        workers: processes that run the seeds side by side (default: one per CPU core, at most 8 and one per
            GiB of available memory; one on CUDA; see :func:`esper.demo.jobs.default_workers`). The
            numbers do not depend on it.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = default_workers(device.type) if workers is None else workers
    if workers < 1:
        raise ValueError(f"esper demo: workers must be >= 1, got {workers}")
    n = seeds if seeds is not None else (1 if quick else 10)
    nb = budget_seeds if budget_seeds is not None else (n if quick else max(n, BUDGET_SEEDS))
    tasks = TASKS if tasks is None else check_tasks(tasks)
    command = _command(quick, seeds, budget_seeds, seed_offset, tasks)
    tasks = tasks[:1] if quick else tasks
    controls = CONTROLS[:1] if quick else CONTROLS
    setups = {name: SETUPS[name] for name in tasks + controls}
    if quick:
        setups = {k: replace(v, epochs=min(v.epochs, 15), tight_budgets=v.tight_budgets[:1]) for k, v in setups.items()}
    jobs = plan_jobs(setups, tasks, controls, n, nb, seed_offset)
    os.makedirs(out_dir, exist_ok=True)
    first = f", seeds from {seed_offset}" if seed_offset else ""
    print(f"esper demo: {', '.join(tasks)} ({n} seed(s) each, {nb} at the tight budgets{first}), negative controls "
          f"{', '.join(controls)}; device {device}, {min(workers, len(jobs))} worker(s)")
    start = time.perf_counter()
    bar = progress_bar(sum(job_runs(j) for j in jobs))
    merged = merge(jobs, run_jobs(jobs, device.type, workers, bar))
    bar.close()
    results = {t: merged[t] for t in tasks}
    control_runs = {c: merged[c]["control"] for c in controls}

    report: dict[str, Any] = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                          "device": str(device), "esper": build_info(), "workers": workers},
                              "budget_seeds": nb, "seed_offset": seed_offset,
                              "seeds": n, "tasks": {}, "controls": {}}
    text = []
    for name, res in results.items():
        setup = setups[name]
        rows = [
            summary_row(f"fixed small (width {setup.sweep[0]})", res["small"]),
            summary_row(f"fixed large (width {setup.sweep[-1]})", res["large"]),
            summary_row("best of 5-size sweep (on val)", res["sweep_best"]),
            summary_row(f"grown from width {setup.start_width} (Tamiyo)", res["grown"]),
            summary_row("same final shape, from scratch", res["scratch"]),
            summary_row(f"random placement, same budget ({setup.morph.max_params})", res["random"]),
            summary_row(f"hand schedule, same budget ({setup.morph.max_params})", res["hand"]),
            summary_row(f"hand schedule, early ({setup.hand_start}+{setup.hand_gap}k)", res["hand_early"]),
        ]
        for b in setup.tight_budgets:
            rows.append(summary_row(f"grown, budget {b} ({nb} seeds)", res[f"grown@{b}"]))
            if f"random@{b}" in res:
                rows.append(summary_row(f"random placement, budget {b} ({nb} seeds)", res[f"random@{b}"]))
            rows.append(summary_row(f"hand schedule, budget {b} ({nb} seeds)", res[f"hand@{b}"]))
        bars = _bars(res, setup)
        # Not a bar: the early schedule spends more compute than the grown run, which the FLOPs bar would not allow.
        early = paired(res["grown"], res["hand_early"], "none (more compute than the grown run)")
        report["tasks"][name] = {
            "rows": rows, "bars": bars, "vs_hand_early": early,
            "runs": {k: [r.summary() for r in v] for k, v in res.items() if k != "sweep_all"},
            "sweep_all": [r.summary() for r in res["sweep_all"]],
            "history_seed0": {k: v[0].history for k, v in res.items() if v and k != "sweep_all"},
            "events_seed0": res["grown"][0].events,
        }
        text.append(_fmt_table(f"{name} (MLP depth {setup.depth}, {setup.epochs} epochs, {n} seed(s))", rows))
        text.append(
            "  bars: "
            + "; ".join(
                f"{k} {'n/a' if v['ok'] is None else 'OK' if v['ok'] else 'MISSED'}"
                for k, v in bars.items() if isinstance(v, dict)
            )
            + f"; output change at germination (max) {bars['germination_output_change_max']:.1e}"
        )
        vs = bars["vs_scratch"]
        au = bars["auto_size"]
        for key, label in (("vs_random", "random placement"), ("vs_hand", "hand schedule")):
            b = bars[key]
            if b["ok"] is None:
                continue
            where = (f"over budgets {', '.join(map(str, b['budgets']))}, per seed, {nb} seeds" if b["budgets"]
                     else "same budget")
            text.append(f"    vs {label} ({where}): {_paired_text(b)}")
            for budget, pb in b.get("per_budget", {}).items():
                text.append(f"      budget {budget}: {_paired_text(pb)}")
            if "loose" in b:
                text.append(f"      budget {setup.morph.max_params} (loose, not judged): {_paired_text(b['loose'])}")
        text.append(f"    vs the early hand schedule (not a bar: {early['flops_vs_grown']:.0%} of the grown run's "
                    f"FLOPs): {early['diff_mean']:+.2f} ± {early['diff_se']:.2f} points, {early['verdict']}")
        text.append(f"    grown {vs['grown_acc']:.2f}% vs scratch {vs['scratch_acc']:.2f}% at {vs['flops_ratio']:.0%} "
                    f"of its FLOPs; vs best of sweep {au['sweep_best_acc']:.2f}% at {au['flops_vs_sweep']:.0%} of "
                    f"the sweep's FLOPs")
    for name, runs in control_runs.items():
        germ = [r.germinations for r in runs]
        report["controls"][name] = {"germinations": germ, "test_accs": [r.test_acc for r in runs],
                                    "ok": max(germ) <= 1, "bar": "at most one germination"}
        text.append(f"\nnegative control {name}: germinations per seed {germ} "
                    f"({'OK' if max(germ) <= 1 else 'MISSED'}: at most one), test acc "
                    f"{mean([r.test_acc for r in runs]):.2f}%")
    report["wall_s"] = time.perf_counter() - start
    print("\n".join(text))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    _plot(os.path.join(out_dir, "growth.png"), results)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write(markdown_tables(report, command))
    print(f"\nwrote {out_dir}/results.json, {out_dir}/tables.md and {out_dir}/growth.png in {report['wall_s']:.0f}s")
    return 0
