"""Simic's PPO trainer for the graph policy (:mod:`esper.simic.policy`), warm-started by imitating the heuristic.

Episodes are real short training runs of tasks of the suite's **training** families (``esper.suite``; the
tasks are loaded with ``reader="train"``, so a held-out family raises :class:`esper.suite.HeldOutError`),
trained with the demo's loop (``esper.demo.train.train``) in spawned worker processes, one per core.

**Behaviour cloning.** A heuristic run (``policy="heuristic"``) logs, at every epoch's end, the graph Tamiyo
decided on and the moves it made: Go's session is copied (its snapshot, restored into a scratch session with
the manual policy) and given the same metrics, so its graph is the heuristic's observation; each decision is
then replayed there as a proposal, giving the next graph. A germination's size is the size of the graph's
ladder (``graph["sizes"]``) whose parameter count is nearest to the heuristic's seed. After its germination
(or when it germinates nothing) the heuristic waits: that wait is a label too.

**The policy's episodes.** With ``policy="manual"`` (Tamiyo does not act on its own; the governor still
rolls back), at each epoch's end the policy reads ``Morphogenesis.graph()`` and proposes moves until it
chooses wait (at most ``moves_per_epoch``); every move passes Go's gates and limits.

**Reward** (terminal, γ = 1): the policy run's result minus the heuristic run's on the same task, seed and
initialisation, at the documented prices of :class:`Prices`; each term is logged.

**PPO**: clipped objective, GAE (λ), entropy bonus, value clipping, advantage normalisation. Training
checkpoints every ``checkpoint_every`` episodes and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .graph import OPS, encode
from .policy import Action, GraphPolicy, legal

__all__ = ["Prices", "EpisodeSpec", "PPOConfig", "Trainer", "run_episode", "reward", "training_specs",
           "gae", "bc_pairs"]


@dataclass(frozen=True)
class Prices:
    """What the reward charges, in points of the validation metric (percent; R² in percent for regression).

    Attributes:
        compute: points per 100% more training FLOPs than the heuristic run.
        params: points per 100% more parameters (at the chosen epoch) than the heuristic run.
        stability: points per rollback more than the heuristic run.
    """

    compute: float = 1.0
    params: float = 1.0
    stability: float = 1.0


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: task ``index`` of the training family ``family``, split, initialisation and controller
    seed ``seed``, ``epochs`` epochs on the quick (small) version of the task when ``quick``."""

    family: str
    index: int
    seed: int
    epochs: int = 12
    quick: bool = True


def training_specs(n: int, seed: int, epochs: int = 12, quick: bool = True, tasks: int = 4) -> list[EpisodeSpec]:
    """``n`` episodes drawn (with ``seed``) over the suite's training families, ``tasks`` tasks each."""
    from ..suite import families

    fams = [f.name for f in families("train")]
    rng = random.Random(seed)
    return [EpisodeSpec(rng.choice(fams), rng.randrange(tasks), rng.randrange(1 << 16), epochs, quick)
            for _ in range(n)]


def _morph_settings(spec: EpisodeSpec) -> dict[str, Any]:
    """Short lifecycles for short runs (the demo's fast-growth settings), told the run's length."""
    return dict(train_steps=15, blend_steps=15, embargo_steps=15, signal_every=5, patience=2, threshold=0.05,
                holding_epochs=1, cooldown_epochs=1, max_concurrent=1, min_gain=0.005, epochs=spec.epochs,
                seed=spec.seed, max_params=20_000)


def _map_decision(d: dict[str, Any], g: dict[str, Any]) -> Action | None:
    """The heuristic's decision as an action of the policy's move space (None: not expressible)."""
    op = d.get("op")
    if op not in OPS or op == "wait":
        return Action(0) if op == "wait" else None
    target = d["layer"] * g["slots"] + d["slot"]
    if op != "germinate":
        return Action(OPS.index(op), target)
    if d.get("template") not in g["templates"]:
        return None
    k = g["templates"].index(d["template"])
    counts = g["masks"]["size_params"][d["layer"]][k]
    legal = [z for z, ok in enumerate(g["masks"]["size"][d["layer"]][k]) if ok]
    if not legal:
        return None
    z = min(legal, key=lambda z: abs(math.log(max(1, counts[z])) - math.log(max(1, d.get("param_count", 1)))))
    return Action(1, target, k, z)


