"""Training-step rows for conv pairs (:mod:`esper.convpair`), in the dormant and active sections.

- dormant: :func:`pair_cnn` with its conv pair wrapped and no seed, against the plain model;
- active: the same with a ``widen`` seed (16 channels) in HOLDING, against the model written by hand:
  the pair plus the same branch with the same weights (``pair(x) + branch(x)``).

Both sides run the step of :mod:`esper.bench.steps` (Esper's with ``morph.step(loss)``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import find_conv_pairs, wrap
from . import models
from .rows import Row
from .steps import ACTIVE, DORMANT, StepSettings, _adam, _hand_branch, _kept, _morph, _row, _to_state, make_step

__all__ = ["active_rows", "dormant_rows", "pair_cnn"]

_BATCH = 16
_WIDTH = 16


def pair_cnn() -> nn.Sequential:
    """SmallCNN as an nn.Sequential: conv 3->16, ReLU, conv 16->32 stride 2 (a conv pair), ReLU,
    global average pool, linear head; on 3x32x32 images."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def dormant_rows(device: torch.device, settings: StepSettings) -> list[Row]:
    """The wrapped pair, dormant, against the plain model."""
    torch.manual_seed(0)
    plain = pair_cnn().to(device)
    wrapped = wrap(copy.deepcopy(plain), conv_pairs=find_conv_pairs(plain))
    x, y = models.make_batch("cnn", _BATCH, device)
    opt = _adam(wrapped)
    morph = _morph(wrapped, opt)
    try:
        return _kept([_row("dormant", "train step, dormant: PairCNN (conv pair)", device, settings,
                     make_step(wrapped, opt, x, y, morph), make_step(plain, _adam(plain), x, y), "plain model",
                     DORMANT, f"conv 3->16, ReLU, conv 16->32 wrapped as one conv pair, batch {_BATCH}x3x32x32; "
                     "Esper includes morph.step(loss)")])
    finally:
        morph.close()


def active_rows(device: torch.device, settings: StepSettings) -> list[Row]:
    """A widen seed in HOLDING against the pair plus the same branch written by hand."""
    torch.manual_seed(0)
    base = pair_cnn().to(device)
    wrapped = wrap(copy.deepcopy(base), conv_pairs=find_conv_pairs(base))
    opt = _adam(wrapped)
    morph = _morph(wrapped, opt, train_steps=10**7, blend_steps=10**7)
    try:
        morph.germinate(0, 0, "widen", width=_WIDTH)
        _to_state(morph, "0", 0, "HOLDING")
        seed = wrapped[0].seed(0)
        members = list(copy.deepcopy(base))
        hand = nn.Sequential(models.HandSeeded(nn.Sequential(*members[:3]), _hand_branch(seed)), *members[3:])
        x, y = models.make_batch("cnn", _BATCH, device)
        n_seed = sum(p.numel() for p in seed.parameters())
        return _kept([_row("active", "train step, widen seed HOLDING: PairCNN (conv pair)", device, settings,
                     make_step(wrapped, opt, x, y, morph), make_step(hand, _adam(hand), x, y),
                     "same model written by hand", ACTIVE,
                     f"seed widen width {_WIDTH} ({n_seed} params) on the pair conv 16 -> conv 32; hand-written: "
                     "pair(x) + branch(x) with the same branch and weights; Esper includes morph.step(loss)")])
    finally:
        morph.close()
