"""Conv pairs: width growth for conv nets (``esper.wrap(model, conv_pairs=...)``).

A *conv pair* is a producer conv, at most one elementwise activation, and the conv that consumes the
producer's channels, for example ``nn.Sequential(conv1, nn.ReLU(), conv2)``. Wrapped as one Kasmina
layer (host kind ``conv2d_pair`` or ``conv1d_pair``), its seeds *widen* it: a seed (Karn's template
``widen``, the only one Go accepts on a pair) is a conv with the producer's geometry making ``width``
new channels, the pair's activation, and a conv with the consumer's geometry reading them, without
bias and zero-initialised. Convolution is linear in its input channels and the activation acts on
each channel alone, so ``pair(x) + a * seed(x)`` is the pair with ``width`` more channels between its
convs and the consumer's new input weights scaled by ``a``: at germination the network's function is
unchanged (the seed's output is exactly 0), the seed blends in like any other, and :func:`merge_pair`
concatenates it into two plain convs at export. This is what the block host does for MLPs (a seed
there adds hidden units beside the block), with a merge.

Between producer and consumer only an elementwise activation (:data:`ACTIVATIONS`) and
``nn.Identity`` may lie. A BatchNorm there is refused: it normalises each channel with statistics of
the batch and keeps running buffers per channel, which a branch beside the pair cannot reproduce
(the block host has no pattern for it either). Pooling, dropout and other modules are refused too.

A pair is named either by ``(producer, consumer)``, siblings in one ``nn.Sequential`` (the members
from the producer through the consumer are cut out into the layer's host, an ``nn.Sequential``
keeping their names, and the layer takes the producer's place; export puts them back), or by the
name of an ``nn.Sequential`` that is exactly such a pair. :func:`find_conv_pairs` lists the pairs of
a model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from .kasmina import HostSpec, KasminaLayer, SeedState

__all__ = ["ACTIVATIONS", "ConvPairLike", "PairPlan", "accept_spliced_keys", "find_conv_pairs", "merge_pair",
           "plan_pairs", "splice", "unsplice"]

#: A conv pair as ``wrap`` takes it: ``(producer, consumer)`` names, or the name of an nn.Sequential pair.
ConvPairLike = Union[str, tuple[str, str]]

#: Module types allowed between a pair's convs, with the name Karn gives their op.
ACTIVATIONS: dict[type, str] = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh",
                                nn.Sigmoid: "sigmoid"}

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class PairPlan:
    """A conv pair found in a model, before it is wrapped.

    Attributes:
        name: the Kasmina layer's name: the producer's (spliced) or the Sequential's.
        parent: the module holding the pair: the parent Sequential (spliced) or the Sequential's parent.
        keys: the members' names in ``parent`` (spliced) or in the Sequential.
        spliced: the members are cut out of ``parent``.
        spec: the host spec.
    """

    name: str
    parent: nn.Module
    keys: list[str]
    spliced: bool
    spec: HostSpec

    def member_names(self) -> list[str]:
        """The members' qualified names in the model."""
        prefix = self.name.rpartition(".")[0] if self.spliced else self.name
        return [f"{prefix}.{k}" if prefix else k for k in self.keys]