def _heuristic_labels(snapshot: str, metrics: dict[str, Any], decisions: list[dict[str, Any]]
                      ) -> list[tuple[dict[str, Any], Action]]:
    """(graph, action) pairs of one epoch's end of a heuristic run (see the module's doc)."""
    from ..session import Session

    snap = json.loads(snapshot)
    snap["config"]["policy"] = "manual"
    config = dict(snap["config"])
    scratch = Session(config)
    try:
        scratch.restore(json.dumps(snap, separators=(",", ":"), ensure_ascii=False))
        scratch.end_epoch(metrics)
        pairs = []
        for d in decisions:
            if d.get("op") == "rollback":
                return []  # the governor acted, not the policy: nothing to imitate
            if not d.get("applied", False):
                continue  # the session refused it: the heuristic did not make that move
            g = scratch.graph()
            a = _map_decision(d, g)
            if a is None or not legal(encode(g), a):
                # Not expressible in the policy's move space (or not legal under Go's masks of the replayed
                # graph): the epoch's later moves would be imitated out of context, so stop here.
                return pairs
            pairs.append((g, a))
            if a.op == 0:
                return pairs
            if not scratch.propose(a.proposal(encode(g)))["applied"]:
                return pairs
        pairs.append((scratch.graph(), Action(0)))
        return pairs
    finally:
        scratch.close()


def run_episode(spec: EpisodeSpec, mode: str, policy_state: dict[str, Any] | None = None,
                moves_per_epoch: int = 3, explore: bool = True) -> dict[str, Any]:
    """Run one episode (a worker's job) and return its figures and records.

    Args:
        spec: the episode.
        mode: "heuristic" (Tamiyo's heuristic decides; its (graph, action) pairs are logged) or "policy"
            (the graph policy in ``policy_state`` proposes; its steps are logged).
        policy_state: {"config": GraphPolicy.config(), "weights": state_dict} (mode "policy").
        moves_per_epoch: the most moves the policy proposes at one epoch's end.
        explore: sample the policy's moves (else its most likely ones).

    Returns:
        {"spec", "mode", "metric" (validation metric at the chosen epoch), "flops", "params", "rollbacks",
        "refused", "proposals", "germinations", "fossilizations", "wall", and "pairs" (heuristic: graphs
        and actions) or "steps" (policy: graphs, actions, log-probabilities, values)}.

    Raises:
        esper.suite.HeldOutError: ``spec.family`` is held out.
    """
    from ..demo.experiments import _evaluator, _wrap, build_model, setup_task
    from ..demo.jobs import one_thread
    from ..demo.train import train
    from ..suite import FAMILIES
    from ..suite.run import setup_for
    from ..tolaria import MorphConfig, Morphogenesis

    if mode not in ("heuristic", "policy"):
        raise ValueError(f"mode must be 'heuristic' or 'policy', got {mode!r}")
    with one_thread():
        setup = setup_for(FAMILIES[spec.family], spec.index, spec.quick, reader="train")
        setup = replace(setup, epochs=spec.epochs)
        task = setup_task(setup, spec.seed, torch.device("cpu"))
        torch.manual_seed(spec.seed)
        model = _wrap(build_model(task, setup, setup.start_width), setup)
        opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
        config = MorphConfig(**_morph_settings(spec), policy="heuristic" if mode == "heuristic" else "manual")
        morph = Morphogenesis(model, opt, config=config, evaluate=_evaluator(task))
        policy = None
        if mode == "policy":
            if policy_state is None:
                raise ValueError("mode 'policy' needs policy_state")
            policy = GraphPolicy(**policy_state["config"])
            policy.load_state_dict(policy_state["weights"])
            policy.eval()
        pairs: list[tuple[dict[str, Any], Action]] = []
        steps: list[dict[str, Any]] = []

        def on_epoch(epoch: int, hist: Any) -> None:
            if mode == "heuristic":
                snap = morph.session.snapshot()
                res = morph.end_epoch(val_loss=hist.val_loss[-1], val_metric=hist.val_acc[-1])
                pairs.extend(_heuristic_labels(snap, res["metrics"], res.get("decisions", [])))
                return
            morph.end_epoch(val_loss=hist.val_loss[-1], val_metric=hist.val_acc[-1])
            assert policy is not None
            for _ in range(moves_per_epoch):
                doc = morph.graph()
                g = encode(doc)
                with torch.no_grad():
                    step = policy.act(g, greedy=not explore)
                r = morph.propose(**step.action.proposal(g), reason="graph policy")
                steps.append({"graph": doc, "action": asdict(step.action), "log_prob": float(step.log_prob),
                              "value": float(step.value), "applied": r["applied"]})
                if step.action.op == 0:
                    break

        start = time.perf_counter()
        hist = train(model, task, epochs=setup.epochs, lr=setup.lr, batch_size=setup.batch_size, seed=spec.seed,
                     optimizer=opt, on_step=morph.step, on_epoch=on_epoch)
        counters = morph.stats()["counters"]
        morph.close()
    out = {"spec": asdict(spec), "mode": mode, "metric": hist.val_acc[hist.best_epoch], "flops": hist.flops[-1],
           "params": hist.params[hist.best_epoch], "rollbacks": counters["rollbacks"],
           "refused": counters["refused"], "proposals": counters["proposals"],
           "germinations": counters["germinations"], "fossilizations": counters["fossilizations"],
           "wall": time.perf_counter() - start}
    if mode == "heuristic":
        out["pairs"] = [(g, asdict(a)) for g, a in pairs]
    else:
        out["steps"] = steps
    return out


