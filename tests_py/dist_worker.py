"""One rank of the README's training loop under torch.distributed (DDP or FSDP2, gloo, CPU), or the
same loop in one process on the union batch: run by tests_py/test_distributed.py as separate
processes (plainly, or under torchrun), never imported by the tests.

The growth is scripted through the public API (policy="manual"): two germinations, a fossilization
and a prune at fixed epochs; Go's lifecycle moves the seeds through TRAINING, BLENDING and HOLDING
on its own. Every rank writes its final weights (full tensors), Go's seeds and digest, and the
distributed stats to ``--out`` (``.rank<R>.pt``).

Usage: python dist_worker.py --mode ddp|fsdp|single --out PATH [--unsynced] [--epochs N]
       [--checkpoint PATH] [--die-at EPOCH] [--hang-at EPOCH] [--rank-timeout S] [--desync-at EPOCH]
       [--stop-after EPOCH] [--nan-at EPOCH] [--policy manual|heuristic]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import esper
import esper.distributed

STEPS_PER_EPOCH = 4
BATCH = 8  # per rank; the single-process run takes both ranks' rows at once
WORLD = 2
FEATURES, CLASSES = 6, 3
# (epoch, op, layer, slot): applied at the start of the epoch, before its steps.
SCRIPT = [
    (0, "germinate", "fc1", 0),
    (1, "germinate", "fc2", 0),
    (2, "fossilize", "fc1", 0),
    (3, "prune", "fc2", 0),
    (3, "germinate", "fc2", 1),
]


def data(epochs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Union batches (epochs x steps x WORLD*BATCH rows) and a validation set, from a fixed seed."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(epochs, STEPS_PER_EPOCH, WORLD * BATCH, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (epochs, STEPS_PER_EPOCH, WORLD * BATCH), generator=g)
    vx = torch.randn(WORLD * 16, FEATURES, generator=g, dtype=torch.float64)
    vy = torch.randint(0, CLASSES, (WORLD * 16,), generator=g)
    return x, y, vx, vy


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain copy of a tensor (an FSDP2 shard gathered whole)."""
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["ddp", "fsdp", "single"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--unsynced", action="store_true")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--die-at", type=int, default=-1)
    ap.add_argument("--hang-at", type=int, default=-1)
    ap.add_argument("--desync-at", type=int, default=-1)
    ap.add_argument("--stop-after", type=int, default=-1)
    ap.add_argument("--nan-at", type=int, default=-1)
    ap.add_argument("--rank-timeout", type=float, default=60.0)
    ap.add_argument("--policy", choices=["manual", "heuristic"], default="manual")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    esper.distributed._TEST_ONLY_UNSYNCED = args.unsynced

    rank, world = 0, 1
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if args.mode != "single":
        # The process group's keys under a prefix of this attempt: after a torchrun restart, ranks
        # otherwise read the dead attempt's addresses from the store and fail to connect (seen here
        # in about half the restarts, with both static and c10d rendezvous).
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=rank == 0 and not agent, timeout=timedelta(seconds=args.rank_timeout))
        dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt_{restarts}", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=args.rank_timeout))

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(FEATURES, 12))
    model.add_module("act", nn.Tanh())
    model.add_module("fc2", nn.Linear(12, CLASSES))
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=2)
    if args.mode == "ddp":
        net: nn.Module = nn.parallel.DistributedDataParallel(model)
    elif args.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        fully_shard(model)
        net = model
    else:
        net = model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.5, foreach=False)
    x, y, vx, vy = data(args.epochs)
    rows = slice(None) if args.mode == "single" else slice(rank * BATCH, (rank + 1) * BATCH)
    vrows = slice(None) if args.mode == "single" else slice(rank * 16, (rank + 1) * 16)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            out = m(vx[vrows])
            return {"loss": float(nn.functional.cross_entropy(out, vy[vrows])),
                    "metric": float((out.argmax(1) == vy[vrows]).double().mean())}

    # heuristic: Tamiyo grows at every epoch's end (every epoch is a plateau) and prunes every held
    # seed (none lowers the validation loss by 100%): its decisions, not a script, drive the run.
    tamiyo = {"patience": 1, "threshold": 1.0, "cooldown_epochs": 0, "min_gain": 1.0}
    morph = esper.Morphogenesis(net, optimizer, evaluate=evaluate, policy=args.policy, train_steps=3, blend_steps=3,
                                signal_every=2, max_concurrent=2, template_params={"width": 4},
                                rank_timeout=args.rank_timeout, **(tamiyo if args.policy == "heuristic" else {}))
    if args.mode == "fsdp":  # whole tensors for rank 0's file: torch.distributed.checkpoint's helpers
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        def model_and_optimizer() -> tuple[dict, dict]:
            return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

        def load_model_and_optimizer(msd: dict, osd: dict) -> None:
            set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                           options=StateDictOptions(full_state_dict=True))
    else:
        def model_and_optimizer() -> tuple[dict, dict]:
            return model.state_dict(), optimizer.state_dict()

        def load_model_and_optimizer(msd: dict, osd: dict) -> None:
            model.load_state_dict(msd)
            optimizer.load_state_dict(osd)

    start = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint, weights_only=True)
        morph.load_state_dict(ckpt["morph"])  # first: it rebuilds the seeds
        load_model_and_optimizer(ckpt["model"], ckpt["optimizer"])
        start = int(ckpt["epoch"]) + 1
        print(f"rank {rank}: resumed after epoch {ckpt['epoch']} (restart {restarts})", flush=True)

    for epoch in range(start, args.epochs):
        for at, op, layer, slot in SCRIPT:
            if at == epoch and args.policy == "manual":
                getattr(morph, op)(layer, slot)
        for step in range(STEPS_PER_EPOCH):
            out = net(x[epoch, step, rows])
            loss = nn.functional.cross_entropy(out, y[epoch, step, rows])
            if epoch == args.nan_at and step < 2:  # every rank: the governor rolls back at the next flush
                loss = loss * float("nan")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            morph.step(loss)
        if rank == 1 and restarts == 0 and epoch == args.die_at:
            print(f"rank 1: killing myself at the end of epoch {epoch}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 1 and epoch == args.hang_at:
            print(f"rank 1: hanging at the end of epoch {epoch}", flush=True)
            time.sleep(3600)
        if rank == 1 and epoch == args.desync_at:
            morph.session.step(1)  # behind Esper's back: rank 1's Go session is one step ahead
        morph.end_epoch()
        if args.checkpoint:
            msd, osd = model_and_optimizer()  # every rank: under FSDP2 these gather the shards
            state = {"morph": morph.state_dict(), "model": msd, "optimizer": osd, "epoch": epoch}
            if rank == 0:  # rank 0 writes, atomically; every rank loads it on restart
                torch.save(state, args.checkpoint + ".tmp")
                os.replace(args.checkpoint + ".tmp", args.checkpoint)
            if world > 1:
                dist.barrier()
        if epoch == args.stop_after:
            print(f"rank {rank}: stopping after epoch {epoch}", flush=True)
            break

    stats = morph.stats()
    result = {
        "weights": {k: full(v) for k, v in model.state_dict().items()},
        "seeds": [{k: s.get(k) for k in ("layer", "slot", "state", "alpha", "blueprint_id")} for s in morph.seeds()],
        "hash": morph.session.state_hash()["sha256"],
        "counters": stats["counters"],
        "distributed": stats.get("distributed"),
        "start": start,
    }
    torch.save(result, f"{args.out}.rank{rank}.pt")
    print(json.dumps({"rank": rank, "counters": stats["counters"], "distributed": stats.get("distributed")}),
          flush=True)
    morph.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
