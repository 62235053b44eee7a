"""What the run log and the NATS transport cost a training run (section ``bus``).

- *Per step and per epoch*: the dormant wrapped TinyMLP trained with its session attached to its
  Oona bus and run log (events.jsonl in a temporary folder, the default: always on) against the same
  model and step with the session detached from the bus (``session.attach_oona(None)``: nothing is
  published or written). A dormant step publishes nothing; an epoch (20 steps and ``end_epoch``)
  publishes its epoch and health events and waits until the run log has handed them to the OS
  (fsync at most once a second). Interleaved rounds of the step harness (steps.time_pair), CPU time
  of the process (the run log's writer goroutine included), the median of per-round ratios; an A/A
  row gives the pairing's noise floor.
- *Footprint*: the size of ``libesper.so``, and the resident memory of a process that ran a short
  training run with the NATS sink attached (to a local nats-server) against the same run without
  NATS, each in a fresh subprocess, sides alternating; the same children give the RSS that loading
  the library adds to a process that has imported torch. The same for the library built without the
  NATS client (``make nonats-lib``: build/nonats/libesper.so, ``-tags esper_nonats``): its size
  against the default build's, and the same run (without NATS) in a child that loads it; when that
  build is absent its rows say so.

``python -m esper.bench.runlog URL|-`` is the child: it prints one JSON line.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .rows import Row, ratio_at_most, samples_row

__all__ = ["runlog_rows", "footprint_rows", "infra_rows", "nonats_library"]


def runlog_rows(device: torch.device, settings: Any) -> list[Row]:
    """The run log's cost on a dormant training step and on an epoch (see the module doc)."""
    from .. import wrap
    from . import models
    from .steps import MODELS, _adam, _close, _morph, _row, make_step

    names = {"step": "train step, run log on vs off (dormant, no event per step): TinyMLP",
             "epoch": "epoch of 20 steps + end_epoch, run log on vs off: TinyMLP",
             "aa": "A/A control, epoch, run log off on both sides: TinyMLP"}
    if not any(settings.wants(n) for n in names.values()):
        return []
    spec = next(m for m in MODELS if m.label == "TinyMLP")
    rows: list[Row | None] = []
    with tempfile.TemporaryDirectory(prefix="esper-bench-runlog-") as runs:
        torch.manual_seed(0)
        plain = spec.build().to(device)
        x, y = models.make_batch(spec.batch_kind, spec.batch, device)
        morphs, steps = [], []
        for _ in range(3):  # on, off, off (the A/A partner)
            model = wrap(copy.deepcopy(plain), list(spec.targets))
            opt = _adam(model)
            morph = _morph(model, opt, runs=runs)
            morphs.append(morph)
            steps.append(make_step(model, opt, x, y, morph))
        on, off, off2 = morphs
        off.session.attach_oona(None)  # detached: no event published, nothing written
        off2.session.attach_oona(None)

        def epoch_of(i: int) -> Callable[[], None]:
            step, morph = steps[i], morphs[i]

            def run() -> None:
                for _ in range(20):
                    step()
                morph.end_epoch(val_loss=1.0)

            return run

        per_epoch = dataclasses.replace(settings, block_s=max(settings.block_s, 0.05), warmup=2)
        try:
            rows.append(_row("bus", names["step"], device, settings, steps[0], steps[1],
                             "same step, session detached from its bus (no run log)", ratio_at_most(1.02, "< 2%"),
                             f"{spec.what}; dormant, manual policy: a step publishes no event"))
            rows.append(_row("bus", names["epoch"], device, per_epoch, epoch_of(0), epoch_of(1),
                             "same epoch, session detached from its bus (no run log)", ratio_at_most(1.02, "< 2%"),
                             f"{spec.what}; end_epoch publishes the epoch and health events and waits until the "
                             f"run log has written them to the OS (fsync at most once a second; {runs})"))
            rows.append(_row("bus", names["aa"], device, per_epoch, epoch_of(2), epoch_of(1), "the same epoch",
                             None, "informative: how far two identical sides differ here"))
            written = on.oona.stats()["log"]
        finally:
            _close(*morphs)
    kept = [r for r in rows if r is not None]
    for r in kept:
        if "run log on" in r.name:
            r.extra.update(run_log_lines=written["lines"], run_log_bytes=written["bytes"],
                           run_log_syncs=written["syncs"])
    return kept


