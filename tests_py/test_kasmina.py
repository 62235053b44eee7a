"""Kasmina layers: one table of tiny models run through generic checks (CPU, and CUDA where present),
then the layer's own mechanics: dormant forward, failures, health signals, state handling."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.export import export
from esper.kasmina import (
    LIVE_STATES,
    SIGNALS,
    FailureKind,
    KasminaLayer,
    SeedState,
    collect_failures,
    gather_signals,
    kasmina_layers,
    set_sampling,
)
from esper.tezzeret import build_seed
from esper.wrap import wrap

# ---------------------------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 8) -> (B, 4)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    """Conv2d (stride 2), Conv2d, then the rows as a sequence through a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.seq = nn.Conv1d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) -> (B, 3)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))  # (B, 4, 4, 4)
        x = F.relu(self.seq(x.flatten(2)))  # (B, 6, 16)
        return self.head(x.mean(dim=2))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(8, 2)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8) -> (B, 3)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


# ---------------------------------------------------------------------------------------------- seeds


def _lin(op_id: str, src: str, i: int, o: int, bias: bool = True, zero: bool = False) -> dict:
    attrs = {"in": i, "out": o, "bias": bias, **({"init": "zero"} if zero else {})}
    return {"id": op_id, "op": "linear", "inputs": [src], "attrs": attrs}


def _conv(nd: int, op_id: str, src: str, i: int, o: int, k: int, s: int, p: int, zero: bool = False) -> dict:
    attrs = {"in": i, "out": o, "kernel": k, "stride": s, "padding": p, "groups": 1, "bias": True,
             **({"init": "zero"} if zero else {})}
    return {"id": op_id, "op": f"conv{nd}d", "inputs": [src], "attrs": attrs}


def seed_irs(layer: KasminaLayer) -> list[dict]:
    """Two template-like IRs for a layer's host: slot 0 and slot 1."""
    host = layer.spec.host_ir()
    kind, i, o = host["kind"], host.get("in", host.get("dim")), host.get("out", host.get("dim"))

    def ir(ops: list[dict]) -> dict:
        return {"version": 1, "host": host, "ops": ops, "output": ops[-1]["id"]}

    if kind == "linear":
        return [ir([_lin("fc1", "x", i, 5), {"id": "act", "op": "relu", "inputs": ["fc1"]},
                    _lin("fc2", "act", 5, o, zero=True)]),
                ir([_lin("down", "x", i, 2, bias=False), _lin("up", "down", 2, o, bias=False, zero=True)])]
    if kind in ("conv1d", "conv2d"):
        nd, k, s, p = int(kind[4]), host["kernel"], host["stride"], host["padding"]
        return [ir([_conv(nd, "c1", "x", i, 3, k, s, p), {"id": "act", "op": "gelu", "inputs": ["c1"]},
                    _conv(nd, "c2", "act", 3, o, 3, 1, 1, zero=True)]),
                ir([_conv(nd, "proj", "x", i, o, k, s, p, zero=True)])]
    return [ir([{"id": "norm", "op": "layernorm", "inputs": ["x"], "attrs": {"dim": i}}, _lin("fc1", "norm", i, 6),
                {"id": "act", "op": "silu", "inputs": ["fc1"]}, _lin("fc2", "act", 6, o, zero=True)]),
            ir([{"id": "attn", "op": "attention", "inputs": ["x"], "attrs": {"dim": i, "heads": 2, "init": "zero"}}])]


# ---------------------------------------------------------------------------------------------- the table


@dataclass
class Case:
    name: str
    model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    targets: list
    residual: list | None = None


CASES = [
    Case("mlp", MLP, (4, 8), [nn.Linear]),
    Case("cnn", CNN, (2, 3, 8, 8), [nn.Conv2d, "seq"]),
    Case("transformer", Transformer, (2, 5, 8), [], residual=["blocks.*.mlp"]),
]


