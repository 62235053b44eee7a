"""Oona: a run's events, published on a bus in Go and kept in the run log.

Every :class:`~esper.Morphogenesis` run opens an Oona bus for its run id and attaches its Go
session to it: the session publishes every lifecycle transition, decision (with its reason),
seed failure, alarm, the end of each epoch (losses, metric, parameters, seeds by state) with the
health statistics, and the run's start, resume and end; the trainer adds the artifacts it
publishes to Urza. The bus's run log appends each event as one JSON line to
``$ESPER_HOME/runs/<run>/events.jsonl``: always on, readable up to its last complete line after a
crash, rotated at a size bound. The schema is in ``docs/events.md``::

    events = esper.oona.read_events(morph.run_id)
    [e["data"]["to"] for e in events if e["kind"] == "lifecycle"]

From the shell: ``esper runs`` lists the runs, ``esper events RUN`` prints one's events.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from collections.abc import Iterable, Iterator
from ctypes import byref, c_void_p
from pathlib import Path
from typing import Any

from . import _lib

__all__ = ["Oona", "NatsFollower", "SCHEMA_VERSION", "KINDS", "ACTORS", "decode_event", "runs_root", "run_dir",
           "log_files", "read_events", "iter_events", "runs", "measure", "measure_nats", "nats_server",
           "serve_command"]

#: The event schema version this package reads (``"v"`` of every event; docs/events.md).
SCHEMA_VERSION = 1
#: Event kinds (core/oona is the source; docs/events.md describes each one's data).
KINDS = ("run", "lifecycle", "decision", "failure", "alarm", "epoch", "health", "artifact", "impact", "policy")
#: Who took the action an event reports.
ACTORS = ("policy", "governor", "manual", "schedule", "breaker", "trainer", "system", "nissa")


def _finite(obj: Any) -> Any:
    """Non-finite floats as the strings JSON can carry ("NaN", "Infinity", "-Infinity")."""
    if isinstance(obj, float) and obj != obj:
        return "NaN"
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class Oona(_lib.Handle):
    """One run's event bus (in Go) with its run log.

    Args:
        run: the run id (1 to 128 of letters, digits, ``_`` and ``-``).
        rank: the process's rank in a multi-process run.
        root: the runs root (default ``$ESPER_HOME/runs``, see :func:`runs_root`); the log goes
            to ``<root>/<run>/events.jsonl`` (``events.rank<k>.jsonl`` for rank k > 0).
        max_bytes: the size at which the log rotates (0: 64 MiB; at least 4096).
        keep: rotated files kept (0: 4; negative: none, only the current file).
        nats: also publish every event to NATS (subjects ``esper.v1.<run>.<rank>.<kind>``) and store
            it in the JetStream stream ``ESPER_EVENTS``, deduplicated by event id: {"url", and
            optionally "creds", "user", "password", "token", "ca", "cert", "key",
            "allow_plaintext", "stream", "buffer"} (see docs/events.md, "NATS"). None: no NATS.

    Raises:
        esper.InvalidArgumentError: a bad run id or setting.
        esper.StorageError: the run directory or log cannot be created.
    """

    _free_symbol = "esper_oona_free"

    def __init__(self, run: str, rank: int = 0, root: str | os.PathLike[str] | None = None, *,
                 max_bytes: int = 0, keep: int = 0, nats: dict[str, Any] | None = None) -> None:
        config: dict[str, Any] = {"run": run, "rank": rank, "home": str(root) if root else "",
                                  "log": {"max_bytes": max_bytes, "keep": keep}}
        if nats:
            config["nats"] = nats
        if not root:
            _lib.refresh_settings()  # ESPER_HOME as os.environ holds it now
        out = ctypes.c_uint64()
        _lib.check(_lib.lib().esper_oona_new(json.dumps(config).encode(), byref(out)))
        super().__init__(out.value)
        self.run = run
        self.rank = rank

    def stats(self) -> dict[str, Any]:
        """The bus's counts (published, delivered, dropped, per subscriber), the run log's (path,
        lines, bytes, rotations, syncs, dropped, lost, error) and, with NATS, the transport's under
        "nats" (url, connected, sent, retries, unsent, dropped, pending, reconnects, last_error)."""
        out = c_void_p()
        h = self.handle
        _lib.check(_lib.lib().esper_oona_stats(h, byref(out)), h)
        return _lib.take_json(out)

    @property
    def path(self) -> Path:
        """The run log's current file."""
        return Path(self.stats()["log"]["path"])

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every event published so far is written to the OS (a killed process keeps
        it), at most ``timeout`` seconds.

        Raises:
            esper.UnavailableError: not done in time (nothing is lost; the writer goes on).
            esper.StorageError: a write failed.
        """
        h = self.handle
        _lib.check(_lib.lib().esper_oona_flush(h, max(1, int(timeout * 1000))), h)

    def publish(self, kind: str, actor: str, data: dict[str, Any] | None = None, *, step: int = 0,
                epoch: int = 0) -> None:
        """Publish one event (kind in :data:`KINDS`, actor in :data:`ACTORS`, data a JSON object).

        Raises:
            esper.InvalidArgumentError: an unknown kind or actor, or data that is not an object.
        """
        h = self.handle
        doc = json.dumps(_finite(data), allow_nan=False).encode() if data is not None else None
        _lib.check(_lib.lib().esper_oona_publish(h, kind.encode(), actor.encode(), step, epoch, doc), h)


def decode_event(raw: bytes | str | Any) -> dict[str, Any]:
    """One event from a run log line or a NATS message (the same JSON line), or an already parsed
    object: the event as a dict, checked to be one (an object with "id" and "kind").

    Raises:
        ValueError: not an event (not JSON, or not an event object).
    """
    ev = json.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    if not isinstance(ev, dict) or "id" not in ev or "kind" not in ev:
        raise ValueError("not an event")
    return ev


class NatsFollower(_lib.Handle):
    """Follows a run's events from a NATS server, as another process or machine sees them (Go's
    subscriber, core/oona/natsink): from the JetStream stream when the server has it (the run from
    its first event, then live), else from the core subjects (live events from now on).

    Args:
        url: the server (``nats://host:port``, ``tls://...``).
        run: the run id: follows the subjects ``esper.v1.<run>.<rank>.>``.
        rank: which rank's events.
        subject: another subject to follow instead of a run's (NATS wildcards allowed).
        options: the connection options of :class:`Oona`'s ``nats`` ("creds", "user", "password",
            "token", "ca", "cert", "key", "allow_plaintext", "stream", "buffer").

    Raises:
        esper.InvalidArgumentError: a bad setting, neither or both of run and subject, or a
            plaintext url to a host other than loopback without ``allow_plaintext``.
    """

    _free_symbol = "esper_oona_follow_free"

    def __init__(self, url: str, run: str | None = None, *, rank: int = 0, subject: str | None = None,
                 **options: Any) -> None:
        config: dict[str, Any] = {"url": url, **options}
        if run is not None:
            config.update(run=run, rank=rank)
        if subject is not None:
            config["subject"] = subject
        out = ctypes.c_uint64()
        _lib.check(_lib.lib().esper_oona_follow_new(json.dumps(config).encode(), byref(out)))
        super().__init__(out.value)
        self.state: dict[str, Any] = {}

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The events received since the last call, oldest first, waiting at most ``timeout``
        seconds for the first. :attr:`state` then holds the follower's state: {"mode" ("jetstream",
        "core", "" before connecting), "connected", "received", "skipped", "dropped", "pending"
        (stream messages not yet received; 0: caught up; -1: not known), "url", "subject",
        "stream", "last_error"}."""
        out = c_void_p()
        h = self.handle
        _lib.check(_lib.lib().esper_oona_follow_poll(h, max(0, min(60_000, int(timeout * 1000))), byref(out)), h)
        batch = _lib.take_json(out)
        events = []
        for raw in batch.pop("events"):
            try:
                events.append(decode_event(raw))
            except ValueError:
                batch["skipped"] = batch.get("skipped", 0) + 1
        self.state = batch
        return events


