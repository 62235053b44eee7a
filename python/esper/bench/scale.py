"""Rows about scale: what the Go session costs per call and per layer as the wrapped layers and
slots grow (10, 100, 1000 layers; 1, 2, 4 slots per layer), and training steps of a model whose step
takes tens of milliseconds. The step rows of 1000 wrapped layers are in ``steps.scaling_rows``
(Deep(1000)); these rows sit beside them in the scaling section."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..kasmina import SIGNALS
from ..session import Session
from . import models, steps
from .native import GoBench
from .rows import Row, samples_row

__all__ = ["LAYERS", "SLOTS", "session_scale_rows", "memory_rows", "medium_rows", "MEDIUM"]

#: Wrapped layers and slots per layer the session rows are measured at.
LAYERS = (10, 100, 1000)
SLOTS = (1, 2, 4)

#: The model whose CPU step takes 50-100 ms on the 2-core bench machine (77 ms there, one torch
#: thread, 2026-12-07): 4 transformer blocks of width 80 over 32 tokens, batch 32.
MEDIUM = steps.ModelSpec("MediumTransformer", "transformer", 32,
                         lambda: models.TinyTransformer(dim=80, heads=4, depth=4),
                         ("blocks.*.fc1", "blocks.*.fc2"),
                         "fc1, fc2 of 4 blocks wrapped (8 layers), batch 32x32 tokens")


def _config(layers: int, slots: int) -> dict[str, Any]:
    """A heuristic session of ``layers`` linear 32x32 layers with ``slots`` slots each, as
    Morphogenesis makes for Deep(layers)."""
    return {"layers": [{"name": f"layers.{i}", "kind": "linear", "in": 32, "out": 32, "params": 32 * 32 + 32}
                       for i in range(layers)],
            "slots_per_layer": slots, "policy": "heuristic", "controller": {"patience": 2}}


def _signals(layers: int) -> np.ndarray:
    buf = (0.5 + 0.1 * (np.arange(2 + len(SIGNALS) * layers) % 5)).astype(np.float32)
    buf[1] = 0.0
    return buf


def _cpu_rounds(fn: Callable[[], object], inner: int, rounds: int) -> list[float]:
    """CPU seconds of this process per call of fn over ``rounds`` blocks of ``inner`` calls (a
    tenth of a block untimed first)."""
    for _ in range(max(1, inner // 10)):
        fn()
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(inner):
            fn()
        out.append((time.process_time() - start) / inner)
    return out


def _session_samples(layers: int, slots: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """CPU seconds per Session.step with signals, without, and per Session.end_epoch that waits
    (the loss improving every epoch), on one session of ``layers`` x ``slots``."""
    with Session(_config(layers, slots)) as s:
        buf = _signals(layers)
        s.step(1, buf)
        with_signals = _cpu_rounds(lambda: s.step(1, buf), max(20, 20000 // layers), rounds)
        without = _cpu_rounds(lambda: s.step(1), 5000, rounds)
        epoch = [0]

        def end_epoch() -> None:
            epoch[0] += 1
            s.end_epoch({"epoch": epoch[0], "train_loss": 1.0 / epoch[0], "val_loss": 1.0 / epoch[0],
                         "val_metric": 0.5, "contributions": []})

        ended = _cpu_rounds(end_epoch, max(5, 2000 // layers), rounds)
    return with_signals, without, ended


def _germinate_samples(layers: int, slots: int, rounds: int, inner: int) -> list[float]:
    """CPU seconds per Session.end_epoch that germinates, each on its own session restored (before
    the round is timed) from a snapshot one epoch before the plateau."""
    s = Session(_config(layers, slots))
    buf = _signals(layers)
    seed_gain = SIGNALS.index("seed_gain")
    for layer in range(layers):
        buf[2 + len(SIGNALS) * layer + seed_gain] = float(layer % 7 + 1)
    s.step(1, buf)
    for epoch in range(2):
        s.end_epoch({"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []})
    snap = s.snapshot()
    s.close()
    metrics = {"epoch": 2, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}
    out = []
    for r in range(rounds + 1):
        sessions = []
        for _ in range(inner):
            t = Session(_config(layers, slots))
            t.restore(snap)
            sessions.append(t)
        start = time.process_time()
        for t in sessions:
            result = t.end_epoch(metrics)
        elapsed = time.process_time() - start
        if result["decisions"][0]["op"] != "germinate":
            raise RuntimeError(f"the {layers}-layer session did not germinate: {result['decisions']}")
        for t in sessions:
            t.close()
        if r:
            out.append(elapsed / inner)
    return out


def session_scale_rows(rounds: int, quick: bool = False, layers: Sequence[int] = LAYERS,
                       slots: Sequence[int] = SLOTS, wants: Callable[[str], bool] = lambda name: True) -> list[Row]:
    """Session.step (with the signals of every layer, as on a sampling step, and without, as on
    every other step), Session.end_epoch (a waiting decision: the loss improves) and Session.end_epoch
    that germinates, through the ABI, at each number of layers and slots; ``wants`` (a row name)
    picks the (layers, slots) measured, as ``--only`` does."""
    rows: list[Row] = []
    for n in layers:
        for k in slots:
            what = f"{n} layers x {k} slots"
            if not wants(f"Session.step, {what}"):
                continue
            with_signals, without, ended = _session_samples(n, k, rounds)
            germ = _germinate_samples(n, k, rounds, max(3, (30 if quick else 150) // max(1, n // 10)))
            rows += [
                samples_row("scaling", f"Session.step with signals, {what}", "cpu", [t * 1e6 for t in with_signals],
                            "us", target=None, source="ABI",
                            note=f"a sampling step: {2 + len(SIGNALS) * n} float32 in, {n * k} alphas out"),
                samples_row("scaling", f"Session.step without signals, {what}", "cpu", [t * 1e6 for t in without],
                            "us", target=None, source="ABI", note=f"every other step: {n * k} alphas out"),
                samples_row("scaling", f"Session.end_epoch, waiting, {what}", "cpu", [t * 1e6 for t in ended], "us",
                            target=None, source="ABI",
                            note="heuristic, the loss improving: Tamiyo reads every layer's statistics and waits"),
                samples_row("scaling", f"Session.end_epoch -> germinate, {what}", "cpu", [t * 1e6 for t in germ],
                            "us", target=None, source="ABI",
                            note="heuristic on a plateau: Tamiyo ranks every layer, instantiates, the session "
                                 "germinates; the result JSON decoded"),
            ]
    return rows


def memory_rows(go: GoBench, layers: Sequence[int] = LAYERS, slots: Sequence[int] = SLOTS) -> list[Row]:
    """The Go heap a session keeps per wrapped layer (BenchmarkSessionMemory)."""
    return [go.row("scaling", f"Go memory per wrapped layer, {n} layers x {k} slots (in Go)",
                   f"SessionMemory:heapB/layer-L{n}-S{k}", "bytes", None,
                   "Go heap kept after New, a step with signals and an end of epoch, garbage collected, divided "
                   "by the layers")
            for n in layers for k in slots]


def medium_rows(device: torch.device, settings: steps.StepSettings) -> list[Row]:
    """A model whose CPU step takes 50-100 ms: dormant (8 layers wrapped) against the plain model,
    and one seed in HOLDING against the same model written by hand."""
    rows: list[Row | None] = []
    name = f"train step, dormant: {MEDIUM.label}"
    if settings.wants(name):
        esper, plain, morph = steps.dormant_pair(MEDIUM, device)
        rows.append(steps._row("scaling", name, device, settings, esper, plain, "plain model", steps.DORMANT,
                               f"{MEDIUM.what}; Esper includes morph.step(loss)"))
        morph.close()
    name = f"train step, 1 seed HOLDING: {MEDIUM.label}"
    if settings.wants(name):
        esper, hand, morph, n_seed = steps.active_pair(MEDIUM, device, "HOLDING", layer="blocks.1.fc2", width=32)
        rows.append(steps._row("scaling", name, device, settings, esper, hand, "same model written by hand",
                               steps.ACTIVE, f"residual_mlp width 32 ({n_seed} params) on blocks.1.fc2, only it "
                                             "wrapped; hand-written: host(x) + branch(x), same weights"))
        morph.close()
    return [r for r in rows if r is not None]

