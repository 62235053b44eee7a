"""Growth under ``torch.distributed``: DDP and FSDP2 runs launched by ``torchrun``.

DDP fixes its parameter set when it is built, and FSDP2 shards only the parameters a module held
when ``fully_shard`` ran, so seed parameters stay outside both. :class:`~esper.Morphogenesis`
detects an initialized process group (or is told with ``distributed="on"``) and then keeps the
ranks identical (DESIGN.md §8; docs/distributed.md):

- every rank's health signals, training losses, validation loss, metric and seed contributions
  are averaged across ranks before Go sees them, so every rank's Go session ingests the same
  numbers and Tamiyo decides on the whole job;
- decisions are made once: rank 0's Go session decides (``end_epoch``, or a manual
  ``germinate``/``advance``/``prune``/``fossilize``, which every rank must call with the same
  arguments); its result and its session state are broadcast, every other rank's Go session
  takes that state (Go checks it; its run log records the decision as rank 0's does), and every
  rank mirrors the same events;
- a new seed is built with the same seeded initial weights on every rank, then its parameters and
  buffers are broadcast from rank 0; post-accumulate-grad hooks on the seed parameters have every
  seed gradient averaged across ranks, in one all-reduce, when ``backward`` ends (so gradient
  clipping and ``GradScaler`` see averaged gradients, as with DDP's own); seed buffers are
  broadcast from rank 0 at each ``end_epoch``;
- at every ``end_epoch`` each rank's Go session state digest (:meth:`esper.session.Session.state_hash`,
  computed by Go) is compared with rank 0's before the decision, and a difference raises
  :class:`RankDivergenceError` naming the first part that differs, on every rank;
- Esper's own collectives run on a gloo group of their own with ``rank_timeout`` seconds: a rank
  that died or hangs makes the others raise :class:`RankError` at their next synchronisation.
"""

from __future__ import annotations

import builtins
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import errors
from .errors import EsperError

__all__ = ["RankError", "RankDivergenceError", "RankSync", "active_group"]

#: Test-only switch: when True, Morphogenesis does none of the synchronisation above even under an
#: initialized process group (each rank decides alone and seed gradients are not averaged). It
#: exists so that tests can show the unsynchronised run diverge; it is not a user option.
_TEST_ONLY_UNSYNCED = False


class RankError(EsperError):
    """A collective of Esper's across ranks failed: another rank died, hangs past
    ``rank_timeout``, or the process group broke. Every rank stops; checkpoints already written
    are intact. Under ``torchrun --max-restarts N`` the job restarts and resumes from the last one."""


class RankDivergenceError(EsperError):
    """The ranks of a data-parallel run disagree: their Go sessions' states differ, or they made
    different calls (a manual ``germinate`` with other arguments on one rank). The message names the
    first difference."""


def active_group(setting: str) -> bool:
    """Whether Morphogenesis synchronises ranks under ``MorphConfig.distributed`` = ``setting``:
    "auto" when ``torch.distributed`` is initialized with more than one rank, "on" always (it
    must be initialized), "off" never.

    Raises:
        ValueError: an unknown setting, or "on" without an initialized process group.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f'distributed must be "auto", "on" or "off", got {setting!r}')
    if setting == "off" or _TEST_ONLY_UNSYNCED:
        return False
    ready = dist.is_available() and dist.is_initialized()
    if setting == "on" and not ready:
        raise ValueError('distributed="on" needs torch.distributed.init_process_group(...) to have run first')
    return ready and dist.get_world_size() > 1


def _error_class(name: str) -> type[BaseException]:
    """The exception class named by rank 0's error, for re-raising it on the other ranks."""
    found = getattr(errors, name, None) or getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return EsperError


