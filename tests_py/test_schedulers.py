"""Every torch.optim.lr_scheduler across germinations, prunes and fossilizations, with real optimizers.

A seed's parameters join the parameter group of its host layer (MorphConfig.seed_lr_scale = 1, the
default), so the number of groups never changes and every scheduler keeps working. The expected
learning rates never come from Esper: each run is replayed on the plain, unwrapped model with the same
optimizer and scheduler, and that run's LR sequence (and every other hyperparameter of the group:
momentum, betas, OneCycleLR's keys) is what the seed's group must hold at every step. With another
seed_lr_scale each seed has a group of its own and the schedulers passed to Morphogenesis follow it.
Nothing is mocked: real PyTorch, the real Go library.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import lr_scheduler as S

import esper
from esper import Morphogenesis
from esper.kasmina import SeedState

IN, HIDDEN, OUT = 4, 8, 3
STEPS = 36
LR = (0.02, 0.01)  # group 0 (fc1), group 1 (fc2): distinct, so a seed in the wrong group shows


class TinyNet(nn.Module):
    """(B, 4) -> (B, 3): fc1, ReLU, fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, IN, generator=g), torch.randint(0, OUT, (32,), generator=g)


Groups = list[dict[str, Any]]
OPTIMIZERS: dict[str, Callable[[Groups], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=LR[0], momentum=0.9),
    "sgd_nesterov": lambda g: torch.optim.SGD(g, lr=LR[0], momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda g: torch.optim.Adam(g, lr=LR[0]),
    "adamw": lambda g: torch.optim.AdamW(g, lr=LR[0], weight_decay=0.01),
    "rmsprop": lambda g: torch.optim.RMSprop(g, lr=LR[0]),
}

Scheduler = Any  # an LRScheduler or ReduceLROnPlateau
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Scheduler]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=5, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[5, 15, 25], gamma=0.3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=10),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=10),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.93),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=50, power=2.0),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=12),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=[0.002, 0.001], max_lr=[0.02, 0.01], step_size_up=4),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=[0.05, 0.02], total_steps=STEPS),
    # One lambda per group: a seed must follow its host's.
    "LambdaLR": lambda o: S.LambdaLR(o, lr_lambda=[lambda e: 0.9**e, lambda e: 1.0 / (1 + e)]),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 0.96),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=6), S.CosineAnnealingLR(o, T_max=20)], milestones=[6]),
    "ChainedScheduler": lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.5, total_iters=8), S.ExponentialLR(o, gamma=0.95)]),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, min_lr=1e-4),
}


def metric(n: int) -> float:
    """ReduceLROnPlateau's metric at step n: improving for 8 steps, then flat (so it reduces the LR)."""
    return 1.0 / (1 + min(n, 8))


def build(optimizer: str, scheduler: str, wrapped: bool, **settings: Any,
          ) -> tuple[nn.Module, torch.optim.Optimizer, Scheduler, Morphogenesis | None]:
    """TinyNet (wrapped at fc1 and fc2, one slot each, or plain), an optimizer with one group per
    layer, the scheduler, and (wrapped) a manual Morphogenesis. It is told about the scheduler only
    with a seed_lr_scale other than 1: by default seeds need no scheduler to be known."""
    torch.manual_seed(0)
    model = TinyNet()
    if wrapped:
        model = esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    opt = OPTIMIZERS[optimizer]([{"params": list(model.fc1.parameters()), "lr": LR[0]},
                                 {"params": list(model.fc2.parameters()), "lr": LR[1]}])
    sched = SCHEDULERS[scheduler](opt)
    morph = None
    if wrapped:
        # The governor is kept out of the test's plan (a loss spike at the top of a one-cycle would roll a
        # seed back): it takes seeds out of the optimizer the way a prune does.
        settings = {"policy": "manual", "signal_every": 1, "train_steps": 2, "blend_steps": 3, "embargo_steps": 2,
                    "max_concurrent": 2, "cooldown_epochs": 0, "loss_factor": 1e6, **settings}
        morph = Morphogenesis(model, opt, schedulers=[sched] if settings.get("seed_lr_scale", 1) != 1 else [],
                              **settings)
    return model, opt, sched, morph


