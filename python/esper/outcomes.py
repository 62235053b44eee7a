"""Outcome records: what became of every germination of a run, written to Urza.

:class:`Morphogenesis` keeps one :class:`OutcomeRecorder`. It follows Go's events (never deciding
anything itself) and writes one record per germination through Go (``core/urza``, schema 1,
atomic) when the germination ends: fossilized, pruned, cancelled or rolled back, or when the run
ends with it in flight (``close()``: ``ended_by="run_end"``). At every ``end_epoch`` the seeds in
flight are written too, as ``ended_by="in_flight"``; their final record later replaces that one
(same file), so a run that never calls ``close()`` or dies still leaves a record of each
germination as last seen. Nothing is written, and Go is not called, on the per-step path.

A record (docs/internals.md, "Outcome records") holds the decision's observation (the epoch's
metrics, the layer's and the global signals' rolling statistics from Nissa, the budget used),
policy and reason, the blueprint (id, template, template parameters, IR, host signature),
parameter count, the training FLOPs estimate, the HOLDING measurements (validation loss with and
without the seed), the final state and why, and the steps and epochs spent in each state.

Training FLOPs are Go's (``core/urza.TrainFLOPs``, filled in when the record is written):
``3 x flops_per_sample x samples`` for each span. This module gives each span's samples:
``steps x samples_per_step`` over the spans the seed ran and trained in (TRAINING, BLENDING,
HOLDING), 0 for the others. ``flops_per_sample`` is Karn's forward cost of one sample (a feature
vector for linear hosts; an image at the host's spatial extents, or 32 per dim, for conv hosts);
the factor 3 counts forward plus backward (about twice the forward); ``samples_per_step`` is the
layer's input batch at its last measured forward (every ``signal_every`` steps), read when the span
closes. The extra forwards of the HOLDING measurements are not counted.
"""

from __future__ import annotations

import atexit
import json
import queue
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .kasmina import KasminaLayer

__all__ = ["OutcomeRecorder", "new_run_id", "RUNNING_STATES"]

#: States in which a seed runs forward and backward (its training FLOPs count).
RUNNING_STATES = frozenset({"TRAINING", "BLENDING", "HOLDING"})
_ENDS = {"FOSSILIZED": "fossilized", "PRUNED": "pruned", "CANCELLED": "cancelled", "ROLLED_BACK": "rolled_back"}


class _Writer:
    """Runs a recorder's Urza writes in order on a thread of its own, so that their fsyncs never hold
    up training; the thread ends after a second without work and starts again with the next. A write
    the store refuses as malformed (a bug) is raised on the training thread at the next submit or
    flush."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        _WRITERS.add(self)

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        with self._lock:
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="esper-urza-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                if job is None:
                    with self._lock:
                        self._thread = None
                    return
                job()
            except BaseException as exc:  # kept for the training thread
                self._error = self._error or exc
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every write submitted so far is done."""
        self._queue.join()
        self._raise()

    def stop(self) -> None:
        """Finish the writes submitted so far and end the thread."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc


_WRITERS: weakref.WeakSet[_Writer] = weakref.WeakSet()


def flush_all() -> None:
    """Wait until every outcome record and kernel queued in this process is written (reading the
    store, ``Urza.outcomes`` and ``Urza.runs`` call it first; so does the interpreter at exit)."""
    for writer in list(_WRITERS):
        writer.flush()


atexit.register(flush_all)


def _artifact_event(artifact_id: str, manifest: dict[str, Any], weights: bytes) -> dict[str, Any]:
    """The data of a trained kernel's "artifact" event (docs/events.md)."""
    lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else {}
    return {"type": "kernel", "id": artifact_id, "blueprint_id": str(manifest.get("blueprint_id", "")),
            "bytes": len(weights), "layer": lineage.get("layer"), "layer_name": lineage.get("layer_name"),
            "slot": lineage.get("slot")}


