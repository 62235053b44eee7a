"""The PPO trainer from scratch for about a minute (issue 16 item 4): behaviour cloning's loss falls (and the same
check fails on a control that cannot learn), the checkpoint loads and training resumes, the curves are written
and a resumed run's curves continue the old ones, and Go's forward agrees with PyTorch on the trained weights.
Real heuristic and policy runs of the suite's training families, the real library."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from esper.simic.export import dense, load_model
from esper.simic.graph import encode, forward
from esper.simic.ppo import EpisodeSpec, HeldOutEval, PPOConfig, Trainer, training_specs
from esper.simic.ppo_eval import Arm, run_arm


def _falls(losses: list[float]) -> bool:
    """The check: the mean of the last three epochs is below 75% of the first epoch's loss."""
    return sum(losses[-3:]) / 3 < 0.75 * losses[0]


@pytest.mark.slow
def test_train_from_scratch_resume_curves_and_go_parity(tmp_path: Path) -> None:
    out = tmp_path / "train"
    config = PPOConfig(hidden=16, bc_epochs=15, episodes_per_update=2, checkpoint_every=2, ppo_epochs=2, epochs=15,
                       quick=False, seed=0)
    bc = [EpisodeSpec("spirals", 0, 1, epochs=15, quick=False), EpisodeSpec("waveforms", 0, 2, epochs=15, quick=False)]
    specs = training_specs(6, seed=1, epochs=15, quick=False)
    with Trainer(str(out), config, workers=1, curve_every=5) as trainer:
        losses = trainer.behaviour_clone(bc)
        assert _falls(losses), losses
        # The control: the same pairs with a learning rate of 0 cannot learn, and the check says so.
        control = Trainer(str(tmp_path / "control"), PPOConfig(hidden=16, bc_epochs=15, bc_lr=0.0, seed=0))
        control._heuristic = dict(trainer._heuristic)  # the same heuristic runs, not rerun
        flat = control.behaviour_clone(bc)
        assert not _falls(flat), flat
        first = trainer.ppo(specs[:4])
    assert [e["episode"] for e in first] == [1, 2, 3, 4]
    curves = json.loads((out / "curves.json").read_text())
    # Fewer episodes than --curve-every: a point per episode, the rewards the log holds.
    assert not curves["windowed"] and curves["reward"]["x"] == [1, 2, 3, 4]
    assert curves["reward"]["total"] == pytest.approx([e["reward"]["total"] for e in first])
    assert curves["bc_loss"] == pytest.approx(losses)
    assert len(curves["explained_variance"]["x"]) == 2 and set(curves["entropy"]) >= {"op", "target", "size"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The checkpoint loads (same weights and log) and training resumes where it stopped.
    with Trainer(str(out), workers=1, curve_every=5) as again:
        assert again.episodes == 4 and again.log == trainer.log
        assert trainer.policy is not None and again.policy is not None
        for (k, v), (k2, v2) in zip(trainer.policy.state_dict().items(), again.policy.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
        more = again.ppo(specs)
        assert [e["episode"] for e in more] == [5, 6]
        resumed = json.loads((out / "curves.json").read_text())
        # Six episodes, curve_every 5: windows of 5 (episodes 1-5, then 6) over the old run's episodes and the
        # new ones.
        totals = [e["reward"]["total"] for e in first + more]
        assert resumed["windowed"] and resumed["reward"]["x"] == [5, 6]
        assert resumed["reward"]["total"] == pytest.approx([sum(totals[:5]) / 5, totals[5]])
        assert resumed["reward"]["running_mean"][-1] == pytest.approx(sum(totals[1:]) / 5)
        # A held-out evaluation during training (--eval-every): logged at its episode, and in the curves.
        again.evaluate = HeldOutEval(every=0, families=("rings",), tasks=1, seeds=1, quick=True)
        entry = again.held_out_eval()
        report = json.loads((out / "eval" / "eval.json").read_text())
        runs = {d["arm"]: d for d in report["runs"]}
        assert entry["episode"] == 6 and entry["pairs"] == 1
        assert entry["diff_mean"] == pytest.approx(runs["ppo"]["test_metric"] - runs["heuristic"]["test_metric"])
        held = json.loads((out / "curves.json").read_text())["held_out"]
        assert held["x"] == [6] and held["diff_mean"] == pytest.approx([entry["diff_mean"]])
        model = tmp_path / "model"
        again.export(str(model), command="esper simic ppo train (test)", bc_episodes=len(bc), onnx=False)
        policy = again.policy

    # Go's forward (esper_graph_forward) on the trained weights agrees with PyTorch on real graphs of the
    # heuristic runs, and takes PyTorch's greedy masked move.
    assert policy is not None
    reloaded = load_model(str(model))
    graphs = [g for run in trainer._heuristic.values() for g, _ in run.get("pairs", [])]
    assert len(graphs) >= 10
    worst = 0.0
    for g in graphs:
        e = encode(g)
        ref = dense(policy.eval(), e)
        assert all(torch.equal(a, b) for a, b in zip(dense(reloaded, e).values(), ref.values()))
        go = forward(str(model), g)
        for k, r in ref.items():
            a = torch.as_tensor(go["dense"][k], dtype=torch.float64).reshape(-1)
            b = r.to(torch.float64).reshape(-1)
            worst = max(worst, float(((a - b).abs() / (1 + b.abs())).max()))
        with torch.no_grad():
            step = policy.act(e, greedy=True)
        assert go["action"]["op"] == step.action.proposal(e)["op"]
    assert worst < 1e-5, worst
    # And policy="ppo" runs the trained folder in a user's loop (Go decides; every decision carries Go's
    # value estimate, none refused).
    doc = run_arm(Arm("rings", 0, 0, "ppo", 6, True, str(model), "", str(tmp_path / "arm.json"),
                      str(tmp_path / "urza")))
    assert doc["decisions"] >= 6 and len(doc["values"]) == doc["decisions"] and doc["refused"] == 0
    assert all(math.isfinite(v) for v in doc["values"])
    assert os.path.exists(tmp_path / "arm.json")


def test_start_from_a_model_folder(tmp_path: Path) -> None:
    """--init-model: PPO starts from the shipped folder's weights (no behaviour cloning); the checkpoint keeps
    them and a second start on that checkpoint is refused (it resumes instead)."""
    from esper.simic.graph import MODEL_DIR

    shipped = load_model(str(MODEL_DIR))
    with Trainer(str(tmp_path), PPOConfig(hidden=64), workers=1) as trainer:
        trainer.start_from(str(MODEL_DIR))
        assert trainer.config.hidden == shipped.hidden and trainer.policy is not None
        for (k, v), (k2, v2) in zip(trainer.policy.state_dict().items(), shipped.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    again = Trainer(str(tmp_path), workers=1)
    assert again.policy is not None and [e["kind"] for e in again.log] == ["init"]
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in again.policy.state_dict().items())
    with pytest.raises(ValueError, match="resumes"):
        again.start_from(str(MODEL_DIR))
    # A deadline already past: no update starts (and nothing is run).
    assert again.ppo(training_specs(4, seed=1), deadline=time.monotonic()) == [] and again.episodes == 0
    assert json.loads((tmp_path / "curves.json").read_text())["episodes"] == 0


@pytest.mark.slow
def test_command_line_resumes_from_a_warm_start_with_held_out_evaluations(tmp_path: Path) -> None:
    """`python -m esper.simic.ppo train` as a user runs it: from the shipped warm start, two episodes, a
    held-out evaluation at episode 2 (shared workers), the curves and the model written."""
    import subprocess
    import sys

    from esper.simic.graph import MODEL_DIR

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "esper.simic.ppo", "train", "--out", str(out), "--init-model", str(MODEL_DIR),
           "--episodes", "2", "--workers", "1", "--eval-every", "2", "--eval-seeds", "1", "--eval-families", "rings",
           "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out at episode 2" in res.stdout and "starting from" in res.stdout
    held = json.loads((out / "curves.json").read_text())["held_out"]
    assert held["x"] == [2] and held["pairs"] == [1]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["training"]["ppo_episodes"] == 2 and manifest["training"]["init_model"]["model"] == str(MODEL_DIR)
