"""One rank of the README's loop under DDP (gloo, CPU) with the learned policy's value model published
to Urza (``value_model="urza:value"``): run by tests_py/test_rollout.py as separate processes, never
imported by the tests. Rank 0 publishes ``--v2`` after epoch 1; the validation loss is injected
through ``evaluate`` (``--val``, one per epoch, the same on every rank). Every rank writes the
version its Go session holds after each end_epoch, its rollout log entries and its state digest to
``--out.rank<R>.json``.

Usage: python rollout_worker.py --out PATH --v2 MODEL_DIR --val 1,1,1,1.2,1.2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import esper
from esper.urza import Urza


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--v2", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--v2-at-start", action="store_true",
                    help="rank 1 publishes --v2 after rank 0's session opened and before its own opens")
    args = ap.parse_args()
    vals = [float(v) for v in args.val.split(",")]
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=rank == 0,
                          timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(8, 16))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(16, 3))
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    net = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(rank)
    xs, ys = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    epoch = [0]

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"loss": vals[epoch[0]]}

    morph = esper.Morphogenesis(net, optimizer, evaluate=evaluate, policy="learned", value_model="urza:value",
                                rollout_margin=0.05, rollout_epochs=2, template="residual_mlp",
                                template_params={"width": 8}, max_params=5_000, epochs=len(vals), train_steps=4,
                                blend_steps=4, signal_every=2, cooldown_epochs=1, rank_timeout=60.0)
    if args.v2_at_start:
        if rank == 1:  # rank 0's Go session has loaded v1 once v1's folder is in the model cache
            (v1,) = Urza().models("value")
            cached = os.path.join(os.environ["ESPER_HOME"], "models", "value", v1["id"])
            deadline = time.monotonic() + 60
            while not os.path.isdir(cached) and time.monotonic() < deadline:
                time.sleep(0.05)
            Urza().publish_model("value", args.v2)
        _ = morph.session  # opened here on both ranks: rank 0 with v1, rank 1 with v2
    active, hashes = [], []
    for e in range(len(vals)):
        epoch[0] = e
        for i in range(0, 32, 8):
            loss = nn.functional.cross_entropy(net(xs[i:i + 8]), ys[i:i + 8])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            morph.step(loss)
        morph.end_epoch()
        active.append(json.loads(morph.session.snapshot())["rollout"]["active"])
        hashes.append(morph.session.state_hash()["sha256"])
        if e == 1 and rank == 0 and not args.v2_at_start:  # mid-run, on one rank only: rank 0 decides for every rank
            Urza().publish_model("value", args.v2)
        dist.barrier()
    result = {"active": active, "hashes": hashes, "rollout": [x for x in morph.log if x["kind"] == "rollout"],
              "counters": morph.stats()["counters"]}
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump(result, f)
    morph.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