def train_step(n: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Scheduler,
               morph: Morphogenesis | None, x: Tensor, y: Tensor) -> Tensor:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(metric(n))
    else:
        sched.step()
    if morph is not None:
        morph.step(loss.detach())
    return loss.detach()


def hyper(group: dict[str, Any]) -> dict[str, Any]:
    """A group's hyperparameters (everything but its parameters and Esper's tag)."""
    return {k: v for k, v in group.items() if k not in ("params", "esper_seed")}


def reference(optimizer: str, scheduler: str, steps: int = STEPS) -> list[list[dict[str, Any]]]:
    """Each step's group hyperparameters of the same training without Esper."""
    model, opt, sched, _ = build(optimizer, scheduler, wrapped=False)
    x, y = data()
    out = []
    for n in range(steps):
        train_step(n, model, opt, sched, None, x, y)
        out.append([hyper(g) for g in opt.param_groups])
    return out


def group_of(opt: torch.optim.Optimizer, p: Tensor) -> int:
    """The index of the group holding parameter p (by identity)."""
    found = [g for g, group in enumerate(opt.param_groups) if any(q is p for q in group["params"])]
    assert len(found) == 1, f"parameter in groups {found}"
    return found[0]


def ids_in_optimizer(opt: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]} | {id(p) for p in opt.state}


# What the test does before step n: (layer, action, state the slot must be in first).
PLAN: dict[int, list[tuple[str, str, tuple[str, ...]]]] = {
    2: [("fc2", "germinate", ("DORMANT",))],
    4: [("fc1", "germinate", ("DORMANT",))],
    7: [("fc2", "prune", ("TRAINING", "BLENDING"))],
    13: [("fc2", "germinate", ("DORMANT",))],
    14: [("fc1", "fossilize", ("HOLDING",))],
    21: [("fc2", "prune", ("BLENDING", "HOLDING"))],
    27: [("fc2", "germinate", ("DORMANT",))],
}


def act(morph: Morphogenesis, name: str, action: str, states: tuple[str, ...]) -> None:
    layer = morph.layers[morph.layer_names.index(name)]
    assert layer.state(0).name in states, f"{name} is {layer.state(0).name}, expected one of {states}"
    if action == "germinate":
        morph.germinate(name, 0, "residual_mlp", width=4)
    else:
        getattr(morph, action)(name, 0)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_seeds_follow_their_hosts_schedule_across_germinations_prunes_and_fossilization(
        scheduler: str, optimizer: str) -> None:
    expected = reference(optimizer, scheduler)
    model, opt, sched, morph = build(optimizer, scheduler, wrapped=True)
    assert morph is not None
    x, y = data()
    hosts = {"fc1": 0, "fc2": 1}  # the group of each host layer
    seen: dict[str, int] = {"fc1": 0, "fc2": 0}  # steps each layer had a live seed in the optimizer
    moved: dict[str, int] = {"fc1": 0, "fc2": 0}  # ... on which the seed's parameters changed
    for n in range(STEPS):
        for name, action, states in PLAN.get(n, []):
            act(morph, name, action, states)
            if action == "prune":
                assert morph.layers[hosts[name]].seed(0) is None
        before = {name: [p.detach().clone() for p in morph.layers[g].seeds.parameters()] for name, g in hosts.items()}
        # A GERMINATED seed is not run yet; from TRAINING on it learns (FOSSILIZED: jointly with the host).
        learning = {name: morph.layers[g].state(0).name not in ("GERMINATED", "DORMANT") for name, g in hosts.items()}
        assert torch.isfinite(train_step(n, model, opt, sched, morph, x, y)), f"step {n}"
        assert len(opt.param_groups) == 2, f"step {n}: the seeds must not add groups"
        for g, group in enumerate(opt.param_groups):
            assert hyper(group) == expected[n][g], f"step {n}, group {g}"
        live = set()
        for name, g in hosts.items():
            seed = morph.layers[g].seed(0)
            if seed is None:
                continue
            params = list(seed.parameters())
            live |= {id(p) for p in params}
            for p in params:
                assert group_of(opt, p) == g, f"step {n}: {name}'s seed is not in its host's group"
            seen[name] += 1
            if learning[name]:  # (at alpha 0, the start of BLENDING, a seed has no gradient)
                moved[name] += any(not torch.equal(p, q) for p, q in zip(params, before[name]))
        seeds_ever = {id(p) for layer in morph.layers for p in layer.seeds.parameters()}
        assert seeds_ever == live
        host_ids = {id(p) for n_, p in model.named_parameters() if ".seeds." not in n_}
        assert ids_in_optimizer(opt) <= host_ids | live, f"step {n}: a pruned seed is still in the optimizer"
    assert seen["fc1"] >= 20 and seen["fc2"] >= 15
    assert moved["fc1"] >= 15 and moved["fc2"] >= 10, moved
    assert [s["state"] for s in morph.seeds()] == ["FOSSILIZED", "HOLDING"]
    morph.close()


