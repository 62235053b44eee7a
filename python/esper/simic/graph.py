"""Tamiyo's layer graph, as Go reports it (``Morphogenesis.graph()``, ``esper_session_graph``), as tensors for
the graph policy (:mod:`esper.simic.policy`).

Go computes the graph, the legal moves (the masks) and the graph's numeric encoding (the document's
``"encoded"`` field: node features, edges in both directions, global features, the target slots' nodes;
``policy/graphpolicy.Encode``, the one definition Go's forward of ``policy="ppo"`` reads too). This module only
assembles tensors from them: it computes no feature and re-derives no rule.

A graph's *targets* are its slots, layer-major (``layer * slots + slot``): a germination targets a
dormant slot, the other ops a seed's slot.
"""

from __future__ import annotations

import functools
from ctypes import byref, c_void_p
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import _lib

__all__ = ["OPS", "TARGET_OPS", "MODEL_DIR", "EncodedGraph", "encode", "feature_names", "node_features",
           "global_features", "default_model_dir", "forward"]

#: The op head's choices, in Go's order (``graph["ops"]``; :func:`encode` checks it).
OPS = ("wait", "germinate", "prune", "fossilize", "advance")
#: The ops that choose a target slot (every op but wait), in the order of the target head's outputs.
TARGET_OPS = OPS[1:]
#: The shipped graph policy's folder (``MorphConfig(policy="ppo")`` without ``ppo_model``).
MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "ppo"


@functools.cache
def feature_names() -> dict[str, Any]:
    """Go's graph encoding: ``{"node": [names], "global": [names], "kind", "schema", "ops", "sizes",
    "train_command"}`` (``esper_graph_features``): the input names, in order, a model's manifest lists."""
    out = c_void_p()
    _lib.check(_lib.lib().esper_graph_features(byref(out)))
    return _lib.take_json(out)


def node_features() -> int:
    """Width of a node's feature vector (Go's encoding)."""
    return len(feature_names()["node"])


def global_features() -> int:
    """Width of the global feature vector (Go's encoding)."""
    return len(feature_names()["global"])


def default_model_dir() -> str:
    """The folder ``policy="ppo"`` loads when ``MorphConfig.ppo_model`` is not set: the shipped model's
    (``esper/models/ppo``), whether or not it exists (Go says what is missing)."""
    return str(MODEL_DIR)


def forward(model_dir: str, graph: dict[str, Any], runtime: str = "native") -> dict[str, Any]:
    """The graph policy in ``model_dir`` run by Go on one graph document (``esper_graph_forward``), on
    ``runtime`` "native" (Go's forward over model.safetensors) or "onnx" (model.onnx through ONNX Runtime):
    ``{"dense": {"value", "op", "target", "template", "size"}, "action": {...}}``, the action being the masked
    argmax move ``policy="ppo"`` takes (from the native forward)."""
    import json

    if runtime == "onnx":
        _lib.refresh_settings()  # ESPER_ONNXRUNTIME_LIB as os.environ holds it now
    out = c_void_p()
    _lib.check(_lib.lib().esper_graph_forward(str(model_dir).encode(), runtime.encode(), json.dumps(graph).encode(),
                                              byref(out)))
    return _lib.take_json(out)


@dataclass
class EncodedGraph:
    """One graph as tensors (CPU, float32 / bool / int64).

    Attributes:
        x: node features (N, node_features()).
        edges: (2, E) source and destination node indices, both directions of every edge of Go's graph.
        glob: global features (global_features(),).
        target_layer: (T,) the layer node of each target slot.
        target_seed: (T,) the seed node at each target slot, -1 where the slot has none (dormant).
        op_mask: (5,) legal ops.
        target_mask: (4, T) legal targets per op of TARGET_OPS.
        template_mask: (L, K) legal templates per layer.
        size_mask: (L, K, Z) legal sizes per layer and template.
        templates: the template names (K), in Go's order.
        layers, slots: the graph's shape.
    """

    x: torch.Tensor
    edges: torch.Tensor
    glob: torch.Tensor
    target_layer: torch.Tensor
    target_seed: torch.Tensor
    op_mask: torch.Tensor
    target_mask: torch.Tensor
    template_mask: torch.Tensor
    size_mask: torch.Tensor
    templates: tuple[str, ...]
    layers: int
    slots: int


def encode(g: dict[str, Any]) -> EncodedGraph:
    """Tensors of one graph document of Go's (``Morphogenesis.graph()``), from its ``"encoded"`` field and masks.

    Raises:
        ValueError: the document's ops are not :data:`OPS`, or it has no encoding (a library of another version).
    """
    if tuple(g["ops"]) != OPS:
        raise ValueError(f"the graph's ops {g['ops']} are not {OPS}: the library and esper.simic disagree; "
                         "reinstall esper so that both come from one version")
    enc = g.get("encoded")
    if not enc:
        raise ValueError("the graph document has no \"encoded\" field: it was not made by this library's "
                         "esper_session_graph; reinstall esper so that both come from one version")
    layers, slots = g["layers"], g["slots"]
    n, f = enc["nodes"], enc["features"]
    x = torch.tensor(enc["x"], dtype=torch.float32).reshape(n, f)
    edges = torch.tensor([enc["src"], enc["dst"]], dtype=torch.int64).reshape(2, len(enc["src"]))
    seed_at = torch.tensor(enc["target_seed"], dtype=torch.int64)
    masks = g["masks"]
    templates = tuple(g["templates"])
    return EncodedGraph(
        x=x, edges=edges, glob=torch.tensor(enc["global"], dtype=torch.float32),
        target_layer=torch.tensor(enc["target_layer"], dtype=torch.int64), target_seed=seed_at,
        op_mask=torch.tensor(masks["op"], dtype=torch.bool),
        target_mask=torch.tensor([masks["target"][op] for op in TARGET_OPS], dtype=torch.bool).reshape(
            len(TARGET_OPS), layers * slots),
        template_mask=torch.tensor(masks["template"], dtype=torch.bool).reshape(layers, len(templates)),
        size_mask=torch.tensor(masks["size"], dtype=torch.bool).reshape(layers, len(templates), len(g["sizes"])),
        templates=templates, layers=layers, slots=slots)
