"""A checkpoint saved before Esper was added loads into the wrapped model.

Wrapping keeps the host as ``base_layer``, so its keys become ``<name>.base_layer.weight``; a
load-state-dict pre-hook on every Kasmina layer accepts the unwrapped form ``<name>.weight`` too
(PEFT does the same). Wrapping keeps the parameter order, so the plain run's optimizer state loads
as well.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

import esper
from esper.kasmina import KasminaLayer, _accept_unwrapped_keys

torch.set_num_threads(1)


class ConvNet(nn.Module):
    """Conv2d and Linear hosts, with a BatchNorm whose buffers sit beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 4, 4) -> (B, 5)
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


class Blocky(nn.Module):
    """A whole MLP wrapped as one block host: its keys are nested under the host."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


CASES: list[tuple[str, Callable[[], nn.Module], dict, tuple[int, ...]]] = [
    ("linear", _mlp, {"target_modules": [nn.Linear]}, (8, 4)),
    ("conv", ConvNet, {"target_modules": [nn.Conv2d, nn.Linear]}, (8, 3, 4, 4)),
    ("block", Blocky, {"block_modules": ["mlp"]}, (8, 4)),
]


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name,make,targets,shape", CASES, ids=[c[0] for c in CASES])
def test_plain_checkpoint_loads_into_wrapped_model(name: str, make: Callable[[], nn.Module], targets: dict,
                                                   shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    plain = make()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    _train(plain, plain_opt, x, 3)
    # A checkpoint is a copy (state_dict() returns the live tensors, which the plain run updates).
    model_state, optim_state = copy.deepcopy(plain.state_dict()), copy.deepcopy(plain_opt.state_dict())

    torch.manual_seed(1)  # other initial weights: the load must replace every one
    wrapped = esper.wrap(make(), **targets)
    assert any(isinstance(m, KasminaLayer) for m in wrapped.modules())
    assert not all(torch.equal(a, b) for a, b in zip(plain.parameters(), wrapped.parameters()))
    result = wrapped.load_state_dict(model_state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    plain.eval(), wrapped.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), wrapped(x))

    # Wrap keeps the parameter order: the plain run's optimizer state belongs to the same tensors.
    assert [p.shape for p in plain.parameters()] == [p.shape for p in wrapped.parameters()]
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    opt.load_state_dict(optim_state)
    for p_plain, p_wrapped in zip(plain.parameters(), wrapped.parameters()):
        for key, value in plain_opt.state[p_plain].items():
            assert torch.equal(opt.state[p_wrapped][key], value)
    plain.train(), wrapped.train()
    _train(plain, plain_opt, x, 2)
    _train(wrapped, opt, x, 2)
    for a, b in zip(plain.parameters(), wrapped.parameters()):
        assert torch.equal(a, b)  # the two runs continue identically


def test_wrapped_keys_still_win_and_the_hook_is_what_maps() -> None:
    torch.manual_seed(0)
    plain = _mlp()
    wrapped = esper.wrap(_mlp(), target_modules=[nn.Linear])
    # The wrapped form loads as before, and the unwrapped one is not applied over it.
    state = wrapped.state_dict()
    mixed = {**{k: v.clone() for k, v in state.items()}, "0.weight": torch.full_like(state["0.base_layer.weight"], 7.0)}
    with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "0.weight"'):
        wrapped.load_state_dict(mixed, strict=True)  # both forms: the extra one is reported, not merged
    assert not torch.equal(wrapped.get_submodule("0.base_layer").weight, mixed["0.weight"])
    # Negative control: without the pre-hook, the plain checkpoint does not load.
    for layer in (m for m in wrapped.modules() if isinstance(m, KasminaLayer)):
        for key, hook in list(layer._load_state_dict_pre_hooks.items()):
            if hook.hook is _accept_unwrapped_keys:
                del layer._load_state_dict_pre_hooks[key]
    with pytest.raises(RuntimeError, match="Missing key\\(s\\) in state_dict: \"0.base_layer.weight\""):
        wrapped.load_state_dict(plain.state_dict(), strict=True)


def test_plain_checkpoint_loads_after_seeds_exist() -> None:
    """Adding Esper mid-project: the plain checkpoint loads into a wrapped model whose seeds were
    rebuilt first; the seeds' own keys are then the only ones it lacks."""
    torch.manual_seed(0)
    plain = _mlp()
    wrapped = esper.wrap(_mlp(), target_modules=["0"], seeds_per_layer=1)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with esper.Morphogenesis(wrapped, opt, policy="manual") as morph:
        morph.germinate("0", 0, "residual_mlp", width=4)
        result = wrapped.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("0.seeds.0.") for k in result.missing_keys)
    assert torch.equal(wrapped.get_submodule("0.base_layer").weight, plain[0].weight)
