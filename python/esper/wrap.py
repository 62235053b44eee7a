"""wrap: turns chosen modules of a model into Kasmina layers, in place (like PEFT's ``get_peft_model``).

::

    model = esper.wrap(model, target_modules=["blocks.*.mlp.fc2", nn.Conv2d], seeds_per_layer=2)
    esper.kasmina_layers(model)   # [(name, KasminaLayer), ...] in module order: the Go layer index

A target is a name pattern (``fnmatch`` on qualified names such as ``"blocks.*.mlp.fc2"``; an exact
name is a pattern too), a module type, or a predicate ``(name, module) -> bool``. Which kind of
host a matched module becomes is decided by :data:`DISPATCHERS`, an ordered list whose first match
wins: a module declared in ``block_modules``, then in ``residual_modules``, then ``nn.Linear``,
``nn.Conv1d``, ``nn.Conv2d``.

Some modules are used by their parent through their parameters, not through their forward:
``nn.MultiheadAttention`` reads ``out_proj.weight`` and ``out_proj.bias`` and never calls
``out_proj``, so a seed there would never run (and a wrapper without those attributes breaks the
parent). :data:`PARAMETER_ONLY` lists them. Such a module is never wrapped by a type or a predicate
(``target_modules=[nn.Linear]`` skips ``self_attn.out_proj`` silently), and naming it in a pattern
raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

from torch import nn

from .convpair import ConvPairLike, plan_pairs, splice
from .kasmina import HostSpec, KasminaLayer, kasmina_layers, refuse_seeds_not_built

__all__ = ["DISPATCHERS", "PARAMETER_ONLY", "Candidate", "Target", "host_spec", "host_specs", "kasmina_layers", "wrap"]

#: A name pattern, a module type, or a predicate ``(qualified name, module) -> bool``.
Target = Union[str, type, Callable[[str, nn.Module], bool]]

_SUPPORTED = ("nn.Linear, nn.Conv1d, nn.Conv2d, a module declared in residual_modules "
              "(its output has its input's shape), or a module declared in block_modules "
              "(it maps (*, in) to (*, out), e.g. a whole MLP)")


#: (parent type, attribute): children their parent uses through their parameters and never calls.
#: From PyTorch: nn.MultiheadAttention's ``out_proj`` (its forward passes ``out_proj.weight`` and
#: ``.bias`` to ``F.multi_head_attention_forward`` or a fused kernel), and nn.LinearCrossEntropyLoss's
#: ``linear`` (its weight is reshaped and passed to ``F.linear_cross_entropy``), where torch has it.
#: Append your own pairs for modules of yours that do the same.
PARAMETER_ONLY: list[tuple[type, str]] = [(nn.MultiheadAttention, "out_proj")] + (
    [(nn.LinearCrossEntropyLoss, "linear")] if hasattr(nn, "LinearCrossEntropyLoss") else [])

# PyTorch's class for an attention output projection used through its parameters: the marker of one
# anywhere, e.g. in a copy of nn.MultiheadAttention.
_PARAMETER_ONLY_TYPES: tuple[type, ...] = (nn.modules.linear.NonDynamicallyQuantizableLinear,)


def _parameter_only(model: nn.Module) -> dict[str, str]:
    """Qualified name -> why, for every module its parent uses through its parameters only."""
    modules = dict(model.named_modules())
    found = {}
    for name, module in modules.items():
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        for parent_type, attribute in PARAMETER_ONLY:
            if isinstance(parent, parent_type) and child == attribute:
                found[name] = (f"its parent {type(parent).__name__} uses it through its parameters and never "
                               "calls its forward")
                break
        else:
            if isinstance(module, _PARAMETER_ONLY_TYPES):
                found[name] = (f"it is a {type(module).__name__}, which PyTorch uses for attention output "
                               "projections read through their parameters, never called")
    return found


@dataclass
class Candidate:
    """A module a target matched, as the dispatchers see it.

    Attributes:
        name: its qualified name.
        module: the module.
        residual: declared in ``residual_modules``.
        residual_dim: the dim given for it, when ``residual_modules`` is a mapping.
        block: declared in ``block_modules``.
        block_dims: the (in, out) given for it, when ``block_modules`` is a mapping.
    """

    name: str
    module: nn.Module
    residual: bool = False
    residual_dim: int | None = None
    block: bool = False
    block_dims: tuple[int, int] | None = None


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _feature_module(module: nn.Module) -> tuple[int, bool] | None:
    """(dim, channel_first) read off the first submodule that names its input width."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.in_features, False
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels, True
        if isinstance(m, nn.LayerNorm) and m.normalized_shape:
            return m.normalized_shape[-1], False
        if isinstance(m, nn.GroupNorm):
            return m.num_channels, True
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            return m.num_features, True
        if isinstance(m, nn.MultiheadAttention):
            return m.embed_dim, False
    return None