@pytest.mark.parametrize("scheduler", ["OneCycleLR", "LambdaLR", "ReduceLROnPlateau"])
def test_the_readme_loop_with_a_scheduler_grows_under_the_heuristic_policy(scheduler: str) -> None:
    """Tamiyo germinates and prunes at end_epoch; the scheduler steps every batch, unaware of Esper."""
    epochs, batches = 10, 6
    steps = epochs * batches
    make_sched: dict[str, Callable[[torch.optim.Optimizer], Scheduler]] = {
        "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.03, total_steps=steps),
        "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 0.97**e),
        "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.7, patience=2),
    }
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, IN, generator=g), torch.randint(0, OUT, (64,), generator=g)
    xv, yv = torch.randn(64, IN, generator=g), torch.randint(0, OUT, (64,), generator=g)

    def run(wrapped: bool) -> tuple[list[float], Morphogenesis | None]:
        torch.manual_seed(0)
        model: nn.Module = TinyNet()
        if wrapped:
            model = esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=2)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = make_sched[scheduler](opt)
        morph = Morphogenesis(model, opt, train_steps=3, blend_steps=3, signal_every=2, patience=1, threshold=0.5,
                              cooldown_epochs=0, max_concurrent=2, embargo_steps=3) if wrapped else None
        lrs = []
        for n in range(steps):
            train_step(n, model, opt, sched, morph, x, y)
            assert len(opt.param_groups) == 1
            lrs.append(opt.param_groups[0]["lr"])
            if morph is not None:
                assert {id(p) for p in model.parameters()} == {id(p) for p in opt.param_groups[0]["params"]}
                if (n + 1) % batches == 0:
                    with torch.no_grad():
                        morph.end_epoch(val_loss=float(F.cross_entropy(model(xv), yv)))
        return lrs, morph

    expected, _ = run(wrapped=False)
    lrs, morph = run(wrapped=True)
    assert morph is not None
    assert lrs == expected
    grown = [e for e in morph.log if e["kind"] == "event" and e["to"] == "GERMINATED"]
    assert len(grown) >= 2, "the run must grow for the test to mean anything"
    morph.close()