def build(case: Case, device: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(reference model, wrapped copy, input), on device."""
    torch.manual_seed(0)
    ref = case.model().to(device)
    wrapped = wrap(copy.deepcopy(ref), target_modules=case.targets, seeds_per_layer=2,
                   residual_modules=case.residual)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1)).to(device)
    return ref, wrapped, x


def layers(model: nn.Module) -> list[KasminaLayer]:
    return [layer for _, layer in kasmina_layers(model)]


def germinate(model: nn.Module, x: torch.Tensor, state: str = "TRAINING", alpha: float | None = None,
              nonzero: bool = False) -> list[nn.Module]:
    """Adds a seed to every slot of every layer and moves it to state; returns the seeds."""
    model(x)  # residual hosts learn their layout at the first forward
    seeds = []
    for layer in layers(model):
        w = layer.base_layer.weight if hasattr(layer.base_layer, "weight") else next(layer.base_layer.parameters())
        for slot, ir in enumerate(seed_irs(layer)):
            seed = build_seed(ir, device=w.device, dtype=w.dtype)
            if nonzero:
                g = torch.Generator().manual_seed(10 + slot)
                with torch.no_grad():
                    for p in seed.parameters():
                        p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.3)
            layer.add_seed(slot, seed)
            for s in ("TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"):
                if SeedState[state] < SeedState[s]:
                    break
                layer.set_state(slot, s, 0.5 if s == "BLENDING" else None)
            if state == "BLENDING" and alpha is not None:
                layer.set_state(slot, "BLENDING", alpha)
            seeds.append(seed)
    return seeds


def host_params(ref: nn.Module, wrapped: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """(name, reference parameter, the wrapped model's host parameter) for every reference parameter."""
    names = {name for name, _ in kasmina_layers(wrapped)}
    mine = dict(wrapped.named_parameters())
    out = []
    for name, p in ref.named_parameters():
        owner = next((n for n in names if name.startswith(n + ".")), None)
        key = name if owner is None else f"{owner}.base_layer.{name[len(owner) + 1:]}"
        out.append((name, p, mine[key]))
    return out


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) ** 2).mean()


# ---------------------------------------------------------------------------------------------- checks


def check_dormant_is_bit_identical(case: Case, device: str) -> None:
    ref, wrapped, x = build(case, device)
    assert all(layer.is_dormant or layer.spec.kind == "residual" for layer in layers(wrapped))
    for mode in (True, False):
        ref.train(mode)
        wrapped.train(mode)
        assert torch.equal(wrapped(x), ref(x))
    assert all(layer.is_dormant for layer in layers(wrapped))  # residual hosts too, after the first forward
    ref.train()
    wrapped.train()
    loss_of(ref, x).backward()
    loss_of(wrapped, x).backward()
    for name, p, q in host_params(ref, wrapped):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), name
    ref_keys, keys = set(ref.state_dict()), set(wrapped.state_dict())
    assert len(ref_keys) == len(keys) and all(any(k.startswith(n + ".base_layer.") for k in keys)
                                              for n, _ in kasmina_layers(wrapped))


def check_germination_changes_nothing(case: Case, device: str) -> None:
    ref, wrapped, x = build(case, device)
    expected = ref(x)
    germinate(wrapped, x, state="GERMINATED")
    assert torch.equal(wrapped(x), expected)
    for layer in layers(wrapped):
        for slot in range(2):
            layer.set_state(slot, "TRAINING")
    assert torch.equal(wrapped(x), expected)
    _, wrapped, _ = build(case, device)
    germinate(wrapped, x, state="TRAINING", nonzero=True)  # straight-through: 0 in value even when s != 0
    assert torch.equal(wrapped(x), expected)
    wrapped.eval()
    assert torch.equal(wrapped(x), ref.eval()(x))


def check_training_grads(case: Case, device: str) -> None:
    ref, wrapped, x = build(case, device)
    seeds = germinate(wrapped, x, state="TRAINING", nonzero=True)
    loss_of(ref, x).backward()
    loss_of(wrapped, x).backward()
    for name, p, q in host_params(ref, wrapped):
        assert torch.equal(p.grad, q.grad), name
    for seed in seeds:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())
    _, wrapped, _ = build(case, device)
    seeds = germinate(wrapped, x, state="TRAINING")  # zero-initialised, as germinated: the last op learns
    loss_of(wrapped, x).backward()
    for seed in seeds:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())


def check_blending(case: Case, device: str) -> None:
    _, wrapped, x = build(case, device)
    germinate(wrapped, x, state="BLENDING", alpha=0.3, nonzero=True)
    for layer in layers(wrapped):
        layer.set_state(1, "HOLDING")
    seen: dict[KasminaLayer, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0], out)))
             for layer in layers(wrapped)]
    for mode in (True, False):
        wrapped.train(mode)
        wrapped(x)
        for layer in layers(wrapped):
            inp, out = seen[layer]
            expected = layer.base_layer(inp) + 0.3 * layer.seed(0)(inp) + layer.seed(1)(inp)
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)  # y + a*s is one fused kernel
            assert not torch.equal(out, layer.base_layer(inp))
    for h in hooks:
        h.remove()