def _dispatch_residual(c: Candidate) -> HostSpec | None:
    if not c.residual:
        return None
    found = _feature_module(c.module)
    if c.residual_dim is None and found is None:
        raise ValueError(f"cannot infer the feature dim of residual module {c.name!r} ({type(c.module).__name__}): "
                         f"declare it as residual_modules={{{c.name!r}: dim}}")
    dim = c.residual_dim if c.residual_dim is not None else found[0]
    channel_first = found[1] if found is not None else False
    return HostSpec(c.name, "residual", dim, dim, params=_params(c.module), channel_first=channel_first)


def _block_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a block read off its first and last nn.Linear, in module order."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    return linears[0].in_features, linears[-1].out_features


def _dispatch_block(c: Candidate) -> HostSpec | None:
    if not c.block:
        return None
    dims = c.block_dims if c.block_dims is not None else _block_dims(c.module)
    if dims is None:
        raise ValueError(f"cannot infer (in, out) of block module {c.name!r} ({type(c.module).__name__}): "
                         f"declare it as block_modules={{{c.name!r}: (in, out)}}")
    return HostSpec(c.name, "block", int(dims[0]), int(dims[1]), params=_params(c.module))


def _dispatch_linear(c: Candidate) -> HostSpec | None:
    m = c.module
    if not isinstance(m, nn.Linear):
        return None
    return HostSpec(c.name, "linear", m.in_features, m.out_features, params=_params(m))


def _square(c: Candidate, what: str, value: tuple[int, ...]) -> int:
    if len(set(value)) != 1:
        raise ValueError(f"module {c.name!r}: {what} {value} is not square; conv hosts need one {what} per dim")
    return value[0]


def _dispatch_conv(c: Candidate) -> HostSpec | None:
    m = c.module
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return None
    kind = "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"
    if any(d != 1 for d in m.dilation):
        raise ValueError(f"module {c.name!r} ({type(m).__name__}): dilation {m.dilation} is not supported, "
                         "conv hosts need dilation 1")
    kernel = _square(c, "kernel", m.kernel_size)
    stride = _square(c, "stride", m.stride)
    if m.padding == "valid":
        padding = 0
    elif m.padding == "same":
        if kernel % 2 == 0:
            raise ValueError(f"module {c.name!r}: padding 'same' with the even kernel {kernel} is asymmetric; "
                             "conv hosts need symmetric padding")
        padding = (kernel - 1) // 2
    else:
        padding = _square(c, "padding", tuple(m.padding))
    return HostSpec(c.name, kind, m.in_channels, m.out_channels, kernel=kernel, stride=stride, padding=padding,
                    params=_params(m))


#: The ordered dispatchers: each returns a HostSpec for a candidate it handles, or None; first match wins.
DISPATCHERS: list[Callable[[Candidate], HostSpec | None]] = [
    _dispatch_block, _dispatch_residual, _dispatch_linear, _dispatch_conv,
]


