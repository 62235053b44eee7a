"""The runs the demo compares: fixed-size baselines, grown runs under a policy,
the grown model's final shape trained from scratch, and a hand schedule.

Every run trains with the same loop (:func:`esper.demo.train.train`), selects
its model on validation and reads test once, and counts training FLOPs of the
modules that actually ran.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BudgetError
from ..tolaria import MorphConfig, Morphogenesis
from ..wrap import wrap
from .data import Task, load_task, split_task
from .train import MLP, ConvNet, History, evaluate, train

__all__ = ["Setup", "RunResult", "SETUPS", "setup_task", "build_model", "pick_best", "fixed_run", "grown_run",
           "scratch_run", "hand_run", "seed_epochs", "early_schedule", "equal_budget_schedule"]


@dataclass
class Setup:
    """How one task is grown.

    Attributes:
        task: task name.
        depth: hidden layers of the MLP.
        start_width: width of the small model growth starts from (channels
            for a CNN).
        sweep: widths of the fixed-size sweep (the first is "fixed small",
            the last "fixed large").
        targets: how the model is wrapped: "block" (the whole MLP is one
            host: a seed adds hidden units beside it), "linear" (every
            Linear is a host) or "conv" (every convolution of a CNN is a
            host).
        epochs, lr, batch_size: training.
        morph: the Morphogenesis settings of grown runs.
        hand_start, hand_gap: the early hand schedule germinates at
            ``hand_start + k * hand_gap`` (k = 0, 1, ...); the equal-budget
            hand schedule keeps the gap and moves the start.
        horizon: tell Tamiyo the run's length (MorphConfig.epochs), so that
            it does not grow too late to repay.
        tight_budgets: parameter budgets (max_params) that bind, for the
            comparisons at equal budget: room for one to two seeds of the
            configured blueprint. Under ``morph``'s loose budget every layer
            gets seeds and placement decides little; under these, where and
            when a seed goes is what the budget buys.
    """

    task: str
    depth: int
    start_width: int
    sweep: list[int]
    targets: str
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 64
    morph: MorphConfig = field(default_factory=MorphConfig)
    hand_start: int = 4
    hand_gap: int = 8
    horizon: bool = True
    tight_budgets: tuple[int, ...] = ()
    #: The model: "mlp" (:class:`esper.demo.train.MLP`) or "cnn" (:class:`esper.demo.train.ConvNet`, for
    #: tasks whose samples are signals (C, L) or images (C, H, W)).
    arch: str = "mlp"
    #: Where the data comes from: None for the demo's named tasks (:func:`esper.demo.data.load_task`), or a
    #: picklable callable returning (x, y) (the task suite's generated tasks); the split depends on the seed.
    source: Callable[[], tuple[Any, Any]] | None = None


def _morph(**kw: Any) -> MorphConfig:
    base = dict(
        train_steps=30,
        blend_steps=30,
        embargo_steps=30,
        signal_every=5,
        patience=2,
        threshold=0.1,
        holding_epochs=1,
        cooldown_epochs=1,
        max_concurrent=1,
        template="residual_mlp",
        template_params={"width": 16},
        min_gain=0.005,
    )
    base.update(kw)
    return MorphConfig(**base)


#: The demo's tasks. Growth tasks use "fast growth" settings for 60-epoch runs (a 10% plateau
#: threshold over 2 epochs, short lifecycle phases); budgets are not sizes: growth stops when
#: seeds stop paying (min_gain).
SETUPS: dict[str, Setup] = {
    # A digits seed (residual_mlp width 16 beside the 64-8-10 MLP) has 1210 parameters.
    "digits": Setup("digits", depth=1, start_width=8, sweep=[8, 16, 32, 64, 128], targets="block",
                    morph=_morph(max_params=20_000), tight_budgets=(1300, 2500)),
    # Spirals seeds (width 32) have 624, 1072 and 643 parameters at the 2-16, 16-16 and 16-3 layers.
    "spirals": Setup("spirals", depth=2, start_width=16, sweep=[8, 16, 32, 64, 128], targets="linear",
                     morph=_morph(max_params=20_000, template_params={"width": 32}),
                     tight_budgets=(700, 1100, 1700)),
    # Not in the default demo (`esper demo --tasks classification`): make_classification (20 features, 4 classes),
    # grown like digits; a seed has 404 parameters.
    "classification": Setup("classification", depth=1, start_width=8, sweep=[8, 16, 32, 64, 128], targets="block",
                            morph=_morph(max_params=20_000)),
    # Negative controls run the controller at the library's defaults (what a user gets), without the
    # horizon: at 6-10 steps per epoch the default 200-step lifecycle would forbid growth in 30 epochs on
    # its own, and the controls test the plateau judgement.
    "moons": Setup("moons", depth=1, start_width=32, sweep=[32], targets="block", epochs=30,
                   morph=MorphConfig(), horizon=False),
    "breast_cancer": Setup("breast_cancer", depth=1, start_width=32, sweep=[32], targets="block", epochs=30,
                           morph=MorphConfig(), horizon=False),
}


class Net(nn.Module):
    """The demo model: an MLP held as ``body`` so the whole of it can be one host."""

    def __init__(self, task: Task, width: int, depth: int) -> None:
        super().__init__()
        self.body = MLP(task.num_features, task.num_classes, width, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, C)
        return self.body(x)


def setup_task(setup: Setup, seed: int, device: str | torch.device = "cpu", name: str | None = None) -> Task:
    """The setup's task split with ``seed``: the named demo task (``name``, default ``setup.task``), or the data
    its ``source`` makes."""
    if setup.source is None:
        return load_task(setup.task if name is None else name, seed, device)
    x, y = setup.source()
    return split_task(setup.task, x, y, seed, device)


def build_model(task: Task, setup: Setup, width: int) -> nn.Module:
    """The setup's model at ``width`` (hidden units, or channels for a CNN), on the task's device."""
    if setup.arch == "mlp":
        model: nn.Module = Net(task, width, setup.depth)
    elif setup.arch == "cnn":
        if len(task.shape) not in (2, 3):
            raise ValueError(f"task {task.name!r}: a CNN needs samples of shape (C, L) or (C, H, W), got {task.shape}")
        model = ConvNet(task.shape[0], task.num_classes, width, dims=len(task.shape) - 1)
    else:
        raise ValueError(f"setup {setup.task!r}: arch must be 'mlp' or 'cnn', got {setup.arch!r}")
    return model.to(task.x_train.device)


def _wrap(model: nn.Module, setup: Setup, slots: int = 4) -> nn.Module:
    if setup.targets == "block":
        return wrap(model, block_modules=["body"], seeds_per_layer=slots)
    if setup.targets == "conv":
        kinds = [t for t in (nn.Conv1d, nn.Conv2d) if any(isinstance(m, t) for m in model.modules())]
        return wrap(model, target_modules=kinds, seeds_per_layer=slots)
    return wrap(model, target_modules=[nn.Linear], seeds_per_layer=slots)


def pick_best(sweep: list[RunResult]) -> RunResult:
    """The sweep's pick, made on validation like every other choice: best validation metric at each run's
    chosen epoch, ties to the lower validation loss."""
    return max(sweep, key=lambda r: (r.history["val_acc"][r.best_epoch], -r.history["val_loss"][r.best_epoch]))


@dataclass
class RunResult:
    """One run's figures."""

    kind: str
    task: str
    seed: int
    test_acc: float
    test_loss: float
    best_epoch: int
    flops: float
    params: int
    wall: float
    history: dict[str, list[float]]
    events: list[dict[str, Any]] = field(default_factory=list)
    germinations: int = 0
    fossilizations: int = 0
    prunes: int = 0
    output_changes: list[float] = field(default_factory=list)
    final_seeds: list[dict[str, Any]] = field(default_factory=list)
    width: int | None = None
    #: The Morphogenesis run id of a grown or scratch run (None: a run that opened no session): its
    #: events are in ``$ESPER_HOME/runs/<run_id>/events.jsonl`` (``esper events RUN``) and its
    #: outcome records in Urza carry it.
    run_id: str | None = None

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch history and events."""
        return {k: v for k, v in self.__dict__.items() if k not in ("history", "events")}


def _result(kind: str, task: Task, seed: int, hist: History, wall: float, **kw: Any) -> RunResult:
    # The model chosen on validation is the one whose FLOPs count: training stops there
    # in practice, and every run is judged the same way.
    e = hist.best_epoch
    return RunResult(
        kind=kind, task=task.name, seed=seed, test_acc=hist.test_acc, test_loss=hist.test_loss, best_epoch=e,
        flops=hist.flops[-1], params=hist.params[e], wall=wall,
        history={"train_loss": hist.train_loss, "val_loss": hist.val_loss, "val_acc": hist.val_acc,
                 "flops": hist.flops, "params": [float(p) for p in hist.params]},
        **kw,
    )


def fixed_run(task: Task, setup: Setup, width: int, seed: int) -> RunResult:
    """A fixed-size MLP of the given width."""
    torch.manual_seed(seed)
    model = build_model(task, setup, width)
    start = time.perf_counter()
    hist = train(model, task, epochs=setup.epochs, lr=setup.lr, batch_size=setup.batch_size, seed=seed)
    return _result("fixed", task, seed, hist, time.perf_counter() - start, width=width)


def _evaluator(task: Task) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate_fn(model: nn.Module) -> dict[str, float]:
        loss, acc = evaluate(model, task.x_val, task.y_val)
        return {"loss": loss, "metric": acc}

    return evaluate_fn


def _live_seeds(morph: Morphogenesis) -> list[dict[str, Any]]:
    out = []
    for i, layer in enumerate(morph.layers):
        for slot in range(morph.slots):
            module = layer.seed(slot)
            if module is not None:
                out.append({"layer": i, "slot": slot, "state": layer.state(slot).name, "ir": module.ir,
                            "params": sum(p.numel() for p in module.parameters())})
    return out


def _grow(task: Task, setup: Setup, seed: int, config: MorphConfig, kind: str,
          on_epoch_extra: Callable[[Morphogenesis, int], None] | None = None) -> RunResult:
    torch.manual_seed(seed)
    model = _wrap(build_model(task, setup, setup.start_width), setup)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    config.seed = seed
    morph = Morphogenesis(model, opt, config=config, evaluate=_evaluator(task))
    seeds_by_epoch: list[list[dict[str, Any]]] = []
    changes: list[float] = []
    probe = task.x_val[:256]

    def on_epoch(epoch: int, hist: History) -> None:
        # The seeds of the model that was just validated (and tested, if chosen): before this epoch's decisions.
        seeds_by_epoch.append(_live_seeds(morph))
        with torch.no_grad():
            model.eval()
            before = model(probe)
            model.train()
        if on_epoch_extra is not None:
            on_epoch_extra(morph, epoch)
        res = morph.end_epoch(val_loss=hist.val_loss[-1], val_metric=hist.val_acc[-1])
        # Germination must not change the output: measured when it is the only change of the epoch's end.
        tos = {ev["to"] for ev in res.get("events", [])}
        if tos == {"GERMINATED"}:
            with torch.no_grad():
                model.eval()
                changes.append(float((model(probe) - before).abs().max()))
                model.train()

    start = time.perf_counter()
    hist = train(model, task, epochs=setup.epochs, lr=setup.lr, batch_size=setup.batch_size, seed=seed,
                 optimizer=opt, on_step=morph.step, on_epoch=on_epoch)
    wall = time.perf_counter() - start
    events = [dict(ev) for ev in morph.log if ev["kind"] == "event"]
    run_id = morph.run_id
    morph.close()
    count = {to: sum(1 for ev in events if ev["to"] == to) for to in ("GERMINATED", "FOSSILIZED", "PRUNED")}
    return _result(
        kind, task, seed, hist, wall, events=events, germinations=count["GERMINATED"],
        fossilizations=count["FOSSILIZED"], prunes=count["PRUNED"], output_changes=changes,
        final_seeds=seeds_by_epoch[hist.best_epoch] if hist.best_epoch >= 0 else [], run_id=run_id,
    )


def grown_run(task: Task, setup: Setup, seed: int, policy: str | None = None) -> RunResult:
    """Start at ``setup.start_width`` and let the policy grow the model: ``policy`` when given (the
    random-placement arm, a collection's episodes), else the setup's own (``setup.morph.policy``, which
    ``esper suite --set policy=...`` sets)."""
    policy = policy or setup.morph.policy
    # The demo knows its run's length, as most training scripts do: Tamiyo does not grow too late to repay.
    config = MorphConfig(**{**setup.morph.__dict__, "policy": policy,
                            "epochs": setup.epochs if setup.horizon else 0})
    return _grow(task, setup, seed, config, "grown" if policy in ("heuristic", setup.morph.policy) else policy)


def seed_epochs(events: list[dict[str, Any]], epochs: int) -> int:
    """How many epochs seeds ran for, summed over every germination of a run.

    A seed germinated at the end of epoch ``g`` runs from epoch ``g + 1`` until
    it is pruned, cancelled or rolled back, or to the end of training: this is
    the compute a schedule spends on seeds (all seeds here share one blueprint).
    """
    started: dict[tuple[int, int], int] = {}
    total = 0
    for ev in events:
        key = (ev["layer"], ev["slot"])
        if ev["to"] == "GERMINATED":
            started[key] = ev["epoch"]
        elif ev["to"] in ("PRUNED", "CANCELLED", "ROLLED_BACK") and key in started:
            total += ev["epoch"] - started.pop(key)
    return total + sum(epochs - 1 - g for g in started.values())


def early_schedule(setup: Setup, num_seeds: int) -> list[int]:
    """The hand schedule a person would write: the first seed early, then one every ``hand_gap`` epochs
    (narrowed when that would run past the last epoch a seed can still train in, so every seed is grown)."""
    last = setup.epochs - 2
    start = min(setup.hand_start, max(0, last - (num_seeds - 1)))
    gap = setup.hand_gap
    while gap > 1 and start + gap * (num_seeds - 1) > last:
        gap -= 1
    return [min(start + k * gap, last) for k in range(num_seeds)]


def equal_budget_schedule(setup: Setup, num_seeds: int, budget: int) -> list[int]:
    """Evenly spaced germination epochs whose seeds run for ``budget`` seed-epochs in all.

    The spacing is ``hand_gap`` (narrowed when the budget leaves no room for it)
    and the start is solved from the budget: ``num_seeds`` seeds germinated at
    ``t0 + k * gap`` run ``sum(epochs - 1 - t0 - k * gap)`` epochs. This is the
    hand schedule at the grown run's budget: the same seeds, the same compute,
    only the timing differs.
    """
    if num_seeds < 0:
        raise ValueError(f"equal_budget_schedule: num_seeds must be >= 0, got {num_seeds}")
    if num_seeds == 0:
        return []
    last = setup.epochs - 2  # a seed germinated later would never train

    def start(gap: int) -> int:
        return round((num_seeds * (setup.epochs - 1) - budget - gap * num_seeds * (num_seeds - 1) / 2) / num_seeds)

    for gap in range(setup.hand_gap, 0, -1):
        t0 = max(0, start(gap))
        if t0 + gap * (num_seeds - 1) <= last:
            return [t0 + k * gap for k in range(num_seeds)]
    # Too small a budget for the seeds to fit even one epoch apart: as late as they fit.
    t0 = max(0, min(start(1), last - (num_seeds - 1)))
    return [min(t0 + k, last) for k in range(num_seeds)]


def hand_run(task: Task, setup: Setup, seed: int, plan: list[int], kind: str = "hand") -> RunResult:
    """A hand schedule: germinate at the epochs in ``plan``, layers in turn, fossilize when held (each seed
    halved until the parameter budget takes it)."""
    # The person may overlap seeds; the parameter budget still holds.
    config = MorphConfig(**{**setup.morph.__dict__, "policy": "manual", "max_concurrent": max(1, len(plan))})
    schedule = sorted(plan)

    def on_epoch(morph: Morphogenesis, epoch: int) -> None:
        for i, layer in enumerate(morph.layers):
            for slot in range(morph.slots):
                if layer.state(slot).name == "HOLDING":
                    morph.fossilize(i, slot, "hand schedule: fossilize once held")
        for k, at in enumerate(schedule):
            if at != epoch:
                continue
            layer = morph.layers[k % len(morph.layers)]
            free = [s for s in range(morph.slots) if layer.state(s).name == "DORMANT"]
            if free:
                _germinate_within_budget(morph, k % len(morph.layers), free[0], setup)

    return _grow(task, setup, seed, config, kind, on_epoch)


def _germinate_within_budget(morph: Morphogenesis, layer: int, slot: int, setup: Setup) -> bool:
    """Germinate the configured blueprint, halving its size (width or rank) until the parameter budget
    takes it, as a person fitting a budget would; False when even size 1 does not fit."""
    params = dict(setup.morph.template_params)
    while True:
        try:
            morph.germinate(layer, slot, setup.morph.template, **params)
            return True
        except BudgetError:
            sizes = [k for k in ("width", "rank") if params.get(k, 1) > 1]
            if not sizes:
                return False
            for k in sizes:
                params[k] //= 2


def scratch_run(task: Task, setup: Setup, seed: int, seeds: list[dict[str, Any]]) -> RunResult:
    """The grown run's final shape (host plus the same seed blueprints), trained
    from scratch with every seed active (alpha 1, trained jointly) from step 0."""
    torch.manual_seed(seed)
    model = _wrap(build_model(task, setup, setup.start_width), setup)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    config = MorphConfig(**{**setup.morph.__dict__, "policy": "manual", "max_params": 0, "max_concurrent": 64,
                            "seed": seed})
    morph = Morphogenesis(model, opt, config=config)
    for s in seeds:
        morph.germinate(s["layer"], s["slot"], s["ir"])
        while morph.layers[s["layer"]].state(s["slot"]).name != "HOLDING":
            morph.advance(s["layer"], s["slot"], "from scratch: straight to joint training")
    start = time.perf_counter()
    hist = train(model, task, epochs=setup.epochs, lr=setup.lr, batch_size=setup.batch_size, seed=seed,
                 optimizer=opt)
    wall = time.perf_counter() - start
    morph.close()
    # Without seeds the Morphogenesis never opened its session: no events, no run log.
    run_id = morph.run_id if seeds else None
    final = [{k: v for k, v in s.items() if k != "ir"} for s in seeds]
    return _result("scratch", task, seed, hist, wall, run_id=run_id, final_seeds=final)


def mean(xs: list[float]) -> float:
    """The mean (NaN for none)."""
    return sum(xs) / len(xs) if xs else math.nan


def std(xs: list[float]) -> float:
    """The sample standard deviation (0 for fewer than two)."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


