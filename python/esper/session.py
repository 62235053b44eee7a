"""The Go session of one training run, seen from Python.

A :class:`Session` owns a handle to ``core/session`` in the Go library: the
seed lifecycle of every wrapped layer, the health-signal statistics (Nissa),
and the controller (Tamiyo). :class:`~esper.tolaria.Morphogenesis` drives it;
users rarely touch it directly.
"""

from __future__ import annotations

import ctypes
import json
import math
from ctypes import POINTER, byref, c_float, c_int32, c_int64, c_void_p
from typing import Any

import numpy as np

from . import _lib

__all__ = ["Session", "STATES", "STATE_IDS", "LIVE_STATES"]

#: Seed states by value (docs/internals.md; the Go table is the source).
STATES = (
    "DORMANT",
    "GERMINATED",
    "TRAINING",
    "BLENDING",
    "HOLDING",
    "FOSSILIZED",
    "PRUNED",
    "EMBARGOED",
    "RESETTING",
    "CANCELLED",
    "ROLLED_BACK",
)
#: State name -> value.
STATE_IDS = {name: i for i, name in enumerate(STATES)}
#: States in which the seed has a module in the model.
LIVE_STATES = frozenset({"GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"})


def _check_index(layer: int, slot: int) -> None:
    """Refuse a layer or slot index that does not fit the ABI's int32 (ctypes would keep the low
    bits: slot 2**32+1 would name slot 1). Go checks the range of the session itself."""
    _lib.check_range("layer", layer, -_lib.INT32_MAX - 1, _lib.INT32_MAX)
    _lib.check_range("slot", slot, -_lib.INT32_MAX - 1, _lib.INT32_MAX)


def _finite_json(obj: Any) -> Any:
    """Replace non-finite floats by the strings Go's decoder accepts ("NaN", "Infinity")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _metrics_json(metrics: dict[str, Any]) -> bytes:
    """The metrics document: encoded as it is when every float is finite (one pass in C), else
    with the non-finite floats spelled as Go's decoder reads them (:func:`_finite_json`)."""
    try:
        return json.dumps(metrics, allow_nan=False).encode()
    except ValueError:  # a NaN or infinite float
        return json.dumps(_finite_json(metrics)).encode()


