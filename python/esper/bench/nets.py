"""Learned-network figures: one forward of a value-model-shaped network through the ABI
(``esper_nn_forward``) on the native runtime (Go, ``core/nn``) and on ONNX Runtime
(``core/onnxrt``), at 16 and 200 rows, against PyTorch's forward of the same network."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .rows import Row, samples_row, value_at_most

__all__ = ["net_rows"]

#: Decision latency with the learned model through the ABI (issue "Tamiyo that generalises").
NET_TARGET = value_at_most(1000.0, "<= 1 ms")

#: The trainer's default hidden widths (``esper simic train``).
HIDDEN = (32, 32)


def _per_call_us(fn: Callable[[], Any], inner: int, rounds: int) -> list[float]:
    """CPU microseconds of this process per call, over ``rounds`` blocks of ``inner`` calls (after a
    warm-up): every runtime here computes on the calling thread (ONNX Runtime with one intra-op
    thread), and CPU time, unlike wall time, does not count the time other processes hold the cores."""
    for _ in range(max(inner // 10, 3)):
        fn()
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(inner):
            fn()
        out.append((time.process_time() - start) / inner * 1e6)
    return out


def _features() -> int:
    """The value model's input width, from Go's feature definition (an empty store's dataset)."""
    from .. import valuemodel

    with tempfile.TemporaryDirectory() as store:
        return len(valuemodel.dataset(store)["features"])


def _folder(root: Path, n_in: int) -> torch.nn.Module:
    """Write a model folder holding an n_in-32-32-1 ReLU network with normalisation (random weights,
    seed 0), export model.onnx, and return the PyTorch module that computes the same function."""
    from ..infer import ManifestMLP, export_onnx

    torch.manual_seed(0)
    widths = [n_in, *HIDDEN, 1]
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for i in range(len(widths) - 1):
        lin = torch.nn.Linear(widths[i], widths[i + 1])
        tensors[f"l{i}.weight"], tensors[f"l{i}.bias"] = lin.weight.detach().clone(), lin.bias.detach().clone()
        layers.append({"weight": f"l{i}.weight", "bias": f"l{i}.bias",
                       "activation": "relu" if i < len(widths) - 2 else "identity"})
    tensors.update(x_mean=torch.randn(n_in), x_std=torch.rand(n_in) + 0.5, y_mean=torch.zeros(1), y_std=torch.ones(1))
    from safetensors.torch import save_file

    save_file(tensors, str(root / "model.safetensors"))
    manifest = {"kind": "value_mlp", "schema": 1, "features": [f"f{i}" for i in range(n_in)], "layers": layers,
                "x_mean": "x_mean", "x_std": "x_std", "y_mean": "y_mean", "y_std": "y_std", "target": "bench"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    export_onnx(root)
    return ManifestMLP(manifest, tensors).eval()


def net_rows(rounds: int, quick: bool = False) -> list[Row]:
    """Per-call latency of one batched forward at 16 and 200 rows: native and ONNX Runtime through
    the ABI, PyTorch (one thread) on the same network."""
    from ..errors import UnavailableError
    from ..infer import Network

    n_in = _features()
    inner = 200 if quick else 1000
    rows: list[Row] = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = _folder(root, n_in)
        native = Network(root, "native")
        try:
            onnx: Network | None = Network(root, "onnx")
            missing = ""
        except UnavailableError as exc:
            onnx, missing = None, str(exc)
        torch.set_num_threads(1)
        try:
            for batch in (16, 200):
                x = np.random.default_rng(batch).standard_normal((batch, n_in)).astype(np.float32)
                xt = torch.from_numpy(x)

                def torch_fwd(xt: torch.Tensor = xt) -> None:
                    with torch.no_grad():
                        ref(xt)

                torch_us = statistics.median(_per_call_us(torch_fwd, inner, rounds))
                nat = _per_call_us(lambda x=x: native.forward(x), inner, rounds)
                shape = f"{n_in}-{'-'.join(map(str, HIDDEN))}-1 ReLU MLP with normalisation"
                rows.append(samples_row(
                    "decision", f"value model forward, {batch} rows, native Go (esper_nn_forward)", "cpu", nat, "us",
                    target=NET_TARGET, source="ABI", baseline=torch_us,
                    baseline_name="PyTorch forward of the same network, 1 thread",
                    note=f"{shape}, float64 accumulation in Go, one call per batch, CPU time per call; "
                         f"{statistics.median(nat) / batch:.2f} us per prediction",
                    extra={"rows": batch, "us_per_prediction": statistics.median(nat) / batch}))
                if onnx is None:
                    rows.append(samples_row(
                        "decision", f"value model forward, {batch} rows, ONNX Runtime (esper_nn_forward)", "cpu",
                        [float("nan")], "us", target=NET_TARGET, source="ABI",
                        note=f"not measured: {missing}"))
                    continue
                got = onnx.forward(x)
                agree = float(np.max(np.abs(got - native.forward(x))))
                ort = _per_call_us(lambda x=x, onnx=onnx: onnx.forward(x), inner, rounds)
                rows.append(samples_row(
                    "decision", f"value model forward, {batch} rows, ONNX Runtime (esper_nn_forward)", "cpu", ort,
                    "us", target=NET_TARGET, source="ABI", baseline=statistics.median(nat),
                    baseline_name="the native Go forward of the same network",
                    note=f"{shape}, model.onnx from esper.infer.export_onnx, ONNX Runtime "
                         f"{(onnx.onnxruntime or {}).get('version', '?')}, 1 intra-op thread, CPU time per call; "
                         f"{statistics.median(ort) / batch:.2f} us per prediction; max |onnx - native| {agree:.1e}",
                    extra={"rows": batch, "us_per_prediction": statistics.median(ort) / batch,
                           "max_abs_diff_to_native": agree}))
        finally:
            torch.set_num_threads(threads)
            native.close()
            if onnx is not None:
                onnx.close()
    return rows
