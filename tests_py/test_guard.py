"""MorphConfig.guard: the finiteness guard of running seeds on every step ("step", the default) or
on sampling steps only ("sampled", issue 20 item 2). Real PyTorch and the real library throughout.

"sampled" adds a seed as a hand-written model does on the steps that do not sample; a seed whose
output turns non-finite there poisons the loss and, through the optimizer, the weights, and the
flush that reads them makes Go's governor roll back. "step" keeps the host's output on that very
step (the negative control: same poison, finite losses, and the breaker prunes the seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis

EVERY = 5  # signal_every of these runs


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(guard: str, **settings: Any) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis, Tensor, Tensor]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)),
                       target_modules=["2"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=EVERY, guard=guard, **settings)
    morph.germinate("2", 0, "residual_mlp", width=8)
    for _ in range(3):
        morph.advance("2", 0, "test")  # TRAINING, BLENDING, HOLDING
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    return model, opt, morph, x, torch.randint(0, 4, (64,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, x: Tensor, y: Tensor) -> float:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    morph.step(loss)
    return float(loss.detach())


def test_guard_setting_is_checked() -> None:
    model = esper.wrap(nn.Sequential(nn.Linear(4, 4)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="guard must be one of step, sampled, got 'never'"):
        Morphogenesis(model, opt, guard="never")
    with Morphogenesis(model, opt) as morph:
        assert morph.config.guard == "step" and model[0].guard_every_step  # the safe default


@pytest.mark.parametrize("guard", ["step", "sampled"])
def test_both_guards_compute_the_hand_written_sum(guard: str) -> None:
    model, _, morph, x, _ = make(guard)
    layer = model[2]
    seed = layer.seed(0)
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(0.1)  # a seed that changes the output
        h = layer.base_layer(torch.relu(model[0](x)))
        want = h + seed(torch.relu(model[0](x)))
        got = layer(torch.relu(model[0](x)))
    assert torch.equal(got, want)
    morph.close()


def test_sampled_guard_rolls_back_a_seed_that_turns_nonfinite_between_samples() -> None:
    model, opt, morph, x, y = make("sampled")
    for _ in range(2 * EVERY):
        assert math.isfinite(train_step(model, opt, morph, x, y))
    morph.end_epoch(val_loss=1.0)  # the last good state
    good = {k: v.detach().clone() for k, v in model.state_dict().items() if ".seeds." not in k}
    assert morph.steps % EVERY == 0  # the next step does not sample
    with torch.no_grad():
        next(model[2].seed(0).parameters()).fill_(math.nan)
    losses = [train_step(model, opt, morph, x, y) for _ in range(EVERY)]
    assert math.isnan(losses[0])  # unguarded: the seed's NaN reached the loss
    rollbacks = [e for e in morph.log if e.get("kind") == "decision" and e.get("op") == "rollback"]
    assert len(rollbacks) == 1 and "loss" in rollbacks[0]["nonfinite"], morph.log[-3:]
    assert model[2].seed(0) is None
    assert any(e.get("kind") == "event" and e.get("to") == "ROLLED_BACK" for e in morph.log)
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k  # the host's last good weights are back
    assert math.isfinite(train_step(model, opt, morph, x, y))  # training goes on
    morph.close()


def test_step_guard_keeps_the_host_output_on_the_very_step() -> None:
    # Negative control of the test above: the same poison under the default guard never reaches
    # the loss; the seed's failing steps open its breaker and prune it.
    model, opt, morph, x, y = make("step")
    for _ in range(2 * EVERY):
        train_step(model, opt, morph, x, y)
    morph.end_epoch(val_loss=1.0)
    with torch.no_grad():
        next(model[2].seed(0).parameters()).fill_(math.nan)
    losses = [train_step(model, opt, morph, x, y) for _ in range(2 * EVERY)]
    assert all(math.isfinite(v) for v in losses), losses
    assert model[2].seed(0) is None
    assert any(e.get("kind") == "event" and e.get("to") == "PRUNED" for e in morph.log)
    assert not any(e.get("op") == "rollback" for e in morph.log if e.get("kind") == "decision")
    morph.close()


class OneElement(nn.Module):
    """A seed whose output (a linear map of its input, large and finite) has one element set to
    ``value`` (None: left finite), through ``where``, so that autograd runs through it."""

    def __init__(self, d_in: int, d_out: int, dtype: torch.dtype, value: float | None, at: tuple[int, int],
                 scale: float = 1.0) -> None:
        super().__init__()
        self.inner = nn.Linear(d_in, d_out, dtype=dtype)
        self.value, self.at, self.scale = value, at, scale

    def forward(self, x: Tensor) -> Tensor:
        s = self.inner(x) * self.scale
        if self.value is None:
            return s
        mask = torch.zeros(s.shape, dtype=torch.bool)
        mask[self.at] = True
        return torch.where(mask, torch.full((), self.value, dtype=s.dtype), s)


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1.0), (torch.float64, 1e300), (torch.float16, 1.0)],
                         ids=["float32", "float64-1e300", "float16"])
@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf], ids=["finite", "nan", "+inf", "-inf"])
def test_default_guard_catches_one_nonfinite_element_of_a_large_output(
        value: float | None, dtype: torch.dtype, scale: float) -> None:
    # The CPU guard decides "finite" from one sum of the seed's output: a single NaN, +inf or -inf
    # element among 262,144 must leave the seed out (the layer's output and the input's gradient
    # are the host's alone), and a finite output must be added (the control). float64 values of
    # 1e300 and float16 outputs whose sum is far past float16's range (65504) are finite: the sum
    # must not be taken in a dtype where it overflows.
    from esper.kasmina import FailureKind, collect_failures

    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(64, 1024, dtype=dtype)), target_modules=["0"])
    layer = model[0]
    assert layer.guard_every_step  # the default guard
    seed = OneElement(64, 1024, dtype, value, (100, 517), scale)
    with torch.no_grad():
        seed.inner.weight.fill_(0.25)
        seed.inner.bias.fill_(4.0)  # with x >= 0, every element is at least 4 (times scale)
    layer.add_seed(0, seed)
    layer.set_state(0, "TRAINING")
    layer.set_state(0, "BLENDING", 0.5)
    x = torch.rand(256, 64, dtype=dtype).requires_grad_()  # in [0, 1): every seed element >= 4 (times scale)
    y = layer(x)
    h = layer.base_layer(x)
    s = seed(x)
    if value is None and dtype is not torch.float32:
        # The control for the accumulator's dtype: this finite output's sum overflows float16
        # (float16 case) or float32 (float64 case).
        narrow = torch.float16 if dtype is torch.float16 else torch.float32
        assert math.isinf(float(s.detach().sum(dtype=narrow)))
    if value is None:
        assert torch.equal(y, torch.add(h, s, alpha=0.5)) and torch.isfinite(y).all()
        assert collect_failures(model) == []
    else:
        assert torch.equal(y, h)
        y.float().sum().backward()
        g_host = torch.autograd.grad(layer.base_layer(x).float().sum(), x)[0]
        assert torch.equal(x.grad, g_host)  # nothing of the seed reached the input's gradient
        assert seed.inner.weight.grad is None  # nor its own weights
        assert [(i, f.slot, f.kind) for i, f in collect_failures(model)] == [(0, 0, FailureKind.NONFINITE)]
