"""The ``distributed`` bench section: Esper under 2-rank DDP (gloo, CPU), each rank a process.

Rows (CPU, wall time; the ranks are separate processes that wait on each other, so CPU time of
one process would not show the cost):

- a training step under 2-rank DDP with Esper dormant (wrapped layers, no seed) and active (one
  seed per layer, in TRAINING) against the same model under plain DDP, interleaved in rounds in
  the same processes;
- decision agreement: the time from rank 0's Go session deciding (a germination or prune, or an
  epoch's decisions) to every rank having applied it (``Morphogenesis.stats()["distributed"]
  ["agreement_s"]``, measured by rank 0 after a barrier that every rank enters once it applied);
- throughput (samples/s) with 2 ranks against 1 rank at the same per-rank batch, of plain DDP and
  of Esper dormant under DDP (the 1-rank run times both too).

Run by itself: ``python -m esper.bench.run --sections distributed``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .rows import Row, samples_row, value_at_most

__all__ = ["distributed_rows"]

WIDTH, DEPTH, BATCH = 128, 3, 64


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()] if i < DEPTH - 1 else [nn.Linear(WIDTH, 10)]
    return nn.Sequential(*layers)


def _worker(rounds: int, inner: int, decisions: int, out: str) -> None:
    """One rank: time plain DDP, Esper dormant and Esper active, interleaved; then decisions."""
    import torch.distributed as dist

    import esper

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(BATCH, WIDTH, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    targets = [name for name, m in _model().named_modules() if isinstance(m, nn.Linear)]

    def setup(esper_mode: str) -> tuple[Any, Any, Any]:
        model = _model()
        morph = None
        if esper_mode != "plain":
            esper.wrap(model, target_modules=targets, seeds_per_layer=1)
        net = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        if esper_mode != "plain":
            morph = esper.Morphogenesis(net, opt, policy="manual", train_steps=10**9, record_outcomes=False,
                                        template_params={"width": 16}, max_concurrent=len(targets))
            if esper_mode == "active":
                for name in targets:
                    morph.germinate(name, 0)
        return net, opt, morph

    variants = {name: setup(name) for name in (("plain", "dormant", "active") if world > 1 else ("plain", "dormant"))}

    def step(net: Any, opt: Any, morph: Any) -> None:
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if morph is not None:
            morph.step(loss)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for v in variants.values():
        for _ in range(10):
            step(*v)
    for r in range(rounds):
        order = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
        for name in order:
            v = variants[name]
            dist.barrier()
            start = time.perf_counter()
            for _ in range(inner):
                step(*v)
            dist.barrier()
            times[name].append((time.perf_counter() - start) / inner)
    for _, _, m in variants.values():
        if m is not None:
            m.close()
    agreement: list[float] = []
    if world > 1:  # a fresh model with a slot per decision (a pruned slot is embargoed for a while)
        model = esper.wrap(_model(), target_modules=targets, seeds_per_layer=decisions)
        net = nn.parallel.DistributedDataParallel(model)
        morph = esper.Morphogenesis(net, torch.optim.SGD(net.parameters(), lr=0.01), policy="manual",
                                    record_outcomes=False, template_params={"width": 16})
        for k in range(decisions):
            for op in ("germinate", "advance", "prune", "end_epoch"):
                if op == "end_epoch":
                    morph.end_epoch(val_loss=1.0)
                else:
                    getattr(morph, op)(targets[0], k)
                agreement.append(morph.stats()["distributed"]["agreement_s"])
        morph.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "times": times, "agreement": agreement}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, rounds: int, inner: int, decisions: int) -> dict[str, Any]:
    """Runs ``world`` ranks of the worker, returns rank 0's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                   OMP_NUM_THREADS="1", ESPER_HOME=os.path.join(tmp, "home"))
        procs = [subprocess.Popen([sys.executable, "-m", "esper.bench.ranks", "--worker", "--rounds", str(rounds),
                                   "--inner", str(inner), "--decisions", str(decisions), "--out", out],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(world)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"bench ranks failed: {[p.returncode for p in procs]}\n" + "\n".join(logs)[-3000:])
        return json.loads(Path(out).read_text())


def distributed_rows(rounds: int, quick: bool) -> list[Row]:
    """The rows of the section (see the module's docs)."""
    inner, decisions = (10, 3) if quick else (40, 10)
    two = _launch(2, rounds, inner, decisions)
    one = _launch(1, rounds, inner, 0)
    t, base = two["times"], statistics.median(two["times"]["plain"])
    note = (f"{DEPTH}x Linear({WIDTH}) MLP, batch {BATCH} per rank, SGD, gloo on loopback, wall time per step "
            "(both ranks on this machine's cores)")
    rows = []
    for name, what in (("dormant", "Esper dormant"), ("active", "Esper active (1 seed per layer, TRAINING)")):
        per_round = [e / p for e, p in zip(t[name], t["plain"])]
        row = samples_row("distributed", f"2-rank DDP train step, {what}", "cpu", [v * 1e3 for v in t[name]], "ms",
                          target=None, source="python", note=note, baseline=base * 1e3,
                          baseline_name="the same model under plain 2-rank DDP, interleaved")
        row.ratio, row.spread, row.spread_of = statistics.median(per_round), (min(per_round), max(per_round)), "ratio"
        rows.append(row)
    agreement = [a * 1e3 for a in two["agreement"]]
    rows.append(samples_row(
        "distributed", "decision agreement: rank 0 decides -> every rank applied (2 ranks)", "cpu", agreement, "ms",
        target=value_at_most(5000.0, "< 5 s", strict=True), source="python",
        note=f"{len(agreement)} decisions (germinate, advance, prune, end_epoch): Go decides on rank 0, its state and "
             "events are broadcast, every rank applies them, a barrier; timed on rank 0"))
    for name, what in (("plain", "plain DDP"), ("dormant", "Esper dormant under DDP")):
        thr2 = [2 * BATCH / s for s in t[name]]
        thr1 = statistics.median(BATCH / s for s in one["times"][name])
        rows.append(samples_row(
            "distributed", f"{what} throughput, 2 ranks (samples/s)", "cpu", thr2, "samples/s", target=None,
            source="python", baseline=thr1, baseline_name="1 rank, same per-rank batch",
            note=note + "; informative: 2 ranks share 2 cores with everything else on the machine"))
    return rows


def _cli() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--decisions", type=int, default=3)
    p.add_argument("--out", default="")
    a = p.parse_args()
    if a.worker:
        _worker(a.rounds, a.inner, a.decisions, a.out)
    else:
        for row in distributed_rows(a.rounds, quick=True):
            print(json.dumps(row.to_dict()))


if __name__ == "__main__":
    _cli()
