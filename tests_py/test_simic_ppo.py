"""Simic's PPO trainer (issue 16 item 2): behaviour cloning from real heuristic runs of the suite's training
families, PPO on real policy runs, the paired reward, checkpoints that load and resume. Real PyTorch, the
real library, the demo's training loop."""

from __future__ import annotations

import math
import os

import pytest
import torch

from esper.simic.graph import encode
from esper.simic.policy import Action, legal
from esper.simic.ppo import EpisodeSpec, PPOConfig, Prices, Trainer, gae, reward, run_episode, training_specs
from esper.suite import HeldOutError, families


def test_gae_and_reward_by_hand() -> None:
    adv, ret = gae([0.0, 0.0, 1.0], [0.5, 0.2, 0.1], gamma=1.0, lam=0.95)
    # t2: 1 - 0.1 = 0.9; t1: 0.1 - 0.2 + 0.95 * 0.9 = 0.755; t0: 0.2 - 0.5 + 0.95 * 0.755 = 0.41725.
    assert adv == pytest.approx([0.41725, 0.755, 0.9])
    assert ret == pytest.approx([0.91725, 0.955, 1.0])
    pol = {"metric": 91.0, "flops": 3.0e6, "params": 1500, "rollbacks": 1}
    heu = {"metric": 90.0, "flops": 2.0e6, "params": 1000, "rollbacks": 0}
    terms = reward(pol, heu, Prices(compute=2.0, params=1.0, stability=0.5))
    assert terms == pytest.approx({"accuracy": 1.0, "compute": -1.0, "params": -0.5, "stability": -0.5,
                                   "total": -1.0})


def test_held_out_families_are_refused() -> None:
    held = families("held-out")[0].name
    with pytest.raises(HeldOutError):
        run_episode(EpisodeSpec(held, 0, 0, epochs=2), "heuristic")
    train = {f.name for f in families("train")}
    assert {s.family for s in training_specs(50, seed=0)} <= train


@pytest.mark.slow
def test_bc_then_ppo_and_resume(tmp_path: os.PathLike[str]) -> None:
    specs = [EpisodeSpec("spirals", 0, 1, epochs=15, quick=False), EpisodeSpec("waveforms", 0, 2, epochs=15,
                                                                               quick=False)]
    config = PPOConfig(hidden=32, bc_epochs=15, episodes_per_update=2, checkpoint_every=2, ppo_epochs=2)
    trainer = Trainer(str(tmp_path), config, workers=1)
    runs = trainer.heuristic_runs(specs)
    # The heuristic's logged moves are legal under Go's masks of the graphs they were made on, and hold its
    # germinations (the spirals and waveforms runs each germinate once).
    pairs = [(g, Action(**a)) for run in runs for g, a in run["pairs"]]
    assert all(legal(encode(g), a) for g, a in pairs)
    assert sum(1 for _, a in pairs if a.op == 1) == sum(run["germinations"] for run in runs) >= 2
    losses = trainer.behaviour_clone(specs)
    assert len(losses) == 15 and sum(losses[-3:]) / 3 < 0.75 * losses[0], losses
    episodes = trainer.ppo(specs)
    assert [e["episode"] for e in episodes] == [1, 2]
    for e in episodes:
        assert e["refused"] == 0  # the policy samples under Go's masks
        assert set(e["reward"]) == {"accuracy", "compute", "params", "stability", "total"}
        assert math.isfinite(e["reward"]["total"])
    update = trainer.log[-1]
    assert update["kind"] == "update" and math.isfinite(update["policy_loss"]) and "entropy_op" in update
    # The checkpoint loads: same weights, counters and log; a resumed run skips the episodes done.
    again = Trainer(str(tmp_path), workers=1)
    assert again.episodes == 2 and again.log == trainer.log
    assert trainer.policy is not None and again.policy is not None
    for (k, v), (k2, v2) in zip(trainer.policy.state_dict().items(), again.policy.state_dict().items()):
        assert k == k2 and bool((v == v2).all())
    assert again.ppo(specs) == []


@pytest.mark.slow
def test_bc_reports_held_out_accuracy_and_critic_warmup_keeps_the_policy(tmp_path: os.PathLike[str]) -> None:
    specs = [EpisodeSpec(fam, 0, seed, epochs=6) for fam, seed in
             (("spirals", 1), ("waveforms", 2), ("spirals", 3), ("waveforms", 4))]
    config = PPOConfig(hidden=16, bc_epochs=3, bc_holdout=2, episodes_per_update=2, checkpoint_every=2,
                       ppo_epochs=1, critic_warmup=2)
    with Trainer(str(tmp_path), config, workers=1) as trainer:
        runs = trainer.heuristic_runs(specs)
        trainer.behaviour_clone(specs)
        bc = [e for e in trainer.log if e["kind"] == "bc"]
        # Runs 2 and 4 (every 2nd) are held out: their pairs are scored, the others trained on.
        held_pairs = len(runs[1]["pairs"]) + len(runs[3]["pairs"])
        assert len(bc) == 3 and all(e["held_out_runs"] == 2 and e["held_out_pairs"] == held_pairs for e in bc)
        assert all(e["pairs"] == len(runs[0]["pairs"]) + len(runs[2]["pairs"]) for e in bc)
        assert all(0.0 <= e["held_out_op_accuracy"] <= 1.0 for e in bc)
        assert sum(bc[-1]["held_out_confusion"].values()) == held_pairs
        assert trainer.policy is not None

        def split() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
            state = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
            return ({k: v for k, v in state.items() if k.startswith("value_head.")},
                    {k: v for k, v in state.items() if not k.startswith("value_head.")})

        value0, rest0 = split()
        trainer.ppo(specs[:2])  # episodes 1-2: within the warm-up, the value head alone learns
        value1, rest1 = split()
        assert trainer.log[-1]["kind"] == "update" and trainer.log[-1]["critic_only"] is True
        assert all(torch.equal(rest0[k], rest1[k]) for k in rest0)
        assert any(not torch.equal(value0[k], value1[k]) for k in value0)
        trainer.ppo(specs)  # episodes 3-4: past it, the policy's layers move too (the control)
        _, rest2 = split()
        assert trainer.log[-1]["kind"] == "update" and trainer.log[-1]["critic_only"] is False
        assert any(not torch.equal(rest1[k], rest2[k]) for k in rest1)
