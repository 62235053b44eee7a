"""Simic's rollouts in Urza: every PPO episode of the trainer is an experience record (Go validates and stores it,
through the real library), its steps re-encode and re-score, its run ids find the runs' outcome records in the
same store, and a resumed trainer replaces rather than duplicates."""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
from pathlib import Path

import pytest
import torch

from esper.errors import InvalidArgumentError
from esper.simic.export import load_model
from esper.simic.graph import MODEL_DIR, encode
from esper.simic.policy import Action, legal
from esper.simic.ppo import EpisodeSpec, PPOConfig, Trainer, training_specs
from esper.urza import Urza

# Quick tasks, 6 epochs: four policy runs and their baselines take a few seconds. The first of these specs
# germinates under the shipped policy (checked below: the outcome-record link needs a germination).
SPECS = training_specs(4, seed=1, epochs=6, quick=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_trainer_stores_its_episodes_and_a_resume_replaces_them(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    out = tmp_path / "out"
    config = PPOConfig(episodes_per_update=2, checkpoint_every=2, ppo_epochs=1)
    with Trainer(str(out), config, workers=1, urza=str(store_dir)) as trainer:
        trainer.start_from(str(MODEL_DIR))
        # The weights the first batch runs with, as a model folder writes them (not through the trainer's hash).
        trainer.export(str(tmp_path / "start"), command="test", bc_episodes=0, onnx=False)
        start = load_model(str(tmp_path / "start"))
        first = trainer.ppo(SPECS[:2])
        run = trainer.trainer_run
        after_two = trainer.policy.state_dict() if trainer.policy is not None else {}
        after_two = {k: v.clone() for k, v in after_two.items()}
    shutil.copy(out / "checkpoint.pt", tmp_path / "checkpoint-2.pt")
    with Trainer(str(out), workers=1, urza=str(store_dir)) as again:
        assert again.trainer_run == run and again.episodes == 2  # the checkpoint keeps the trainer run
        rest = again.ppo(SPECS)
    assert [e["episode"] for e in first + rest] == [1, 2, 3, 4]
    log = {e["episode"]: e for e in again.log if e["kind"] == "episode"}

    with Urza(str(store_dir)) as store:
        assert [r["trainer_run"] for r in store.experience_runs()] == [run]
        recs = store.experience(run)
        assert [(r["mode"], r["episode"]) for r in recs] == [("policy", n) for n in (1, 2, 3, 4)]
        germinated = 0
        for rec in recs:
            assert rec["schema"] == 1 and rec["trainer_run"] == run
            assert rec["reward"] == log[rec["episode"]]["reward"]
            assert EpisodeSpec(**rec["spec"]) == SPECS[rec["episode"] - 1]
            assert rec["run"]["refused"] == 0 and len(rec["steps"]) == log[rec["episode"]]["moves"] >= 1
            # The runs' outcome records are in the same store, under the run ids the record names: one per
            # germination of the run.
            for r in (rec["run"], rec["baseline"]):
                assert len(store.outcomes(r["run_id"])) == r["germinations"], r
                germinated += r["germinations"]
        assert germinated >= 1
        # Episodes 1-2 ran with the starting weights (the model folder's bytes), 3-4 with those after the first
        # update; every stored step re-encodes, is legal under Go's masks and re-scores to its stored
        # log-probability and value under those weights.
        assert {r["checkpoint"]["weights_sha256"] for r in recs[:2]} == {_sha256(tmp_path / "start" /
                                                                                  "model.safetensors")}
        assert [r["checkpoint"]["episodes"] for r in recs] == [0, 0, 2, 2]
        assert recs[2]["checkpoint"]["weights_sha256"] != recs[0]["checkpoint"]["weights_sha256"]
        later = copy.deepcopy(start)
        later.load_state_dict(after_two)
        for rec in recs:
            policy = start if rec["checkpoint"]["episodes"] == 0 else later
            policy.eval()
            for step in rec["steps"]:
                g = encode(step["graph"])
                a = Action(**step["action"])
                assert legal(g, a) and step["applied"]
                with torch.no_grad():
                    again_step = policy.act(g, action=a)
                assert math.isclose(float(again_step.log_prob), step["log_prob"], abs_tol=1e-4)
                assert math.isclose(float(again_step.value), step["value"], abs_tol=1e-4)
        written = {r["episode"]: r["written"] for r in recs}

    # A crash after episodes 3-4 were stored but before their checkpoint: the trainer resumes at episode 2, runs
    # 3-4 again and replaces their records (episode numbers are the key), never adding any.
    shutil.copy(tmp_path / "checkpoint-2.pt", out / "checkpoint.pt")
    with Trainer(str(out), workers=1, urza=str(store_dir)) as resumed:
        assert resumed.episodes == 2 and resumed.trainer_run == run
        assert [e["episode"] for e in resumed.ppo(SPECS)] == [3, 4]
        assert resumed.ppo(SPECS) == []
    with Urza(str(store_dir)) as store:
        recs = store.experience(run)
        assert [r["episode"] for r in recs] == [1, 2, 3, 4]
        assert [r["written"] for r in recs[:2]] == [written[1], written[2]]
        assert all(r["written"] > written[r["episode"]] for r in recs[2:])
        assert store.experience_runs()[0]["episodes"] == {"policy": 4}


def test_behaviour_cloning_runs_are_stored_with_their_pairs(tmp_path: Path) -> None:
    spec = EpisodeSpec("spirals", 0, 1, epochs=6, quick=True)
    with Trainer(str(tmp_path / "out"), PPOConfig(), workers=1, urza=str(tmp_path / "store")) as trainer:
        runs = trainer.heuristic_runs([spec])
        keys = trainer.store_heuristic_runs([spec])
        assert keys == [f"{trainer.trainer_run}/heuristic-000000001"]
        recs = trainer.store().experience(trainer.trainer_run)
    assert len(recs) == 1 and recs[0]["mode"] == "heuristic" and "reward" not in recs[0]
    assert len(recs[0]["steps"]) == len(runs[0]["pairs"]) >= 1
    for step, (g, a) in zip(recs[0]["steps"], runs[0]["pairs"]):
        assert step["graph"] == g and step["action"] == a and "log_prob" not in step
        assert legal(encode(step["graph"]), Action(**step["action"]))
    assert recs[0]["run"]["run_id"] == runs[0]["run_id"]


def test_malformed_experience_is_refused_naming_the_field(tmp_path: Path) -> None:
    """Negative control of the strict schema, through the ABI: the valid record is stored; with a step's
    log-probability removed, a NaN reward or a reward whose total is not its terms' sum it is refused, naming
    the field, and nothing is stored."""
    graph = {"slots": 1}
    step = {"graph": graph, "action": {"op": 0, "target": -1, "template": -1, "size": -1}, "log_prob": -0.2,
            "value": 0.1, "applied": True}
    figures = {"run_id": "r1", "metric": 90.0, "flops": 1e6, "params": 100, "proposals": 1, "refused": 0,
               "germinations": 0, "fossilizations": 0, "rollbacks": 0, "wall": 0.5}
    good = {"trainer_run": "ppo-test", "episode": 1, "mode": "policy",
            "spec": {"family": "spirals", "index": 0, "seed": 1, "epochs": 6, "quick": True},
            "run": figures, "baseline": dict(figures, run_id="r2"),
            "reward": {"accuracy": 1.0, "compute": -0.5, "params": 0.0, "stability": 0.0, "total": 0.5},
            "checkpoint": {"episodes": 0, "weights_sha256": "ab" * 32}, "steps": [step]}
    no_logp = copy.deepcopy(good)
    del no_logp["steps"][0]["log_prob"]
    bad_total = copy.deepcopy(good)
    bad_total["reward"]["total"] = 3.0
    nan = copy.deepcopy(good)
    nan["reward"]["accuracy"] = float("nan")
    with Urza(str(tmp_path / "store")) as store:
        for rec, field in ((no_logp, "steps[0].log_prob"), (bad_total, "reward.total"), (nan, "NaN")):
            with pytest.raises(InvalidArgumentError, match=field.replace("[", r"\[").replace("]", r"\]")):
                store.put_experience(rec)
        assert store.experience("ppo-test") == []
        assert store.put_experience(good) == "ppo-test/policy-000000001"
        assert [r["steps"][0]["log_prob"] for r in store.experience("ppo-test")] == [-0.2]
        with pytest.raises(InvalidArgumentError, match="trainer run"):
            store.experience("../elsewhere")


@pytest.mark.slow
def test_command_line_stores_to_the_default_store(tmp_path: Path) -> None:
    """`esper simic ppo train` as a user runs it, without --urza: behaviour cloning's heuristic run and both PPO
    episodes land in $ESPER_HOME/urza (where the runs' outcome records go), and `esper urza experience` lists
    them."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "esper.simic.ppo", "train", "--out", str(tmp_path / "run"), "--bc-episodes", "1",
           "--episodes", "2", "--epochs", "3", "--workers", "1", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    with Urza(str(Path(os.environ["ESPER_HOME"]) / "urza")) as store:
        [summary] = store.experience_runs()
        run = summary["trainer_run"]
        assert summary["episodes"] == {"heuristic": 1, "policy": 2}
        assert [(r["mode"], r["episode"]) for r in store.experience(run)] == [("heuristic", 1), ("policy", 1),
                                                                             ("policy", 2)]
    assert f"trainer run {run}" in res.stdout
    listed = subprocess.run([sys.executable, "-m", "esper", "urza", "experience", "--run", run], capture_output=True,
                            text=True, timeout=120, env={**os.environ})
    assert listed.returncode == 0 and f"3 episode(s) of trainer run {run}" in listed.stdout, listed.stderr
