"""`esper demo --quick` end to end: real training, real Go session, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_quick_demo_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "esper", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO / "python")),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fixed small" in proc.stdout and "same final shape, from scratch" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    rows = {r["config"].split(" (")[0]: r for r in report["tasks"]["digits"]["rows"]}
    for name in ("fixed small", "fixed large", "same final shape, from scratch", "random placement, same budget",
                 "grown, budget 1300", "hand schedule, budget 1300"):
        assert 0.0 < rows[name]["test_acc_mean"] <= 100.0
        assert rows[name]["train_flops_mean"] > 0
    bars = report["tasks"]["digits"]["bars"]
    assert set(bars) >= {"vs_scratch", "auto_size", "vs_random", "vs_hand", "germination_output_change_max"}
    # Germination never changes the model's output.
    assert bars["germination_output_change_max"] == 0.0
    assert report["controls"]["moons"]["germinations"]
    png = (out / "growth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The README's tables, with the command and commit that made them.
    tables = (out / "tables.md").read_text()
    commit = report["machine"]["esper"]["commit"]
    assert tables.startswith("`esper demo --quick` at commit `" + commit + "`")
    small = rows["fixed small"]
    assert f"| {small['config']} | {small['test_acc_mean']:.2f} ± {small['test_acc_std']:.2f} |" in tables
    assert "Bars: grown " in tables and "Negative control `moons`" in tables
    # Every grown run wrote its run log (the demo's workers share the test's ESPER_HOME), to its end, and
    # its log holds the germinations the demo counted.
    from esper import oona

    logged = {r["run"]: r for r in oona.runs(Path(os.environ["ESPER_HOME"]) / "runs")}
    runs = [r for task in report["tasks"].values() for rs in task["runs"].values() for r in rs if r.get("run_id")]
    ids = {r["run_id"] for r in runs}
    assert ids and ids <= set(logged), (sorted(ids - set(logged))[:3], len(logged))
    assert all(logged[i]["ended"] and logged[i]["epochs"] > 0 for i in ids)
    for r in runs:
        if r["kind"] != "scratch":
            events = oona.read_events(r["run_id"], root=Path(os.environ["ESPER_HOME"]) / "runs", kinds=["lifecycle"])
            assert sum(e["data"]["to"] == "GERMINATED" for e in events) == r["germinations"], r["run_id"]


def _runs(accs: list[float]) -> list:
    from esper.demo.experiments import RunResult

    return [RunResult(kind="x", task="t", seed=i, test_acc=a, test_loss=0.0, best_epoch=0, flops=1.0, params=1,
                      wall=0.0, history={}) for i, a in enumerate(accs)]


def test_paired_verdicts_need_twice_the_standard_error() -> None:
    from esper.demo.run import paired

    cases = [
        # (grown, other, verdict, wins, ties, losses)
        ([99.0, 98.5, 99.5, 99.0], [98.0, 97.5, 98.0, 98.5], "beats", 4, 0, 0),
        ([98.0, 97.5, 98.0, 98.5], [99.0, 98.5, 99.5, 99.0], "loses", 0, 0, 4),
        # A higher mean that one seed carries is not evidence.
        ([99.0, 97.0, 98.0, 98.0], [97.0, 97.5, 98.0, 98.0], "tie within noise", 1, 2, 1),
        ([97.0, 97.0], [97.0, 97.0], "tie within noise", 0, 2, 0),
    ]
    for grown, other, verdict, wins, ties, losses in cases:
        got = paired(_runs(grown), _runs(other), "bar")
        assert (got["verdict"], got["wins"], got["ties"], got["losses"]) == (verdict, wins, ties, losses), got
        assert got["ok"] == (verdict == "beats")
        assert abs(got["diff_mean"] - (sum(grown) - sum(other)) / len(grown)) < 1e-9
    # Runs are paired by seed: unequal lengths are a caller's bug, refused.
    with pytest.raises(ValueError, match="shorter|longer"):
        paired(_runs([1.0]), _runs([1.0, 2.0]), "bar")


def test_equal_budget_is_judged_on_per_seed_means_over_the_tight_budgets() -> None:
    from esper.demo.run import at_equal_budget

    res = {
        # Loose budget: a tie.
        "grown": _runs([97.0, 98.0, 99.0]), "hand": _runs([97.0, 98.0, 99.0]),
        # Budget 700: grown ahead by 1, 0, 2 points; budget 1100: by 1, 2, 0.
        "grown@700": _runs([96.0, 97.0, 98.0]), "hand@700": _runs([95.0, 97.0, 96.0]),
        "grown@1100": _runs([97.0, 98.0, 97.0]), "hand@1100": _runs([96.0, 96.0, 97.0]),
    }
    got = at_equal_budget(res, (700, 1100), "hand", "bar")
    # Per-seed means 1, 1, 1: se 0, so "beats"; each budget alone (1, 0, 2) and (1, 2, 0) is a tie.
    assert (got["diff_mean"], got["diff_se"], got["wins"], got["verdict"], got["ok"]) == (1.0, 0.0, 3, "beats", True)
    assert got["budgets"] == [700, 1100]
    assert [got["per_budget"][b]["verdict"] for b in ("700", "1100")] == ["tie within noise"] * 2
    assert got["loose"]["verdict"] == "tie within noise" and got["loose"]["ties"] == 3
    assert got["grown_acc"] == (96 + 97 + 98 + 97 + 98 + 97) / 6 and got["flops_vs_grown"] == 1.0
    # Without tight budgets the loose budget is what is judged.
    plain = at_equal_budget(res, (), "hand", "bar")
    assert plain["verdict"] == "tie within noise" and plain["budgets"] == [] and "per_budget" not in plain
    # A budget whose runs are missing is a caller's bug.
    with pytest.raises(KeyError):
        at_equal_budget(res, (700, 1700), "hand", "bar")


def test_hand_schedule_halves_its_seed_until_the_budget_takes_it() -> None:
    from dataclasses import replace

    import torch

    from esper import Morphogenesis
    from esper.demo.data import load_task
    from esper.demo.experiments import SETUPS, Net, _germinate_within_budget, _wrap

    setup = SETUPS["spirals"]  # width-32 seeds: 624, 1072 and 643 parameters at its three layers
    task = load_task("spirals", 0)

    def morph_with(budget: int) -> Morphogenesis:
        model = _wrap(Net(task, setup.start_width, setup.depth), setup)
        config = replace(setup.morph, policy="manual", max_params=budget)
        return Morphogenesis(model, torch.optim.Adam(model.parameters()), config=config)

    morph = morph_with(700)
    assert _germinate_within_budget(morph, 1, 0, setup)  # 1072 > 700: width 16 (16*16+16 + 16*16+16 = 544)
    seed = morph.layers[1].seed(0)
    assert seed is not None and seed.ir["params"]["width"] == 16
    assert sum(p.numel() for p in seed.parameters()) == 544
    morph.close()
    # Nothing fits 10 parameters: refused, and the slot is left as it was.
    morph = morph_with(10)
    assert not _germinate_within_budget(morph, 0, 0, setup)
    assert morph.layers[0].state(0).name == "DORMANT" and morph.layers[0].seed(0) is None
    morph.close()


def _ev(to: str, epoch: int, layer: int = 0, slot: int = 0) -> dict:
    return {"kind": "event", "to": to, "epoch": epoch, "layer": layer, "slot": slot}


def test_seed_epochs_counts_every_germination_until_it_ends() -> None:
    from esper.demo.experiments import seed_epochs

    cases = [
        ([], 0),
        # Germinated at the end of epoch 2, never ended: runs epochs 3..9 of 10.
        ([_ev("GERMINATED", 2)], 7),
        # Pruned at epoch 6: ran 3..6; the slot's next seed from epoch 8 runs 9..9.
        ([_ev("GERMINATED", 2), _ev("PRUNED", 6), _ev("GERMINATED", 8)], 4 + 1),
        # Fossilized seeds keep running; two layers count separately.
        ([_ev("GERMINATED", 0), _ev("FOSSILIZED", 4), _ev("GERMINATED", 5, layer=1), _ev("ROLLED_BACK", 7, layer=1)],
         9 + 2),
    ]
    for events, want in cases:
        assert seed_epochs(events, 10) == want, events


def test_equal_budget_schedule_spends_the_budget_evenly_spaced() -> None:
    from esper.demo.experiments import SETUPS, equal_budget_schedule

    setup = SETUPS["digits"]  # 60 epochs, gap 8
    for k, budget in [(1, 40), (3, 105), (4, 90), (5, 200), (2, 116)]:
        plan = equal_budget_schedule(setup, k, budget)
        assert len(plan) == k and plan == sorted(plan) and 0 <= plan[0] and plan[-1] <= 58, plan
        gaps = {b - a for a, b in zip(plan, plan[1:])}
        assert len(gaps) <= 1, plan
        spent = sum(60 - 1 - t for t in plan)
        # Rounding the start moves each seed by at most half an epoch; a budget above what starting at
        # epoch 0 can spend is spent as far as it goes.
        assert abs(spent - budget) <= k / 2 or plan[0] == 0, (plan, spent, budget)
    # By hand: t0 = (3 * 59 - 105 - 8 * 3) / 3 = 16, and 43 + 35 + 27 = 105 seed-epochs.
    assert equal_budget_schedule(setup, 3, 105) == [16, 24, 32]
    # A budget too small for the gap narrows it; one too small for any gap puts the seeds as late as they fit.
    assert equal_budget_schedule(setup, 3, 6) == [56, 57, 58]  # gap 1: (3 * 59 - 6 - 3) / 3 = 56; 3 + 2 + 1 = 6
    assert equal_budget_schedule(setup, 3, 0) == [56, 57, 58]  # nothing fits 0 seed-epochs: as late as they go
    assert equal_budget_schedule(setup, 1, 0) == [58]
    # No seeds grown: the hand schedule grows none either, whatever the budget says.
    assert equal_budget_schedule(setup, 0, 10) == []
    with pytest.raises(ValueError, match="num_seeds must be >= 0"):
        equal_budget_schedule(setup, -1, 10)


def test_early_schedule_grows_every_seed_within_the_run() -> None:
    from dataclasses import replace

    from esper.demo.experiments import SETUPS, early_schedule

    setup = SETUPS["digits"]  # 60 epochs: start 4, gap 8; a seed must germinate by epoch 58 to train
    assert early_schedule(setup, 0) == []
    assert early_schedule(setup, 3) == [4, 12, 20]
    assert early_schedule(setup, 7) == [4, 12, 20, 28, 36, 44, 52]
    assert early_schedule(setup, 8) == [4, 11, 18, 25, 32, 39, 46, 53]  # 4 + 7 * 8 = 60 is past 58: gap 7
    short = replace(setup, epochs=15)  # `esper demo --quick`
    assert early_schedule(short, 3) == [4, 8, 12]  # 4 + 2 * 8 = 20 is past 13: gap 4
    assert early_schedule(short, 5) == [4, 6, 8, 10, 12]


def test_standard_scale_leaves_features_constant_in_training_unscaled() -> None:
    import numpy as np

    from esper.demo.data import standard_scale

    x_train = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 5.0], [0.0, 5.0, 5.0]])
    mean, scale = standard_scale(x_train)
    assert mean.tolist() == [0.0, 3.0, 5.0]
    # Column 1 has deviation sqrt(8/3); columns 0 and 2 are constant and keep scale 1.
    assert scale[0] == 1.0 and scale[2] == 1.0 and abs(scale[1] - (8 / 3) ** 0.5) < 1e-12
    x_val = np.array([[16.0, 3.0, 6.0]])  # a pixel dark in every training image, lit here
    assert ((x_val - mean) / scale).tolist() == [[16.0, 0.0, 1.0]]


def test_every_digits_split_has_bounded_features() -> None:
    from esper.demo.data import load_task

    # Raw digits pixels are 0..16 over 1078 training images. A pixel lit (value >= 1) in a single training
    # image has a deviation of at least about 1 / sqrt(1078), so a lit value of 16 elsewhere standardises to
    # at most about 16 * sqrt(1078) = 525. A pixel dark in every training image was ~1e7 before the fix.
    for seed in range(20):
        task = load_task("digits", seed)
        worst = max(float(t.abs().max()) for t in (task.x_train, task.x_val, task.x_test))
        assert worst < 16 * 1078**0.5, (seed, worst)


class _CountingBar:
    """A progress bar that counts the runs it is told about."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, text: str) -> None:
        pass


