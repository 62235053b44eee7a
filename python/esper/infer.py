"""Learned networks run by the Go core: a model folder on the native or the ONNX runtime.

A model folder (docs/simic.md, "The model folder") holds ``manifest.json``, ``model.safetensors``
and optionally ``model.onnx``. :class:`Network` opens it in Go (``core/infer``) on one of two
runtimes and runs float32 batches through the ABI::

    with Network("python/esper/models/value", runtime="onnx") as net:
        y = net.forward(x)          # x: [rows, net.in_features] -> [rows, net.out_features]

- ``"native"`` (default): Go's own forward pass over the safetensors weights (``core/nn``).
- ``"onnx"``: ``model.onnx`` through ONNX Runtime (``core/onnxrt``). The library
  ``libonnxruntime.so.1`` (ONNX Runtime >= 1.24) is loaded on first use from
  ``$ESPER_ONNXRUNTIME_LIB``, else from beside ``libesper.so``, where ``make onnxruntime`` puts it.
  Without it, opening an ``"onnx"`` network raises :class:`~esper.errors.UnavailableError` naming
  both; nothing else in Esper needs it.

:func:`export_onnx` writes ``model.onnx`` for a folder: it builds the network the manifest
describes in PyTorch (normalisation included) and exports it with ``torch.onnx.export``, so the
two files describe one function; the parity test (``tests_py/test_onnx_parity.py``) holds Go's
native forward, Go's ONNX Runtime forward and PyTorch together.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import warnings
from ctypes import POINTER, c_float, c_uint64, c_void_p
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _lib

__all__ = ["RUNTIMES", "Network", "ManifestMLP", "export_onnx"]

#: The runtimes a network can run on.
RUNTIMES = ("native", "onnx")

_ACTIVATIONS = {"": nn.Identity, "identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Network(_lib.Handle):
    """A model folder's network, loaded in Go on one runtime.

    Args:
        folder: the model folder (``manifest.json``, ``model.safetensors``, ``model.onnx`` for
            ``runtime="onnx"``).
        runtime: ``"native"`` or ``"onnx"``.
        threads: ONNX Runtime's threads per forward (0: 1; the native runtime uses one).

    Raises:
        esper.NotFoundError: a file the runtime reads is missing.
        esper.InvalidArgumentError: a malformed manifest, weights or model, or widths that differ
            between ``model.onnx`` and ``model.safetensors``.
        esper.UnavailableError: ``runtime="onnx"`` and ONNX Runtime cannot be loaded (run
            ``make onnxruntime`` or set ``ESPER_ONNXRUNTIME_LIB``).
    """

    _free_symbol = "esper_nn_free"

    def __init__(self, folder: str | os.PathLike[str], runtime: str = "native", threads: int = 0) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "onnx":
            _lib.refresh_settings()  # ESPER_ONNXRUNTIME_LIB as os.environ holds it now
        cdll = _lib.lib()
        config = json.dumps({"dir": str(Path(folder).resolve()), "runtime": runtime, "threads": threads})
        out = c_uint64()
        _lib.check(cdll.esper_nn_open(config.encode(), ctypes.byref(out)))
        super().__init__(out.value)
        info = _lib.take_json(self._call_out(cdll.esper_nn_info))
        self.runtime: str = info["runtime"]
        self.in_features: int = int(info["in"])
        self.out_features: int = int(info["out"])
        #: ``{"path", "version"}`` of the ONNX Runtime library for ``runtime="onnx"``, else None.
        self.onnxruntime: dict[str, str] | None = info["onnxruntime"]
        self._forward = _lib.unchecked(cdll, "esper_nn_forward")

    def _call_out(self, fn: Any) -> c_void_p:
        out = c_void_p()
        _lib.check(fn(self.handle, ctypes.byref(out)), self.handle)
        return out

    def forward(self, x: np.ndarray | Tensor) -> np.ndarray:
        """Run the network on a float32 batch ``[rows, in_features]`` (a NumPy array or a CPU or
        CUDA tensor, copied to host float32 when needed); returns ``[rows, out_features]``."""
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != self.in_features or a.shape[0] == 0:
            raise ValueError(f"x must have shape [rows >= 1, {self.in_features}], got {list(a.shape)}")
        rows = a.shape[0]
        out = np.empty((rows, self.out_features), dtype=np.float32)
        h = self.handle
        rc = self._forward(h, a.ctypes.data_as(POINTER(c_float)), rows, out.ctypes.data_as(POINTER(c_float)),
                           out.size)
        if rc:
            _lib.check(rc, h)
        return out

    __call__ = forward


class ManifestMLP(nn.Module):
    """The network a model folder's manifest describes, in PyTorch: ``(x - x_mean) / x_std``, the
    dense layers ``act(W x + b)`` in order, then ``y * y_std + y_mean`` (each normalisation when the
    manifest names it). Used to export ``model.onnx``; weights come from ``model.safetensors``."""

    def __init__(self, manifest: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super().__init__()

        def get(name: str) -> Tensor:
            if name not in tensors:
                raise KeyError(f"model.safetensors has no tensor {name!r}, which the manifest names")
            return tensors[name].to(torch.float32)

        layers: list[nn.Module] = []
        for i, spec in enumerate(manifest.get("layers") or []):
            w, b = get(spec["weight"]), get(spec["bias"])
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layers[{i}]: weight {list(w.shape)} and bias {list(b.shape)} "
                                 "are not [out, in] and [out]")
            act = spec.get("activation", "")
            if act not in _ACTIVATIONS:
                known = sorted(k for k in _ACTIVATIONS if k)
                raise ValueError(f"layers[{i}]: activation {act!r} is not one of {known}")
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers += [lin, _ACTIVATIONS[act]()]
        if not layers:
            raise ValueError("the manifest names no layers")
        self.body = nn.Sequential(*layers)
        for side in ("x", "y"):
            mean, std = manifest.get(f"{side}_mean"), manifest.get(f"{side}_std")
            if bool(mean) != bool(std):
                raise ValueError(f"{side}_mean and {side}_std go together")
            self.register_buffer(f"{side}_mean", get(mean) if mean else None)
            self.register_buffer(f"{side}_std", get(std) if std else None)

    def forward(self, x: Tensor) -> Tensor:
        """``[rows, in] -> [rows, out]``."""
        if self.x_std is not None:
            x = (x - self.x_mean) / self.x_std
        y = self.body(x)
        if self.y_std is not None:
            y = y * self.y_std + self.y_mean
        return y


def export_onnx(folder: str | os.PathLike[str], opset: int = 20) -> Path:
    """Write ``model.onnx`` for a model folder from its ``manifest.json`` and ``model.safetensors``
    (float32, input ``x`` [batch, in] with a dynamic batch, output ``y`` [batch, out]) and return
    its path. Needs the ``onnx`` and ``onnxscript`` packages (the ``dev`` extra)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    net = ManifestMLP(manifest, load_file(str(folder / "model.safetensors"))).eval()
    n_in = net.body[0].in_features
    path = folder / "model.onnx"
    example = torch.zeros(2, n_in)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    with warnings.catch_warnings():
        # The exporter warns about its own internals (version converter, deprecated options) and
        # logs one line per torchvision op it cannot register when torchvision is absent.
        warnings.simplefilter("ignore")
        registration.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(net, (example,), input_names=["x"], output_names=["y"], opset_version=opset,
                                        dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        verbose=False)
        finally:
            registration.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    tmp = path.with_suffix(".onnx.tmp")
    program.save(str(tmp))
    os.replace(tmp, path)
    return path
