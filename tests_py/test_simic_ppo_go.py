"""The graph policy in Go (issue 16 item 3): Go's encoding is what the trainer reads, Go's native forward and
ONNX Runtime agree with PyTorch on real graphs from a real session, and ``policy="ppo"`` drives the user's
``esper.wrap`` + ``Morphogenesis`` loop through the gates and the governor. Real PyTorch, the real library."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import Morphogenesis
from esper.errors import InvalidArgumentError
from esper.simic.export import dense, load_model, save_model
from esper.simic.graph import encode, feature_names, forward
from esper.simic.policy import GraphPolicy, legal


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)),
                      target_modules=["0", "2", "4"], seeds_per_layer=2)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gx = torch.Generator().manual_seed(1)
    return torch.randn(96, 8, generator=gx), torch.randint(0, 3, (96,), generator=gx)


def real_graphs() -> list[dict[str, Any]]:
    """Graphs of a real wrapped training run that a random masked policy drives: seeds in several states,
    signals measured, validation losses known."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=2, train_steps=4, blend_steps=4, max_concurrent=2,
                          epochs=8)
    rng = np.random.default_rng(0)
    x, y = _data()
    graphs = [morph.graph()]
    with morph:
        for epoch in range(8):
            for b in range(4):
                xb, yb = x[b * 24:(b + 1) * 24], y[b * 24:(b + 1) * 24]
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                morph.step(loss)
            with torch.no_grad():
                val = float(F.cross_entropy(model(x), y))
            morph.end_epoch(val_loss=val)
            g = morph.graph()
            graphs.append(g)
            moves = [m for m in _legal_moves(g) if m["op"] != "wait"]
            if moves:
                morph.propose(**moves[int(rng.integers(len(moves)))])
                graphs.append(morph.graph())
    return graphs


def _legal_moves(g: dict[str, Any]) -> list[dict[str, Any]]:
    moves: list[dict[str, Any]] = [{"op": "wait"}]
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


@pytest.fixture(scope="module")
def graphs() -> list[dict[str, Any]]:
    return real_graphs()


def random_policy(g: dict[str, Any], seed: int = 0, hidden: int = 16) -> GraphPolicy:
    torch.manual_seed(seed)
    policy = GraphPolicy(g["templates"], len(g["sizes"]), hidden=hidden, rounds=2)
    with torch.no_grad():  # the layer norms' affine weights away from (1, 0), so that they are tested too
        for norm in policy.norm:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return policy.eval()


def worst(go: dict[str, Any], ref: dict[str, torch.Tensor]) -> float:
    """Largest |go - ref| / (1 + |ref|) over every head's output."""
    out = 0.0
    for k, r in ref.items():
        a = torch.as_tensor(go[k], dtype=torch.float64).reshape(-1)
        b = r.to(torch.float64).reshape(-1)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        out = max(out, float(((a - b).abs() / (1 + b.abs())).max()))
    return out


def test_graph_documents_carry_gos_encoding(graphs: list[dict[str, Any]]) -> None:
    names = feature_names()
    seeded = [g for g in graphs if any(n["kind"] == "seed" for n in g["nodes"])]
    assert len(seeded) >= 3, "the random policy grew no seed: the graphs would not test the seed features"
    for g in graphs:
        enc = g["encoded"]
        assert enc["features"] == len(names["node"]) and len(enc["global"]) == len(names["global"])
        assert enc["nodes"] == len(g["nodes"]) and len(enc["x"]) == enc["nodes"] * enc["features"]
        e = encode(g)
        assert e.x.shape == (len(g["nodes"]), len(names["node"]))
        # Both directions of every edge of the graph.
        assert e.edges.shape[1] == 2 * len(g["edges"])
        # By hand, from the documented definitions: node kind, a seed's one-hot state and a layer's host.
        for i, n in enumerate(g["nodes"]):
            row = dict(zip(names["node"], e.x[i].tolist()))
            assert row["is_layer"] == (n["kind"] == "layer") and row["is_seed"] == (n["kind"] == "seed")
            if n["kind"] == "seed":
                assert row[f"state:{n['state']}"] == 1.0 and row["log_params"] == pytest.approx(np.log1p(n["params"]))
                assert int(e.target_seed[n["layer"] * g["slots"] + n["slot"]]) == i
            else:
                assert row["host:linear"] == 1.0 and row["log_in"] == pytest.approx(np.log1p(n["in"]))
        glob = dict(zip(names["global"], e.glob.tolist()))
        assert glob["progress"] == pytest.approx(g["epoch"] / 8)
        assert glob["val_known"] == pytest.approx(len(g["global"]["val_losses"]) / 8)


def test_go_forward_matches_pytorch_with_negative_control(graphs: list[dict[str, Any]], tmp_path: Path) -> None:
    policy = random_policy(graphs[0])
    folder = tmp_path / "model"
    save_model(policy, str(folder), {"command": "test"}, onnx=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "graph_policy" and manifest["node_features"] == feature_names()["node"]
    reloaded = load_model(str(folder))
    worst_go = 0.0
    for g in graphs:
        e = encode(g)
        ref = dense(policy, e)
        assert worst(dense(reloaded, e), ref) == 0.0
        out = forward(str(folder), g)
        worst_go = max(worst_go, worst(out["dense"], ref))
        # Go's decision is PyTorch's greedy masked move, and legal.
        with torch.no_grad():
            step = policy.act(e, greedy=True)
        a = out["action"]
        want = step.action.proposal(e)
        got = {"op": a["op"]}
        if a["op"] != "wait":
            got.update(layer=a["layer"], slot=a["slot"])
        if a["op"] == "germinate":
            got.update(template=a["template"], size=a["size"])
        assert got == want
        assert legal(e, step.action)
    print(f"go native vs pytorch: worst {worst_go:.2e} over {len(graphs)} graphs")
    assert worst_go < 1e-5, worst_go
    # Negative control: one weight moved by 1e-3 in the safetensors file is caught.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["embed.0.weight"][0, 0] += 1e-3
    save_file(weights, str(folder / "model.safetensors"))
    moved = max(worst(forward(str(folder), g)["dense"], dense(policy, encode(g))) for g in graphs)
    assert moved > 1e-5, moved


def test_model_folder_errors_name_the_training_command(graphs: list[dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="esper simic ppo train"):
        forward(str(tmp_path / "missing"), graphs[0])
    policy = random_policy(graphs[0])
    folder = tmp_path / "model"
    save_model(policy, str(folder), {}, onnx=False)
    m = json.loads((folder / "manifest.json").read_text())
    m["node_features"] = m["node_features"][:-1]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InvalidArgumentError, match="node features"):
        forward(str(folder), graphs[0])
