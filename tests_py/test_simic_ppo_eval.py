"""``esper simic ppo eval`` (issue 16 item 4) on one tiny held-out task and seed: the table's figures come from
the real runs (Go's counters, Go's outcome records in Urza, Go's value estimates), the arms share the task,
seed and initialisation, a finished evaluation resumes without rerunning, and a training family is refused.
Real PyTorch, the real library, the shipped model folder run by Go (``policy="ppo"``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from esper.simic.graph import MODEL_DIR
from esper.simic.ppo import main
from esper.urza import Urza


def test_ppo_eval_figures_come_from_real_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(MODEL_DIR), "--families", "rings", "--tasks", "1", "--seeds", "1", "--quick",
            "--epochs", "8", "--against", "heuristic,learned", "--workers", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    runs = {d["arm"]: d for d in report["runs"]}
    assert set(runs) == {"ppo", "heuristic", "learned"}
    ppo, heu, learned = runs["ppo"], runs["heuristic"], runs["learned"]
    assert {(d["family"], d["index"], d["seed"], d["epochs"]) for d in runs.values()} == {("rings", 0, 0, 8)}
    # The paired difference and the FLOPs, by hand from the two runs.
    vs = report["against"]["heuristic"]["overall"]
    assert vs["pairs"] == 1 and vs["diff_se"] is None
    assert vs["diff_mean"] == pytest.approx(ppo["test_metric"] - heu["test_metric"])
    assert vs["flops_ratio_mean"] == pytest.approx(ppo["flops"] / heu["flops"])
    assert report["arms"]["ppo"]["flops_mean"] == ppo["flops"] > 0
    vs = report["against"]["learned"]["overall"]
    assert vs["diff_mean"] == pytest.approx(ppo["test_metric"] - learned["test_metric"])
    assert (vs["flops_ppo"], vs["flops_other"]) == (ppo["flops"], learned["flops"])
    # Germinations and their ends: Go's counters, and Go's outcome records read back from the store.
    store = Urza(str(out / "urza"))
    for d in (ppo, heu, learned):
        records = store.outcomes(d["run_id"])
        assert len(records) == d["germinations"] == len(d["outcomes"])
        fossilized = sum(1 for r in records if r["final_state"] == "FOSSILIZED")
        assert fossilized == d["fossilizations"] == report["arms"][d["arm"]]["fossilized"]
    assert ppo["germinations"] >= 1, "the shipped policy grew nothing: decision quality would test nothing"
    q = report["arms"]["ppo"]
    good = sum(1 for r in ppo["outcomes"] if r["final_state"] == "FOSSILIZED" and r["measured"] and r["gain"] > 0)
    assert q["fossilized_with_gain"] == good and q["decision_quality"] == pytest.approx(good / ppo["germinations"])
    # Go decided every move of the ppo run, each with its value head's estimate; the heuristic's carry none.
    assert ppo["decisions"] >= 8 and len(ppo["values"]) == ppo["decisions"]
    assert heu["values"] == learned["values"] == [] and min(heu["decisions"], learned["decisions"]) >= 8
    assert q["refused"] == ppo["refused"] == 0
    assert report["critic"]["decisions"] == ppo["decisions"] and report["critic"]["episodes"] == 1
    assert report["critic"]["explained_variance"] is None  # one episode's return has no variance
    for field in ("ppo - heuristic", "ppo - learned", "critic's explained variance", "refused/decisions"):
        assert field in printed
    # Resumable: the finished runs are not rerun.
    files = sorted((out / "episodes").rglob("*.json"))
    assert len(files) == 3
    stamps = [os.stat(f).st_mtime_ns for f in files]
    assert main(args) == 0
    assert [os.stat(f).st_mtime_ns for f in files] == stamps
    again = json.loads((out / "eval.json").read_text())
    assert again["runs"] == report["runs"]


def test_ppo_eval_refuses_training_families(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--families", "spirals", "--out", str(tmp_path), "--quiet"]) == 2
    assert "training family" in capsys.readouterr().out
    assert not (tmp_path / "eval.json").exists()