def test_a_seed_trains_at_its_hosts_current_learning_rate() -> None:
    """Plain SGD: a seed's update is exactly -lr * grad with the host's scheduled lr, computed here."""
    torch.manual_seed(0)
    model = esper.wrap(TinyNet(), target_modules=["fc2"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = S.StepLR(opt, step_size=3, gamma=0.5)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=1, train_steps=2, blend_steps=3)
    x, y = data()
    checked = 0
    for n in range(12):
        if n == 7:  # host's LR is 0.1 * 0.5**2 by now, the optimizer's constructor LR still 0.1
            morph.germinate("fc2", 0, "residual_mlp", width=4)
        seed = list(morph.layers[0].seeds.parameters())
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = [(p.detach().clone(), p.grad.clone()) for p in seed if p.grad is not None]
        opt.step()
        sched.step()
        morph.step(loss.detach())
        lr = 0.1 * 0.5 ** (n // 3)
        for p, (old, grad) in zip([p for p in seed if p.grad is not None], before):
            torch.testing.assert_close(p.detach(), old - lr * grad, rtol=0, atol=1e-7)
        checked += any(g.abs().sum() > 0 for _, g in before)
    assert checked >= 3  # steps on which the seed had a gradient (at alpha 0 in BLENDING it has none)
    morph.close()


def test_a_fossil_frozen_by_freeze_fossilized_leaves_its_hosts_group() -> None:
    model, opt, sched, morph = build("adam", "LambdaLR", wrapped=True, freeze_fossilized=True)
    assert morph is not None
    x, y = data()
    expected = reference("adam", "LambdaLR", steps=20)
    host = [id(p) for p in opt.param_groups[1]["params"]]
    morph.germinate("fc2", 0)
    seed = list(morph.layers[1].seed(0).parameters())
    assert [id(p) for p in opt.param_groups[1]["params"]] == host + [id(p) for p in seed]
    for n in range(20):
        if n == 10:
            assert morph.layers[1].state(0) == SeedState.HOLDING
            morph.fossilize("fc2", 0)
            assert [id(p) for p in opt.param_groups[1]["params"]] == host
            assert not {id(p) for p in seed} & ids_in_optimizer(opt)
        train_step(n, model, opt, sched, morph, x, y)
        assert [hyper(g) for g in opt.param_groups] == expected[n]
    morph.close()


def test_a_rollback_gives_optimizer_state_back_only_to_parameters_the_optimizer_holds() -> None:
    """A seed frozen (freeze_fossilized) after the last good state must not get its Adam state back:
    the optimizer holds it in no group, and optimizer.state_dict() would raise KeyError."""
    model, opt, sched, morph = build("adam", "StepLR", wrapped=True, freeze_fossilized=True, loss_factor=3.0)
    assert morph is not None
    x, y = data()
    morph.germinate("fc2", 0)
    for n in range(10):
        train_step(n, model, opt, sched, morph, x, y)
    morph.end_epoch(val_loss=1.0)  # the last good state: the seed trains, with Adam state
    seed = list(morph.layers[1].seed(0).parameters())
    assert all(p in opt.state for p in seed)
    morph.fossilize("fc2", 0)
    assert not any(p in opt.state for p in seed)
    host = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters() if ".seeds." not in n}
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    morph.step(torch.tensor(math.nan))  # a NaN loss, no seed in flight: Tolaria restores the last good state
    # signal_every=1: the governor decides at this step's flush, before the next optimizer step.
    assert [e["op"] for e in morph.log if e.get("kind") == "decision"] == ["rollback"]
    for n, p in model.named_parameters():
        if ".seeds." not in n:
            assert torch.equal(opt.state[p]["exp_avg"], host[n]), n
    assert not any(p in opt.state for p in seed)
    opt.state_dict()  # raised KeyError when the frozen seed's state came back
    morph.close()


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_an_optimizer_built_from_named_parameters_keeps_its_names_in_step_with_its_parameters(scale: float) -> None:
    torch.manual_seed(0)
    model = esper.wrap(TinyNet(), target_modules=["fc2"], seeds_per_layer=1)
    opt = torch.optim.AdamW(model.named_parameters(), lr=0.01)
    sched = S.LambdaLR(opt, lambda e: 0.95**e)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=1, embargo_steps=2, seed_lr_scale=scale,
                          schedulers=[sched])
    x, y = data()

    def check() -> None:
        names = {id(p): n for n, p in model.named_parameters()}
        for group in opt.param_groups:
            assert group["param_names"] == [names[id(p)] for p in group["params"]]

    morph.germinate("fc2", 0)
    check()
    assert "fc2.seeds.0.fc1.weight" in [n for g in opt.param_groups for n in g["param_names"]]
    for n in range(4):
        train_step(n, model, opt, sched, morph, x, y)
    state = opt.state_dict()
    assert len(state["param_groups"]) == (1 if scale == 1 else 2)
    morph.prune("fc2", 0)
    check()
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4
    train_step(4, model, opt, sched, morph, x, y)
    morph.close()


def test_a_seed_of_a_host_the_optimizer_does_not_hold_joins_the_first_group() -> None:
    """A frozen host (only fc1 trains): its seed still trains, in group 0, on group 0's schedule."""
    torch.manual_seed(0)
    model = esper.wrap(TinyNet(), target_modules=["fc1", "fc2"], seeds_per_layer=1)
    model.fc2.requires_grad_(False)
    opt = torch.optim.SGD([{"params": list(model.fc1.parameters()), "lr": 0.05}], momentum=0.9)
    sched = S.ExponentialLR(opt, gamma=0.9)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=1)
    x, y = data()
    for n in range(3):
        train_step(n, model, opt, sched, morph, x, y)
    morph.germinate("fc2", 0)
    seed = list(morph.layers[1].seed(0).parameters())
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"][-len(seed):] == seed
    before = [p.detach().clone() for p in seed]
    for n in range(3, 8):
        train_step(n, model, opt, sched, morph, x, y)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9 ** (n + 1), rel=1e-12)
    assert any(not torch.equal(p, q) for p, q in zip(seed, before))
    morph.close()


