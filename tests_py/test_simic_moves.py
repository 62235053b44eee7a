"""The layer graph and the legal moves from Go (issue 16 item 1), driven from Python in the real wrapped
loop: an external policy reads ``Morphogenesis.graph()`` and proposes moves with ``propose``; Go carries
them out through its own operations, refuses the rest (not executed, counted). Real PyTorch, real library."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import Morphogenesis


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(**settings: object) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)),
                       target_modules=["0", "2", "4"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, opt, Morphogenesis(model, opt, policy="manual", signal_every=2, train_steps=4, blend_steps=4,
                                     **settings)


def legal_moves(g: dict) -> list[dict]:
    """Every move the masks allow, as proposals."""
    moves = [{"op": "wait"}]
    for t in range(g["layers"] * g["slots"]):
        layer, slot = divmod(t, g["slots"])
        for op in ("prune", "fossilize", "advance"):
            if g["masks"]["target"][op][t]:
                moves.append({"op": op, "layer": layer, "slot": slot})
        if g["masks"]["target"]["germinate"][t]:
            for k, name in enumerate(g["templates"]):
                for z in range(len(g["sizes"])):
                    if g["masks"]["size"][layer][k][z]:
                        moves.append({"op": "germinate", "layer": layer, "slot": slot, "template": name, "size": z})
    return moves


def test_graph_describes_the_wrapped_model() -> None:
    _, _, morph = make()
    with morph:
        g = morph.graph()
        assert [n["name"] for n in g["nodes"]] == ["0", "2", "4"]
        assert [(e["from"], e["to"], e["kind"]) for e in g["edges"]] == [(0, 1, "flow"), (1, 2, "flow")]
        assert g["masks"]["op"] == [True, True, False, False, False]  # wait, germinate
        assert g["global"]["max_concurrent"] == 1 and g["global"]["params_used"] == 0
        morph.propose("germinate", 1, 0, template="residual_mlp", size=1)
        g = morph.graph()
        seeds = [n for n in g["nodes"] if n["kind"] == "seed"]
        assert [(s["layer"], s["slot"], s["state"], s["template"]) for s in seeds] == [
            (1, 0, "GERMINATED", "residual_mlp")]
        # The seed Python built has Go's parameter count: Go sizes it, Python mirrors it.
        assert morph.seed_params() == seeds[0]["params"] > 0
        assert g["masks"]["op"][1] is False  # max_concurrent 1: one seed in flight


def test_random_masked_policy_drives_a_training_run() -> None:
    """A policy that samples only masked-legal moves never has one refused; proposals outside the masks
    (the negative control) are all refused, none executed, and each is counted."""
    model, opt, morph = make(max_concurrent=2)
    rng = np.random.default_rng(0)
    gx = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 8, generator=gx), torch.randint(0, 3, (96,), generator=gx)
    legal = illegal = applied_illegal = 0
    with morph:
        for _epoch in range(12):
            for _ in range(4):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                morph.step(loss)
            with torch.no_grad():
                val = float(F.cross_entropy(model(x), y))
            morph.end_epoch(val_loss=val)
            g = morph.graph()
            moves = legal_moves(g)
            move = moves[int(rng.integers(len(moves)))]
            r = morph.propose(**move)
            assert r["applied"], (move, r["refused"])
            legal += 1
            # Negative control: moves outside the masks.
            for bad in ({"op": "fossilize", "layer": 0, "slot": 0}, {"op": "prune", "layer": 2, "slot": 1},
                        {"op": "germinate", "layer": 0, "slot": 0, "template": "conv3x3", "size": 2},
                        {"op": "advance", "layer": 5, "slot": 0}):
                t = bad["layer"] * g["slots"] + bad["slot"]
                in_mask = (bad["layer"] < g["layers"] and g["masks"]["target"][bad["op"]][t]
                           and (bad["op"] != "germinate" or g["masks"]["size"][bad["layer"]][g["templates"].index(
                               bad["template"])][bad["size"]]))
                if in_mask:
                    continue
                r = morph.propose(**bad)
                illegal += 1
                applied_illegal += r["applied"]
                assert r["refused"] and r["events"] == []
        counters = morph.stats()["counters"]
        assert counters["proposals"] == legal + illegal
        assert counters["refused"] == illegal > 20
        assert applied_illegal == 0
        # The moves changed the model: seeds were grown, and Python's seeds are Go's.
        assert counters["germinations"] >= 1
        assert sum(1 for s in morph.seeds() if s["state"] not in ("DORMANT",)) == sum(
            1 for layer in morph.layers for slot in range(morph.slots) if layer.state(slot).name != "DORMANT")
        assert np.isfinite(val)
