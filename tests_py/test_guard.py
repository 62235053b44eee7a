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