def check_fossilize_and_export(case: Case, device: str) -> None:
    ref, wrapped, x = build(case, device)
    seeds = germinate(wrapped, x, state="FOSSILIZED", nonzero=True)
    assert not any(p.requires_grad for s in seeds for p in s.parameters())
    wrapped.eval()
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    expected = wrapped(x)
    assert not torch.allclose(expected, ref.eval()(x))
    plain = export(wrapped)
    assert not [m for m in plain.modules() if type(m).__module__.startswith("esper")]
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    assert layers(wrapped) and torch.equal(wrapped(x), expected)  # the original is untouched
    assert all(torch.equal(v, wrapped.state_dict()[k]) for k, v in before.items())


def check_remove_seed(case: Case, device: str) -> None:
    ref, wrapped, x = build(case, device)
    count = sum(p.numel() for p in wrapped.parameters())
    seeds = germinate(wrapped, x, state="HOLDING", nonzero=True)
    assert sum(p.numel() for p in wrapped.parameters()) > count
    removed = []
    for layer in layers(wrapped):
        for slot in range(2):
            removed += layer.remove_seed(slot)
        assert layer.is_dormant and layer.state(0) == SeedState.DORMANT and len(layer.seeds) == 0
    assert {id(p) for p in removed} == {id(p) for s in seeds for p in s.parameters()}
    assert not {id(p) for p in removed} & {id(p) for p in wrapped.parameters()}
    assert sum(p.numel() for p in wrapped.parameters()) == count
    assert torch.equal(wrapped(x), ref(x))


class BadSeed(nn.Module):
    """A working seed whose output is then broken in one way."""

    def __init__(self, inner: nn.Module, how: str) -> None:
        super().__init__()
        self.inner = inner
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.inner(x)
        if self.how == "raise":
            raise RuntimeError("kernel exploded")
        if self.how == "nan":
            return s * float("nan")
        if self.how == "inf":
            return s + float("inf")
        return s[..., :-1]  # wrong shape


FAILURES = {"raise": FailureKind.EXCEPTION, "nan": FailureKind.NONFINITE, "inf": FailureKind.NONFINITE,
            "shape": FailureKind.SHAPE}


def check_failing_seed(case: Case, device: str, how: str = "nan", state: str = "BLENDING") -> None:
    ref, wrapped, x = build(case, device)
    wrapped(x)
    index, layer = len(layers(wrapped)) - 1, layers(wrapped)[-1]  # its input carries the host's gradient
    w = next(layer.base_layer.parameters())
    layer.add_seed(0, BadSeed(build_seed(seed_irs(layer)[0], device=w.device, dtype=w.dtype), how))
    layer.set_state(0, "TRAINING")
    if state != "TRAINING":
        layer.set_state(0, "BLENDING", 0.5)
    loss_ref = loss_of(ref, x)
    loss = loss_of(wrapped, x)
    assert torch.equal(loss, loss_ref)
    loss_ref.backward()
    loss.backward()
    for name, p, q in host_params(ref, wrapped):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), name
    failures = collect_failures(wrapped)
    assert [(i, f.slot, f.kind) for i, f in failures] == [(index, 0, FAILURES[how])]
    assert collect_failures(wrapped) == []


CHECKS = [check_dormant_is_bit_identical, check_germination_changes_nothing, check_training_grads, check_blending,
          check_fossilize_and_export, check_remove_seed, check_failing_seed]
CASE_IDS = [c.name for c in CASES]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__[6:] for c in CHECKS])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_generic(case: Case, check: Callable[[Case, str], None]) -> None:
    check(case, "cpu")