def new_run_id() -> str:
    """A fresh run id: UTC time to the second and 8 random hex digits (``20261207-054100-3f9a2c1b``)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class OutcomeRecorder:
    """Builds and writes the outcome records of one run (see the module docs).

    Args:
        layers: the run's Kasmina layers, in session order.
        layer_names: their names.
        policy: the run's policy ("heuristic", "random", "manual", "learned").
        root: the Urza store folder; "" for ``$ESPER_HOME/urza``.
        enabled: whether records are written at all.
        stats: a callable returning Go's session stats (``Session.stats()``), called once per
            germination for its observation.
        epochs: the run's planned length in epochs (``MorphConfig.epochs``; 0: unknown), recorded in
            each observation (the value model's timing features read it).
    """

    def __init__(self, layers: Sequence[KasminaLayer], layer_names: Sequence[str], policy: str, root: str,
                 enabled: bool, stats: Callable[[], dict[str, Any]], epochs: int = 0) -> None:
        self.layers = list(layers)
        self.layer_names = list(layer_names)
        self.policy = policy
        self.root = root
        self.enabled = enabled
        self._stats = stats
        self.epochs = int(epochs)
        #: The run id: new for each Morphogenesis, restored from its checkpoint by load_state_dict.
        self.run_id = new_run_id()
        self._seq = 0  # germinations so far
        self._open: dict[tuple[int, int], dict[str, Any]] = {}  # (layer, slot) -> record in progress
        self._decided: dict[tuple[int, int], dict[str, Any]] = {}  # germinate decisions awaiting their event
        self._metrics: dict[str, Any] | None = None  # the last end_epoch's metrics
        self._store: Any = None
        self._failed = False
        self._writer = _Writer()
        self._last_written: dict[tuple[int, int], int] = {}  # spans of an in-flight record when last written
        #: Keys of the records written by this recorder, in order (the latest write of each).
        self.written: list[str] = []
        #: Called as on_artifact(data, step, epoch) on the writer's thread after a trained kernel is
        #: published (the run's "artifact" event).
        self.on_artifact: Callable[[dict[str, Any], int, int], None] | None = None

    # ------------------------------------------------------------------ inputs

    def decided(self, decisions: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> None:
        """The decisions of an end_epoch (before its events are applied) and the metrics they saw."""
        self._metrics = {k: metrics.get(k) for k in ("epoch", "train_loss", "val_loss", "val_metric")}
        for d in decisions:
            if d.get("op") == "germinate" and d.get("applied", True):
                self._decided[(int(d["layer"]), int(d["slot"]))] = d

    def germinated(self, layer: int, slot: int) -> tuple[int, int] | None:
        """(step, epoch) of the germination in flight in layer, slot; None if none is recorded."""
        rec = self._open.get((layer, slot))
        return None if rec is None else (rec["germinated_step"], rec["germinated_epoch"])

    def event(self, ev: dict[str, Any], *, kernel: tuple[dict[str, Any], bytes] | None = None,
              source_kernel: str | None = None) -> None:
        """One of Go's events, in order, once mirrored: opens, extends or ends a germination's record.

        Args:
            ev: the event.
            kernel: a FOSSILIZED seed's trained kernel (manifest, weights): published with its record,
                whose ``kernel_id`` is then the artifact id.
            source_kernel: the stored kernel the seed started from (``blueprint="urza:<id>"``).
        """
        key = (int(ev["layer"]), int(ev["slot"]))
        to = str(ev["to"])
        if to == "GERMINATED":
            self._germinated(key, ev)
            if source_kernel:
                self._open[key]["source_kernel"] = source_kernel
            return
        rec = self._open.get(key)
        if rec is None:  # a seed germinated before this recorder existed (and no checkpoint carried it)
            if kernel is not None:
                self._write(None, kernel)
            return
        self._close_span(rec, int(ev["step"]), int(ev["epoch"]))
        if to in _ENDS:
            self._finish(key, to, _ENDS[to], str(ev.get("reason", "")), int(ev["step"]), int(ev["epoch"]), kernel)
        else:
            rec["states"].append(self._span(to, ev))

    def contribution(self, layer: int, slot: int, epoch: int, val_loss: float, without: float | None,
                     delta: float) -> None:
        """A HOLDING measurement: the validation loss with the seed and without it."""
        rec = self._open.get((layer, slot))
        if rec is not None:
            rec["contributions"].append({"epoch": epoch, "val_loss": val_loss, "val_loss_without": without,
                                         "delta_loss": delta})

    def end_epoch(self, step: int, epoch: int) -> None:
        """Write the seeds in flight as last seen (``ended_by="in_flight"``), those that changed state
        since their last such write."""
        for key, rec in self._open.items():
            if self._last_written.get(key) != len(rec["states"]):
                self._last_written[key] = len(rec["states"])
                self._write(self._provisional(key, "in_flight", step, epoch))

    def flush(self) -> None:
        """Wait until every write submitted so far is on disk."""
        self._writer.flush()

    def close(self, step: int, epoch: int) -> None:
        """The run ends: write the seeds in flight (``ended_by="run_end"``), wait for every write, and
        release the store."""
        for key in list(self._open):
            self._write(self._provisional(key, "run_end", step, epoch))
        self._open.clear()
        self._writer.stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    # ------------------------------------------------------------------ records

    def _germinated(self, key: tuple[int, int], ev: dict[str, Any]) -> None:
        i, slot = key
        ir = ev.get("blueprint") or {}
        decision = self._decided.pop(key, None)
        observation: dict[str, Any] = {"epoch": int(ev["epoch"]), "step": int(ev["step"]), "epochs": self.epochs,
                                       "metrics": self._metrics}
        stats = self._stats()
        layers = (stats.get("signals") or {}).get("layers") or []
        observation.update(
            layer_signals=(layers[i].get("signals") if i < len(layers) else None) or {},
            global_signals=(stats.get("signals") or {}).get("global") or {},
            params_used=stats.get("params_used"),  # after this germination (and any decided with it)
            max_params=stats.get("max_params"),
            host_params=stats.get("host_params"),
            seeds_active=stats.get("active"),
            cooldowns=(stats.get("governor") or {}).get("cooldowns"),
        )
        step, epoch = int(ev["step"]), int(ev["epoch"])
        rec = {
            "run_id": self.run_id, "seq": self._seq, "layer": i, "layer_name": self.layer_names[i], "slot": slot,
            "policy": self.policy if decision is not None else "manual",
            "reason": str(decision.get("reason", "")) if decision is not None else str(ev.get("reason", "")),
            "observation": observation,
            "blueprint_id": str(ev.get("blueprint_id", "")),
            "template": str(ir.get("template", "")),
            "template_params": dict(ir.get("params") or {}),
            "blueprint": ir, "host": dict(ir.get("host") or {}),
            "param_count": int(ev.get("param_count") or ir.get("param_count") or 0),
            "flops_per_sample": int(ir.get("flops_per_sample") or 0),
            "contributions": [],
            "germinated_step": step, "germinated_epoch": epoch,
            "states": [self._span("GERMINATED", ev)],
        }
        if decision is not None and decision.get("predicted_value") is not None:
            rec["prediction"] = float(decision["predicted_value"])  # the learned policy's (policy/value)
        self._seq += 1
        self._open[key] = rec

    @staticmethod
    def _span(state: str, ev: dict[str, Any]) -> dict[str, Any]:
        return {"state": state, "from_step": int(ev["step"]), "to_step": int(ev["step"]), "steps": 0,
                "from_epoch": int(ev["epoch"]), "to_epoch": int(ev["epoch"]), "epochs": 0,
                "reason": str(ev.get("reason", "")), "samples": 0, "open": True}

    def _close_span(self, rec: dict[str, Any], step: int, epoch: int) -> None:
        span = rec["states"][-1]
        self._measure_span(rec, span, step, epoch)
        span.pop("open", None)

    def _measure_span(self, rec: dict[str, Any], span: dict[str, Any], step: int, epoch: int) -> None:
        span["to_step"], span["to_epoch"] = max(step, span["from_step"]), max(epoch, span["from_epoch"])
        span["steps"] = span["to_step"] - span["from_step"]
        span["epochs"] = span["to_epoch"] - span["from_epoch"]
        if span["state"] in RUNNING_STATES:
            per_step = self.layers[rec["layer"]].samples_per_step
            span["samples"] = span["steps"] * per_step  # Go multiplies (core/urza.TrainFLOPs)

    def _complete(self, rec: dict[str, Any], final_state: str, ended_by: str, reason: str, step: int,
                  epoch: int) -> dict[str, Any]:
        out = {k: v for k, v in rec.items() if k != "states"}
        out["states"] = [{k: v for k, v in s.items() if k != "open"} for s in rec["states"]]
        out.update(final_state=final_state, ended_by=ended_by, final_reason=reason,
                   ended_step=max(step, rec["germinated_step"]), ended_epoch=max(epoch, rec["germinated_epoch"]))
        return out

    def _provisional(self, key: tuple[int, int], ended_by: str, step: int, epoch: int) -> dict[str, Any]:
        rec = self._open[key]
        span = rec["states"][-1]
        self._measure_span(rec, span, step, epoch)
        return self._complete(rec, span["state"], ended_by, "", step, epoch)

    def _finish(self, key: tuple[int, int], state: str, ended_by: str, reason: str, step: int, epoch: int,
                kernel: tuple[dict[str, Any], bytes] | None = None) -> None:
        rec = self._open.pop(key)
        self._last_written.pop(key, None)
        self._write(self._complete(rec, state, ended_by, reason, step, epoch), kernel)

    def store(self) -> Any:
        """The run's Urza store (opened on first use), or None when it cannot be opened or written:
        a warning then says why once, and training goes on without recording."""
        if self._store is None and not self._failed:
            from .urza import Urza

            try:
                self._store = Urza(self.root or None)
            except OSError as exc:  # StorageError (Go's file operations) included
                self._fail(exc)
        return self._store

    def _fail(self, exc: Exception) -> None:
        self._failed = True
        warnings.warn(f"esper: run {self.run_id} no longer records to Urza: {exc}. Set ESPER_HOME (or "
                      "MorphConfig.urza) to a writable folder, or record_outcomes=False.", RuntimeWarning,
                      stacklevel=4)

    def _write(self, record: dict[str, Any] | None, kernel: tuple[dict[str, Any], bytes] | None = None) -> None:
        """Queue a record (serialised here, on the training thread) and a kernel to publish before it."""
        if not self.enabled:
            record = None
        store = self.store()
        if store is None or (record is None and kernel is None):
            return
        from .urza import _nulled

        doc = _nulled(record) if record is not None else None
        when = ((int(record.get("ended_step", 0)), int(record.get("ended_epoch", 0))) if record is not None
                else (0, 0))
        text = json.dumps(doc, allow_nan=False) if doc is not None else ""

        def job() -> None:
            body = text
            try:
                if kernel is not None:
                    kernel_id = store.put(*kernel)
                    if self.on_artifact is not None:
                        self.on_artifact(_artifact_event(kernel_id, kernel[0], kernel[1]), *when)
                    if doc is not None:
                        body = json.dumps({**doc, "kernel_id": kernel_id}, allow_nan=False)
                if body:
                    key = store.put_outcome_json(body.encode())
                    if key in self.written:
                        self.written.remove(key)
                    self.written.append(key)
            except OSError as exc:  # a refused record (InvalidArgumentError) is a bug: raised on the training thread
                if not self._failed:
                    self._fail(exc)

        self._writer.submit(job)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The run id and the records in progress (plain data)."""
        import copy

        return {"run_id": self.run_id, "seq": self._seq, "open": [copy.deepcopy(r) for r in self._open.values()],
                "metrics": copy.deepcopy(self._metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpointed run: its id, its germination count and its records in progress."""
        self.run_id = str(state["run_id"])
        self._seq = int(state.get("seq", 0))
        self._open = {(int(r["layer"]), int(r["slot"])): r for r in state.get("open", [])}
        self._metrics = state.get("metrics")