class RankSync:
    """The synchronisation of one Morphogenesis across the ranks of the default process group.

    Args:
        timeout: seconds any of Esper's collectives waits for the other ranks before raising
            :class:`RankError`.
    """

    def __init__(self, timeout: float) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"rank_timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = dist.get_backend()
        # Control traffic (signals, decisions, digests) goes through a gloo group of its own: CPU
        # tensors whatever the training backend, and a timeout of Esper's choosing.
        self.group = self._collective("create Esper's gloo group", lambda: dist.new_group(
            backend="gloo", timeout=timedelta(seconds=self.timeout)))
        self._hooks: dict[tuple[int, int], list[Any]] = {}
        self._params: dict[tuple[int, int], list[nn.Parameter]] = {}  # live seeds' parameters
        self._queued = False  # the end-of-backward averaging is queued
        #: Seconds from rank 0's last decision to every rank having applied it (rank 0 only).
        self.agreement_s: float | None = None
        self.agreement_max_s = 0.0
        self.decisions = 0  # decisions broadcast (end_epoch and manual ops)
        self.checks = 0  # state digests compared

    # ------------------------------------------------------------------ collectives

    def _collective(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one collective; a failure (a rank died, hangs, or the group broke) is a RankError."""
        try:
            return fn()
        except (RuntimeError, OSError, ValueError) as exc:
            if isinstance(exc, EsperError):
                raise
            raise RankError(
                f"rank {self.rank if hasattr(self, 'rank') else '?'}: {what} failed: {type(exc).__name__}: "
                f"{str(exc).strip()[:400]}. Another rank has died, hangs (the timeout is {self.timeout:g} s, "
                "MorphConfig.rank_timeout) or the process group broke; every rank stops here. Checkpoints "
                "already written are intact: resume from the last one (torchrun --max-restarts N does it "
                "automatically when the script loads its checkpoint at start)") from exc

    def barrier(self, what: str) -> None:
        """Wait for every rank: a dead rank fails it at once, a hung one after the timeout.
        (gloo's ``monitored_barrier`` would name a hung rank, but it waits out the whole timeout
        for a dead one too, which delays a restart by ``rank_timeout``.)"""
        self._collective(what, lambda: dist.barrier(group=self.group))

    def broadcast_bytes(self, what: str, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (others pass None)."""
        def run() -> bytes:
            size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
            dist.broadcast(size, 0, group=self.group)
            buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 and data
                   else torch.empty(int(size), dtype=torch.uint8))
            if int(size):
                dist.broadcast(buf, 0, group=self.group)
            return bytes(buf.numpy().tobytes())
        return self._collective(what, run)

    def all_gather_bytes(self, what: str, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order."""
        def run() -> list[bytes]:
            size = torch.tensor([len(data)], dtype=torch.int64)
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
            dist.all_gather(sizes, size, group=self.group)
            n = max(int(s) for s in sizes)
            buf = torch.zeros(n, dtype=torch.uint8)
            if data:
                buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            bufs = [torch.zeros(n, dtype=torch.uint8) for _ in range(self.world)]
            dist.all_gather(bufs, buf, group=self.group)
            return [bytes(b[: int(s)].numpy().tobytes()) for b, s in zip(bufs, sizes)]
        return self._collective(what, run)

    # ------------------------------------------------------------------ numbers

    def reduce_signals(self, signals: np.ndarray, failures: int) -> tuple[np.ndarray, int]:
        """The mean of every rank's signal buffer (docs/internals.md layout) and the number of seed
        failures recorded on all ranks. The non-finite count is summed; a NaN anywhere stays NaN
        everywhere, so every rank's governor sees the same."""
        t = torch.from_numpy(np.concatenate([signals.astype(np.float64), [float(failures)]]))
        self._collective("average the health signals", lambda: dist.all_reduce(t, group=self.group))
        out = t[:-1] / self.world
        out[1] = t[1]
        return out.numpy().astype(np.float32), int(t[-1])

    def reduce_metrics(self, values: Sequence[float | None]) -> list[float | None]:
        """Each value averaged across ranks; a value None on every rank stays None (None on some
        ranks only is a RankDivergenceError)."""
        present = torch.tensor([0.0 if v is None else 1.0 for v in values], dtype=torch.float64)
        t = torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float64)
        both = torch.cat([present, t])
        self._collective("average the epoch's metrics", lambda: dist.all_reduce(both, group=self.group))
        count, total = both[: len(values)], both[len(values):]
        out: list[float | None] = []
        for k, (c, s) in enumerate(zip(count.tolist(), total.tolist())):
            if c == 0:
                out.append(None)
            elif c != self.world:
                raise RankDivergenceError(f"metric {k} of end_epoch was given on {int(c)} of {self.world} ranks: "
                                          "pass it on every rank or on none")
            else:
                out.append(s / self.world)
        return out

    def gather_failures(self, failures: list[tuple[int, Any]], factory: Callable[..., Any]) -> list[tuple[int, Any]]:
        """Every rank's seed failures, merged: one per (layer, slot, kind, step), rank 0's message."""
        mine = json.dumps([[i, f.slot, int(f.kind), f.message, f.step, f.every_step] for i, f in failures]).encode()
        merged: dict[tuple[int, int, int, Any], tuple[int, Any]] = {}
        for blob in self.all_gather_bytes("gather seed failures", mine):
            for i, slot, kind, message, step, every in json.loads(blob):
                key = (i, slot, kind, step)
                if key not in merged:
                    merged[key] = (i, factory(slot, kind, message, step, every))
        return [merged[k] for k in sorted(merged, key=lambda k: (k[3] is not None, k[3] or 0, k[0], k[1], k[2]))]

    # ------------------------------------------------------------------ decisions

    def check_same_call(self, what: str, args: Mapping[str, Any]) -> None:
        """Every rank must make this call with rank 0's arguments (user code runs on every rank).

        Raises:
            RankDivergenceError: naming the first rank whose arguments differ, on every rank.
        """
        mine = json.dumps({"call": what, "args": args}, sort_keys=True, default=str).encode()
        calls = self.all_gather_bytes(f"compare the ranks' {what} calls", mine)
        for r, blob in enumerate(calls):
            if blob != calls[0]:
                raise RankDivergenceError(f"rank {r} called {blob.decode()[:300]} where rank 0 called "
                                          f"{calls[0].decode()[:300]}: every rank must make the same Esper calls")

    def decide_once(self, what: str, decide: Callable[[], Any], snapshot: Callable[[], str],
                    restore: Callable[[str], None]) -> Any:
        """Run ``decide`` (a call into Go that decides or changes the lifecycle) on rank 0 only;
        broadcast its result, or its error, with rank 0's session state; every other rank
        restores that state. Returns the result on every rank, or raises rank 0's error on every
        rank (with its type)."""
        if self.rank == 0:
            try:
                result, error = decide(), None
            except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised on each
                result, error, raised = None, {"type": type(exc).__name__, "message": str(exc)}, exc
            self._t0 = time.perf_counter()
            payload = {"result": result, "error": error, "session": snapshot() if error is None else None}
            self.broadcast_bytes(f"broadcast {what}", json.dumps(payload).encode())
            if error is not None:
                raise raised
        else:
            payload = json.loads(self.broadcast_bytes(f"receive rank 0's {what}", None))
            error = payload["error"]
            if error is not None:
                cls = _error_class(error["type"])
                raise cls(f"(rank 0) {error['message']}")
            try:
                restore(payload["session"])
            except EsperError as exc:
                raise RankDivergenceError(f"rank {self.rank}: Go refused rank 0's session state after {what}: "
                                          f"{exc}") from exc
            result = payload["result"]
        self.decisions += 1
        return result

    def applied(self, what: str) -> None:
        """Every rank has applied the last decision: a barrier; rank 0 records the time since it
        decided (its ``agreement_s``)."""
        self.barrier(f"agree on {what}")
        if self.rank == 0 and hasattr(self, "_t0"):
            self.agreement_s = time.perf_counter() - self._t0
            self.agreement_max_s = max(self.agreement_max_s, self.agreement_s)

    def check_state(self, digest: Mapping[str, Any], when: str) -> None:
        """Compare this rank's Go session digest (``Session.state_hash()``) with every other rank's.

        Raises:
            RankDivergenceError: on every rank, naming the first rank and the first part of the
                session state that differ from rank 0's, with both summaries.
        """
        digests = [json.loads(b) for b in self.all_gather_bytes(
            f"compare session states {when}", json.dumps(digest).encode())]
        self.checks += 1
        ref = digests[0]
        for r, other in enumerate(digests[1:], start=1):
            if other["sha256"] == ref["sha256"]:
                continue
            for a, b in zip(ref["parts"], other["parts"]):
                if a["name"] != b["name"] or a["sha256"] != b["sha256"]:
                    raise RankDivergenceError(
                        f"rank {r}'s session state differs from rank 0's {when}: first difference in "
                        f"{a['name']!r}: rank 0 has {a['summary']}, rank {r} has {b['summary']}. "
                        "The ranks no longer train the same model; stop and resume from the last checkpoint")
            raise RankDivergenceError(f"rank {r}'s session state differs from rank 0's {when}: rank 0 has "
                                      f"{len(ref['parts'])} parts, rank {r} {len(other['parts'])}")

    # ------------------------------------------------------------------ seeds

    def attach_seed(self, key: tuple[int, int], seed: nn.Module) -> None:
        """Make a new seed identical on every rank (its parameters and buffers broadcast from rank 0
        over the training group) and average its gradients during backward: each parameter's
        post-accumulate-grad hook queues, once per backward, a callback that runs when the
        backward pass ends and averages every seed's gradients in one all-reduce per dtype and
        device (so the code between ``backward()`` and ``step()`` sees averaged gradients)."""
        self.detach_seed(key)
        with torch.no_grad():
            for t in list(seed.parameters()) + list(seed.buffers()):
                self._collective("broadcast a new seed's weights", lambda t=t: dist.broadcast(t.data, 0))
        params = list(seed.parameters())
        self._params[key] = params
        self._hooks[key] = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]

    def _grad_ready(self, _: torch.Tensor) -> None:
        """A seed parameter's gradient was accumulated: average them all when this backward ends."""
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._average_grads)

    def _average_grads(self) -> None:
        """Average every seed gradient across ranks: one all-reduce per (device, dtype), in the
        seeds' (layer, slot) order, the same on every rank."""
        self._queued = False
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for key in sorted(self._params):
            for p in self._params[key]:
                if p.grad is not None:
                    groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            if self.backend == "nccl":
                self._collective("average the seeds' gradients",
                                 lambda flat=flat: dist.all_reduce(flat, op=dist.ReduceOp.AVG))
            else:  # gloo has no AVG
                self._collective("average the seeds' gradients", lambda flat=flat: dist.all_reduce(flat))
                flat.div_(self.world)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def detach_seed(self, key: tuple[int, int]) -> None:
        """Remove a seed's gradient hooks (it left the model)."""
        for handle in self._hooks.pop(key, []):
            handle.remove()
        self._params.pop(key, None)

    def broadcast_buffers(self, modules: Sequence[nn.Module]) -> None:
        """Rank 0's buffers (BatchNorm statistics) of the seeds on every rank."""
        with torch.no_grad():
            for module in modules:
                for t in module.buffers():
                    self._collective("broadcast seed buffers", lambda t=t: dist.broadcast(t.data, 0))

    def stats(self) -> dict[str, Any]:
        """The ranks, the decisions broadcast, the digests compared and the agreement times."""
        return {"rank": self.rank, "world": self.world, "backend": self.backend, "decisions": self.decisions,
                "state_checks": self.checks, "agreement_s": self.agreement_s,
                "agreement_max_s": self.agreement_max_s, "rank_timeout": self.timeout}

    def close(self) -> None:
        """Remove every hook (the group is left to the process group's teardown)."""
        for key in list(self._hooks):
            self.detach_seed(key)
