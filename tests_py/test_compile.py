"""torch.compile of a whole wrapped model: same results as eager, a bounded number of compilations
per lifecycle transition (none while alpha ramps), and no graph break in any forward.

Compiled with the "aot_eager" backend: dynamo and AOTAutograd decide graphs, guards, graph breaks
and recompilations, and run the same autograd as inductor; inductor only lowers the graphs (the
`make bench` compile rows run inductor).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import esper
from esper.kasmina import FailureKind, collect_failures, gather_signals, kasmina_layers, set_sampling

BACKEND = "aot_eager"


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    # A frame that hits dynamo's recompile limit would silently run eagerly: make it an error here.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _compiles() -> int:
    return counters["frames"]["total"]


def _assert_no_graph_break() -> None:
    assert not counters["graph_break"], dict(counters["graph_break"])
    # A break dynamo cannot resume from makes the frame fall back to eager: compiled != total.
    assert counters["frames"]["ok"] == counters["frames"]["total"], dict(counters["frames"])


class Pair:
    """The same wrapped model and optimizer twice, one run eagerly, one through torch.compile."""

    def __init__(self, build: type[nn.Module], targets: list[str], x: torch.Tensor, y: torch.Tensor,
                 **config: Any) -> None:
        torch.manual_seed(0)
        base = build()
        self.x, self.y = x, y
        self.models = [esper.wrap(copy.deepcopy(base), targets) for _ in range(2)]
        self.opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in self.models]
        self.morphs = [esper.Morphogenesis(m, o, policy="manual", rollback=False, **config)
                       for m, o in zip(self.models, self.opts)]
        self.compiled = torch.compile(self.models[1], backend=BACKEND)

    def both(self, action: str, *args: Any, **kwargs: Any) -> None:
        for morph in self.morphs:
            getattr(morph, action)(*args, **kwargs)

    def steps(self, n: int) -> None:
        """n training steps on both sides; losses and every gradient must agree."""
        for _ in range(n):
            losses = []
            for model, opt in zip((self.models[0], self.compiled), self.opts):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(self.x), self.y)
                loss.backward()
                losses.append(loss)
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
            grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in self.models]
            assert grads[0].keys() == grads[1].keys()
            for name in grads[0]:
                torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
            for opt, morph, loss in zip(self.opts, self.morphs, losses):
                opt.step()
                morph.step(loss)

    def state(self, layer: str) -> str:
        states = {m.model.get_submodule(layer).state(0).name for m in self.morphs}
        assert len(states) == 1, states
        return states.pop()


@pytest.mark.slow
def test_lifecycle_compiled_matches_eager_with_bounded_recompiles() -> None:
    g = torch.Generator().manual_seed(1)
    pair = Pair(MLP, ["fc1", "fc2"], torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g),
                signal_every=3, train_steps=10**6, blend_steps=50)
    fc2 = pair.models[1].fc2
    compiles: dict[str, int] = {}

    def phase(name: str, n: int = 6) -> None:
        before = _compiles()
        pair.steps(n)
        compiles[name] = _compiles() - before

    phase("dormant")
    pair.both("germinate", "fc2", 0, "residual_mlp", width=8)
    phase("germinated")
    assert pair.state("fc2") in ("GERMINATED", "TRAINING")
    if pair.state("fc2") == "GERMINATED":
        pair.both("advance", "fc2", 0)
        phase("training")
    assert pair.state("fc2") == "TRAINING"
    pair.both("advance", "fc2", 0)
    assert pair.state("fc2") == "BLENDING"
    phase("blending")
    alpha = fc2.alpha(0)
    phase("blending, later steps", 9)  # the alpha ramp goes on: no compilation
    assert fc2.alpha(0) > alpha
    pair.both("advance", "fc2", 0)
    assert pair.state("fc2") == "HOLDING"
    phase("holding")
    pair.both("fossilize", "fc2", 0)
    assert pair.state("fc2") == "FOSSILIZED"
    phase("fossilized")
    pair.both("germinate", "fc1", 0, "residual_mlp", width=8)
    phase("second seed")
    pair.both("prune", "fc1", 0)
    assert pair.state("fc1") != "TRAINING"
    phase("pruned")

    print("compilations per phase:", compiles)  # the report quotes these
    _assert_no_graph_break()
    # A new arrangement of a layer's forward (dormant, a seed running) is one graph for ordinary steps
    # and one for sampling steps (signal_every): at most 2 per transition. TRAINING, BLENDING, HOLDING
    # and FOSSILIZED share one graph (their alphas are tensors), and a prune returns to the dormant one.
    assert all(n <= 2 for n in compiles.values()), compiles
    for name in ("blending", "blending, later steps", "holding", "fossilized", "pruned"):
        assert compiles[name] == 0, (name, compiles)
    assert sum(compiles.values()) <= 6, compiles
    for a, b in zip(pair.models[0].parameters(), pair.models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_negative_control_a_counter_in_the_forward_recompiles() -> None:
    # What the forward's Python counters (samples taken, finiteness flags kept) did before: an int
    # attribute the forward reads is a constant of the graph, so every new value compiles again.
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x) * 2 if self.calls % 10 == 0 else self.lin(x)

    compiled = torch.compile(Counting(), backend=BACKEND)
    x = torch.randn(2, 4)
    for _ in range(4):
        compiled(x)
    assert _compiles() >= 4


def _explain(model: nn.Module, x: torch.Tensor) -> Any:
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x)


def test_no_graph_break_in_dormant_holding_or_sampling_forward() -> None:
    torch.manual_seed(0)
    model = esper.wrap(MLP(), ["fc1", "fc2"])
    morph = esper.Morphogenesis(model, torch.optim.SGD(model.parameters(), lr=0.1), policy="manual",
                                rollback=False, train_steps=10**6)
    x = torch.randn(8, 8)
    seen = {}
    seen["dormant"] = _explain(model, x)
    morph.germinate("fc2", 0, "residual_mlp", width=8)
    while model.fc2.state(0).name != "HOLDING":
        morph.advance("fc2", 0)
    seen["holding"] = _explain(model, x)
    set_sampling(model, True)
    seen["holding, sampling step"] = _explain(model, x)
    set_sampling(model, False)
    with model.fc2.disable_seeds():
        seen["holding, seed switched off"] = _explain(model, x)
    for name, out in seen.items():
        assert out.graph_break_count == 0 and out.graph_count == 1, (name, out.break_reasons)
    morph.close()


@pytest.mark.parametrize("build, targets, shape", [(MLP, ["fc1", "fc2"], (16, 8)),
                                                   (CNN, ["conv1", "conv2"], (4, 3, 8, 8))])
def test_compiled_signals_equal_eager(build: type[nn.Module], targets: list[str], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    base = build()
    models = [esper.wrap(copy.deepcopy(base), targets) for _ in range(2)]
    for model in models:
        for _, layer in kasmina_layers(model):
            layer.rank_every = 2
    morphs = [esper.Morphogenesis(m, torch.optim.SGD(m.parameters(), lr=0.1), policy="manual", rollback=False)
              for m in models]
    for morph in morphs:
        morph.germinate(targets[1], 0, "residual_mlp" if build is MLP else "conv3x3", width=4)
        while morph.model.get_submodule(targets[1]).state(0).name != "HOLDING":
            morph.advance(targets[1], 0)
    compiled = torch.compile(models[1], backend=BACKEND)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    for step in range(3):  # rank_every=2: steps 0 and 2 estimate the effective rank
        got = []
        for model, run in zip(models, (models[0], compiled)):
            set_sampling(model, True)
            run(x).square().mean().backward()
            set_sampling(model, False)
            got.append(gather_signals(model))
        torch.testing.assert_close(got[1], got[0], rtol=1e-4, atol=1e-6, equal_nan=True)
        measured = got[1].view(len(targets), -1)
        assert torch.isfinite(measured[:, [0, 1, 2, 3, 4, 6]]).all(), measured  # every tap recorded
        assert torch.isfinite(measured[:, 5]).all() == (step % 2 == 0), measured
    _assert_no_graph_break()
    for morph in morphs:
        morph.close()


def test_compiled_nonfinite_seed_falls_back_to_host_and_is_counted() -> None:
    torch.manual_seed(0)
    model = esper.wrap(MLP(), ["fc2"])
    morph = esper.Morphogenesis(model, torch.optim.SGD(model.parameters(), lr=0.1), policy="manual", rollback=False)
    morph.germinate("fc2", 0, "residual_mlp", width=8)
    while model.fc2.state(0).name != "HOLDING":
        morph.advance("fc2", 0)
    compiled = torch.compile(model, backend=BACKEND)
    x = torch.randn(8, 8)
    with torch.no_grad():
        for p in model.fc2.seed(0).parameters():
            p.fill_(math.inf)
        host = model.fc3(F.relu(model.fc2.base_layer(F.relu(model.fc1(x)))))
    for _ in range(3):
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, host)
        assert torch.isfinite(model.fc1.weight.grad).all()  # the gate kept NaN out of the host's gradient
    failures = collect_failures(model)
    assert [(i, f.slot, f.kind) for i, f in failures] == [(0, 0, FailureKind.NONFINITE)]
    assert "in 3 of 3 forward passes" in failures[0][1].message
    assert collect_failures(model) == []  # read and reset
    _assert_no_graph_break()
    morph.close()


def test_the_compiled_forwards_alphas_follow_the_layer_also_in_copies() -> None:
    torch.manual_seed(0)
    model = esper.wrap(MLP(), ["fc2"])
    morph = esper.Morphogenesis(model, torch.optim.SGD(model.parameters(), lr=0.1), policy="manual",
                                rollback=False, train_steps=10**6, blend_steps=10)
    morph.germinate("fc2", 0, "residual_mlp", width=8)
    while model.fc2.state(0).name != "BLENDING":
        morph.advance("fc2", 0)
    for layer in (model.fc2, copy.deepcopy(model).fc2):
        for a in (0.25, 0.5):
            layer.set_alphas([a])
            assert layer._alpha_t.tolist() == [a] == [layer.alpha(0)]
        layer.set_state(0, "HOLDING")
        assert layer._alpha_t.tolist() == [1.0]
        layer.remove_seed(0)
        assert layer._alpha_t.tolist() == [0.0]
    morph.close()


@pytest.mark.parametrize("state", ["TRAINING", "HOLDING"])
def test_compiled_evaluation_matches_eager(state: str) -> None:
    # What an evaluate() does each epoch: eval mode, no gradient, seeds live.
    torch.manual_seed(0)
    model = esper.wrap(MLP(), ["fc1", "fc2"])
    morph = esper.Morphogenesis(model, torch.optim.SGD(model.parameters(), lr=0.1), policy="manual",
                                rollback=False, train_steps=10**6)
    morph.germinate("fc2", 0, "residual_mlp", width=8)
    while model.fc2.state(0).name != state:
        morph.advance("fc2", 0)
    with torch.no_grad():
        for p in model.fc2.seed(0).parameters():
            p.normal_()  # a seed that changes the output (its last projection starts at zero)
    compiled = torch.compile(model, backend=BACKEND)
    x = torch.randn(8, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    _assert_no_graph_break()
    morph.close()
