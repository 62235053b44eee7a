"""One rank of the README's loop under DDP (gloo, CPU) following a model published to Urza: the
learned policy's value model (``--kind value``: ``value_model="urza:value"``) or Karn's predictor
(``--kind predictor``: the heuristic policy with ``karn_search=True, karn_predictor="urza:pred"``).
Run by tests_py/test_rollout.py as separate processes, never imported by the tests. Rank 0
publishes ``--v2`` after epoch 1; the validation loss is injected through ``evaluate`` (``--val``,
one per epoch, the same on every rank). Every rank writes the version its Go session holds after
each end_epoch, its rollout log entries, its decisions, its state digest and the run id to
``--out.rank<R>.json``.

Usage: python rollout_worker.py --out PATH --v2 MODEL_DIR --val 1,1,1,1.2,1.2 [--kind predictor]
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
    ap.add_argument("--kind", choices=["value", "predictor"], default="value")
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
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1 if args.kind == "value" else 2)
    net = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(rank)
    xs, ys = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    epoch = [0]

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"loss": vals[epoch[0]]}

    if args.kind == "value":
        name, artifact, publish = "value", "value_model", Urza.publish_model
        follow: dict[str, object] = {"policy": "learned", "value_model": "urza:value", "epochs": len(vals)}
    else:
        name, artifact, publish = "pred", "karn_predictor", Urza.publish_predictor
        follow = {"policy": "heuristic", "karn_search": True, "karn_predictor": "urza:pred", "patience": 1,
                  "threshold": 0.5, "max_concurrent": 4}
    morph = esper.Morphogenesis(net, optimizer, evaluate=evaluate, **follow,
                                rollout_margin=0.05, rollout_epochs=2, template="residual_mlp",
                                template_params={"width": 8}, max_params=5_000, train_steps=4,
                                blend_steps=4, signal_every=2, cooldown_epochs=1, rank_timeout=60.0)
    if args.v2_at_start:
        if rank == 1:  # rank 0's Go session has loaded v1 once v1's folder is in the model cache
            (v1,) = Urza().models(name)
            cached = os.path.join(os.environ["ESPER_HOME"], "models", name, v1["id"])
            deadline = time.monotonic() + 60
            while not os.path.isdir(cached) and time.monotonic() < deadline:
                time.sleep(0.05)
            publish(Urza(), name, args.v2)
        _ = morph.session  # opened here on both ranks: rank 0 with v1, rank 1 with v2
    active, hashes, decisions = [], [], []
    for e in range(len(vals)):
        epoch[0] = e
        for i in range(0, 32, 8):
            loss = nn.functional.cross_entropy(net(xs[i:i + 8]), ys[i:i + 8])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            morph.step(loss)
        decisions.append([{"op": d["op"], "reason": d["reason"]} for d in morph.end_epoch()["decisions"]])
        (state,) = [r for r in json.loads(morph.session.snapshot())["rollouts"] if r["kind"] == artifact]
        active.append(state["active"])
        hashes.append(morph.session.state_hash()["sha256"])
        if e == 1 and rank == 0 and not args.v2_at_start:  # mid-run, on one rank only: rank 0 decides for every rank
            publish(Urza(), name, args.v2)
        dist.barrier()
    result = {"active": active, "hashes": hashes, "rollout": [x for x in morph.log if x["kind"] == "rollout"],
              "counters": morph.stats()["counters"], "run": morph.run_id,
              "decisions": decisions}
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump(result, f)
    morph.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
