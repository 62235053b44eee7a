"""The README's usage example runs as written (with a small model and data filled in)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parent.parent / "README.md"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(16, 32)
        self.mlp.act = nn.ReLU()
        self.mlp.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class MyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(4 * 4 * 4, 16)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 4, 4) -> (B, 3)
        h = self.proj(torch.relu(self.conv(x)).flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_usage_example_runs() -> None:
    code = re.search(r"## Use it in your training loop\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README lost its usage example"
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def my_validation(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(xs)
        return float(loss_fn(logits, ys)), float((logits.argmax(1) == ys).float().mean())

    scope = {"MyModel": MyModel, "my_validation": my_validation, "loss_fn": loss_fn, "epochs": 4,
             "loader": [(xs[i:i + 16], ys[i:i + 16]) for i in range(0, 64, 16)], "print": lambda *a: None}
    exec(compile(code.group(1), str(README), "exec"), scope)  # noqa: S102 - our own README
    plain = scope["plain"]
    import esper

    assert not any(isinstance(m, esper.KasminaLayer) for m in plain.modules())
    assert plain(xs).shape == (64, 3)