def host_spec(candidate: Candidate) -> HostSpec:
    """The host spec of a matched module, from the first dispatcher that handles it.

    Raises:
        ValueError: no dispatcher handles the module; the message names the supported kinds.
    """
    for dispatch in DISPATCHERS:
        spec = dispatch(candidate)
        if spec is not None:
            return spec
    raise ValueError(f"module {candidate.name!r} ({type(candidate.module).__name__}) cannot be wrapped: "
                     f"supported are {_SUPPORTED}")


def _as_list(targets: Target | Sequence[Target] | None) -> list[Target]:
    if targets is None:
        return []
    if isinstance(targets, (str, type)) or callable(targets):
        return [targets]
    return list(targets)


def _matches(target: Target, name: str, module: nn.Module) -> bool:
    if isinstance(target, str):
        return fnmatch.fnmatchcase(name, target)
    if isinstance(target, type):
        return isinstance(module, target)
    if callable(target):
        return bool(target(name, module))
    raise TypeError(f"a target is a name pattern, a module type or a predicate (name, module) -> bool, "
                    f"got {target!r}")


def _describe(target: Target) -> str:
    return target.__name__ if isinstance(target, type) else repr(target)


def _no_match(target: Target, names: list[str], model: nn.Module) -> ValueError:
    if isinstance(target, str):
        close = difflib.get_close_matches(target, names, n=5, cutoff=0.4) or names[:5]
        return ValueError(f"target {target!r} matches no module; closest names: {close}")
    if isinstance(target, type):
        kinds = sorted({type(m).__name__ for name, m in model.named_modules() if name})
        return ValueError(f"target {target.__name__} matches no module; the model holds {kinds}")
    return ValueError(f"target predicate {target!r} matches no module")


