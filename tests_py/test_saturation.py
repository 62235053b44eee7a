"""When a layer stops growing, through the real loop: ``esper.wrap`` + ``Morphogenesis`` + the Go controller.

One pruned seed must not end growth on a layer for the rest of the run: a seed that helped a little but fell
short (a near miss) leaves its layer open, and the layer is saturated only on evidence, ``saturate_after``
misses in a row (default 2) or a seed that did not help at all (the rule is ``policy/tamiyo/saturation.go``).

The run: 3-arm spirals, a one-host MLP of width 4 (underfit: every seed helps a little), residual seeds of
width 32, a short lifecycle, and ``prune_below`` far above any contribution, so that every held seed is pruned
although it helped. What follows each prune is then the saturation rule's doing alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper.demo.data import spirals

EPOCHS = 40


class Net(nn.Module):
    """A width-4 MLP held as ``body``, wrapped whole as one block host."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B, 3)
        return self.body(x)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grow(saturate_after: int, seed: int = 0) -> list[dict]:
    """Trains for EPOCHS epochs; returns the controller's germinate and prune decisions, in order."""
    x_np, y_np = spirals(n_per_arm=150, arms=3, noise=0.2, seed=seed)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    order = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=order)
    train, val = perm[:300], perm[300:]
    torch.manual_seed(seed)
    model = esper.wrap(Net(), block_modules=["body"], seeds_per_layer=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": float(F.cross_entropy(m(x[val]), y[val]))}

    config = esper.MorphConfig(train_steps=10, blend_steps=10, embargo_steps=5, signal_every=5, patience=2,
                               cooldown_epochs=0, template_params={"width": 32}, min_gain=0.0, prune_below=100.0,
                               saturate_after=saturate_after, seed=seed)
    morph = esper.Morphogenesis(model, opt, config=config, evaluate=evaluate)
    for _ in range(EPOCHS):
        batch = train[torch.randperm(len(train), generator=order)]
        for i in range(0, len(batch), 32):
            idx = batch[i:i + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        morph.end_epoch()
    decisions = [d for d in morph.log if d["kind"] == "decision" and d["op"] in ("germinate", "prune")]
    morph.close()
    return decisions


def _contribution(reason: str) -> float:
    # "contribution 0.0236 (validation loss without the seed minus with it) is below the bar ..."
    return float(reason.split()[1])


def test_a_layer_germinates_again_after_one_near_miss_and_stops_after_two() -> None:
    ds = grow(saturate_after=2)
    ops = [d["op"] for d in ds]
    assert ops == ["germinate", "prune", "germinate", "prune"], [(d["op"], d["reason"]) for d in ds]
    assert all(d["layer"] == 0 for d in ds)
    first, second = ds[1], ds[3]
    # The first seed helped (a near miss): the layer stays open, and the next plateau grows there again.
    assert _contribution(first["reason"]) > 0, first["reason"]
    assert "layer 0 may grow again: 1 of 2" in first["reason"], first["reason"]
    # The second miss in a row is the evidence: saturated, and nothing germinates after it.
    assert "layer 0 is saturated: 2 seed(s) in a row fell short" in second["reason"], second["reason"]


def test_the_first_miss_ended_growth_under_the_old_rule() -> None:
    """Negative control: saturate_after=1 is the rule before this change; one prune ends growth there."""
    ds = grow(saturate_after=1)
    assert [d["op"] for d in ds] == ["germinate", "prune"], [(d["op"], d["reason"]) for d in ds]
    assert "layer 0 is saturated: 1 seed(s) in a row fell short" in ds[1]["reason"]


def test_without_the_evidence_the_same_run_keeps_growing() -> None:
    """Negative control for the stop: with saturate_after=5 the same run goes on germinating after its second
    prune, so the stop above is the rule's, not the run's length or the plateau test's."""
    ds = grow(saturate_after=5)
    germinations = [d for d in ds if d["op"] == "germinate"]
    assert len(germinations) >= 3, [(d["op"], d["reason"]) for d in ds]
    assert all("is saturated" not in d["reason"] for d in ds)
