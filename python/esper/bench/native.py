"""Rows about the Go core: the session step call, the kernel cache, artifact loading and decisions,
each measured twice where it can be: inside Go (``go test -bench``, when the Go toolchain and the
sources are present) and through the C ABI from Python (ctypes, JSON and copies included)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..kasmina import SIGNALS
from ..session import Session
from ..tezzeret import build_seed, save_weights
from .rows import Row, samples_row, value_at_least, value_at_most

__all__ = ["GoBench", "go_benchmarks", "session_rows", "cache_rows", "decision_rows", "learned_rows", "ppo_rows",
           "repo_root"]

#: Go benchmarks the bench reads: name -> package.
GO_BENCHMARKS = {
    "GetHit": "./core/cache",
    "Get1MB": "./core/urza",
    "Put1MB": "./core/urza",
    "DecideGerminate": "./policy/tamiyo",
    "LearnedDecide": "./policy/tamiyo",
    "PPODecide": "./core/session",
    "GraphForward": "./core/gnn",
    "GraphForwardWarm": "./core/gnn",
    "Step8Layers": "./core/session",
    "EndEpoch": "./core/session",
    "EndEpochGerminateABI": "./core/session",
    "MetricsText": "./core/session",
    "SessionMemory": "./core/session",
}
_LINE = re.compile(r"^Benchmark(\w+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op")
_METRIC = re.compile(r"\s([\d.]+) (\S+)")

CACHE_HIT = value_at_most(1.0, "<= 1 us")
ARTIFACT = value_at_most(10.0, "<= 10 ms")
DECISION = value_at_most(100.0, "< 100 us", strict=True)
LEARNED = value_at_most(1000.0, "< 1 ms", strict=True)


def repo_root() -> Path | None:
    """The source checkout this package runs from (the folder holding go.mod), or None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "go.mod").is_file() and (parent / "core").is_dir():
            return parent
    return None


class GoBench:
    """Results of one ``go test -bench`` run: benchmark name -> ns/op of each -count run.

    Attributes:
        results: name (without "Benchmark" and the -N suffix) -> ns/op per run.
        why_not: why nothing was measured ("" when the run happened).
        command: the command line run.
    """

    def __init__(self, results: dict[str, list[float]], why_not: str = "", command: str = "") -> None:
        self.results = results
        self.why_not = why_not
        self.command = command

    def row(self, section: str, name: str, bench: str, unit: str, target: Any, note: str) -> Row:
        """A row of one benchmark's ns/op converted to ``unit`` ("ns", "us" or "ms")."""
        scale = {"ns": 1.0, "us": 1e-3, "ms": 1e-6, "bytes": 1.0, "allocs": 1.0}[unit]
        runs = self.results.get(bench)
        if not runs:
            why = self.why_not or f"Benchmark{bench} did not report"
            return Row(section, name, "cpu", unit, None, target=target.text if target else "", source="Go benchmark",
                       note=f"not measured: {why}")
        base = bench.split(":")[0]
        return samples_row(section, name, "cpu", [r * scale for r in runs], unit, target=target,
                           source="Go benchmark", note=f"Benchmark{base} in {GO_BENCHMARKS[base]}; {note}")


