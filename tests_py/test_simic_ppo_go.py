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
from esper.simic.graph import MODEL_DIR, encode, feature_names, forward
from esper.simic.policy import Action, GraphPolicy, legal
from esper.simic.ppo import _heuristic_labels


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
        for _epoch in range(8):
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


def test_shipped_model_native_onnx_pytorch_agree(graphs: list[dict[str, Any]]) -> None:
    """The shipped folder's three forms (model.safetensors in Go, model.onnx through ONNX Runtime, PyTorch) agree
    to 1e-5 on real graphs; the negative control moves one PyTorch weight by 1e-3 and is caught."""
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    assert manifest["training"]["command"].startswith("esper simic ppo train")
    policy = load_model(str(MODEL_DIR))
    worst_native = worst_onnx = 0.0
    for g in graphs:
        ref = dense(policy, encode(g))
        worst_native = max(worst_native, worst(forward(str(MODEL_DIR), g)["dense"], ref))
        worst_onnx = max(worst_onnx, worst(forward(str(MODEL_DIR), g, runtime="onnx")["dense"], ref))
    print(f"shipped model: native {worst_native:.2e}, onnx {worst_onnx:.2e} against pytorch")
    assert worst_native < 1e-5 and worst_onnx < 1e-5, (worst_native, worst_onnx)
    with torch.no_grad():
        policy.size_head[2].weight[0, 0] += 1e-3
    moved = max(worst(forward(str(MODEL_DIR), g, runtime="onnx")["dense"], dense(policy, encode(g))) for g in graphs)
    assert moved > 1e-5, moved


def _ppo_loop(model_dir: str, epochs: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                          list[tuple[dict[str, Any], dict[str, Any]]]]:
    """A real wrapped training run with policy="ppo". Returns its counters, every decision, and per applied ppo
    decision the graph the session decided on (replayed from its snapshot into a scratch session, as the
    trainer's behaviour cloning does) with the decision."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    morph = Morphogenesis(model, opt, policy="ppo", ppo_model=model_dir, signal_every=2, train_steps=4,
                          blend_steps=4, max_concurrent=2, epochs=epochs, max_params=3_000)
    x, y = _data()
    every: list[dict[str, Any]] = []
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with morph:
        for _epoch in range(epochs):
            for b in range(4):
                xb, yb = x[b * 24:(b + 1) * 24], y[b * 24:(b + 1) * 24]
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                morph.step(loss)
            with torch.no_grad():
                val = float(F.cross_entropy(model(x), y))
            snap = morph.session.snapshot()
            res = morph.end_epoch(val_loss=val)
            every.extend(res["decisions"])
            decisions = [d for d in res["decisions"] if d["reason"].startswith("ppo:")]
            assert decisions, "the ppo policy made no decision at an end of epoch"
            labels = _heuristic_labels(snap, res["metrics"], decisions)
            applied = [d for d in decisions if d["applied"]]
            assert len(labels) >= len(applied)
            seen.extend(zip([g for g, _ in labels], applied))
            # The governor's limits hold after every epoch's moves.
            g = morph.graph()
            assert g["global"]["params_used"] <= 3_000 and g["global"]["active"] <= 2
        counters = morph.stats()["counters"]
    return counters, every, seen


def test_policy_ppo_drives_the_users_loop(tmp_path: Path) -> None:
    """policy="ppo" in esper.wrap + Morphogenesis: Go encodes each graph, runs the network and takes its masked
    argmax move through the gates and the governor. Every executed move was legal under the masks of the graph it
    was decided on and is the network's argmax there; refusals are counted (none: the masks are the gates)."""
    model = _model()
    with Morphogenesis(model, torch.optim.Adam(model.parameters()), policy="manual") as morph0:
        g0 = morph0.graph()
    policy = random_policy(g0, seed=3)
    with torch.no_grad():  # a policy that grows when it may, so that the run has seeds to judge
        policy.op_head[2].bias[1] += 3.0
    folder = tmp_path / "model"
    save_model(policy, str(folder), {"command": "test"}, onnx=False)
    counters, every, seen = _ppo_loop(str(folder))
    ops = [d["op"] for _, d in seen]
    assert "germinate" in ops and len([o for o in ops if o != "wait"]) >= 2, ops
    for graph, d in seen:
        e = encode(graph)
        a = forward(str(folder), graph)["action"]
        assert a["op"] == d["op"] and (d["op"] == "wait" or (a["layer"], a["slot"]) == (d["layer"], d["slot"]))
        if d["op"] == "wait":
            continue
        target = d["layer"] * graph["slots"] + d["slot"]
        if d["op"] == "germinate":
            k = graph["templates"].index(d["template"])
            assert legal(e, Action(1, target, k, a["size"]))
            assert graph["masks"]["size_params"][d["layer"]][k][a["size"]] == d["param_count"]
        else:
            assert legal(e, Action(("wait", "germinate", "prune", "fossilize", "advance").index(d["op"]), target))
    assert counters["refused"] == sum(1 for d in every if not d["applied"]) == 0
    assert counters["decisions"] == len(every)


def test_policy_ppo_without_a_model_names_the_command(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    morph = Morphogenesis(model, opt, policy="ppo", ppo_model=str(tmp_path / "none"))
    with pytest.raises(InvalidArgumentError, match="esper simic ppo train"):
        _ = morph.session  # the Go session opens on first use
    morph.close()
