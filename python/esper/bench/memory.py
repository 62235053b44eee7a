"""Memory rows: peak memory of a training run, wrapped (dormant, with ``Morphogenesis``) vs plain,
and the memory each wrapped layer adds.

On CPU the figure is the resident-set high-water mark of a fresh subprocess per model, variant and
round, above what the process held once ``torch`` and ``esper`` were imported (Linux: the mark is
reset through ``/proc/self/clear_refs``; elsewhere the whole ``ru_maxrss``). torch's CPU allocator
has no peak counter and tracemalloc does not see tensors. On CUDA it is
``torch.cuda.max_memory_allocated`` in this process.

Run as ``python -m esper.bench.memory LABEL VARIANT STEPS`` it is that subprocess: it prints
``{"peak_mb": ..., "maxrss_mb": ..., "reset": true|false}``.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .rows import Row, samples_row

__all__ = ["rss_rows", "cuda_memory_rows", "per_layer_rows", "child_main"]

VARIANTS = ("plain", "wrapped", "wrapped_no_rollback")


def _train(label: str, variant: str, steps: int, device: torch.device) -> nn.Module:
    """Builds a benchmark model (wrapped or not) and trains it ``steps`` steps; returns it."""
    import torch.nn.functional as F

    from .. import Morphogenesis, wrap
    from . import models
    from .steps import MODELS

    spec = next(m for m in MODELS if m.label == label)
    torch.manual_seed(0)
    model = spec.build().to(device)
    morph = None
    if variant != "plain":
        wrap(model, list(spec.targets))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if variant != "plain":
        morph = Morphogenesis(model, opt, policy="manual", rollback=variant == "wrapped")
    x, y = models.make_batch(spec.batch_kind, spec.batch, device)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if morph is not None:
            morph.step(loss)
    return model


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Resets the RSS high-water mark to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def child_main(argv: list[str]) -> int:
    """The subprocess: train LABEL as VARIANT for STEPS steps on CPU, print the peak it added."""
    label, variant, steps = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(1)
    from . import steps as _  # noqa: F401 - every import done before the mark is reset

    reset = _reset_peak()
    start = _status_kb("VmRSS") if reset else 0
    _train(label, variant, steps, torch.device("cpu"))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = (_status_kb("VmHWM") or maxrss) - (start or 0) if reset else maxrss
    print(json.dumps({"peak_mb": peak / 1024.0, "maxrss_mb": maxrss / 1024.0, "reset": reset}))
    return 0


def _child_peak_mb(label: str, variant: str, steps: int) -> float:
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # the folder holding the esper package
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "esper.bench.memory", label, variant, str(steps)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess {label}/{variant} failed: {proc.stderr.strip()[-500:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def rss_rows(labels: list[str], rounds: int, steps: int = 30, workers: int = 2) -> list[Row]:
    """Peak memory of a CPU training run: wrapped (Morphogenesis defaults; for WideMLP also without
    the rollback copy) vs plain, per model; each run in a fresh subprocess, ``workers`` at a time."""
    jobs = []
    for label in labels:
        variants = ("plain", "wrapped", "wrapped_no_rollback") if label == "WideMLP" else ("plain", "wrapped")
        jobs += [(label, v, r) for r in range(rounds) for v in variants]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        peaks = list(pool.map(lambda job: _child_peak_mb(job[0], job[1], steps), jobs))
    got: dict[tuple[str, str], list[float]] = {}
    for (label, v, _), peak in zip(jobs, peaks):
        got.setdefault((label, v), []).append(peak)
    rows = []
    for label in labels:
        plain_runs = got[(label, "plain")]
        plain = statistics.median(plain_runs)
        for v in ("wrapped", "wrapped_no_rollback"):
            if (label, v) not in got:
                continue
            runs = got[(label, v)]
            what = "rollback=True (default: keeps a copy of weights and optimizer state)" if v == "wrapped" else \
                "rollback=False"
            rows.append(samples_row(
                "memory", f"peak memory, dormant wrapped{'' if v == 'wrapped' else ', no rollback'}: {label}", "cpu",
                runs, "MB", target=None, source="python", baseline=plain, baseline_name="plain model",
                note=f"RSS high-water mark above the imported process, fresh subprocess per run, {steps} steps, "
                     f"Morphogenesis {what}; includes loading the Go runtime; "
                     f"added {statistics.median(runs) - plain:+.1f} MB",
                extra={"plain_runs_mb": plain_runs}))
    return rows


def cuda_memory_rows(labels: list[str], rounds: int, steps: int = 10) -> list[Row]:
    """Peak CUDA memory (max_memory_allocated) of a training run, wrapped vs plain."""
    device = torch.device("cuda")
    rows = []
    for label in labels:
        got: dict[str, list[float]] = {"plain": [], "wrapped": []}
        for _ in range(rounds):
            for v in got:
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                model = _train(label, v, steps, device)
                torch.cuda.synchronize()
                got[v].append((torch.cuda.max_memory_allocated() - before) / 2**20)
                del model
        plain = sorted(got["plain"])[len(got["plain"]) // 2]
        rows.append(samples_row("memory", f"peak CUDA memory, dormant wrapped: {label}", "cuda", got["wrapped"], "MB",
                                target=None, source="python", baseline=plain, baseline_name="plain model",
                                note="torch.cuda.max_memory_allocated over build + steps; Morphogenesis defaults "
                                     "(rollback copy included)"))
    return rows


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct storages of the tensors held as attributes of obj (directly or in a
    tuple or list, like the seed-gain probe)."""
    seen: dict[int, int] = {}
    for v in vars(obj).values():
        for t in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def per_layer_rows(device: torch.device, n: int = 100, rounds: int = 5) -> list[Row]:
    """Bytes each wrapped layer adds: Python objects made by ``wrap`` (tracemalloc), Python objects
    made by ``Morphogenesis`` and 20 training steps (rollback off), and the tensors each layer keeps.
    The Go session's own memory is not counted (it is outside Python's allocator)."""
    import torch.nn.functional as F

    from .. import Morphogenesis, wrap
    from . import models

    by_wrap: list[float] = []
    by_morph: list[float] = []
    tensors: list[float] = []
    x, y = models.make_batch("deep", 32, device)
    for _ in range(rounds):
        model = models.Deep(n).to(device)
        gc.collect()
        tracemalloc.start()
        wrap(model, [nn.Linear])
        gc.collect()
        wrapped = tracemalloc.get_traced_memory()[0]
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = tracemalloc.get_traced_memory()[0]
        morph = Morphogenesis(model, opt, policy="manual", rollback=False)
        for _ in range(20):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            morph.step(loss)
        del loss
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        by_wrap.append(wrapped / n)
        by_morph.append((after - start) / n)
        tensors.append(sum(_tensor_bytes(layer) for layer in morph.layers) / n)
        morph.close()
    what = f"Deep({n}), {n} Linear(32, 32)"
    return [
        samples_row("memory", f"Python memory per wrapped layer, wrap(): {what}", device.type, by_wrap, "bytes",
                    target=None, source="python", note="tracemalloc over esper.wrap (KasminaLayer, HostSpec, lists)"),
        samples_row("memory", f"Python memory per wrapped layer, Morphogenesis + 20 steps: {what}", device.type,
                    by_morph, "bytes", target=None, source="python",
                    note="tracemalloc from Morphogenesis creation through 20 steps (rollback=False; the Go "
                         "session's memory is not seen)"),
        samples_row("memory", f"tensor memory per wrapped layer: {what}", device.type, tensors, "bytes", target=None,
                    source="python", note="signal buffer (7 float32), failure counters, NaN constant, kept rows, "
                         "and the seed-gain probe ((in + 1) x 32 float32) once a sampled backward has run"),
    ]


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
