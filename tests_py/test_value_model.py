"""The value model through the real library: training rows built in Go from the outcome records of a
real wrapped training run, predictions of a model folder, and policy="learned" in the user's loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import esper
from esper import valuemodel
from esper.errors import InvalidArgumentError

# A short lifecycle so that a few epochs of a tiny model see germinations end.
TEMPO: dict[str, Any] = {"train_steps": 4, "blend_steps": 4, "patience": 1, "threshold": 0.5, "cooldown_epochs": 1,
                         "signal_every": 2, "holding_epochs": 1, "min_gain": 0.0}


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def train(epochs: int, **config: Any) -> tuple[esper.Morphogenesis, list[dict[str, Any]], dict[str, Any]]:
    """The README's loop on a small task; returns the Morphogenesis (closed), every decision, and Go's
    stats at the end."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(96, 8, generator=g)
    ys = (xs[:, 0] * xs[:, 1] > 0).long() + (xs[:, 2] > 0.5).long()
    model = MLP()
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = m(xs)
        return {"loss": float(loss_fn(logits, ys)), "metric": float((logits.argmax(1) == ys).float().mean())}

    settings = {"template": "residual_mlp", "template_params": {"width": 8}, "max_params": 5_000, "epochs": epochs,
                **TEMPO, **config}
    morph = esper.Morphogenesis(model, opt, evaluate=evaluate, **settings)
    decisions: list[dict[str, Any]] = []
    for _ in range(epochs):
        for i in range(0, 96, 16):
            loss = loss_fn(model(xs[i:i + 16]), ys[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        decisions += morph.end_epoch()["decisions"]
    stats = morph.stats()
    morph.close()
    return morph, decisions, stats


@pytest.mark.slow
def test_dataset_rows_from_a_real_run(esper_home: Path) -> None:
    morph, decisions, _ = train(10)
    germinated = [d for d in decisions if d["op"] == "germinate"]
    assert germinated, "the run must germinate for this test to mean anything"
    d = valuemodel.dataset("", runs=[morph.run_id])
    assert d["target"] == valuemodel.target() == "gain_per_compute_v1"
    names = d["features"]
    assert {"epoch_frac", "budget_used", "size_frac", "log_params", "tpl:residual_mlp"} <= set(names)
    rows = d["rows"]
    assert len(rows) == len(germinated) and d["skipped"]["no_scale"] == 0
    for r in rows:
        assert r["run"] == morph.run_id and r["policy"] == "heuristic" and r["prediction"] is None
        assert len(r["x"]) == len(names)
        x = dict(zip(names, r["x"]))
        # Read from the record: epochs=10 planned, a budget of 5 000 params, the template used.
        assert x["epochs_known"] == 1 and x["budget_known"] == 1 and x["tpl:residual_mlp"] == 1
        assert 0 <= x["epoch_frac"] <= 1 and x["size_frac"] > 0
        # The target's parts, checked from the record itself: y = gain / max(cost, 0.01).
        assert r["y"] == pytest.approx(r["gain"] / max(r["cost"], 0.01))
        assert r["cost"] == pytest.approx(r["size_frac"] * r["epochs"])
        if not r["measured"]:
            assert r["gain"] == 0 and r["y"] == 0
    recs = {(rec["seq"]): rec for rec in esper.urza.Urza().outcomes(morph.run_id)}
    for r in rows:
        rec = recs[r["seq"]]
        host_params = rec["observation"]["host_params"]
        assert r["size_frac"] == pytest.approx(rec["param_count"] / host_params)
        assert r["final_state"] == rec["final_state"] and r["ended_by"] == rec["ended_by"]
        x = dict(zip(names, r["x"]))
        assert x["epoch_frac"] == pytest.approx(rec["germinated_epoch"] / 10)
    # Filters: another policy keeps nothing.
    assert valuemodel.dataset("", runs=[morph.run_id], policies=["random"])["rows"] == []


def write_linear_model(folder: Path, names: list[str], coef: dict[str, float], bias: float) -> Path:
    """A one-layer value model written with PyTorch and safetensors, as the trainer writes one:
    prediction = bias + sum(coef[name] * feature)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = torch.zeros(1, len(names))
    for k, v in coef.items():
        w[0, names.index(k)] = v
    save_file({"l0.weight": w, "l0.bias": torch.tensor([bias])}, str(folder / "model.safetensors"))
    manifest = {"kind": "value_mlp", "schema": 1, "features": names, "target": valuemodel.target(),
                "layers": [{"weight": "l0.weight", "bias": "l0.bias", "activation": "identity"}],
                "training": {"by": "hand", "test": "test_value_model"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def feature_names() -> list[str]:
    names = valuemodel.feature_names()
    assert names == valuemodel.dataset("")["features"]  # one list, whichever export gives it
    return names


def test_predict_a_hand_written_model(tmp_path: Path, esper_home: Path) -> None:
    names = feature_names()
    folder = write_linear_model(tmp_path / "m", names, {"epoch_frac": 2.0, "budget_used": -1.0}, 0.25)
    x = [0.0] * len(names)
    x[names.index("epoch_frac")] = 0.5
    x[names.index("budget_used")] = 0.25
    assert valuemodel.predict(folder, [x, [0.0] * len(names)]) == pytest.approx([0.25 + 1.0 - 0.25, 0.25])
    with pytest.raises(InvalidArgumentError, match="has 3 values, the network takes"):
        valuemodel.predict(folder, [[0.0, 1.0, 2.0]])
    with pytest.raises(InvalidArgumentError, match="esper simic train"):
        valuemodel.predict(tmp_path / "absent", [x])
    # A model reads its features by name: a subset in its own order works...
    sub = write_linear_model(tmp_path / "sub", ["epoch_frac", "log_epoch"], {"epoch_frac": 1.0, "log_epoch": 2.0}, 0.0)
    assert valuemodel.predict(sub, [[0.5, 0.25]]) == pytest.approx([1.0])
    # ...and a name this library does not compute is refused, naming it.
    write_linear_model(tmp_path / "old", [*names[:-1], "tpl:gone"], {}, 0.0)
    with pytest.raises(InvalidArgumentError, match='"tpl:gone" is not a feature'):
        valuemodel.predict(tmp_path / "old", [x])


def test_learned_policy_grows_what_the_model_prefers(tmp_path: Path, esper_home: Path) -> None:
    """A hand-set model: value = [residual_mlp] + 0.01 x log(1 + params) - 0.5. Every residual_mlp
    candidate is over the 0.01 threshold and every other template under 0, so Tamiyo grows at once
    (no plateau to wait for) the largest residual_mlp it considers: width 16, twice the configured 8."""
    names = feature_names()
    folder = write_linear_model(tmp_path / "m", names, {"tpl:residual_mlp": 1.0, "log_params": 0.01}, -0.5)
    morph, decisions, stats = train(6, policy="learned", value_model=str(folder), template_params={"width": 8})
    grows = [d for d in decisions if d["op"] == "germinate"]
    assert grows, [d["reason"] for d in decisions]
    first = grows[0]
    assert decisions.index(first) == 0, "the model's value is over the threshold at epoch 0: no plateau wait"
    assert first["template"] == "residual_mlp" and first["params"]["width"] == 16
    assert first["reason"].startswith("learned: ") and first["predicted_value"] > 0.01
    # The record keeps the policy and the prediction, and the dataset gives it back.
    rows = valuemodel.dataset("", runs=[morph.run_id])["rows"]
    learned = [r for r in rows if r["seq"] == 0]
    assert learned and learned[0]["policy"] == "learned"
    assert learned[0]["prediction"] == pytest.approx(first["predicted_value"])
    # The model, run from Python on the row's features, predicts what Tamiyo predicted.
    assert valuemodel.predict(folder, [learned[0]["x"]])[0] == pytest.approx(first["predicted_value"], rel=1e-5)
    assert stats["policy"] == "learned" and stats["counters"]["refused"] == 0


def test_learned_policy_negative_control_never_grows(tmp_path: Path, esper_home: Path) -> None:
    folder = write_linear_model(tmp_path / "low", feature_names(), {}, -1.0)
    _, decisions, stats = train(6, policy="learned", value_model=str(folder))
    assert decisions and all(d["op"] == "wait" for d in decisions), [d["op"] for d in decisions]
    assert all("under value_threshold" in d["reason"] for d in decisions)
    assert stats["counters"]["germinations"] == 0


def test_learned_policy_without_a_model_says_how_to_train_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="esper simic train"):
        train(1, policy="learned", value_model=str(tmp_path / "nothing-here"))
