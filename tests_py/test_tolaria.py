"""Tolaria (esper.Morphogenesis): the training-loop driver, against real PyTorch and the real Go library.

Nothing is mocked: every test trains a tiny model defined here for a handful of steps and checks what
the driver mirrors of Go's lifecycle (states, alphas, events), what it does to the model and the
optimizer (parameter groups, optimizer state, weights), and that Go's verdicts (StateError, the
governor's rollbacks, the circuit breakers) reach the model as documented in docs/internals.md.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis, StateError
from esper.kasmina import KasminaLayer, SeedState

IN, HIDDEN, OUT = 4, 8, 3


class TinyNet(nn.Module):
    """(B, 4) -> (B, 3): fc1, ReLU, optional dropout, fc2."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed batch: (n, 4) inputs, n class labels in [0, 3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g), torch.randint(0, OUT, (n,), generator=g)


def make(*, targets: tuple[str, ...] = ("fc2",), slots: int = 1, dropout: float = 0.0, init: int = 0,
         **settings: Any) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    """A wrapped TinyNet, its Adam, and a Morphogenesis (manual policy, signals every step by default)."""
    torch.manual_seed(init)
    model = esper.wrap(TinyNet(dropout), target_modules=list(targets), seeds_per_layer=slots)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    settings = {"policy": "manual", "signal_every": 1, "embargo_steps": 2, **settings}
    return model, opt, Morphogenesis(model, opt, **settings)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, x: Tensor, y: Tensor,
               loss_scale: float = 1.0) -> Tensor:
    """One ordinary training step; the loss handed to morph.step is scaled by loss_scale."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    morph.step(loss.detach() * loss_scale)
    return loss.detach()


def go_seed(morph: Morphogenesis, layer: int = 0, slot: int = 0) -> dict[str, Any]:
    """Go's record of one slot."""
    return next(s for s in morph.seeds() if s["layer"] == layer and s["slot"] == slot)


def host_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".seeds." not in n}


def ids_in_optimizer(opt: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]} | {id(p) for p in opt.state}


def seed_params_in_groups(model: nn.Module, opt: torch.optim.Optimizer) -> list[list[nn.Parameter]]:
    """Each group's seed parameters (seeds join the group of their host: Adam here has just one)."""
    seeds = {id(p) for n, p in model.named_parameters() if ".seeds." in n}
    return [[p for p in g["params"] if id(p) in seeds] for g in opt.param_groups]


def events_to(morph: Morphogenesis, state: str) -> list[dict[str, Any]]:
    return [e for e in morph.log if e["kind"] == "event" and e["to"] == state]


def run_until(morph: Morphogenesis, state: SeedState, step: Callable[[], Tensor], limit: int = 50,
              layer: int = 0, slot: int = 0) -> int:
    """Trains until the slot reaches state (as the driver mirrors it); returns the steps taken."""
    for n in range(limit):
        if morph.layers[layer].state(slot) == state:
            return n
        step()
    raise AssertionError(f"slot {layer}/{slot} did not reach {state.name} in {limit} steps "
                         f"(it is {morph.layers[layer].state(slot).name})")


# ---------------------------------------------------------------------------------------- lifecycle


def test_germination_changes_the_output_by_exactly_zero_up_to_full_alpha() -> None:
    model, opt, morph = make()
    x, y = data()
    for _ in range(3):
        train_step(model, opt, morph, x, y)  # host weights away from their initial values
    before_train, before_eval = model(x), model.eval()(x)
    model.train()
    events = morph.germinate("fc2", 0, "residual_mlp", width=8)
    assert [(e["from"], e["to"]) for e in events] == [("DORMANT", "GERMINATED")]
    layer = morph.layers[0]
    seed = layer.seed(0)
    assert seed is not None
    assert sum(p.numel() for p in seed.parameters()) == events[0]["param_count"] == 8 * 8 + 8 + 8 * 3 + 3
    # Through every state up to alpha = 1, without training, the output does not move by one ulp.
    for state in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING):
        if state != SeedState.GERMINATED:
            morph.advance("fc2", 0)
        assert layer.state(0) == state
        assert torch.equal(model.train()(x), before_train), state.name
        assert torch.equal(model.eval()(x), before_eval), state.name
    assert layer.alpha(0) == 1.0 and go_seed(morph)["alpha"] == 1


def expected_lifecycle(step: int, train_steps: int, blend_steps: int) -> tuple[SeedState, float]:
    """A seed germinated at step 0, from the documented tempo: GERMINATED lasts one step, TRAINING
    train_steps, BLENDING blend_steps with alpha(t) = t / tempo (core/lifecycle/schedule.go, Linear;
    t = steps spent in BLENDING), then HOLDING with alpha 1."""
    if step < 1:
        return SeedState.GERMINATED, 0.0
    if step < 1 + train_steps:
        return SeedState.TRAINING, 0.0
    t = step - 1 - train_steps
    if t < blend_steps:
        return SeedState.BLENDING, t / blend_steps
    return SeedState.HOLDING, 1.0


