"""policy="ppo" with the graph policy's forward on ONNX Runtime (MorphConfig ppo_runtime="onnx") in the user's
esper.wrap + Morphogenesis loop: the same decisions as Go's native forward on the same run. Go checks the option
(Python only passes it); a folder without model.onnx, or another runtime, is refused when the session opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_simic_ppo_go import _data, _model, random_policy

from esper import Morphogenesis
from esper.errors import InvalidArgumentError, NotFoundError
from esper.simic.export import export_onnx, save_model

# torch.onnx.export (the torch.export-based exporter) takes 5-30 s on this loaded 2-core machine.
pytestmark = pytest.mark.slow


def _run(folder: str, runtime: str, epochs: int = 6) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A real wrapped training run driven by the ppo policy on ``runtime``: every decision, and the stats."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    morph = Morphogenesis(model, opt, policy="ppo", ppo_model=folder, ppo_runtime=runtime, signal_every=2,
                          train_steps=4, blend_steps=4, max_concurrent=2, epochs=epochs, max_params=3_000)
    x, y = _data()
    decisions: list[dict[str, Any]] = []
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
            decisions.extend(morph.end_epoch(val_loss=val)["decisions"])
        stats = morph.stats()
    return decisions, stats


def _moves(decisions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(d["op"], d.get("layer"), d.get("slot"), d.get("template"), d.get("param_count"), d["applied"])
            for d in decisions]


def test_onnx_runtime_decides_as_native(tmp_path: Path) -> None:
    model = _model()
    with Morphogenesis(model, torch.optim.Adam(model.parameters()), policy="manual") as morph0:
        g0 = morph0.graph()
    policy = random_policy(g0, seed=3)
    with torch.no_grad():  # a policy that grows when it may, so that the runs have moves to compare
        policy.op_head[2].bias[1] += 3.0
    folder = tmp_path / "model"
    written = save_model(policy, str(folder), {"command": "test"})
    assert str(folder / "model.onnx") in written, written
    runs = {rt: _run(str(folder), rt) for rt in ("native", "onnx")}
    native, onnx = runs["native"][0], runs["onnx"][0]
    ppo = [d for d in onnx if d["reason"].startswith("ppo:")]
    assert ppo and any(d["op"] == "germinate" and d["applied"] for d in ppo), _moves(onnx)
    assert len([d for d in ppo if d["op"] != "wait"]) >= 2, _moves(onnx)
    assert _moves(onnx) == _moves(native)
    for rt in ("native", "onnx"):
        assert runs[rt][1]["counters"]["refused"] == 0
        assert all(f"on {rt};" in d["reason"] for d in runs[rt][0] if d["reason"].startswith("ppo:")), rt
    # The control: a model.onnx of other weights (a policy that waits) beside the same safetensors changes the
    # onnx run's decisions and not the native run's, so the onnx run's moves come from model.onnx.
    waits = random_policy(g0, seed=3)
    with torch.no_grad():
        waits.op_head[2].bias[0] += 100.0
    export_onnx(waits, str(folder / "model.onnx"))
    other = _run(str(folder), "onnx")[0]
    assert all(d["op"] == "wait" for d in other if d["reason"].startswith("ppo:")), _moves(other)
    assert _moves(other) != _moves(native)


def test_onnx_runtime_errors(tmp_path: Path) -> None:
    model = _model()
    with Morphogenesis(model, torch.optim.Adam(model.parameters()), policy="manual") as morph0:
        g0 = morph0.graph()
    folder = tmp_path / "model"
    save_model(random_policy(g0), str(folder), {"command": "test"}, onnx=False)  # no model.onnx
    cases: list[tuple[str, type[Exception], str]] = [("onnx", NotFoundError, "model.onnx"),
                                                      ("tflite", InvalidArgumentError, "ppo_runtime")]
    for runtime, error, match in cases:
        morph = Morphogenesis(model, torch.optim.Adam(model.parameters()), policy="ppo", ppo_model=str(folder),
                              ppo_runtime=runtime)
        with pytest.raises(error, match=match):
            _ = morph.session  # the Go session opens on first use
        morph.close()
