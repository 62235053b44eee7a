"""Why a grown run stopped growing: one grown run per family (a suite task and seed, the suite's protocol),
with its moves and its wait decisions counted by reason, read from the run's own log (Go's reasons).

    python -m esper.suite.why classification,friedman [--task 0] [--seed 0] [--set NAME=VALUE ...] [--quick]

Training families only (reader "train"); docs/suite.md, "Why growth stops early", quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

import torch

from ..demo.experiments import grown_run, setup_task
from ..oona import iter_events
from .families import FAMILIES
from .run import settings_of, setup_for

__all__ = ["why", "main"]


def _reason_kind(reason: str) -> str:
    """A wait's reason cut to its kind: the first clause, and what refused the move after "; but "."""
    head = reason.split(":")[0].split(";")[0]
    parts = reason.split("; but ")
    if len(parts) > 1:
        head += " / but " + parts[-1].split(":")[0].split(",")[0].split("(")[0].strip()
    return head


def why(family: str, task: int = 0, seed: int = 0, overrides: dict[str, Any] | None = None,
        quick: bool = False) -> dict[str, Any]:
    """One grown run of a training family's task: its result, its moves (epoch, op, layer, measured
    contribution when the reason gives one) and its waits counted by reason."""
    setup = setup_for(FAMILIES[family], task, quick, "train", settings_of(overrides))
    run = grown_run(setup_task(setup, seed, torch.device("cpu")), setup, seed)
    moves: list[dict[str, Any]] = []
    waits: collections.Counter[str] = collections.Counter()
    for event in iter_events(run.run_id):
        if event["kind"] != "decision":
            continue
        d = event["data"]
        if d["op"] == "wait":
            waits[_reason_kind(d["reason"])] += 1
        else:
            move = {"epoch": event["epoch"], "op": d["op"], "layer": d.get("layer")}
            if "contribution " in d["reason"]:
                move["contribution"] = float(d["reason"].split("contribution ")[1].split()[0])
            moves.append(move)
    return {"family": family, "task": task, "seed": seed, "epochs": setup.epochs, "run": run.run_id,
            "metric": run.test_acc, "params": run.params, "germinations": run.germinations,
            "moves": moves, "waits": dict(waits)}


def main(argv: list[str] | None = None) -> int:
    """The command line; prints one JSON line per family."""
    p = argparse.ArgumentParser(prog="python -m esper.suite.why", description=__doc__.splitlines()[0])
    p.add_argument("families", help="comma-separated training families")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a MorphConfig setting (VALUE read as JSON), as esper suite --set")
    p.add_argument("--quick", action="store_true", help="tiny tasks, a few epochs (for tests)")
    args = p.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    torch.set_num_threads(1)
    for family in args.families.split(","):
        print(json.dumps(why(family, args.task, args.seed, overrides, args.quick)))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