@pytest.mark.parametrize("state", ["TRAINING", "BLENDING"])
@pytest.mark.parametrize("how", list(FAILURES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_failing_seed_falls_back_to_the_host(case: Case, how: str, state: str) -> None:
    check_failing_seed(case, "cpu", how, state)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_generic_on_cuda(case: Case) -> None:
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        for check in CHECKS:
            check(case, "cuda")
        for how in FAILURES:
            check_failing_seed(case, "cuda", how, "BLENDING")
        # A live step (training seeds, a NaN seed, signal taps) never synchronises with the GPU.
        ref, wrapped, x = build(case, "cuda")
        germinate(wrapped, x, state="TRAINING")
        layer = layers(wrapped)[-1]
        layer.remove_seed(0)
        w = next(layer.base_layer.parameters())
        layer.add_seed(0, BadSeed(build_seed(seed_irs(layer)[0], device=w.device, dtype=w.dtype), "nan"))
        layer.set_state(0, "TRAINING")
        layer.set_state(0, "BLENDING", 0.5)
        loss_of(wrapped, x).backward()  # warm-up: lazy CUDA initialisation may synchronise
        torch.cuda.synchronize()
        set_sampling(wrapped, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "synchronization debug mode is a prototype feature"
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(3):
                    loss_of(wrapped, x).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert collect_failures(wrapped)[-1][1].kind == FailureKind.NONFINITE
        assert torch.isfinite(gather_signals(wrapped)).all()
    finally:
        torch.backends.cudnn.deterministic = deterministic


@pytest.mark.cuda
def test_moving_a_wrapped_model_moves_its_device_state() -> None:
    _, wrapped, x = build(CASES[0], "cpu")
    germinate(wrapped, x, state="HOLDING", nonzero=True)
    wrapped.fc3.remove_seed(0)
    wrapped.fc3.add_seed(0, BadSeed(build_seed(seed_irs(wrapped.fc3)[0]), "inf"))
    wrapped.fc3.set_state(0, "TRAINING")
    wrapped.fc3.set_state(0, "BLENDING", 0.5)
    wrapped(x)  # one failure counted on the CPU, carried over by .cuda()
    wrapped.cuda()
    set_sampling(wrapped, True)
    loss_of(wrapped, x.cuda()).backward()
    assert wrapped.fc1._signals.is_cuda and wrapped.fc1._bad.is_cuda
    assert torch.isfinite(gather_signals(wrapped)).all()
    failures = collect_failures(wrapped)
    assert [(i, f.slot, f.kind) for i, f in failures] == [(2, 0, FailureKind.NONFINITE)]
    assert failures[0][1].message == "non-finite output in 2 of 2 forward passes"


# ---------------------------------------------------------------------------------------------- mechanics


def test_dormant_forward_is_the_hosts_own_and_survives_deepcopy() -> None:
    _, wrapped, x = build(CASES[0], "cpu")
    layer = wrapped.fc1
    assert layer.is_dormant and layer.forward == layer.base_layer.forward
    twin = copy.deepcopy(wrapped)
    assert twin.fc1.forward.__self__ is twin.fc1.base_layer
    with torch.no_grad():
        twin.fc1.base_layer.weight.add_(1.0)
    assert not torch.equal(twin(x), wrapped(x))
    germinate(wrapped, x, state="TRAINING")
    assert not layer.is_dormant
    twin = copy.deepcopy(wrapped)
    assert not twin.fc1.is_dormant and twin.fc1.seed(0) is not layer.seed(0)
    assert torch.equal(twin(x), wrapped(x))
    twin.eval()
    assert twin.fc1.training is False and torch.equal(twin(x), wrapped.eval()(x))


def test_hooks_while_dormant() -> None:
    x = torch.randn(2, 8)
    calls: list[str] = []
    plain = wrap(MLP(), target_modules=["fc1"])
    plain.fc1.register_forward_hook(lambda *_: calls.append("on layer"))
    plain.fc1.base_layer.register_forward_hook(lambda *_: calls.append("on base"))
    plain(x)
    assert calls == ["on layer"]  # a base-layer hook added while dormant is bypassed...
    calls.clear()
    plain.fc1.set_sampling(True)
    plain(x)
    assert calls == ["on base", "on layer"]  # ...and runs whenever the layer is live

    hooked = MLP()
    hooked.fc1.register_forward_hook(lambda *_: calls.append("before wrap"))
    wrap(hooked, target_modules=["fc1"])
    hooked.fc1.base_layer.register_forward_hook(lambda *_: calls.append("after wrap"))
    calls.clear()
    hooked(x)
    assert calls == ["before wrap", "after wrap"]  # a host with hooks is called through __call__


def test_disable_seeds_measures_contribution() -> None:
    ref, wrapped, x = build(CASES[0], "cpu")
    germinate(wrapped, x, state="HOLDING", nonzero=True)
    with_seeds = wrapped(x)
    with wrapped.fc3.disable_seeds(0):
        with wrapped.fc3.disable_seeds(0, 1):
            partial = wrapped(x)
        assert not torch.equal(wrapped(x), partial)
    assert torch.equal(wrapped(x), with_seeds)
    with wrapped.fc1.disable_seeds(), wrapped.fc2.disable_seeds(), wrapped.fc3.disable_seeds():
        assert torch.equal(wrapped(x), ref(x)) and wrapped.fc1.is_dormant
    assert wrapped.fc1.state(0) == SeedState.HOLDING and torch.equal(wrapped(x), with_seeds)


def seed_gain_by_definition(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """docs/internals.md's seed gain: || sum over rows of grad relu(P x + b)^T || with 32 features
    drawn like nn.Linear's (U(-1/sqrt(in), 1/sqrt(in)), generator seeded 0x5EED); for conv hosts
    the input at the output's stride, channels as features (these inputs are under 1024 rows)."""
    if x.ndim > 2:
        if x.shape[2:] != grad.shape[2:]:
            strides = [math.ceil(i / o) for i, o in zip(x.shape[2:], grad.shape[2:])]
            x = x[:, :, :: strides[0], :: strides[1]] if x.ndim == 4 else x[:, :, :: strides[0]]
        assert x.shape[2:] == grad.shape[2:]
        x = x.movedim(1, -1).reshape(-1, x.shape[1])
        grad = grad.movedim(1, -1).reshape(-1, grad.shape[1])
    gen = torch.Generator().manual_seed(0x5EED)
    bound = x.shape[1] ** -0.5
    weight = (torch.rand(x.shape[1], 32, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(32, generator=gen) * 2 - 1) * bound
    return torch.linalg.matrix_norm(grad.T @ torch.relu(x @ weight + bias))


def test_seed_gain_sees_what_the_input_could_still_explain() -> None:
    # Two identical hosts: one whose output gradient is a nonlinear function of its input (a seed
    # could learn it), one whose gradient is noise independent of the input (nothing to learn).
    torch.manual_seed(0)
    x = torch.randn(1000, 2)
    model = wrap(nn.Sequential(nn.Linear(2, 3), nn.Linear(2, 3)), target_modules=[nn.Linear])
    explained = torch.stack([x[:, 0].abs(), torch.relu(x[:, 1]), x.norm(dim=1)], dim=1) - 1.0
    noise = torch.randn(1000, 3)
    set_sampling(model, True)
    loss = (model[0](x) * explained).sum() / 1000 + (model[1](x) * noise).sum() / 1000
    loss.backward()
    signals = gather_signals(model).view(2, 7)
    gain, grad_norm = signals[:, SIGNALS.index("seed_gain")], signals[:, SIGNALS.index("grad_norm")]
    # The output gradients are alike in size: only the seed gain tells the layers apart.
    assert 0.5 < grad_norm[0] / grad_norm[1] < 2, grad_norm
    assert torch.isfinite(gain).all() and gain[0] > 10 * gain[1], gain


def test_signals_match_a_direct_computation() -> None:
    for case in CASES[:2]:
        _, wrapped, x = build(case, "cpu")
        captured: dict[KasminaLayer, dict[str, torch.Tensor]] = {}

        def keep(layer: KasminaLayer, args: tuple, out: torch.Tensor, captured: dict = captured) -> None:
            out.retain_grad()
            captured[layer] = {"x": args[0].detach(), "h": layer.base_layer(args[0]).detach(), "y": out}

        for layer in layers(wrapped):
            layer.register_forward_hook(keep)
        set_sampling(wrapped, True)
        assert not any(layer.is_dormant for layer in layers(wrapped))
        loss_of(wrapped, x).backward()
        got = gather_signals(wrapped).view(-1, len(SIGNALS))
        assert got.dtype == torch.float32 and got.shape == (len(layers(wrapped)), 7)
        for row, layer in zip(got, layers(wrapped)):
            xin, h, y = captured[layer]["x"], captured[layer]["h"], captured[layer]["y"]
            units = h.movedim(1, -1).reshape(-1, h.shape[1]) if h.ndim > 2 else h
            s = torch.linalg.svdvals(units[:64])
            p = s / s.sum()
            expected = [h.mean(), h.var(), (units.amax(0) <= 0).float().mean(), y.grad.norm(),
                        layer.base_layer.weight.norm(), torch.exp(-(p * p.log()).sum()),
                        seed_gain_by_definition(xin, y.grad)]
            torch.testing.assert_close(row, torch.stack(expected).float(), rtol=1e-4, atol=1e-5)
        assert torch.isnan(gather_signals(wrapped)).all()  # reset to "not measured" after a read
        wrapped(x)
        again = gather_signals(wrapped).view(-1, 7)
        assert torch.isnan(again[:, 5]).all() and torch.isnan(again[:, 3]).all()  # rank every 10th; no backward
        assert torch.isnan(again[:, 6]).all()  # the seed gain needs the backward too
        assert torch.isfinite(again[:, :3]).all()
        set_sampling(wrapped, False)
        assert all(layer.is_dormant for layer in layers(wrapped))


def test_state_api_errors() -> None:
    _, wrapped, x = build(CASES[0], "cpu")
    layer = wrapped.fc1
    with pytest.raises(ValueError, match="slot 0 holds no seed; TRAINING needs one"):
        layer.set_state(0, "TRAINING")
    with pytest.raises(ValueError, match=r"slot must be an integer in \[0, 2\), got 2"):
        layer.add_seed(2, nn.Linear(8, 16))
    with pytest.raises(ValueError, match="seed tensor 'weight' is on cpu with dtype torch.float64; expected cpu "
                                         "with dtype torch.float32"):
        layer.add_seed(0, nn.Linear(8, 16).double())
    other = {**seed_irs(wrapped.fc2)[1]}
    with pytest.raises(ValueError, match="the seed's IR was built for host"):
        layer.add_seed(0, build_seed(other))
    layer.add_seed(0, build_seed(seed_irs(layer)[0]))
    with pytest.raises(ValueError, match="slot 0 already holds a seed"):
        layer.add_seed(0, build_seed(seed_irs(layer)[0]))
    with pytest.raises(ValueError, match="unknown seed state 'GROWING'"):
        layer.set_state(0, "GROWING")
    with pytest.raises(ValueError, match=r"BLENDING needs an alpha in \[0, 1\], got None"):
        layer.set_state(0, "BLENDING")
    with pytest.raises(ValueError, match="HOLDING has alpha 1.0, got 0.5"):
        layer.set_state(0, SeedState.HOLDING, 0.5)
    layer.set_state(0, 3, 0.25)
    layer.set_alphas([0.75, 0.9])  # slot 1 is DORMANT: its alpha stays 0
    assert (layer.alpha(0), layer.alpha(1), layer.state(0)) == (0.75, 0.0, SeedState.BLENDING)
    layer.set_state(0, "FOSSILIZED")
    with pytest.raises(ValueError, match="FOSSILIZED \\(terminal\\), cannot become PRUNED"):
        layer.set_state(0, "PRUNED")
    assert len(layer.remove_seed(0)) == 4 and layer.state(0) == SeedState.DORMANT
    with pytest.raises(ValueError, match="slot 0 holds no seed"):
        layer.remove_seed(0)


def test_pruned_state_is_kept_and_the_seed_stops() -> None:
    ref, wrapped, x = build(CASES[0], "cpu")
    germinate(wrapped, x, state="HOLDING", nonzero=True)
    for layer in layers(wrapped):
        for slot in range(2):
            layer.set_state(slot, "PRUNED")
        assert layer.is_dormant
    assert torch.equal(wrapped(x), ref(x))
    wrapped.fc1.remove_seed(0)
    assert wrapped.fc1.state(0) == SeedState.PRUNED


def test_states_agree_with_the_session_module() -> None:
    session = pytest.importorskip("esper.session")
    assert tuple(s.name for s in SeedState) == session.STATES
    assert {s.name for s in LIVE_STATES} == set(session.LIVE_STATES)


def test_layer_moves_its_device_state_and_keeps_dtype() -> None:
    _, wrapped, x = build(CASES[0], "cpu")
    wrapped.double()
    assert wrapped.fc1._signals.dtype == torch.float32 and wrapped.fc1._bad.dtype == torch.int64
    set_sampling(wrapped, True)
    wrapped(x.double())
    assert torch.isfinite(gather_signals(wrapped)[:3]).all()
    assert math.isnan(float(gather_signals(wrapped)[0]))
