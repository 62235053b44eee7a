"""Parity of the two inference paths of a learned network: Go's native forward (core/nn, weights
from safetensors) and Go's ONNX Runtime forward (core/onnxrt, model.onnx written by
torch.onnx.export), against PyTorch, through the real ABI (esper_nn_*)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from esper import NotFoundError, UnavailableError
from esper.infer import Network, export_onnx

# torch.onnx.export (the torch.export-based exporter) takes 5-30 s on this loaded 2-core machine.
pytestmark = pytest.mark.slow

# Relative and absolute parts of the agreement bar: float32 rounding through three layers.
TOL = 1e-5


def _max_err(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |got - want| / (1 + |want|): under TOL means the two agree."""
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)) / (1 + np.abs(want))))


class Reference(nn.Module):
    """The test's own network: normalise, three linear layers (relu, tanh), scale the output."""

    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.l0, self.l1, self.l2 = nn.Linear(n_in, 64), nn.Linear(64, 32), nn.Linear(32, 1)
        self.x_mean = torch.randn(n_in)
        self.x_std = torch.rand(n_in) + 0.5
        self.y_mean, self.y_std = torch.tensor([0.3]), torch.tensor([2.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.x_mean) / self.x_std
        x = torch.tanh(self.l1(torch.relu(self.l0(x))))
        return self.l2(x) * self.y_std + self.y_mean


def _write_folder(folder: Path, ref: Reference, perturb: float = 0.0) -> None:
    """The model folder of ``ref`` (manifest + safetensors); ``perturb`` is added to one weight."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{p}": getattr(getattr(ref, name), p).detach().clone() for name in ("l0", "l1", "l2")
               for p in ("weight", "bias")}
    tensors["l1.weight"][3, 5] += perturb
    tensors.update(x_mean=ref.x_mean, x_std=ref.x_std, y_mean=ref.y_mean, y_std=ref.y_std)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    manifest = {
        "kind": "value_mlp", "schema": 1, "features": [f"f{i}" for i in range(ref.l0.in_features)],
        "layers": [{"weight": "l0.weight", "bias": "l0.bias", "activation": "relu"},
                   {"weight": "l1.weight", "bias": "l1.bias", "activation": "tanh"},
                   {"weight": "l2.weight", "bias": "l2.bias", "activation": "identity"}],
        "x_mean": "x_mean", "x_std": "x_std", "y_mean": "y_mean", "y_std": "y_std",
        "target": "parity_test", "training": {"note": "random weights, torch.manual_seed(0)"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Reference, Path]:
    torch.manual_seed(0)
    ref = Reference(24).eval()
    folder = tmp_path_factory.mktemp("parity") / "model"
    _write_folder(folder, ref)
    export_onnx(folder)
    return ref, folder


@pytest.mark.parametrize("rows", [1, 16, 200])
def test_native_onnx_and_torch_agree(model: tuple[Reference, Path], rows: int) -> None:
    ref, folder = model
    x = torch.randn(rows, 24, generator=torch.Generator().manual_seed(rows)) * 2
    with torch.no_grad():
        want = ref(x).numpy()
    with Network(folder, "native") as native, Network(folder, "onnx") as onnx:
        assert (native.in_features, native.out_features) == (onnx.in_features, onnx.out_features) == (24, 1)
        assert onnx.onnxruntime is not None and onnx.onnxruntime["version"].startswith("1.24")
        got_native, got_onnx = native.forward(x), onnx.forward(x.numpy())
    assert got_native.shape == got_onnx.shape == (rows, 1)
    assert _max_err(got_native, want) < TOL
    assert _max_err(got_onnx, want) < TOL
    assert _max_err(got_native, got_onnx) < TOL
    # Not a vacuous pass: the outputs vary over the batch.
    assert rows == 1 or float(np.std(want)) > 0.1


def test_perturbed_weight_is_caught(model: tuple[Reference, Path], tmp_path: Path) -> None:
    """Negative control: a folder whose safetensors has one weight moved by 1e-3, with the original
    model.onnx beside it, fails the parity comparison."""
    ref, folder = model
    bad = tmp_path / "bad"
    _write_folder(bad, ref, perturb=1e-3)
    (bad / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
    x = torch.randn(200, 24, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        want = ref(x).numpy()
    with Network(bad, "native") as native, Network(bad, "onnx") as onnx:
        got_native, got_onnx = native.forward(x), onnx.forward(x)
    assert _max_err(got_onnx, want) < TOL
    assert _max_err(got_native, want) > TOL
    assert _max_err(got_native, got_onnx) > TOL


def test_forward_refuses_bad_input(model: tuple[Reference, Path]) -> None:
    _, folder = model
    with Network(folder, "onnx") as net:
        with pytest.raises(ValueError, match=r"\[rows >= 1, 24\]"):
            net.forward(np.zeros((3, 23), dtype=np.float32))
        with pytest.raises(ValueError):
            net.forward(np.zeros((0, 24), dtype=np.float32))
    with pytest.raises(ValueError, match="runtime"):
        Network(folder, "tflite")


def test_missing_onnx_file(model: tuple[Reference, Path], tmp_path: Path) -> None:
    ref, _ = model
    _write_folder(tmp_path, ref)
    with pytest.raises(NotFoundError, match="model.onnx"):
        Network(tmp_path, "onnx")
    with Network(tmp_path, "native") as net:  # the native runtime needs no model.onnx
        assert net.forward(np.zeros((2, 24), dtype=np.float32)).shape == (2, 1)


def test_missing_onnxruntime_names_the_fix(model: tuple[Reference, Path], tmp_path: Path) -> None:
    """In a fresh process whose ESPER_ONNXRUNTIME_LIB names no file: the onnx runtime fails with
    UnavailableError naming `make onnxruntime` and ESPER_ONNXRUNTIME_LIB; the native one works."""
    _, folder = model
    code = textwrap.dedent(f"""
        import numpy as np
        from esper import UnavailableError
        from esper.infer import Network
        try:
            Network({str(folder)!r}, "onnx")
        except UnavailableError as exc:
            print("UNAVAILABLE", exc)
        print("NATIVE", Network({str(folder)!r}, "native").forward(np.zeros((1, 24), np.float32)).shape)
    """)
    env = dict(os.environ, ESPER_ONNXRUNTIME_LIB=str(tmp_path / "absent" / "libonnxruntime.so.1"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE" in out.stdout, out.stdout
    assert "make onnxruntime" in out.stdout and "ESPER_ONNXRUNTIME_LIB" in out.stdout, out.stdout
    assert str(tmp_path / "absent") in out.stdout
    assert "NATIVE (1, 1)" in out.stdout
    assert UnavailableError is not None


def test_threads_share_a_network(model: tuple[Reference, Path]) -> None:
    """ctypes releases the GIL: four Python threads run one handle of each runtime at once and each
    gets what a lone call gives."""
    _, folder = model
    xs = [np.random.default_rng(i).standard_normal((8 + i, 24)).astype(np.float32) for i in range(4)]
    with Network(folder, "native") as native, Network(folder, "onnx") as onnx:
        want = {(rt, i): net.forward(x) for rt, net in (("native", native), ("onnx", onnx)) for i, x in enumerate(xs)}
        errors: list[str] = []

        def work(i: int) -> None:
            for _ in range(50):
                for rt, net in (("native", native), ("onnx", onnx)):
                    if not np.array_equal(net.forward(xs[i]), want[(rt, i)]):
                        errors.append(f"thread {i} {rt}")
                        return

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