def test_worker_processes_give_the_serial_numbers() -> None:
    """Jobs run in spawned workers give the runs a serial demo gives, merged in the same order."""
    from dataclasses import replace

    from esper.demo.experiments import SETUPS
    from esper.demo.jobs import job_runs, merge, plan_jobs, run_jobs

    setups = {name: replace(SETUPS[name], epochs=8, sweep=SETUPS[name].sweep[:2], tight_budgets=(1300,))
              for name in ("digits", "moons")}
    jobs = plan_jobs(setups, ["digits"], ["moons"], seeds=1, budget_seeds=2)
    assert [(j.task, j.kind, j.seed, j.budget) for j in jobs] == [
        ("digits", "loose", 0, 0), ("digits", "budget", 0, 1300), ("digits", "budget", 1, 1300),
        ("moons", "control", 0, 0)]

    serial_bar, parallel_bar = _CountingBar(), _CountingBar()
    serial = merge(jobs, run_jobs(jobs, "cpu", 1, serial_bar))
    parallel = merge(jobs, run_jobs(jobs, "cpu", 2, parallel_bar))
    assert serial_bar.n == parallel_bar.n == sum(job_runs(j) for j in jobs) == 7 + 2 + 2 + 1
    assert set(serial) == set(parallel) == {"digits", "moons"}
    for task in serial:
        assert set(serial[task]) == set(parallel[task])
        for key, runs in serial[task].items():
            other = parallel[task][key]
            assert [(r.kind, r.seed, r.width) for r in runs] == [(r.kind, r.seed, r.width) for r in other], key
            assert [r.history["val_loss"] for r in runs] == [r.history["val_loss"] for r in other], key
            assert [r.events for r in runs] == [r.events for r in other], key
    assert len(serial["digits"]["grown@1300"]) == 2 and len(serial["digits"]["sweep_all"]) == 2


