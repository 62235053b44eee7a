"""Non-finite values are signals, never exceptions (issue 13 item 2, issue 14 item 4).

A NaN or Inf in the loss, a wrapped layer's activations or weights, the rows of its effective-rank
estimate, the gradients (once they reach the weights) or the validation loss is counted and makes
Go's governor roll back: the blamed seed leaves, and the model and the optimizer state return to
the last good state, at the flush or end_epoch that decides it. Real PyTorch and the real library
throughout; the reference "last good state" is taken by the tests themselves, from the model, at
the documented moments (construction, each end_epoch that did not roll back, a seed's germination).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis
from esper.kasmina import SIGNALS, SeedState, gather_health, set_sampling

IN, HIDDEN, OUT = 8, 32, 4
NAN, INF = math.nan, math.inf


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MLP(nn.Module):
    """(B, 8) -> (B, 4): three linears with ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def task(seed: int, n: int = 256) -> tuple[Tensor, Tensor]:
    """A fixed, learnable 4-class problem: the argmax of a noisy linear map of the inputs."""
    g = torch.Generator().manual_seed(1000)  # the same map for every split
    w = torch.randn(IN, OUT, generator=g)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, (x @ w + 0.3 * torch.randn(n, OUT, generator=g)).argmax(1)


def make(policy: str = "manual", targets: tuple[str, ...] = ("fc1", "fc2"), **settings: Any,
         ) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(MLP(), target_modules=list(targets), seeds_per_layer=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, opt, Morphogenesis(model, opt, policy=policy, **settings)


def rollbacks(morph: Morphogenesis) -> list[dict[str, Any]]:
    """The rollback decisions in the driver's log, in order."""
    return [e for e in morph.log if e.get("kind") == "decision" and e.get("op") == "rollback"]


def finite_model(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def check_optimizer(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Every parameter in the optimizer has either no state or finite state shaped like it; no
    parameter outside the optimizer has state; the optimizer's state_dict can be taken."""
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    for p, state in opt.state.items():
        assert id(p) in grouped, "optimizer state for a parameter in no group"
        for key, v in state.items():
            if isinstance(v, Tensor):
                assert bool(torch.isfinite(v).all()), f"non-finite optimizer state {key}"
                if v.dim() > 0:
                    assert v.shape == p.shape, f"optimizer state {key} {tuple(v.shape)}, parameter {tuple(p.shape)}"
    opt.state_dict()


class LastGood:
    """The tests' own record of the state a rollback must restore."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt
        self.take()

    def take(self) -> None:
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optim = {names[id(p)]: {k: v.clone() for k, v in s.items() if isinstance(v, Tensor)}
                      for p, s in self.opt.state.items() if id(p) in names}

    def germinated(self, prefix: str) -> None:
        """A seed germinated now joins the last good state at its initial weights, without optimizer state."""
        for k, v in self.model.state_dict().items():
            if k.startswith(prefix):
                self.weights[k] = v.detach().clone()
        for k in [k for k in self.optim if k.startswith(prefix)]:
            del self.optim[k]

    def check(self, where: str) -> None:
        for k, v in self.model.state_dict().items():
            assert k in self.weights, f"{where}: {k} is not in the last good state"
            assert torch.equal(v, self.weights[k]), f"{where}: {k} differs from the last good state"
        for name, p in self.model.named_parameters():
            state = self.opt.state.get(p)
            if name in self.optim:
                assert state is not None, f"{where}: {name} lost its optimizer state"
                for key, v in self.optim[name].items():
                    assert torch.equal(state[key], v), f"{where}: optimizer {key} of {name} is not the last good one"
            else:
                assert not state, f"{where}: {name} has optimizer state the last good state did not have"
            assert p.grad is None, f"{where}: {name} kept a gradient"


# ------------------------------------------------------------------------------- (a) effective rank


@pytest.mark.parametrize("value", [NAN, INF])
def test_effective_rank_of_nonfinite_rows_is_counted_not_raised(value: float) -> None:
    model = esper.wrap(MLP(), target_modules=["fc2"])
    layer = model.fc2
    x, _ = task(0, 16)
    set_sampling([layer], True)
    model(x)  # finite control first
    values, nonfinite = gather_health([layer])
    assert nonfinite == [] and math.isfinite(float(values[SIGNALS.index("eff_rank")]))
    x[3, 0] = value
    set_sampling([layer], True)
    layer._samples = 0  # the next forward keeps rows for the effective rank
    model(x)
    rows = layer._rank_rows.clone()
    assert not bool(torch.isfinite(rows).all())
    # Negative control: the old code path, linalg.svdvals on these rows, raises.
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.svdvals(rows)
    values, nonfinite = gather_health([layer])
    assert "fc2.eff_rank" in nonfinite and "fc2.act_mean" in nonfinite, nonfinite
    assert math.isnan(float(values[SIGNALS.index("eff_rank")]))


@pytest.mark.parametrize("every", [50, 5, 1])
def test_nonfinite_rank_rows_roll_back_at_every_signal_interval(every: int) -> None:
    """Weights poisoned just before a forward that keeps rank rows: with every signal_every the
    issue saw crash, the flush counts them and the governor rolls back to the last good state."""
    model, opt, morph = make(signal_every=every)
    layer = morph.layers[0]  # fc1
    x, y = task(0)
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    morph.end_epoch(val_loss=float(loss.detach()))
    good = LastGood(model, opt)
    captured: list[Tensor] = []
    for step in range(20, 20 + every * 12 + 20):
        if not captured and layer._sampling and layer._samples % layer.rank_every == 0:
            with torch.no_grad():
                model.fc1.base_layer.weight[0, 0] = NAN  # the next forward keeps non-finite rank rows
            out = model(x)
            captured.append(layer._rank_rows.clone())
        else:
            out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)  # raised _LinAlgError here before the fix
        if captured and len(rollbacks(morph)) == 1:
            good.check(f"signal_every {every}, step {step}")
            break
    else:
        pytest.fail(f"no rollback (captured {len(captured)} rank samples): {morph.log}")
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.svdvals(captured[0])  # these rows crashed the old code
    entry = rollbacks(morph)[0]
    assert "fc1.eff_rank" in entry["nonfinite"] and entry["layer"] == -1, entry
    assert "non-finite values" in entry["reason"]
    for _ in range(10):  # training goes on
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
        assert torch.isfinite(loss)
    check_optimizer(model, opt)


# ------------------------------------------------------------------------------- (b) randomized


def inject(kind: str, value: float, model: nn.Module, rng: random.Random) -> Callable[[], None] | None:
    """Poisons one element; returns an undo for the activation hook."""
    params = [p for n, p in model.named_parameters() if ".seeds." not in n]
    if kind == "weight":
        p = rng.choice(params)
        with torch.no_grad():
            p.view(-1)[rng.randrange(p.numel())] = value
        return None
    if kind == "activation":
        # On the wrapper: a dormant wrapper runs its host's forward directly, past the host's new hooks.
        module = rng.choice([model.fc1, model.fc2, model.fc3])
        row, col = rng.randrange(8), rng.randrange(4)

        def hook(_m: nn.Module, _args: Any, out: Tensor) -> Tensor:
            out = out.clone()
            out[row, col] = value
            return out

        return module.register_forward_hook(hook).remove
    raise ValueError(kind)


def train_with_injections(policy: str, *, use_esper: bool = True, seed: int = 1234,
                          steps: int = 300, every: int = 5, epoch_steps: int = 25) -> dict[str, Any]:
    """A few hundred steps of a small MLP with a live seed, NaN/Inf injected into weights,
    activations, gradients and losses at random steps (fixed seeds). Checks, at each rollback, that
    the model and the optimizer are those of the last good state; returns what the test asserts on."""
    rng = random.Random(seed)
    x, y = task(0)
    xv, yv = task(1)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": float(F.cross_entropy(m(xv), yv))}

    model, opt, morph = make(policy, signal_every=every, train_steps=15, blend_steps=15, embargo_steps=5,
                             patience=1, cooldown_epochs=0, max_concurrent=2, holding_epochs=1,
                             evaluate=evaluate)
    if not use_esper:
        morph.close()
    good = LastGood(model, opt)
    kinds = ("weight", "activation", "gradient", "loss")
    # Injection steps at least 3 flushes apart, none in the first epoch.
    plan: dict[int, tuple[str, float]] = {}
    step = epoch_steps
    while True:
        step += rng.randrange(3 * every, 6 * every)
        if step >= steps - 4 * every:
            break
        plan[step] = (rng.choice(kinds), rng.choice([NAN, INF, -INF]))
    seen_kinds = {k for k, _ in plan.values()}
    assert seen_kinds == set(kinds), plan  # the fixed seed covers every kind

    def germinate() -> None:
        layer = morph.layers[1]  # fc2
        if layer.state(0) != SeedState.DORMANT:
            return
        with contextlib.suppress(esper.BudgetError):
            morph.germinate("fc2", 0, "residual_mlp", width=4)
            good.germinated("fc2.seeds.0.")

    if use_esper:
        germinate()
    pending: list[int] = []  # injections that damaged the model, not yet followed by a rollback
    detected: list[tuple[int, int]] = []  # (injection step, detection step)
    damaging: set[str] = set()  # kinds of the injections that damaged the model
    seed_steps = 0  # steps trained with a live seed
    val_after: list[float] = []
    restored_loss = math.nan  # the training loss right after the last rollback
    for step in range(steps):
        undo = None
        if step in plan:
            kind, value = plan[step]
            if kind in ("weight", "activation"):
                undo = inject(kind, value, model, rng)
        out = model(x)
        loss = F.cross_entropy(out, y)
        if step in plan and plan[step][0] == "loss":
            loss = loss * plan[step][1]
        opt.zero_grad()
        loss.backward()
        if step in plan and plan[step][0] == "gradient":
            # Host parameters: a seed's own NaN is contained by its fallback and breaker, not rolled back.
            p = rng.choice([p for n, p in model.named_parameters() if ".seeds." not in n])
            p.grad.view(-1)[rng.randrange(p.numel())] = plan[step][1]
        opt.step()
        if undo is not None:
            undo()
        if step in plan and not finite_model(model):
            # Some injections are harmless (-inf into a ReLU, into a logit that is not the target):
            # only those that reached the weights must be rolled back.
            pending.append(step)
            damaging.add(plan[step][0])
        if not use_esper:
            continue
        seed_steps += any(layer.state(s) in (SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING,
                                             SeedState.FOSSILIZED)
                          for layer in morph.layers for s in range(layer.num_slots))
        before = len(rollbacks(morph))
        morph.step(loss)
        if len(rollbacks(morph)) > before:
            good.check(f"{policy}: rollback at step {step}")
            check_optimizer(model, opt)
            detected += [(s, step) for s in pending]
            pending.clear()
            with torch.no_grad():
                restored_loss = float(F.cross_entropy(model(x), y))
        if (step + 1) % epoch_steps == 0:
            before = len(rollbacks(morph))
            result = morph.end_epoch()
            if len(rollbacks(morph)) > before:
                good.check(f"{policy}: rollback at the end of the epoch at step {step}")
                check_optimizer(model, opt)
                detected += [(s, step) for s in pending]
                pending.clear()
                with torch.no_grad():
                    restored_loss = float(F.cross_entropy(model(x), y))
            else:
                assert not pending, f"injections at {pending} undetected at the end of an epoch"
                good.take()  # a healthy epoch is the new last good state
            val_after.append(float(evaluate(model)["loss"]))
            assert not any(d["op"] == "rollback" for d in result["decisions"]) or len(rollbacks(morph)) > before
            germinate()
    return {"model": model, "opt": opt, "morph": morph, "plan": plan, "detected": detected, "pending": pending,
            "damaging": damaging, "seed_steps": seed_steps, "val": val_after, "x": x, "y": y,
            "restored_loss": restored_loss}


@pytest.mark.parametrize("policy", ["manual", "heuristic"])
def test_random_nonfinite_injections_roll_back_to_the_last_good_state(policy: str) -> None:
    run = train_with_injections(policy)
    model, opt, morph, plan = run["model"], run["opt"], run["morph"], run["plan"]
    assert not run["pending"], f"undetected injections at steps {run['pending']}"
    assert run["damaging"] == {"weight", "activation", "gradient", "loss"}, (plan, run["damaging"])
    every = morph.config.signal_every
    # Most damage is found at the next flush or the one after, not only at the end of the epoch.
    quick = [(i, f) for i, f in run["detected"] if f - i <= 2 * every]
    assert len(quick) >= len(run["detected"]) - 2, run["detected"]
    assert finite_model(model)
    check_optimizer(model, opt)
    assert run["seed_steps"] > 100, "the seed was live for too little of the run"
    assert any(e.get("to") == "ROLLED_BACK" for e in morph.log), "no rollback ever blamed the live seed"
    # It kept learning: the last validation loss is well below the first epoch's, and the training
    # loss went on falling after the last rollback.
    val = run["val"]
    assert val[-1] < 0.8 * val[0], val
    with torch.no_grad():
        assert float(F.cross_entropy(model(run["x"]), run["y"])) < run["restored_loss"]
    morph.close()


def test_without_esper_the_injected_nan_stays_in_the_weights() -> None:
    """Negative control: the same run, the same injections, no Morphogenesis: the model is lost."""
    run = train_with_injections("manual", use_esper=False)
    assert not finite_model(run["model"])


# ------------------------------------------------------------------------------- (c) mid-epoch


@pytest.mark.parametrize("rollback", [True, False])
def test_mid_epoch_host_blow_up_with_no_seed_is_restored_at_the_flush_that_detects_it(rollback: bool) -> None:
    """No seed in flight and no end_epoch for 200 steps: the rollback Go decides at a flush reaches
    Python in that flush (before the next optimizer step). Without ``rollback`` (the negative
    control) Go still decides it, but nothing is restored and the weights stay NaN."""
    model, opt, morph = make(signal_every=5, rollback=rollback)
    x, y = task(0)

    def train(n: int) -> list[float]:
        losses = []
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
            losses.append(float(loss.detach()))
        return losses

    train(20)
    morph.end_epoch(val_loss=1.0)
    good = LastGood(model, opt)
    good_loss = float(F.cross_entropy(model(x), y).detach())
    train(102)  # 122 steps: 3 to the next flush
    with torch.no_grad():
        model.fc3.weight[1, 2] = NAN  # an unwrapped layer: only the loss shows it
    for k in range(2):
        train(1)
        assert not finite_model(model) and not rollbacks(morph), f"step {k}: restored before the flush"
    train(1)
    assert morph.steps % 5 == 0
    decisions = rollbacks(morph)
    assert len(decisions) == 1 and decisions[0]["layer"] == -1 and "no seed in flight" in decisions[0]["reason"]
    assert decisions[0]["nonfinite"][0] == "loss" and decisions[0]["step"] == morph.steps, decisions
    if not rollback:
        assert not finite_model(model)
        morph.close()
        return
    good.check("the flush that detected the NaN")
    check_optimizer(model, opt)
    losses = train(100)  # still no end_epoch
    assert all(math.isfinite(v) for v in losses) and losses[-1] < good_loss
    assert len(rollbacks(morph)) == 1
    morph.close()


def test_mid_epoch_loss_explosion_with_no_seed_is_restored_and_not_repeated() -> None:
    """A finite blow-up (a learning-rate accident) with no seed and no end_epoch: the loss spike
    restores the last good state at once, and the restored state's loss, higher than the rolling
    mean before the blow-up, raises no second alarm (the alarm emptied the governor's window)."""
    model, opt, morph = make(signal_every=5)
    x, y = task(0)

    def train(n: int, lr: float = 3e-3) -> None:
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    good = LastGood(model, opt)  # the start: no end_epoch in this run
    with torch.no_grad():
        start_loss = float(F.cross_entropy(model(x), y))
    train(300)
    mean = morph.stats()["governor"]["loss_mean"]
    # The premise: judged against the window before the blow-up, the restored state's loss is a spike.
    assert start_loss > 3 * mean + 0.05, (start_loss, mean)
    train(5, lr=30.0)  # huge steps: the loss explodes
    decisions = rollbacks(morph)
    assert len(decisions) == 1 and "exceeds 3 x its rolling mean" in decisions[0]["reason"], decisions
    good.check("the flush that saw the spike")
    train(100)
    assert len(rollbacks(morph)) == 1, rollbacks(morph)
    morph.close()


def test_weights_poisoned_after_the_last_flush_are_rolled_back_at_end_epoch() -> None:
    """Weights that went non-finite after the last flush, with a finite training loss and no
    validation loss to show it: end_epoch counts them, Go rolls back, and the epoch is not kept."""
    model, opt, morph = make(signal_every=5)
    x, y = task(0)

    def train(n: int) -> None:
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    train(10)
    morph.end_epoch()
    good = LastGood(model, opt)
    train(10)  # the last step flushed
    with torch.no_grad():
        model.fc3.bias[0] = INF
    result = morph.end_epoch()  # no val_loss, no evaluate: only the weights show it
    decisions = rollbacks(morph)
    assert len(decisions) == 1 and decisions[0]["nonfinite"] == ["fc3.bias"], decisions
    # Go decided the epoch on the restored weights: no second rollback.
    assert all(d["op"] != "rollback" for d in result["decisions"]), result["decisions"]
    good.check("end_epoch after poisoned weights")
    train(3)  # no end_epoch: the last good state is still the one before the poisoned epoch
    with torch.no_grad():
        model.fc1.base_layer.weight[0, 0] = NAN
    morph.end_epoch()
    assert len(rollbacks(morph)) == 2 and rollbacks(morph)[1]["nonfinite"] == ["fc1.base_layer.weight"]
    good.check("a second poisoned epoch")
    # Negative control: a healthy epoch is kept, so the state moves on.
    train(3)
    morph.end_epoch()
    assert len(rollbacks(morph)) == 2 and finite_model(model)
    assert any(not torch.equal(v, good.weights[k]) for k, v in model.state_dict().items())
    morph.close()


# ------------------------------------------------------------------------------- (d) validation loss


@pytest.mark.parametrize("source", ["argument", "evaluate"])
def test_nan_validation_loss_rolls_back_and_is_logged(source: str) -> None:
    """A NaN validation loss, passed to end_epoch or returned by evaluate, is a non-finite signal:
    the only decision is a rollback (the seed in flight is blamed, the last good state restored),
    it is logged, and the epoch is not kept as good."""
    x, y = task(0)
    broken = {"on": False}

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            loss = float(F.cross_entropy(m(x), y))
        return {"loss": NAN if broken["on"] else loss}

    # The heuristic policy decides at each epoch (patience high: it waits, the test germinates).
    model, opt, morph = make("heuristic", signal_every=5, patience=100, train_steps=5,
                             evaluate=evaluate if source == "evaluate" else None)

    def epoch(val: float) -> dict[str, Any]:
        for _ in range(10):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        broken["on"] = math.isnan(val)
        return morph.end_epoch(val_loss=None if source == "evaluate" else val)

    assert [d["op"] for d in epoch(1.0)["decisions"]] == ["wait"]
    morph.germinate("fc2", 0, "residual_mlp", width=4)
    epoch(1.0)
    good = LastGood(model, opt)
    assert morph.layers[1].state(0) in (SeedState.TRAINING, SeedState.BLENDING)
    result = epoch(NAN)
    assert [d["op"] for d in result["decisions"]] == ["rollback"], result["decisions"]
    decision = result["decisions"][0]
    assert "validation loss is NaN" in decision["reason"] and (decision["layer"], decision["slot"]) == (1, 0)
    assert [e["to"] for e in result["events"]][:1] == ["ROLLED_BACK"]
    assert any(e.get("op") == "rollback" and "validation loss is NaN" in e["reason"] for e in morph.log)
    assert morph.layers[1].seed(0) is None
    good.check("after the NaN validation loss")
    check_optimizer(model, opt)
    # The NaN epoch was not kept as good: the next rollback returns to the same state.
    result = epoch(NAN)
    assert [(d["op"], d["layer"]) for d in result["decisions"]] == [("rollback", -1)], result["decisions"]
    good.check("a second rollback after the NaN epoch")
    # Negative control: a healthy epoch is kept, and decided on as usual.
    assert [d["op"] for d in epoch(1.0)["decisions"]] == ["wait"]
    assert not finite_model(model) or any(not torch.equal(v, good.weights[k]) for k, v in model.state_dict().items())
    morph.close()


def test_a_seed_germinated_after_the_last_good_state_returns_to_its_initial_weights() -> None:
    """Two seeds in flight, the older one fossilized-free: a rollback blames the newest; the other,
    germinated after the last good state, returns to its initial weights with fresh optimizer
    state; a slot reused by a seed of another width gets no stale optimizer state (issue 14)."""
    model, opt, morph = make(signal_every=1, max_concurrent=2, train_steps=100, embargo_steps=0)
    x, y = task(0)

    def train(n: int, poison: bool = False) -> None:
        for k in range(n):
            loss = F.cross_entropy(model(x), y)
            if poison and k == n - 1:
                loss = loss * NAN
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    train(5)
    morph.germinate("fc1", 0, "residual_mlp", width=16)
    train(5)
    morph.end_epoch(val_loss=1.0)  # saved with a width-16 seed in fc1
    morph.prune("fc1", 0)
    train(3)
    morph.germinate("fc1", 0, "residual_mlp", width=4)
    init1 = {k: v.clone() for k, v in model.fc1.seeds["0"].state_dict().items()}
    train(4)
    morph.germinate("fc2", 0, "residual_mlp", width=8)  # the newest: the one a rollback blames
    train(4, poison=True)
    rolled = [e for e in morph.log if e.get("to") == "ROLLED_BACK"]
    assert [(e["layer"], e["slot"]) for e in rolled] == [(1, 0)], rolled
    assert morph.layers[0].state(0) == SeedState.TRAINING
    for k, v in model.fc1.seeds["0"].state_dict().items():
        assert torch.equal(v, init1[k]), k
    assert all(p not in opt.state or not opt.state[p] for p in model.fc1.seeds["0"].parameters())
    check_optimizer(model, opt)
    train(5)  # the next steps work: no size mismatch
    assert finite_model(model)
    check_optimizer(model, opt)
    morph.close()


def test_rollback_leaves_no_optimizer_state_for_a_frozen_fossilized_seed() -> None:
    """A fossilized seed frozen out of the optimizer (freeze_fossilized) gets its last good weights
    back but no optimizer state: the optimizer's state_dict still works."""
    model, opt, morph = make(signal_every=1, train_steps=2, blend_steps=2, freeze_fossilized=True)
    x, y = task(0)

    def train(n: int, poison: bool = False) -> None:
        for k in range(n):
            loss = F.cross_entropy(model(x), y)
            if poison and k == n - 1:
                loss = loss * NAN
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    morph.germinate("fc2", 0, "residual_mlp", width=4)
    train(8)
    assert morph.layers[1].state(0) == SeedState.HOLDING
    morph.end_epoch(val_loss=1.0)  # kept with the seed's optimizer state
    good = LastGood(model, opt)
    morph.fossilize("fc2", 0)
    train(3, poison=True)
    assert rollbacks(morph) and morph.layers[1].state(0) == SeedState.FOSSILIZED
    seed_params = list(model.fc2.seeds["0"].parameters())
    assert not any(p in opt.state for p in seed_params)
    for k, v in model.state_dict().items():
        assert torch.equal(v, good.weights[k]), k
    check_optimizer(model, opt)
    morph.close()


def test_resume_after_a_rollback_does_not_roll_back_again() -> None:
    """The governor's rollbacks before a checkpoint were carried out before it: a resumed run
    continues without restoring anything, and a new blow-up after the resume still rolls back."""
    model, opt, morph = make(signal_every=5)
    x, y = task(0)

    def train(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, n: int,
              poison: bool = False) -> None:
        for k in range(n):
            loss = F.cross_entropy(model(x), y)
            if poison and k == 0:
                loss = loss * NAN
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    train(model, opt, morph, 10)
    morph.end_epoch(val_loss=1.0)
    train(model, opt, morph, 10, poison=True)
    assert len(rollbacks(morph)) == 1
    train(model, opt, morph, 5)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "morph": morph.state_dict()})
    model2, opt2, morph2 = make(signal_every=5)
    morph2.load_state_dict(ckpt["morph"])
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(model, opt, morph, 5)
    train(model2, opt2, morph2, 5)  # one flush: nothing to restore
    assert len(rollbacks(morph2)) == 1  # the one in the checkpoint's log
    for k, v in model2.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k  # continued like the original run
    train(model2, opt2, morph2, 5, poison=True)
    assert len(rollbacks(morph2)) == 2 and finite_model(model2)
    morph.close()
    morph2.close()


@pytest.mark.cuda
@pytest.mark.parametrize("every", [5, 1])
def test_nonfinite_rank_rows_roll_back_on_cuda(every: int) -> None:
    """The same on CUDA: the rank rows and the weights live on the device; nothing raises, the
    governor rolls back, and the restored weights and optimizer state are the last good ones."""
    torch.manual_seed(0)
    model = esper.wrap(MLP(), target_modules=["fc1", "fc2"]).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=every)
    x, y = (t.cuda() for t in task(0))
    layer = morph.layers[0]

    def train(n: int) -> None:
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    train(20)
    morph.end_epoch(val_loss=1.0)
    good = LastGood(model, opt)
    for _ in range(every * 12):
        if layer._sampling and layer._samples % layer.rank_every == 0:
            break
        train(1)
    with torch.no_grad():
        model.fc1.base_layer.weight[0, 0] = NAN
    for _ in range(every):
        train(1)
        if rollbacks(morph):
            break
    assert rollbacks(morph) and "fc1.eff_rank" in rollbacks(morph)[0]["nonfinite"], morph.log
    good.check("cuda")
    check_optimizer(model, opt)
    with torch.no_grad():
        model.fc3.bias[0] = INF  # found at end_epoch, on the device
    morph.end_epoch()
    assert len(rollbacks(morph)) == 2
    good.check("cuda, end_epoch")
    morph.close()