def reward(policy_run: dict[str, Any], heuristic_run: dict[str, Any], prices: Prices) -> dict[str, float]:
    """The episode's reward and its terms (see :class:`Prices`): accuracy (validation metric points, policy
    minus heuristic), compute, params and stability charges (negative when the policy spent more)."""
    terms = {
        "accuracy": policy_run["metric"] - heuristic_run["metric"],
        "compute": -prices.compute * (policy_run["flops"] / max(heuristic_run["flops"], 1.0) - 1.0),
        "params": -prices.params * (policy_run["params"] / max(heuristic_run["params"], 1) - 1.0),
        "stability": -prices.stability * (policy_run["rollbacks"] - heuristic_run["rollbacks"]),
    }
    terms["total"] = sum(terms.values())
    return terms


def gae(rewards: list[float], values: list[float], gamma: float = 1.0,
        lam: float = 0.95) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns of one episode (the value after the last step is 0)."""
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


def bc_pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Action]]:
    """The (graph, action) pairs of heuristic runs."""
    return [(g, Action(**a)) for run in runs for g, a in run["pairs"]]


@dataclass
class PPOConfig:
    """The trainer's settings (saved with every checkpoint)."""

    hidden: int = 64
    rounds: int = 2
    lr: float = 3e-4
    bc_lr: float = 1e-3
    bc_epochs: int = 20
    bc_batch: int = 16
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 1.0
    ppo_epochs: int = 4
    episodes_per_update: int = 4
    moves_per_epoch: int = 3
    checkpoint_every: int = 8
    epochs: int = 12
    quick: bool = True
    seed: int = 0
    prices: Prices = field(default_factory=Prices)