INFRA = {"step": "train step, run log + bus + NATS sink + metrics all on vs all off: TinyMLP",
         "epoch": "epoch of 20 steps + end_epoch, run log + bus + NATS sink + metrics all on vs all off: TinyMLP",
         "aa": "A/A control, epoch, all off on both sides: TinyMLP",
         "end_epoch": "end_epoch alone (after 20 steps), all on vs all off: TinyMLP"}


def infra_rows(device: torch.device, settings: Any, interval: float = 0.1) -> list[Row]:
    """The whole infrastructure's cost on a training step and on an epoch: the dormant wrapped TinyMLP
    with its session on its bus and run log, the NATS sink publishing to a local nats-server
    (build/bin/esper-nats, started here on loopback with JetStream; its events acknowledged), its
    metrics endpoint served and one scrape's work (``morph.metrics_text()``) every ``interval``
    seconds of training, against the same model with all of it off (session detached from its bus:
    nothing published, written or sent; no endpoint, no scrape). Interleaved rounds of at least
    ``interval`` (so that each holds a scrape), CPU time of this process (every goroutine of the run
    log, the sink and the endpoint included), the median of per-round ratios; an A/A row gives the
    pairing's noise floor. Without a NATS server binary the rows say why instead."""
    from .. import wrap
    from . import models
    from .native import local_nats
    from .steps import MODELS, _adam, _close, _morph, _row, make_step
    from .steps import _scraping as scraping

    wanted = [k for k, n in INFRA.items() if settings.wants(n)]
    if not wanted:
        return []
    spec = next(m for m in MODELS if m.label == "TinyMLP")
    per_round = dataclasses.replace(settings, block_s=max(settings.block_s, interval), max_inner=1 << 20, warmup=2)
    rows: list[Row | None] = []
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(local_nats())
        except (FileNotFoundError, RuntimeError) as exc:
            return [Row("bus", INFRA[k], device.type, "ms", None, source="python",
                        note=f"not measured: no local NATS server for the sink ({exc})") for k in wanted]
        with tempfile.TemporaryDirectory(prefix="esper-bench-infra-") as runs:
            torch.manual_seed(0)
            plain = spec.build().to(device)
            x, y = models.make_batch(spec.batch_kind, spec.batch, device)
            morphs, trains = [], []
            for side in ("on", "off", "off2"):
                model = wrap(copy.deepcopy(plain), list(spec.targets))
                opt = _adam(model)
                morph = _morph(model, opt, runs=runs, nats_url=url if side == "on" else "")
                if side != "on":
                    morph.session.attach_oona(None)  # nothing published, written or sent
                morphs.append(morph)
                trains.append(make_step(model, opt, x, y, morph))
            on, off, off2 = morphs
            try:
                on.serve_metrics(0)
                for _ in range(settings.warmup):
                    trains[1]()
                start = time.process_time()  # steps per interval of CPU time (no clock read per step)
                for _ in range(50):
                    trains[1]()
                every = max(1, round(interval * 50 / max(time.process_time() - start, 1e-7)))
                step_on = scraping(trains[0], on, every)
                # Epoch rounds: a scrape every whole number of epochs, one per round.
                epochs = max(1, round(every / 20))
                epoch_on = scraping(trains[0], on, 20 * epochs)

                def epoch_of(step: Callable[[], None], morph: Any) -> Callable[[], None]:
                    def run() -> None:
                        for _ in range(20):
                            step()
                        morph.end_epoch(val_loss=1.0)

                    return run

                what = (f"{spec.what}; dormant, manual policy; on: bus + run log ({runs}), NATS sink to a local "
                        f"nats-server (JetStream), metrics served and scraped (Go: read, gather, encode) about "
                        f"every {interval:g} s of CPU time (as measured before timing)")
                rows.append(_row("bus", INFRA["step"], device, per_round, step_on, trains[1],
                                 "same step, all off (session detached from its bus, no NATS, no metrics)",
                                 ratio_at_most(1.02, "< 2%"), what + f": every {every} steps, rounds of {every} steps "
                                 "(one scrape each); a dormant step publishes no event", inner=every))
                rows.append(_row("bus", INFRA["epoch"], device, per_round, epoch_of(epoch_on, on),
                                 epoch_of(trains[1], off), "same epoch, all off", ratio_at_most(1.02, "< 2%"),
                                 what + f": every {epochs} epoch(s), rounds of {epochs} epoch(s) (one scrape each); "
                                 "end_epoch publishes the epoch and health events: the run log writes them, the sink "
                                 "sends them to NATS", inner=epochs))
                rows.append(_row("bus", INFRA["aa"], device, per_round, epoch_of(trains[2], off2),
                                 epoch_of(trains[1], off), "the same epoch", None,
                                 "informative: how far two identical sides differ here (read the rows above "
                                 "against it)", inner=epochs))
                if settings.wants(INFRA["end_epoch"]):
                    rows.append(_end_epoch_row(settings, (trains[0], on), (trains[1], off), what))
                on.oona.flush(10.0)
                deadline = time.monotonic() + 10
                while on.oona.stats()["nats"]["pending"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                stats = on.oona.stats()
            finally:
                _close(*morphs)
    kept = [r for r in rows if r is not None]
    for r in kept:
        if "all on" in r.name:
            r.extra.update(scrape_every=every if "train step" in r.name else 20 * epochs,
                           run_log_lines=stats["log"]["lines"], nats_sent=stats["nats"]["sent"],
                           nats_dropped=stats["nats"]["dropped"])
    return kept


def _end_epoch_row(settings: Any, on: tuple[Callable[[], None], Any], off: tuple[Callable[[], None], Any],
                   what: str, epochs: int = 5) -> Row:
    """The CPU time of ``end_epoch`` alone, all on against all off: the fixed cost per epoch that the
    epoch row spreads over 20 steps (a longer epoch spreads it over more). Rounds of ``epochs``
    epochs per side, sides alternating; the CPU time of this process during each call (the run log's
    writer and the sink's goroutines included while they work within it)."""
    got: dict[str, list[float]] = {"on": [], "off": []}
    sides = {"on": on, "off": off}
    for r in range(settings.rounds):
        for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
            step, morph = sides[name]
            spent = 0.0
            for _ in range(epochs):
                for _ in range(20):
                    step()
                start = time.process_time()
                morph.end_epoch(val_loss=1.0)
                spent += time.process_time() - start
            got[name].append(spent / epochs * 1e3)
    base = statistics.median(got["off"])
    return samples_row("bus", INFRA["end_epoch"], "cpu", got["on"], "ms", target=None, source="python", baseline=base,
                       baseline_name="end_epoch, all off",
                       note=f"{what}; CPU time of end_epoch alone (the epoch and health events published, written, "
                            f"flushed to the OS and sent), {epochs} epochs of 20 steps per round and side; "
                            f"{statistics.median(got['on']) - base:+.3f} ms per epoch",
                       extra={"off_ms": got["off"]})


def _child(url: str) -> dict[str, float]:
    """A short training run with or without the NATS sink; RSS (MiB) at each stage."""

    def rss() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/self/status")

    from torch import nn

    torch.set_num_threads(1)
    with_torch = rss()
    import esper
    from esper import _lib

    _lib.lib()
    with_lib = rss()
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)), target_modules=["0"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory(prefix="esper-bench-rss-") as runs:
        morph = esper.Morphogenesis(model, opt, policy="manual", runs=runs, nats_url=url)
        x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))
        for epoch in range(5):
            for _ in range(20):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                morph.step(loss)
            if epoch == 1:
                morph.germinate(0, 0, "residual_mlp", width=4)
            morph.end_epoch(val_loss=1.0)
        sent = -1
        if url:
            deadline = time.monotonic() + 20
            while morph.oona.stats()["nats"]["pending"] and time.monotonic() < deadline:
                time.sleep(0.05)
            sent = morph.oona.stats()["nats"]["sent"]
        after = rss()
        morph.close()
    return {"torch_mb": with_torch, "lib_mb": with_lib, "run_mb": after, "sent": sent}