@pytest.mark.parametrize("signal_every", [1, 3])
def test_lifecycle_and_linear_alpha_follow_the_steps(signal_every: int) -> None:
    train_steps, blend_steps = 3, 5
    model, opt, morph = make(train_steps=train_steps, blend_steps=blend_steps, signal_every=signal_every)
    x, y = data()
    morph.germinate(0, 0, "residual_mlp", width=8)
    layer = morph.layers[0]
    seen_blending = []
    flushed = 0  # the last step whose state Go has handed back
    for n in range(1, 13):
        train_step(model, opt, morph, x, y)
        # The driver talks to Go every signal_every steps only; while a seed blends, its alpha at
        # each step in between comes from the table Go gave at the last flush (alphas_ahead).
        if n % signal_every == 0:
            flushed = n
        state, alpha = expected_lifecycle(flushed, train_steps, blend_steps)
        assert layer.state(0) == state, f"step {n}"
        go = go_seed(morph)
        assert (go["state"], go["alpha"]) == (state.name, pytest.approx(alpha, abs=1e-12)), f"step {n}"
        if state == SeedState.BLENDING:  # the ramp at this very step (1 once it ends, until the flush)
            alpha = min(1.0, (n - 1 - train_steps) / blend_steps)
        assert layer.alpha(0) == pytest.approx(alpha, abs=1e-7), f"step {n}"
        if state == SeedState.BLENDING and alpha < 1:
            seen_blending.append(alpha)
            # The forward blends with exactly that alpha: y = h + alpha * s (the seed has trained, s != 0).
            with torch.no_grad():
                h_in = torch.relu(model.fc1(x))
                s = layer.seed(0)(h_in)
                assert s.abs().max() > 0
                torch.testing.assert_close(layer(h_in), layer.base_layer(h_in) + alpha * s, rtol=0, atol=1e-6)
    assert len(seen_blending) >= 3 and seen_blending == sorted(seen_blending) and seen_blending[-1] < 1
    history = [(t["from"], t["to"], t["step"]) for t in go_seed(morph)["history"]]
    assert history == [("DORMANT", "GERMINATED", 0), ("GERMINATED", "TRAINING", 1),
                       ("TRAINING", "BLENDING", 1 + train_steps),
                       ("BLENDING", "HOLDING", 1 + train_steps + blend_steps)]


def test_a_seed_entering_blending_between_flushes_gets_its_current_alpha() -> None:
    # TRAINING ends at step 3; Go hears of it at the flush of step 4, one step into the ramp.
    model, opt, morph = make(train_steps=2, blend_steps=4, signal_every=2)
    x, y = data()
    morph.germinate(0, 0)
    for _ in range(4):
        train_step(model, opt, morph, x, y)
    assert morph.layers[0].state(0) == SeedState.BLENDING
    assert morph.layers[0].alpha(0) == pytest.approx(1 / 4) == go_seed(morph)["alpha"]


def test_training_seed_leaves_the_host_gradient_exactly_as_unwrapped() -> None:
    torch.manual_seed(1)
    plain = TinyNet()
    model = esper.wrap(copy.deepcopy(plain), target_modules=["fc2"])
    morph = Morphogenesis(model, torch.optim.Adam(model.parameters()), policy="manual")
    morph.germinate("fc2", 0, "residual_mlp", width=8)
    morph.advance("fc2", 0)
    layer = morph.layers[0]
    assert layer.state(0) == SeedState.TRAINING
    seed = layer.seed(0)
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_()  # a seed whose output, or gradient to its input, would show if it leaked
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    wrapped_grads = {n.replace(".base_layer", ""): p.grad for n, p in host_params(model).items()}
    plain_grads = {n: p.grad for n, p in plain.named_parameters()}
    assert wrapped_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.equal(wrapped_grads[name], grad), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())  # the seed learns


def test_fossilize_with_freeze_fossilized_freezes_the_seed_and_removes_it_from_the_optimizer() -> None:
    model, opt, morph = make(train_steps=2, blend_steps=2, freeze_fossilized=True)
    x, y = data()
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    seed = layer.seed(0)
    params = list(seed.parameters())
    assert seed_params_in_groups(model, opt) == [params]  # in the host's group, after the host's parameters
    assert opt.param_groups[0]["params"][-len(params):] == params
    run_until(morph, SeedState.HOLDING, lambda: train_step(model, opt, morph, x, y))
    assert all(p in opt.state for p in params)  # it trained with Adam
    events = morph.fossilize("fc2", 0, reason="kept by the test")
    assert [(e["to"], e["reason"]) for e in events] == [("FOSSILIZED", "kept by the test")]
    assert layer.state(0) == SeedState.FOSSILIZED and go_seed(morph)["state"] == "FOSSILIZED"
    assert layer.seed(0) is seed and all(not p.requires_grad for p in params)
    assert len(opt.param_groups) == 1 and not ids_in_optimizer(opt) & {id(p) for p in params}
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in host_params(model).values()]
    frozen = [p.detach().clone() for p in params]
    host_before = [p.detach().clone() for p in host_params(model).values()]
    for _ in range(3):
        train_step(model, opt, morph, x, y)
    assert all(torch.equal(p, q) for p, q in zip(params, frozen))
    assert not all(torch.equal(p, q) for p, q in zip(host_params(model).values(), host_before))
    with torch.no_grad():  # a fossilized seed stays in the output at alpha 1
        h_in = torch.relu(model.fc1(x))
        assert seed(h_in).abs().max() > 0
        torch.testing.assert_close(layer(h_in), layer.base_layer(h_in) + seed(h_in), rtol=0, atol=1e-6)


