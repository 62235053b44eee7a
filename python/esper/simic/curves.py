"""The PPO trainer's learning curves: ``curves.json`` and ``curves.png``, made from its log.

The log (:class:`esper.simic.ppo.Trainer`, kept in its checkpoint) holds one entry per episode (the reward
and its terms), per update (the critic's explained variance and the entropy of each head), per behaviour
cloning epoch (its loss) and per held-out evaluation (the policy minus the heuristic on held-out families).
The curves are computed from the whole log at every checkpoint, so a resumed run's curves continue the old
ones.

The x axis is the episode. Points are windows of ``every`` episodes (the mean over the window; an update or
an evaluation falls in the window of its episode) once the run has ``every`` episodes; before that, every
episode is a point. The reward's running mean is the mean over the last ``every`` episodes (fewer at the
start).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["curves", "write_curves", "HEADS", "TERMS"]

#: The policy's heads, in the log's order (``entropy_<head>``).
HEADS = ("op", "target", "template", "size")
#: The reward's terms (``esper.simic.ppo.reward``).
TERMS = ("accuracy", "compute", "params", "stability")


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def curves(log: list[dict[str, Any]], every: int = 100) -> dict[str, Any]:
    """The curves of a trainer's log (see the module's doc): a JSON-ready dict.

    Returns:
        ``{"every", "windowed", "episodes", "reward": {"x", "total", "running_mean", <term>...},
        "explained_variance": {"x", "y"}, "entropy": {"x", <head>...}, "held_out": {"x", "diff_mean",
        "diff_se", "pairs", "explained_variance", "decision_quality"}, "bc_loss": [...]}``; a missing or
        non-finite value is null. ``x`` is the last episode of each window (or the episode).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    eps = [e for e in log if e["kind"] == "episode"]
    updates = [e for e in log if e["kind"] == "update"]
    n = len(eps)
    windowed = n >= every
    size = every if windowed else 1

    def window(episode: int) -> int:
        return (episode - 1) // size

    # Every window that holds an episode, in order; x is its last episode.
    keys = sorted({window(e["episode"]) for e in eps})
    xs = {k: max(e["episode"] for e in eps if window(e["episode"]) == k) for k in keys}
    reward: dict[str, list[Any]] = {"x": [xs[k] for k in keys], "total": [], "running_mean": []}
    for term in TERMS:
        reward[term] = []
    totals = [float(e["reward"]["total"]) for e in eps]
    running = [sum(totals[max(0, i + 1 - every):i + 1]) / (i + 1 - max(0, i + 1 - every)) for i in range(n)]
    for k in keys:
        idx = [i for i, e in enumerate(eps) if window(e["episode"]) == k]
        reward["total"].append(_mean([_finite(totals[i]) for i in idx]))
        reward["running_mean"].append(_finite(running[idx[-1]]))
        for term in TERMS:
            reward[term].append(_mean([_finite(eps[i]["reward"][term]) for i in idx]))
    ukeys = sorted({window(max(u["episode"], 1)) for u in updates})

    def ux(k: int) -> int:
        return xs.get(k, max(u["episode"] for u in updates if window(max(u["episode"], 1)) == k))

    ev = {"x": [ux(k) for k in ukeys], "y": [_mean([_finite(u["explained_variance"]) for u in updates
                                                    if window(max(u["episode"], 1)) == k]) for k in ukeys]}
    ent: dict[str, list[Any]] = {"x": ev["x"]}
    for head in HEADS:
        ent[head] = [_mean([_finite(u[f"entropy_{head}"]) for u in updates if window(max(u["episode"], 1)) == k])
                     for k in ukeys]
    evals = [e for e in log if e["kind"] == "eval"]
    held = {"x": [e["episode"] for e in evals], "diff_mean": [_finite(e["diff_mean"]) for e in evals],
            "diff_se": [_finite(e["diff_se"]) for e in evals], "pairs": [e["pairs"] for e in evals],
            "explained_variance": [_finite(e.get("explained_variance")) for e in evals],
            "decision_quality": [_finite(e.get("decision_quality")) for e in evals]}
    bc = [_finite(e["loss"]) for e in log if e["kind"] == "bc"]
    return {"every": every, "windowed": windowed, "episodes": n, "reward": reward, "explained_variance": ev,
            "entropy": ent, "held_out": held, "bc_loss": bc}


def _plot(c: dict[str, Any], path: str) -> None:
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    except ImportError as exc:
        raise ImportError("esper simic ppo train draws curves.png with matplotlib: pip install 'esper[simic]' "
                          "(or matplotlib)") from exc

    def line(ax: Any, x: list[int], y: list[Any], **kw: Any) -> None:
        pts = [(a, b) for a, b in zip(x, y) if b is not None]
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="." if len(pts) < 50 else None, **kw)

    unit = f"mean of {c['every']} episodes" if c["windowed"] else "per episode"
    fig = Figure(figsize=(15, 8))
    axes = fig.subplots(2, 3)
    r = c["reward"]
    ax = axes[0][0]
    line(ax, r["x"], r["total"], label=f"reward ({unit})")
    line(ax, r["x"], r["running_mean"], label=f"running mean (last {c['every']})")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_title("reward: policy minus heuristic, paired")
    ax = axes[0][1]
    for term in TERMS:
        line(ax, r["x"], r[term], label=term)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_title(f"reward terms ({unit})")
    ax = axes[0][2]
    line(ax, c["explained_variance"]["x"], c["explained_variance"]["y"], label="training batches")
    h = c["held_out"]
    line(ax, h["x"], h["explained_variance"], label="held-out episodes")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_title("critic's explained variance")
    ax = axes[1][0]
    for head in HEADS:
        line(ax, c["entropy"]["x"], c["entropy"][head], label=head)
    ax.set_title("entropy per head (mean over the update's samples)")
    ax = axes[1][1]
    pts = [(x, m, s) for x, m, s in zip(h["x"], h["diff_mean"], h["diff_se"]) if m is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], marker="o",
                    capsize=3, label="policy minus heuristic (test metric, points; bars: 1 SE)")
        ax.axhline(0.0, color="grey", lw=0.5)
    else:
        ax.text(0.5, 0.5, "no held-out evaluation yet\n(esper simic ppo train --eval-every N)", ha="center",
                va="center", transform=ax.transAxes)
    ax.set_title("held-out families against the heuristic")
    ax = axes[1][2]
    bc = [(i, v) for i, v in enumerate(c["bc_loss"]) if v is not None]
    if bc:
        ax.plot([i for i, _ in bc], [v for _, v in bc], marker=".")
    ax.set_title("behaviour cloning loss (x: BC epoch)")
    for a in axes.flat:
        a.set_xlabel("episode")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    axes[1][2].set_xlabel("epoch")
    fig.suptitle(f"esper simic ppo: {c['episodes']} episodes")
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)


def write_curves(out_dir: str, log: list[dict[str, Any]], every: int = 100) -> list[str]:
    """Write ``curves.json`` and ``curves.png`` (atomically) into ``out_dir``; returns their paths."""
    c = curves(log, every)
    path = os.path.join(out_dir, "curves.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(c, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    png = os.path.join(out_dir, "curves.png")
    _plot(c, png)
    return [path, png]
