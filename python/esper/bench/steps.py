"""Training-step rows: a full step (forward, backward, optimizer step, and ``morph.step`` on Esper's
side) of a wrapped model timed side by side with its baseline, interleaved round by round.

- dormant: every targeted layer wrapped, no seed, against the plain model;
- active: one seed in BLENDING or HOLDING against the same architecture written by hand
  (:class:`~esper.bench.models.HandSeeded` with the same branch, same weights);
- peft: an Esper ``lowrank`` seed against a PEFT LoRA layer of the same rank on the same host;
- scaling: :class:`~esper.bench.models.Deep` with 1, 10, 100 wrapped layers, and 1, 4, 16 slots
  per layer (dormant, and with one seed in HOLDING);
- guard: the active, peft and scaling HOLDING rows are timed under both finiteness guards
  (``MorphConfig.guard``): the default "step" (rows named as before) and "sampled" (", guard sampled");
- compile: the dormant and active pairs with both models under ``torch.compile`` (inductor), each
  compiled before it is timed (``signal_every`` + 1 steps first, so that the wrapped model's
  sampling graph is built too).

Both sides start from the same weights and see the same batch. Esper's side runs the
documented loop, ``morph.step(loss)`` included, with the default :class:`~esper.MorphConfig`
(health signals sampled every ``signal_every`` steps): the calls per round are a multiple of
``signal_every`` so that each round holds the same share of sampling steps and flushes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import MorphConfig, Morphogenesis, wrap
from . import harness, models
from .rows import Row, Target, ratio_at_most, samples_row, timing_row

__all__ = ["StepSettings", "MODELS", "dormant_rows", "active_rows", "peft_rows", "scaling_rows", "compile_rows",
           "metrics_rows"]

Step = Callable[[], None]
Sync = Callable[[], None]

DORMANT = ratio_at_most(1.02)
ACTIVE = ratio_at_most(1.05)
NO_SLOWER = ratio_at_most(1.00, "<= 1.00x (no slower)")


@dataclass(frozen=True)
class StepSettings:
    """How long to time: rounds (>= 5), seconds per timed block, untimed steps first."""

    rounds: int = 25
    block_s: float = 0.02
    warmup: int = 20
    max_inner: int = 2000
    #: Time only the rows whose name contains one of these (``esper.bench.run --only``); all when empty.
    only: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        """Whether the row ``name`` is timed under :attr:`only`."""
        return not self.only or any(part in name for part in self.only)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its label, batch kind and size, constructor and dormant wrap targets."""

    label: str
    batch_kind: str
    batch: int
    build: Callable[[], nn.Module]
    targets: tuple[Any, ...]
    what: str


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("TinyMLP", "mlp", 32, models.TinyMLP, (nn.Linear,), "3 Linear wrapped, batch 32"),
    ModelSpec("WideMLP", "wide_mlp", 64, models.WideMLP, (nn.Linear,), "3 Linear wrapped, batch 64"),
    ModelSpec("SmallCNN", "cnn", 16, models.SmallCNN, (nn.Conv2d, nn.Linear),
              "2 Conv2d + Linear head wrapped, batch 16x3x32x32"),
    ModelSpec("TinyTransformer", "transformer", 16, models.TinyTransformer, ("blocks.*.fc1", "blocks.*.fc2"),
              "fc1, fc2 of both blocks wrapped, batch 16x32 tokens"),
)
_BY_LABEL = {m.label: m for m in MODELS}


def _sync_for(device: torch.device) -> Sync | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def signal_every() -> int:
    """MorphConfig's default ``signal_every``: the calls per timed round are a multiple of it."""
    return MorphConfig().signal_every


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              morph: Morphogenesis | None = None, tick: Callable[[], None] | None = None) -> Step:
    """One training step: cross-entropy, zero_grad, backward, optimizer step, then ``morph.step``."""

    def step() -> None:
        if tick is not None:
            tick()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if morph is not None:
            morph.step(loss)

    return step