def test_seed_offset_moves_every_comparison_to_fresh_seeds() -> None:
    """`esper demo --seed-offset 20` plans the same jobs on seeds 20 onward; a negative offset is refused."""
    from esper.demo.experiments import SETUPS
    from esper.demo.jobs import plan_jobs

    setups = {name: SETUPS[name] for name in ("digits", "moons")}
    base = plan_jobs(setups, ["digits"], ["moons"], seeds=2, budget_seeds=3)
    moved = plan_jobs(setups, ["digits"], ["moons"], seeds=2, budget_seeds=3, seed_offset=20)
    assert [(j.task, j.kind, j.seed + 20, j.budget) for j in base] == [
        (j.task, j.kind, j.seed, j.budget) for j in moved]
    assert {j.seed for j in moved} == {20, 21, 22}
    with pytest.raises(ValueError, match="seed offset"):
        plan_jobs(setups, ["digits"], ["moons"], seeds=1, budget_seeds=1, seed_offset=-1)
    from esper.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--seed-offset", "-3"])
    assert exit_info.value.code == 2


def test_a_failing_job_stops_the_demo_with_its_error() -> None:
    from dataclasses import replace

    from esper.demo.experiments import SETUPS
    from esper.demo.jobs import Job, run_jobs

    good = Job("moons", "control", 0, replace(SETUPS["moons"], epochs=2))
    for workers in (1, 2):
        with pytest.raises(ValueError, match="unknown job kind 'bogus'"):
            run_jobs([good, replace(good, kind="bogus")], "cpu", workers, _CountingBar())
        with pytest.raises(ValueError, match="unknown task .nope."):
            run_jobs([good, Job("nope", "control", 0, good.setup)], "cpu", workers, _CountingBar())
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_jobs([good], "cpu", 0, _CountingBar())


