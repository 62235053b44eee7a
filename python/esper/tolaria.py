"""Tolaria: the training-loop integration.

:class:`Morphogenesis` connects a wrapped model and its optimizer to a Go
session (lifecycle, Nissa, Tamiyo). It makes at most one call into Go per
optimizer step, and usually one every ``signal_every`` steps; the forward pass
never calls Go::

    model = esper.wrap(model, target_modules=["fc1"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    morph = esper.Morphogenesis(model, opt, evaluate=lambda m: {"loss": val_loss(m)})
    for epoch in range(epochs):
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            morph.step(loss)
        morph.end_epoch(val_loss=val_loss(model))

Go's events are mirrored here: a germination builds the seed from its
blueprint (Tezzeret) and adds its parameters to the optimizer's parameter group
that holds its host layer (so they train at the host's current learning rate,
and every LR scheduler keeps working); a prune removes them (and their
optimizer state); a fossilization makes the seed final (and, with
``freeze_fossilized``, freezes it and removes it from the optimizer); a
rollback restores the last good weights and optimizer state. The host's
optimizer state is never reset, except by a rollback.

Rollback. A non-finite value in the signals (the sampled training loss, a
wrapped layer's activations or host weights, the rows of its effective-rank
estimate), a training loss that explodes (``loss_factor``), a non-finite
validation loss, or model weights found non-finite at :meth:`end_epoch` make
Go's governor call for a rollback. Then, at the flush or ``end_epoch`` that
decides it (before the next optimizer step): the newest seed in flight
(TRAINING, BLENDING or HOLDING), if any, is removed (ROLLED_BACK, then
embargoed), and the whole model (host weights, buffers and surviving seeds,
fossilized ones included) and the optimizer's per-parameter state return to
the last good state: the one kept at the last ``end_epoch`` whose losses and
weights were finite and that did not roll back (or at the start). A seed
germinated since returns to its initial weights, which leave the output
unchanged, with fresh optimizer state. The lifecycle (Go's states and
schedules), the step and epoch counters, parameter groups and learning rates
are not rewound. Restoring only the blamed seed would not do: a blow-up that
reached the loss has already been through the host's gradient and optimizer
state, and NaN weights never recover on their own. A seed that merely outputs
NaN is contained without a rollback: its output is dropped for that step and
its breaker prunes it after ``failures_before_prune`` consecutive failing steps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from . import _lib, karn
from .builds import BuildCache, StoredKernel, kernel_cache
from .distributed import RankError, RankSync, active_group
from .errors import EsperError
from .kasmina import (
    _FAILURES_RECORDED,
    SIGNALS,
    FailureKind,
    KasminaLayer,
    SeedFailure,
    SeedState,
    collect_failures,
    failures_recorded,
    gather_health,
    has_seeds_or_failures,
    kasmina_layers,
    set_sampling,
    stamp_failures,
)
from .oona import Oona
from .outcomes import OutcomeRecorder
from .session import LIVE_STATES, Session
from .tezzeret import SeedValidationError, build_seed

__all__ = ["MorphConfig", "Morphogenesis"]

#: A layer is named by its index in session order or by its qualified name.
LayerRef = Union[int, str]
#: evaluate(model) -> {"loss": float, "metric": float (optional)} on validation data.
Evaluate = Callable[[nn.Module], dict[str, float]]

_EXITS = frozenset({"PRUNED", "CANCELLED", "ROLLED_BACK"})
# Learning rates a parameter group may hold (OneCycleLR keeps its own there); a seed group's are scaled.
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Per-group lists of torch's LR schedulers: learning rates (scaled for a seed group) and the rest (copied).
_SCHEDULER_LRS = ("base_lrs", "max_lrs", "min_lrs", "_last_lr")
_SCHEDULER_OTHERS = ("lr_lambdas", "base_momentums", "max_momentums")
# Held while a seed is built under a forked, re-seeded global RNG (see Morphogenesis._add_seed).
_RNG_LOCK = threading.Lock()
# Version 2: the seeds live in Go's snapshot only (version 1 also listed them, read by a check).
_CHECKPOINT_VERSION = 2
_GUARDS = ("step", "sampled")  # MorphConfig.guard


# The settings Go owns: MorphConfig's field -> its path in the session config. Their defaults are
# Go's (esper_session_defaults, read when a MorphConfig is made: one copy of each, in
# core/session and policy/tamiyo); session_config sends each on its path.
_GO_SETTINGS: dict[str, tuple[str, ...]] = {
    "policy": ("policy",),
    "train_steps": ("train_steps",),
    "blend_steps": ("blend_steps",),
    "schedule": ("schedule",),
    "embargo_steps": ("embargo_steps",),
    "template": ("controller", "template"),
    "patience": ("controller", "patience"),
    "threshold": ("controller", "threshold"),
    "prune_below": ("controller", "prune_below"),
    "min_gain": ("controller", "min_gain"),
    "saturate_after": ("controller", "saturate_after"),
    "holding_epochs": ("controller", "holding_epochs"),
    "epochs": ("controller", "epochs"),
    "seed": ("controller", "seed"),
    "karn_search": ("controller", "search"),
    "value_threshold": ("controller", "value_threshold"),
    "max_params": ("governor", "max_params"),
    "max_concurrent": ("governor", "max_concurrent"),
    "cooldown_epochs": ("governor", "cooldown_epochs"),
    "loss_factor": ("governor", "loss_factor"),
    "loss_min_delta": ("governor", "loss_min_delta"),
    "failures_before_prune": ("breaker", "failures"),
    "log_max": ("growth_log_max",),
    "rollout_margin": ("rollout", "margin"),
    "rollout_epochs": ("rollout", "epochs"),
}


def _from_go(name: str, zero: Any) -> Any:
    """A dataclass field whose default is Go's default of the session setting ``name`` maps to
    (``zero`` where Go's default is the zero value it leaves out)."""
    path = _GO_SETTINGS[name]

    def default() -> Any:
        value = _lib.session_default(path, zero)
        return float(value) if isinstance(zero, float) else value  # JSON writes 3.0 as 3

    return field(default_factory=default)


@dataclass
class MorphConfig:
    """Settings of a morphogenetic run. Every field has a working default.

    The defaults of the lifecycle, Tamiyo's and the governor's settings are the
    Go library's (one copy, in ``core/session`` and ``policy/tamiyo``), read
    when a ``MorphConfig`` is made: ``MorphConfig()`` shows them.

    Attributes:
        policy: "heuristic" (Tamiyo decides), "random" (random layer at the
            same timing and budget: a baseline), "manual" (you call
            germinate/advance/prune/fossilize), "learned" (the value model
            decides when and what to grow: docs/simic.md), or "ppo" (Simic's
            graph policy, run in Go on the layer graph at each end of epoch:
            docs/simic.md, "Graph policy in Go").
        ppo_model: the ppo policy's model folder (manifest.json +
            model.safetensors); "" for the shipped one (``esper/models/ppo``, a
            short behaviour-cloned checkpoint, not a long-trained policy). A
            folder with no usable model fails at session creation with the
            reason; ``esper simic ppo train --out DIR`` makes one.
        ppo_runtime: where the ppo policy's network runs at each decision:
            "native" (Go's forward pass over model.safetensors) or "onnx" (the
            folder's model.onnx through ONNX Runtime: ``make onnxruntime``
            installs the library, or set ESPER_ONNXRUNTIME_LIB). Go checks the
            value; docs/simic.md, "Graph policy in Go".
        value_model: the learned policy's model folder (manifest.json +
            model.safetensors); "" for the shipped one (``esper/models/value``);
            "urza:<name>" for the newest version published to Urza under that
            name (``esper simic publish``), taken up at each end of epoch.
            A folder with no usable model fails at session creation with the
            reason; ``esper simic train`` makes one.
        value_threshold: the predicted value (share of the validation loss a
            seed removes per host-epoch of training compute) the best
            candidate must reach for the learned policy to grow now.
        rollout_margin: with ``value_model`` or ``karn_predictor`` "urza:<name>"
            (the newest version of a model published to Urza, taken up at each end
            of epoch: docs/simic.md, "Rolling deployment"), how much worse than before a switch the validation
            loss may get, as a share of it, before the switch is reverted.
        rollout_epochs: how many epochs after a switch are watched (K).
        value_runtime: where the value model runs: "native" (Go's forward
            pass over model.safetensors) or "onnx" (the folder's model.onnx
            through ONNX Runtime: ``make onnxruntime`` installs the library,
            or set ESPER_ONNXRUNTIME_LIB; docs/simic.md, "ONNX runtime").
        train_steps: optimizer steps a seed trains in isolation before blending.
        blend_steps: steps of the alpha ramp 0 -> 1 (the tempo).
        schedule: "linear" or "cosine" alpha ramp.
        embargo_steps: steps a slot rests after a prune before it can host again.
        signal_every: health signals are sampled, and the loss read, and both
            sent to Go every N steps (one device synchronisation each time).
            50 keeps a sub-millisecond training step within a few percent of
            plain PyTorch (`make bench`); lower it for runs of few steps.
        template: the blueprint template Tamiyo germinates (see `esper blueprints`).
        template_params: its parameters (e.g. {"width": 16}); Tamiyo shrinks
            them to fit the budget, to a quarter of the size at most (no seed
            is smaller than a quarter of the one configured).
        patience: epochs of validation plateau before Tamiyo grows.
        threshold: relative validation-loss improvement below which an epoch
            counts as a plateau.
        prune_below: a seed in HOLDING whose measured contribution (validation
            loss without it minus with it) is at or below this is pruned.
        min_gain: a held seed must also lower the validation loss by this
            fraction of it (0.01: 1%); one that does not is pruned, a miss of
            its layer. Growth stops when every layer is saturated: this is
            what sizes the model.
        saturate_after: a layer is saturated (no more growth there) when this
            many seeds in a row fell short there, with no fossilized seed
            between them, or at once when a seed did not help at all (its
            contribution <= 0). One seed that helped a little but fell short
            does not end growth on its layer (1: the first miss does). A seed
            that hurt (the validation loss better without it by at least its
            bar: ``prune_below``, or ``min_gain`` of the validation loss)
            before any seed of the run paid saturates every layer: the model
            fits noise at this size.
        holding_epochs: epochs a seed is held (and measured) before judgement.
        epochs: the run's planned length in epochs, if you know it (0:
            unknown). Tamiyo then stops germinating when fewer epochs are left
            than twice a seed's lifecycle (train_steps + blend_steps at the
            run's steps per epoch, plus holding_epochs): a seed that late
            cannot repay its compute.
        max_params: parameter budget for all seeds together (0: no limit).
        max_concurrent: seeds germinated but not yet fossilized, at once.
        cooldown_epochs: epochs a layer waits after a germination.
        loss_factor: a training loss above this multiple of its rolling mean
            (or non-finite) makes the governor roll back: the newest seed in
            flight is removed and the model and optimizer state return to the
            last good state (see the module's docs).
        loss_min_delta: ... and at least this much above it in loss units
            (near zero, losses are noisy in relative terms).
        failures_before_prune: consecutive failing steps that open a seed's
            breaker and prune it. A step fails when the seed's forward raised,
            returned the wrong shape or a non-finite value in it (the host's
            output was used instead); a step with no failure between two
            failures resets the count. Failures are read every
            ``signal_every`` steps: exceptions and wrong shapes are counted at
            the step they happened in; non-finite outputs, counted on the
            device, fail the window's last step, or each of its steps when
            every forward pass in the window failed. There is no cool-down: an
            open breaker prunes the seed.
        guard: "step" (the default): every forward of a running seed checks
            its output for finiteness on the device and, when it is not
            finite, uses the host's output alone and keeps the seed's
            gradient from the host's input (a few small ops per seed and
            step; on a sub-millisecond step, most of a seed's overhead).
            "sampled": the check runs on sampling steps only (one in
            ``signal_every``); on the other steps the seed is added as a
            hand-written model would add it, so a seed whose output turns
            non-finite there makes the loss non-finite: the loss is read
            at the next flush and Go's governor rolls back (the newest
            seed in flight is removed and the last good state restored;
            see ``rollback``). Faster, and less safe: up to
            ``signal_every`` steps may be lost. Exceptions and wrong shapes
            fall back to the host in both modes.
        seed_lr_scale: a seed's learning rate as a multiple of its host's.
            At 1 (the default) a seed's parameters join the optimizer's
            parameter group that holds its host layer (the group of the host's
            first parameter the optimizer holds; the first group when it holds
            none), so they share the host's current LR, momentum and weight
            decay and follow any LR scheduler unchanged. Any other value puts
            each seed in a group of its own, a copy of the host's group with
            its learning rates ("lr", "initial_lr", "max_lr", "min_lr") scaled;
            LR schedulers index their lists by group, so pass them to
            ``Morphogenesis(..., schedulers=[...])`` to have them follow the
            new groups (a scheduler found on the optimizer but not passed
            raises ValueError).
        seed: seed of the random policy and of seed initialisation.
        rollback: keep a copy of the last good weights and optimizer state
            (taken at each end_epoch whose losses and weights are finite and
            that did not roll back) to restore on rollback, and check at each
            end_epoch that the weights are finite (one pass over them); costs
            one copy of the model and optimizer state in memory. Without it a
            rollback only removes the blamed seed.
        log_path: a JSON-lines file for signals, events and decisions ("" for none).
        log_max: entries kept in ``Morphogenesis.log`` (which every
            ``state_dict`` copies) and in Go's growth log, in [1, 1048576]:
            when full, the oldest quarter is dropped at once and counted in
            ``Morphogenesis.log_dropped``. An entry is a small dict (an event
            measured about 300 bytes in memory and 130 pickled), so the
            default keeps the log to a few MiB; ``log_path`` keeps the whole
            history.
        freeze_fossilized: freeze a seed's parameters when it is fossilized
            (and take them out of the optimizer). By default a fossilized
            seed is final (no longer judged, pruned or rolled back) but keeps
            training jointly with the host, as the same shape trained from
            scratch would.
        urza: the Urza store the run records to, a folder or an
            ``s3://bucket/prefix`` URL: validated builds, fossilized seeds
            (trained kernels) and outcome records ("": the default store,
            ``$ESPER_URZA_URL`` when set, else ``$ESPER_HOME/urza`` with
            ESPER_HOME defaulting to ``~/.esper``; see docs/internals.md and
            docs/urza.md).
        karn_search: Tamiyo asks Karn to search for each germination's blueprint
            (docs/karn.md) instead of growing ``template`` as configured. The
            search costs no more than the seed ``template`` would have grown
            there (its parameters and FLOPs per sample), starts from the
            library's templates and from what paid before on hosts of the same
            layout (the outcome records in ``urza``), and ranks its candidates
            with a predictor fitted on those records once there are enough (20
            measured records from 3 runs), by a documented prior before that;
            each germination's reason names the request, the candidates and
            their predictions. Off by default: the fixed template.
        karn_predictor: with ``karn_search``, the predictor Karn ranks with: ""
            (the default) fits one on the outcome records as they grow; a
            predictor folder (``esper karn fit``) is used as it is;
            "urza:<name>" uses the newest version published to Urza under that
            name (``esper karn publish``) and takes newer ones up at the ends
            of epoch, reverted as ``rollout_margin`` and ``rollout_epochs``
            say (docs/karn.md, "Rolling deployment").
        record_outcomes: write one outcome record per germination to Urza
            (see ``esper.outcomes``; ``esper urza outcomes --run RUN_ID``).
            Written at lifecycle ends and end_epoch only, never per step.
            In a run of several ranks only rank 0 records.
        metrics_port: serve the run's Prometheus metrics over HTTP from Go
            (``http://metrics_host:port/metrics``) once the session starts:
            -1 (the default) serves nothing, 0 picks a free port, a port > 0
            is offset by the ``LOCAL_RANK`` environment variable when set (one
            port per rank under torchrun). :attr:`Morphogenesis.metrics_port`
            is the port bound. See ``esper.metrics`` and docs/metrics.md.
        metrics_host: the interface the endpoint binds: loopback unless you
            name another.
        alerts: Nissa's alarm thresholds (docs/metrics.md): e.g.
            ``{"step_time_factor": 3, "stall_seconds": 600,
            "no_improvement_epochs": 10, "failure_rate": 0.2}``. Alarms are
            reports (in :attr:`Morphogenesis.log` as ``{"kind": "alarm"}``
            entries, and counted in the metrics); the governor alone acts.
        runs: the runs root of the run log ("": ``$ESPER_HOME/runs``). Every
            run appends its events (lifecycle transitions, decisions with
            their reasons, failures, alarms, epoch and health summaries,
            artifacts, start and end; docs/events.md) to
            ``<runs>/<run_id>/events.jsonl``, always: see ``esper.oona``,
            ``esper runs`` and ``esper events RUN``.
        run_log_max_bytes: the run log's file rotates at this size (at least
            4096); the previous files are kept as ``events.1.jsonl`` (newest)
            to ``events.<run_log_keep>.jsonl``, older ones deleted, so a run's
            log holds at most about (run_log_keep + 1) x run_log_max_bytes.
        run_log_keep: rotated files kept (0: only the current file).
        nats_url: also publish the run's events to this NATS server
            (subjects ``esper.v1.<run>.<rank>.<kind>``, stored in the
            JetStream stream ``ESPER_EVENTS`` and deduplicated by event id),
            so another process can follow or replay the run ("": the
            environment's ``ESPER_NATS_URL``, or none). ``esper oona serve``
            runs a local server. Training never waits on it: while the
            server is unreachable, events wait in a bounded backlog and are
            sent after it comes back (those that do not fit are counted as
            dropped, see ``morph.oona.stats()["nats"]``). A plaintext
            connection to a host other than loopback is refused unless
            ``nats_options["allow_plaintext"]`` is set.
        nats_options: NATS credentials and TLS: "creds" (a credentials
            file), "user" and "password", "token", "ca", "cert", "key",
            "allow_plaintext", "stream" (default ESPER_EVENTS), "buffer"
            (the backlog in events, default 10000).
        distributed: "auto" (default): synchronise the ranks when
            ``torch.distributed`` is initialized with more than one rank
            (DDP or FSDP2; see :mod:`esper.distributed` and
            docs/distributed.md); "on": the same, and refuse to start
            without a process group; "off": never (each rank alone).
        rank_timeout: seconds Esper's collectives wait for the other ranks
            before raising :class:`esper.distributed.RankError` (a rank died
            or hangs).
    """

    policy: str = _from_go("policy", "")
    train_steps: int = _from_go("train_steps", 0)
    blend_steps: int = _from_go("blend_steps", 0)
    schedule: str = _from_go("schedule", "")
    embargo_steps: int = _from_go("embargo_steps", 0)
    signal_every: int = 50
    template: str = _from_go("template", "")
    template_params: dict[str, Any] = field(default_factory=dict)
    patience: int = _from_go("patience", 0)
    threshold: float = _from_go("threshold", 0.0)
    prune_below: float = _from_go("prune_below", 0.0)
    min_gain: float = _from_go("min_gain", 0.0)
    saturate_after: int = _from_go("saturate_after", 0)
    holding_epochs: int = _from_go("holding_epochs", 0)
    epochs: int = _from_go("epochs", 0)
    max_params: int = _from_go("max_params", 0)
    max_concurrent: int = _from_go("max_concurrent", 0)
    cooldown_epochs: int = _from_go("cooldown_epochs", 0)
    loss_factor: float = _from_go("loss_factor", 0.0)
    loss_min_delta: float = _from_go("loss_min_delta", 0.0)
    failures_before_prune: int = _from_go("failures_before_prune", 0)
    seed_lr_scale: float = 1.0
    guard: str = "step"
    seed: int = _from_go("seed", 0)
    rollback: bool = True
    freeze_fossilized: bool = False
    log_path: str = ""
    urza: str = ""
    record_outcomes: bool = True
    karn_search: bool = _from_go("karn_search", False)
    karn_predictor: str = ""
    value_model: str = ""
    value_threshold: float = _from_go("value_threshold", 0.0)
    value_runtime: str = "native"
    ppo_model: str = ""
    ppo_runtime: str = "native"
    rollout_margin: float = _from_go("rollout_margin", 0.0)
    rollout_epochs: int = _from_go("rollout_epochs", 0)
    log_max: int = _from_go("log_max", 0)
    metrics_port: int = -1
    metrics_host: str = "127.0.0.1"
    alerts: dict[str, Any] = field(default_factory=dict)
    runs: str = ""
    run_log_max_bytes: int = 64 << 20
    run_log_keep: int = 4
    nats_url: str = ""
    nats_options: dict[str, Any] = field(default_factory=dict)
    distributed: str = "auto"
    rank_timeout: float = 300.0

    def session_config(self, layers: list[dict[str, Any]], slots: int) -> dict[str, Any]:
        """The Go session configuration for these settings and layers."""
        doc: dict[str, Any] = {"layers": layers, "slots_per_layer": slots}
        for name, path in _GO_SETTINGS.items():
            if name == "value_threshold":
                continue  # the learned policy's, with its model (below)
            node = doc
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = getattr(self, name)
        doc["controller"].update({"params": self.template_params, **self._value_settings()})
        doc.update({"log_path": self.log_path, "urza": self.urza if self.karn_search or self._rolling() else "",
                    "karn_predictor": str(self.karn_predictor),
                    "alerts": dict(self.alerts)})
        return doc

    def _rolling(self) -> bool:
        """Whether the run follows a model published to Urza ("urza:<name>"): the learned policy's
        value model or Karn's predictor."""
        return self._rolling_value() or (self.karn_search and str(self.karn_predictor).startswith("urza:"))

    def _rolling_value(self) -> bool:
        """Whether the learned policy's value model is published to Urza ("urza:<name>")."""
        return self.policy.lower() == "learned" and str(self.value_model).startswith("urza:")

    def _value_settings(self) -> dict[str, Any]:
        """The learned or ppo policy's controller settings (none for the other policies)."""
        if self.policy.lower() == "ppo":
            from .simic.graph import default_model_dir as ppo_model_dir

            if self.ppo_runtime == "onnx":
                _lib.refresh_settings()  # ESPER_ONNXRUNTIME_LIB as os.environ holds it now
            return {"ppo_model": str(self.ppo_model) or ppo_model_dir(), "ppo_runtime": self.ppo_runtime}
        if self.policy.lower() != "learned":
            return {}
        from .valuemodel import default_model_dir

        if self.value_runtime == "onnx" or self._rolling_value():
            _lib.refresh_settings()  # ESPER_ONNXRUNTIME_LIB as os.environ holds it now
        return {"value_model": str(self.value_model) or default_model_dir(), "value_threshold": self.value_threshold,
                "value_runtime": self.value_runtime}


def _number(what: str, value: Any) -> float | None:
    """value as a float (a Python or NumPy number, or a one-element tensor); None stays None.

    Raises:
        TypeError: value is not a number, naming ``what`` and what it was.
    """
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a number (a float, or a one-element tensor), got {_shown(value)}")


def _shown(value: Any) -> str:
    """A short description of a value for error messages: its repr (cut) and its type."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (of type {type(value).__name__})"


def _check_built(module: nn.Module, ev: Mapping[str, Any]) -> None:
    """Check a seed module built for Go's seed ``ev`` against what Go says it is: its parameter
    count must equal ``ev["param_count"]`` (Go's count of the blueprint). Go is the only validator
    and hasher: the blueprint id is Go's, taken, never recomputed.

    Raises:
        SeedValidationError: check "param_count", with the expected and actual counts.
    """
    expected = int(ev["param_count"])
    actual = sum(p.numel() for p in module.parameters())
    if actual != expected:
        raise SeedValidationError(
            "param_count", f"seed {str(ev.get('blueprint_id', ''))[:12]}: the module built has {actual} parameters, "
            f"Go's blueprint {expected}", expected, actual)


def _check_listed_seeds(listed: Any, seeds: list[dict[str, Any]], names: Sequence[str]) -> None:
    """A version 1 checkpoint's own list of seeds must say what Go's snapshot says: the same live
    slots, each in the same state with the same blueprint (its id, asked of Go) and alpha.

    Raises:
        ValueError: naming the first seed on which they disagree.
    """
    if not isinstance(listed, list):
        raise ValueError("checkpoint version 1 without its \"seeds\" list: save it again with this Esper")
    go = {(int(s["layer"]), int(s["slot"])): s for s in seeds}
    mine = {(int(s["layer"]), int(s["slot"])): s for s in listed}
    for key in sorted(set(go) | set(mine)):
        where = f"seed {names[key[0]] if 0 <= key[0] < len(names) else key[0]}/{key[1]}"
        a, b = mine.get(key), go.get(key)
        if a is None or b is None:
            said = "holds no seed" if a is None else f"says {a.get('state')}"
            snap = "holds no live seed" if b is None else f"says {b['state']}"
            raise ValueError(f"checkpoint halves disagree on {where}: its seed list {said}, Go's snapshot {snap}. "
                             "Nothing was loaded.")
        ir = a.get("ir")
        listed_id = karn.blueprint_id(ir) if isinstance(ir, dict) else ""
        count = ir.get("param_count") if isinstance(ir, dict) else None
        alpha_a, alpha_b = float(a.get("alpha", 0.0)), float(b["alpha"])
        if a.get("state") != b["state"] or listed_id != b["blueprint_id"] or abs(alpha_a - alpha_b) > 1e-6:
            raise ValueError(
                f"checkpoint halves disagree on {where}: its seed list says {a.get('state')} with blueprint "
                f"{listed_id[:12]} ({count} parameters, alpha {alpha_a:.6g}), Go's snapshot says {b['state']} with "
                f"blueprint {str(b['blueprint_id'])[:12]} ({b['param_count']} parameters, alpha {alpha_b:.6g}). "
                "Nothing was loaded.")


def _check_evaluated(result: Any, metric: float | None) -> tuple[float, float | None]:
    """The (loss, metric) of what ``evaluate(model)`` returned; metric defaults to ``metric``.

    Raises:
        TypeError: result is not a mapping with a number under "loss" (and, when present, under
            "metric"); the message shows what it was.
    """
    expected = 'evaluate(model) must return {"loss": float, "metric": float (optional)}'
    if not isinstance(result, Mapping):
        raise TypeError(f"{expected}; it returned {_shown(result)}")
    if "loss" not in result:
        raise TypeError(f"{expected}; it returned a {type(result).__name__} without \"loss\": {_shown(result)}")
    try:
        loss = _number('evaluate(model)["loss"]', result["loss"])
        if "metric" in result:
            metric = _number('evaluate(model)["metric"]', result["metric"])
    except TypeError as exc:
        raise TypeError(f"{expected}; {exc}") from None
    if loss is None:
        raise TypeError(f'{expected}; its "loss" is None')
    return loss, metric


class _Driver:
    """The Morphogenesis driving a Kasmina layer, held weakly; copies and pickles of the layer
    (``copy.deepcopy(model)``, ``torch.save(model)``) are driven by none."""

    __slots__ = ("_ref",)

    def __init__(self, morph: Morphogenesis | None = None) -> None:
        self._ref = weakref.ref(morph) if morph is not None else None

    def get(self) -> Morphogenesis | None:
        """The driving Morphogenesis, or None when it was collected (or this is a copy)."""
        return self._ref() if self._ref is not None else None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Driver:
        return _Driver()

    def __reduce__(self) -> Any:
        return (_Driver, ())


def _loss_of(saved: torch.Tensor | float | None) -> float:
    """A checkpoint's sum of sampled losses (a 0-d tensor, or None before the first sample) as a float."""
    return 0.0 if saved is None else float(saved)


def _reshard(model: nn.Module) -> None:
    """Under FSDP2, reshard every ``fully_shard`` module: the root keeps its parameters unsharded
    (plain tensors, not the optimizer's DTensors) after a forward, and Esper matches parameters to
    the optimizer's by identity. Nothing happens without FSDP2 (a model that used it imported it)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp, "FSDPModule", None)
    if kind is None:
        return
    for module in model.modules():
        if isinstance(module, kind):
            module.reshard()


def _is_dtensor(t: Any) -> bool:
    """Whether t is a DTensor (FSDP2's sharded parameters and their optimizer state)."""
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


def _whole(good: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last good state with every DTensor gathered whole (a collective: under FSDP2 every rank
    takes ``state_dict()`` together), so that rank 0's checkpoint holds every rank's shards."""
    if good is None:
        return None
    tensors = list(good["model"].values()) + [x for st in good["optim"].values() for x in st.values()]
    if not any(_is_dtensor(t) for t in tensors):
        return good
    model = {k: v.full_tensor() if _is_dtensor(v) else v for k, v in good["model"].items()}
    optim = {n: {k: v.full_tensor() if _is_dtensor(v) else v for k, v in st.items()}
             for n, st in good["optim"].items()}
    return {**good, "model": model, "optim": optim}


def _sharded_like(saved: Any, ref: Any) -> Any:
    """A whole tensor of a checkpoint's last good state, as this rank's shard of ``ref`` when ref is a
    DTensor of the same shape (FSDP2); anything else unchanged. Every rank holds the whole tensor, so
    each cuts its own shard (no communication)."""
    if not (_is_dtensor(ref) and isinstance(saved, torch.Tensor)) or _is_dtensor(saved) or saved.shape != ref.shape:
        return saved
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(saved.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)


def _offload(t: torch.Tensor) -> torch.Tensor:
    """A copy of t for the last good state: in pinned host memory when t is on CUDA (one blocking
    device-to-host copy, taken at end_epoch), else a clone."""
    t = t.detach()
    if t.is_cuda:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t)
        return host
    return t.clone()


def _onload(saved: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """An optimizer-state tensor of the last good state, as the optimizer holds it for parameter p:
    back on p's CUDA device when it was moved off it (:func:`_offload`; a checkpoint loses the
    pinning, so a host tensor shaped like state of p counts too), else a copy where it is (a CPU
    step counter stays on the CPU)."""
    if p.is_cuda and not saved.is_cuda and (saved.dim() > 0 or saved.is_pinned()):
        return saved.to(p.device)
    return saved.clone()


def _placement_entry(entry: Any) -> dict[str, Any]:
    """A checkpoint's record of where a seed's parameters sit. Checkpoints from before seeds joined
    their host's group list [layer, slot] pairs, each a group of its own appended in that order."""
    if isinstance(entry, dict):
        return entry
    layer, slot = entry
    return {"layer": int(layer), "slot": int(slot), "group": None, "position": 0, "own": True}


@dataclass
class _Placement:
    """A seed's parameters in the optimizer. Their group is found by their identity when needed:
    ``optimizer.load_state_dict`` replaces the group dicts (not the parameters)."""

    params: list[nn.Parameter]
    own: bool  # a group of their own (seed_lr_scale != 1), else their host's group

    def find(self, groups: list[dict[str, Any]]) -> tuple[int, int] | None:
        """(group index, position of the first parameter) in these groups; None if no group holds it."""
        first = self.params[0]
        for g, group in enumerate(groups):
            for pos, p in enumerate(group["params"]):
                if p is first:
                    return g, pos
        return None


def _each_scheduler(schedulers: Sequence[Any]) -> Iterator[Any]:
    """The schedulers and, once each, those that SequentialLR and ChainedScheduler drive."""
    seen: set[int] = set()
    queue = list(schedulers)
    while queue:
        sched = queue.pop(0)
        if id(sched) not in seen:
            seen.add(id(sched))
            yield sched
            queue.extend(getattr(sched, "_schedulers", ()))


def _rank() -> int:
    """This process's rank in a multi-process run (torch.distributed, else RANK, else 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


def _session_stats(ref: weakref.ReferenceType[Morphogenesis]) -> Callable[[], dict[str, Any]]:
    """Go's session stats of the referenced Morphogenesis, held weakly (no reference cycle)."""

    def stats() -> dict[str, Any]:
        morph = ref()
        return morph.session.stats() if morph is not None else {}

    return stats


def _artifact_publisher(ref: weakref.ReferenceType[Morphogenesis]) -> Callable[[dict[str, Any], int, int], None]:
    """Publishes an artifact event on the referenced Morphogenesis's bus, held weakly."""

    def publish(data: dict[str, Any], step: int, epoch: int) -> None:
        morph = ref()
        if morph is not None:
            morph._publish_artifact(data, step, epoch)

    return publish


class Morphogenesis:
    """Drives the growth of a wrapped model during ordinary training.

    Args:
        model: a model wrapped with :func:`esper.wrap`.
        optimizer: the optimizer training it; a seed's parameters join the
            parameter group of its host layer and leave it when pruned (or
            fossilized, with ``freeze_fossilized``). See
            ``MorphConfig.seed_lr_scale``.
        config: the settings (:class:`MorphConfig`); keyword overrides win.
        evaluate: ``evaluate(model) -> {"loss": ..., "metric": ...}`` on
            validation data; used to measure each seed's contribution in
            HOLDING (with and without it). Without it, seeds are judged on
            the validation loss passed to :meth:`end_epoch`.
        schedulers: the optimizer's LR schedulers (``torch.optim.lr_scheduler``
            objects, ReduceLROnPlateau included). Needed only with
            ``seed_lr_scale`` != 1: each seed group then gets an entry in
            their per-group lists (base_lrs, lr_lambdas, max_lrs, min_lrs,
            momentums; SequentialLR's and ChainedScheduler's children too),
            copied from its host group's and scaled, and loses it when the
            seed leaves the optimizer. With the default scale seeds share
            their host's group and no scheduler needs to be known.
        **overrides: fields of MorphConfig.

    Raises:
        ValueError: the model holds no Kasmina layer, a setting is invalid, or
            ``seed_lr_scale`` != 1 while the optimizer carries an LR
            scheduler's ``initial_lr`` and no ``schedulers`` were given.
        esper.InvalidArgumentError: Go refused the configuration (raised by the
            first call that needs the Go session: it is created, and the
            library loaded, on first use).

    It owns a Go session: :meth:`close` releases it (use after close raises),
    and it works as a context manager. Save it with :meth:`state_dict`; it
    cannot be pickled.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        config: MorphConfig | None = None,
        evaluate: Evaluate | None = None,
        schedulers: Sequence[Any] = (),
        **overrides: Any,
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # the model DDP wraps: its layers, evaluation and state_dict
        self.model = model
        self.optimizer = optimizer
        self.config = copy.deepcopy(config) if config is not None else MorphConfig()
        for key, value in overrides.items():
            if not hasattr(self.config, key):
                raise ValueError(f"unknown Morphogenesis setting {key!r}; see MorphConfig")
            setattr(self.config, key, value)
        if self.config.signal_every < 1:
            raise ValueError(f"signal_every must be >= 1, got {self.config.signal_every}")
        if self.config.guard not in _GUARDS:
            raise ValueError(f"guard must be one of {', '.join(_GUARDS)}, got {self.config.guard!r}")
        if not 1 <= self.config.log_max <= 1 << 20:
            raise ValueError(f"log_max must be in [1, 1048576], got {self.config.log_max}")
        if self.config.run_log_max_bytes < 4096 or self.config.run_log_keep < 0:
            raise ValueError(f"run_log_max_bytes must be >= 4096 and run_log_keep >= 0, got "
                             f"{self.config.run_log_max_bytes} and {self.config.run_log_keep}")
        scale = self.config.seed_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"seed_lr_scale must be a finite number > 0 (a multiple of the host's LR), got {scale!r}")
        #: LR schedulers whose per-group lists follow seed groups (seed_lr_scale != 1 only).
        self.schedulers = list(schedulers)
        self._check_schedulers()
        self.evaluate = evaluate
        named = kasmina_layers(model)
        if not named:
            raise ValueError("the model holds no Kasmina layer: call esper.wrap(model, target_modules=...) first")
        self.layer_names = [name for name, _ in named]
        self.layers: list[KasminaLayer] = [layer for _, layer in named]
        self.slots = self.layers[0].num_slots
        if any(layer.num_slots != self.slots for layer in self.layers):
            raise ValueError("every Kasmina layer of one model must have the same number of slots")
        self._claim_layers()
        #: The synchronisation across ranks (None in a single process; see esper.distributed).
        self._dist = RankSync(self.config.rank_timeout) if active_group(self.config.distributed) else None
        for layer in self.layers:
            layer.guard_every_step = self.config.guard == "step"
        self._session: Session | None = None
        self._oona: Oona | None = None  # the run's event bus and run log (opened with the session)
        self._oona_run: str | None = None  # the run id a checkpoint being loaded brings (see load_state_dict)
        self._closed = False
        self._warned_flush = False
        self.steps = 0
        self.epoch = 0
        self._pending = 0  # optimizer steps not yet sent to Go
        self._failures_seen = failures_recorded()  # layers' failures already stamped with their step
        self._blending = 0  # slots in BLENDING: their alphas come from _ahead between flushes while > 0
        # Go's alphas for the steps up to the next flush (Session.alphas_ahead), taken at step
        # _ahead_from; None when a state changed since (the next blending step flushes and retakes it).
        self._ahead: np.ndarray | None = None
        self._ahead_from = 0
        self._ahead_layers: list[int] = []  # the layers holding a BLENDING slot when it was taken
        self._groups: dict[tuple[int, int], _Placement] = {}  # (layer, slot) -> where its parameters sit
        # The losses sampled since the last flush and in this epoch (one per flush: the sampling
        # step's, read there, where the flush reads the device anyway).
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        self._last_good: dict[str, Any] | None = None
        self._reports_waiting = 0  # Go's alarms and impact records not yet mirrored (seen with the rollbacks)
        #: The port this run's metrics endpoint bound (None: not serving; see serve_metrics).
        self.metrics_port: int | None = None
        self._alarms = 0  # the governor's rollbacks mirrored so far (Session.alarms() beyond it are new)
        #: The events and decisions, in order, as Go reported them: the most recent ``log_max``
        #: at most (see :attr:`log_dropped`).
        self.log: list[dict[str, Any]] = []
        #: Writes one outcome record per germination to Urza (see esper.outcomes).
        record = self.config.record_outcomes and (self._dist is None or self._dist.rank == 0)
        self._outcomes = OutcomeRecorder(self.layers, self.layer_names, self.config.policy, self.config.urza,
                                         record, _session_stats(weakref.ref(self)), epochs=self.config.epochs)
        self._outcomes.on_artifact = _artifact_publisher(weakref.ref(self))  # weakly: no reference cycle
        if self._dist is not None:  # one run id for the job, rank 0's: its run logs and metrics share it
            mine = self._outcomes.run_id.encode() if self._dist.rank == 0 else None
            self._outcomes.run_id = self._dist.broadcast_bytes("broadcast the run id", mine).decode()
        #: Validates the first germination of each blueprint on its host; serves the later ones.
        self._builds = BuildCache(self._outcomes.store, lambda rec=self._outcomes: {"run": rec.run_id})
        self._kernels: dict[tuple[int, int], StoredKernel] = {}  # stored kernels awaiting their germination
        self._sources: dict[tuple[int, int], str] = {}  # (layer, slot) -> the stored kernel its seed started from
        #: Entries dropped from the front of :attr:`log` to keep it within ``log_max``.
        self.log_dropped = 0
        if self.config.rollback:
            self._save_good()  # a rollback before the first end_epoch returns to the starting weights

    @property
    def run_id(self) -> str:
        """This run's id in Urza's outcome records (kept by state_dict / load_state_dict)."""
        return self._outcomes.run_id

    # ------------------------------------------------------------------ session

    @property
    def session(self) -> Session:
        """The Go session, created on first use (after the model's first forward,
        when channel-first residual hosts know their spatial extents)."""
        if self._closed:
            raise EsperError("Morphogenesis is closed: its Go session was released")
        if self._session is None:
            layers = [layer.spec.to_dict() for layer in self.layers]
            for entry, name in zip(layers, self.layer_names):
                entry["name"] = name
            if self.config.karn_search:
                # Go opens Karn's history store with ESPER_HOME, ESPER_URZA_URL and the S3 variables
                # as os.environ says now.
                _lib.refresh_settings()
            config = self.config.session_config(layers, self.slots)
            config["metrics"] = {"run": self.run_id, "rank": _rank()}
            session = Session(config)
            try:
                if self._dist is not None and self.config._rolling():
                    # Each rank's Go loaded the newest published version when its session opened; one
                    # published meanwhile may have reached some ranks only: every rank takes rank 0's.
                    self._dist.decide_once("the model versions in use", lambda: None, session.snapshot,
                                           session.restore)
                self._open_oona(session, self._oona_run or self.run_id)
            except BaseException:
                session.close()
                raise
            self._session = session
            if self.config.metrics_port >= 0:
                port = self.config.metrics_port
                if port > 0:
                    port += int(os.environ.get("LOCAL_RANK", "0") or 0)
                self.serve_metrics(port, host=self.config.metrics_host)
        return self._session

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the Go session is released)."""
        return self._closed

    # ------------------------------------------------------------------ metrics

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve this run's Prometheus metrics at ``http://host:port/metrics`` from Go (promhttp)
        until :meth:`close`; returns the port bound (0 picks a free one). It binds loopback unless
        ``host`` names another interface. It starts the Go session if it has not started yet: with
        channel-first residual hosts, call it after the model's first forward (or use
        ``MorphConfig.metrics_port``, which serves when the session starts). See ``esper.metrics``
        and docs/metrics.md.

        Raises:
            esper.StateError: the run already serves its metrics.
            esper.StorageError: the address cannot be bound.
        """
        session = self.session
        self._attach_metrics()
        self.metrics_port = session.serve_metrics(host, port)
        return self.metrics_port

    def metrics_text(self) -> str:
        """This run's metrics in the Prometheus text exposition format (one call into Go)."""
        session = self.session
        self._attach_metrics()
        return session.metrics_text()

    def _attach_metrics(self) -> None:
        """Report the process's kernel cache and this run's Urza store in the run's metrics."""
        session = self.session
        session.metrics_attach(kernel_cache().handle)
        store = self._outcomes.store()
        if store is not None:
            session.metrics_attach(store.handle)

    def _drain_reports(self) -> None:
        """Mirror Nissa's alarms and the impact records Go raised since the last look into :attr:`log`."""
        reports = self.session.reports()
        self._reports_waiting = 0
        for alarm in reports.get("alarms") or []:
            entry = {k: v for k, v in alarm.items() if k != "kind"}
            self._log({"kind": "alarm", "alarm": alarm["kind"], **entry})
        for impact in reports.get("impacts") or []:
            self._log({"kind": "impact", **impact})

    @property
    def oona(self) -> Oona:
        """The run's event bus and run log (:class:`esper.oona.Oona`): ``morph.oona.stats()`` has
        its counts, ``morph.oona.path`` the log file; ``esper.oona.read_events(morph.run_id)`` reads
        it back."""
        self.session  # noqa: B018 - opened with the session
        if self._oona is None:
            raise EsperError("this run has no run log: its folder could not be created (see the warning "
                             "given when the run started)")
        return self._oona

    def _open_oona(self, session: Session, run: str) -> None:
        """Open the bus and run log of ``run`` and attach ``session`` to it (replacing, and closing,
        the one it had)."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        url = self.config.nats_url or os.environ.get("ESPER_NATS_URL", "")
        nats = {**self.config.nats_options, "url": url} if url else None
        try:
            bus = Oona(run, rank, self.config.runs or None, max_bytes=self.config.run_log_max_bytes,
                       keep=self.config.run_log_keep if self.config.run_log_keep > 0 else -1, nats=nats)
        except OSError as exc:  # StorageError included: as Urza's records, the log never stops training
            warnings.warn(f"esper: run {run} has no run log: {exc}. Set ESPER_HOME (or MorphConfig.runs) to a "
                          "writable folder.", RuntimeWarning, stacklevel=4)
            old, self._oona = self._oona, None
            if old is not None:
                old.close()
            return
        try:
            session.attach_oona(bus)
        except BaseException:
            bus.close()
            raise
        old, self._oona = self._oona, bus
        if old is not None:
            old.close()

    def _publish_artifact(self, data: dict[str, Any], step: int, epoch: int) -> None:
        """An artifact the run published to Urza, as an event (called from the Urza writer's thread)."""
        bus = self._oona
        if bus is None:
            return
        try:
            bus.publish("artifact", "trainer", data, step=step, epoch=epoch)
        except EsperError:
            pass  # the bus closed meanwhile (a checkpoint switched runs): the artifact is in Urza all the same

    def _claim_layers(self) -> None:
        """Mark every layer as driven by this Morphogenesis; refuse layers a live one drives.

        Two sessions over one model would each decide its seeds and disagree about them. The mark
        lives on the layers (no registry): a closed or collected Morphogenesis frees them.
        """
        for name, layer in zip(self.layer_names, self.layers):
            mark = layer.__dict__.get("_esper_driver")
            other = mark.get() if isinstance(mark, _Driver) else None
            if other is not None and other is not self and not other._closed:
                raise ValueError(
                    f"Kasmina layer {name!r} is already driven by a live {other!r}: two Morphogenesis "
                    "on one model would disagree about its seeds. Keep using the first one, or call its "
                    "close() before creating another (checkpoints: morph.state_dict() / load_state_dict)."
                )
        for layer in self.layers:
            layer.__dict__["_esper_driver"] = _Driver(self)

    def close(self) -> None:
        """Release the Go session (idempotent). The model keeps its seeds; any
        later call that needs the session raises :class:`esper.EsperError`.
        Another Morphogenesis may then drive the model."""
        for layer in self.layers:
            mark = layer.__dict__.get("_esper_driver")
            if isinstance(mark, _Driver) and mark.get() is self:
                del layer.__dict__["_esper_driver"]
        was_closed, self._closed = self._closed, True
        if self._dist is not None:
            self._dist.close()
        try:
            if not was_closed:
                self._outcomes.close(self.steps, self.epoch)  # the seeds still in flight: ended_by "run_end"
        finally:
            if self._session is not None:
                self._session.close()  # publishes the run's end
                self._session = None
            if self._oona is not None:
                self._oona.close()  # writes what the run log holds, fsyncs, closes
                self._oona = None

    def __enter__(self) -> Morphogenesis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("Morphogenesis holds a Go session and cannot be pickled; save morph.state_dict() "
                        "beside model.state_dict() and optimizer.state_dict()")

    def _layer_index(self, layer: LayerRef) -> int:
        if isinstance(layer, str):
            try:
                return self.layer_names.index(layer)
            except ValueError:
                raise ValueError(f"no Kasmina layer named {layer!r}; layers: {self.layer_names}") from None
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer index {layer} out of range [0, {len(self.layers)})")
        return layer

    # ------------------------------------------------------------------ per step

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Call once after every optimizer step.

        Most steps cost a counter increment: the loss is sampled, and Go is
        called, only every ``signal_every`` steps. While a seed blends, its
        alpha for each step comes from the table Go gives at each flush
        (``Session.alphas_ahead``), without a call per step; state changes
        Go makes in between (the end of a ramp, say) arrive at the next flush.

        Args:
            loss: the step's training loss. It is read on the steps that send
                signals to Go (one synchronisation every ``signal_every``
                steps): those samples feed the governor's blow-up check (a
                non-finite loss corrupts the weights, so later samples see it)
                and, averaged, the epoch's training loss.

        A non-finite value in what is sent (the loss, a layer's activations or
        weights) is counted, never raised: Go's governor then rolls back, and
        the last good state is restored here before this call returns.
        """
        if self._closed:
            raise EsperError("Morphogenesis is closed: its Go session was released")
        if self.config.rollback and self._last_good is None:
            self._save_good()  # after load_state_dict from a checkpoint that holds no last good state
        if loss is not None and (self.steps + 1) % self.config.signal_every == 0:
            # The sampling step: its flush below reads the device anyway (one synchronisation).
            value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
            self._loss_sum += value
            self._epoch_loss_sum += value
            self._loss_count += 1
            self._epoch_loss_count += 1
        self.steps += 1
        self._pending += 1
        # failures_recorded(), read without the call (this runs on every step).
        if _FAILURES_RECORDED[0] != self._failures_seen:  # a seed raised or misshaped in this step
            self._failures_seen = _FAILURES_RECORDED[0]
            stamp_failures(self.layers, self.steps)
        every = self.config.signal_every
        phase = self.steps % every
        if phase == 0:
            self._flush(with_signals=True)
        elif self._blending:
            self._blend_ahead()
        if phase == every - 1 or every == 1:
            set_sampling(self.layers, True)  # the next step's forward and backward are measured

    def _blend_ahead(self) -> None:
        """A step between flushes while a seed blends: its alpha from the table Go gave at the last
        flush (no Go call); without a table (a state changed since), a flush that takes one."""
        table, k = self._ahead, self.steps - self._ahead_from - 1
        if table is None or not 0 <= k < len(table):
            self._flush(with_signals=False)
            return
        row, slots = table[k], self.slots
        for i in self._ahead_layers:
            self.layers[i].set_alphas(row[i * slots:(i + 1) * slots])

    def _take_ahead(self) -> None:
        """After a flush that left a seed blending (or a checkpoint loaded): Go's alphas for the steps
        from Go's step (``steps - _pending``) up to the next flush."""
        every = self.config.signal_every
        go_step = self.steps - self._pending
        n = every - 1 - go_step % every
        if not self._blending or n <= 0:
            self._ahead = None
            return
        self._ahead = self.session.alphas_ahead(n)
        self._ahead_from = go_step
        self._ahead_layers = [i for i, layer in enumerate(self.layers)
                              if any(layer.state(s) == SeedState.BLENDING for s in range(self.slots))]

    def _flush(self, with_signals: bool) -> None:
        """Send the pending steps (and the signals) to Go; mirror what comes back."""
        signals = None
        nonfinite: list[str] = []
        if with_signals:
            set_sampling(self.layers, False)
            values, nonfinite = gather_health(self.layers)
            if self._loss_count:
                total = self._loss_sum
                if not math.isfinite(total):
                    nonfinite.insert(0, "loss")
                loss = total / self._loss_count
                self._loss_sum = 0.0
                self._loss_count = 0
            else:
                loss = math.nan
            # Every non-finite measurement is counted: Go's governor rolls back on any.
            header = np.asarray([loss, float(len(nonfinite))], dtype=np.float32)
            signals = np.concatenate([header, values.numpy()])
            # With no seed in the model there is nothing to drain (a removed seed's counters are zeroed).
            failures = collect_failures(self.layers) if has_seeds_or_failures(self.layers) else []
            if self._dist is not None:  # every rank's Go session ingests the same numbers
                signals, everywhere = self._dist.reduce_signals(signals, len(failures))
                if everywhere:
                    failures = self._dist.gather_failures(failures, lambda slot, kind, message, step, every:
                                                          SeedFailure(slot, FailureKind(kind), message, step, every))
        else:
            failures = []
        if failures:
            self._report_failures(failures)
        self._send(signals, nonfinite)
        self._take_ahead()

    def _report_failures(self, failures: list[tuple[int, SeedFailure]]) -> None:
        """Report each failure to Go at the step it happened in, stepping Go through the window.

        Go's breaker counts consecutive failing steps, in its own step count: a failure is reported
        after Go has been stepped to the failure's step. The window is the pending steps: a failure
        stamped with its step counts there; a non-finite output counted on the device fails the
        window's last step, or every step of the window when every forward pass in it failed (a
        failure stamped before the window, left by a flush without signals, counts at its first
        step). The rest of the window (and its signals) is sent by the caller.
        """
        session = self.session
        end = self.steps
        start = end - self._pending  # Go's step count
        at: dict[int, list[tuple[int, SeedFailure]]] = {}
        for layer_index, failure in failures:
            if failure.every_step and end > start:
                steps: range | list[int] = range(start + 1, end + 1)
            else:
                steps = [end if failure.step is None else failure.step]
            for step in steps:
                at.setdefault(min(max(step, start + 1), end), []).append((layer_index, failure))
        for step in sorted(at):
            if step > start:
                self._pending = step - start
                self._send(None, [])
                start = step
            for layer_index, failure in at[step]:
                if self.layers[layer_index].seed(failure.slot) is None:
                    continue  # Go removed the seed earlier in this window (its events were applied)
                self._apply(session.report_failure(layer_index, failure.slot, int(failure.kind), failure.message))
        self._pending = end - start

    def _send(self, signals: np.ndarray | None, nonfinite: list[str]) -> None:
        """One esper_session_step with the pending steps; mirror its events, alphas and rollback."""
        session = self.session
        if signals is None:
            n_events = session.step(self._pending)
            rollback = False
        else:
            # Only a step that carries signals can raise the governor's alarm: its count is read in the
            # same call (one call into Go per flush).
            n_events, alarms, self._reports_waiting = session.step_waiting(self._pending, signals)
            rollback = self._new_rollbacks(nonfinite, alarms)
        self._pending = 0
        # Events first: a seed that entered BLENDING during these steps is already part-way up its
        # ramp, and the alphas Go wrote are the values after the steps. A seed the rollback blames
        # leaves with its ROLLED_BACK event, before the last good state is restored.
        if n_events:
            self._apply(session.events())
        if signals is not None and self._reports_waiting:
            self._drain_reports()
        if self._blending:
            alphas = session.alphas
            for i, layer in enumerate(self.layers):
                layer.set_alphas(alphas[i * self.slots : (i + 1) * self.slots])
        if rollback:
            self._restore_good()

    def _log(self, entry: dict[str, Any]) -> None:
        """Append to :attr:`log`; a full log drops its oldest quarter at once (amortised O(1))."""
        limit = self.config.log_max
        if len(self.log) >= limit:
            n = len(self.log) - limit + max(1, limit // 4)
            del self.log[:n]
            self.log_dropped += n
        self.log.append(entry)

    def _new_rollbacks(self, nonfinite: list[str], alarms: int) -> bool:
        """Whether Go's governor called for a rollback since the last look (``alarms``, its count now);
        logs its decisions (a rollback with no seed to blame has no event: this count is how it
        reaches Python)."""
        new, self._alarms = alarms - self._alarms, alarms
        if new <= 0:
            return False
        entries = self.session.growth_log().get("entries") or []
        decisions = [e["decision"] for e in entries if e.get("kind") == "decision"
                     and (e.get("decision") or {}).get("op") == "rollback"][-new:]
        for decision in decisions:
            self._log({"kind": "decision", "epoch": self.epoch, "step": self.steps, **decision,
                       "nonfinite": list(nonfinite)})
        return True

    # ------------------------------------------------------------------ per epoch

    def end_epoch(
        self,
        val_loss: float | None = None,
        val_metric: float | None = None,
        train_loss: float | None = None,
    ) -> dict[str, Any]:
        """Hand the epoch's results to Tamiyo, apply what it decides.

        Args:
            val_loss: validation loss (the growth signal; measured with
                ``evaluate`` when None and an evaluate function was given).
            val_metric: validation metric, for the log.
            train_loss: mean training loss (default: the mean of the losses
                passed to :meth:`step` this epoch).

        A non-finite ``val_loss`` (given, or returned by ``evaluate``) or
        training loss makes the governor roll back, and nothing else is
        decided on it; so do model weights found non-finite here (with
        ``rollback``). The epoch is then not kept as the last good state.

        Returns:
            {"epoch", "decisions": [...], "events": [...]} as Go reported them, and "metrics": the
            metrics sent to Go (contributions of held seeds included).
        """
        session = self.session
        self._check_schedulers()  # Tamiyo may germinate
        if self._pending:
            self._flush(with_signals=False)
        if self._dist is not None:  # the first collective of the epoch's end: a dead or hung rank fails it
            self._dist.barrier(f"wait for every rank at the end of epoch {self.epoch}")
        # Weights that went non-finite since the last flush must not be judged or kept as good.
        rolled_back = self.config.rollback and self._check_weights()
        if val_loss is None and self.evaluate is not None:
            result = self.evaluate(self.model)
            val_loss, val_metric = _check_evaluated(result, val_metric)
        val_loss, val_metric = _number("val_loss", val_loss), _number("val_metric", val_metric)
        if train_loss is None and self._epoch_loss_count:
            train_loss = self._epoch_loss_sum / self._epoch_loss_count
            self._epoch_loss_sum = 0.0
            self._epoch_loss_count = 0
        if self._dist is not None:  # Tamiyo decides on the whole job: every rank's mean
            train_loss, val_loss, val_metric = self._dist.reduce_metrics([train_loss, val_loss, val_metric])
        metrics: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_metric": val_metric,
            "contributions": self._contributions(val_loss),
        }
        # Each layer's samples a step (its last measured forward): Go counts the run's training FLOPs
        # with them (docs/events.md, "Training FLOPs"); they are not a decision input.
        to_go = {**metrics, "samples_per_step": [int(layer.samples_per_step) for layer in self.layers]}
        if self._dist is None:
            result = session.end_epoch(to_go)
        else:
            # Go's digest of every rank's session must be rank 0's; then rank 0 alone decides.
            self._dist.check_state(session.state_hash(), f"at the end of epoch {self.epoch}")
            result = self._dist.decide_once("the epoch's decisions", lambda: session.end_epoch(to_go),
                                            session.snapshot, session.apply)
        self._outcomes.decided(result.get("decisions", []), metrics)
        result["metrics"] = metrics  # what Tamiyo decided on (esper.simic replays it)
        for decision in result.get("decisions", []):
            if decision.get("op") != "wait":
                self._log({"kind": "decision", "epoch": self.epoch, **decision})
        for change in result.get("rollout", []):  # Go's switch or revert of a model's version
            self._log({"kind": "rollout", **change})
        self._apply(result.get("events", []))
        self._drain_reports()
        self._alarms = session.alarms()
        if any(d.get("op") == "rollback" for d in result.get("decisions", [])):
            # A non-finite or exploding training loss, or a non-finite validation loss: the blamed
            # seed (if any) left with its ROLLED_BACK event; restore the last good state.
            self._restore_good()
            rolled_back = True
        if self._dist is not None:
            self._dist.broadcast_buffers([layer.seeds for layer in self.layers])
            self._dist.applied("the epoch's decisions")
        self._outcomes.end_epoch(self.steps, self.epoch)  # records of the seeds in flight, as last seen
        self._flush_events()
        self.epoch += 1
        finite = all(v is None or math.isfinite(v) for v in (train_loss, val_loss))
        if self.config.rollback and finite and not rolled_back:
            self._save_good()
        return result

    def _flush_events(self) -> None:
        """The epoch's events reach the OS before end_epoch returns (a killed run keeps them)."""
        if self._oona is None:
            return
        try:
            self._oona.flush(timeout=5.0)
        except EsperError as exc:
            if not self._warned_flush:
                self._warned_flush = True
                warnings.warn(f"esper: run log {self._oona.path} is behind: {exc}; training goes on",
                              RuntimeWarning, stacklevel=3)

    def _check_weights(self) -> bool:
        """Counts the model's non-finite tensors (one pass, one synchronisation per device); any is a
        non-finite signal sent to Go, whose governor then rolls back. Returns whether it did."""
        names, flags = [], []
        for name, t in self.model.state_dict().items():
            if t.is_floating_point():
                names.append(name)
                local = t.to_local() if hasattr(t, "to_local") else t  # FSDP2: this rank's shard
                flags.append(torch.isfinite(local).all())
        if not flags:
            return False
        if len({f.device for f in flags}) > 1:
            flags = [f.cpu() for f in flags]
        bad = [name for name, ok in zip(names, torch.stack(flags).tolist()) if not ok]
        count = float(len(bad))
        if self._dist is not None:  # shards differ under FSDP2: every rank must see the same count
            count = (self._dist.reduce_metrics([count])[0] or 0.0) * self._dist.world
        if not count:
            return False
        signals = np.full(2 + len(self.layers) * len(SIGNALS), math.nan, dtype=np.float32)
        signals[1] = count
        before = self._alarms
        self._send(signals, bad)
        return self._alarms != before

    def _contributions(self, val_loss: float | None) -> list[dict[str, Any]]:
        """Validation loss without each HOLDING seed minus with it (needs evaluate)."""
        if self.evaluate is None or val_loss is None or not math.isfinite(val_loss):
            return []
        out = []
        for i, layer in enumerate(self.layers):
            for slot in range(self.slots):
                if layer.state(slot) == SeedState.HOLDING:
                    with layer.disable_seeds(slot):
                        without, _ = _check_evaluated(self.evaluate(self.model), None)
                    if self._dist is not None:
                        without = self._dist.reduce_metrics([without])[0]
                    if math.isfinite(without):
                        out.append({"layer": i, "slot": slot, "delta_loss": without - val_loss})
                    else:
                        # The host alone diverges: the seed is needed. Go judges numbers, not NaN.
                        out.append({"layer": i, "slot": slot, "delta_loss": abs(val_loss)})
                    self._outcomes.contribution(i, slot, self.epoch, val_loss, without, out[-1]["delta_loss"])
        return out

    # ------------------------------------------------------------------ manual control

    def germinate(self, layer: LayerRef, slot: int, blueprint: str | dict[str, Any] = "residual_mlp",
                  **params: Any) -> list[dict[str, Any]]:
        """Germinate a seed by hand.

        Args:
            layer: layer index or name.
            slot: slot index.
            blueprint: a template name (see `esper blueprints`), a full IR, or ``"urza:<id>"``: a
                trained kernel stored in Urza (``esper urza ls --kind kernel``); the seed then has
                its blueprint and starts from its weights (the lifecycle is the usual one).
            **params: the template's parameters (e.g. width=16); none with ``"urza:<id>"``.

        Returns:
            The events it caused: a seed that cannot be built, or whose module does not have Go's
            parameter count, is reported to Go, and its removal's events (CANCELLED, with the
            reason) follow the GERMINATED one.

        Raises:
            esper.StateError: the slot is not DORMANT.
            esper.BudgetError: the governor's budget or concurrency refuses it.
            ValueError: the stored kernel was trained on a host of another shape than this layer's.
            esper.NotFoundError, esper.CorruptError: no such kernel, or it fails verification.
        """
        i = self._layer_index(layer)
        kernel = None
        if isinstance(blueprint, str) and blueprint.startswith("urza:"):
            if params:
                raise ValueError(f"germinate from {blueprint!r} takes no template parameters (got {sorted(params)}): "
                                 "the stored kernel's blueprint is used as it is")
            kernel = self._builds.kernel(blueprint.removeprefix("urza:"), self.layers[i].spec.host_ir(),
                                         self.layer_names[i])
            spec = kernel.manifest["blueprint"]
        else:
            spec = blueprint if isinstance(blueprint, dict) else {"template": blueprint, "params": params}
        self._check_schedulers()
        if kernel is not None:
            self._kernels[(i, slot)] = kernel
        try:
            return self._decided("germinate", {"layer": i, "slot": slot, "blueprint": spec},
                                 lambda: self.session.germinate(i, slot, spec))
        finally:
            self._kernels.pop((i, slot), None)

    def advance(self, layer: LayerRef, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Move a seed to its next natural state (e.g. TRAINING -> BLENDING)."""
        i = self._layer_index(layer)
        return self._decided("advance", {"layer": i, "slot": slot, "reason": reason},
                             lambda: self.session.advance(i, slot, reason))

    def prune(self, layer: LayerRef, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Prune a seed: its parameters leave the model and the optimizer."""
        i = self._layer_index(layer)
        return self._decided("prune", {"layer": i, "slot": slot, "reason": reason},
                             lambda: self.session.prune(i, slot, reason))

    def fossilize(self, layer: LayerRef, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Fossilize a seed in HOLDING: it is kept for good (and frozen, with ``freeze_fossilized``)."""
        i = self._layer_index(layer)
        return self._decided("fossilize", {"layer": i, "slot": slot, "reason": reason},
                             lambda: self.session.fossilize(i, slot, reason))

    def graph(self) -> dict[str, Any]:
        """Tamiyo's layer graph with the legal moves, as Go computes them (see
        :meth:`esper.session.Session.graph`): what an external policy (``esper.simic``) observes."""
        return self.session.graph()

    def propose(self, op: str, layer: LayerRef = 0, slot: int = 0, template: str = "", size: int = 0,
                reason: str = "") -> dict[str, Any]:
        """Propose a move from an external policy: Go carries it out through its own operations, so it
        passes the lifecycle's gates and the governor's limits, or is refused (not executed, counted in
        ``stats()["counters"]["refused"]``). Run with ``MorphConfig(policy="manual")`` so that Tamiyo
        does not act on its own while the external policy drives (the governor's rollbacks still apply).

        Args:
            op: "wait", "germinate", "prune", "fossilize" or "advance".
            layer, slot: the target slot.
            template, size: a germination's template and size index (of ``graph()["sizes"]``).
            reason: recorded with the transition.

        Returns:
            {"proposal", "applied", "refused" (why, when refused), "events"}; the events are mirrored.

        Raises:
            ValueError: in a distributed run (an external policy drives one process).
        """
        if self._dist is not None:
            raise ValueError("propose runs in a single process: an external policy drives one training process, "
                             "not a distributed job")
        i = self._layer_index(layer) if isinstance(layer, str) else layer  # Go refuses (and counts) a bad index
        if op == "germinate":
            self._check_schedulers()
        result = self.session.propose({"op": op, "layer": i, "slot": slot, "template": template, "size": size,
                                       "reason": reason})
        result["events"] = self._apply(result.get("events", []))
        return result

    def _decided(self, what: str, args: dict[str, Any], call: Callable[[], list[dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
        """Carry out a manual lifecycle call and mirror its events. Across ranks, every rank must
        make the call with the same arguments; rank 0's Go session carries it out, and every rank
        takes its session state and mirrors its events (see esper.distributed)."""
        if self._dist is None:
            return self._apply(call())
        self._dist.check_same_call(what, args)
        session = self.session
        applied = self._apply(self._dist.decide_once(what, call, session.snapshot, session.apply))
        self._dist.applied(what)
        return applied

    # ------------------------------------------------------------------ mirroring Go's events

    def _apply(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Mirror Go's events, every one of them, in order.

        A GERMINATED event's seed is built from the event's blueprint and checked against it
        (:meth:`_check_built`) before the model changes. A seed that does not build or check is
        reported to Go (``Session.seed_failed``), which removes it with the reason; its slot's
        later events of this batch are skipped (Python never held it) and the removal's events are
        mirrored instead. Any other error while mirroring one event is raised only after every
        later event was mirrored and every failure reported, so a batch is never half applied.

        Returns:
            The events mirrored: ``events``, then those of the removals it reported.
        """
        applied = list(events)
        failed: dict[tuple[int, int], tuple[int, str]] = {}  # (layer, slot) -> (generation, why it did not build)
        errors: list[Exception] = []
        for ev in events:
            self._log({"kind": "event", **{k: v for k, v in ev.items() if k != "blueprint"}})
            key = (int(ev["layer"]), int(ev["slot"]))
            if str(ev["to"]) == "GERMINATED":
                failed.pop(key, None)
                try:
                    self._add_seed(*key, ev)
                except RankError:
                    raise  # another rank died or hangs: not this seed's failure
                except Exception as exc:  # noqa: BLE001 - any build or check failure is reported to Go
                    failed[key] = (int(ev.get("generation") or 0), f"{type(exc).__name__}: {exc}")
            elif key not in failed:  # a seed Python could not build: Go removes it once told, below
                try:
                    self._mirror(ev)
                except Exception as exc:  # noqa: BLE001 - raised below, after the rest of the batch
                    errors.append(exc)
            self._record(ev, held=key not in failed)
        for (i, slot), (generation, reason) in failed.items():
            applied += self._apply(self.session.seed_failed(i, slot, generation, reason))
        self._drain_reports()
        if errors:
            raise errors[0]
        return applied

    def _mirror(self, ev: dict[str, Any]) -> None:
        """Mirror one event other than GERMINATED."""
        i, slot, to = int(ev["layer"]), int(ev["slot"]), str(ev["to"])
        layer = self.layers[i]
        was = layer.state(slot).name
        if was == "BLENDING":
            self._blending -= 1
        if to == "BLENDING":
            self._blending += 1
        if "BLENDING" in (was, to):
            self._ahead = None  # the table no longer names the blending slots
        if to in _EXITS:
            if self._dist is not None:
                self._dist.detach_seed((i, slot))
            if layer.seed(slot) is not None:
                layer.remove_seed(slot)
            self._drop_group(i, slot)
            self._forget_seed(i, slot)
            # ROLLED_BACK: the caller restores the last good state once the events are applied.
            layer.set_state(slot, to)
        elif to == "BLENDING":
            layer.set_state(slot, to, alpha=float(ev.get("alpha", 0.0)))
        else:
            layer.set_state(slot, to)
            if to == "FOSSILIZED" and self.config.freeze_fossilized:
                self._drop_group(i, slot)
            elif to == "FOSSILIZED":
                # Kept for good, and trained on jointly with the host (see MorphConfig).
                layer.seed(slot).requires_grad_(True)

    def _record(self, ev: dict[str, Any], held: bool) -> None:
        """Urza: the germination's outcome record follows Go's event; a fossilized seed that Python
        holds (``held``) is published as a trained kernel."""
        i, slot, to = int(ev["layer"]), int(ev["slot"]), str(ev["to"])
        kernel = self._kernel_payload(i, slot, ev) if to == "FOSSILIZED" and held else None
        self._outcomes.event(ev, kernel=kernel, source_kernel=self._sources.get((i, slot)))
        if to in _EXITS or to == "FOSSILIZED":
            self._sources.pop((i, slot), None)

    def _kernel_payload(self, i: int, slot: int, ev: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        """The seed fossilized in layer i, slot as a trained kernel for Urza (tag ``kind:kernel``) with
        its lineage: (manifest, weights), published by the outcome recorder's writer; None when it
        cannot be (a warning says why)."""
        started = self._outcomes.germinated(i, slot)
        lineage: dict[str, Any] = {"run": self.run_id, "layer": i, "layer_name": self.layer_names[i], "slot": slot,
                                   "fossilized_step": int(ev["step"]), "fossilized_epoch": int(ev["epoch"])}
        if started is not None:
            lineage.update(germinated_step=started[0], germinated_epoch=started[1],
                           epochs=int(ev["epoch"]) - started[1])
        if (i, slot) in self._sources:
            lineage["parent"] = self._sources[(i, slot)]
        return self._builds.kernel_payload(self.layers[i].seed(slot), lineage)

    def _init_seed(self, layer: int, slot: int, step: int) -> int:
        """A per-seed generator seed: the same on every rank, independent of the user's RNG."""
        key = f"{self.config.seed}/{layer}/{slot}/{step}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)

    def _add_seed(self, i: int, slot: int, ev: dict[str, Any]) -> None:
        """Build the seed of a GERMINATED event, check it against the event, attach it (in state
        GERMINATED) and put its parameters into the optimizer. Raises before anything changes
        when the seed does not build, does not check, or does not fit the slot.

        The first build of a blueprint (in this process or the store) is validated and recorded in
        Urza; a seed germinated from a stored kernel (``germinate(..., "urza:<id>")``) starts from
        its trained weights."""
        step = int(ev.get("step", self.steps))
        kernel = self._kernels.pop((i, slot), None)  # germinate(..., blueprint="urza:<id>")
        seed = self._build(i, slot, ev, step)
        self._builds.admit(seed, layer=i, slot=slot, step=step)
        if kernel is not None:
            self._builds.load_kernel(seed, kernel)  # starts from the stored kernel's trained weights
        if self._dist is not None:  # rank 0's weights everywhere; gradients averaged in backward
            self._dist.attach_seed((i, slot), seed)
        self.layers[i].add_seed(slot, seed)
        if kernel is not None:
            self._sources[(i, slot)] = kernel.id
        self._add_group(i, slot, list(seed.parameters()))
        self._remember_seed(i, slot)

    def _build(self, i: int, slot: int, ev: Mapping[str, Any], step: int) -> nn.Module:
        """The seed module of Go's seed ``ev`` (a GERMINATED event, or a seed of ``Session.seeds()``:
        "blueprint", "blueprint_id", "param_count"), on its host's device and dtype, with the run's
        initial weights for this layer, slot and germination step; checked by :meth:`_check_built`."""
        ir = ev["blueprint"]
        if isinstance(ir, str):
            ir = json.loads(ir)
        layer = self.layers[i]
        weight = next(layer.base_layer.parameters(), None)
        device = weight.device if weight is not None else torch.device("cpu")
        dtype = weight.dtype if weight is not None else None
        devices = [device] if device.type == "cuda" else []
        # The global generator is shared by every thread: hold it while it is seeded and used here, so
        # that sessions driven from several threads still get each seed's own initial weights.
        with _RNG_LOCK, torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._init_seed(i, slot, step))
            seed = build_seed(ir, device=device, dtype=dtype, blueprint_id=str(ev["blueprint_id"]))
        _check_built(seed, ev)
        return seed

    def _host_group(self, i: int) -> int:
        """The index of the parameter group holding layer i's host: that of its first parameter the
        optimizer holds, or 0 when it holds none (a frozen host)."""
        _reshard(self.model)
        index = {id(p): g for g, group in enumerate(self.optimizer.param_groups) for p in group["params"]}
        for p in self.layers[i].base_layer.parameters():
            if id(p) in index:
                return index[id(p)]
        return 0

    def _add_group(self, i: int, slot: int, params: list[nn.Parameter], at: tuple[int, int] | None = None,
                   own: bool | None = None) -> None:
        """Put a seed's parameters into the optimizer: into its host's group (appended, or at
        ``at`` = (group, position) when a checkpoint says where), or, with seed_lr_scale != 1, into a
        group of their own that copies the host's with scaled learning rates."""
        if not params:
            return
        groups = self.optimizer.param_groups
        if own is None:
            own = self.config.seed_lr_scale != 1
        # An optimizer built from model.named_parameters() keeps a "param_names" list beside "params".
        names = {id(p): n for n, p in self.model.named_parameters()}
        if not own:
            g = at[0] if at is not None else self._host_group(i)
            pos = at[1] if at is not None else len(groups[g]["params"])
            groups[g]["params"][pos:pos] = params
            if "param_names" in groups[g]:
                groups[g]["param_names"][pos:pos] = [names[id(p)] for p in params]
            self._groups[(i, slot)] = _Placement(params, own=False)
            return
        h = self._host_group(i)
        scale = self.config.seed_lr_scale
        group = {k: v for k, v in groups[h].items() if k not in ("params", "param_names", "esper_seed")}
        for key in _LR_KEYS:
            if key in group:
                group[key] = group[key] * scale
        named = "param_names" in groups[h]
        group.update(params=[(names[id(p)], p) for p in params] if named else params,
                     esper_seed=f"{self.layer_names[i]}/{slot}")
        n = len(groups)
        self.optimizer.add_param_group(group)
        for sched in _each_scheduler(self.schedulers):
            for name in _SCHEDULER_LRS + _SCHEDULER_OTHERS:
                values = getattr(sched, name, None)
                if isinstance(values, list) and len(values) == n:
                    values.append(values[h] * scale if name in _SCHEDULER_LRS else values[h])
        self._groups[(i, slot)] = _Placement(params, own=True)

    def _drop_group(self, i: int, slot: int) -> None:
        """Take a seed's parameters and their state out of the optimizer (and its own group, with
        its entries in the registered schedulers' lists, out of both)."""
        placement = self._groups.pop((i, slot), None)
        if placement is None:
            return
        for p in placement.params:
            self.optimizer.state.pop(p, None)
        groups = self.optimizer.param_groups
        found = placement.find(groups)
        if found is None:  # not in the optimizer any more (the caller rebuilt its groups): nothing to remove
            return
        j = found[0]
        if not placement.own:
            ids = {id(p) for p in placement.params}
            keep = [k for k, p in enumerate(groups[j]["params"]) if id(p) not in ids]
            for key in ("params", "param_names"):
                if key in groups[j]:
                    groups[j][key] = [groups[j][key][k] for k in keep]
            return
        for sched in _each_scheduler(self.schedulers):
            for name in _SCHEDULER_LRS + _SCHEDULER_OTHERS:
                values = getattr(sched, name, None)
                if isinstance(values, list) and len(values) == len(groups):
                    del values[j]
        del groups[j]

    def _check_schedulers(self) -> None:
        """Refuse seed groups of their own that an LR scheduler attached to the optimizer would not know."""
        if self.config.seed_lr_scale == 1 or self.schedulers:
            return
        if any("initial_lr" in group for group in self.optimizer.param_groups):
            raise ValueError(
                f"seed_lr_scale={self.config.seed_lr_scale} gives each seed a parameter group of its own, and "
                "the optimizer has an LR scheduler (its groups hold 'initial_lr') that would not know those "
                "groups: pass it as Morphogenesis(..., schedulers=[scheduler]), or keep seed_lr_scale=1 "
                "(seeds then share their host's group and every scheduler works unchanged)")

    # ------------------------------------------------------------------ rollback

    def _save_good(self) -> None:
        """Keep a copy of every tensor of the model and the optimizer's per-parameter state: the
        last good state a rollback restores (see :meth:`_restore_good`). A CUDA tensor's copy is kept
        in pinned host memory, not on the GPU (the copy costs no GPU memory; restoring it is one
        host-to-device copy)."""
        _reshard(self.model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._last_good = {
            "model": {k: _offload(v) for k, v in self.model.state_dict().items()},
            "optim": {
                names[id(p)]: {k: _offload(v) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                               for k, v in s.items()}
                for p, s in self.optimizer.state.items()
                if id(p) in names
            },
        }

    def _seed_prefix(self, i: int, slot: int) -> str:
        """The state_dict key prefix of the seed in layer i, slot."""
        name = self.layer_names[i]
        return f"{name}.seeds.{slot}." if name else f"seeds.{slot}."

    def _remember_seed(self, i: int, slot: int) -> None:
        """A seed germinated after the last good state joins it with its initial weights (which
        leave the layer's output unchanged) and no optimizer state, replacing whatever an earlier
        seed of the slot left there."""
        if self._last_good is None:
            return
        self._forget_seed(i, slot)
        prefix = self._seed_prefix(i, slot)
        seed = self.layers[i].seed(slot)
        self._last_good["model"].update({prefix + k: _offload(v) for k, v in seed.state_dict().items()})

    def _forget_seed(self, i: int, slot: int) -> None:
        """Drops a removed seed's tensors from the last good state."""
        good = self._last_good
        if good is None:
            return
        prefix = self._seed_prefix(i, slot)
        for part in ("model", "optim"):
            for key in [k for k in good[part] if k.startswith(prefix)]:
                del good[part][key]

    def _restore_good(self) -> None:
        """Restore the last good state: every weight and buffer of the model (host and surviving
        seeds; a seed germinated since returns to its initial weights) and the optimizer state of
        every parameter in the optimizer, which matches its parameter: a parameter whose shape
        differs from the saved one, or that had no state then, starts with none (the optimizer
        initialises it at its next step). Gradients are cleared, and so are the losses gathered
        since the last flush. The seed the rollback blamed has left already."""
        _reshard(self.model)
        good = self._last_good
        if good is None:
            return
        saved_model = good["model"]
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                saved = saved_model.get(name)
                if saved is not None and saved.shape == tensor.shape:
                    tensor.copy_(_sharded_like(saved, tensor))
        in_optimizer = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for name, p in self.model.named_parameters():
            p.grad = None
            if id(p) not in in_optimizer:
                continue
            state, saved = good["optim"].get(name), saved_model.get(name)
            if state is not None and saved is not None and saved.shape == p.shape:
                self.optimizer.state[p] = {k: _onload(_sharded_like(v, p), p) if isinstance(v, torch.Tensor)
                                           else copy.deepcopy(v) for k, v in state.items()}
            else:
                self.optimizer.state.pop(p, None)
        self._loss_sum = self._epoch_loss_sum = 0.0
        self._loss_count = self._epoch_loss_count = 0

    # ------------------------------------------------------------------ inspection

    def seeds(self) -> list[dict[str, Any]]:
        """Every slot's seed as Go sees it: state, alpha, blueprint, history."""
        return self.session.seeds()

    def stats(self) -> dict[str, Any]:
        """Go's view of the run (counters, budget, Nissa's rolling statistics of the health signals,
        per layer) and, under "builds", how germinations were served: ``hits`` (validated builds
        served by the kernel cache), ``misses``, ``store_hits`` (served by Urza) and ``builds``
        (validated and recorded), see :mod:`esper.builds`."""
        stats = self.session.stats()
        stats["builds"] = self._builds.stats()
        if self._dist is not None:
            stats["distributed"] = self._dist.stats()
        return stats

    def seed_params(self) -> int:
        """Parameters held by live seeds (fossilized included)."""
        return sum(p.numel() for layer in self.layers for p in layer.seeds.parameters())

    @contextlib.contextmanager
    def without_seeds(self) -> Iterator[None]:
        """Switch every seed off inside a ``with`` block (e.g. to evaluate the host alone)."""
        with contextlib.ExitStack() as stack:
            for layer in self.layers:
                stack.enter_context(layer.disable_seeds())
            yield

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically: Go's state (its snapshot, the one record of
        the seeds: blueprint, id, parameter count, state, alpha), where the seeds' parameters sit
        in the optimizer (group and position), the steps and losses not yet sent to Go, and (with
        ``rollback``) the last good weights a rollback would restore. Save it beside
        ``model.state_dict()`` and ``optimizer.state_dict()``. Taking it changes nothing: a run
        that saves a checkpoint continues exactly like one that does not."""
        # Where each seed's parameters sit, in optimizer order, so that load_state_dict rebuilds the
        # layout that optimizer.state_dict() numbers its parameters by.
        groups = self.optimizer.param_groups
        placements = []
        for (i, slot), placement in self._groups.items():
            found = placement.find(groups)
            if found is None:
                continue
            g, pos = found
            placements.append({"layer": i, "slot": slot, "group": g, "position": pos, "own": placement.own})
        placements.sort(key=lambda e: (e["group"], e["position"]))
        def loss(total: float, count: int) -> torch.Tensor | None:
            # A 0-d float32 tensor, as checkpoints have always held it (None: nothing sampled yet).
            return torch.tensor(total, dtype=torch.float32) if count else None

        return {
            "version": _CHECKPOINT_VERSION,
            "session": self.session.snapshot(),
            "steps": self.steps,
            "epoch": self.epoch,
            "groups": placements,
            "config": asdict(self.config),
            "log": list(self.log),
            "log_dropped": self.log_dropped,
            # What the next flush and end_epoch would have sent to Go.
            "pending": self._pending,
            "loss_sum": loss(self._loss_sum, self._loss_count),
            "loss_count": self._loss_count,
            "epoch_loss_sum": loss(self._epoch_loss_sum, self._epoch_loss_count),
            "epoch_loss_count": self._epoch_loss_count,
            "rank_samples": [layer._samples for layer in self.layers],
            "last_good": _whole(self._last_good),
            "outcomes": self._outcomes.state_dict(),  # the run id and the germinations in flight
            "builds": self._builds.stats(),  # how the run's germinations were served so far
            "sources": [[i, slot, aid] for (i, slot), aid in self._sources.items()],  # seeds from stored kernels
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the seeds of a checkpoint into this (freshly wrapped) model
        and optimizer, and restore Go's state. Call it before
        ``model.load_state_dict`` and ``optimizer.load_state_dict``.

        The seeds are those of Go's snapshot (state, alpha, blueprint, id and parameter count):
        Go checks the snapshot, each live seed is built from its blueprint and checked against Go's
        parameter count, and the rest of the checkpoint must agree with them (the optimizer
        placements name live seeds; the last good weights of a seed have its shapes). Only then
        does anything change. A version 1 checkpoint, which kept a second list of the seeds, loads
        when that list agrees with the snapshot and is refused, naming the disagreement, when not.

        Raises:
            ValueError: the model already holds seeds, the checkpoint does not fit it, or its parts
                disagree (nothing has changed then: the session is as it was).
            esper.EsperError: Go refused the snapshot (nothing has changed then).
        """
        version = state.get("version")
        if version not in (1, _CHECKPOINT_VERSION):
            raise ValueError(f"unknown Morphogenesis checkpoint version {version!r} (this Esper reads 1 and "
                             f"{_CHECKPOINT_VERSION})")
        if any(len(layer.seeds) for layer in self.layers):
            raise ValueError("load_state_dict needs a model without seeds (wrap a fresh model)")
        run = (state.get("outcomes") or {}).get("run_id")
        if self._session is None and run:
            self._oona_run = str(run)  # the run log continues the checkpointed run's, not a fresh one
        session = self.session
        before = session.snapshot()
        session.restore(state["session"])  # checked completely by Go; nothing changes on error
        try:
            seeds = [s for s in session.seeds() if s["state"] in LIVE_STATES]
            if version == 1:
                _check_listed_seeds(state.get("seeds"), seeds, self.layer_names)
            built = self._build_checkpoint_seeds(seeds)
            placements = self._check_placements(state["groups"], built)
            self._check_last_good(state.get("last_good"), built)
        except BaseException:
            session.restore(before)
            raise
        self._alarms = session.alarms()  # rollbacks before the checkpoint were carried out then
        self._blending = 0
        for s in seeds:
            i, slot, state_name = int(s["layer"]), int(s["slot"]), str(s["state"])
            layer, seed = self.layers[i], built[(i, slot)]
            if self._dist is not None:
                self._dist.attach_seed((i, slot), seed)
            layer.add_seed(slot, seed)
            if state_name == "BLENDING":
                layer.set_state(slot, state_name, alpha=float(s["alpha"]))
                self._blending += 1
            elif state_name != "GERMINATED":
                layer.set_state(slot, state_name)
                if state_name == "FOSSILIZED" and not self.config.freeze_fossilized:
                    seed.requires_grad_(True)
        # In optimizer order: each insertion lands where the checkpointed run had it.
        for e in placements:
            i, slot, g, pos = e["layer"], e["slot"], e["group"], e["position"]
            params = list(self.layers[i].seed(slot).parameters())
            self._add_group(i, slot, params, at=None if e["own"] else (g, pos), own=e["own"])
        self.steps = int(state["steps"])
        self.epoch = int(state["epoch"])
        self._pending = int(state.get("pending", 0))
        self.log = []
        self.log_dropped = int(state.get("log_dropped", 0))
        for entry in state.get("log", []):
            self._log(entry)
        self._loss_sum = _loss_of(state.get("loss_sum"))
        self._loss_count = int(state.get("loss_count", 0))
        self._epoch_loss_sum = _loss_of(state.get("epoch_loss_sum"))
        self._epoch_loss_count = int(state.get("epoch_loss_count", 0))
        for layer, samples in zip(self.layers, state.get("rank_samples", [])):
            layer._samples = int(samples)
        every = self.config.signal_every
        set_sampling(self.layers, self.steps % every == every - 1 or every == 1)
        # Blending seeds: Go's table from its last flush, as the checkpointed run held it, and the
        # alphas of the step the checkpoint was taken at.
        self._take_ahead()
        if self._ahead is not None and 0 < self._pending <= len(self._ahead):
            row = self._ahead[self._pending - 1]
            for i in self._ahead_layers:
                self.layers[i].set_alphas(row[i * self.slots:(i + 1) * self.slots])
        # The checkpoint's last good state; without one, the weights the caller loads next are taken
        # as good at the next step (the fresh model's weights never are).
        self._last_good = state.get("last_good") if self.config.rollback else None
        if "outcomes" in state:  # the same run goes on: its id, and the records of its seeds in flight
            self._outcomes.load_state_dict(state["outcomes"])
        if self._oona is not None and self._oona.run != self.run_id:
            self._open_oona(session, self.run_id)  # a session opened before the checkpoint: follow its run
        if "builds" in state:
            self._builds.load_state_dict(state["builds"])
        self._sources = {(int(i), int(slot)): str(aid) for i, slot, aid in state.get("sources", [])}

    def _build_checkpoint_seeds(self, seeds: list[dict[str, Any]]) -> dict[tuple[int, int], nn.Module]:
        """The modules of Go's live seeds (from ``Session.seeds()``), built and checked; the model
        is not touched. Each gets the initial weights of its germination (the weights themselves
        come from ``model.load_state_dict``); the user's RNG streams are left untouched.

        Raises:
            ValueError: a seed does not build or its parameter count is not Go's, naming it.
        """
        built: dict[tuple[int, int], nn.Module] = {}
        for s in seeds:
            i, slot = int(s["layer"]), int(s["slot"])
            try:
                built[(i, slot)] = self._build(i, slot, s, int(s["germinated_step"]))
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise ValueError(f"checkpoint: seed {self.layer_names[i]}/{slot} ({s['state']}, blueprint "
                                 f"{str(s['blueprint_id'])[:12]}, {s['param_count']} parameters in Go's snapshot) "
                                 f"cannot be rebuilt: {type(exc).__name__}: {exc}. Nothing was loaded.") from exc
        return built

    def _check_placements(self, entries: list[dict[str, Any]], built: Mapping[tuple[int, int], nn.Module]
                          ) -> list[dict[str, Any]]:
        """The checkpoint's optimizer placements, checked against the seeds and this optimizer.

        Raises:
            ValueError: a placement names a seed Go's snapshot does not hold, or a group or
                position this optimizer cannot hold.
        """
        placements = [_placement_entry(e) for e in entries]
        n_groups = len(self.optimizer.param_groups)
        sizes = [len(g["params"]) for g in self.optimizer.param_groups]
        for e in placements:
            key = (e["layer"], e["slot"])
            name = f"{e['layer']}/{e['slot']}"
            if key not in built:
                raise ValueError(f"checkpoint places seed {name} in the optimizer, but Go's snapshot holds no "
                                 "live seed there. Nothing was loaded.")
            g, fits = e["group"], True
            if e["own"]:  # appended in order, after the groups the optimizer was built with
                fits = g is None or g == n_groups
                n_groups += 1
            elif g >= n_groups:
                fits = False
            if not fits:
                raise ValueError(f"checkpoint has seed {name}'s parameters in optimizer group {g}, which this "
                                 f"optimizer ({len(self.optimizer.param_groups)} groups) cannot hold: build the "
                                 "optimizer with the parameter groups of the checkpointed run")
            if not e["own"]:
                if not 0 <= e["position"] <= sizes[g]:
                    raise ValueError(f"checkpoint has seed {name}'s parameters at position {e['position']} of "
                                     f"optimizer group {g}, which holds {sizes[g]}: build the optimizer with the "
                                     "parameter groups of the checkpointed run")
                sizes[g] += len(list(built[key].parameters()))
        return placements

    def _check_last_good(self, good: Mapping[str, Any] | None, built: Mapping[tuple[int, int], nn.Module]) -> None:
        """The checkpoint's last good weights of each seed must be those of the seed Go's snapshot
        holds there (same names and shapes), and none may belong to a slot without a seed.

        Raises:
            ValueError: naming the seed and the tensor that disagree.
        """
        saved = (good or {}).get("model") or {}
        if not saved:
            return
        for i in range(len(self.layers)):
            for slot in range(self.slots):
                prefix = self._seed_prefix(i, slot)
                keys = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
                seed = built.get((i, slot))
                where = f"seed {self.layer_names[i]}/{slot}"
                if seed is None:
                    if keys:
                        raise ValueError(f"checkpoint: its last good weights hold {len(keys)} tensors of {where} "
                                         f"(e.g. {prefix + next(iter(keys))!r}), but Go's snapshot holds no live "
                                         "seed there. Nothing was loaded.")
                    continue
                shapes = {k: tuple(v.shape) for k, v in seed.state_dict().items()}
                for k, v in keys.items():
                    if k not in shapes or tuple(v.shape) != shapes[k]:
                        want = f"shape {shapes[k]}" if k in shapes else f"no such tensor (it has {sorted(shapes)})"
                        raise ValueError(f"checkpoint: its last good weights hold {prefix + k!r} with shape "
                                         f"{tuple(v.shape)}, but {where} of Go's snapshot (blueprint "
                                         f"{getattr(seed, 'blueprint_id', '')[:12]}) has {want}. Nothing was loaded.")

    def __repr__(self) -> str:
        return (f"Morphogenesis(layers={len(self.layers)}, slots={self.slots}, policy={self.config.policy!r}, "
                f"steps={self.steps}, epoch={self.epoch})")