def wrap(model: nn.Module, target_modules: Target | Sequence[Target] | None = None, *, seeds_per_layer: int = 1,
         residual_modules: Sequence[Target] | Mapping[str, int] | None = None,
         block_modules: Sequence[Target] | Mapping[str, tuple[int, int]] | None = None,
         conv_pairs: ConvPairLike | Sequence[ConvPairLike] | Mapping[str, str] | None = None) -> nn.Module:
    """Replaces every targeted module with a :class:`KasminaLayer` holding it, in place.

    Args:
        model: the model; modified in place and returned.
        target_modules: targets (patterns, types, predicates) of the modules to wrap.
        seeds_per_layer: seed slots per wrapped layer.
        residual_modules: modules to wrap as residual hosts (output shape equals input shape);
            targets like ``target_modules`` (wrapped too), or a mapping ``pattern -> dim`` when
            the dim cannot be read off the module's first Linear, Conv or norm.
        block_modules: modules to wrap as block hosts, mapping ``(*, in)`` to ``(*, out)`` (a
            whole MLP, say: a seed then adds hidden units beside it); targets, or a mapping
            ``pattern -> (in, out)`` when they cannot be read off its first and last nn.Linear.
        conv_pairs: conv pairs to wrap for width growth (:mod:`esper.convpair`): ``(producer,
            consumer)`` names of convs in one nn.Sequential with at most an elementwise activation
            between them, or names of nn.Sequential modules that are such a pair;
            :func:`esper.find_conv_pairs` lists them. Seeds there add channels between the two convs.
            Targets of ``target_modules`` skip the pairs' members.

    Returns:
        The model.

    Raises:
        ValueError: the model is already wrapped; nothing to wrap; a target matches no module
            (the message lists the closest names); a matched module is of an unsupported kind,
            is the root, is shared under several names, or lies inside another matched module;
            a name pattern matches a module its parent uses through its parameters
            (:data:`PARAMETER_ONLY`; types and predicates skip those silently); a conv pair is not one
            (the message says why, e.g. a BatchNorm between its convs) or overlaps a target.
    """
    if any(isinstance(m, KasminaLayer) for m in model.modules()):
        raise ValueError("the model is already wrapped (it holds Kasmina layers); wrap a model once")
    if seeds_per_layer < 1:
        raise ValueError(f"seeds_per_layer must be >= 1, got {seeds_per_layer}")
    targets = _as_list(target_modules)
    residual_dims: dict[str, int] = {}
    if isinstance(residual_modules, Mapping):
        residual_dims = dict(residual_modules)
        residual = list(residual_dims)
    else:
        residual = _as_list(residual_modules)
    block_dims: dict[str, tuple[int, int]] = {}
    if isinstance(block_modules, Mapping):
        block_dims = {k: tuple(v) for k, v in block_modules.items()}
        block = list(block_dims)
    else:
        block = _as_list(block_modules)
    plans = plan_pairs(model, conv_pairs) if conv_pairs is not None else []
    members = {m for plan in plans for m in plan.member_names()}
    if not targets and not residual and not block and not plans:
        raise ValueError("nothing to wrap: give target_modules, residual_modules, block_modules or conv_pairs")
    named = [(name, m) for name, m in model.named_modules() if name]
    names = [name for name, _ in named]
    parameter_only = _parameter_only(model)
    hits: dict[int, int] = {}
    for i, target in enumerate(targets + residual + block):
        hits[i] = 0
        skipped = []
        for name, module in named:
            if _matches(target, name, module):
                if name in parameter_only:
                    if isinstance(target, str):
                        raise ValueError(f"module {name!r} (matched by {target!r}) cannot be wrapped: "
                                         f"{parameter_only[name]}, so a seed there would never run; wrap the "
                                         "module around it with residual_modules, or other layers")
                    skipped.append(name)
                    continue
                hits[i] += 1
        if not hits[i]:
            if skipped:
                raise ValueError(f"target {_describe(target)} matches only modules their parent uses through "
                                 f"their parameters, which are never wrapped: {skipped}")
            if _matches(target, "", model):
                raise ValueError(f"target {target!r} matches only the root module, which cannot be replaced; "
                                 "wrap a model that contains it")
            raise _no_match(target, names, model)
    candidates: list[Candidate] = []
    for name, module in named:
        if name in parameter_only or name in members:
            continue  # never wrapped by a type or a predicate; a pattern naming one was refused above
        declared = [t for t in residual if _matches(t, name, module)]
        blocks = [t for t in block if _matches(t, name, module)]
        if declared or blocks or any(_matches(t, name, module) for t in targets):
            dim = next((residual_dims[t] for t in declared if isinstance(t, str) and t in residual_dims), None)
            dims = next((block_dims[t] for t in blocks if isinstance(t, str) and t in block_dims), None)
            candidates.append(Candidate(name, module, residual=bool(declared), residual_dim=dim,
                                        block=bool(blocks), block_dims=dims))
    for outer in candidates:
        for inner in candidates:
            if inner.name.startswith(outer.name + "."):
                raise ValueError(f"targets overlap: {inner.name!r} lies inside {outer.name!r}; wrap one of them")
        for member in members:
            if member.startswith(outer.name + ".") or outer.name.startswith(member + "."):
                raise ValueError(f"targets overlap: conv pair member {member!r} and target {outer.name!r}; wrap one "
                                 "of them")
    chosen = {id(c.module) for c in candidates} | {id(model.get_submodule(m)) for m in members}
    seen: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in chosen and seen.setdefault(id(m), name) != name:
            raise ValueError(f"module {seen[id(m)]!r} is shared as {name!r}; shared modules cannot be wrapped")
    specs = [host_spec(c) for c in candidates]  # every check before any change
    for c, spec in zip(candidates, specs):
        parent_name, _, child = c.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, KasminaLayer(c.module, spec, num_slots=seeds_per_layer))
    for plan in plans:
        splice(plan, seeds_per_layer)
    # A state dict with seeds is loaded after morph.load_state_dict rebuilt them: refuse it before
    # any tensor is written otherwise.
    model.register_load_state_dict_pre_hook(refuse_seeds_not_built)
    return model


def host_specs(model: nn.Module) -> list[dict]:
    """The ``layers`` entries of the Go session config, in session order (see :meth:`HostSpec.to_dict`).

    Raises:
        ValueError: a channel-first residual host has not run a forward yet (its extents are unknown).
    """
    return [layer.spec.to_dict() for _, layer in kasmina_layers(model)]