def clock_for(device: torch.device) -> Callable[[], float]:
    """The clock step rows are timed with: CPU time of this process on CPU (the figure is then what
    the step costs, not what neighbours on a shared machine take from it), wall time on CUDA (the
    GPU's work is not this process's CPU time)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def _block(fn: Step, n: int, sync: Sync | None) -> float:
    if sync:
        sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - start) / n


def time_pair(esper: Step, baseline: Step, settings: StepSettings, sync: Sync | None,
              clock: Callable[[], float] = time.process_time,
              inner: int | None = None) -> tuple[harness.Timing, harness.Timing, int]:
    """Warm both sides up, size the blocks, and time them interleaved (harness.compare).

    Args:
        inner: calls per round; by default sized to ``settings.block_s`` (whole intervals of
            MorphConfig's ``signal_every``). A side doing periodic work every N calls passes N (or a multiple), so
            that every round holds it the same number of times.

    Returns:
        (Esper's timing, the baseline's timing, calls per round).
    """
    for _ in range(settings.warmup):
        esper()
        baseline()
    if inner is None:
        every = signal_every()
        per_call = max(_block(esper, every, sync), _block(baseline, every, sync))
        inner = every * max(1, math.ceil(settings.block_s / max(per_call, 1e-7) / every))
        # A round holds whole signal intervals (each exactly one sampling step and one flush), even
        # past max_inner: a round cut shorter would hold a sampling step or none, and the median over
        # rounds would then leave the sampling steps' cost out.
        inner = max(every, min(inner, settings.max_inner - settings.max_inner % every))
    res = harness.compare({"esper": esper, "baseline": baseline}, rounds=settings.rounds, inner=inner, warmup=0,
                          sync=sync, clock=clock)
    return res["esper"], res["baseline"], inner


def _adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def _morph(model: nn.Module, opt: torch.optim.Optimizer, **overrides: Any) -> Morphogenesis:
    morph = Morphogenesis(model, opt, policy="manual", **overrides)
    _ = morph.session  # created (and the rollback copy taken) before anything is timed
    return morph


def _row(section: str, name: str, device: torch.device, settings: StepSettings, esper: Step, baseline: Step,
         baseline_name: str, target: Target, note: str, inner: int | None = None) -> Row | None:
    if not settings.wants(name):
        return None
    clock = clock_for(device)
    te, tb, inner = time_pair(esper, baseline, settings, _sync_for(device), clock, inner)
    return timing_row(section, name, device.type, te, tb, baseline_name=baseline_name, target=target, note=note,
                      extra={"calls_per_round": inner, "clock": "wall" if clock is time.perf_counter else "cpu"})


def _kept(rows: list[Row | None]) -> list[Row]:
    """The rows timed (those ``--only`` left out are None)."""
    return [r for r in rows if r is not None]


def _close(*morphs: Morphogenesis) -> None:
    for m in morphs:
        m.close()


# ---------------------------------------------------------------------- dormant


def _compiled(model: nn.Module, compile_models: bool) -> nn.Module:
    return torch.compile(model) if compile_models else model


def dormant_pair(spec: ModelSpec, device: torch.device,
                 compile_models: bool = False, **overrides: Any) -> tuple[Step, Step, Morphogenesis]:
    """(Esper step, plain step, morph) for a model with every target wrapped and no seed; with
    ``compile_models`` both models run through ``torch.compile`` (the optimizers hold the originals'
    parameters); ``overrides`` are MorphConfig settings (``signal_every=...``)."""
    torch.manual_seed(0)
    plain = spec.build().to(device)
    wrapped = wrap(copy.deepcopy(plain), list(spec.targets))
    x, y = models.make_batch(spec.batch_kind, spec.batch, device)
    opt_w = _adam(wrapped)
    morph = _morph(wrapped, opt_w, **overrides)
    return (make_step(_compiled(wrapped, compile_models), opt_w, x, y, morph),
            make_step(_compiled(plain, compile_models), _adam(plain), x, y), morph)


def dormant_rows(device: torch.device, settings: StepSettings, labels: Sequence[str] | None = None) -> list[Row]:
    """Dormant wrapped model vs the plain model, for each benchmark model."""
    rows: list[Row | None] = []
    for spec in MODELS:
        if labels is not None and spec.label not in labels:
            continue
        esper, plain, morph = dormant_pair(spec, device)
        rows.append(_row("dormant", f"train step, dormant: {spec.label}", device, settings, esper, plain,
                         "plain model", DORMANT, f"{spec.what}; Esper includes morph.step(loss)"))
        _close(morph)
        if spec.label in AA_CONTROLS:
            twin = aa_pair(spec, device)
            rows.append(_row("dormant", f"A/A control, plain vs plain: {spec.label}", device, settings, *twin,
                             "the same plain model (a second copy)", None,
                             "informative: how far two identical sides differ in this harness, the noise floor "
                             "that the dormant rows' ratios sit in"))
    return _kept(rows)


#: The models whose dormant row gets an A/A control: the smallest step (where a fixed cost is the
#: largest share) and a convolutional one.
AA_CONTROLS = ("TinyMLP", "SmallCNN")


def aa_pair(spec: ModelSpec, device: torch.device) -> tuple[Step, Step]:
    """Two identical plain models (same initialisation, batch and optimizer), each its own step: the
    A/A control of the dormant rows, timed with the same harness."""
    torch.manual_seed(0)
    first = spec.build().to(device)
    second = copy.deepcopy(first)
    x, y = models.make_batch(spec.batch_kind, spec.batch, device)
    return make_step(first, _adam(first), x, y), make_step(second, _adam(second), x, y)


# ---------------------------------------------------------------------- active


def _to_state(morph: Morphogenesis, layer: str, slot: int, state: str) -> None:
    """Advance a GERMINATED seed by hand to TRAINING, BLENDING or HOLDING."""
    order = ["TRAINING", "BLENDING", "HOLDING"]
    for _ in range(order.index(state) + 1):
        morph.advance(layer, slot, "bench")


def _hand_branch(seed: nn.Module) -> nn.Module:
    """The seed's computation as plain PyTorch modules (an fx GraphModule of nn.Linear etc.),
    on a copy of its weights: the branch a user would write by hand."""
    return copy.deepcopy(seed).to_graph_module()


def active_pair(spec: ModelSpec, device: torch.device, state: str, template: str = "residual_mlp",
                layer: str = "fc2", compile_models: bool = False, guard: str = "step",
                **params: Any) -> tuple[Step, Step, Morphogenesis, int]:
    """(Esper step, hand-written step, morph, seed params) with one seed at ``layer`` in ``state``;
    with ``compile_models`` both models run through ``torch.compile``; ``guard`` is
    ``MorphConfig.guard``."""
    torch.manual_seed(0)
    base = spec.build().to(device)
    esper_model = wrap(copy.deepcopy(base), [layer])
    opt_e = _adam(esper_model)
    blend = 10**7  # BLENDING lasts the whole benchmark; alpha still changes every step
    morph = _morph(esper_model, opt_e, blend_steps=blend, train_steps=blend, guard=guard)
    morph.germinate(layer, 0, template, **params)
    _to_state(morph, layer, 0, state)
    seed = esper_model.get_submodule(layer).seed(0)
    hand_model = copy.deepcopy(base)
    alpha = 1.0 if state == "HOLDING" else 0.5
    blended = compile_models and state == "BLENDING"
    hand = models.with_hand_seed(hand_model, layer, _hand_branch(seed), alpha,
                                 models.HandBlended if blended else models.HandSeeded)
    tick = None
    if state == "BLENDING":
        count = [0]

        def tick() -> None:  # a hand-written blend ramps its alpha too
            count[0] += 1
            hand.alpha = min(1.0, 0.5 + count[0] / blend)
            if blended:
                hand.alpha_t.fill_(hand.alpha)

    opt_h = _adam(hand_model)
    x, y = models.make_batch(spec.batch_kind, spec.batch, device)
    n_seed = sum(p.numel() for p in seed.parameters())
    return (make_step(_compiled(esper_model, compile_models), opt_e, x, y, morph),
            make_step(_compiled(hand_model, compile_models), opt_h, x, y, tick=tick), morph, n_seed)


def active_rows(device: torch.device, settings: StepSettings, labels: Sequence[str] = ("TinyMLP", "WideMLP"),
                states: Sequence[str] = ("BLENDING", "HOLDING"),
                guards: Sequence[str] = ("step", "sampled")) -> list[Row]:
    """One active seed (residual_mlp, width 32, on fc2) vs the same model written by hand, under each
    finiteness guard (``MorphConfig.guard``: the default "step", and "sampled")."""
    rows: list[Row | None] = []
    for guard in guards:
        for label in labels:
            spec = _BY_LABEL[label]
            for state in states:
                name = f"train step, 1 seed {state}{_guard_label(guard)}: {label}"
                if not settings.wants(name):
                    continue
                esper, hand, morph, n_seed = active_pair(spec, device, state, guard=guard, width=32)
                note = (f"seed residual_mlp width 32 ({n_seed} params) on fc2, only fc2 wrapped; hand-written: "
                        "host(x) + a*branch(x) with the same branch and weights; Esper includes morph.step(loss); "
                        f"guard {guard!r}" + ("; alphas from Go's table between flushes (one call per flush)"
                                              if state == "BLENDING" else ""))
                rows.append(_row("active", name, device, settings, esper, hand, "same model written by hand", ACTIVE,
                                 note))
                _close(morph)
    return _kept(rows)


def _guard_label(guard: str) -> str:
    """The row-name suffix of a guard: none for the default ("step"), else ", guard <name>"."""
    return "" if guard == "step" else f", guard {guard}"


# ---------------------------------------------------------------------- PEFT


def peft_pair(spec: ModelSpec, device: torch.device, rank: int,
              guard: str = "step") -> tuple[Step, Step, Morphogenesis, int, int]:
    """(Esper step, PEFT step, morph, Esper trainable params, PEFT trainable params): a lowrank seed
    in HOLDING vs a LoRA layer of the same rank on fc2, base frozen on both sides."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = spec.build().to(device)
    esper_model = copy.deepcopy(base)
    esper_model.requires_grad_(False)  # PEFT freezes the base; so does this side, for equal trainable params
    wrap(esper_model, ["fc2"])
    opt_e = _adam(esper_model)
    morph = _morph(esper_model, opt_e, guard=guard)
    morph.germinate("fc2", 0, "lowrank", rank=rank)
    _to_state(morph, "fc2", 0, "HOLDING")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["fc2"], lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(copy.deepcopy(base), config).to(device)
    opt_p = _adam(peft_model)
    x, y = models.make_batch(spec.batch_kind, spec.batch, device)
    n_e = sum(p.numel() for p in esper_model.parameters() if p.requires_grad)
    n_p = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return make_step(esper_model, opt_e, x, y, morph), make_step(peft_model, opt_p, x, y), morph, n_e, n_p


def peft_rows(device: torch.device, settings: StepSettings,
              cases: Sequence[tuple[str, int]] = (("TinyMLP", 4), ("WideMLP", 8)),
              guards: Sequence[str] = ("step", "sampled")) -> list[Row]:
    """Esper lowrank seed vs PEFT LoRA of equal rank (Esper must be no slower)."""
    try:
        import peft
    except ImportError:
        return [Row("peft", f"train step, lowrank r={r} vs PEFT LoRA: {label}", device.type, "ms", None,
                    target=NO_SLOWER.text, note="peft is not installed (pip install peft)") for label, r in cases]
    rows: list[Row | None] = []
    for guard in guards:
        for label, rank in cases:
            name = f"train step, lowrank r={rank} vs PEFT LoRA{_guard_label(guard)}: {label}"
            if not settings.wants(name):
                continue
            esper, lora, morph, n_e, n_p = peft_pair(_BY_LABEL[label], device, rank, guard=guard)
            note = (f"trainable params Esper {n_e}, PEFT {n_p} (base frozen on both sides, PEFT {peft.__version__}); "
                    "Esper: KasminaLayer + SeedModule in HOLDING (alpha 1) plus morph.step(loss), guard "
                    f"{guard!r}; PEFT: lora.Linear (scaling lora_alpha/r = 1, no dropout) inside PeftModel")
            rows.append(_row("peft", name, device, settings, esper, lora, "PEFT LoRA, same rank", NO_SLOWER, note))
            _close(morph)
    return _kept(rows)


# ---------------------------------------------------------------------- scaling


def _deep_spec(n: int) -> ModelSpec:
    return ModelSpec(f"Deep({n})", "deep", 32, lambda: models.Deep(n), (nn.Linear,), f"{n} Linear(32, 32) wrapped")


def scaling_rows(device: torch.device, settings: StepSettings, depths: Sequence[int] = (1, 10, 100, 1000),
                 slots: Sequence[int] = (1, 4, 16), guards: Sequence[str] = ("step", "sampled")) -> list[Row]:
    """Dormant overhead against the number of wrapped layers and of slots per layer, and one seed in
    HOLDING with many slots."""
    rows: list[Row | None] = []
    for n in depths:
        spec = _deep_spec(n)
        esper, plain, morph = dormant_pair(spec, device)
        rows.append(_row("scaling", f"dormant, {n} wrapped layers: Deep({n})", device, settings, esper, plain,
                         "plain model", DORMANT, f"{spec.what}, batch 32; Esper includes morph.step(loss)"))
        _close(morph)
    for k in slots:
        torch.manual_seed(0)
        spec = ModelSpec("Deep(10)", "deep", 32, lambda: models.Deep(10), (nn.Linear,), "")
        plain = spec.build().to(device)
        wrapped = wrap(copy.deepcopy(plain), [nn.Linear], seeds_per_layer=k)
        x, y = models.make_batch("deep", 32, device)
        opt_w = _adam(wrapped)
        morph = _morph(wrapped, opt_w)
        rows.append(_row("scaling", f"dormant, {k} slots/layer: Deep(10)", device, settings,
                         make_step(wrapped, opt_w, x, y, morph), make_step(plain, _adam(plain), x, y),
                         "plain model", DORMANT, f"10 layers x {k} slots, all dormant; includes morph.step(loss)"))
        _close(morph)
    for guard, k in [(g, k) for g in guards for k in slots]:
        name = f"1 seed HOLDING, {k} slots/layer{_guard_label(guard)}: Deep(10)"
        if not settings.wants(name):
            continue
        torch.manual_seed(0)
        base = models.Deep(10).to(device)
        esper_model = wrap(copy.deepcopy(base), [nn.Linear], seeds_per_layer=k)
        opt_e = _adam(esper_model)
        morph = _morph(esper_model, opt_e, guard=guard)
        morph.germinate("layers.5", 0, "residual_mlp", width=16)
        _to_state(morph, "layers.5", 0, "HOLDING")
        hand_model = copy.deepcopy(base)
        models.with_hand_seed(hand_model, "layers.5", _hand_branch(esper_model.layers[5].seed(0)))
        x, y = models.make_batch("deep", 32, device)
        rows.append(_row("scaling", name, device, settings,
                         make_step(esper_model, opt_e, x, y, morph), make_step(hand_model, _adam(hand_model), x, y),
                         "same model written by hand", ACTIVE,
                         f"10 layers x {k} slots wrapped, residual_mlp width 16 in layers.5 slot 0; hand-written "
                         f"baseline has only that branch; includes morph.step(loss); guard {guard!r}"))
        _close(morph)
    return _kept(rows)


# ---------------------------------------------------------------------- torch.compile


def _compile_all(esper: Step, baseline: Step, morph: Morphogenesis) -> None:
    """Runs both sides until every graph is compiled: the baseline's one, and the wrapped model's
    ordinary and sampling graphs (a sampling step comes every ``signal_every`` steps), so that no
    compilation falls inside a timed round."""
    for _ in range(morph.config.signal_every + 1):
        esper()
    for _ in range(2):
        baseline()


def compile_rows(device: torch.device, settings: StepSettings, labels: Sequence[str] = ("TinyMLP", "WideMLP"),
                 states: Sequence[str] = ("BLENDING", "HOLDING")) -> list[Row]:
    """The dormant and active pairs with both sides compiled: a compiled wrapped model against the
    compiled plain model (dormant) and the compiled hand-written model (one seed)."""
    import torch._dynamo  # loaded by torch.compile anyway; imported here for reset()

    rows: list[Row | None] = []
    for label in labels:
        spec = _BY_LABEL[label]
        torch._dynamo.reset()  # each pair compiles afresh: no model counts against another's cache
        esper, plain, morph = dormant_pair(spec, device, compile_models=True)
        _compile_all(esper, plain, morph)
        rows.append(_row("compile", f"train step, dormant, torch.compile: {label}", device, settings, esper, plain,
                         "compiled plain model", DORMANT,
                         f"{spec.what}; both models torch.compile (inductor); Esper includes morph.step(loss)"))
        _close(morph)
        for state in states:
            torch._dynamo.reset()
            esper, hand, morph, n_seed = active_pair(spec, device, state, compile_models=True, width=32)
            _compile_all(esper, hand, morph)
            rows.append(_row("compile", f"train step, 1 seed {state}, torch.compile: {label}", device, settings,
                             esper, hand, "same model written by hand, compiled", ACTIVE,
                             f"seed residual_mlp width 32 ({n_seed} params) on fc2; both models torch.compile "
                             "(inductor); Esper includes morph.step(loss)"
                             + ("; alphas from Go's table between flushes" if state == "BLENDING" else "")))
            _close(morph)
    torch._dynamo.reset()
    return _kept(rows)


# ---------------------------------------------------------------------- metrics


def _scraping(step: Step, morph: Morphogenesis, every: int) -> Step:
    """``step``, plus one scrape's work in Go (``morph.metrics_text()``) every ``every`` calls."""
    calls = 0

    def scraped() -> None:
        nonlocal calls
        step()
        calls += 1
        if calls % every == 0:
            morph.metrics_text()

    return scraped


def _scrape_cost(morph: Morphogenesis, settings: StepSettings, name: str, calls: int = 20) -> list[float] | None:
    """CPU seconds per ``morph.metrics_text()`` call, per round (None when --only leaves the row
    ``name`` out)."""
    if not settings.wants(name):
        return None
    for _ in range(3):
        morph.metrics_text()
    out = []
    for _ in range(settings.rounds):
        start = time.process_time()
        for _ in range(calls):
            morph.metrics_text()
        out.append((time.process_time() - start) / calls)
    return out


def metrics_rows(device: torch.device, settings: StepSettings, labels: Sequence[str] = ("TinyMLP", "WideMLP"),
                 interval: float = 0.1) -> list[Row]:
    """The cost of metrics on a training step: the dormant wrapped model with its metrics endpoint
    served and one scrape's work (Go reads the session, gathers and encodes the text exposition; here
    through the ABI, ``morph.metrics_text()``) every ``interval`` seconds of training (150 times
    Prometheus' default 15 s), against the same model and step with no endpoint and no scrape. The
    scrape is made by the timed side itself, so its cost lands on that side (a scraper in another
    process would make Go work in this process during either side's rounds alike). Alarms and the
    impact analysis run on both sides: they are always on. A round lasts ``interval`` (at least), so
    that every round of the scraped side holds a scrape and the median of per-round ratios sees it."""
    per_round = dataclasses.replace(settings, block_s=max(settings.block_s, interval), max_inner=1 << 20)
    rows = []
    for spec in MODELS:
        if spec.label not in labels:
            continue
        torch.manual_seed(0)
        plain = spec.build().to(device)
        on_model = wrap(copy.deepcopy(plain), list(spec.targets))
        off_model = wrap(copy.deepcopy(plain), list(spec.targets))
        x, y = models.make_batch(spec.batch_kind, spec.batch, device)
        opt_on, opt_off = _adam(on_model), _adam(off_model)
        morph_on, morph_off = _morph(on_model, opt_on), _morph(off_model, opt_off)
        morph_on.serve_metrics(0)
        train_on = make_step(on_model, opt_on, x, y, morph_on)
        train_off = make_step(off_model, opt_off, x, y, morph_off)
        for _ in range(settings.warmup):
            train_off()
        start = time.process_time()  # steps per interval of this process's CPU time (no clock read per step)
        for _ in range(50):
            train_off()
        step_s = (time.process_time() - start) / 50
        every = max(1, round(interval / max(step_s, 1e-9)))
        scraped = _scraping(train_on, morph_on, every)
        try:
            scrape_s = _scrape_cost(morph_on, settings, f"one scrape from Python, morph.metrics_text(): {spec.label}")
            if scrape_s is not None:
                # The arithmetic beside the measurement: a scrape's CPU time shared by the steps between two.
                rows.append(samples_row(
                    "metrics", f"one scrape from Python, morph.metrics_text(): {spec.label}", device.type,
                    [x * 1e6 for x in scrape_s], "us", target=None, source="ABI",
                    note=f"CPU time per call (attach the cache and store, Go reads, gathers and encodes, the text "
                         f"back through the ABI), 20 calls per round; spread over {every} steps of "
                         f"{step_s * 1e3:.2f} ms that is {statistics.median(scrape_s) / (every * step_s):.2%} "
                         f"of a step (the expected cost of the row below)",
                    extra={"expected_ratio": 1 + statistics.median(scrape_s) / (every * step_s)}))
            rows.append(_row("metrics", f"train step, metrics served and scraped every {interval:g} s: {spec.label}",
                             device, per_round, scraped, train_off, "same step, metrics off",
                             ratio_at_most(1.02, "<= 1.02x (< 2%)"),
                             f"{spec.what}; dormant; one scrape (Go: read, gather, encode) every {every} steps "
                             f"({interval:g} s of CPU time as measured before timing); rounds of {every} steps, "
                             f"so that each holds one scrape", inner=every))
            # The noise floor of this pairing on this machine: the same step on both sides, no scrape.
            rows.append(_row("metrics", f"A/A control, no scrape on either side: {spec.label}", device, per_round,
                             make_step(on_model, opt_on, x, y, morph_on), train_off, "the same step", None,
                             "informative: how far two identical sides differ here (read the row above against it); "
                             "the Esper side serves the endpoint, unscraped", inner=every))
        finally:
            _close(morph_on, morph_off)
    return _kept(rows)
