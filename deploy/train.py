"""The training job the container runs under torchrun: docs/distributed.md's loop, complete, on a
synthetic classification task (so it runs anywhere), with the Morphogenesis defaults.

One process per rank: ``torchrun --nproc-per-node 2 --max-restarts 1 train.py --epochs 12``. Every
rank's Go session agrees on each decision (rank 0 decides); rank 0 records outcomes and kernels to
Urza (``ESPER_URZA_URL``: an S3 store shared by the job's machines, docs/urza.md) and every rank
publishes its events to NATS (``ESPER_NATS_URL``). Checkpoints go to ``--checkpoint`` (rank 0
writes, atomically; every rank loads it after a restart).
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import esper

FEATURES, CLASSES, BATCH, STEPS = 16, 4, 32, 8


def parser() -> argparse.ArgumentParser:
    """The command line (tests_py/test_deploy.py checks the Kubernetes job's arguments with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--checkpoint", default="checkpoints/ckpt.pt", help="rank 0 writes it after every epoch")
    ap.add_argument("--rank-timeout", type=float, default=60.0, help="seconds to wait for the other ranks")
    return ap


def main() -> None:
    args = parser().parse_args()

    # The process group's keys under a prefix of this attempt, so that a torchrun restart never
    # reads the dead attempt's addresses (docs/distributed.md).
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    timeout = timedelta(seconds=args.rank_timeout)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=timeout)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt_{restarts}", store), rank=rank,
                            world_size=world, timeout=timeout)

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(FEATURES, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(32, CLASSES))
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=2)
    net = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    # A fixed task: a random teacher labels Gaussian inputs; each rank takes its own rows.
    g = torch.Generator().manual_seed(1234)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    x = torch.randn(STEPS * BATCH * world, FEATURES, generator=g)
    y = (x @ teacher).argmax(1)
    vx = torch.randn(512, FEATURES, generator=g)
    vy = (vx @ teacher).argmax(1)
    mine = slice(rank * STEPS * BATCH, (rank + 1) * STEPS * BATCH)
    loader = list(zip(x[mine].split(BATCH), y[mine].split(BATCH)))

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            out = m(vx)
        return {"loss": float(loss_fn(out, vy)), "metric": float((out.argmax(1) == vy).float().mean())}

    # A short job (8 steps an epoch): a seed's lifecycle spans a few epochs, and a layer may grow
    # from the second epoch, after one epoch without progress.
    morph = esper.Morphogenesis(net, optimizer, evaluate=evaluate, epochs=args.epochs, rank_timeout=args.rank_timeout,
                                train_steps=STEPS, blend_steps=STEPS // 2, embargo_steps=STEPS, signal_every=2,
                                patience=1, threshold=0.5, cooldown_epochs=1, holding_epochs=1)

    start = 0
    if os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint, weights_only=True)
        morph.load_state_dict(ckpt["morph"])  # first: it rebuilds the seeds
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["epoch"]) + 1

    for epoch in range(start, args.epochs):
        for xb, yb in loader:
            loss = loss_fn(net(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            morph.step(loss)
        morph.end_epoch()  # rank 0 decides; every rank applies the same
        state = {"morph": morph.state_dict(), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "epoch": epoch}
        if rank == 0:
            os.makedirs(os.path.dirname(args.checkpoint) or ".", exist_ok=True)
            torch.save(state, args.checkpoint + ".tmp")
            os.replace(args.checkpoint + ".tmp", args.checkpoint)
            print(f"epoch {epoch}: {len(morph.seeds())} seeds, {morph.seed_params()} seed parameters", flush=True)
        dist.barrier()
    morph.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
