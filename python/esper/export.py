"""export: a wrapped model back to a plain ``nn.Module`` (like PEFT's ``merge_and_unload``).

For each Kasmina layer of a deep copy of the model:

- FOSSILIZED seeds whose IR is a chain of linear ops, on a linear host, are merged into the host's
  weight and bias: ``W' = W + a * dW``, ``b' = b + a * db``, composed in float64 and checked finite
  before anything is written (a host without bias gains one when the seeds have a bias);
- other FOSSILIZED seeds stay as branches: the layer becomes a ``torch.fx.GraphModule`` (class name
  ``Residual``) computing ``base_layer(x) + a_i * seeds.<slot>(x)``, each seed turned into a
  GraphModule of PyTorch modules and functions;
- seeds in any other state are dropped, and a layer with no branch left becomes its host module.

No Esper class remains in the result, and the model passed in is not modified.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import Tensor, fx, nn

from .kasmina import KasminaLayer, SeedState, kasmina_layers, refuse_seeds_not_built
from .tezzeret import SeedModule, _SelfAttention, is_mergeable, merged_delta

__all__ = ["export"]

_ESPER_CLASSES = (KasminaLayer, SeedModule, _SelfAttention)


def _merge_into_linear(host: nn.Linear, deltas: list[tuple[Tensor, Tensor, float]]) -> None:
    """Adds ``sum a * (dW, db)`` to a linear host in place, computed in float64 and checked first."""
    with torch.no_grad():
        weight = host.weight.double()
        bias = host.bias.double() if host.bias is not None else None
        for dw, db, alpha in deltas:
            weight = weight + alpha * dw.to(weight.device)
            if bias is not None or bool(db.any()):
                bias = (bias if bias is not None else torch.zeros_like(db)) + alpha * db.to(weight.device)
        if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
            raise ValueError("merging the fossilized seeds gives non-finite weights; nothing was written")
        host.weight.copy_(weight.to(host.weight.dtype))
        if host.bias is not None:
            host.bias.copy_(bias.to(host.bias.dtype))
        elif bias is not None:
            host.bias = nn.Parameter(bias.to(host.weight.dtype), requires_grad=host.weight.requires_grad)


def _residual(base: nn.Module, branches: list[tuple[int, nn.Module, float]]) -> fx.GraphModule:
    """``base(x) + sum a * branch(x)`` as a GraphModule with submodules ``base_layer`` and ``seeds.<slot>``."""
    root = nn.Module()
    root.base_layer = base
    root.seeds = nn.ModuleDict({str(slot): branch for slot, branch, _ in branches})
    graph = fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_module("base_layer", (x,))
    for slot, _, alpha in branches:
        s = graph.call_module(f"seeds.{slot}", (x,))
        if alpha != 1.0:
            s = graph.call_function(operator.mul, (s, alpha))
        y = graph.call_function(operator.add, (y, s))
    graph.output(y)
    module = fx.GraphModule(root, graph, class_name="Residual")
    module.training = base.training
    return module


def _export_layer(layer: KasminaLayer) -> nn.Module:
    base = layer.base_layer
    deltas: list[tuple[Tensor, Tensor, float]] = []
    branches: list[tuple[int, nn.Module, float]] = []
    for slot in range(layer.num_slots):
        seed = layer.seed(slot)
        if seed is None or layer.state(slot) != SeedState.FOSSILIZED:
            continue
        alpha = layer.alpha(slot)
        if layer.spec.kind == "linear" and isinstance(seed, SeedModule) and is_mergeable(seed.ir):
            dw, db = merged_delta(seed)
            deltas.append((dw, db, alpha))
        else:
            branches.append((slot, seed.to_graph_module() if isinstance(seed, SeedModule) else seed, alpha))
    if deltas:
        assert isinstance(base, nn.Linear)  # the linear dispatcher wraps only nn.Linear
        _merge_into_linear(base, deltas)
    return _residual(base, branches) if branches else base


def export(model: nn.Module) -> nn.Module:
    """A plain copy of a wrapped model: fossilized seeds merged or kept as branches, others dropped.

    In eval mode the result computes what the wrapped model computes (merged seeds within float
    rounding of the float64 merge).

    Args:
        model: a model returned by :func:`esper.wrap.wrap` (a model without Kasmina layers is
            simply copied).

    Returns:
        A new module holding no Esper class; ``model`` is untouched.

    Raises:
        ValueError: a merge would give non-finite weights.
    """
    out = copy.deepcopy(model)
    if isinstance(out, KasminaLayer):
        out = _export_layer(out)
    else:
        for name, layer in kasmina_layers(out):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name), child, _export_layer(layer))
    # esper.wrap's load-state-dict check belongs to the wrapped model, not to the plain copy.
    for key, hook in list(out._load_state_dict_pre_hooks.items()):
        if getattr(hook, "hook", None) is refuse_seeds_not_built:
            del out._load_state_dict_pre_hooks[key]
    left = [name or "<root>" for name, m in out.named_modules() if isinstance(m, _ESPER_CLASSES)]
    if left:
        raise ValueError(f"export left Esper modules at {left}; a seed module nests an Esper class")
    return out