def _conv_geometry(name: str, conv: nn.Module) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a conv a pair can hold, or ValueError with the reason."""
    what = f"conv pair member {name!r} ({type(conv).__name__})"
    if conv.groups != 1:
        raise ValueError(f"{what}: groups {conv.groups}; a pair widens ungrouped convs only (groups 1)")
    if any(d != 1 for d in conv.dilation):
        raise ValueError(f"{what}: dilation {conv.dilation}; a pair needs dilation 1")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{what}: padding_mode {conv.padding_mode!r}; a pair needs zero padding")
    for label, value in (("kernel", conv.kernel_size), ("stride", conv.stride)):
        if len(set(value)) != 1:
            raise ValueError(f"{what}: {label} {value} is not square")
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    if conv.padding == "valid":
        padding = 0
    elif conv.padding == "same":
        if kernel % 2 == 0:
            raise ValueError(f"{what}: padding 'same' with the even kernel {kernel} is asymmetric")
        padding = (kernel - 1) // 2
    else:
        if len(set(conv.padding)) != 1:
            raise ValueError(f"{what}: padding {conv.padding} is not square")
        padding = conv.padding[0]
    return kernel, stride, padding


def _pair_spec(name: str, members: list[tuple[str, nn.Module]], prefix: str, spliced: bool) -> HostSpec:
    """The host spec of members (producer, [activation / identity ...], consumer), or ValueError."""
    def qual(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    if len(members) < 2:
        raise ValueError(f"conv pair {name!r} has {len(members)} module(s); it needs a producer conv and a "
                         "consumer conv")
    (pk, producer), (ck, consumer) = members[0], members[-1]
    for key, conv, role in ((pk, producer, "producer"), (ck, consumer, "consumer")):
        if type(conv) not in (nn.Conv1d, nn.Conv2d):
            raise ValueError(f"conv pair {name!r}: the {role} {qual(key)!r} is a {type(conv).__name__}, not an "
                             "nn.Conv1d or nn.Conv2d")
    if type(producer) is not type(consumer):
        raise ValueError(f"conv pair {name!r}: the producer is a {type(producer).__name__} and the consumer a "
                         f"{type(consumer).__name__}; both must be the same kind")
    if producer.out_channels != consumer.in_channels:
        raise ValueError(f"conv pair {name!r}: the producer {qual(pk)!r} makes {producer.out_channels} channels and "
                         f"the consumer {qual(ck)!r} reads {consumer.in_channels}; the consumer must read the "
                         "producer's channels")
    activation = "identity"
    for key, m in members[1:-1]:
        if isinstance(m, _NORMS):
            raise ValueError(
                f"conv pair {name!r}: {type(m).__name__} {qual(key)!r} lies between the producer and the consumer. It "
                "normalises each channel with the batch's statistics and keeps running buffers per channel, which "
                "a seed beside the pair cannot reproduce (the width mechanism has no pattern for it). Pair convs "
                "with only an elementwise activation between them (the BatchNorm may follow the consumer), or wrap "
                "the conv alone (nn.Conv2d targets grow conv blocks beside it)")
        if type(m) is nn.Identity:
            continue
        op = ACTIVATIONS.get(type(m))
        if op is None:
            kinds = ", ".join(f"nn.{t.__name__}" for t in ACTIVATIONS)
            raise ValueError(f"conv pair {name!r}: {type(m).__name__} {qual(key)!r} lies between the producer and the "
                             f"consumer; only one elementwise activation ({kinds}) and nn.Identity may")
        if op == "gelu" and m.approximate != "none":
            raise ValueError(f"conv pair {name!r}: nn.GELU {qual(key)!r} uses approximate={m.approximate!r}; Karn's "
                             "gelu is the exact one (approximate='none')")
        if activation != "identity":
            raise ValueError(f"conv pair {name!r}: more than one activation between the producer and the consumer "
                             f"({qual(key)!r} is the second)")
        activation = op
    k, s, p = _conv_geometry(qual(pk), producer)
    k2, s2, p2 = _conv_geometry(qual(ck), consumer)
    kind = "conv1d_pair" if isinstance(producer, nn.Conv1d) else "conv2d_pair"
    params = sum(t.numel() for _, m in members for t in m.parameters())
    return HostSpec(name, kind, producer.in_channels, consumer.out_channels, kernel=k, stride=s, padding=p,
                    params=params, mid=producer.out_channels, consumer_kernel=k2, consumer_stride=s2,
                    consumer_padding=p2, activation=activation, spliced=spliced)


def plan_pairs(model: nn.Module,
               pairs: ConvPairLike | Sequence[ConvPairLike] | Mapping[str, str]) -> list[PairPlan]:
    """Finds and checks the conv pairs ``wrap`` was given, changing nothing.

    Args:
        model: the model.
        pairs: ``(producer, consumer)`` names of siblings in one nn.Sequential (or a mapping producer ->
            consumer), or names of nn.Sequential modules that are exactly a pair.

    Returns:
        One plan per pair, in the order given.

    Raises:
        ValueError: a name names no module; the members are not siblings in one nn.Sequential, or the
            consumer comes first; the pair is not a producer conv, one elementwise activation at most,
            and a consumer conv of the same kind reading the producer's channels (a BatchNorm between
            them is refused with the reason); a conv is grouped, dilated, not square or not
            zero-padded; pairs share a module.
    """
    if isinstance(pairs, Mapping):
        items: list[Any] = list(pairs.items())
    elif isinstance(pairs, str) or (isinstance(pairs, tuple) and len(pairs) == 2
                                    and all(isinstance(n, str) for n in pairs)):
        items = [pairs]  # one pair given alone
    else:
        items = list(pairs)
    modules = dict(model.named_modules())
    plans: list[PairPlan] = []
    for item in items:
        if isinstance(item, str):
            seq = modules.get(item)
            if type(seq) is not nn.Sequential or not item:
                got = "no module" if seq is None else type(seq).__name__
                raise ValueError(f"conv pair {item!r} names {got}; name a plain nn.Sequential(conv, activation, conv) "
                                 "other than the root (a subclass may run its children otherwise), or give "
                                 "(producer, consumer) names")
            members = list(seq._modules.items())
            spec = _pair_spec(item, members, item, spliced=False)
            plans.append(PairPlan(item, model.get_submodule(item.rpartition(".")[0]), [k for k, _ in members], False,
                                  spec))
            continue
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(n, str) for n in item)):
            raise ValueError(f"a conv pair is a (producer, consumer) pair of names or the name of an nn.Sequential, "
                             f"got {item!r}")
        first, last = item
        for n in (first, last):
            if n not in modules or not n:
                raise ValueError(f"conv pair {item!r}: {n!r} names no module of the model")
        parent_name, _, pk = first.rpartition(".")
        other_parent, _, ck = last.rpartition(".")
        parent = modules[parent_name]
        if parent_name != other_parent or type(parent) is not nn.Sequential:
            raise ValueError(f"conv pair {item!r}: the producer and the consumer must be children of one plain "
                             "nn.Sequential (the pair is cut out of it; a subclass may run its children otherwise); "
                             "for a model whose forward calls them, put them in an nn.Sequential(conv, activation, "
                             "conv) and name that")
        keys = list(parent._modules)
        i, j = keys.index(pk), keys.index(ck)
        if j <= i:
            raise ValueError(f"conv pair {item!r}: the consumer {last!r} does not come after the producer in "
                             f"{parent_name or 'the root'!r}")
        members = [(k, parent._modules[k]) for k in keys[i:j + 1]]
        spec = _pair_spec(first, members, parent_name, spliced=True)
        plans.append(PairPlan(first, parent, keys[i:j + 1], True, spec))
    seen: dict[str, str] = {}
    for plan in plans:
        for member in plan.member_names():
            if member in seen:
                raise ValueError(f"conv pairs {seen[member]!r} and {plan.name!r} share {member!r}; a module belongs "
                                 "to one pair")
            seen[member] = plan.name
    return plans


def accept_spliced_keys(parent: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of a Sequential that conv pairs were cut out of: a checkpoint saved
    before the model was wrapped names a member's tensors ``<prefix><member>.weight``; they are loaded
    as ``<prefix><layer>.base_layer.<member>.weight`` when the wrapped form is absent (as a Kasmina
    layer does for its host's own tensors). With no spliced layer left (after export) it does nothing."""
    for key, child in parent._modules.items():
        if not (isinstance(child, KasminaLayer) and child.spec.spliced):
            continue
        for member, module in child.base_layer._modules.items():
            for name in module.state_dict(keep_vars=True):
                old, new = f"{prefix}{member}.{name}", f"{prefix}{key}.base_layer.{member}.{name}"
                if old in state_dict and new not in state_dict:
                    state_dict[new] = state_dict.pop(old)


