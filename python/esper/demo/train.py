"""A plain PyTorch training loop shared by baselines and grown runs, with
honest compute accounting.

Training FLOPs are counted from the modules that actually ran each step:
for every ``nn.Linear`` that took part in the forward, in * out multiply-adds per
sample (per output position for a convolution, ``nn.Conv1d``/``nn.Conv2d``: in
channels / groups x kernel size multiply-adds per output value), counted as 2
FLOPs each forward and 4 backward when its weight trains (6 FLOPs per
multiply-add), or 2 backward when it is frozen (input gradient only).
Modules in eval mode (validation) are not counted. Counting uses forward hooks,
so seeds that do not run (GERMINATED, or switched off) cost nothing and seeds
that ran are counted in whatever state they ran: TRAINING (forward and
backward of the seed; its output enters with value 0), BLENDING, HOLDING, and
FOSSILIZED (frozen). A Kasmina layer runs its host exactly once per forward, and
while it is dormant it calls the host's ``forward`` directly, which global hooks
do not see; so a wrapped host is counted through its layer's hook, never its own,
and a wrapped model without live seeds counts what the same plain model counts.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..kasmina import KasminaLayer
from .data import Task

__all__ = ["MLP", "ConvNet", "FlopCounter", "History", "evaluate", "task_loss", "train"]


class MLP(nn.Module):
    """Input -> ``depth`` hidden layers of ``width`` with ReLU -> classes."""

    def __init__(self, num_features: int, num_classes: int, width: int, depth: int = 1) -> None:
        super().__init__()
        dims = [num_features] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, C)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class ConvNet(nn.Module):
    """A small CNN for signals (C, L) or images (C, H, W): two 3-wide convolutions of ``width`` channels with
    ReLU, global average pooling, and a linear head to the classes."""

    def __init__(self, in_channels: int, num_classes: int, width: int, dims: int = 2) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"ConvNet: dims must be 1 (signals) or 2 (images), got {dims}")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.convs = nn.ModuleList([conv(in_channels, width, 3, padding=1), conv(width, width, 3, padding=1)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, classes)
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.flatten(2).mean(dim=2))


def _macs(module: nn.Module, output: torch.Tensor) -> int | None:
    """Multiply-adds of one forward of a counted module (None: not counted)."""
    if isinstance(module, nn.Linear):
        return output.numel() // module.out_features * module.in_features * module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return None


_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


class FlopCounter:
    """Counts training FLOPs of every nn.Linear, nn.Conv1d and nn.Conv2d that runs in training mode.

    Global forward hooks see modules created after the counter (seeds that
    germinate mid-run); modules in eval mode (validation) are not counted.
    A :class:`~esper.kasmina.KasminaLayer`'s host is counted when the layer's
    own hook fires, with the layer's output (the host's shape): a dormant layer
    calls the host's ``forward`` without ``__call__``, so the host's hook would
    not fire, and while the layer is not dormant the host's own hook is skipped
    so that it is not counted twice. Counters are meant to be used one at a time.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.active = True
        # The hosts of the Kasmina layers that ran: counted through their layer's hook, not their own.
        self._hosts: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._pre_hook),
            torch.nn.modules.module.register_module_forward_hook(self._hook),
        ]

    def _pre_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if isinstance(module, KasminaLayer):
            self._hosts.add(module.base_layer)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        if isinstance(module, KasminaLayer):
            module = module.base_layer  # it ran once, in this forward, with an output of the layer's shape
        elif not isinstance(module, _COUNTED) or module in self._hosts:
            return  # not counted, or counted by its layer's hook
        if not module.training:
            return
        macs = _macs(module, output)
        if macs is None:
            return
        self.total += (6.0 if module.weight.requires_grad else 4.0) * macs

    def close(self) -> None:
        """Removes the counter's global hooks."""
        for handle in self._handles:
            handle.remove()


@dataclass
class History:
    """What one training run did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    best_epoch: int = -1
    test_acc: float = math.nan
    test_loss: float = math.nan


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss: cross-entropy for class labels (int64), mean squared error for real targets
    (the model's one output per sample against y)."""
    if y.is_floating_point():
        return F.mse_loss(out.squeeze(-1), y)
    return F.cross_entropy(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Return (loss, metric) of model on (x, y): for class labels the mean cross-entropy and the accuracy in
    percent; for real targets the mean squared error and R² in percent (100 x (1 - SSE / SST), so that "points"
    read alike: 100 is perfect, 0 is the mean's guess)."""
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    loss = task_loss(out, y).item()
    if y.is_floating_point():
        sst = (y - y.mean()).pow(2).sum().item()
        sse = (out.squeeze(-1) - y).pow(2).sum().item()
        return loss, 100.0 * (1.0 - sse / max(sst, 1e-12))
    acc = (out.argmax(dim=1) == y).float().mean().item() * 100.0
    return loss, acc


def train(
    model: nn.Module,
    task: Task,
    *,
    epochs: int = 60,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[torch.Tensor], None] | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
    trainable_params: Callable[[], int] | None = None,
) -> History:
    """Train with Adam on mini-batches, keep the best model on validation,
    report test once at the end on that model.

    Args:
        model: the model (changed in place).
        task: the data.
        epochs, lr, batch_size, seed: the usual.
        optimizer: an optimizer to use instead of a fresh Adam (a grown run
            passes the one its Morphogenesis driver knows).
        on_step: called after every optimizer step with the loss (the grown
            run's morph.step).
        on_epoch: called at the end of every epoch after validation.
        trainable_params: counts parameters for the history (defaults to all).

    Returns:
        The History; ``test_acc`` is measured on the model of the epoch with
        the best validation accuracy (ties: lower validation loss), at that
        epoch, before ``on_epoch`` runs.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    counter = FlopCounter()
    hist = History()
    n = task.x_train.shape[0]
    best: tuple[float, float] | None = None
    start = time.perf_counter()
    try:
        for epoch in range(epochs):
            model.train()
            counter.active = True
            perm = torch.randperm(n, generator=gen).to(task.x_train.device)
            total, count = 0.0, 0
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                loss = task_loss(model(task.x_train[idx]), task.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if on_step is not None:
                    on_step(loss.detach())
                total += loss.item() * idx.numel()
                count += idx.numel()
            counter.active = False
            val_loss, val_acc = evaluate(model, task.x_val, task.y_val)
            hist.train_loss.append(total / count)
            hist.val_loss.append(val_loss)
            hist.val_acc.append(val_acc)
            hist.flops.append(counter.total)
            hist.params.append(trainable_params() if trainable_params else sum(p.numel() for p in model.parameters()))
            hist.wall.append(time.perf_counter() - start)
            # Model selection on validation; test is read only at the chosen epoch, on the model that was
            # validated: before on_epoch, whose decisions (a prune, a rollback) may change the model.
            score = (val_acc, -val_loss)
            if best is None or score > best:
                best = score
                hist.best_epoch = epoch
                hist.test_loss, hist.test_acc = evaluate(model, task.x_test, task.y_test)
            if on_epoch is not None:
                on_epoch(epoch, hist)
    finally:
        counter.close()
    return hist