def test_fossilized_seed_keeps_training_by_default_and_is_final() -> None:
    model, opt, morph = make(train_steps=2, blend_steps=2)
    x, y = data()
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    seed = layer.seed(0)
    run_until(morph, SeedState.HOLDING, lambda: train_step(model, opt, morph, x, y))
    morph.fossilize("fc2", 0)
    assert layer.state(0) == SeedState.FOSSILIZED and all(p.requires_grad for p in seed.parameters())
    assert seed_params_in_groups(model, opt) == [list(seed.parameters())]
    before = [p.detach().clone() for p in seed.parameters()]
    train_step(model, opt, morph, x, y)
    assert not all(torch.equal(p, q) for p, q in zip(seed.parameters(), before))
    with pytest.raises(StateError, match="FOSSILIZED -> PRUNED is not a legal transition"):
        morph.prune("fc2", 0)
    assert layer.seed(0) is seed and layer.state(0) == SeedState.FOSSILIZED


def test_prune_removes_the_seed_from_model_and_optimizer_and_keeps_host_optimizer_state() -> None:
    model, opt, morph = make(train_steps=2, blend_steps=10, embargo_steps=2)
    x, y = data()
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    seed_ids = {id(p) for p in layer.seed(0).parameters()}
    run_until(morph, SeedState.BLENDING, lambda: train_step(model, opt, morph, x, y))
    train_step(model, opt, morph, x, y)
    assert seed_ids <= {id(p) for p in opt.state}
    hosts = host_params(model)
    moments = {n: opt.state[p]["exp_avg"] for n, p in hosts.items()}
    saved = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in hosts.items()}

    events = morph.prune("fc2", 0, reason="pruned by the test")
    assert [(e["from"], e["to"]) for e in events] == [("BLENDING", "PRUNED"), ("PRUNED", "EMBARGOED")]
    assert events[0]["reason"] == "pruned by the test"
    assert layer.seed(0) is None and layer.state(0) == SeedState.EMBARGOED
    assert not seed_ids & {id(p) for p in model.parameters()}
    assert not seed_ids & ids_in_optimizer(opt) and len(opt.param_groups) == 1
    for name, p in hosts.items():  # the host's Adam state: the same tensors, the same values
        assert opt.state[p]["exp_avg"] is moments[name]
        for key, value in saved[name].items():
            assert torch.equal(opt.state[p][key], value), (name, key)
    with torch.no_grad():
        h_in = torch.relu(model.fc1(x))
        assert torch.equal(layer(h_in), layer.base_layer(h_in))
    # The slot rests for embargo_steps, resets, and can host a new seed.
    for _ in range(3):
        assert torch.isfinite(train_step(model, opt, morph, x, y))
    assert layer.state(0) == SeedState.DORMANT and go_seed(morph)["state"] == "DORMANT"
    morph.germinate("fc2", 0, "residual_mlp", width=4)
    assert layer.seed(0) is not None and seed_params_in_groups(model, opt) == [list(layer.seed(0).parameters())]


def test_illegal_transition_raises_state_error_with_gos_message_and_changes_nothing() -> None:
    model, opt, morph = make(slots=2)
    morph.germinate("fc2", 0)
    morph.advance("fc2", 0)
    layer = morph.layers[0]
    before = (morph.seeds(), [[id(p) for p in g["params"]] for g in opt.param_groups], list(morph.log))
    with pytest.raises(StateError, match=r"seed 0/0: TRAINING -> FOSSILIZED is not a legal transition"):
        morph.fossilize("fc2", 0)
    with pytest.raises(StateError, match=r"seed 0/0: TRAINING -> GERMINATED is not a legal transition"):
        morph.germinate("fc2", 0)
    with pytest.raises(StateError, match=r"advance 0/1: a DORMANT seed has no next state"):
        morph.advance("fc2", 1)
    with pytest.raises(StateError, match=r"seed 0/1: DORMANT -> PRUNED is not a legal transition"):
        morph.prune("fc2", 1)
    assert (morph.seeds(), [[id(p) for p in g["params"]] for g in opt.param_groups], list(morph.log)) == before
    assert (layer.state(0), layer.state(1)) == (SeedState.TRAINING, SeedState.DORMANT)
    assert layer.seed(1) is None


def test_closed_morphogenesis_refuses_use_and_cannot_be_pickled() -> None:
    model, opt, morph = make()
    with pytest.raises(TypeError, match="cannot be pickled; save morph.state_dict"):
        pickle.dumps(morph)
    x, y = data()
    with morph:
        morph.germinate("fc2", 0)
        train_step(model, opt, morph, x, y)
    morph.close()  # idempotent
    # A closed driver must not quietly start a fresh Go session that knows nothing of the live seed.
    with pytest.raises(esper.EsperError, match="closed"):
        train_step(model, opt, morph, x, y)
    with pytest.raises(esper.EsperError, match="closed"):
        morph.seeds()
    assert morph.layers[0].seed(0) is not None  # the model keeps its seeds