def _run_child(url: str, library: Path | None = None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("ESPER_NATS_URL", "ESPER_LIBRARY")}
    if library is not None:
        env["ESPER_LIBRARY"] = str(library)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "esper.bench.runlog", url or "-"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"runlog subprocess ({url or 'no NATS'}) failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def footprint_rows(rounds: int, settings: Any) -> list[Row]:
    """libesper.so's size; RSS of a short run with the NATS sink against without; RSS of loading the
    library (see the module doc)."""
    from .. import _lib
    from .native import local_nats

    names = {"size": "libesper.so size (NATS client linked in, no server)",
             "rss": "process RSS after a short run, NATS sink attached vs not: 2-layer MLP",
             "load": "RSS added by loading libesper.so (after import torch)",
             "nonats_size": "libesper.so size without the NATS client (-tags esper_nonats) vs with",
             "nonats_rss": "process RSS after a short run, library without NATS vs with (no sink): 2-layer MLP",
             "nonats_load": "RSS added by loading libesper.so without the NATS client (after import torch)"}
    rows = []
    _lib.lib()
    default_lib = Path(_lib.library_path())
    nonats = nonats_library()
    missing = (f"not measured: {nonats} is absent; `make nonats-lib` builds it (`make bench` does)"
               if not nonats.is_file() else "")
    if settings.wants(names["size"]):
        rows.append(samples_row("bus", names["size"], "cpu", [default_lib.stat().st_size / 2**20], "MB",
                                target=None, source="python", note=f"{default_lib.name} as loaded (stripped, -s -w)"))
    if settings.wants(names["nonats_size"]):
        if missing:
            rows.append(Row("bus", names["nonats_size"], "cpu", "MB", None, source="python", note=missing))
        else:
            rows.append(samples_row(
                "bus", names["nonats_size"], "cpu", [nonats.stat().st_size / 2**20], "MB", target=None,
                source="python", baseline=default_lib.stat().st_size / 2**20,
                baseline_name="the default build (NATS client linked in)",
                note=f"{nonats} (make nonats-lib; stripped, -s -w) against {default_lib.name} as loaded; "
                     f"{(default_lib.stat().st_size - nonats.stat().st_size) / 2**20:.2f} MB for the NATS client"))
    wants_nonats = not missing and (settings.wants(names["nonats_rss"]) or settings.wants(names["nonats_load"]))
    if missing and (settings.wants(names["nonats_rss"]) or settings.wants(names["nonats_load"])):
        rows += [Row("bus", names[k], "cpu", "MB", None, source="python", note=missing)
                 for k in ("nonats_rss", "nonats_load") if settings.wants(names[k])]
    if not (settings.wants(names["rss"]) or settings.wants(names["load"]) or wants_nonats):
        return rows
    got: dict[str, list[dict[str, float]]] = {"nats": [], "none": [], "nonats": []}
    sides = ("nats", "none", "nonats") if wants_nonats else ("nats", "none")
    with local_nats() as url:
        for r in range(rounds):
            for side in sides if r % 2 == 0 else tuple(reversed(sides)):
                got[side].append(_run_child(url if side == "nats" else "", nonats if side == "nonats" else None))
    with_nats = [c["run_mb"] for c in got["nats"]]
    without = [c["run_mb"] for c in got["none"]]
    base = statistics.median(without)
    sent = [c["sent"] for c in got["nats"]]
    if settings.wants(names["rss"]):
        rows.append(samples_row(
            "bus", names["rss"], "cpu", with_nats, "MB", target=None, source="python", baseline=base,
            baseline_name="the same run without NATS",
            note=f"VmRSS after 5 epochs of 20 steps and a germination, events sent to a local nats-server "
                 f"(JetStream) and acknowledged ({min(sent)}..{max(sent)} events); fresh subprocess per run, "
                 f"sides alternating; added {statistics.median(with_nats) - base:+.1f} MB",
            extra={"without_runs_mb": without, "events_sent": sent}))
    if settings.wants(names["load"]):
        loads = [c["lib_mb"] - c["torch_mb"] for side in ("nats", "none") for c in got[side]]
        rows.append(samples_row("bus", names["load"], "cpu", loads, "MB", target=None, source="python",
                                note="VmRSS after loading the library minus before, in the same children"))
    if wants_nonats and settings.wants(names["nonats_rss"]):
        small = [c["run_mb"] for c in got["nonats"]]
        rows.append(samples_row(
            "bus", names["nonats_rss"], "cpu", small, "MB", target=None, source="python", baseline=base,
            baseline_name="the same run on the default build (no sink)",
            note=f"VmRSS after the same 5 epochs, child loading {nonats} (ESPER_LIBRARY); fresh subprocess per "
                 f"run, sides alternating with the two rows above; {statistics.median(small) - base:+.1f} MB",
            extra={"with_nats_client_runs_mb": without}))
    if wants_nonats and settings.wants(names["nonats_load"]):
        loads = [c["lib_mb"] - c["torch_mb"] for c in got["nonats"]]
        base_load = statistics.median([c["lib_mb"] - c["torch_mb"] for side in ("nats", "none") for c in got[side]])
        rows.append(samples_row("bus", names["nonats_load"], "cpu", loads, "MB", target=None, source="python",
                                baseline=base_load, baseline_name="the default build's load, same children",
                                note="VmRSS after loading the library minus before"))
    return rows


def nonats_library() -> Path:
    """build/nonats/libesper.so of the source tree this package runs from (``make nonats-lib``)."""
    return Path(__file__).resolve().parents[3] / "build" / "nonats" / "libesper.so"


if __name__ == "__main__":
    print(json.dumps(_child("" if sys.argv[1] == "-" else sys.argv[1])))
