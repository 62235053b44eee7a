"""The demo's training runs, cut into independent jobs that run in worker processes.

A job is everything one seed needs on one task at one budget: the loose-budget
comparisons (the fixed sweep, the grown run, its shape from scratch, random
placement and the hand schedules, which depend on the grown run), one tight
budget's comparisons, or one negative-control run. Jobs share nothing, so they
run side by side, one worker per CPU core within the memory (see
:func:`default_workers`). Each run seeds its own generators and uses one
intra-op thread, so the numbers do not depend on how many workers there are or
which one ran a job (``tests_py/test_demo.py`` checks this). Results are merged
in the serial order.

Workers are spawned, never forked: the parent process already runs the Go
runtime of ``libesper.so``, and a forked copy of it is not safe (DESIGN §3).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import torch

from .experiments import (
    RunResult,
    Setup,
    early_schedule,
    equal_budget_schedule,
    fixed_run,
    grown_run,
    hand_run,
    pick_best,
    scratch_run,
    seed_epochs,
    setup_task,
)

__all__ = ["Job", "plan_jobs", "job_runs", "run_job", "run_jobs", "run_pool", "one_thread", "merge",
           "default_workers", "workers_for"]

_In = TypeVar("_In")
_Out = TypeVar("_Out")

#: What a loose-budget job fills, in the order the report reads them.
LOOSE_KEYS = ("sweep_best", "small", "large", "grown", "scratch", "random", "hand", "hand_early", "sweep_all")


@dataclass(frozen=True)
class Job:
    """One seed's runs on one task.

    Attributes:
        task: task name (a key of ``SETUPS``).
        kind: "loose" (the comparisons at the setup's own budget), "budget" (those at ``budget``)
            or "control" (one grown run on a negative control).
        seed: the seed of the split, the initialisation and the controller.
        setup: how the task is grown.
        budget: the tight parameter budget of a "budget" job; 0 otherwise.
    """

    task: str
    kind: str
    seed: int
    setup: Setup
    budget: int = 0


def plan_jobs(setups: dict[str, Setup], tasks: Sequence[str], controls: Sequence[str], seeds: int,
              budget_seeds: int, seed_offset: int = 0) -> list[Job]:
    """The jobs of a demo, in the order a serial run makes them: per task and seed, the loose-budget
    comparisons on ``seeds`` seeds, then each tight budget on ``budget_seeds``; then the controls.
    Seeds count from ``seed_offset`` (a rerun on fresh seeds: ``esper demo --seed-offset 20``)."""
    if seed_offset < 0:
        raise ValueError(f"esper demo: the seed offset must be >= 0, got {seed_offset}")
    jobs = []
    for name in tasks:
        setup = setups[name]
        for i in range(max(seeds, budget_seeds)):
            if i < seeds:
                jobs.append(Job(name, "loose", seed_offset + i, setup))
            if i < budget_seeds:
                jobs.extend(Job(name, "budget", seed_offset + i, setup, b) for b in setup.tight_budgets)
    for name in controls:
        jobs.extend(Job(name, "control", seed_offset + i, setups[name]) for i in range(seeds))
    return jobs


def job_runs(job: Job) -> int:
    """How many training runs the job makes (the progress bar's unit)."""
    if job.kind == "loose":
        return len(job.setup.sweep) + 5
    if job.kind == "budget":
        return 2 if job.setup.targets == "block" else 3
    return 1


class _NoBar:
    """The progress bar of a worker: the parent process counts finished jobs instead."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass


@contextmanager
def one_thread() -> Iterator[None]:
    """Every run uses one intra-op thread, in a worker or not: the demo's models are too small to gain from
    more, and a float sum split over a different number of threads rounds differently."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_job(job: Job, device: str, bar: Any = None) -> dict[str, list[RunResult]]:
    """Make the job's runs (on one thread); returns them keyed by configuration (see :func:`merge`)."""
    with one_thread():
        return _run_job(job, device, _NoBar() if bar is None else bar)


def _run_job(job: Job, device: str, bar: Any) -> dict[str, list[RunResult]]:
    task = setup_task(job.setup, job.seed, torch.device(device), name=job.task)
    if job.kind == "loose":
        return _at_loose_budget(job, task, bar)
    if job.kind == "budget":
        return _at_budget(job, task, bar)
    if job.kind == "control":
        bar.set_description(f"{job.task} seed {job.seed}: negative control")
        run = grown_run(task, job.setup, job.seed)
        bar.update()
        return {"control": [run]}
    raise ValueError(f"unknown job kind {job.kind!r} (want loose, budget or control)")


def _at_loose_budget(job: Job, task: Any, bar: Any) -> dict[str, list[RunResult]]:
    """The fixed-size sweep, the grown run, its shape from scratch, random placement and the hand schedules."""
    setup, seed, name = job.setup, job.seed, job.task
    bar.set_description(f"{name} seed {seed}: fixed sweep")
    sweep = []
    for width in setup.sweep:
        sweep.append(fixed_run(task, setup, width, seed))
        bar.update()
    best = pick_best(sweep)
    bar.set_description(f"{name} seed {seed}: grown (heuristic)")
    grown = grown_run(task, setup, seed)
    bar.update()
    bar.set_description(f"{name} seed {seed}: same shape from scratch")
    scratch = scratch_run(task, setup, seed, grown.final_seeds)
    bar.update()
    bar.set_description(f"{name} seed {seed}: random placement")
    random = grown_run(task, setup, seed, policy="random")
    bar.update()
    # The hand schedules get the grown model's seeds (its final shape); the equal-budget one also
    # its compute (the seed-epochs of every germination, pruned ones included).
    k = len(grown.final_seeds)  # 0 when Tamiyo did not grow: the hand schedules do not either
    bar.set_description(f"{name} seed {seed}: hand schedule, same budget")
    hand = hand_run(task, setup, seed, equal_budget_schedule(setup, k, seed_epochs(grown.events, setup.epochs)))
    bar.update()
    bar.set_description(f"{name} seed {seed}: hand schedule, early")
    early = hand_run(task, setup, seed, early_schedule(setup, k), kind="hand_early")
    bar.update()
    return {"sweep_best": [best], "small": [sweep[0]], "large": [sweep[-1]], "grown": [grown],
            "scratch": [scratch], "random": [random], "hand": [hand], "hand_early": [early], "sweep_all": sweep}


def _at_budget(job: Job, task: Any, bar: Any) -> dict[str, list[RunResult]]:
    """The equal-budget comparisons under a parameter budget that binds: grown, random placement and the
    hand schedule (the grown run's seeds and seed-epochs), keyed ``kind@budget``."""
    b, seed, name = job.budget, job.seed, job.task
    tight = replace(job.setup, morph=replace(job.setup.morph, max_params=b))
    out: dict[str, list[RunResult]] = {}
    bar.set_description(f"{name} seed {seed}: budget {b}, grown")
    grown = grown_run(task, tight, seed)
    out[f"grown@{b}"] = [grown]
    bar.update()
    if tight.targets != "block":
        bar.set_description(f"{name} seed {seed}: budget {b}, random placement")
        out[f"random@{b}"] = [grown_run(task, tight, seed, policy="random")]
        bar.update()
    bar.set_description(f"{name} seed {seed}: budget {b}, hand schedule")
    plan = equal_budget_schedule(tight, len(grown.final_seeds), seed_epochs(grown.events, tight.epochs))
    out[f"hand@{b}"] = [hand_run(task, tight, seed, plan)]
    bar.update()
    return out


def merge(jobs: Sequence[Job], results: Sequence[dict[str, list[RunResult]]]) -> dict[str, dict[str, list[RunResult]]]:
    """Per task (controls included), each configuration's runs in job order, that is by seed."""
    out: dict[str, dict[str, list[RunResult]]] = {}
    for job, res in zip(jobs, results, strict=True):
        per_task = out.setdefault(job.task, {k: [] for k in LOOSE_KEYS} if job.kind != "control" else {})
        for key, runs in res.items():
            per_task.setdefault(key, []).extend(runs)
    return out


#: Memory set aside per worker: a worker holds 0.76-0.80 GB resident (measured, CUDA build of torch on CPU).
WORKER_BYTES = 1 << 30
#: At most this many workers by default: beyond it the demo's 140 jobs gain little, and each worker
#: costs its memory.
MAX_WORKERS = 8


def workers_for(cpus: int, memory_bytes: int | None) -> int:
    """How many workers fit: one per CPU, at most MAX_WORKERS, and no more than the memory holds
    (``memory_bytes`` None: unknown, not limiting); at least one."""
    n = min(cpus, MAX_WORKERS)
    if memory_bytes is not None:
        n = min(n, memory_bytes // WORKER_BYTES)
    return max(1, n)


def default_workers(device: str) -> int:
    """The demo's default number of workers: :func:`workers_for` this machine's usable CPUs and available
    memory; one on CUDA, where a run is too small to share a GPU well and each process would hold its own
    CUDA context."""
    if device != "cpu":
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return workers_for(cpus, _available_memory())


def _read_int(path: str, key: str | None = None) -> int | None:
    """An integer from a /proc or /sys file (the value after ``key`` in a "key: value kB" file); None when the
    file is absent or holds no number (cgroup v2 writes "max" for no limit)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if key is not None:
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name == key:
                parts = rest.split()
                if parts and parts[0].isdigit():
                    return int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _available_memory() -> int | None:
    """Bytes this process may still take: the kernel's MemAvailable, lowered to the cgroup's limit (v2 or v1)
    minus its usage when a container sets one; None when neither is known."""
    known = [m for m in (_read_int("/proc/meminfo", "MemAvailable"),) if m is not None]
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_path)
        if limit is not None and limit < 1 << 60:  # v1 writes a huge number for no limit
            known.append(max(0, limit - (_read_int(usage_path) or 0)))
    return min(known) if known else None


def _ignore_sigint() -> None:
    """A worker's initializer: Ctrl-C reaches every process of the terminal's group, and the parent alone
    handles it (it stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_indexed(item: tuple[int, Callable[[Any], Any], Any]) -> tuple[int, Any]:
    i, fn, arg = item
    return i, fn(arg)


def run_pool(fn: Callable[[_In], _Out], items: Sequence[_In], workers: int,
             on_done: Callable[[int, _Out], None] | None = None) -> list[_Out]:
    """``fn(item)`` for every item in ``workers`` spawned processes (in this process when 1); results in item
    order. ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one);
    ``on_done(i, result)`` runs in this process as each item finishes, in the order they finish.

    Workers are spawned, never forked (DESIGN §3), and ignore SIGINT: Ctrl-C, an item that raises, or any
    other error stops the pool (the workers are terminated, the items not yet run are dropped) and is raised
    here.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[Any] = [None] * len(items)
    done = [False] * len(items)
    if workers == 1 or len(items) <= 1:
        for i, item in enumerate(items):
            results[i], done[i] = fn(item), True
            if on_done is not None:
                on_done(i, results[i])
        return results
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(items)), initializer=_ignore_sigint)
    try:
        for i, res in pool.imap_unordered(_run_indexed, [(i, fn, item) for i, item in enumerate(items)]):
            results[i], done[i] = res, True
            if on_done is not None:
                on_done(i, res)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
    missing = [items[i] for i, d in enumerate(done) if not d]
    if missing:
        raise RuntimeError(f"jobs finished without a result: {missing}")
    return results


def run_jobs(jobs: Sequence[Job], device: str, workers: int, bar: Any) -> list[dict[str, list[RunResult]]]:
    """Run the jobs, ``workers`` at a time (in this process when 1); results in job order.

    A job that fails, or Ctrl-C, stops the demo: the workers are terminated, the jobs not yet run are
    dropped, and the error is raised here (see :func:`run_pool`).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(jobs) <= 1:
        return [run_job(job, device, bar) for job in jobs]

    def done(i: int, res: dict[str, list[RunResult]]) -> None:
        bar.set_description(f"{jobs[i].task} seed {jobs[i].seed}: {jobs[i].kind} done")
        bar.update(job_runs(jobs[i]))

    return run_pool(partial(run_job, device=device), jobs, workers, done)
