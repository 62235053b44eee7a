"""Tamiyo's layer graph, as Go reports it (``Morphogenesis.graph()``, ``esper_session_graph``), turned into
tensors for the graph policy (:mod:`esper.simic.policy`).

Go computes the graph and the legal moves (the masks); this module only encodes them: it decides nothing
and re-derives no rule. Node features are scaled to be of order one (``log1p`` of counts, ``symlog`` of
signals, with a "measured" flag beside every signal); the masks are copied as they are.

A graph's *targets* are its slots, layer-major (``layer * slots + slot``): a germination targets a
dormant slot, the other ops a seed's slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..kasmina import SeedState

__all__ = ["OPS", "HOST_KINDS", "NODE_FEATURES", "GLOBAL_FEATURES", "TARGET_OPS", "EncodedGraph", "encode"]

#: The op head's choices, in Go's order (``graph["ops"]``; :func:`encode` checks it).
OPS = ("wait", "germinate", "prune", "fossilize", "advance")
#: The ops that choose a target slot (every op but wait), in the order of the target head's outputs.
TARGET_OPS = OPS[1:]
#: Host kinds with a feature of their own; any other counts as "other".
HOST_KINDS = ("linear", "conv1d", "conv2d", "residual", "block", "conv1d_pair", "conv2d_pair")
#: Nissa's per-layer signals, in the order of the features.
SIGNALS = ("act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain")
_STATES = tuple(s.name for s in SeedState)

#: Width of a node's feature vector: kind (2), position (1), host kind (len + 1), log in/out/params (3),
#: signals and their measured flags (2 x 7), cooldown and dormant slots (2), seed state (11), alpha, log
#: steps and epochs in state (3), the seed's last measured contribution relative to the validation loss and
#: its measured flag (2).
NODE_FEATURES = 2 + 1 + len(HOST_KINDS) + 1 + 3 + 2 * len(SIGNALS) + 2 + len(_STATES) + 3 + 2
#: Width of the global feature vector: progress, run length known, log params used, budget left, seeds in
#: flight over the limit, validation loss (symlog), its relative change over 1 and 3 epochs, how many
#: validation losses are known.
GLOBAL_FEATURES = 9


def symlog(x: float) -> float:
    """sign(x) * log1p(|x|): keeps the sign, compresses the range."""
    return math.copysign(math.log1p(abs(x)), x)


@dataclass
class EncodedGraph:
    """One graph as tensors (CPU, float32 / bool / int64).

    Attributes:
        x: node features (N, NODE_FEATURES).
        edges: (2, E) source and destination node indices, both directions of every edge of Go's graph.
        glob: global features (GLOBAL_FEATURES,).
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


def _node(n: dict[str, Any], layers: int, val: float) -> list[float]:
    f = [1.0, 0.0] if n["kind"] == "layer" else [0.0, 1.0]
    f.append(n["layer"] / max(1, layers - 1))
    host = [0.0] * (len(HOST_KINDS) + 1)
    if n["kind"] == "layer":
        host[HOST_KINDS.index(n["host"]) if n.get("host") in HOST_KINDS else len(HOST_KINDS)] = 1.0
    f += host
    f += [math.log1p(max(0, n.get("in", 0))), math.log1p(max(0, n.get("out", 0))), math.log1p(max(0, n["params"]))]
    signals = n.get("signals") or {}
    for name in SIGNALS:
        v = signals.get(name)
        measured = v is not None and math.isfinite(v)
        f += [symlog(v) if measured else 0.0, 1.0 if measured else 0.0]
    f += [float(n.get("cooldown", 0)), float(n.get("dormant", 0))]
    state = [0.0] * len(_STATES)
    if n["kind"] == "seed":
        state[_STATES.index(n["state"])] = 1.0
    f += state
    f += [float(n.get("alpha", 0.0)), math.log1p(max(0, n.get("steps_in_state", 0))),
          float(n.get("epochs_in_state", 0))]
    c = n.get("contribution")
    measured = c is not None and math.isfinite(c)
    f += [symlog(c / max(abs(val), 1e-12)) if measured else 0.0, 1.0 if measured else 0.0]
    return f


def _global(g: dict[str, Any]) -> list[float]:
    gl = g["global"]
    epochs = gl.get("epochs") or 0
    progress = g["epoch"] / epochs if epochs > 0 else 0.0
    remaining = gl.get("remaining")
    left = 1.0 if remaining is None or not gl.get("max_params") else remaining / gl["max_params"]
    vals = [v["value"] for v in gl.get("val_losses") or []]
    last = vals[-1] if vals else 0.0

    def change(k: int) -> float:
        if len(vals) <= k:
            return 0.0
        before = vals[-1 - k]
        return (before - last) / max(abs(before), 1e-12)

    return [progress, 1.0 if epochs > 0 else 0.0, math.log1p(gl["params_used"]), left,
            gl["active"] / max(1, gl["max_concurrent"]), symlog(last), change(1), change(3), len(vals) / 8.0]


def encode(g: dict[str, Any]) -> EncodedGraph:
    """Encode one graph document of Go's (``Morphogenesis.graph()``).

    Raises:
        ValueError: the document's ops are not :data:`OPS` (a library of another version).
    """
    if tuple(g["ops"]) != OPS:
        raise ValueError(f"the graph's ops {g['ops']} are not {OPS}: the library and esper.simic disagree; "
                         "reinstall esper so that both come from one version")
    layers, slots = g["layers"], g["slots"]
    nodes = g["nodes"]
    vals = g["global"].get("val_losses") or []
    val = vals[-1]["value"] if vals else 1.0
    x = torch.tensor([_node(n, layers, val) for n in nodes], dtype=torch.float32).reshape(len(nodes), NODE_FEATURES)
    src = [e["from"] for e in g["edges"]] + [e["to"] for e in g["edges"]]
    dst = [e["to"] for e in g["edges"]] + [e["from"] for e in g["edges"]]
    edges = torch.tensor([src, dst], dtype=torch.int64).reshape(2, len(src))
    seed_at = torch.full((layers * slots,), -1, dtype=torch.int64)
    for i, n in enumerate(nodes):
        if n["kind"] == "seed":
            seed_at[n["layer"] * slots + n["slot"]] = i
    masks = g["masks"]
    templates = tuple(g["templates"])
    return EncodedGraph(
        x=x, edges=edges, glob=torch.tensor(_global(g), dtype=torch.float32),
        target_layer=torch.arange(layers * slots, dtype=torch.int64) // slots, target_seed=seed_at,
        op_mask=torch.tensor(masks["op"], dtype=torch.bool),
        target_mask=torch.tensor([masks["target"][op] for op in TARGET_OPS], dtype=torch.bool).reshape(
            len(TARGET_OPS), layers * slots),
        template_mask=torch.tensor(masks["template"], dtype=torch.bool).reshape(layers, len(templates)),
        size_mask=torch.tensor(masks["size"], dtype=torch.bool).reshape(layers, len(templates), len(g["sizes"])),
        templates=templates, layers=layers, slots=slots)