# ---------------------------------------------------------------------------------------- seed_lr_scale


def scheduler_lists(sched: Scheduler) -> Iterator[tuple[str, list[Any]]]:
    """Every per-group list of a scheduler and of the schedulers it drives."""
    queue = [sched]
    while queue:
        s = queue.pop()
        queue.extend(getattr(s, "_schedulers", []))
        for name in ("base_lrs", "max_lrs", "min_lrs", "_last_lr", "lr_lambdas", "base_momentums", "max_momentums"):
            if isinstance(getattr(s, name, None), list):
                yield f"{type(s).__name__}.{name}", getattr(s, name)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_seed_lr_scale_gives_seeds_groups_of_their_own_that_the_schedulers_follow(
        scheduler: str, optimizer: str) -> None:
    scale = 0.5
    expected = reference(optimizer, scheduler)
    model, opt, sched, morph = build(optimizer, scheduler, wrapped=True, seed_lr_scale=scale)
    assert morph is not None
    x, y = data()
    hosts = {"fc1": 0, "fc2": 1}
    for n in range(STEPS):
        for name, action, states in PLAN.get(n, []):
            act(morph, name, action, states)
        assert torch.isfinite(train_step(n, model, opt, sched, morph, x, y)), f"step {n}"
        live = [(name, g) for name, g in hosts.items() if morph.layers[g].seed(0) is not None]
        assert len(opt.param_groups) == 2 + len(live), f"step {n}"
        for list_name, values in scheduler_lists(sched):
            assert len(values) == len(opt.param_groups), f"step {n}: {list_name}"
        for g in (0, 1):  # the hosts' groups are untouched
            assert hyper(opt.param_groups[g]) == expected[n][g], f"step {n}, group {g}"
        for name, g in live:
            params = list(morph.layers[g].seed(0).parameters())
            own = group_of(opt, params[0])
            assert own >= 2 and opt.param_groups[own]["params"] == params
            assert opt.param_groups[own]["esper_seed"] == f"{name}/0"
            mine, host = hyper(opt.param_groups[own]), expected[n][g]
            assert mine.keys() == host.keys()
            for key, value in host.items():
                if key in ("lr", "initial_lr", "max_lr", "min_lr"):
                    assert mine[key] == pytest.approx(value * scale, rel=1e-9), f"step {n}: {name} {key}"
                else:
                    assert mine[key] == value, f"step {n}: {name} {key}"
    morph.close()


