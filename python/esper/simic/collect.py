"""`esper simic collect`: episodes on the suite's training families that write outcome records to Urza.

An *episode* is one grown run of a suite task (a family and an index) at a seed, under one controller: the
heuristic policy or the random-placement baseline, with settings drawn for the episode (plateau threshold and
patience, lifecycle lengths, cooldown, the seed's width and the parameter budget), so that the records cover
early and late germinations, seeds that paid and seeds that did not. Each germination of the run writes its
outcome record to one Urza store (``esper.outcomes``); the value model is fitted on them (``esper simic
train``), with features and targets computed in Go.

Tasks come from the suite (``esper.suite``) through its guard: a collection for fitting reads with reader
``"train"``, so a held-out family raises :class:`~esper.suite.HeldOutError`. ``esper simic eval`` collects on
held-out families with reader ``"eval"`` into a store of its own, to judge on.

Episodes run in spawned workers (one per core, the demo's pool). Each finished episode is written at once to
``<out>/episodes/<family>/<index>/<seed>/<policy>-<key>.json`` (its run id, drawn settings and counts), so an
interrupted collection resumes where it stopped and a finished episode is never rerun; the key digests what
the episode depends on (family, task, seed, policy, quick, epochs, the drawn settings, the library's
version; the commit is recorded in the file but left out of the key, so a collection resumes across
commits). The store may also hold records of an episode that was interrupted: only the runs named by
finished episodes are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from .. import build_info
from ..demo.experiments import grown_run, setup_task
from ..demo.jobs import default_workers, one_thread, run_pool
from ..suite.families import FAMILIES, HELD_OUT, TRAIN, families
from ..suite.run import setup_for
from ..tolaria import MorphConfig

__all__ = ["Episode", "POLICIES", "SETTINGS_VERSION", "default_out", "draw_settings", "plan", "run_episode",
           "collect", "episodes"]

#: The controllers episodes run under by default: Tamiyo's heuristic and the random-placement baseline
#: (random layer, the heuristic's timing and budget).
POLICIES = ("heuristic", "random")
#: Version of :func:`draw_settings` and of the episode file: bump it when either changes.
SETTINGS_VERSION = 1
#: Epochs of a quick episode (tiny tasks; a smoke run, and the tests).
QUICK_EPOCHS = 8


def default_out() -> str:
    """The default collection folder: ``$ESPER_HOME/simic`` (ESPER_HOME defaults to ``~/.esper``)."""
    home = os.environ.get("ESPER_HOME") or os.path.join(os.path.expanduser("~"), ".esper")
    return os.path.join(home, "simic")


@dataclass(frozen=True)
class Episode:
    """One grown run that records outcomes.

    Attributes:
        family, index: the suite task.
        seed: the split's, the initialisation's and the controller's seed.
        policy: "heuristic" or "random".
        quick: a tiny task and QUICK_EPOCHS epochs (smoke runs and tests).
        epochs: the run's length in epochs (Tamiyo is told it).
        reader: "train" (the records may be fitted on) or "eval" (held-out families, judged on only).
        cache: the episode's JSON file, written when it ends.
        urza: the Urza store its outcome records go to.
    """

    family: str
    index: int
    seed: int
    policy: str
    quick: bool
    epochs: int
    reader: str
    cache: str
    urza: str


def draw_settings(family: str, index: int, seed: int, policy: str, quick: bool) -> dict[str, Any]:
    """The episode's Morphogenesis settings, drawn from a generator seeded by the episode: plateau threshold
    and patience (when to grow), lifecycle lengths, cooldown, the seed's width and the parameter budget.

    Quick episodes (2-3 steps per epoch) get a lifecycle of a few steps and grow at the first plateau that
    the cooldown allows, so that a run of QUICK_EPOCHS epochs still germinates and judges seeds.
    """
    rng = np.random.default_rng([zlib.crc32(f"{family}/{policy}".encode()), index, seed, SETTINGS_VERSION])
    width = int(rng.choice([4, 8, 16, 32, 64]))
    if quick:
        return {"train_steps": 2, "blend_steps": 2, "embargo_steps": 2, "signal_every": 1, "patience": 1,
                "threshold": 1.0, "holding_epochs": 1, "cooldown_epochs": int(rng.integers(0, 2)),
                "max_concurrent": 1, "min_gain": 0.005, "template_params": {"width": width}, "max_params": 0}
    steps = int(rng.choice([10, 20, 30, 60]))
    return {
        "train_steps": steps, "blend_steps": steps, "embargo_steps": 30, "signal_every": 5,
        "patience": int(rng.integers(1, 4)),
        # Log-uniform from 0.5% (waits for a flat plateau) to 30% (grows at almost any slow-down).
        "threshold": round(float(np.exp(rng.uniform(np.log(0.005), np.log(0.3)))), 4),
        "holding_epochs": int(rng.integers(1, 3)), "cooldown_epochs": int(rng.integers(0, 3)),
        "max_concurrent": int(rng.choice([1, 1, 2])), "min_gain": float(rng.choice([0.0, 0.005, 0.01, 0.02])),
        "template_params": {"width": width},
        # No budget, or one that binds after a few seeds.
        "max_params": int(rng.choice([0, 0, 1500, 4000, 10000])),
    }


def _key(ep: Episode, settings: dict[str, Any]) -> str:
    """The episode's key: a digest of its task, seed, policy, length, settings and the library's version.
    The commit is left out (it is recorded in the episode file): a collection resumes across commits."""
    info = build_info()
    family = FAMILIES[ep.family]
    doc = {"version": SETTINGS_VERSION, "family": {**asdict(replace(family, make=None)), "maker": family.make.__name__},
           "index": ep.index, "seed": ep.seed, "policy": ep.policy, "quick": ep.quick, "epochs": ep.epochs,
           "settings": settings, "esper": info.get("version")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(which: str, tasks: int, seeds: int, quick: bool, out_dir: str, *, policies: tuple[str, ...] = POLICIES,
         epochs: int | None = None, family_names: list[str] | None = None) -> list[Episode]:
    """Every episode of a collection, in a fixed order: per task index and seed, each family and policy.
    Every family gets its first task and seed before any gets a second, so a collection cut short has
    covered the families evenly.

    Args:
        which: "train" (reader "train": held-out families raise HeldOutError when read) or "held-out"
            (reader "eval").
        tasks, seeds: task indices and seeds per family.
        quick: tiny tasks, QUICK_EPOCHS epochs.
        out_dir: the collection folder (``episodes/`` and ``urza/`` go there).
        policies: the controllers (each of POLICIES).
        epochs: run length (default: the family's, or QUICK_EPOCHS when quick).
        family_names: a subset of the split's growth families (default all of them).

    Raises:
        ValueError: an unknown split, policy or family, a family of the other split, or counts < 1.
    """
    if which not in (TRAIN, HELD_OUT):
        raise ValueError(f"which must be {TRAIN!r} or {HELD_OUT!r}, got {which!r}")
    if tasks < 1 or seeds < 1:
        raise ValueError(f"tasks and seeds must be >= 1, got {tasks} and {seeds}")
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise ValueError(f"policies must be some of {', '.join(POLICIES)}, got {list(policies)}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    growth = [f for f in families(which) if not f.control]  # a negative control has no sweep and grows little
    if family_names is not None:
        names = {f.name for f in growth}
        unknown = [n for n in family_names if n not in names]
        if unknown:
            from ..suite.families import HeldOutError

            split = {n: FAMILIES[n].split for n in unknown if n in FAMILIES}
            if which == TRAIN and any(s == HELD_OUT for s in split.values()):
                raise HeldOutError(f"families {unknown} are held out: episodes for fitting read only training "
                                   f"families ({', '.join(sorted(names))})")
            raise ValueError(f"families {unknown} are not growth families of the {which!r} split "
                             f"({', '.join(sorted(names))})")
        growth = [f for f in growth if f.name in family_names]
    reader = "train" if which == TRAIN else "eval"
    urza = os.path.join(out_dir, "urza")
    out = []
    for index in range(tasks):
        for seed in range(seeds):
            for family in growth:
                for policy in policies:
                    n = epochs if epochs is not None else (QUICK_EPOCHS if quick else family.epochs)
                    ep = Episode(family.name, index, seed, policy, quick, n, reader, "", urza)
                    key = _key(ep, draw_settings(family.name, index, seed, policy, quick))
                    path = os.path.join(out_dir, "episodes", family.name, str(index), str(seed), f"{policy}-{key}.json")
                    out.append(replace(ep, cache=path))
    return out


def run_episode(ep: Episode, device: str = "cpu") -> dict[str, Any]:
    """Make one episode's grown run (a worker's job, on one thread) and write its episode file; returns it."""
    with one_thread():
        settings = draw_settings(ep.family, ep.index, ep.seed, ep.policy, ep.quick)
        setup = setup_for(FAMILIES[ep.family], ep.index, ep.quick, ep.reader)  # the suite's guard is in load
        morph = MorphConfig(**{**asdict(MorphConfig()), **settings, "urza": ep.urza, "record_outcomes": True})
        setup = replace(setup, epochs=ep.epochs, morph=morph)
        task = setup_task(setup, ep.seed, torch.device(device))
        run = grown_run(task, setup, ep.seed, policy=ep.policy)
        doc = {"version": SETTINGS_VERSION, "family": ep.family, "split": FAMILIES[ep.family].split,
               "index": ep.index, "seed": ep.seed, "policy": ep.policy, "quick": ep.quick, "epochs": ep.epochs,
               "reader": ep.reader, "urza": ep.urza, "settings": settings,
               "run_id": run.run_id, "germinations": run.germinations,
               "fossilizations": run.fossilizations, "prunes": run.prunes, "test_metric": run.test_acc,
               "params": run.params, "flops": run.flops, "wall_s": run.wall, "esper": build_info().get("commit")}
        os.makedirs(os.path.dirname(ep.cache), exist_ok=True)
        tmp = f"{ep.cache}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=_jsonable)
        os.replace(tmp, ep.cache)  # written last: an episode is finished when its file exists
        return doc


def _jsonable(o: Any) -> Any:
    return None if isinstance(o, float) and o != o else str(o)


def _read(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def episodes(planned: list[Episode]) -> list[dict[str, Any]]:
    """The episode files of the planned episodes that finished, in plan order."""
    return [_read(ep.cache) for ep in planned if os.path.exists(ep.cache)]


def collect(planned: list[Episode], *, workers: int | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the planned episodes that have not finished, ``workers`` at a time (default one per core);
    returns every planned episode's file, in plan order.

    Ctrl-C or a failing episode stops the collection (the workers are terminated; finished episodes stay
    written) and is raised here.
    """
    from ..suite.run import _progress

    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = default_workers(device) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pending = [ep for ep in planned if not os.path.exists(ep.cache)]
    bar = _progress(len(planned), quiet)
    bar.update(len(planned) - len(pending))

    def done(i: int, doc: dict[str, Any]) -> None:
        ep = pending[i]
        bar.set_description(f"{ep.family}/{ep.index} seed {ep.seed} {ep.policy}: {doc['germinations']} germinations")
        bar.update()

    try:
        run_pool(partial(run_episode, device=device), pending, workers, done)
    finally:
        bar.close()
    return episodes(planned)