def test_a_configuration_go_refuses_raises_invalid_argument_with_gos_message() -> None:
    model, opt, morph = make(policy="heuristc")
    with pytest.raises(esper.InvalidArgumentError, match='policy "heuristc" is not one of heuristic, random, manual'):
        morph.seeds()
    with pytest.raises(ValueError, match="unknown Morphogenesis setting 'patiences'"):
        Morphogenesis(model, opt, patiences=3)
    model, opt, morph = make(epochs=-5)
    with pytest.raises(esper.InvalidArgumentError, match=r"epochs -5 is not in \[0, \d+\] \(0: unknown\)"):
        morph.seeds()


# ---------------------------------------------------------------------------------------- checkpoints


def checkpoint_run(steps: int, stop: int | None = None) -> dict[str, Any]:
    """Trains a two-layer, two-slot model under the heuristic policy with a manual germination; with
    stop, checkpoints after `stop` steps, rebuilds everything from the checkpoint and goes on."""
    epoch_len, germinate_at = 5, 3
    settings = {"policy": "heuristic", "train_steps": 3, "blend_steps": 8, "signal_every": 3, "patience": 1,
                "max_concurrent": 2, "cooldown_epochs": 0}
    x, y = data(seed=3)
    xv, yv = data(seed=4)

    def evaluate(m: nn.Module) -> dict[str, float]:
        was = m.training
        m.eval()
        with torch.no_grad():
            loss = float(F.cross_entropy(m(xv), yv))
        m.train(was)
        return {"loss": loss}

    def build() -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
        model, opt, morph = make(targets=("fc1", "fc2"), slots=2, dropout=0.2, **settings)
        morph.evaluate = evaluate
        return model, opt, morph

    model, opt, morph = build()
    torch.manual_seed(123)  # the data-independent randomness of training (dropout)
    losses: list[Tensor] = []
    trace: list[tuple[Any, ...]] = []
    at_stop: tuple[str, float] | None = None
    for n in range(steps):
        if n == germinate_at:
            morph.germinate("fc1", 0, "residual_mlp", width=4)
        losses.append(train_step(model, opt, morph, x, y))
        trace.append(tuple((layer.state(s).name, layer.alpha(s)) for layer in morph.layers for s in range(2)))
        if (n + 1) % epoch_len == 0:
            morph.end_epoch()
        if stop is not None and n + 1 == stop:
            at_stop = (morph.layers[0].state(0).name, morph.layers[0].alpha(0))
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "morph": morph.state_dict(),
                        "rng": torch.get_rng_state()}, buffer)
            morph.close()
            buffer.seek(0)
            ckpt = torch.load(buffer, weights_only=True)
            model, opt, morph = build()  # fresh objects, as in a new process
            torch.set_rng_state(ckpt["rng"])
            morph.load_state_dict(ckpt["morph"])
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
    return {"losses": losses, "trace": trace, "seeds": morph.seeds(), "log": morph.log, "at_stop": at_stop,
            "stats": morph.stats(), "model": model.state_dict(), "steps": morph.steps, "epoch": morph.epoch}


# Germinated after step 3: TRAINING from step 4, BLENDING over steps 7..15 (seen from the flush of step 9).
# Step 11 is mid-epoch and mid-ramp, with two losses not yet sent to Go and the signal taps on for the
# next step; step 4 is before the flush that tells the driver the seed is TRAINING (two steps pending).
@pytest.mark.parametrize(("stop", "state_at_stop"), [(11, "BLENDING"), (4, "GERMINATED")])
def test_resume_from_a_checkpoint_continues_identically(stop: int, state_at_stop: str) -> None:
    steps = 30
    whole = checkpoint_run(steps)
    resumed = checkpoint_run(steps, stop=stop)
    assert resumed["at_stop"] is not None and resumed["at_stop"][0] == state_at_stop
    if state_at_stop == "BLENDING":
        assert 0 < resumed["at_stop"][1] < 1
    assert len(resumed["losses"]) == len(whole["losses"]) == steps
    for n, (a, b) in enumerate(zip(whole["losses"], resumed["losses"])):
        assert torch.equal(a, b), f"step {n}: {a.item()} != {b.item()}"
    assert resumed["trace"] == whole["trace"]
    assert resumed["seeds"] == whole["seeds"]
    assert resumed["log"] == whole["log"]
    # How the germination's build was served depends on what this process and Urza already hold
    # (the whole run validated it first); that it was served once does not.
    served = [run["stats"].pop("builds") for run in (resumed, whole)]
    assert [b["hits"] + b["misses"] for b in served] == [1, 1]
    assert resumed["stats"] == whole["stats"]
    assert (resumed["steps"], resumed["epoch"]) == (whole["steps"], whole["epoch"])
    assert resumed["model"].keys() == whole["model"].keys()
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    # The run did grow, so the comparison covered live seeds in several states.
    assert {s for step in whole["trace"] for s, _ in step} >= {"TRAINING", "BLENDING", "HOLDING"}


