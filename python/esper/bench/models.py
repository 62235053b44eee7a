"""Plain PyTorch models the benchmark wraps, and the same architectures with
an extra module written by hand (the baseline an active seed is judged by)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyMLP", "WideMLP", "SmallCNN", "TinyTransformer", "HandSeeded", "HandBlended", "Deep", "make_batch",
           "with_hand_seed"]


class TinyMLP(nn.Module):
    """A 3-layer MLP whose training step takes well under a millisecond."""

    def __init__(self, d_in: int = 32, width: int = 64, d_out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, d_out)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class WideMLP(TinyMLP):
    """The same MLP, wide enough that a step takes several milliseconds."""

    def __init__(self) -> None:
        super().__init__(d_in=512, width=1024, d_out=10)


class SmallCNN(nn.Module):
    """Two conv layers (one strided) and a linear head on 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, 10)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP, each residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Two blocks over 32 tokens of width 64, mean-pooled into 10 classes."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, vocab: int = 100) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 10)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


class Deep(nn.Module):
    """n Linear(width, width) layers with ReLU: the wrapped-layer scaling model."""

    def __init__(self, n: int, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return x


class HandSeeded(nn.Module):
    """A host plus a residual branch ``a * branch(x)``, written by hand: what an active Esper seed
    must cost no more than. With ``alpha == 1`` (a seed in HOLDING) it is ``host(x) + branch(x)``;
    otherwise the scaling is fused into the add, as one would write it by hand."""

    def __init__(self, host: nn.Module, branch: nn.Module, alpha: float = 1.0) -> None:
        super().__init__()
        self.host = host
        self.branch = branch
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 1.0:
            return self.host(x) + self.branch(x)
        return torch.add(self.host(x), self.branch(x), alpha=self.alpha)


class HandBlended(HandSeeded):
    """:class:`HandSeeded` with alpha in a 0-d buffer ``alpha_t``, as one writes a blend for
    ``torch.compile`` (a Python float alpha is a constant of the compiled graph: a new value every
    step would recompile every step)."""

    def __init__(self, host: nn.Module, branch: nn.Module, alpha: float = 1.0) -> None:
        super().__init__(host, branch, alpha)
        self.register_buffer("alpha_t", torch.tensor(float(alpha)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.host(x) + self.alpha_t * self.branch(x)


def with_hand_seed(model: nn.Module, path: str, branch: nn.Module, alpha: float = 1.0,
                   cls: type[HandSeeded] = HandSeeded) -> HandSeeded:
    """Replaces the submodule at ``path`` by ``cls`` (:class:`HandSeeded` or :class:`HandBlended`;
    the old module as host), in place.

    Returns:
        The new module.
    """
    parent_name, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    hand = cls(getattr(parent, child), branch, alpha)
    setattr(parent, child, hand)
    return hand


def make_batch(model_name: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (input, target) batch for one of the benchmark models."""
    g = torch.Generator().manual_seed(0)
    if model_name == "mlp":
        x = torch.randn(batch, 32, generator=g)
    elif model_name == "wide_mlp":
        x = torch.randn(batch, 512, generator=g)
    elif model_name == "cnn":
        x = torch.randn(batch, 3, 32, 32, generator=g)
    elif model_name == "transformer":
        x = torch.randint(0, 100, (batch, 32), generator=g)
    elif model_name == "deep":
        x = torch.randn(batch, 32, generator=g)
    else:
        raise ValueError(f"unknown benchmark model {model_name!r}")
    y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)