class Trainer:
    """Behaviour cloning then PPO for a graph policy, checkpointed in ``out_dir`` (``checkpoint.pt``:
    weights, optimizer, counters and the log; tensors, numbers and strings only, loaded with
    ``weights_only=True``) and resumed from it."""

    def __init__(self, out_dir: str, config: PPOConfig | None = None, workers: int = 1) -> None:
        self.out_dir = out_dir
        self.config = config or PPOConfig()
        self.workers = workers
        self.policy: GraphPolicy | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.episodes = 0
        self.log: list[dict[str, Any]] = []
        self._heuristic: dict[str, dict[str, Any]] = {}
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(self.path):
            self._load()

    @property
    def path(self) -> str:
        """The checkpoint's path."""
        return os.path.join(self.out_dir, "checkpoint.pt")

    def _make(self, templates: tuple[str, ...], sizes: int) -> None:
        torch.manual_seed(self.config.seed)
        self.policy = GraphPolicy(templates, sizes, hidden=self.config.hidden, rounds=self.config.rounds)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)

    def _run(self, jobs: list[tuple[EpisodeSpec, str]]) -> list[dict[str, Any]]:
        from functools import partial

        from ..demo.jobs import run_pool

        state = None
        if self.policy is not None:
            weights = {k: v.clone() for k, v in self.policy.state_dict().items()}
            state = {"config": self.policy.config(), "weights": weights}
        fn = partial(_job, policy_state=state, moves_per_epoch=self.config.moves_per_epoch)
        return run_pool(fn, jobs, self.workers)

    def heuristic_runs(self, specs: list[EpisodeSpec]) -> list[dict[str, Any]]:
        """The heuristic's runs of ``specs`` (cached per spec: the reward's baseline and BC's data)."""
        missing = [s for s in specs if json.dumps(asdict(s)) not in self._heuristic]
        for run in self._run([(s, "heuristic") for s in missing]):
            self._heuristic[json.dumps(run["spec"])] = run
        return [self._heuristic[json.dumps(asdict(s))] for s in specs]

    def behaviour_clone(self, specs: list[EpisodeSpec], epochs: int | None = None) -> list[float]:
        """Imitate the heuristic's moves on ``specs``' runs; returns the mean loss per epoch: the negative
        log-likelihood of the heuristic's move (summed over the heads used), each op's pairs weighted
        inversely to their count."""
        pairs = bc_pairs(self.heuristic_runs(specs))
        if not pairs:
            raise ValueError("the heuristic runs gave no (graph, action) pairs to imitate")
        graphs = [encode(g) for g, _ in pairs]
        if self.policy is None:
            self._make(graphs[0].templates, graphs[0].size_mask.shape[-1])
        assert self.policy is not None
        from ..demo.jobs import one_thread

        opt = torch.optim.Adam(self.policy.parameters(), lr=self.config.bc_lr)
        rng = random.Random(self.config.seed)
        order = list(range(len(pairs)))
        # The heuristic waits at most epoch ends: each op's pairs weigh in inversely to their count, so that
        # its few germinations and judgements are imitated too (the mean weight is 1).
        counts = {a.op: 0 for _, a in pairs}
        for _, a in pairs:
            counts[a.op] += 1
        weight = [len(pairs) / (len(counts) * counts[a.op]) for _, a in pairs]
        losses = []
        with one_thread():  # small graphs: one thread is 20x faster than two on a shared machine
            for epoch in range(epochs or self.config.bc_epochs):
                rng.shuffle(order)
                total = 0.0
                size = self.config.bc_batch
                for b in range(0, len(order), size):
                    batch = order[b:b + size]
                    loss = sum(-weight[i] * self.policy.act(graphs[i], action=pairs[i][1]).log_prob
                               for i in batch) / len(batch)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
                    opt.step()
                    total += float(loss.detach()) * len(batch)
                losses.append(total / len(pairs))
                self.log.append({"kind": "bc", "epoch": epoch, "loss": losses[-1], "pairs": len(pairs)})
        self.save()
        return losses

    def ppo(self, specs: list[EpisodeSpec]) -> list[dict[str, Any]]:
        """PPO on ``specs``, ``episodes_per_update`` episodes per update; checkpoints every
        ``checkpoint_every`` episodes and skips the episodes a resumed trainer has done. Returns the log of
        the episodes run."""
        if self.policy is None:
            raise ValueError("no policy yet: run behaviour_clone first (the warm start)")
        c = self.config
        done: list[dict[str, Any]] = []
        remaining = specs[self.episodes:]
        for start in range(0, len(remaining), c.episodes_per_update):
            batch = remaining[start:start + c.episodes_per_update]
            heuristic = self.heuristic_runs(batch)
            runs = self._run([(s, "policy") for s in batch])
            samples = []
            for run, base in zip(runs, heuristic):
                terms = reward(run, base, c.prices)
                steps = run["steps"]
                rewards = [0.0] * len(steps)
                if steps:
                    rewards[-1] = terms["total"]
                adv, ret = gae(rewards, [s["value"] for s in steps], c.gamma, c.lam)
                for s, a, r in zip(steps, adv, ret):
                    samples.append((encode(s["graph"]), Action(**s["action"]), s["log_prob"], s["value"], a, r))
                self.episodes += 1
                entry = {"kind": "episode", "episode": self.episodes, "spec": run["spec"], "reward": terms,
                         "moves": len(steps), "refused": run["refused"], "proposals": run["proposals"],
                         "germinations": run["germinations"], "heuristic_germinations": base["germinations"],
                         "wall": run["wall"] + base["wall"]}
                self.log.append(entry)
                done.append(entry)
            if samples:
                from ..demo.jobs import one_thread

                with one_thread():
                    self.log.append({"kind": "update", "episode": self.episodes, **self._update(samples)})
            if self.episodes // c.checkpoint_every > (self.episodes - len(batch)) // c.checkpoint_every:
                self.save()
        self.save()
        return done

    def _update(self, samples: list[tuple[Any, Action, float, float, float, float]]) -> dict[str, float]:
        """PPO's update on one batch of samples; returns the mean losses, entropy per head and the critic's
        explained variance."""
        assert self.policy is not None and self.opt is not None
        c = self.config
        adv = torch.tensor([s[4] for s in samples])
        if len(samples) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        returns = torch.tensor([s[5] for s in samples])
        old_values = torch.tensor([s[3] for s in samples])
        stats = {"policy_loss": 0.0, "value_loss": 0.0}
        ent_sum = torch.zeros(4)
        n = 0
        for _ in range(c.ppo_epochs):
            for i in torch.randperm(len(samples)).tolist():
                g, a, old_logp = samples[i][0], samples[i][1], samples[i][2]
                step = self.policy.act(g, action=a)
                ratio = torch.exp(step.log_prob - old_logp)
                pl = -torch.min(ratio * adv[i], ratio.clamp(1 - c.clip, 1 + c.clip) * adv[i])
                v_clipped = old_values[i] + (step.value - old_values[i]).clamp(-c.value_clip, c.value_clip)
                vl = torch.max((step.value - returns[i]) ** 2, (v_clipped - returns[i]) ** 2)
                loss = pl + c.value_coef * vl - c.entropy_coef * step.entropy.sum()
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                self.opt.step()
                stats["policy_loss"] += float(pl.detach())
                stats["value_loss"] += float(vl.detach())
                ent_sum += step.entropy.detach()
                n += 1
        var = float(returns.var()) if len(samples) > 1 else 0.0
        ev = 1.0 - float((returns - old_values).var()) / var if var > 0 else math.nan
        out = {k: v / max(n, 1) for k, v in stats.items()}
        heads = ("op", "target", "template", "size")
        out.update({f"entropy_{h}": float(e) / max(n, 1) for h, e in zip(heads, ent_sum)})
        out["explained_variance"] = ev
        return out

    def export(self, model_dir: str, command: str, bc_episodes: int, onnx: bool = True) -> list[str]:
        """Write the policy as a model folder for ``policy="ppo"`` (:func:`esper.simic.export.save_model`),
        with a training record: the command, the library's commit, the episodes and the last losses."""
        from .._lib import build_info
        from .export import save_model

        if self.policy is None:
            raise ValueError("no policy to export: train one first (behaviour cloning)")
        bc = [e for e in self.log if e["kind"] == "bc"]
        updates = [e for e in self.log if e["kind"] == "update"]
        record = {"command": command, "commit": str(build_info().get("commit", "")), "torch": torch.__version__,
                  "bc_episodes": bc_episodes, "bc_pairs": bc[-1]["pairs"] if bc else 0,
                  "bc_loss": [round(e["loss"], 4) for e in bc], "ppo_episodes": self.episodes,
                  "ppo_updates": len(updates), "config": json.loads(json.dumps(asdict(self.config)))}
        return save_model(self.policy, model_dir, record, onnx=onnx)

    def save(self) -> None:
        """Write the checkpoint (atomically)."""
        if self.policy is None or self.opt is None:
            return
        state = {"config": json.dumps(asdict(self.config)), "policy": json.dumps(self.policy.config()),
                 "weights": self.policy.state_dict(), "optimizer": self.opt.state_dict(), "episodes": self.episodes,
                 "log": json.dumps(self.log), "heuristic": json.dumps(self._heuristic)}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def _load(self) -> None:
        state = torch.load(self.path, weights_only=True)
        cfg = json.loads(state["config"])
        cfg["prices"] = Prices(**cfg["prices"])
        self.config = PPOConfig(**cfg)
        pc = json.loads(state["policy"])
        self._make(tuple(pc["templates"]), pc["sizes"])
        assert self.policy is not None and self.opt is not None
        self.policy.load_state_dict(state["weights"])
        self.opt.load_state_dict(state["optimizer"])
        self.episodes = int(state["episodes"])
        self.log = json.loads(state["log"])
        self._heuristic = json.loads(state["heuristic"])


