"""export: a wrapped model back to a plain ``nn.Module`` (like PEFT's ``merge_and_unload``).

For each Kasmina layer of a deep copy of the model:

- FOSSILIZED seeds whose IR is a chain of linear ops, on a linear host, are merged into the host's
  weight and bias: ``W' = W + a * dW``, ``b' = b + a * db``, composed in float64 and checked finite
  before anything is written (a host without bias gains one when the seeds have a bias);
- other FOSSILIZED seeds stay as branches, each turned into a GraphModule of PyTorch modules and
  functions:

  - on a host without submodules (``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ...), the layer
    becomes its host module again, holding the seeds as ``seeds.<slot>`` and adding them to its
    output with a forward hook, a ``torch.fx.GraphModule`` (class name ``SeedBranches``) computing
    ``output + a_i * seeds.<slot>(x)``;
  - on a host with submodules (a block or residual host such as an MLP, where one more child could
    change the forward, as in ``nn.Sequential``), the layer becomes a GraphModule (class name
    ``Residual``) computing ``base_layer(x) + a_i * seeds.<slot>(x)``;
- seeds in any other state are dropped, and a layer with no branch left is its plain host module;
- a conv pair (:mod:`esper.convpair`) always merges: its FOSSILIZED seeds' channels are concatenated
  into the producer's output and the consumer's input channels (:func:`~esper.convpair.merge_pair`),
  and its members go back where they were (into the parent nn.Sequential they were cut from, under
  their own names), so the exported state_dict holds plain conv keys with the grown shapes.

So an exported leaf layer *is* its host: its attributes (``weight``, ``bias``, ``in_features``, ...)
are the host's own, its state_dict keys are the unwrapped model's (``fc.weight``, plus
``fc.seeds.0...`` for branches), and code that reads its parameters directly, as PyTorch's fused fast
paths do, sees them. Those fast paths (``nn.TransformerEncoderLayer`` in eval) skip modules with
forward hooks, so they never drop a branch. The hook lives in the module's ``_forward_hooks``: it
survives ``copy.deepcopy`` and pickling, and ``torch.compile`` runs it; ``torch.fx.symbolic_trace``
treats a leaf module such as ``nn.Linear`` as opaque and does not record its hooks, so trace an
exported model with such branches with a tracer that does not make their hosts leaves.

No Esper class remains in the result, and the model passed in is not modified.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import Tensor, fx, nn

from .convpair import merge_pair, unsplice
from .kasmina import KasminaLayer, SeedState, kasmina_layers, refuse_seeds_not_built
from .tezzeret import SeedModule, _Kronecker, _SelfAttention, is_mergeable, merged_delta

__all__ = ["export"]

_ESPER_CLASSES = (KasminaLayer, SeedModule, _SelfAttention, _Kronecker)


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


def _branches_hook(branches: list[tuple[int, nn.Module, float]]) -> fx.GraphModule:
    """A forward hook ``(host, inputs, output) -> output + sum a * seeds.<slot>(inputs[0])`` as a GraphModule
    holding the branches as ``seeds.<slot>``."""
    root = nn.Module()
    root.seeds = nn.ModuleDict({str(slot): branch for slot, branch, _ in branches})
    graph = fx.Graph()
    graph.placeholder("host")
    inputs = graph.placeholder("inputs")
    y = graph.placeholder("output")
    x = graph.call_function(operator.getitem, (inputs, 0))
    for slot, _, alpha in branches:
        s = graph.call_module(f"seeds.{slot}", (x,))
        # torch.add with alpha, as the Kasmina layer computes it (the same rounding).
        y = graph.call_function(torch.add, (y, s), {"alpha": alpha})
    graph.output(y)
    return fx.GraphModule(root, graph, class_name="SeedBranches")


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
        y = graph.call_function(torch.add, (y, s), {"alpha": alpha})
    graph.output(y)
    module = fx.GraphModule(root, graph, class_name="Residual")
    module.training = base.training
    return module


def _attach(host: nn.Module, branches: list[tuple[int, nn.Module, float]]) -> nn.Module:
    """The host with its branches as ``seeds.<slot>`` (another free name if it has a ``seeds``) and the
    hook that adds them to its output."""
    hook = _branches_hook(branches)
    name = "seeds"
    while hasattr(host, name):
        name = "_" + name
    host.add_module(name, nn.ModuleDict({str(slot): hook.get_submodule(f"seeds.{slot}") for slot, _, _ in branches}))
    host.register_forward_hook(hook)
    return host


def _export_layer(layer: KasminaLayer) -> nn.Module:
    if layer.spec.is_pair:
        return merge_pair(layer)
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
    if not branches:
        return base
    return _residual(base, branches) if any(True for _ in base.children()) else _attach(base, branches)


def export(model: nn.Module) -> nn.Module:
    """A plain copy of a wrapped model: fossilized seeds merged or kept as branches, others dropped.

    When every seed that adds to the output is FOSSILIZED (BLENDING and HOLDING seeds are dropped;
    GERMINATED and TRAINING ones add 0), the result computes what the wrapped model computes, in
    training and in eval mode, fused fast paths included (merged seeds within float rounding of the
    float64 merge).

    Args:
        model: a model returned by :func:`esper.wrap.wrap` (a model without Kasmina layers is
            simply copied).

    Returns:
        A new module holding no Esper class; ``model`` is untouched.

    Raises:
        ValueError: a merge would give non-finite weights, or a conv pair holds a seed that is not a
            widening.
    """
    out = copy.deepcopy(model)
    if isinstance(out, KasminaLayer):
        out = _export_layer(out)
    else:
        for name, layer in kasmina_layers(out):
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name)
            plain = _export_layer(layer)
            if layer.spec.is_pair and layer.spec.spliced:
                assert isinstance(plain, nn.Sequential)
                unsplice(parent, child, plain)
            else:
                setattr(parent, child, plain)
    # esper.wrap's load-state-dict check belongs to the wrapped model, not to the plain copy.
    for key, hook in list(out._load_state_dict_pre_hooks.items()):
        if getattr(hook, "hook", None) is refuse_seeds_not_built:
            del out._load_state_dict_pre_hooks[key]
    hooks = [h for m in out.modules() for h in m._forward_hooks.values() if isinstance(h, nn.Module)]
    left = [name or "<root>" for name, m in out.named_modules() if isinstance(m, _ESPER_CLASSES)]
    left += [f"a hook's {name or '<root>'}" for h in hooks for name, m in h.named_modules()
             if isinstance(m, _ESPER_CLASSES)]
    if left:
        raise ValueError(f"export left Esper modules at {left}; a seed module nests an Esper class")
    return out