def test_seed_lr_scale_with_an_unregistered_scheduler_is_refused_before_anything_changes() -> None:
    torch.manual_seed(0)
    model = esper.wrap(TinyNet(), target_modules=["fc2"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = S.LambdaLR(opt, lambda e: 0.9**e)
    with pytest.raises(ValueError, match=r"seed_lr_scale=0.5 .* schedulers=\[scheduler\]"):
        Morphogenesis(model, opt, policy="manual", seed_lr_scale=0.5)
    with pytest.raises(ValueError, match="seed_lr_scale must be a finite number > 0"):
        Morphogenesis(model, opt, policy="manual", seed_lr_scale=0.0)
    # A scheduler created after Morphogenesis is caught at the germination, before Go hears of it.
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = Morphogenesis(model, opt2, policy="manual", seed_lr_scale=0.5)
    S.OneCycleLR(opt2, max_lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match="schedulers=\\[scheduler\\]"):
        morph.germinate("fc2", 0)
    assert morph.seeds()[0]["state"] == "DORMANT" and len(opt2.param_groups) == 1
    with pytest.raises(ValueError, match="schedulers=\\[scheduler\\]"):
        morph.end_epoch(val_loss=1.0)
    morph.close()
    del sched


@pytest.mark.parametrize("scheduler", ["LambdaLR", "OneCycleLR"])
def test_negative_control_a_group_of_its_own_breaks_these_schedulers_unless_they_are_told(scheduler: str) -> None:
    """What the former "own group" layout did: add_param_group behind the scheduler's back."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(TinyNet().parameters(), lr=0.1, momentum=0.9)
    sched = (S.LambdaLR(opt, lambda e: 0.9**e) if scheduler == "LambdaLR"
             else S.OneCycleLR(opt, max_lr=0.1, total_steps=10))
    opt.step()
    sched.step()
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    opt.step()
    error = (ValueError, "zip\\(\\) argument 2 is shorter") if scheduler == "LambdaLR" else (KeyError, "initial_lr")
    with pytest.raises(error[0], match=error[1]):
        sched.step()


# ---------------------------------------------------------------------------------------- checkpoints


def checkpoint_run(scheduler: str, scale: float, stop: int | None) -> dict[str, Any]:
    model, opt, sched, morph = build("adam", scheduler, wrapped=True, seed_lr_scale=scale)
    assert morph is not None
    x, y = data()
    losses, lrs, layouts = [], [], []
    for n in range(30):
        for name, action, states in PLAN.get(n, []):
            act(morph, name, action, states)
        losses.append(train_step(n, model, opt, sched, morph, x, y))
        lrs.append([g["lr"] for g in opt.param_groups])
        names = {id(p): k for k, p in model.named_parameters()}
        layouts.append([[names[id(p)] for p in g["params"]] for g in opt.param_groups])
        if n + 1 == stop:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "morph": morph.state_dict()}, buffer)
            morph.close()
            buffer.seek(0)
            ckpt = torch.load(buffer, weights_only=True)
            model, opt, sched, morph = build("adam", scheduler, wrapped=True, seed_lr_scale=scale)
            assert morph is not None
            morph.load_state_dict(ckpt["morph"])
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
    params = {id(p) for p in model.parameters()}  # the hosts' and the live seeds'
    result = {"losses": losses, "lrs": lrs, "layouts": layouts, "seeds": morph.seeds(),
              "model": model.state_dict(), "stale": ids_in_optimizer(opt) - params}
    morph.close()
    return result


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("scheduler", ["OneCycleLR", "LambdaLR"])
def test_resume_rebuilds_where_seeds_sit_in_the_optimizer_and_continues_identically(
        scheduler: str, scale: float) -> None:
    # Step 17: fc1's seed fossilized, fc2's second seed blending; later a prune after the resume.
    whole = checkpoint_run(scheduler, scale, stop=None)
    resumed = checkpoint_run(scheduler, scale, stop=17)
    assert resumed["layouts"] == whole["layouts"]
    assert resumed["lrs"] == whole["lrs"]
    for n, (a, b) in enumerate(zip(whole["losses"], resumed["losses"])):
        assert torch.equal(a, b), f"step {n}: {a.item()} != {b.item()}"
    assert resumed["seeds"] == whole["seeds"]
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    # The prune at step 21 (after the resume) took the seed out of the resumed optimizer too.
    assert resumed["stale"] == whole["stale"] == set()
    stop = whole["layouts"][16]
    assert any(".seeds." in name for group in stop for name in group)  # seeds were in the optimizer at the stop


def test_a_checkpoint_from_before_seeds_joined_their_hosts_group_still_resumes() -> None:
    """Older checkpoints list [layer, slot] pairs: each seed in a group of its own, in that order."""
    model, opt, sched, morph = build("adam", "StepLR", wrapped=True, seed_lr_scale=0.5)
    assert morph is not None
    x, y = data()
    for n in range(17):
        for name, action, states in PLAN.get(n, []):
            act(morph, name, action, states)
        train_step(n, model, opt, sched, morph, x, y)
    state = morph.state_dict()
    assert [e["own"] for e in state["groups"]] == [True, True]
    state["groups"] = [[e["layer"], e["slot"]] for e in state["groups"]]  # the former format
    ckpt = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    layout = [[id(p) for p in g["params"]] for g in opt.param_groups]
    names = {id(p): k for k, p in model.named_parameters()}
    layout_names = [[names[i] for i in g] for g in layout]
    morph.close()
    model, opt, sched, morph = build("adam", "StepLR", wrapped=True)  # seed_lr_scale 1 now
    assert morph is not None
    morph.load_state_dict(state)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    names = {id(p): k for k, p in model.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in opt.param_groups] == layout_names
    for n in range(17, 25):
        assert math.isfinite(train_step(n, model, opt, sched, morph, x, y).item())
    morph.close()