class Session(_lib.Handle):
    """A Go session: lifecycle, signals and controller for one training run.

    Args:
        config: the session configuration (layers, slots, lifecycle tempo,
            policy, budgets); see ``core/session`` for every field.
    """

    _free_symbol = "esper_session_free"

    def __init__(self, config: dict[str, Any]) -> None:
        cdll = _lib.lib()
        out = ctypes.c_uint64()
        _lib.check(cdll.esper_session_new(json.dumps(config).encode(), byref(out)))
        super().__init__(out.value)
        self.config = config
        layers = config["layers"]
        self.num_slots = len(layers) * int(config.get("slots_per_layer", 1))
        self.alphas = np.zeros(self.num_slots, dtype=np.float32)
        self._alphas_ptr = self.alphas.ctypes.data_as(POINTER(c_float))
        self._n_events = c_int32()
        self._n_events_ref = byref(self._n_events)
        self._step = _lib.unchecked(cdll, "esper_session_step")  # steps is range-checked in step()
        self._alarms = c_int64()
        self._alarms_ref = byref(self._alarms)
        self._step_waiting = _lib.unchecked(cdll, "esper_session_step_waiting")
        self._reports = c_int32()
        self._reports_ref = byref(self._reports)

    def step(self, steps: int = 1, signals: np.ndarray | None = None) -> int:
        """Advance the lifecycle by ``steps`` optimizer steps, ingest signals.

        Args:
            steps: optimizer steps since the last call.
            signals: float32 buffer in the layout of docs/internals.md, or None.

        Returns:
            The number of lifecycle events waiting (read them with events());
            ``self.alphas`` holds the new alpha of every slot.
        """
        ptr, size, _keep = self._step_args(steps, signals)
        rc = self._step(self.handle, steps, ptr, size, self._alphas_ptr, self.num_slots, self._n_events_ref)
        if rc:
            _lib.check(rc, self.handle)
        return self._n_events.value

    def _step_args(self, steps: int, signals: np.ndarray | None) -> tuple[Any, int, np.ndarray | None]:
        """The checked step count's and signals' C arguments: (pointer, size, the array the pointer
        points into, to keep alive through the call)."""
        if not 0 <= steps <= _lib.INT64_MAX:
            _lib.check_range("steps", steps, 0, _lib.INT64_MAX)  # raises, naming it
        if _lib._in_fork_child:
            _lib.lib()  # raises ForkError: the cached symbol would call into a dead Go runtime
        if signals is None:
            return None, 0, None
        sig = np.ascontiguousarray(signals, dtype=np.float32)
        return sig.ctypes.data_as(POINTER(c_float)), sig.size, sig

    def step_waiting(self, steps: int, signals: np.ndarray | None = None) -> tuple[int, int, int]:
        """:meth:`step`, then what :meth:`waiting` reads, in one call into Go (a trainer's flush).

        Returns:
            (the number of lifecycle events waiting, the governor's rollbacks so far, the reports
            waiting for :meth:`reports`); ``self.alphas`` holds the new alpha of every slot.
        """
        h = self.handle
        ptr, size, _keep = self._step_args(steps, signals)
        rc = self._step_waiting(h, steps, ptr, size, self._alphas_ptr, self.num_slots, self._n_events_ref,
                                self._alarms_ref, self._reports_ref)
        if rc:
            _lib.check(rc, h)
        return self._n_events.value, self._alarms.value, self._reports.value

    def alphas_ahead(self, n: int) -> np.ndarray:
        """The alpha of every slot after each of the next ``n`` steps, were :meth:`step` called once
        per step: row k (shape ``(n, layers * slots)``, layer-major) holds the alphas after k + 1
        steps. A BLENDING seed follows its ramp; every other slot keeps its alpha of now. Nothing
        changes in Go (one call instead of a call per step while a seed blends)."""
        _lib.check_range("n", n, 0, _lib.INT32_MAX)
        out = np.empty((n, self.num_slots), dtype=np.float32)
        h = self.handle
        _lib.check(_lib.lib().esper_session_alphas_ahead(h, n, out.ctypes.data_as(POINTER(c_float)), out.size), h)
        return out

    def alarms(self) -> int:
        """The number of rollbacks the governor has called for so far (in step and end_epoch,
        with or without a seed to blame; a rollback with none emits no event, so the trainer reads
        this after each step that carried signals)."""
        h = self.handle
        _lib.check(_lib.lib().esper_session_alarms(h, self._alarms_ref), h)
        return self._alarms.value

    def _json_call(self, symbol: str, *args: Any) -> Any:
        out = c_void_p()
        h = self.handle
        _lib.check(getattr(_lib.lib(), symbol)(h, *args, byref(out)), h)
        return _lib.take_json(out)

    def events(self) -> list[dict[str, Any]]:
        """Drain the pending lifecycle events."""
        return self._json_call("esper_session_events") or []

    def end_epoch(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Hand the epoch's metrics to Tamiyo; returns its decisions and the events they caused."""
        return self._json_call("esper_session_end_epoch", _metrics_json(metrics))

    def germinate(self, layer: int, slot: int, blueprint: dict[str, Any]) -> list[dict[str, Any]]:
        """Germinate a seed with a blueprint (an IR, or {"template": name, "params": {...}})."""
        _check_index(layer, slot)
        return self._json_call("esper_session_germinate", layer, slot, json.dumps(blueprint).encode())

    def _transition(self, symbol: str, layer: int, slot: int, reason: str) -> list[dict[str, Any]]:
        _check_index(layer, slot)
        return self._json_call(symbol, layer, slot, reason.encode())

    def advance(self, layer: int, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Move a seed to its next natural state."""
        return self._transition("esper_session_advance", layer, slot, reason)

    def prune(self, layer: int, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Prune a live seed."""
        return self._transition("esper_session_prune", layer, slot, reason)

    def fossilize(self, layer: int, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Fossilize a seed in HOLDING."""
        return self._transition("esper_session_fossilize", layer, slot, reason)

    def cancel(self, layer: int, slot: int, reason: str = "manual") -> list[dict[str, Any]]:
        """Cancel a seed that has not yet touched the host."""
        return self._transition("esper_session_cancel", layer, slot, reason)

    def report_failure(self, layer: int, slot: int, kind: int, message: str) -> list[dict[str, Any]]:
        """Record a seed execution failure (0 exception, 1 non-finite, 2 wrong shape, 3 other)."""
        _check_index(layer, slot)
        _lib.check_range("kind", kind, -_lib.INT32_MAX - 1, _lib.INT32_MAX)
        return self._json_call("esper_session_report_failure", layer, slot, kind, message.encode())

    def seed_failed(self, layer: int, slot: int, generation: int, reason: str) -> list[dict[str, Any]]:
        """Report that the seed of a GERMINATED event (its ``generation``) could not be built, or
        that the module built disagrees with the event; Go removes it with the reason (cancelled
        before it touched the host, pruned after) and returns the events to mirror."""
        return self._json_call("esper_session_seed_failed", layer, slot, generation, reason.encode())

    def snapshot(self) -> str:
        """The whole Go-side state as JSON (for checkpoints)."""
        out = c_void_p()
        h = self.handle
        _lib.check(_lib.lib().esper_session_snapshot(h, byref(out)), h)
        return _lib.take_string(out)

    def restore(self, snapshot: str) -> None:
        """Restore the state saved by snapshot()."""
        h = self.handle
        _lib.check(_lib.lib().esper_session_restore(h, snapshot.encode()), h)

    def apply(self, snapshot: str) -> None:
        """Take rank 0's state after a decision rank 0 made (:meth:`restore`'s checks and state); this
        session's run log then records what the decision did, as rank 0's does, not a resume."""
        h = self.handle
        _lib.check(_lib.lib().esper_session_apply(h, snapshot.encode()), h)

    def state_hash(self) -> dict[str, Any]:
        """Go's digest of the session state: {"sha256", "parts": [{"name", "sha256", "summary"}]}
        (see capi/esper.h). The ranks of a data-parallel run compare it; Python never hashes it."""
        return self._json_call("esper_session_state_hash")

    def stats(self) -> dict[str, Any]:
        """Nissa's rolling statistics of the health signals."""
        return self._json_call("esper_session_stats")

    def seeds(self) -> list[dict[str, Any]]:
        """Every slot's seed: state, alpha, blueprint, history."""
        return self._json_call("esper_session_seeds")

    def waiting(self) -> tuple[int, int]:
        """(the governor's rollbacks so far, as alarms() counts them; the reports waiting for
        reports()), in one call."""
        h = self.handle
        waiting = c_int32()
        _lib.check(_lib.lib().esper_session_waiting(h, self._alarms_ref, byref(waiting)), h)
        return self._alarms.value, waiting.value

    def reports(self) -> dict[str, Any]:
        """Drain the alarms and impact records raised since the last call:
        {"alarms": [...], "impacts": [...], "dropped": n} (docs/metrics.md)."""
        return self._json_call("esper_session_reports")

    def metrics_text(self) -> str:
        """The run's metrics in the Prometheus text exposition format (Go's registry)."""
        out = c_void_p()
        h = self.handle
        _lib.check(_lib.lib().esper_session_metrics_text(h, byref(out)), h)
        return _lib.take_string(out)

    def serve_metrics(self, host: str, port: int) -> int:
        """Serve the metrics at http://host:port/metrics from Go until the session is freed; returns
        the bound port (0 picks a free one). ``host`` is bound as given."""
        _lib.check_range("port", port, 0, 65535)
        out = c_int32()
        h = self.handle
        _lib.check(_lib.lib().esper_session_serve_metrics(h, host.encode(), port, byref(out)), h)
        return out.value

    def metrics_attach(self, handle: int) -> None:
        """Report a kernel cache's or an Urza store's counters in this run's metrics."""
        h = self.handle
        _lib.check(_lib.lib().esper_session_metrics_attach(h, handle), h)

    def attach_oona(self, oona: Any) -> None:
        """Publish this session's events to an :class:`esper.oona.Oona` bus from now on (None: stop);
        publishes the run's "start" (or "resume") event."""
        h = self.handle
        _lib.check(_lib.lib().esper_session_attach_oona(h, oona.handle if oona is not None else 0), h)

    def growth_log(self) -> dict[str, Any]:
        """Every event, decision and failure of the run, in order: {"entries": [...], ...}
        (bounded by the config's growth_log_max; see capi/esper.h)."""
        return self._json_call("esper_session_growth_log")

    def graph(self) -> dict[str, Any]:
        """Tamiyo's layer graph with the legal moves (nodes, edges, global features, masks): what a
        learned policy observes. The masks are the rules :meth:`propose` applies (see capi/esper.h,
        ``esper_session_graph``, and docs/simic.md)."""
        return self._json_call("esper_session_graph")

    def propose(self, proposal: dict[str, Any]) -> dict[str, Any]:
        """Carry out a move proposed from outside ({"op", "layer", "slot", "template", "size", "reason"})
        through the session's own operations. Returns {"proposal", "applied", "refused", "events"}: a
        move the lifecycle or the governor refuses is not executed, and is counted in the stats'
        counters ("refused", of "proposals")."""
        return self._json_call("esper_session_propose", json.dumps(proposal).encode())
