"""policy="learned" with the value model on ONNX Runtime (MorphConfig value_runtime="onnx") in the
user's loop: the same decisions and predictions as on the native runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_value_model import feature_names, train

from esper import valuemodel
from esper.errors import InvalidArgumentError, NotFoundError
from esper.infer import export_onnx

# torch.onnx.export (the torch.export-based exporter) takes 5-30 s on this loaded 2-core machine.
pytestmark = pytest.mark.slow


def write_relu_model(folder: Path, names: list[str]) -> Path:
    """value = relu([residual_mlp] + 0.01 log_params - 0.5) + relu(small random weights . x): over the
    0.01 threshold for every residual_mlp candidate (the largest wins), under it for the others."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    w0 = torch.zeros(2, len(names))
    w0[0, names.index("tpl:residual_mlp")] = 1.0
    w0[0, names.index("log_params")] = 0.01
    w0[1] = torch.rand(len(names), generator=g) * 1e-3
    b0 = torch.tensor([-0.5, 0.0])
    w1, b1 = torch.tensor([[1.0, 1.0]]), torch.tensor([0.0])
    save_file({"l0.weight": w0, "l0.bias": b0, "l1.weight": w1, "l1.bias": b1}, str(folder / "model.safetensors"))
    manifest = {"kind": "value_mlp", "schema": 1, "features": names, "target": valuemodel.target(),
                "layers": [{"weight": "l0.weight", "bias": "l0.bias", "activation": "relu"},
                           {"weight": "l1.weight", "bias": "l1.bias", "activation": "identity"}],
                "training": {"by": "hand", "test": "test_value_runtime"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_onnx_runtime_decides_as_native(tmp_path: Path, esper_home: Path) -> None:
    folder = write_relu_model(tmp_path / "m", feature_names())
    export_onnx(folder)
    runs = {}
    for rt in ("native", "onnx"):
        _, decisions, stats = train(6, policy="learned", value_model=str(folder), value_runtime=rt,
                                    template_params={"width": 8})
        runs[rt] = decisions
        assert stats["policy"] == "learned"
    native, onnx = runs["native"], runs["onnx"]
    grows = [d for d in onnx if d["op"] == "germinate"]
    assert grows and grows[0]["template"] == "residual_mlp" and grows[0]["params"]["width"] == 16
    assert [(d["op"], d.get("layer"), d.get("template"), d.get("params")) for d in onnx] == \
           [(d["op"], d.get("layer"), d.get("template"), d.get("params")) for d in native]
    for a, b in zip(native, onnx):
        if a.get("predicted_value") is not None:
            assert b["predicted_value"] == pytest.approx(a["predicted_value"], rel=1e-5, abs=1e-6)


def test_onnx_runtime_errors(tmp_path: Path, esper_home: Path) -> None:
    folder = write_relu_model(tmp_path / "m", feature_names())  # no model.onnx
    with pytest.raises(NotFoundError, match="model.onnx"):
        train(1, policy="learned", value_model=str(folder), value_runtime="onnx")
    with pytest.raises(InvalidArgumentError, match="value_runtime"):
        train(1, policy="learned", value_model=str(folder), value_runtime="tflite")
