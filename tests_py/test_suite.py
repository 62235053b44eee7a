"""The task suite (`esper suite`, ``esper.suite``): its families, the held-out guard, and a quick run end to
end through spawned workers, the real library and the demo's protocol, resumed from its cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from esper.suite.families import FAMILIES, HELD_OUT, TRAIN, HeldOutError, describe, families, load


def test_families_are_split_in_code_and_cover_the_kinds() -> None:
    train, held = families(TRAIN), families(HELD_OUT)
    assert train and held and not {f.name for f in train} & {f.name for f in held}
    assert [f.name for f in families("all")] == [f.name for f in train + held]
    for split in (train, held):
        # Every split has MLP and CNN families, a regression and a negative control.
        assert {f.arch for f in split} == {"mlp", "cnn"}
        assert any(f.control for f in split)
        assert any(np.issubdtype(describe(f.name, 0, True, "eval")[1].dtype, np.floating) for f in split)
    for f in FAMILIES.values():
        assert len(f.sweep) == (1 if f.control else 5) and f.start_width in f.sweep, f.name
    with pytest.raises(ValueError, match="train', 'held-out' or 'all'"):
        families("everything")


def test_held_out_families_are_never_read_by_a_training_reader() -> None:
    from esper.suite.run import plan

    for f in families(HELD_OUT):
        with pytest.raises(HeldOutError, match="held out"):
            load(f.name, 0, True, "train")
        x, y = load(f.name, 0, True, "eval")  # judging may read it
        assert len(x) == len(y) > 0
    for f in families(TRAIN):  # negative control: the guard does not refuse training families
        load(f.name, 0, True, "train")
    arms = plan(TRAIN, tasks=2, seeds=2, quick=True, out_dir="unused")
    assert {a.family for a in arms} == {f.name for f in families(TRAIN)}
    assert {a.reader for a in arms} == {"train"}
    # A training run's task source carries its reader: pointed at a held-out family, it refuses.
    from dataclasses import replace

    stray = replace(arms[0], family=families(HELD_OUT)[0].name)
    with pytest.raises(HeldOutError):
        stray.setup().source()


def test_tasks_are_reproducible_and_vary_with_the_index() -> None:
    for f in FAMILIES.values():
        x0, y0, p0 = describe(f.name, 0, True, "eval")
        x1, y1, p1 = describe(f.name, 0, True, "eval")
        assert p0 == p1 and np.array_equal(x0, x1) and np.array_equal(y0, y1), f.name
        assert np.isfinite(x0).all() and x0.dtype == np.float32, f.name
        _, _, other = describe(f.name, 1, True, "eval")
        assert other != p0, f.name


def test_flop_counter_counts_convolutions_by_hand() -> None:
    from esper.demo.train import ConvNet, FlopCounter

    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, width=4, dims=2)
    x = torch.randn(5, 1, 6, 7)
    counter = FlopCounter()
    try:
        model(x)
    finally:
        counter.close()
    # Per sample: conv 1->4 (3x3) at 6x7 outputs, conv 4->4 (3x3) at 6x7, head 4->3; 6 FLOPs per multiply-add.
    macs = 6 * 7 * 4 * (1 * 9) + 6 * 7 * 4 * (4 * 9) + 4 * 3
    assert counter.total == 6.0 * 5 * macs
    conv1d = ConvNet(in_channels=2, num_classes=2, width=3, dims=1)
    counter = FlopCounter()
    try:
        conv1d(torch.randn(4, 2, 10))
    finally:
        counter.close()
    assert counter.total == 6.0 * 4 * (10 * 3 * 2 * 3 + 10 * 3 * 3 * 3 + 3 * 2)
    with pytest.raises(ValueError, match="dims must be 1"):
        ConvNet(1, 2, 3, dims=3)


def test_regression_tasks_are_judged_by_r2_in_percent() -> None:
    from esper.demo.data import split_task
    from esper.demo.train import evaluate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5])).astype(np.float32)
    task = split_task("lin", x, y, seed=0)
    assert task.regression and task.num_classes == 1 and task.y_train.dtype == torch.float32
    # Targets are standardised on the training split.
    assert abs(float(task.y_train.mean())) < 1e-5 and abs(float(task.y_train.std(unbiased=False)) - 1) < 1e-4

    class Const(nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def forward(self, inp: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, 1)
            return torch.full((inp.shape[0], 1), self.value)

    class Oracle(nn.Module):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:  # the test targets themselves
            return task.y_test[:, None]

    assert evaluate(Oracle(), task.x_test, task.y_test)[1] == pytest.approx(100.0)
    loss, r2 = evaluate(Const(float(task.y_test.mean())), task.x_test, task.y_test)
    assert r2 == pytest.approx(0.0, abs=1e-4) and loss > 0
    with pytest.raises(ValueError, match="integer class labels or real numbers"):
        split_task("bad", x, y.astype(np.complex64), seed=0)


def _check_report(report: dict, out: Path) -> None:
    assert report["command"] == {"families": "train", "seeds": 1, "tasks": 1, "quick": True}
    assert report["protocol"]["reader"] == "train"
    assert set(report["families"]) == {f.name for f in families(TRAIN)}  # never a held-out family
    for name, fam in report["families"].items():
        family = FAMILIES[name]
        assert fam["split"] == TRAIN
        task = fam["tasks"]["0"]
        if family.control:
            assert set(task["controls"]) == {"control@30", "control@60"}
            for c in task["controls"].values():
                assert len(c["germinations"]) == 1 and c["ok"] == (max(c["germinations"]) <= 1)
            continue
        arms = task["arms"]
        assert set(arms) == {f"fixed@{w}" for w in family.sweep} | {"grown", "scratch"}
        for key, runs in arms.items():
            (run,) = runs  # one seed
            assert run["flops"] > 0 and run["params"] > 0, (name, key)
            assert math.isfinite(run["test_acc"]) and run["test_acc"] <= 100.0, (name, key)
            if not family.name.endswith("regression") and family.name != "friedman":
                assert 0.0 <= run["test_acc"] <= 100.0, (name, key)
        # FLOPs grow with the width of the sweep (the counter sees every layer that ran).
        flops = [arms[f"fixed@{w}"][0]["flops"] for w in family.sweep]
        assert flops == sorted(flops) and flops[0] < flops[-1], name
        assert arms["grown"][0]["run_id"], name  # its outcome records in Urza carry it
        bars = task["bars"]
        assert set(bars) == {"vs_scratch", "auto_size", "germination_output_change_max"}
        assert bars["vs_scratch"]["flops_ratio"] > 0 and bars["auto_size"]["flops_vs_sweep"] > 0
        assert isinstance(bars["vs_scratch"]["ok"], bool) and isinstance(bars["auto_size"]["ok"], bool)
        assert task["sweep_best_widths"][0] in family.sweep
    png = (out / "suite.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_quick_suite_writes_results_and_plot_and_resumes_from_its_cache(tmp_path: Path) -> None:
    from esper.suite.run import main

    out = tmp_path / "suite"
    assert main(which="train", quick=True, out_dir=str(out), workers=2, as_json=True) == 0
    first = json.loads((out / "results.json").read_text())
    _check_report(first, out)
    cached = sorted((out / "cache").rglob("*.json"))
    n_runs = sum(len(runs) for fam in first["families"].values() for t in fam["tasks"].values()
                 for runs in t["arms"].values())
    assert len(cached) == n_runs
    # Interrupted: two runs lost (a grown run and its shape from scratch). The rerun makes those two only,
    # in this process, and gives the same numbers.
    lost = [p for p in cached if p.parent.parts[-3] == "blobs" and p.name.split("-")[0] in ("grown", "scratch")]
    assert len(lost) == 2
    kept = {p: p.stat().st_mtime_ns for p in cached if p not in lost}
    for p in lost:
        p.unlink()
    assert main(which="train", quick=True, out_dir=str(out), workers=1, as_json=True) == 0
    again = json.loads((out / "results.json").read_text())
    assert all(p.exists() for p in lost)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    for name, fam in first["families"].items():
        for index, task in fam["tasks"].items():
            other = again["families"][name]["tasks"][index]
            for key, runs in task["arms"].items():
                assert [(r["test_acc"], r["flops"]) for r in runs] == \
                       [(r["test_acc"], r["flops"]) for r in other["arms"][key]], (name, key)
    assert again["protocol"]["urza"] == os.path.join(str(out), "urza")  # where grown runs record their outcomes


def test_suite_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from esper import cli
    from esper.suite.run import main

    # Refused by the parser, before any training or output folder.
    out = tmp_path / "never-written"
    for flag, value, message in (("--families", "test", "invalid choice: 'test'"), ("--seeds", "0", "must be >= 1"),
                                 ("--tasks", "-1", "must be >= 1"), ("--jobs", "two", "'two' is not an integer")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["suite", flag, value, "--out", str(out)])
        assert exc.value.code == 2
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers must be >= 1"):
        main(workers=0, out_dir=str(out))
    with pytest.raises(ValueError, match="'train', 'held-out' or 'all'"):
        main(which="test", out_dir=str(out))
    assert not out.exists()


def test_cancer_control_holds_the_search_winner_to_one_germination(tmp_path: Path) -> None:
    """The training families' breast_cancer control caught the second search's winner (docs/suite.md)
    germinating twice on a task a 16-16 MLP already solves (seeds 2 and 3 of task 1, before 08a3f44):
    its first seed hurt (the validation loss better without it) and the plateau rule grew the next
    layer. Tamiyo's rule that a seed which hurt before any seed paid saturates every layer now holds it
    to one, and the run's own log says so; the defaults (the control arm) germinate at most once too."""
    from esper.oona import iter_events
    from esper.suite.run import Arm, run_arm

    winner = (("threshold", 0.03), ("train_steps", 25), ("blend_steps", 50), ("cooldown_epochs", 1),
              ("min_gain", 0.003))
    found: dict[str, list[int]] = {}
    hurt = 0
    for name, settings in (("defaults", ()), ("winner", winner)):
        counts = []
        for seed in (2, 3):
            arm = Arm("cancer_control", 1, seed, "control@30", False, "train", str(tmp_path / f"{name}{seed}.json"),
                      str(tmp_path / "urza"), settings)
            ((_, run),) = run_arm(arm)
            assert run.test_acc >= 90.0, (name, seed, run.test_acc)  # solved: nothing for growth to fix
            counts.append(run.germinations)
            if name == "winner":
                hurt += sum(1 for e in iter_events(run.run_id) if e["kind"] == "decision"
                            and "every layer is saturated: the seed hurt" in e["data"]["reason"])
        found[name] = counts
    assert max(found["defaults"]) <= 1, found
    assert max(found["winner"]) <= 1, found
    assert hurt >= 1, found  # the rule is what stopped it (without it, these runs grew twice)