def measure(events: int, subscribers: int, log_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Go's measurement of the bus (``make bench``): ``events`` lifecycle events published to
    ``subscribers`` draining subscribers (and a run log under ``log_dir`` when given), timed until
    all are received: {"events", "seconds", "cpu_seconds", "events_per_s" (per CPU second of the
    process), "wall_events_per_s", "delivered", "dropped", ...}."""
    out = c_void_p()
    d = str(log_dir).encode() if log_dir else None
    _lib.check(_lib.lib().esper_oona_measure(events, subscribers, d, byref(out)))
    return _lib.take_json(out)


def measure_nats(url: str, events: int) -> dict[str, Any]:
    """Go's measurement of the NATS transport (``make bench``): ``events`` events published one at a
    time to the server at ``url`` (stored in JetStream), each timed until a second connection
    receives it: {"events", "p50_us", "p99_us", "max_us"}."""
    out = c_void_p()
    _lib.check(_lib.lib().esper_oona_measure_nats(url.encode(), events, byref(out)))
    return _lib.take_json(out)


def runs_root() -> Path:
    """The default runs root, ``$ESPER_HOME/runs`` (``~/.esper/runs`` without ESPER_HOME), as Go
    decides it."""
    _lib.refresh_settings()
    out = c_void_p()
    _lib.check(_lib.lib().esper_oona_runs_root(byref(out)))
    return Path(_lib.take_string(out))


def run_dir(run: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The directory of run ``run`` under ``root`` (default :func:`runs_root`)."""
    return Path(root) / run if root else runs_root() / run


def _stem(rank: int) -> str:
    return "events" if rank == 0 else f"events.rank{rank}"


def log_files(run: str, *, rank: int = 0, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The run log's files of one rank, oldest first: the rotated ones (``events.<n>.jsonl``,
    highest n first), then the current ``events.jsonl``. Empty when the run has none.

    Raises:
        FileNotFoundError: no directory for the run (the message names where it looked).
    """
    d = run_dir(run, root)
    if not d.is_dir():
        raise FileNotFoundError(f"no run {run!r}: {d} does not exist (see `esper runs`, or pass root=)")
    stem = _stem(rank)
    pattern = re.compile(re.escape(stem) + r"\.(\d+)\.jsonl$")
    rotated = sorted(((int(m.group(1)), p) for p in d.iterdir() if (m := pattern.match(p.name))), reverse=True)
    files = [p for _, p in rotated]
    current = d / f"{stem}.jsonl"
    if current.exists():
        files.append(current)
    return files


def iter_events(run: str, *, rank: int = 0, root: str | os.PathLike[str] | None = None,
                kinds: Iterable[str] | None = None, strict: bool = False) -> Iterator[dict[str, Any]]:
    """The run's events, oldest first (see :func:`read_events`)."""
    wanted = set(kinds) if kinds is not None else None
    for path in log_files(run, rank=rank, root=root):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    ev = decode_event(raw)
                except ValueError as exc:
                    if strict:
                        raise ValueError(f"{path}:{n}: not an event ({exc}); a line cut by a crash is "
                                         "skipped with strict=False") from None
                    continue
                if ev.get("v", 0) > SCHEMA_VERSION and strict:
                    raise ValueError(f"{path}:{n}: event schema v{ev['v']} is newer than this esper's "
                                     f"v{SCHEMA_VERSION}: upgrade esper")
                if wanted is None or ev["kind"] in wanted:
                    yield ev


def read_events(run: str, *, rank: int = 0, root: str | os.PathLike[str] | None = None,
                kinds: Iterable[str] | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Read a run's log: its events, oldest first, as dicts ({"v", "id", "seq", "run", "rank",
    "step", "epoch", "time", "kind", "actor", "data"}; docs/events.md).

    Args:
        run: the run id (``morph.run_id``; ``esper runs`` lists them).
        rank: which rank's log.
        root: the runs root (default :func:`runs_root`).
        kinds: only events of these kinds.
        strict: raise on a line that is not an event (by default such a line, which only a crash
            in the middle of a write leaves, is skipped).

    Raises:
        FileNotFoundError: no such run.
        ValueError: with ``strict``, a line that is not an event.
    """
    return list(iter_events(run, rank=rank, root=root, kinds=kinds, strict=strict))


def runs(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """A summary of every run under ``root`` (default :func:`runs_root`), oldest first by id:
    {"run", "events", "epochs", "lifecycle", "ended" (the run's end event was logged), "first",
    "last" (times), "path"}."""
    base = Path(root) if root else runs_root()
    if not base.is_dir():
        return []
    out = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        summary: dict[str, Any] = {"run": d.name, "events": 0, "epochs": 0, "lifecycle": 0, "ended": False,
                                   "first": None, "last": None, "path": str(d)}
        try:
            for ev in iter_events(d.name, root=base):
                summary["events"] += 1
                summary["first"] = summary["first"] or ev.get("time")
                summary["last"] = ev.get("time")
                if ev["kind"] == "epoch":
                    summary["epochs"] += 1
                elif ev["kind"] == "lifecycle":
                    summary["lifecycle"] += 1
                elif ev["kind"] == "run":
                    summary["ended"] = (ev.get("data") or {}).get("phase") == "end"
        except OSError:
            continue
        out.append(summary)
    return out


def nats_server() -> Path:
    """The NATS server binary: ``$ESPER_NATS_SERVER``, else ``build/bin/esper-nats`` of the source
    tree this package runs from (``make nats-server`` builds it from the nats-server Go module
    pinned in go.mod), else ``nats-server`` on the PATH.

    Raises:
        FileNotFoundError: none found; the message says how to get one.
    """
    import shutil

    tried = []
    env = os.environ.get("ESPER_NATS_SERVER")
    if env:
        if Path(env).is_file():
            return Path(env)
        tried.append(f"{env} (ESPER_NATS_SERVER)")
    built = Path(__file__).resolve().parent.parent.parent / "build" / "bin" / "esper-nats"
    if built.is_file():
        return built
    tried.append(str(built))
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    tried.append("nats-server on the PATH")
    raise FileNotFoundError("no NATS server: tried " + ", ".join(tried) + ". Run `make nats-server` in the "
                            "source tree, or point ESPER_NATS_SERVER at a nats-server binary.")


def serve_command(host: str = "127.0.0.1", port: int = 4222, store: str | os.PathLike[str] | None = None,
                  allow_remote: bool = False) -> list[str]:
    """The command line of a local NATS server with JetStream for Esper's runs (``esper oona
    serve``): listening on host:port, storing streams in ``store`` (default ``$ESPER_HOME/oona``).

    Raises:
        ValueError: a host other than loopback without ``allow_remote`` (the server then accepts
            plaintext connections from the network).
    """
    import ipaddress

    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback and not allow_remote:
        raise ValueError(f"host {host!r} is not loopback: the server would accept plaintext connections from the "
                         "network; pass allow_remote (--allow-remote) to do it anyway, ideally with TLS and "
                         "authorization in a nats-server config")
    if store is None:
        store = runs_root().parent / "oona"
    return [str(nats_server()), "-a", host, "-p", str(port), "-js", "-sd", str(store)]