def _hooked(parent: nn.Module) -> bool:
    return any(getattr(h, "hook", h) is accept_spliced_keys for h in parent._load_state_dict_pre_hooks.values())


def splice(plan: PairPlan, num_slots: int) -> KasminaLayer:
    """Wraps a planned pair in place: its members go into an nn.Sequential (their names kept) held
    by a new Kasmina layer, which takes the producer's place (spliced) or the Sequential's."""
    if not plan.spliced:
        seq = plan.parent.get_submodule(plan.name.rpartition(".")[2])
        layer = KasminaLayer(seq, plan.spec, num_slots=num_slots)
        setattr(plan.parent, plan.name.rpartition(".")[2], layer)
        return layer
    mods = plan.parent._modules
    host = nn.Sequential(OrderedDict((k, mods[k]) for k in plan.keys))
    layer = KasminaLayer(host, plan.spec, num_slots=num_slots)
    items = [(k, m) for k, m in mods.items() if k not in plan.keys[1:]]
    mods.clear()
    for k, m in items:
        mods[k] = layer if k == plan.keys[0] else m
    if not _hooked(plan.parent):
        plan.parent.register_load_state_dict_pre_hook(accept_spliced_keys)
    return layer


def unsplice(parent: nn.Module, key: str, host: nn.Sequential) -> None:
    """Puts a spliced pair's members back into ``parent`` in place of its layer at ``key``."""
    mods = parent._modules
    items = list(mods.items())
    mods.clear()
    for k, m in items:
        if k == key:
            mods.update(host._modules)
        else:
            mods[k] = m
    if not any(isinstance(m, KasminaLayer) and m.spec.spliced for m in mods.values()):
        hooks = parent._load_state_dict_pre_hooks
        for handle in [h for h, hook in hooks.items() if getattr(hook, "hook", hook) is accept_spliced_keys]:
            del hooks[handle]