def test_a_policy_set_for_the_suite_reaches_its_grown_runs(esper_home: Path) -> None:
    """``esper suite --set policy=...`` grows with that policy (it was silently replaced by the heuristic);
    a policy named by the caller (the random-placement arm, a collection's episodes) still wins. The policy
    is read from the run's own log, as Go started it."""
    from esper.demo.experiments import grown_run, setup_task
    from esper.suite.run import settings_of, setup_for

    def started_with(setup: object, policy: str | None = None) -> str:
        task = setup_task(setup, 0, torch.device("cpu"))
        run = grown_run(task, setup, 0, policy=policy) if policy else grown_run(task, setup, 0)
        first = (esper_home / "runs" / run.run_id / "events.jsonl").read_text().splitlines()[0]
        return json.loads(first)["data"]["policy"]

    family = FAMILIES["blobs"]
    assert started_with(setup_for(family, 0, True, "train", settings_of({"policy": "random"}))) == "random"
    assert started_with(setup_for(family, 0, True, "train")) == "heuristic"  # the control: the default
    assert started_with(setup_for(family, 0, True, "train"), policy="random") == "random"


def test_why_counts_a_grown_runs_decisions_from_its_log() -> None:
    """``python -m esper.suite.why`` (docs/suite.md, "Why growth stops early"): one grown run, its waits
    counted by reason (with what refused the move) and its moves listed, read from the run's own log; a
    held-out family is refused. With a plateau threshold of 1 every epoch after the first is a plateau,
    and on 3 epochs the horizon rule refuses each one; at the defaults the run only watches (the control)."""
    from esper.oona import iter_events
    from esper.suite.why import why

    late = why("blobs", overrides={"threshold": 1.0, "patience": 1, "train_steps": 1, "blend_steps": 1},
               quick=True)
    decisions = [e for e in iter_events(late["run"]) if e["kind"] == "decision"]
    assert sum(late["waits"].values()) + len(late["moves"]) == len(decisions) == late["epochs"] == 3
    refused = {k: n for k, n in late["waits"].items() if k.startswith("validation loss plateaued / but ")}
    assert sum(refused.values()) == 2 and all("epochs are left" in k for k in refused), late["waits"]
    assert late["moves"] == [] and late["germinations"] == 0
    watches = why("blobs", quick=True)
    assert watches["moves"] == [] and watches["waits"] == {"watching for a plateau": 3}
    with pytest.raises(HeldOutError):
        why("rings", quick=True)