def _job(job: tuple[EpisodeSpec, str], policy_state: dict[str, Any] | None, moves_per_epoch: int) -> dict[str, Any]:
    """A worker's job: one episode."""
    spec, mode = job
    return run_episode(spec, mode, policy_state if mode == "policy" else None, moves_per_epoch)


def main(argv: list[str] | None = None) -> int:
    """``esper simic ppo train`` (or ``python -m esper.simic.ppo train``): behaviour cloning on heuristic
    runs, then PPO, on the suite's training families; prints the BC loss per epoch and each episode's reward
    terms, and the rate in episodes per hour (a PPO episode is a policy run and its paired heuristic run). Resumes from
    ``--out``'s checkpoint."""
    import argparse

    from ..demo.jobs import default_workers

    p = argparse.ArgumentParser(prog="esper simic ppo", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="behaviour cloning, then PPO")
    t.add_argument("--out", default="simic-ppo", help="checkpoint directory (resumed when it holds one)")
    t.add_argument("--bc-episodes", type=int, default=8, help="heuristic runs to imitate")
    t.add_argument("--episodes", type=int, default=8, help="PPO episodes")
    t.add_argument("--epochs", type=int, default=15, help="training epochs of every run")
    t.add_argument("--workers", type=int, default=0, help="spawned workers (0: one per core)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model", default="", help="model folder to write for policy=\"ppo\" (model.safetensors, "
                                                "manifest.json, model.onnx; default OUT/model)")
    t.add_argument("--hidden", type=int, default=PPOConfig.hidden, help="width of the network (a new run only)")
    args = p.parse_args(argv)
    workers = args.workers or default_workers("cpu")
    config = PPOConfig(epochs=args.epochs, quick=False, seed=args.seed, episodes_per_update=max(2, workers),
                       hidden=args.hidden)
    trainer = Trainer(args.out, config, workers=workers)
    bc = training_specs(args.bc_episodes, seed=args.seed, epochs=args.epochs, quick=False)
    start = time.perf_counter()
    if not any(e["kind"] == "bc" for e in trainer.log):
        trainer.heuristic_runs(bc)
        runs_wall = time.perf_counter() - start
        print(f"heuristic runs: {len(bc)} in {runs_wall:.0f} s ({3600 * len(bc) / runs_wall:.0f} runs/hour, "
              f"{workers} workers)")
        losses = trainer.behaviour_clone(bc)
        print("bc loss per epoch: " + " ".join(f"{x:.3f}" for x in losses))
    specs = training_specs(args.episodes, seed=args.seed + 1, epochs=args.epochs, quick=False)
    start = time.perf_counter()
    done = trainer.ppo(specs)
    wall = time.perf_counter() - start
    for e in done:
        r = e["reward"]
        print(f"episode {e['episode']} {e['spec']['family']}/{e['spec']['index']} seed {e['spec']['seed']}: "
              f"reward {r['total']:+.3f} (accuracy {r['accuracy']:+.3f}, compute {r['compute']:+.3f}, "
              f"params {r['params']:+.3f}, stability {r['stability']:+.3f}); {e['moves']} moves, "
              f"{e['germinations']} germinations (heuristic {e['heuristic_germinations']}), {e['refused']} refused")
    for u in (e for e in trainer.log if e["kind"] == "update"):
        print(f"update at episode {u['episode']}: policy loss {u['policy_loss']:+.4f}, value loss "
              f"{u['value_loss']:.3f}, explained variance {u['explained_variance']:.3f}, entropy op "
              f"{u['entropy_op']:.3f}")
    if done:
        print(f"ppo: {len(done)} episodes in {wall:.0f} s: {3600 * len(done) / wall:.0f} episodes/hour "
              f"({workers} workers; each a policy run plus its paired heuristic run)")
    model_dir = args.model or os.path.join(args.out, "model")
    command = "esper simic ppo " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in trainer.export(model_dir, command=command, bc_episodes=args.bc_episodes):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