def test_demo_main_refuses_unknown_tasks_and_workers(tmp_path: Path) -> None:
    from esper.demo.run import main

    out = tmp_path / "never"
    with pytest.raises(ValueError, match="tasks must be some of digits, spirals, classification, got \\['mnist'\\]"):
        main(tasks=("mnist",), out_dir=str(out))
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        main(workers=0, out_dir=str(out))
    assert not out.exists()


def test_ctrl_c_stops_the_demo_and_its_workers(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) ends a parallel demo at once: no worker is left
    to run the rest of the queue."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "esper", "demo", "--jobs", "2", "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(REPO / "python")),
        # As from a terminal: a shell without job control starts background commands (CI's, say)
        # with SIGINT ignored, and Python keeps an inherited SIG_IGN.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert "2 worker(s)" in proc.stdout.readline()
        # Wait until both workers ignore SIGINT (their initializer ran after they imported esper and
        # torch, seconds on a busy machine): a Ctrl-C before that reaches a worker mid-import.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_ignoring_sigint(_children(proc.pid))) < 3:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(_ignoring_sigint(workers)) >= 3, workers  # 2 workers and multiprocessing's resource tracker
        time.sleep(2)  # mid-job
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "esper: interrupted" in err and "Traceback" not in err
    # The workers are terminated and joined before the parent exits; multiprocessing's resource tracker
    # exits when it sees the parent gone, a moment later.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [pid for pid in workers if _state(pid) not in ("Z", "gone")]:
        time.sleep(0.1)
    assert not [pid for pid in workers if _state(pid) not in ("Z", "gone")]
    assert not (tmp_path / "demo" / "results.json").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc/*/stat: field 4 is the parent's pid)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _ignoring_sigint(pids: list[int]) -> list[int]:
    """The processes among pids that ignore SIGINT (bit 2 of SigIgn in /proc/<pid>/status)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
        if ignored & (1 << (signal.SIGINT - 1)):
            out.append(pid)
    return out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_default_workers_fit_the_cpus_and_the_memory(tmp_path: Path) -> None:
    from esper.demo.jobs import MAX_WORKERS, WORKER_BYTES, _read_int, workers_for

    gib = 1 << 30
    assert WORKER_BYTES == gib
    cases = [
        # (cpus, memory bytes, workers)
        (2, 24 * gib, 2),
        (64, None, MAX_WORKERS),  # many cores: capped
        (64, 3 * gib + 5, 3),  # a container with little memory: what it holds
        (16, gib - 1, 1),  # not even one worker's memory: still one (the serial run needs it too)
        (1, 100 * gib, 1),
    ]
    for cpus, memory, want in cases:
        assert workers_for(cpus, memory) == want, (cpus, memory)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   1000 kB\nHugePages_Total:       0\n")
    assert _read_int(str(meminfo), "MemAvailable") == 1000 * 1024
    assert _read_int(str(meminfo), "HugePages_Total") == 0
    assert _read_int(str(meminfo), "Missing") is None
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")  # cgroup v2: no limit
    assert _read_int(str(limit)) is None
    limit.write_text("4294967296\n")
    assert _read_int(str(limit)) == 4 * gib
    assert _read_int(str(tmp_path / "absent")) is None


def _count_step(model, x, counter_cls) -> float:
    """The FLOPs counter_cls counts for one training step (forward, loss, backward) of model on x."""
    import torch
    import torch.nn.functional as F

    counter = counter_cls()
    try:
        model.train()
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
    finally:
        counter.close()
    return counter.total


class _LinearHookCounter:
    """The counter the demo used before: one global forward hook that counts the nn.Linear modules it sees."""

    def __init__(self) -> None:
        import torch
        from torch import nn

        self.total = 0.0

        def hook(module, inputs, output) -> None:
            if isinstance(module, nn.Linear) and module.training:
                rows = output.numel() // module.out_features
                self.total += 6.0 * rows * module.in_features * module.out_features

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)

    def close(self) -> None:
        self._handle.remove()


# MLP(2 features, 3 classes, width 16, depth 2): 2*16 + 16*16 + 16*3 = 336 multiply-adds per sample.
_MLP_MACS = 2 * 16 + 16 * 16 + 16 * 3


def test_flop_counter_counts_a_dormant_wrapped_model_like_the_plain_one() -> None:
    import copy

    import torch
    from torch import nn

    from esper.demo.train import MLP, FlopCounter
    from esper.kasmina import kasmina_layers
    from esper.wrap import wrap

    torch.manual_seed(0)
    plain = MLP(2, 3, width=16, depth=2)
    wrapped = wrap(copy.deepcopy(plain), target_modules=[nn.Linear], seeds_per_layer=2)
    layers = [layer for _, layer in kasmina_layers(wrapped)]
    assert len(layers) == 3 and all(layer.is_dormant for layer in layers)
    x = torch.randn(10, 2)
    expected = 6.0 * 10 * _MLP_MACS  # every weight trains: 6 FLOPs per multiply-add
    assert _count_step(plain, x, FlopCounter) == expected
    assert _count_step(wrapped, x, FlopCounter) == expected
    # Negative control: a dormant layer calls its host's forward directly, which global hooks on the
    # host do not see; the counter the demo used before counted nothing for the wrapped model.
    assert _count_step(plain, x, _LinearHookCounter) == expected
    assert _count_step(wrapped, x, _LinearHookCounter) == 0.0
    # A layer that is not dormant calls its host through __call__: still counted once, not twice.
    layers[1].set_sampling(True)
    layers[2].base_layer.register_forward_hook(lambda *_: None)
    layers[2].set_sampling(False)  # re-picks the forward: the host's __call__, for its hook
    assert not layers[1].is_dormant and layers[2].is_dormant
    assert _count_step(wrapped, x, FlopCounter) == expected
    # Frozen weights: 4 FLOPs per multiply-add (forward and the input gradient).
    layers[0].base_layer.requires_grad_(False)
    assert _count_step(wrapped, x, FlopCounter) == expected - 2.0 * 10 * 2 * 16
    # Eval mode is not counted.
    counter = FlopCounter()
    try:
        with torch.no_grad():
            wrapped.eval()(x)
    finally:
        counter.close()
    assert counter.total == 0.0


def test_flop_counter_counts_a_seed_in_the_states_where_it_runs() -> None:
    import torch
    from torch import nn

    from esper.demo.train import MLP, FlopCounter
    from esper.kasmina import kasmina_layers
    from esper.wrap import wrap

    torch.manual_seed(0)
    model = wrap(MLP(2, 3, width=16, depth=2), target_modules=[nn.Linear], seeds_per_layer=2)
    layer = dict(kasmina_layers(model))["hidden.1"]  # the 16 -> 16 host
    layer.add_seed(1, nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 16)))
    seed_macs = 16 * 4 + 4 * 16
    x = torch.randn(10, 2)
    host = 6.0 * 10 * _MLP_MACS
    # GERMINATED: the seed does not run.
    assert _count_step(model, x, FlopCounter) == host
    # TRAINING (its output enters with value 0, and it learns), BLENDING, HOLDING: it runs and trains.
    for state, alpha in (("TRAINING", None), ("BLENDING", 0.5), ("HOLDING", None)):
        layer.set_state(1, state, alpha)
        assert _count_step(model, x, FlopCounter) == host + 6.0 * 10 * seed_macs, state
    # Switched off (a contribution measurement): not run, not counted.
    with layer.disable_seeds(1):
        assert _count_step(model, x, FlopCounter) == host
    # FOSSILIZED: frozen, 4 FLOPs per multiply-add.
    layer.set_state(1, "FOSSILIZED")
    assert _count_step(model, x, FlopCounter) == host + 4.0 * 10 * seed_macs
    # Removed: the layer is dormant again and its host is still counted.
    layer.remove_seed(1)
    assert layer.is_dormant
    assert _count_step(model, x, FlopCounter) == host


@pytest.mark.slow
def test_a_demo_runs_log_feeds_esper_report_and_monitor_replay(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """One grown run of the demo (digits, its quick settings: what `make demo` runs, shortened),
    then `esper report` and `esper monitor --replay` on the run log it wrote."""
    import contextlib
    import io
    from dataclasses import replace

    from esper import cli, oona
    from esper.demo.experiments import SETUPS, grown_run, setup_task

    monkeypatch.setenv("ESPER_HOME", str(tmp_path / "home"))
    setup = replace(SETUPS["digits"], epochs=6)
    result = grown_run(setup_task(setup, 0), setup, 0)
    root = tmp_path / "home" / "runs"
    assert result.run_id and oona.read_events(result.run_id, root=root)[-1]["kind"] == "run"

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["report", result.run_id, "--root", str(root), "--out", str(tmp_path / "report")]) == 0
        assert cli.main(["monitor", result.run_id, "--root", str(root), "--replay", "--speed", "0"]) == 0
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "report" / "report.md").read_text().startswith(f"# Run {result.run_id}\n")
    frames = buf.getvalue().split("esper monitor  run ")[1:]
    assert len(frames) == setup.epochs + 1 and "[ended]" in frames[-1], buf.getvalue()[-2000:]