def test_checkpoint_of_a_model_with_seeds_refuses_to_load_into_one_with_seeds() -> None:
    model, opt, morph = make()
    morph.germinate("fc2", 0)
    state = morph.state_dict()
    with pytest.raises(ValueError, match="without seeds"):
        morph.load_state_dict(state)


# ---------------------------------------------------------------------------------------- governor


def test_nan_training_loss_rolls_back_the_newest_seed_and_restores_the_last_good_weights() -> None:
    model, opt, morph = make(train_steps=1, blend_steps=50, signal_every=2)
    x, y = data()
    for _ in range(4):
        train_step(model, opt, morph, x, y)
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    seed_ids = {id(p) for p in layer.seed(0).parameters()}
    run_until(morph, SeedState.BLENDING, lambda: train_step(model, opt, morph, x, y))
    result = morph.end_epoch(val_loss=1.0)
    assert result["events"] == []
    good = {n: p.detach().clone() for n, p in host_params(model).items()}
    good_moments = {n: opt.state[p]["exp_avg"].clone() for n, p in host_params(model).items()}
    assert morph.steps % 2 == 0
    train_step(model, opt, morph, x, y)
    train_step(model, opt, morph, x, y, loss_scale=math.nan)  # the step whose loss went NaN: flushed here
    rolled = events_to(morph, "ROLLED_BACK")
    assert [(e["layer"], e["slot"], e["from"]) for e in rolled] == [(0, 0, "BLENDING")]
    assert "governor" in rolled[0]["reason"] and "non-finite" in rolled[0]["reason"]
    assert layer.seed(0) is None and layer.state(0) == SeedState.EMBARGOED
    assert not seed_ids & ({id(p) for p in model.parameters()} | ids_in_optimizer(opt))
    for name, p in host_params(model).items():
        assert torch.equal(p, good[name]), name
        assert torch.equal(opt.state[p]["exp_avg"], good_moments[name]), name
    losses = [train_step(model, opt, morph, x, y) for _ in range(6)]
    assert all(torch.isfinite(v) for v in losses)
    result = morph.end_epoch(val_loss=1.0)
    assert all(d["op"] != "rollback" for d in result["decisions"]) and len(events_to(morph, "ROLLED_BACK")) == 1
    assert go_seed(morph)["state"] == "DORMANT"


def test_rollback_after_resume_restores_the_weights_of_the_last_epoch_before_the_checkpoint() -> None:
    model, opt, morph = make(train_steps=1, blend_steps=50)
    x, y = data()
    morph.germinate("fc2", 0)
    for _ in range(4):
        train_step(model, opt, morph, x, y)
    morph.end_epoch(val_loss=1.0)
    good = {n: p.detach().clone() for n, p in host_params(model).items()}
    for _ in range(3):
        train_step(model, opt, morph, x, y)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "morph": morph.state_dict()})
    model, opt, morph = make(train_steps=1, blend_steps=50, init=99)  # other initial weights
    morph.load_state_dict(ckpt["morph"])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    assert morph.layers[0].state(0) == SeedState.BLENDING
    train_step(model, opt, morph, x, y, loss_scale=math.nan)
    assert [e["from"] for e in events_to(morph, "ROLLED_BACK")] == ["BLENDING"]
    for name, p in host_params(model).items():
        assert torch.equal(p, good[name]), name


def test_exploding_seed_is_rolled_back_and_training_recovers() -> None:
    model, opt, morph = make(train_steps=1, blend_steps=2)
    x, y = data()
    for _ in range(8):  # the governor's loss window needs a few healthy steps
        train_step(model, opt, morph, x, y)
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    seed = layer.seed(0)
    run_until(morph, SeedState.HOLDING, lambda: train_step(model, opt, morph, x, y))
    morph.end_epoch(val_loss=1.0)
    good = {n: p.detach().clone() for n, p in host_params(model).items()}
    healthy = train_step(model, opt, morph, x, y)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in seed.parameters():
            p.copy_(100 * torch.randn(p.shape, generator=g))  # finite, but the logits are now huge
    spike = train_step(model, opt, morph, x, y)
    assert torch.isfinite(spike) and spike > 100 * healthy
    rolled = events_to(morph, "ROLLED_BACK")
    assert [(e["layer"], e["slot"], e["from"]) for e in rolled] == [(0, 0, "HOLDING")]
    assert "exceeds 3 x its rolling mean" in rolled[0]["reason"]
    assert layer.seed(0) is None
    for name, p in host_params(model).items():
        assert torch.equal(p, good[name]), name
    after = [train_step(model, opt, morph, x, y) for _ in range(5)]
    assert all(torch.isfinite(v) and v < 2 * healthy for v in after)
    assert len(events_to(morph, "ROLLED_BACK")) == 1


# ---------------------------------------------------------------------------------------- execution faults


def _raise(x: Tensor) -> Tensor:
    raise RuntimeError("seed kernel exploded")


def _nan(x: Tensor) -> Tensor:
    return torch.full((x.shape[0], OUT), math.nan)


def _wrong_shape(x: Tensor) -> Tensor:
    return torch.zeros(x.shape[0], OUT + 1)