def summary(docs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Counts of a collection: episodes, germinations and their ends, per family and overall."""
    per: dict[str, dict[str, int]] = {}
    for d in docs:
        s = per.setdefault(d["family"], {"episodes": 0, "germinations": 0, "fossilizations": 0, "prunes": 0})
        s["episodes"] += 1
        for k in ("germinations", "fossilizations", "prunes"):
            s[k] += int(d[k])
    total = {k: sum(s[k] for s in per.values()) for k in ("episodes", "germinations", "fossilizations", "prunes")}
    return {"families": per, "total": total, "wall_s": round(wall_s, 1)}


def main(*, tasks: int = 1, seeds: int = 3, quick: bool = False, out_dir: str | None = None,
         store: str | None = None, workers: int | None = None, policies: tuple[str, ...] = POLICIES,
         epochs: int | None = None, family_names: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """`esper simic collect`: run the episodes on training families and write ``<out>/collect.json``.

    Args:
        tasks, seeds: per family.
        quick: tiny tasks, QUICK_EPOCHS epochs.
        out_dir: the collection folder (default :func:`default_out`).
        store: the Urza store of the outcome records (default ``<out>/urza``).
        workers: processes (default one per core).
        policies: controllers.
        epochs: run length (default the family's).
        family_names: a subset of the training families.
        quiet: no progress bar or text.

    Returns:
        The summary written to ``collect.json``.
    """
    out_dir = out_dir or default_out()
    planned = plan(TRAIN, tasks, seeds, quick, out_dir, policies=policies, epochs=epochs, family_names=family_names)
    if store:
        planned = [replace(ep, urza=store) for ep in planned]
    if not quiet:
        done = sum(os.path.exists(ep.cache) for ep in planned)
        print(f"esper simic collect: {len(planned)} episodes ({done} already finished) on "
              f"{', '.join(sorted({ep.family for ep in planned}))}; policies {', '.join(policies)}; "
              f"outcome records to {planned[0].urza if planned else '-'}", flush=True)
    start = time.perf_counter()
    docs = collect(planned, workers=workers, quiet=quiet)
    out = summary(docs, time.perf_counter() - start)
    out.update(command={"tasks": tasks, "seeds": seeds, "quick": quick, "policies": list(policies),
                        "epochs": epochs, "families": family_names}, urza=planned[0].urza if planned else None,
               runs=[d["run_id"] for d in docs])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "collect.json"), "w") as f:
        json.dump(out, f, indent=1)
    if not quiet:
        t = out["total"]
        print(f"{t['episodes']} episodes, {t['germinations']} germinations ({t['fossilizations']} fossilized, "
              f"{t['prunes']} pruned) in {out['wall_s']:.0f}s; wrote {os.path.join(out_dir, 'collect.json')}")
    return out
