"""The value model's trainer (`esper simic collect|train|eval`, ``esper.simic``): the fit on rows whose answer
is known, the model folder it writes (safetensors and ONNX against PyTorch), the guards of the split (held-out
families never fitted on, training families never judged on), and a quick collect -> train -> Go predict ->
eval run through spawned workers, the real library and the suite's tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from esper.simic import collect
from esper.simic.value import (
    Dataset,
    NoOutcomesError,
    TrainConfig,
    eval_families,
    fit,
    metrics,
    save_model,
    train_main,
)
from esper.suite.families import HELD_OUT, TRAIN, HeldOutError, families


def _synthetic(noise_only: bool, seed: int = 0) -> Dataset:
    """Rows of 24 runs whose target is a known function of two of four features (or pure noise)."""
    rng = np.random.default_rng(seed)
    n = 480
    x = rng.normal(size=(n, 4)) * np.array([1.0, 3.0, 0.5, 10.0]) + np.array([0.0, 5.0, -1.0, 100.0])
    noise = rng.normal(scale=0.05, size=n)
    y = noise * 20 if noise_only else np.tanh(x[:, 0]) + 0.3 * (x[:, 1] - 5.0) + noise
    runs = [f"run{i % 24}" for i in range(n)]
    return Dataset([f"f{i}" for i in range(4)], "synthetic", x, y, runs, ["blobs"] * n)


@pytest.mark.slow
def test_fit_learns_a_known_function_and_not_noise() -> None:
    cfg = TrainConfig(epochs=100, patience=30, batch_size=128)
    _, rec = fit(_synthetic(False), cfg)
    val = rec["metrics"]["val"]
    assert rec["split"]["val_runs"] == 6 and rec["split"]["train_runs"] == 18  # whole runs held out
    assert val["mae"] < 0.25 * rec["metrics"]["val_constant_mae"], rec
    assert val["pearson"] > 0.95
    # Negative control: a target unrelated to the features is not learned (early stopping keeps it near the mean).
    _, noise = fit(_synthetic(True), cfg)
    assert noise["metrics"]["val"]["mae"] > 0.8 * noise["metrics"]["val_constant_mae"], noise


def test_fit_is_reproducible_with_its_seed() -> None:
    data = _synthetic(False)
    cfg = TrainConfig(epochs=20, patience=20)
    a, _ = fit(data, cfg)
    b, _ = fit(data, cfg)
    c, _ = fit(data, TrainConfig(epochs=20, patience=20, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fit_needs_two_groups_to_validate_on() -> None:
    data = _synthetic(False)
    data.runs = ["one"] * len(data.y)
    with pytest.raises(NoOutcomesError, match="2 or more runs"):
        fit(data, TrainConfig(epochs=2))
    with pytest.raises(NoOutcomesError, match="2 or more familys|2 or more family"):
        fit(data, TrainConfig(epochs=2, val_by="family"))


@pytest.mark.slow
def test_model_folder_matches_torch_in_safetensors_and_onnx(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    data = _synthetic(False)
    model, rec = fit(data, TrainConfig(epochs=3, patience=3))
    files = save_model(model, data.features, data.target, {"note": "test"}, str(tmp_path))
    assert sorted(os.path.basename(f) for f in files) == ["manifest.json", "model.onnx", "model.safetensors"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["kind"] == "value_mlp" and manifest["schema"] == 1 and manifest["features"] == data.features
    assert [layer["activation"] for layer in manifest["layers"]] == ["relu", "relu", "identity"]
    # The manifest's recipe, by hand in NumPy from the stored float32 tensors, against PyTorch's forward.
    t = load_file(str(tmp_path / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in t.values())
    x = data.x[:50].astype(np.float32)
    h = (x - t[manifest["x_mean"]]) / t[manifest["x_std"]]
    for layer in manifest["layers"]:
        h = h @ t[layer["weight"]].T + t[layer["bias"]]
        if layer["activation"] == "relu":
            h = np.maximum(h, 0)
    by_hand = h[:, 0] * t[manifest["y_std"]][0] + t[manifest["y_mean"]][0]
    with torch.no_grad():
        expected = model(torch.tensor(x)).squeeze(-1).numpy()
    np.testing.assert_allclose(by_hand, expected, rtol=1e-5, atol=1e-5)
    # ONNX: the same numbers through onnx's reference evaluator (its own implementation of the operators).
    from onnx.reference import ReferenceEvaluator

    assert manifest["training"]["onnx"] == {"file": "model.onnx", "input": "x", "output": "y", "opset": 17}
    (onnx_y,) = ReferenceEvaluator(str(tmp_path / "model.onnx")).run(None, {"x": x})
    assert onnx_y.shape == (50, 1)
    np.testing.assert_allclose(onnx_y[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_metrics_by_hand() -> None:
    m = metrics(np.array([1.0, 2.0, 2.5, 0.0]), np.array([1.1, 2.0, 2.0, 1.0]))
    assert m["n"] == 4
    assert m["within_20"] == 0.5  # 0.1 <= 0.22 and 0 <= 0.4 are within; 0.5 > 0.4 and 1 > 0.2 are not
    assert m["mae"] == pytest.approx((0.1 + 0 + 0.5 + 1.0) / 4)
    assert metrics(np.ones(3), np.array([1.0, 2.0, 3.0]))["pearson"] is None


def test_collect_reads_only_training_families_and_eval_only_held_out_ones(capsys: pytest.CaptureFixture[str],
                                                                          tmp_path: Path) -> None:
    from esper.cli import main

    held = [f.name for f in families(HELD_OUT) if not f.control]
    train = [f.name for f in families(TRAIN) if not f.control]
    with pytest.raises(HeldOutError, match="held out"):
        collect.plan(TRAIN, 1, 1, True, str(tmp_path), family_names=[held[0]])
    planned = collect.plan(TRAIN, 1, 2, True, str(tmp_path))
    assert {ep.family for ep in planned} == set(train) and {ep.reader for ep in planned} == {"train"}
    assert len(planned) == len(train) * 2 * len(collect.POLICIES)
    assert len({ep.cache for ep in planned}) == len(planned)
    # Eval judges on held-out families only: a training family named as held-out is refused.
    assert eval_families(None) == held
    with pytest.raises(ValueError, match="training family"):
        eval_families([train[0]])
    assert main(["simic", "collect", "--families", held[0], "--quick", "--out", str(tmp_path)]) == 2
    assert "held out" in capsys.readouterr().err
    assert main(["simic", "eval", "--families", train[0], "--quick", "--out", str(tmp_path)]) == 2
    assert "training family" in capsys.readouterr().err
    assert not (tmp_path / "episodes").exists()  # nothing ran


def test_settings_vary_over_episodes() -> None:
    drawn = [collect.draw_settings("blobs", 0, s, p, False) for s in range(8) for p in collect.POLICIES]
    for key in ("threshold", "patience", "train_steps", "max_params"):
        assert len({json.dumps(d[key]) for d in drawn}) > 1, key
    assert drawn[0] == collect.draw_settings("blobs", 0, 0, "heuristic", False)


@pytest.mark.slow
def test_train_without_outcome_rows_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(NoOutcomesError, match="no finished episodes"):
        train_main(out_dir=str(tmp_path / "empty"), model_dir=str(tmp_path / "model"), quiet=True)
    # A real episode too short to germinate (one epoch: no plateau seen yet) leaves no outcome rows.
    out = tmp_path / "c"
    docs = collect.main(tasks=1, seeds=1, quick=True, out_dir=str(out), workers=1, policies=("heuristic",),
                        epochs=1, family_names=["blobs"], quiet=True)
    assert docs["total"] == {"episodes": 1, "germinations": 0, "fossilizations": 0, "prunes": 0}
    with pytest.raises(NoOutcomesError, match="no outcome rows"):
        train_main(out_dir=str(out), model_dir=str(tmp_path / "model"), quiet=True)
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_quick_collect_train_predict_in_go_and_eval(tmp_path: Path) -> None:
    """Collect tiny episodes in spawned workers, resume without rerunning, fit, load the model folder in Go
    (predictions equal PyTorch's), and judge it on a held-out family: prediction error and a paired run."""
    from esper import valuemodel
    from esper.simic.value import ValueMLP, eval_main, training_set

    out, model_dir = tmp_path / "collect", tmp_path / "model"
    args = {"tasks": 1, "seeds": 1, "quick": True, "out_dir": str(out), "family_names": ["blobs", "spirals"],
            "quiet": True}
    first = collect.main(workers=2, **args)
    assert first["total"]["episodes"] == 4 and first["total"]["germinations"] >= 2, first
    files = sorted(out.glob("episodes/*/*/*/*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = collect.main(workers=1, **args)  # resumed: every episode is finished, none reruns
    assert again["runs"] == first["runs"] and [f.stat().st_mtime_ns for f in files] == stamps

    rec = train_main(out_dir=str(out), model_dir=str(model_dir), cfg=TrainConfig(hidden=(8,), epochs=5, patience=5),
                     quiet=True)
    assert rec["collection"]["families"] == ["blobs", "spirals"] and rec["samples"] >= 2
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["target"] == valuemodel.target() and manifest["training"]["commit"]
    # Go loads the folder and predicts what PyTorch predicts from the same float32 weights.
    data = training_set(str(out))
    from safetensors.torch import load_file

    t = load_file(str(model_dir / "model.safetensors"))
    net = ValueMLP(len(data.features), (8,))
    net.load_state_dict({**{f"layers.{i}.{k}": t[f"l{i}.{k}"] for i in range(2) for k in ("weight", "bias")},
                         **{k: t[k] for k in ("x_mean", "x_std", "y_mean", "y_std")}})
    with torch.no_grad():
        expected = net(torch.tensor(data.x, dtype=torch.float32)).squeeze(-1).numpy()
    np.testing.assert_allclose(valuemodel.predict(str(model_dir), data.x.tolist()), expected, rtol=1e-5, atol=1e-7)

    ev = tmp_path / "eval"
    report = eval_main(model_dir=str(model_dir), family_names=["quantiles"], tasks=1, seeds=1, quick=True,
                       out_dir=str(ev), workers=1, paired_seeds=1, quiet=True)
    held = training_set(str(ev), HELD_OUT)
    assert set(held.families) == {"quantiles"} and report["prediction"]["overall"]["n"] == len(held.y) > 0
    preds = np.asarray(valuemodel.predict(str(model_dir), held.x.tolist()))
    assert report["prediction"]["overall"]["mae"] == pytest.approx(float(np.mean(np.abs(preds - held.y))))
    paired = report["paired"]
    assert paired["overall"]["pairs"] == 1 and {r["policy"] for r in paired["runs"]} == {"heuristic", "learned"}
    assert json.loads((ev / "eval.json").read_text())["prediction"] == report["prediction"]
    assert "| quantiles |" in (ev / "eval.md").read_text()
    # The held-out collection is never fitted on: training on it is refused.
    with pytest.raises(HeldOutError, match="held-out families"):
        train_main(out_dir=str(ev), model_dir=str(tmp_path / "m2"), quiet=True)


def test_shipped_model_was_fitted_on_training_families_and_its_onnx_matches_go() -> None:
    """The artifact in the package: its record names only training families, Go loads and runs it, and its
    ONNX export computes what Go's native forward computes from the safetensors weights."""
    from onnx.reference import ReferenceEvaluator
    from safetensors.numpy import load_file

    from esper import valuemodel
    from esper.simic.value import MODEL_DIR

    manifest = json.loads((Path(MODEL_DIR) / "manifest.json").read_text())
    trained_on = set(manifest["training"]["collection"]["families"])
    assert trained_on and trained_on <= {f.name for f in families(TRAIN)}, trained_on
    assert manifest["training"]["samples"] == manifest["training"]["split"]["train_rows"] + \
        manifest["training"]["split"]["val_rows"]
    t = load_file(str(Path(MODEL_DIR) / "model.safetensors"))
    rng = np.random.default_rng(0)
    x = (t["x_mean"] + rng.normal(size=(64, len(manifest["features"]))) * t["x_std"]).astype(np.float32)
    go = np.asarray(valuemodel.predict(MODEL_DIR, x.tolist()))
    assert np.isfinite(go).all() and np.std(go) > 0
    (onnx_y,) = ReferenceEvaluator(str(Path(MODEL_DIR) / "model.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(onnx_y[:, 0], go, rtol=1e-4, atol=1e-6)