FAULTS: dict[str, tuple[str, str]] = {  # name -> (Go's failure kind in the prune reason, message fragment)
    "raises": ("exception", "RuntimeError: seed kernel exploded"),
    "nan": ("nonfinite", "non-finite output in 1 of 1 forward passes"),
    "wrong_shape": ("shape", f"expected output shape (32, {OUT}), got (32, {OUT + 1})"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failing_seed_falls_back_to_the_host_then_is_pruned_by_its_breaker(fault: str) -> None:
    failures = 3
    model, opt, morph = make(train_steps=1, blend_steps=4, failures_before_prune=failures)
    x, y = data()
    morph.germinate("fc2", 0)
    layer: KasminaLayer = morph.layers[0]
    seed = layer.seed(0)
    run_until(morph, SeedState.BLENDING, lambda: train_step(model, opt, morph, x, y))
    train_step(model, opt, morph, x, y)
    assert 0 < layer.alpha(0) < 1 and seed(torch.relu(model.fc1(x))).abs().max() > 0  # a seed that counts
    seed_ids = {id(p) for p in seed.parameters()}
    if fault == "raises":
        seed.forward = _raise
    elif fault == "wrong_shape":
        seed.forward = _wrong_shape
    else:
        with torch.no_grad():
            seed.fc1.weight.fill_(math.nan)  # a seed whose own weights went bad
    outputs: list[tuple[Tensor, Tensor]] = []
    layer.register_forward_hook(lambda m, inp, out: outputs.append((out.detach(), m.base_layer(inp[0]).detach())))
    for n in range(1, failures + 1):
        loss = train_step(model, opt, morph, x, y)
        assert torch.isfinite(loss)
        out, host_out = outputs[-1]
        assert torch.equal(out, host_out), f"step {n}: the layer's output is not the host's"
        assert all(torch.isfinite(p).all() for p in host_params(model).values()), f"step {n}: NaN reached the host"
        if n < failures:
            assert go_seed(morph)["failures"] == n and layer.state(0) == SeedState.BLENDING
    pruned = events_to(morph, "PRUNED")
    assert len(pruned) == 1
    kind, message = FAULTS[fault]
    assert f"circuit breaker open after {failures} consecutive failing steps (last: {kind}: " in pruned[0]["reason"]
    assert message in pruned[0]["reason"]
    assert layer.seed(0) is None and layer.state(0) == SeedState.EMBARGOED
    assert not seed_ids & ({id(p) for p in model.parameters()} | ids_in_optimizer(opt))
    for _ in range(4):
        assert torch.isfinite(train_step(model, opt, morph, x, y))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _breaker_run(fail_at: set[int], steps: int, signal_every: int,
                 fault: str = "raises") -> tuple[KasminaLayer, Morphogenesis]:
    """A TRAINING seed (breaker at 3 failing steps) whose forward fails in the steps of fail_at
    (1-based, counted from the first faulty step) and works in the others."""
    model, opt, morph = make(train_steps=1000, failures_before_prune=3, signal_every=signal_every)
    x, y = data()
    morph.germinate("fc2", 0)
    layer: KasminaLayer = morph.layers[0]
    run_until(morph, SeedState.TRAINING, lambda: train_step(model, opt, morph, x, y))
    while morph.steps % signal_every:  # start on a window boundary, so windows are easy to reason about
        train_step(model, opt, morph, x, y)
    seed = layer.seed(0)
    good = seed.forward
    for n in range(1, steps + 1):
        if layer.seed(0) is not None:
            seed.forward = good if n not in fail_at else _raise if fault == "raises" else _nan
        assert torch.isfinite(train_step(model, opt, morph, x, y))
    return layer, morph


@pytest.mark.parametrize("signal_every", [1, 10])
def test_breaker_counts_consecutive_failing_steps_not_failures(signal_every: int) -> None:
    # Three exceptions nine clean steps apart (the count the old breaker pruned on): no prune,
    # whether each lands in a window of its own (signal_every 10: three consecutive windows) or not.
    layer, morph = _breaker_run({1, 11, 21}, 30, signal_every)
    assert layer.state(0) == SeedState.TRAINING and not events_to(morph, "PRUNED")
    info = go_seed(morph)
    assert info["failures"] == 3 and info["streak"] == 1 and info["breaker"] == "closed"
    # Two, a clean step, two: never three in a row, even inside one window.
    layer, morph = _breaker_run({3, 4, 6, 7}, 10, signal_every)
    assert layer.state(0) == SeedState.TRAINING and go_seed(morph)["failures"] == 4
    # Three in a row prune the seed, also when they are reported together at a window's end.
    layer, morph = _breaker_run({3, 4, 5}, 10, signal_every)
    pruned = events_to(morph, "PRUNED")
    assert len(pruned) == 1 and layer.seed(0) is None
    assert pruned[0]["reason"].startswith("circuit breaker open after 3 consecutive failing steps (last: exception: ")
    assert pruned[0]["step"] == morph.steps - 10 + 5  # at the third failing step, not the window's end


def test_breaker_counts_a_window_of_nonfinite_outputs_as_failing_steps() -> None:
    # Non-finite outputs are counted on the device, per window: a window where every forward failed
    # is that many failing steps (pruned at the third); one clean forward in it makes it one.
    layer, morph = _breaker_run(set(range(1, 11)), 10, 10, fault="nan")
    pruned = events_to(morph, "PRUNED")
    assert len(pruned) == 1 and "(last: nonfinite: non-finite output in 10 of 10 forward passes)" in pruned[0]["reason"]
    assert pruned[0]["step"] == morph.steps - 10 + 3
    layer, morph = _breaker_run(set(range(1, 10)), 10, 10, fault="nan")
    assert layer.state(0) == SeedState.TRAINING
    assert go_seed(morph)["failures"] == 1 and go_seed(morph)["streak"] == 1


def _churn(morph: Morphogenesis, model: nn.Module, opt: torch.optim.Optimizer, cycles: int) -> None:
    """Germinate and prune a seed `cycles` times (about six log entries each)."""
    x, y = data()
    for _ in range(cycles):
        morph.germinate("fc2", 0)
        train_step(model, opt, morph, x, y)
        morph.prune("fc2", 0)
        for _ in range(3):
            train_step(model, opt, morph, x, y)


def test_log_is_bounded_in_memory_and_in_checkpoints() -> None:
    model, opt, morph = make(train_steps=1, embargo_steps=0, log_max=8)
    _churn(morph, model, opt, 20)
    assert 1 <= len(morph.log) <= 8 and morph.log_dropped > 0
    total = len(morph.log) + morph.log_dropped
    assert total >= 100  # everything that happened is counted
    assert morph.log[-1]["kind"] == "event" and morph.log[-1]["to"] == "DORMANT"  # the newest are kept
    go_log = morph.session.growth_log()
    assert len(go_log["entries"]) <= 8 and go_log["dropped"] > 0  # Go's growth log has the same bound
    state = morph.state_dict()
    assert len(state["log"]) <= 8 and state["log_dropped"] == morph.log_dropped
    assert len(pickle.dumps(state["log"])) < 8 * 1024
    model2, opt2, morph2 = make(train_steps=1, embargo_steps=0, log_max=4)
    morph2.load_state_dict(state)
    assert len(morph2.log) <= 4 and len(morph2.log) + morph2.log_dropped == total
    assert morph2.log[-1] == morph.log[-1]
    # Negative control: with the default bound nothing of the same run is dropped.
    model3, opt3, morph3 = make(train_steps=1, embargo_steps=0)
    _churn(morph3, model3, opt3, 20)
    assert morph3.log_dropped == 0 and len(morph3.log) == total
    with pytest.raises(ValueError, match="log_max must be in"):
        make(log_max=0)


def test_failures_of_a_seed_pruned_by_hand_are_not_blamed_on_the_slot_later() -> None:
    # A seed that failed once and was then pruned: its recorded failure must not reach Go after the
    # slot has emptied (Go refuses failures for a DORMANT slot) nor count against the next seed.
    model, opt, morph = make(train_steps=1, blend_steps=4, signal_every=4, embargo_steps=0)
    x, y = data()
    morph.germinate("fc2", 0)
    layer = morph.layers[0]
    for _ in range(4):
        train_step(model, opt, morph, x, y)
    assert layer.state(0) == SeedState.BLENDING
    layer.seed(0).forward = _raise
    train_step(model, opt, morph, x, y)  # fails; recorded until the next signal flush
    morph.prune("fc2", 0)
    for _ in range(8):
        assert torch.isfinite(train_step(model, opt, morph, x, y))
    assert go_seed(morph)["state"] == "DORMANT"
    morph.germinate("fc2", 0)
    for _ in range(4):
        train_step(model, opt, morph, x, y)
    assert go_seed(morph)["failures"] == 0


# ---------------------------------------------------------------------------------------- controller


def test_heuristic_controller_keeps_budget_concurrency_and_cooldown() -> None:
    max_params, cooldown = 120, 4
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                     nn.Linear(HIDDEN, OUT)),
                       target_modules=["0", "2", "4"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # evaluate returns a constant: every held seed "contributes" 0, which reaches prune_below = min_gain = 0,
    # and is fossilized, so the budget fills up; the validation loss is flat: the controller always wants more.
    # Small seeds (width 2) so that several fit; a seed is in flight for more than two epochs.
    morph = Morphogenesis(model, opt, policy="heuristic", patience=1, max_params=max_params, max_concurrent=1,
                          cooldown_epochs=cooldown, train_steps=2, blend_steps=6, signal_every=1,
                          template_params={"width": 2}, min_gain=0.0, evaluate=lambda m: {"loss": 1.0})
    x, y = data()
    live = [SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING]
    waits: list[str] = []
    for epoch in range(30):
        for _ in range(4):
            train_step(model, opt, morph, x, y)
            in_flight = sum(layer.state(s) in live for layer in morph.layers for s in range(2))
            assert in_flight <= 1
        waits += [d["reason"] for d in morph.end_epoch()["decisions"] if d["op"] == "wait"]
        assert morph.seed_params() <= max_params, epoch
        assert sum(s["param_count"] for s in morph.seeds() if s["state"] in {*(st.name for st in live), "FOSSILIZED"}) \
            <= max_params
        assert sum(layer.state(s) in live for layer in morph.layers for s in range(2)) <= 1
    germinations = [(e["epoch"], e["layer"]) for e in events_to(morph, "GERMINATED")]
    assert len(germinations) >= 3, morph.log
    for layer_index in range(3):
        epochs = [e for e, layer in germinations if layer == layer_index]
        assert all(b - a >= cooldown for a, b in zip(epochs, epochs[1:])), (layer_index, epochs)
    # Each limit did hold the controller back at some epoch (the reasons are Go's).
    assert any("seeds are in flight (max_concurrent 1)" in r for r in waits)
    assert any(f"of {max_params} params left" in r or "budget is spent" in r for r in waits)
    assert len(events_to(morph, "FOSSILIZED")) == len(germinations)


# ---------------------------------------------------------------------------------------- concurrency and fork


def test_threads_driving_separate_sessions_at_once_match_a_sequential_run() -> None:
    workers, steps = 6, 30

    def build(index: int) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
        return make(train_steps=2, blend_steps=5, signal_every=2, init=index)  # seeds the global RNG: main thread

    def run(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, index: int) -> list[Any]:
        x, y = data(seed=index)
        morph.germinate("fc2", 0)  # builds the seed from its own generator seed, in the worker thread
        losses = [float(train_step(model, opt, morph, x, y)) for _ in range(steps)]
        morph.end_epoch(val_loss=losses[-1])
        assert morph.layers[0].state(0) == SeedState.HOLDING and go_seed(morph)["state"] == "HOLDING"
        out = [losses, morph.seeds(), morph.log]
        morph.close()
        return out

    expected = [run(*build(i), i) for i in range(workers)]
    built = [build(i) for i in range(workers)]
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = run(*built[i], i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert [results[i] for i in range(workers)] == expected


def test_germinations_in_several_threads_each_get_their_own_initial_weights() -> None:
    # Seeds are initialised from the global RNG, re-seeded per seed; threads must not interleave there.
    workers, cycles = 4, 25

    def cycle(morph: Morphogenesis) -> list[float]:
        sums = []
        for _ in range(cycles):
            morph.germinate("fc2", 0, "residual_mlp", width=512)
            sums.append(float(sum(p.detach().double().sum() for p in morph.layers[0].seed(0).parameters())))
            morph.advance("fc2", 0)
            morph.prune("fc2", 0)
            morph.step()  # the slot resets (embargo 0) for the next germination
        return sums

    expected = [cycle(make(init=i, embargo_steps=0)[2]) for i in range(workers)]
    drivers = [make(init=i, embargo_steps=0)[2] for i in range(workers)]
    results: dict[int, list[float]] = {}
    barrier = threading.Barrier(workers)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = cycle(drivers[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results.get(i) for i in range(workers)] == expected


FORK_CHILD = textwrap.dedent("""
    import os, sys
    import torch
    import esper
    from torch import nn

    model = esper.wrap(nn.Sequential(nn.Linear(4, 4)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1)
    morph.step(1.0)  # the Go runtime is running in this process now
    pid = os.fork()
    if pid == 0:
        try:
            morph.step(1.0)
        except esper.ForkError as e:
            print("child ForkError:", e, flush=True)
            os._exit(0)
        except BaseException as e:
            print("child other error:", type(e).__name__, e, flush=True)
            os._exit(2)
        print("child: no error", flush=True)
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    morph.step(1.0)  # the parent is unaffected
    print("parent ok", morph.steps, os.waitstatus_to_exitcode(status), flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_morphogenesis_in_a_forked_child_raises_fork_error() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "child ForkError:" in done.stdout and "spawn" in done.stdout, done.stdout
    assert "parent ok 2 0" in done.stdout, done.stdout


def test_epoch_rollback_without_a_seed_restores_the_host() -> None:
    """A training loss that blows up with no seed in flight makes Tamiyo call for a rollback
    that no seed can take the blame for: the driver restores the last good host weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    esper.wrap(model, target_modules=[nn.Linear])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1)
    for _ in range(6):  # a steady loss history for the governor's rolling mean
        morph.step(torch.tensor(1.0))
        morph.end_epoch(val_loss=1.0, train_loss=1.0)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(100.0)  # the host diverges on its own
    result = morph.end_epoch(val_loss=50.0, train_loss=50.0)
    assert any(d["op"] == "rollback" and d["layer"] == -1 for d in result["decisions"]), result
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k
    morph.close()


def test_json_lines_log_and_stats(tmp_path: Path) -> None:
    """Morphogenesis(log_path=...) makes Go append one JSON object per line for events and
    decisions; stats() exposes Nissa's rolling statistics per layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    esper.wrap(model, target_modules=[nn.Linear])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    log = tmp_path / "growth.jsonl"
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=2, train_steps=2, blend_steps=2,
                                log_path=str(log))
    morph.germinate(0, 0, "residual_mlp", width=4)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    morph.end_epoch(val_loss=float(loss.detach()))
    stats = morph.stats()
    morph.close()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    tos = [r["data"]["to"] for r in records if r["kind"] == "event"]
    assert tos[:4] == ["GERMINATED", "TRAINING", "BLENDING", "HOLDING"], tos
    assert all({"time", "kind", "step", "data"} <= set(r) for r in records)
    assert json.dumps(stats)  # plain JSON, per layer, for the user
