"""The graph policy's model folder (docs/simic.md, "Graph policy in Go"): what ``policy="ppo"`` loads in Go.

:func:`save_model` writes ``model.safetensors`` (the :class:`~esper.simic.policy.GraphPolicy` state_dict,
float32), ``manifest.json`` (kind ``graph_policy``, schema 1, Go's feature names, ops, templates, sizes, the
network's shape and the training record) and, when the ``onnx`` package is installed, ``model.onnx`` (the same
network as :class:`DenseGraphNet`). :func:`dense` is the PyTorch reference of every head's output that Go's
native forward (``esper_graph_forward``) and ONNX Runtime are held to.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .graph import EncodedGraph, feature_names
from .policy import GraphPolicy

__all__ = ["save_model", "load_model", "dense", "DenseGraphNet", "onnx_inputs", "export_onnx", "ONNX_OPSET"]

#: The ONNX opset of model.onnx.
ONNX_OPSET = 20


def save_model(policy: GraphPolicy, model_dir: str, training: dict[str, Any], *, onnx: bool = True) -> list[str]:
    """Write ``policy`` as a model folder; returns the paths written. ``training`` is the free-form record of
    how it was made (command, commit, episodes...); the library does not read it."""
    from safetensors.torch import save_file

    os.makedirs(model_dir, exist_ok=True)
    names = feature_names()
    if policy.node_features != len(names["node"]) or policy.global_features != len(names["global"]):
        raise ValueError(f"the policy takes {policy.node_features} node and {policy.global_features} global features, "
                         f"this library encodes {len(names['node'])} and {len(names['global'])}: retrain it")
    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in policy.state_dict().items()}
    path = os.path.join(model_dir, "model.safetensors")
    save_file(weights, path)
    written = [path]
    onnx_path = os.path.join(model_dir, "model.onnx")
    record = dict(training)
    if onnx and _has_onnx():
        export_onnx(policy, onnx_path)
        written.append(onnx_path)
        record["onnx"] = {"file": "model.onnx", "opset": ONNX_OPSET}
    elif os.path.exists(onnx_path):
        os.remove(onnx_path)  # a stale export of other weights must not ship beside these
    manifest = {"kind": names["kind"], "schema": names["schema"], "node_features": names["node"],
                "global_features": names["global"], "ops": names["ops"], "templates": list(policy.templates),
                "sizes": names["sizes"], "hidden": policy.hidden, "rounds": policy.rounds, "training": record}
    if len(names["sizes"]) != policy.sizes:
        raise ValueError(f"the policy has {policy.sizes} sizes, this library {len(names['sizes'])}: retrain it")
    mpath = os.path.join(model_dir, "manifest.json")
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    written.append(mpath)
    return written


def load_model(model_dir: str) -> GraphPolicy:
    """The :class:`GraphPolicy` of a model folder (for evaluation and parity tests)."""
    from safetensors.torch import load_file

    with open(os.path.join(model_dir, "manifest.json")) as f:
        m = json.load(f)
    policy = GraphPolicy(m["templates"], len(m["sizes"]), hidden=m["hidden"], rounds=m["rounds"],
                         node_features=len(m["node_features"]), global_features=len(m["global_features"]))
    policy.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
    return policy.eval()


@torch.no_grad()
def dense(policy: GraphPolicy, g: EncodedGraph) -> dict[str, Tensor]:
    """Every head's output on ``g``, computed with the policy's own modules (the trainer's forward): value,
    op logits (5), target logits (4, T), template logits per layer (L, K) and size logits per layer and
    template (L, K, Z). Unmasked: the masks are applied by the decision, not the network."""
    h, summary = policy.encode(g)
    target = policy._target_logits(g, h, summary)
    layers = h[: g.layers]
    template = policy.template_head(torch.cat([layers, summary.expand(g.layers, -1)], dim=1))
    k = len(policy.templates)
    feats = torch.cat([layers.unsqueeze(1).expand(-1, k, -1), policy.template_embed.weight.unsqueeze(0).expand(
        g.layers, -1, -1), summary.expand(g.layers, k, -1)], dim=2)
    return {"value": policy.value_head(summary).reshape(1), "op": policy.op_head(summary), "target": target,
            "template": template, "size": policy.size_head(feats)}


class DenseGraphNet(nn.Module):
    """The graph policy as one function of tensors, for ONNX: inputs ``x`` (N, F), ``adj`` (N, N: the mean of
    the in-neighbours, ``adj[d, s]`` = edges s -> d / in-degree of d), ``glob`` (G), ``layer_nodes`` (L,
    the layer nodes), ``target_layer`` and ``target_seed`` (T, int64, -1 for no seed); outputs ``value`` (1),
    ``op`` (5), ``target`` (4, T), ``template`` (L, K), ``size`` (L, K, Z). The same weights and math as
    :class:`GraphPolicy` (the neighbour mean as a product with ``adj``)."""

    def __init__(self, policy: GraphPolicy) -> None:
        super().__init__()
        self.p = policy

    def forward(self, x: Tensor, adj: Tensor, glob: Tensor, layer_nodes: Tensor, target_layer: Tensor,
                target_seed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        p = self.p
        h = p.embed(x)
        gl = p.glob(glob)
        for message, norm in zip(p.message, p.norm):
            agg = adj @ h
            h = norm(h + message(torch.cat([h, agg, gl.expand(h.shape[0], -1)], dim=1)))
        summary = torch.cat([h.mean(0), h.max(0).values, gl])
        has = (target_seed >= 0).unsqueeze(1)
        seed = torch.where(has, h[target_seed.clamp(min=0)], torch.zeros_like(h[target_layer]))
        t = target_layer.shape[0]
        feats = torch.cat([h[target_layer], seed, has.to(h.dtype), summary.expand(t, -1)], dim=1)
        target = p.target_head(feats).T
        layers = h[layer_nodes]
        n_layers = layer_nodes.shape[0]
        template = p.template_head(torch.cat([layers, summary.expand(n_layers, -1)], dim=1))
        k = p.template_embed.weight.shape[0]
        sfeats = torch.cat([layers.unsqueeze(1).expand(-1, k, -1),
                            p.template_embed.weight.unsqueeze(0).expand(n_layers, -1, -1),
                            summary.expand(n_layers, k, -1)], dim=2)
        return p.value_head(summary).reshape(1), p.op_head(summary), target, template, p.size_head(sfeats)


def onnx_inputs(g: EncodedGraph) -> tuple[Tensor, ...]:
    """:class:`DenseGraphNet`'s inputs for ``g`` (Go builds the same from its encoding)."""
    n = g.x.shape[0]
    src, dst = g.edges
    adj = torch.zeros(n, n, dtype=torch.float64).index_put_((dst, src), torch.ones(src.shape[0], dtype=torch.float64),
                                                           accumulate=True)
    adj = (adj / adj.sum(1, keepdim=True).clamp(min=1)).to(torch.float32)
    return g.x, adj, g.glob, torch.arange(g.layers, dtype=torch.int64), g.target_layer, g.target_seed


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(policy: GraphPolicy, path: str) -> None:
    """Write ``policy`` as :class:`DenseGraphNet` to ``path`` (opset :data:`ONNX_OPSET`, dynamic N, E, L, T;
    needs ``onnx`` and ``onnxscript``, the ``dev`` and ``onnx`` extras)."""
    net = DenseGraphNet(policy).eval()
    n, layers, t = 5, 3, 6
    example = (torch.randn(n, policy.node_features), torch.full((n, n), 1.0 / n), torch.randn(policy.global_features),
               torch.arange(layers, dtype=torch.int64), torch.arange(t, dtype=torch.int64) // 2,
               torch.tensor([3, -1, 4, -1, -1, -1], dtype=torch.int64))
    dn, dl, dt = torch.export.Dim("nodes"), torch.export.Dim("layers"), torch.export.Dim("targets")
    shapes = ({0: dn}, {0: dn, 1: dn}, None, {0: dl}, {0: dt}, {0: dt})
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registration.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(net, example, input_names=["x", "adj", "glob", "layer_nodes", "target_layer",
                                                                   "target_seed"],
                                        output_names=["value", "op", "target", "template", "size"],
                                        opset_version=ONNX_OPSET, dynamo=True, dynamic_shapes=shapes, verbose=False)
        finally:
            registration.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    tmp = f"{path}.tmp"
    program.save(tmp)
    os.replace(tmp, path)