def _widening_convs(seed: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The (producer-side, consumer-side) convs of a widening seed, found through its IR."""
    ir: Any = getattr(seed, "ir", None)
    if not isinstance(ir, dict):
        raise ValueError(f"a conv pair merges only seeds built from a widening IR (esper.tezzeret.SeedModule), got "
                         f"{type(seed).__name__}")
    ops = {op["id"]: op for op in ir["ops"]}
    consumer = ir["output"]
    producer = next(op["id"] for op in ir["ops"] if op["inputs"] == ["x"])
    if ops[producer]["op"] not in ("conv1d", "conv2d") or ops[consumer]["op"] != ops[producer]["op"]:
        raise ValueError(f"the seed's IR is not a widening (template {ir.get('template')!r}); Go accepts only "
                         "widenings on conv pairs")
    return seed.get_submodule(producer), seed.get_submodule(consumer)


def merge_pair(layer: KasminaLayer) -> nn.Sequential:
    """The pair's host with its FOSSILIZED seeds merged in: the producer gains their channels (weights
    and biases concatenated after its own), the consumer the matching input channels (weights times
    alpha); seeds in other states are dropped. The members are modified in place and keep their types
    and names; a producer without bias gains one (zeros for its own channels) when a seed adds some.

    Raises:
        ValueError: a seed is not a widening (a module not built from Karn's widen template), or the
            merged weights are not finite (nothing is written then).
    """
    host = layer.base_layer
    assert isinstance(host, nn.Sequential) and layer.spec.is_pair
    modules = list(host._modules.values())
    producer, consumer = modules[0], modules[-1]
    grown = []
    for slot in range(layer.num_slots):
        seed = layer.seed(slot)
        if seed is not None and layer.state(slot) == SeedState.FOSSILIZED:
            grown.append((_widening_convs(seed), layer.alpha(slot)))
    if not grown:
        return host
    with torch.no_grad():
        pw = [producer.weight] + [p.weight.to(producer.weight) for (p, _), _ in grown]
        own_bias = producer.bias if producer.bias is not None else producer.weight.new_zeros(producer.out_channels)
        pb = [own_bias] + [(p.bias if p.bias is not None else own_bias.new_zeros(p.out_channels)).to(own_bias)
              for (p, _), _ in grown]
        cw = [consumer.weight] + [(alpha * c.weight).to(consumer.weight) for (_, c), alpha in grown]
        weight, bias, cweight = torch.cat(pw, 0), torch.cat(pb, 0), torch.cat(cw, 1)
        if not all(bool(torch.isfinite(t).all()) for t in (weight, bias, cweight)):
            raise ValueError(f"{layer.spec.name}: merging the fossilized seeds gives non-finite weights; nothing was "
                             "written")
        need = producer.bias is not None or any(p.bias is not None for (p, _), _ in grown)
        producer.weight = nn.Parameter(weight, requires_grad=producer.weight.requires_grad)
        if need:
            producer.bias = nn.Parameter(bias, requires_grad=producer.weight.requires_grad)
        producer.out_channels = weight.shape[0]
        consumer.weight = nn.Parameter(cweight, requires_grad=consumer.weight.requires_grad)
        consumer.in_channels = cweight.shape[1]
    return host


def find_conv_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Every ``(producer, consumer)`` pair ``wrap`` can widen: convs of one kind, consecutive in an
    nn.Sequential but for one elementwise activation (and nn.Identity), the consumer reading the
    producer's channels, both ungrouped, undilated, square and zero-padded. Pairs do not share a
    conv: in ``conv, relu, conv, relu, conv`` the first two pair up.

    Returns:
        Qualified name pairs, in module order, for ``esper.wrap(model, conv_pairs=...)``.
    """
    found: list[tuple[str, str]] = []
    for parent_name, parent in model.named_modules():
        if type(parent) is not nn.Sequential:
            continue
        items = list(parent._modules.items())
        i = 0
        while i < len(items):
            if type(items[i][1]) in (nn.Conv1d, nn.Conv2d):
                j = i + 1
                while j < len(items) and (type(items[j][1]) is nn.Identity or type(items[j][1]) in ACTIVATIONS):
                    j += 1
                if j < len(items):
                    try:
                        _pair_spec("", items[i:j + 1], parent_name, spliced=True)
                    except ValueError:
                        pass
                    else:
                        prefix = f"{parent_name}." if parent_name else ""
                        found.append((prefix + items[i][0], prefix + items[j][0]))
                        i = j + 1
                        continue
            i += 1
    return found