def parse_go_bench(text: str) -> dict[str, list[float]]:
    """Benchmark name -> ns/op values from ``go test -bench`` output; the other figures a line
    reports (``cpu-ns/op``, ``B/op``, a benchmark's own metrics) go under ``<name>:<unit>``."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.setdefault(m.group(1), []).append(float(m.group(2)))
            for value, unit in _METRIC.findall(line.strip()[m.end():]):
                out.setdefault(f"{m.group(1)}:{unit}", []).append(float(value))
    return out


def go_benchmarks(benchtime: str = "200ms", count: int = 5, timeout_s: float = 240.0) -> GoBench:
    """Runs the Go benchmarks of :data:`GO_BENCHMARKS` once (all packages in one ``go test``)."""
    go = shutil.which("go")
    root = repo_root()
    if go is None:
        return GoBench({}, "the Go toolchain is not on PATH")
    if root is None:
        return GoBench({}, "the Go sources are not beside this package (an installed wheel)")
    pattern = "^Benchmark(" + "|".join(GO_BENCHMARKS) + ")$"
    packages = sorted(set(GO_BENCHMARKS.values()))
    cmd = [go, "test", "-run", "^$", "-bench", pattern, "-benchtime", benchtime, "-count", str(count), *packages]
    shown = " ".join(["go", *cmd[1:]])
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return GoBench({}, f"{shown}: {e}", shown)
    results = parse_go_bench(proc.stdout)
    if proc.returncode != 0 and not results:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return GoBench({}, f"{shown} failed: {' / '.join(tail)}", shown)
    return GoBench(results, "", shown)


def _rounds(fn: Callable[[], object], inner: int, rounds: int) -> list[float]:
    """CPU seconds of this process per call of fn, over ``rounds`` blocks of ``inner`` calls (after
    an untimed tenth of a block). CPU time, not wall time: on a shared machine the wall clock also
    counts the time other work holds the cores."""
    for _ in range(max(1, inner // 10)):
        fn()
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(inner):
            fn()
        out.append((time.process_time() - start) / inner)
    return out


def _named(figure: float | None, name: str) -> str:
    return name if figure is not None else ""


def _go_figure(go: GoBench, bench: str, scale: float) -> float | None:
    runs = go.results.get(bench)
    return statistics.median(runs) * scale if runs else None


# ---------------------------------------------------------------------- session step


def _linear_layers(n: int) -> list[dict[str, Any]]:
    return [{"name": f"fc{i}", "kind": "linear", "in": 64, "out": 64, "params": 64 * 64 + 64} for i in range(n)]


def session_rows(go: GoBench, rounds: int, inner: int = 5000) -> list[Row]:
    """esper_session_step with signals for 8 layers: inside Go and through Session.step."""
    cfg = {"layers": _linear_layers(8), "slots_per_layer": 2, "policy": "manual", "train_steps": 1 << 30,
           "governor": {"max_concurrent": 64}}
    with Session(cfg) as s:
        for layer in range(8):  # as the Go benchmark: a lowrank seed live in every layer
            s.germinate(layer, 0, {"template": "lowrank"})
        s.step(2)
        s.events()
        signals = (0.5 + 0.1 * (np.arange(2 + len(SIGNALS) * 8) % 5)).astype(np.float32)
        signals[1] = 0.0
        samples = [t * 1e6 for t in _rounds(lambda: s.step(1, signals), inner, rounds)]
    in_go = _go_figure(go, "Step8Layers", 1e-3)
    return [
        go.row("abi", "session step, 8 layers + signals (in Go)", "Step8Layers", "us", None,
               "Session.Step with 50 floats, 16 slots, a lowrank seed live per layer"),
        samples_row("abi", "session step, 8 layers + signals (Session.step)", "cpu", samples, "us", target=None,
                    source="ABI", baseline=in_go, baseline_name=_named(in_go, "the same step inside Go (Go benchmark)"),
                    note="esper_session_step through ctypes: 50 float32 in, 16 alphas out, as the Go benchmark"),
    ]


# ---------------------------------------------------------------------- Oona bus


def bus_rows(rounds: int, quick: bool = False) -> list[Row]:
    """The Oona bus in process: events published to 2 draining subscribers, timed in Go until all are
    received (esper_oona_measure); and the same with the run log writing to a temporary folder."""
    import tempfile

    from .. import oona

    events = 20_000 if quick else 100_000
    bus = [oona.measure(events, 2) for _ in range(rounds)]
    with tempfile.TemporaryDirectory(prefix="esper-bench-oona-") as d:
        logged = [oona.measure(events, 1, d) for _ in range(rounds)]
    cpu = "events per CPU second of the process (every thread), as the other CPU rows; wall figures in extra"
    rows = [
        samples_row("bus", "Oona bus in process, 2 subscribers", "cpu", [m["events_per_s"] for m in bus], "events/s",
                    target=value_at_least(200_000, ">= 200K events/s"), source="ABI",
                    note=f"{events} lifecycle events per round, published and received in Go (esper_oona_measure); "
                         + cpu, extra={"wall_events_per_s": [m["wall_events_per_s"] for m in bus]}),
        samples_row("bus", "Oona bus + run log (events.jsonl), 1 subscriber", "cpu",
                    [m["events_per_s"] for m in logged], "events/s", target=None, source="ABI",
                    note=f"{events} events per round until the run log has written them to the OS; " + cpu,
                    extra={"wall_events_per_s": [m["wall_events_per_s"] for m in logged]}),
    ]
    return rows + _nats_rows(rounds, 200 if quick else 2000)


@contextlib.contextmanager
def local_nats() -> Iterator[str]:
    """A local nats-server (build/bin/esper-nats; ``esper oona serve``'s command) with JetStream in a
    temporary folder, on a free loopback port, for the time of the block: yields its URL."""
    import socket

    from .. import oona

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="esper-bench-nats-") as d:
        proc = subprocess.Popen(oona.serve_command("127.0.0.1", port, d), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the NATS server did not start") from None
                    time.sleep(0.05)
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait()


def _nats_rows(rounds: int, events: int) -> list[Row]:
    """Publish-to-receive latency through a local nats-server (build/bin/esper-nats, started here on
    loopback with JetStream in a temporary folder): p99 per round."""
    from .. import oona

    with local_nats() as url:
        measured = [oona.measure_nats(url, events) for _ in range(rounds)]
    p99 = [m["p99_us"] for m in measured]
    return [samples_row("bus", "Oona through local NATS (JetStream), publish to receive, p99", "cpu", p99, "us",
                        target=value_at_most(2000, "p99 < 2 ms", strict=True), source="ABI",
                        note=f"{events} events per round, one at a time: Bus.Publish until a second connection "
                             "receives it; each stored in JetStream on the way",
                        extra={"p50_us": [m["p50_us"] for m in measured], "max_us": [m["max_us"] for m in measured]})]


# ---------------------------------------------------------------------- cache and artifacts


def _stored_seed(store: Any) -> tuple[str, int]:
    """Publishes a ~1 MB seed (residual_mlp 512 -> 256 -> 512, non-zero weights) into store."""
    from .. import karn
    from ..urza import publish_seed

    ir = karn.instantiate("residual_mlp", {"kind": "linear", "in": 512, "out": 512}, width=256)
    torch.manual_seed(0)
    seed = build_seed(ir)
    with torch.no_grad():
        for p in seed.parameters():  # a trained seed, not a fresh one: the zero-initialised op too
            p.normal_(std=0.02)
    return publish_seed(store, seed, tags=["bench"]), len(save_weights(seed))


def cache_rows(go: GoBench, rounds: int, quick: bool = False) -> list[Row]:
    """Kernel cache and 1 MB artifact: inside Go, and through the Python bindings (esper.urza,
    esper.kernels) into the ABI."""
    from ..kernels import KernelCache
    from ..urza import Urza, load_seed

    with tempfile.TemporaryDirectory(prefix="esper-bench-urza-") as root, Urza(root) as store, \
            KernelCache(64 << 20) as cache:
        ident, size = _stored_seed(store)
        load = _rounds(lambda: load_seed(store, ident), 3 if quick else 10, rounds)
        cache.get_or_load(store, ident, copy=False)
        want = {"dtype": "float32", "device": "cpu", "shape": [32, 512]}
        go_hit = _rounds(lambda: cache._get(ident, want), 20 if quick else 100, rounds)
        small = "0" * 64  # a 1 KiB entry, as in the Go benchmark
        cache.put_artifact(small, json.dumps({"input_shape": [-1, 64], "dtype": "float32", "device": "cuda"}).encode(),
                           bytes(1024))
        small_want = {"shape": [32, 64], "dtype": "float32", "device": "cuda:0"}
        small_hit = _rounds(lambda: cache._get(small, small_want), 2000 if quick else 20000, rounds)
        module_hit = _rounds(lambda: cache.get_or_load(store, ident, copy=False), 2000 if quick else 20000, rounds)

        def rebuild() -> None:
            cache.clear_modules()
            cache.get_or_load(store, ident, copy=False)

        from_cache = _rounds(rebuild, 3 if quick else 10, rounds)
        stats = cache.stats()
    in_go_hit = _go_figure(go, "GetHit", 1e-3)
    in_go_get = _go_figure(go, "Get1MB", 1e-6)
    mb = f"{size / 1e6:.2f} MB"
    return [
        go.row("cache", "cache hit (in Go)", "GetHit", "us", CACHE_HIT,
               "1 KiB entry among 1000, shape/dtype/device compatibility checked"),
        samples_row("cache", "cache hit via ABI, 1 KiB entry (KernelCache lookup)", "cpu",
                    [t * 1e6 for t in small_hit], "us", target=None, source="ABI", baseline=in_go_hit,
                    baseline_name=_named(in_go_hit, "the same hit inside Go (Go benchmark)"),
                    note="esper_cache_get through esper.kernels' lookup: want JSON in, meta JSON out, the entry "
                         "copied to a C buffer then to bytes, two esper_free; the <= 1 us bar is for Go"),
        samples_row("cache", "cache hit via ABI, 1 MB artifact (KernelCache lookup)", "cpu",
                    [t * 1e3 for t in go_hit], "ms", target=None, source="ABI",
                    note=f"as above with the {mb} artifact: the bytes are copied out on every hit"),
        samples_row("cache", "cache hit, built module (KernelCache.get_or_load)", "cpu",
                    [t * 1e6 for t in module_hit], "us", target=None, source="python",
                    note="copy=False: a Python dict hit, no call into Go, no rebuild"),
        samples_row("cache", "1 MB artifact from the Go cache + build (get_or_load)", "cpu",
                    [t * 1e3 for t in from_cache], "ms", target=None, source="ABI",
                    note=f"modules cleared each time: Go hit, {mb} copied out, seed built on meta and filled; "
                         f"stats after: {stats.get('hits')} Go hits, {stats.get('builds')} builds"),
        go.row("cache", "artifact 1 MB load + verify (in Go)", "Get1MB", "ms", None,
               "urza.Store.Get: read manifest + weights, re-hash both"),
        go.row("cache", "artifact 1 MB put, fsync (in Go)", "Put1MB", "ms", None, "urza.Store.Put, atomic write"),
        samples_row("cache", "artifact 1 MB load + verify + build (urza.load_seed)", "cpu", [t * 1e3 for t in load],
                    "ms", target=ARTIFACT, source="ABI", baseline=in_go_get,
                    baseline_name=_named(in_go_get, "load + verify alone inside Go (Go benchmark)"),
                    note=f"esper.urza.load_seed: Go reads and re-hashes both files, manifest JSON, IR built on "
                         f"meta by Tezzeret, safetensors ({mb}, residual_mlp 512->256->512) copied in, CPU"),
    ]


def germination_rows(rounds: int, quick: bool = False) -> list[Row]:
    """A germination's build: validated and recorded in Urza (the first of its blueprint on its host)
    against served by the kernel cache (every later one), residual_mlp 512 -> 256 -> 512 on CPU."""
    from .. import karn
    from ..builds import BUILD_TAG, BuildCache, clear_kernel_cache
    from ..urza import Urza

    ir = karn.instantiate("residual_mlp", {"kind": "linear", "in": 512, "out": 512}, width=256)
    torch.manual_seed(0)
    seed = build_seed(ir)
    with tempfile.TemporaryDirectory(prefix="esper-bench-builds-") as root, Urza(root) as store:
        builds = BuildCache(lambda: store, lambda: {"run": "bench"})

        def built() -> None:
            clear_kernel_cache()
            for entry in store.list(tag=BUILD_TAG):
                store.delete(entry["id"])
            builds.admit(seed, layer=0, slot=0, step=0)

        def served() -> None:
            builds.admit(seed, layer=0, slot=0, step=0)

        built_t = _rounds(built, 2 if quick else 5, rounds)
        served_t = _rounds(served, 20 if quick else 200, rounds)
        stats = builds.stats()
    clear_kernel_cache()
    built_ms = statistics.median(built_t) * 1e3
    return [
        samples_row("cache", "germination build: validated + recorded in Urza (first of a blueprint)", "cpu",
                    [t * 1e3 for t in built_t], "ms", target=None, source="ABI",
                    note="BuildCache.admit: Tezzeret's checks (forward, zero output, finite backward, parameter "
                         "count), Karn's shapes, manifest + initial weights put into Urza (fsync), kernel cache "
                         "filled; residual_mlp 512->256->512, CPU"),
        samples_row("cache", "germination build: served by the kernel cache (later ones)", "cpu",
                    [t * 1e3 for t in served_t], "ms", target=None, source="ABI", baseline=built_ms,
                    baseline_name="validated + recorded (the row above)",
                    note=f"BuildCache.admit: one esper_cache_get (the entry's bytes copied out), no validation; "
                         f"stats after: {stats['hits']} hits, {stats['builds']} builds"),
    ]


# ---------------------------------------------------------------------- decisions


def _plateau_session(snapshot: str | None = None) -> Session:
    """A heuristic session (8 layers x 2 slots) one epoch before it germinates (from a snapshot of
    one when given)."""
    cfg = {"layers": _linear_layers(8), "slots_per_layer": 2, "policy": "heuristic", "controller": {"patience": 2}}
    s = Session(cfg)
    if snapshot is not None:
        s.restore(snapshot)
        return s
    signals = np.full(2 + len(SIGNALS) * 8, 0.5, dtype=np.float32)
    signals[1] = 0.0
    for layer in range(8):
        signals[2 + len(SIGNALS) * layer + SIGNALS.index("seed_gain")] = float(layer + 1)  # a clear growth signal
    s.step(1, signals)
    for epoch in range(2):
        s.end_epoch({"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []})
    return s


def _decision_samples(rounds: int, inner: int) -> tuple[dict[str, list[float]], str, dict[str, Any]]:
    """CPU seconds per Session.end_epoch that germinates: each call on its own session, all made
    (from one snapshot) before the round is timed, so no set-up garbage is collected inside it.
    Each round times the whole call ("call"), then on fresh sessions its parts: the ABI call with
    the metrics encoded and the result left as bytes ("abi"), and json.loads of those results
    ("decode"). Returns the samples, the decision's op and one GERMINATED event."""
    from .. import _lib

    first = _plateau_session()
    snap = first.snapshot()
    first.close()
    metrics = {"epoch": 2, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}
    cdll = _lib.lib()
    op = ""
    event: dict[str, Any] = {}
    out: dict[str, list[float]] = {"call": [], "abi": [], "decode": []}
    for r in range(rounds + 1):
        sessions = [_plateau_session(snap) for _ in range(inner)]
        start = time.process_time()
        for s in sessions:
            result = s.end_epoch(metrics)
        call = time.process_time() - start
        op = result["decisions"][0]["op"]
        event = next((e for e in result["events"] if e["to"] == "GERMINATED"), event)
        for s in sessions:
            s.close()
        sessions = [_plateau_session(snap) for _ in range(inner)]
        texts = []
        start = time.process_time()
        for s in sessions:
            ptr = ctypes.c_void_p()
            h = s.handle
            _lib.check(cdll.esper_session_end_epoch(h, json.dumps(metrics).encode(), ctypes.byref(ptr)), h)
            texts.append(ctypes.string_at(ptr.value))
            cdll.esper_free(ptr)
        abi = time.process_time() - start
        for s in sessions:
            s.close()
        start = time.process_time()
        for text in texts:
            json.loads(text)
        decode = time.process_time() - start
        if r:  # the first round warms up
            out["call"].append(call / inner)
            out["abi"].append(abi / inner)
            out["decode"].append(decode / inner)
    return out, op, event


def _seed_build_samples(event: dict[str, Any], rounds: int, inner: int) -> list[float]:
    """CPU seconds to build the seed of a GERMINATED event as the trainer does (Tolaria's _build):
    the torch generator forked and seeded, Tezzeret's build_seed on Go's IR and id."""
    ir, ident = event["blueprint"], str(event["blueprint_id"])

    def build() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            build_seed(ir, blueprint_id=ident)

    return _rounds(build, inner, rounds)


def decision_rows(go: GoBench, rounds: int, quick: bool = False) -> list[Row]:
    """Heuristic decision latency inside Go and through Session.end_epoch, the ABI call's part of it
    (in Go and through ctypes), Python's part (the result's JSON decoded), and the seed module that
    the GERMINATED event makes the trainer build (Tezzeret)."""
    samples, op, event = _decision_samples(rounds, 30 if quick else 150)
    in_go = _go_figure(go, "DecideGerminate", 1e-3)
    abi_go = _go_figure(go, "EndEpochGerminateABI:cpu-ns/op", 1e-3)
    rows = [
        go.row("decision", "heuristic decision, germinate (in Go)", "DecideGerminate", "us", DECISION,
               "tamiyo.Controller.Decide on 8 layers x 2 slots after a plateau"),
        go.row("decision", "end of epoch (in Go)", "EndEpoch", "us", DECISION,
               "session.EndEpoch: metrics in, decide, apply, events out (heuristic, improving loss)"),
        samples_row("decision", f"end_epoch -> {op}, decided and applied (Session.end_epoch)", "cpu",
                    [t * 1e6 for t in samples["call"]], "us", target=DECISION, source="ABI", baseline=in_go,
                    baseline_name=_named(in_go, "the decision alone inside Go (Go benchmark)"),
                    note="8 layers x 2 slots, heuristic, on a plateau: metrics JSON in; Tamiyo decides, the session "
                         "germinates (template instantiated, IR canonicalised and hashed); decision + GERMINATED "
                         "event with its blueprint JSON out"),
        go.row("decision", "end_epoch -> germinate, the ABI call's work (in Go, CPU time)",
               "EndEpochGerminateABI:cpu-ns/op", "us", DECISION,
               "what esper_session_end_epoch runs: metrics JSON decoded, EndEpoch, result JSON encoded; the same "
               "session and metrics as the rows beside it; process CPU time"),
        samples_row("decision", f"end_epoch -> {op} through the ABI, result JSON not decoded (ctypes)", "cpu",
                    [t * 1e6 for t in samples["abi"]], "us", target=DECISION, source="ABI", baseline=abi_go,
                    baseline_name=_named(abi_go, "the call's work inside Go (Go benchmark)"),
                    note="the Go + ABI part of Session.end_epoch: metrics json.dumps, esper_session_end_epoch "
                         "through ctypes, the result copied to bytes, esper_free"),
        samples_row("decision", f"end_epoch -> {op}, Python's part: the result JSON decoded (json.loads)", "cpu",
                    [t * 1e6 for t in samples["decode"]], "us", target=None, source="python",
                    note="json.loads of the bytes the row above returned (decisions, events, the seed's IR)"),
    ]
    if event:
        built = _seed_build_samples(event, rounds, 10 if quick else 50)
        rows.append(samples_row(
            "decision", "germination, Python's part: the seed module built from the event (Tezzeret)", "cpu",
            [t * 1e6 for t in built], "us", target=None, source="python",
            note=f"what the trainer does with the GERMINATED event above ({event['blueprint'].get('template')} "
                 f"on a linear 64->64 host, {event.get('param_count')} params): torch's generator forked and "
                 "seeded, build_seed on Go's IR and id (no Go call); attaching it and the optimizer's group are "
                 "not counted"))
    return rows



def _value_model(folder: Path) -> tuple[str, str]:
    """The value model the learned-decision row runs: the shipped one when the package has it, else
    one of the same architecture as the Go benchmark's (features -> 64 -> 64 -> 1, relu, seeded
    random weights) written to ``folder``. Returns the folder and a note saying which."""
    from safetensors.torch import save_file

    from .. import valuemodel

    if (valuemodel.MODEL_DIR / "manifest.json").is_file():
        return str(valuemodel.MODEL_DIR), "the shipped model (esper/models/value)"
    names = valuemodel.feature_names()
    g = torch.Generator().manual_seed(0)
    sizes = [len(names), 64, 64, 1]
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for i in range(3):
        tensors[f"l{i}.weight"] = torch.randn(sizes[i + 1], sizes[i], generator=g) / sizes[i] ** 0.5
        tensors[f"l{i}.bias"] = torch.zeros(sizes[i + 1])
        layers.append({"weight": f"l{i}.weight", "bias": f"l{i}.bias", "activation": "relu" if i < 2 else "identity"})
    tensors["x_mean"], tensors["x_std"] = torch.zeros(len(names)), torch.ones(len(names))
    save_file(tensors, str(folder / "model.safetensors"))
    manifest = {"kind": "value_mlp", "schema": 1, "features": names, "layers": layers, "x_mean": "x_mean",
                "x_std": "x_std", "target": valuemodel.target(), "training": {"by": "esper.bench (random weights)"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder), "no shipped model: one of its size (features -> 64 -> 64 -> 1) with random weights"


def learned_rows(go: GoBench, rounds: int, quick: bool = False) -> list[Row]:
    """The learned policy's decision latency inside Go and through Session.end_epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        model, which = _value_model(Path(tmp))
        # value_threshold 1e9: every epoch scores every candidate and waits (the most work a decision does).
        cfg = {"layers": _linear_layers(8), "slots_per_layer": 2, "policy": "learned",
               "controller": {"value_model": model, "value_threshold": 1e9, "epochs": 100}}
        metrics = {"train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}
        signals = np.full(2 + len(SIGNALS) * 8, 0.5, dtype=np.float32)
        signals[1] = 0.0
        with Session(cfg) as s:
            s.step(1, signals)
            op = s.end_epoch(metrics)["decisions"][0]["op"]
            samples = _rounds(lambda: s.end_epoch(metrics), 20 if quick else 100, rounds)
    in_go = _go_figure(go, "LearnedDecide", 1e-3)
    return [
        go.row("decision", "learned decision, scores 56 candidates (in Go)", "LearnedDecide", "us", LEARNED,
               "tamiyo.Controller.Decide, policy learned, 8 layers x 2 slots, a features -> 64 -> 64 -> 1 model, "
               "one batched forward"),
        samples_row("decision", f"learned end_epoch -> {op}, every candidate scored (Session.end_epoch)", "cpu",
                    [t * 1e6 for t in samples], "us", target=LEARNED, source="ABI", baseline=in_go,
                    baseline_name=_named(in_go, "the decision alone inside Go (Go benchmark)"),
                    note=f"8 linear 64->64 layers x 2 slots, policy learned with {which}: each end of epoch "
                         "computes every candidate's features (layer x template x size) in Go, predicts them in one "
                         "native forward pass and waits (value_threshold 1e9); metrics JSON in, decision out"),
    ]


def _ppo_model(folder: Path, onnx: bool = False) -> tuple[str, int, int]:
    """A graph policy of the shipped model's size (its manifest's hidden width and rounds; 16 and 2 without
    one) with seeded random weights biased to wait (so that every end of epoch decides once and the run's
    state does not change), written to ``folder`` (with model.onnx when ``onnx`` and the exporter is
    installed). Returns the folder, the width and the rounds."""
    from ..simic.export import save_model
    from ..simic.graph import MODEL_DIR, feature_names
    from ..simic.policy import GraphPolicy

    hidden, rounds = 16, 2
    if (MODEL_DIR / "manifest.json").is_file():
        shipped = json.loads((MODEL_DIR / "manifest.json").read_text())
        hidden, rounds = int(shipped["hidden"]), int(shipped["rounds"])
    with Session({"layers": _linear_layers(1), "slots_per_layer": 1, "policy": "manual"}) as s:
        templates = s.graph()["templates"]
    torch.manual_seed(0)
    policy = GraphPolicy(templates, len(feature_names()["sizes"]), hidden=hidden, rounds=rounds)
    with torch.no_grad():
        policy.op_head[2].bias[0] += 100.0
    save_model(policy, str(folder), {"by": "esper.bench (random weights, biased to wait)"}, onnx=onnx)
    return str(folder), hidden, rounds


def _ppo_session_samples(cfg: dict[str, Any], layers: int, inner: int,
                         rounds: int) -> tuple[list[float], int, str, str]:
    """CPU seconds per Session.end_epoch of a ppo session (``cfg``) on ``layers`` linear layers with a seed in
    every layer's first slot, and the node count, the decision's op and its reason."""
    metrics = {"train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "contributions": []}
    signals = np.full(2 + len(SIGNALS) * layers, 0.5, dtype=np.float32)
    signals[1] = 0.0
    with Session(cfg) as s:
        for layer in range(layers):
            s.germinate(layer, 0, {"template": "lowrank"})
        s.step(1, signals)
        nodes = len(s.graph()["nodes"])
        decision = s.end_epoch(metrics)["decisions"][0]
        samples = _rounds(lambda: s.end_epoch(metrics), inner, rounds)
    return samples, nodes, decision["op"], decision["reason"]


def ppo_rows(go: GoBench, rounds: int, quick: bool = False) -> list[Row]:
    """The ppo policy's decision latency on a 200-node graph: inside Go and through Session.end_epoch, on
    the native forward and on ONNX Runtime (ppo_runtime="onnx")."""
    from ..errors import EsperError

    layers = 100
    inner = 5 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        model, hidden, net_rounds = _ppo_model(Path(tmp), onnx=True)
        cfg = {"layers": _linear_layers(layers), "slots_per_layer": 2, "policy": "ppo", "train_steps": 1 << 30,
               "controller": {"ppo_model": model}, "governor": {"max_concurrent": 2 * layers}}
        samples, nodes, op, _ = _ppo_session_samples(cfg, layers, inner, rounds)
        onnx_samples: list[float] = []
        onnx_op, missing = "", ""
        if not (Path(model) / "model.onnx").is_file():
            missing = "no model.onnx (the onnx and onnxscript packages export it: the dev extras)"
        else:
            try:
                onnx_cfg = {**cfg, "controller": {"ppo_model": model, "ppo_runtime": "onnx"}}
                onnx_samples, _, onnx_op, reason = _ppo_session_samples(onnx_cfg, layers, inner, rounds)
                if "on onnx;" not in reason:
                    raise RuntimeError(f"the decision did not run on ONNX Runtime: {reason}")
            except EsperError as exc:  # no ONNX Runtime library: the row says so
                missing = str(exc)
    in_go = _go_figure(go, "PPODecide:cpu-ns/op", 1e-3)
    native_us = statistics.median(samples) * 1e6
    common = (f"{layers} linear 64->64 layers x 2 slots, a seed in every layer ({nodes} graph nodes), "
              f"policy ppo with a network of the shipped model's size (hidden {hidden}, {net_rounds} rounds, "
              "random weights biased to wait, so each end of epoch makes one decision): Go builds the graph, "
              "encodes it, ")
    if onnx_samples:
        onnx_row = samples_row(
            "decision", f"ppo end_epoch -> {onnx_op}, {nodes}-node graph, ppo_runtime onnx (Session.end_epoch)",
            "cpu", [t * 1e6 for t in onnx_samples], "us", target=LEARNED, source="ABI", baseline=native_us,
            baseline_name="the same call on the native forward (row above)",
            note=common + "runs the folder's model.onnx through ONNX Runtime (1 intra-op thread; dense float32 "
                          "outputs for every head) and takes the masked argmax; metrics JSON in, decision out")
    else:
        onnx_row = Row("decision", f"ppo end_epoch, {nodes}-node graph, ppo_runtime onnx (Session.end_epoch)", "cpu",
                       "us", None, target=LEARNED.text, source="ABI", note=f"not measured: {missing}")
    return [
        go.row("decision", "ppo decision, 200-node graph (in Go, CPU time)", "PPODecide:cpu-ns/op", "us", LEARNED,
               "session.EndEpoch, policy ppo, 100 linear 64->64 layers x 2 slots with a seed in every layer "
               "(200 nodes): the graph and its masks, Go's encoding, the native forward of a hidden-16 2-round "
               "network (the shipped model's size; random weights biased to wait) and the masked argmax; process "
               "CPU time"),
        go.row("decision", "ppo decision, 200-node graph: allocations per end of epoch (in Go)",
               "PPODecide:allocs/op", "allocs", None,
               "the same benchmark's allocs/op: the decision reuses its graph, masks, encoding and network state "
               "(TestPPODecisionAllocatesNothingPerNode bounds it at 40; the decision allocated 333 times, "
               "460 KB, before the buffers were kept)"),
        go.row("decision", "ppo network forward, 200-node graph (in Go)", "GraphForward", "us", LEARNED,
               "gnn.Net.Run on a new State and the value, op, target, template and size heads (hidden 16, 2 rounds, "
               "46 node features, 100 layers x 2 slots, 100 seeds); wall time"),
        go.row("decision", "ppo network forward, 200-node graph, warm state (in Go, CPU time)",
               "GraphForwardWarm:cpu-ns/op", "us", LEARNED,
               "the same forward and heads with one gnn.State run again (Net.RunInto), as a session's decisions "
               "run it; process CPU time"),
        samples_row("decision", f"ppo end_epoch -> {op}, {nodes}-node graph (Session.end_epoch)", "cpu",
                    [t * 1e6 for t in samples], "us", target=LEARNED, source="ABI", baseline=in_go,
                    baseline_name=_named(in_go, "the decision inside Go (Go benchmark)"),
                    note=common + "runs the native forward and takes the masked argmax; metrics JSON in, decision "
                                  "out"),
        onnx_row,
    ]
