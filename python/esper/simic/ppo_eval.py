"""``esper simic ppo eval``: the graph policy against the heuristic (and the value model) on held-out families.

Each *arm* is one real training run of a held-out task of the suite (``esper.suite``, read with reader
``"eval"``) at a seed, through the user's loop: ``esper.Morphogenesis(model, optimizer, policy=...)`` with the
PPO trainer's settings (``esper.simic.ppo.morph_settings``: the settings the policy was trained and rewarded
under) and the demo's training loop. The arms of one task and seed share the split, the initialisation and the
controller's seed; only the policy differs:

- ``ppo``: ``policy="ppo", ppo_model=DIR`` (Go runs the network and moves; Python proposes nothing);
- ``heuristic``: Tamiyo's heuristic;
- ``learned``: the value model (``policy="learned"``, the shipped value model unless ``--value-model``).

Every arm records its germinations' outcome records to ``<out>/urza`` (Go writes them). The report reads:

- the final metric (the test metric at the epoch chosen on validation), paired: ppo minus each other arm, mean
  and standard error over the pairs, per family and overall;
- each arm's training FLOPs (the run's, as the demo counts them) and the pairs' mean FLOPs ratio;
- decision quality: the share of an arm's germinations whose outcome record ends FOSSILIZED with a measured
  gain (Go's ``gain`` and ``measured`` of ``esper_value_dataset``: the share of the validation loss the seed
  removed at its last HOLDING measurement, > 0);
- the proposals the governor and the lifecycle's gates refused (``stats()["counters"]["refused"]``: not
  executed);
- the critic's explained variance on these held-out episodes: the value estimate Go's network gave at each ppo
  decision (``value_estimate`` of the decision) against the episode's return, the trainer's reward (ppo minus
  the heuristic on the validation metric, at the prices the policy was trained with).

Arms run in spawned workers (one per core) and each finished arm is written at once to
``<out>/episodes/<family>/<index>/<seed>/<arm>-<key>.json``, so an interrupted evaluation resumes and a
finished arm is never rerun; the key digests the task, seed, length, settings and the library's version, and
for the ppo and learned arms the model's files (a retrained model reruns its arm, not the heuristic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

__all__ = ["Arm", "ARMS", "default_out", "plan", "run_arm", "summarize", "evaluate", "table", "add_arguments", "main"]

#: The arms an evaluation may compare the policy with.
ARMS = ("heuristic", "learned")
#: Version of the arm file and of what it measures: bump it when either changes.
ARM_VERSION = 1


@dataclass(frozen=True)
class Arm:
    """One run of an evaluation: held-out task ``index`` of ``family`` at ``seed`` under ``arm`` ("ppo",
    "heuristic" or "learned"), ``epochs`` epochs, quick (tiny) tasks when ``quick``; ``model_dir`` is the
    ppo policy's folder, ``value_model`` the learned arm's ("" for the shipped one); ``cache`` is the arm's
    file and ``urza`` the store its outcome records go to."""

    family: str
    index: int
    seed: int
    arm: str
    epochs: int
    quick: bool
    model_dir: str
    value_model: str
    cache: str
    urza: str


def default_out() -> str:
    """The default evaluation folder: ``$ESPER_HOME/simic/ppo-eval``."""
    from .collect import default_out as simic_home

    return os.path.join(simic_home(), "ppo-eval")


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for name in ("manifest.json", "model.safetensors"):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _settings(arm: Arm) -> dict[str, Any]:
    from .ppo import EpisodeSpec, morph_settings

    return morph_settings(EpisodeSpec(arm.family, arm.index, arm.seed, arm.epochs, arm.quick))


def plan(families: list[str], tasks: int, seeds: int, epochs: int, quick: bool, model_dir: str,
         against: tuple[str, ...], out_dir: str, value_model: str = "") -> list[Arm]:
    """Every arm of an evaluation, per task index and seed, each family: ppo, then each of ``against``
    (the heuristic is always run: it is the return's baseline).

    Raises:
        ValueError: an unknown arm, or counts < 1.
    """
    from .. import build_info
    from ..suite.families import FAMILIES

    bad = [a for a in against if a not in ARMS]
    if bad:
        raise ValueError(f"--against takes some of {', '.join(ARMS)}, got {bad}")
    if tasks < 1 or seeds < 1 or epochs < 1:
        raise ValueError(f"tasks, seeds and epochs must be >= 1, got {tasks}, {seeds} and {epochs}")
    arms = ("ppo", "heuristic", *[a for a in against if a != "heuristic"])
    digests = {"ppo": _digest(model_dir)}
    if "learned" in arms:
        from .value import MODEL_DIR as VALUE_DIR

        digests["learned"] = _digest(value_model or str(VALUE_DIR))
    version = build_info().get("version")
    urza = os.path.join(out_dir, "urza")
    out = []
    for index in range(tasks):
        for seed in range(seeds):
            for name in families:
                for a in arms:
                    arm = Arm(name, index, seed, a, epochs, quick, model_dir if a == "ppo" else "",
                              value_model if a == "learned" else "", "", urza)
                    fam = FAMILIES[name]
                    doc = {"version": ARM_VERSION, "family": {**asdict(replace(fam, make=None)),
                                                              "maker": fam.make.__name__},
                           "index": index, "seed": seed, "arm": a, "epochs": epochs, "quick": quick,
                           "settings": _settings(arm), "esper": version, "model": digests.get(a)}
                    key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
                    path = os.path.join(out_dir, "episodes", name, str(index), str(seed), f"{a}-{key}.json")
                    out.append(replace(arm, cache=path))
    return out


def run_arm(arm: Arm) -> dict[str, Any]:
    """Make one arm's run (a worker's job, on one thread) and write its file; returns it."""
    from .. import valuemodel
    from ..demo.experiments import _evaluator, _wrap, build_model, setup_task
    from ..demo.jobs import one_thread
    from ..demo.train import train
    from ..outcomes import flush_all
    from ..suite.families import FAMILIES
    from ..suite.run import setup_for
    from ..tolaria import MorphConfig, Morphogenesis

    with one_thread():
        setup = setup_for(FAMILIES[arm.family], arm.index, arm.quick, reader="eval")
        setup = replace(setup, epochs=arm.epochs)
        task = setup_task(setup, arm.seed, torch.device("cpu"))
        torch.manual_seed(arm.seed)
        model = _wrap(build_model(task, setup, setup.start_width), setup)
        opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
        extra: dict[str, Any] = {}
        if arm.arm == "ppo":
            extra["ppo_model"] = arm.model_dir
        elif arm.arm == "learned" and arm.value_model:
            extra["value_model"] = arm.value_model
        config = MorphConfig(**_settings(arm), policy=arm.arm, urza=arm.urza, record_outcomes=True, **extra)
        morph = Morphogenesis(model, opt, config=config, evaluate=_evaluator(task))
        decisions: list[dict[str, Any]] = []

        def on_epoch(epoch: int, hist: Any) -> None:
            res = morph.end_epoch(val_loss=hist.val_loss[-1], val_metric=hist.val_acc[-1])
            decisions.extend({**d, "epoch": epoch} for d in res.get("decisions", []))

        start = time.perf_counter()
        hist = train(model, task, epochs=setup.epochs, lr=setup.lr, batch_size=setup.batch_size, seed=arm.seed,
                     optimizer=opt, on_step=morph.step, on_epoch=on_epoch)
        wall = time.perf_counter() - start
        counters = morph.stats()["counters"]
        run_id = morph.run_id
        morph.close()
        flush_all()
        data = valuemodel.dataset(arm.urza, runs=[run_id], in_flight=True)
    rows = [{"seq": r["seq"], "layer": r["layer"], "template": r["template"], "final_state": r["final_state"],
             "ended_by": r["ended_by"], "gain": r["gain"], "measured": r["measured"]} for r in data["rows"]]
    doc = {"version": ARM_VERSION, "family": arm.family, "index": arm.index, "seed": arm.seed, "arm": arm.arm,
           "epochs": arm.epochs, "quick": arm.quick, "run_id": run_id,
           "test_metric": hist.test_acc, "metric": hist.val_acc[hist.best_epoch], "best_epoch": hist.best_epoch,
           "flops": hist.flops[-1], "params": hist.params[hist.best_epoch], "rollbacks": counters["rollbacks"],
           "refused": counters["refused"], "proposals": counters["proposals"],
           "germinations": counters["germinations"], "fossilizations": counters["fossilizations"],
           "outcomes": rows, "outcomes_skipped": data["skipped"],
           "values": [d["value_estimate"] for d in decisions if d.get("value_estimate") is not None],
           "decisions": len(decisions), "wall_s": wall}
    os.makedirs(os.path.dirname(arm.cache), exist_ok=True)
    tmp = f"{arm.cache}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, arm.cache)  # written last: an arm is finished when its file exists
    return doc


def _quality(docs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for d in docs for r in d["outcomes"]]
    good = sum(1 for r in rows if r["final_state"] == "FOSSILIZED" and r["measured"] and r["gain"] > 0)
    skipped = sum(int(v) for d in docs for v in d["outcomes_skipped"].values())
    return {"germinations": sum(int(d["germinations"]) for d in docs), "outcome_records": len(rows),
            "records_skipped": skipped, "fossilized": sum(1 for r in rows if r["final_state"] == "FOSSILIZED"),
            "fossilized_with_gain": good, "decision_quality": good / len(rows) if rows else None}


def _paired(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    n = len(pairs)
    diff = np.array([a["test_metric"] - b["test_metric"] for a, b in pairs], dtype=np.float64)
    ratio = np.array([a["flops"] / b["flops"] for a, b in pairs if b["flops"] > 0], dtype=np.float64)
    return {"pairs": n, "diff_mean": float(diff.mean()) if n else None,
            "diff_se": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
            "flops_ppo": float(np.mean([a["flops"] for a, _ in pairs])) if n else None,
            "flops_other": float(np.mean([b["flops"] for _, b in pairs])) if n else None,
            "flops_ratio_mean": float(ratio.mean()) if len(ratio) else None}


def summarize(docs: list[dict[str, Any]], prices: Any) -> dict[str, Any]:
    """The report's figures from the arms' files (see the module's doc); ``prices`` are the policy's
    training prices (:class:`esper.simic.ppo.Prices`) for the return the critic is judged against."""
    from .ppo import reward

    by: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for d in docs:
        by.setdefault((d["family"], d["index"], d["seed"]), {})[d["arm"]] = d
    arms = sorted({d["arm"] for d in docs}, key=lambda a: ("ppo", "heuristic", "learned").index(a))
    out: dict[str, Any] = {"arms": {}, "against": {}}
    for a in arms:
        mine = [d for d in docs if d["arm"] == a]
        out["arms"][a] = {"runs": len(mine), "test_metric_mean": float(np.mean([d["test_metric"] for d in mine])),
                          "flops_mean": float(np.mean([d["flops"] for d in mine])),
                          "refused": sum(int(d["refused"]) for d in mine),
                          "decisions": sum(int(d["decisions"]) for d in mine),
                          "rollbacks": sum(int(d["rollbacks"]) for d in mine), **_quality(mine)}
    for other in arms[1:]:
        keys = sorted(k for k, v in by.items() if "ppo" in v and other in v)
        fams = sorted({k[0] for k in keys})
        out["against"][other] = {
            "overall": _paired([(by[k]["ppo"], by[k][other]) for k in keys]),
            "families": {f: _paired([(by[k]["ppo"], by[k][other]) for k in keys if k[0] == f]) for f in fams}}
    # The critic: Go's value estimates at every ppo decision against the episode's return (terminal, gamma 1:
    # the return at every step is the episode's reward).
    values: list[float] = []
    returns: list[float] = []
    episode_returns = []
    for v in by.values():
        if "ppo" in v and "heuristic" in v:
            r = reward(v["ppo"], v["heuristic"], prices)["total"]
            episode_returns.append(r)
            values.extend(v["ppo"]["values"])
            returns.extend([r] * len(v["ppo"]["values"]))
    ev = None
    # Explained variance needs returns that differ: one episode's return repeated at each of its decisions has
    # none (its computed variance is rounding error, not 0, when the return is not a round number).
    if len(set(returns)) > 1:
        ret, val = np.array(returns), np.array(values)
        var = float(ret.var())
        ev = 1.0 - float((ret - val).var()) / var if var > 0 else None
    out["critic"] = {"episodes": len(episode_returns), "decisions": len(values), "explained_variance": ev,
                     "return_mean": float(np.mean(episode_returns)) if episode_returns else None,
                     "value_mean": float(np.mean(values)) if values else None}
    return out


def evaluate(model_dir: str, *, families: tuple[str, ...] | list[str] | None = None, tasks: int = 1, seeds: int = 2,
             epochs: int | None = None, quick: bool = False, out_dir: str | None = None,
             against: tuple[str, ...] = ("heuristic",), value_model: str = "", workers: Any = None,
             quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) an evaluation and write ``<out>/eval.json``; returns the report.

    Args:
        model_dir: the ppo policy's folder.
        families: held-out growth families (default all of them; a training family is refused).
        tasks, seeds: per family.
        epochs: run length (default the policy's training length, from its manifest; 15 without one).
        quick: the suite's tiny tasks.
        out_dir: the evaluation's folder (default :func:`default_out`).
        against: arms besides ppo ("heuristic" always runs).
        value_model: the learned arm's value model folder ("" for the shipped one).
        workers: processes (an int, default one per core) or a :class:`esper.simic.ppo.Workers` to share.
        quiet: no progress bar.
    """
    from ..demo.jobs import default_workers
    from .ppo import PPOConfig, Prices, Workers, _bar
    from .value import eval_families

    names = eval_families(list(families) if families is not None else None)
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    trained = (manifest.get("training") or {}).get("config") or {}
    epochs = epochs or int(trained.get("epochs", PPOConfig.epochs))
    prices = Prices(**trained["prices"]) if "prices" in trained else Prices()
    out_dir = out_dir or default_out()
    arms = plan(names, tasks, seeds, epochs, quick, model_dir, tuple(against), out_dir, value_model)
    pool = workers if hasattr(workers, "map") else Workers(workers or default_workers("cpu"))
    pending = [a for a in arms if not os.path.exists(a.cache)]
    if not quiet:
        print(f"esper simic ppo eval: {len(arms)} runs ({len(arms) - len(pending)} already finished) on "
              f"{', '.join(names)}, {tasks} task(s) x {seeds} seed(s), {epochs} epochs; into {out_dir}", flush=True)
    bar = _bar(len(arms), quiet, unit="run")
    bar.update(len(arms) - len(pending))

    def done(i: int, doc: dict[str, Any]) -> None:
        a = pending[i]
        bar.set_description(f"{a.family}/{a.index} seed {a.seed} {a.arm}: {doc['germinations']} germinations")
        bar.update()

    start = time.perf_counter()
    try:
        pool.map(run_arm, pending, done)
    finally:
        bar.close()
        if pool is not workers:
            pool.close()
    docs = []
    for a in arms:
        with open(a.cache) as f:
            docs.append(json.load(f))
    from .. import build_info

    report = {"model": {"dir": model_dir, "command": (manifest.get("training") or {}).get("command"),
                        "commit": (manifest.get("training") or {}).get("commit"),
                        "ppo_episodes": (manifest.get("training") or {}).get("ppo_episodes")},
              "command": {"families": names, "tasks": tasks, "seeds": seeds, "epochs": epochs, "quick": quick,
                          "against": list(against), "value_model": value_model or "shipped"},
              "settings": "esper.simic.ppo.morph_settings (the PPO trainer's), every arm alike",
              "prices": asdict(prices), "commit": build_info().get("commit"), **summarize(docs, prices),
              "runs": docs, "wall_s": round(time.perf_counter() - start, 1)}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eval.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)
    return report


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [f"policy {report['model']['dir']} on {', '.join(report['command']['families'])} "
             f"({report['command']['tasks']} task(s) x {report['command']['seeds']} seed(s), "
             f"{report['command']['epochs']} epochs)", "",
             f"{'arm':<10} {'runs':>4} {'test metric':>11} {'FLOPs/run':>10} {'germinations':>12} "
             f"{'fossilized+gain':>15} {'quality':>7} {'refused/decisions':>17}"]
    for name, a in report["arms"].items():
        lines.append(f"{name:<10} {a['runs']:>4} {a['test_metric_mean']:>11.2f} {a['flops_mean']:>10.3g} "
                     f"{a['germinations']:>12} {a['fossilized_with_gain']:>15} {_f(a['decision_quality'], '.0%'):>7} "
                     f"{a['refused']:>8}/{a['decisions']:<8}")
    lines.append("")
    for other, s in report["against"].items():
        o = s["overall"]
        lines.append(f"ppo - {other}: {_f(o['diff_mean'], '+.2f')} +- {_f(o['diff_se'])} points (test metric, "
                     f"{o['pairs']} pairs, {o['wins']} better, {o['losses']} worse); FLOPs ppo/{other} "
                     f"{_f(o['flops_ratio_mean'])} ({_f(o['flops_ppo'], '.3g')} against {_f(o['flops_other'], '.3g')} "
                     f"per run)")
        for fam, m in s["families"].items():
            lines.append(f"  {fam:<16} {_f(m['diff_mean'], '+.2f')} +- {_f(m['diff_se'])} ({m['pairs']} pairs)")
    c = report["critic"]
    lines.append(f"critic's explained variance on these episodes: {_f(c['explained_variance'], '.3f')} "
                 f"({c['decisions']} decisions of {c['episodes']} episodes; mean return "
                 f"{_f(c['return_mean'], '+.3f')}, "
                 f"mean value estimate {_f(c['value_mean'], '+.3f')})")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``esper simic ppo eval``'s arguments."""
    p.add_argument("--model", default="", help="the policy's model folder (default the shipped one)")
    p.add_argument("--families", default="held-out",
                   help="held-out families, comma-separated (default held-out: every held-out growth family)")
    p.add_argument("--tasks", type=int, default=1, help="tasks per family (default 1)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per task (default 3)")
    p.add_argument("--epochs", type=int, default=0, help="run length (default the policy's training length)")
    p.add_argument("--quick", action="store_true", help="the suite's tiny tasks (a smoke run)")
    p.add_argument("--against", default="heuristic",
                   help="arms to compare with, comma-separated, of heuristic, learned (default heuristic)")
    p.add_argument("--value-model", default="", help="the learned arm's value model folder (default the shipped one)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    p.add_argument("--out", default="", help="folder for the runs and eval.json (default $ESPER_HOME/simic/ppo-eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run ``esper simic ppo eval`` with parsed arguments; prints the table."""
    from .graph import default_model_dir
    from .value import eval_families

    model_dir = args.model or default_model_dir()
    fams = None if args.families == "held-out" else [n.strip() for n in args.families.split(",") if n.strip()]
    against = tuple(a.strip() for a in args.against.split(",") if a.strip())
    try:
        eval_families(fams)
        report = evaluate(model_dir, families=fams, tasks=args.tasks, seeds=args.seeds, epochs=args.epochs or None,
                          quick=args.quick, out_dir=args.out or None, against=against, value_model=args.value_model,
                          workers=args.workers or None, quiet=args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f"esper simic ppo eval: {exc}")
        return 2
    print(table(report))
    out = args.out or default_out()
    print(f"wrote {os.path.join(out, 'eval.json')}")
    return 0
