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
checkpoints every ``checkpoint_every`` episodes and resumes from its checkpoint; with each checkpoint it writes
the learning curves (``curves.json``, ``curves.png``: :mod:`esper.simic.curves`) from the whole log, so a
resumed run's curves continue the old ones.

**Workers.** Episodes run in spawned worker processes kept for the trainer's life (:class:`Workers`): a
worker imports torch and the library once, not once per update. A batch's heuristic baselines and policy
runs go to the pool together.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .graph import OPS, encode
from .policy import Action, GraphPolicy, legal

__all__ = ["Prices", "EpisodeSpec", "PPOConfig", "HeldOutEval", "Trainer", "Workers", "run_episode", "reward",
           "training_specs", "gae", "bc_pairs", "morph_settings"]


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


def morph_settings(spec: EpisodeSpec) -> dict[str, Any]:
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
                moves_per_epoch: int = 3, explore: bool = True, labels: bool = True, urza: str = "") -> dict[str, Any]:
    """Run one episode (a worker's job) and return its figures and records.

    Args:
        spec: the episode.
        mode: "heuristic" (Tamiyo's heuristic decides; its (graph, action) pairs are logged) or "policy"
            (the graph policy in ``policy_state`` proposes; its steps are logged).
        policy_state: {"config": GraphPolicy.config(), "weights": state_dict} (mode "policy").
        moves_per_epoch: the most moves the policy proposes at one epoch's end.
        explore: sample the policy's moves (else its most likely ones).
        labels: (mode "heuristic") log the (graph, action) pairs for behaviour cloning; a run that is only
            a reward's baseline skips them (each epoch's end replays the session in a scratch copy).
        urza: the Urza store the run writes its outcome records to (``MorphConfig.urza``; "": the default
            store, ``$ESPER_HOME/urza``).

    Returns:
        {"spec", "mode", "run_id" (the run's ``Morphogenesis.run_id``: its outcome records in ``urza``),
        "metric" (validation metric at the chosen epoch), "flops", "params", "rollbacks",
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
        config = MorphConfig(**morph_settings(spec), policy="heuristic" if mode == "heuristic" else "manual",
                             urza=urza)
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
                snap = morph.session.snapshot() if labels else ""
                res = morph.end_epoch(val_loss=hist.val_loss[-1], val_metric=hist.val_acc[-1])
                if labels:
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
        run_id = morph.run_id
        morph.close()  # waits for the run's outcome records
    out = {"spec": asdict(spec), "mode": mode, "run_id": run_id, "metric": hist.val_acc[hist.best_epoch],
           "flops": hist.flops[-1],
           "params": hist.params[hist.best_epoch], "rollbacks": counters["rollbacks"],
           "refused": counters["refused"], "proposals": counters["proposals"],
           "germinations": counters["germinations"], "fossilizations": counters["fossilizations"],
           "wall": time.perf_counter() - start}
    if mode == "heuristic":
        if labels:
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


def _op_agreement(policy: GraphPolicy, graphs: list[Any], pairs: list[tuple[dict[str, Any], Action]]
                  ) -> tuple[float, dict[str, int]]:
    """The share of ``pairs`` whose op the policy's greedy move takes, and the counts of (label op, policy
    op) as ``"label>policy"`` keys."""
    confusion: dict[str, int] = {}
    with torch.no_grad():
        for g, (_, a) in zip(graphs, pairs):
            key = f"{OPS[a.op]}>{OPS[policy.act(g, greedy=True).action.op]}"
            confusion[key] = confusion.get(key, 0) + 1
    same = sum(n for key, n in confusion.items() if key.split(">")[0] == key.split(">")[1])
    return same / max(len(pairs), 1), confusion


def weights_sha256(policy: GraphPolicy) -> str:
    """SHA-256 (hex) of the policy's weights as a model folder's ``model.safetensors`` holds them (float32,
    written by :func:`esper.simic.export.save_model`): an experience record names the weights it ran with."""
    import hashlib

    from safetensors.torch import save

    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in policy.state_dict().items()}
    return hashlib.sha256(save(weights)).hexdigest()


_RUN_FIGURES = ("metric", "flops", "params", "proposals", "refused", "germinations", "fossilizations", "rollbacks",
                "wall")


def _run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """A run's figures as an experience record holds them (``run_id``: its outcome records)."""
    out: dict[str, Any] = {k: run[k] for k in _RUN_FIGURES}
    if run.get("run_id"):  # a baseline cached by a trainer from before run ids were recorded has none
        out["run_id"] = run["run_id"]
    return out


def policy_record(trainer_run: str, episode: int, run: dict[str, Any], baseline: dict[str, Any],
                  terms: dict[str, float], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The experience record (mode "policy") of PPO episode ``episode``: the policy's run (``run_episode``'s
    result, with its steps) and its heuristic baseline, the reward's ``terms`` and the policy ``checkpoint``
    it ran with (``{"episodes", "weights_sha256"}``). Go validates it (:meth:`esper.urza.Urza.put_experience`)."""
    return {"trainer_run": trainer_run, "episode": episode, "mode": "policy", "spec": run["spec"],
            "run": _run_figures(run), "baseline": _run_figures(baseline), "reward": terms,
            "checkpoint": checkpoint, "steps": run["steps"]}


def heuristic_record(trainer_run: str, episode: int, run: dict[str, Any]) -> dict[str, Any]:
    """The experience record (mode "heuristic") of behaviour cloning's heuristic run number ``episode``: its
    figures and its (graph, action) pairs as steps."""
    return {"trainer_run": trainer_run, "episode": episode, "mode": "heuristic", "spec": run["spec"],
            "run": _run_figures(run), "steps": [{"graph": g, "action": a} for g, a in run["pairs"]]}


__all__ += ["weights_sha256", "policy_record", "heuristic_record"]


class Workers:
    """``workers`` spawned processes kept until :meth:`close` (in this process when 1), so that each imports
    torch and the library once rather than once per batch (DESIGN §3: spawned, never forked; they ignore
    SIGINT, and Ctrl-C or a failing job terminates them and is raised in :meth:`map`)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: Any = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``fn(item)`` for every item, results in item order; ``on_done(i, result)`` runs here as each
        finishes. ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one)."""
        from ..demo.jobs import _ignore_sigint, _run_indexed

        results: list[Any] = [None] * len(items)
        if self.workers == 1 or len(items) <= 1 and self._pool is None:
            for i, item in enumerate(items):
                results[i] = fn(item)
                if on_done is not None:
                    on_done(i, results[i])
            return results
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_ignore_sigint)
        done = [False] * len(items)
        try:
            for i, res in self._pool.imap_unordered(_run_indexed, [(i, fn, item) for i, item in enumerate(items)]):
                results[i], done[i] = res, True
                if on_done is not None:
                    on_done(i, res)
        except BaseException:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            raise
        missing = [items[i] for i, d in enumerate(done) if not d]
        if missing:
            raise RuntimeError(f"jobs finished without a result: {missing}")
        return results

    def close(self) -> None:
        """Stop the workers (a later :meth:`map` spawns new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def _bar(total: int, quiet: bool, unit: str = "episode") -> Any:
    """A tqdm progress bar (the suite's plain fallback without tqdm, nothing when quiet)."""
    from ..suite.run import _progress

    if quiet:
        return _progress(total, True)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the simic and dev extras
        return _progress(total, False)
    return tqdm(total=total, unit=unit, dynamic_ncols=True)


@dataclass
class PPOConfig:
    """The trainer's settings (saved with every checkpoint). Among them: ``bc_holdout``, behaviour cloning
    holds out every ``bc_holdout``-th heuristic run to report its imitation accuracy (0: none);
    ``critic_warmup``, the first ``critic_warmup`` PPO episodes train the value head only (the policy's
    loss and entropy bonus are off and the shared layers are not updated), so that the first policy updates
    use a critic that has seen returns instead of the warm start's untrained one."""

    hidden: int = 64
    rounds: int = 2
    lr: float = 3e-4
    bc_lr: float = 1e-3
    bc_epochs: int = 20
    bc_batch: int = 16
    bc_holdout: int = 8
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 1.0
    ppo_epochs: int = 4
    episodes_per_update: int = 4
    critic_warmup: int = 0
    moves_per_epoch: int = 3
    checkpoint_every: int = 8
    epochs: int = 12
    quick: bool = True
    seed: int = 0
    prices: Prices = field(default_factory=Prices)


@dataclass(frozen=True)
class HeldOutEval:
    """The trainer's held-out evaluations: every ``every`` episodes (0: never), ``tasks`` tasks and ``seeds``
    seeds of each held-out family of ``families`` (None: every held-out growth family), quick tasks when
    ``quick``."""

    every: int = 0
    families: tuple[str, ...] | None = None
    tasks: int = 1
    seeds: int = 2
    quick: bool = False


class Trainer:
    """Behaviour cloning then PPO for a graph policy, checkpointed in ``out_dir`` (``checkpoint.pt``:
    weights, optimizer, counters and the log; tensors, numbers and strings only, loaded with
    ``weights_only=True``) and resumed from it. Each checkpoint also writes ``curves.json`` and
    ``curves.png`` (windows of ``curve_every`` episodes). Use it as a context manager (or call
    :meth:`close`) to stop its workers.

    With ``evaluate`` set (:class:`HeldOutEval`), every ``evaluate.every`` episodes the policy is exported
    to ``<out_dir>/model`` and judged against the heuristic on held-out families through Go
    (:func:`esper.simic.ppo_eval.evaluate`, into ``<out_dir>/eval``); the log gets an ``"eval"`` entry and
    the curves the held-out score.

    Every PPO episode is written to the Urza store ``urza`` as an experience record as it completes (the
    policy's run with its steps, its paired heuristic baseline's figures, the reward and its terms, and the
    run ids whose outcome records the runs wrote to the same store), under :attr:`trainer_run`, kept in the
    checkpoint; a resumed trainer continues that run and replaces the records of episodes it runs again
    (episode numbers are the key). ``urza`` is also where the episodes' runs write their outcome records
    ("": the default store, ``$ESPER_URZA_URL`` or ``$ESPER_HOME/urza``). See docs/simic.md, "Experience in
    Urza"."""

    def __init__(self, out_dir: str, config: PPOConfig | None = None, workers: int = 1, *, curve_every: int = 100,
                 quiet: bool = True, evaluate: HeldOutEval | None = None, urza: str = "") -> None:
        from ..outcomes import new_run_id

        self.out_dir = out_dir
        #: The Urza store of the experience records and of the runs' outcome records ("": the default).
        self.urza = urza
        #: The trainer's run id in Urza's experience records (kept by the checkpoint).
        self.trainer_run = "ppo-" + new_run_id()
        self._store: Any = None
        self.config = config or PPOConfig()
        self.workers = workers
        self.curve_every = curve_every
        self.quiet = quiet
        self.evaluate = evaluate
        self._pool = Workers(workers)
        self.policy: GraphPolicy | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.episodes = 0
        self.log: list[dict[str, Any]] = []
        self._heuristic: dict[str, dict[str, Any]] = {}
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(self.path):
            self._load()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes and release the Urza store."""
        self._pool.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    def store(self) -> Any:
        """The :class:`esper.urza.Urza` store the experience records go to (opened once, closed by
        :meth:`close`)."""
        if self._store is None:
            from ..urza import Urza

            self._store = Urza(self.urza or None)
        return self._store

    def store_heuristic_runs(self, specs: list[EpisodeSpec]) -> list[str]:
        """Write behaviour cloning's heuristic runs of ``specs`` (cached by :meth:`heuristic_runs`, with their
        (graph, action) pairs) as experience records of mode "heuristic", episodes numbered from 1 in
        ``specs``' order; returns their keys."""
        keys = []
        for n, spec in enumerate(specs, 1):
            run = self._cached(spec, labels=True)
            if run is None:
                raise ValueError(f"no heuristic run of {spec} with its pairs: run heuristic_runs first")
            keys.append(self.store().put_experience(heuristic_record(self.trainer_run, n, run)))
        return keys

    @property
    def path(self) -> str:
        """The checkpoint's path."""
        return os.path.join(self.out_dir, "checkpoint.pt")

    def _make(self, templates: tuple[str, ...], sizes: int) -> None:
        torch.manual_seed(self.config.seed)
        self.policy = GraphPolicy(templates, sizes, hidden=self.config.hidden, rounds=self.config.rounds)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)

    def _run(self, jobs: list[tuple[EpisodeSpec, str]], on_done: Callable[[int, Any], None] | None = None
             ) -> list[dict[str, Any]]:
        """Run ``(spec, mode)`` jobs on the workers; mode "heuristic" (with BC's labels), "baseline" (a
        heuristic run without them) or "policy" (the current weights)."""
        from functools import partial

        state = None
        if self.policy is not None:
            weights = {k: v.clone() for k, v in self.policy.state_dict().items()}
            state = {"config": self.policy.config(), "weights": weights}
        fn = partial(_job, policy_state=state, moves_per_epoch=self.config.moves_per_epoch, urza=self.urza)
        return self._pool.map(fn, jobs, on_done)

    def _cached(self, spec: EpisodeSpec, labels: bool) -> dict[str, Any] | None:
        run = self._heuristic.get(json.dumps(asdict(spec)))
        if run is None or (labels and "pairs" not in run):
            return None
        return run

    def heuristic_runs(self, specs: list[EpisodeSpec], labels: bool = True) -> list[dict[str, Any]]:
        """The heuristic's runs of ``specs``, cached per spec (a run is deterministic per spec): BC's data
        (``labels``: with the (graph, action) pairs) or the reward's baseline (without them)."""
        missing = [s for s in specs if self._cached(s, labels) is None]
        bar = _bar(len(missing), self.quiet or not missing, unit="run")
        try:
            runs = self._run([(s, "heuristic" if labels else "baseline") for s in missing],
                             lambda i, r: bar.update())
        finally:
            bar.close()
        for run in runs:
            self._heuristic[json.dumps(run["spec"])] = run
        return [self._heuristic[json.dumps(asdict(s))] for s in specs]

    def start_from(self, model_dir: str) -> None:
        """Start from a model folder's weights (``esper simic ppo train --init-model DIR``, e.g. the shipped
        warm start) instead of behaviour cloning; the network's width and rounds are the folder's. A new run
        only: the optimizer starts fresh, and the log records the folder.

        Raises:
            ValueError: the trainer already holds a policy (its checkpoint is resumed instead).
        """
        if self.policy is not None:
            raise ValueError(f"{self.path} already holds a policy: the run resumes from it; --init-model starts a "
                             "new run only (use another --out)")
        from .export import load_model

        loaded = load_model(model_dir)
        self.config = replace(self.config, hidden=loaded.hidden, rounds=loaded.rounds)
        self._make(loaded.templates, loaded.sizes)
        assert self.policy is not None
        self.policy.load_state_dict(loaded.state_dict())
        with open(os.path.join(model_dir, "manifest.json")) as f:
            training = json.load(f).get("training") or {}
        self.log.append({"kind": "init", "model": os.path.abspath(model_dir), "command": training.get("command")})
        self.save()

    def behaviour_clone(self, specs: list[EpisodeSpec], epochs: int | None = None) -> list[float]:
        """Imitate the heuristic's moves on ``specs``' runs; returns the mean training loss per epoch: the
        negative log-likelihood of the heuristic's move (summed over the heads used), every pair weighted
        alike, so that the policy's probability of each move is the heuristic's (its greedy move is then the
        heuristic's most often). Every ``bc_holdout``-th run (when there are at least that many) is held out:
        each epoch's log entry has the op accuracy of the greedy move on the held-out runs' pairs and their
        confusion of ops (heuristic's op, policy's op), the last one also the accuracy on the training pairs."""
        runs = self.heuristic_runs(specs)
        k = self.config.bc_holdout
        held = [r for i, r in enumerate(runs) if k > 0 and len(runs) >= k and i % k == k - 1]
        pairs = bc_pairs([r for r in runs if not any(r is h for h in held)])
        test = bc_pairs(held)
        if not pairs:
            raise ValueError("the heuristic runs gave no (graph, action) pairs to imitate")
        graphs = [encode(g) for g, _ in pairs]
        test_graphs = [encode(g) for g, _ in test]
        if self.policy is None:
            self._make(graphs[0].templates, graphs[0].size_mask.shape[-1])
        assert self.policy is not None
        from ..demo.jobs import one_thread

        opt = torch.optim.Adam(self.policy.parameters(), lr=self.config.bc_lr)
        rng = random.Random(self.config.seed)
        order = list(range(len(pairs)))
        losses = []
        with one_thread():  # small graphs: one thread is 20x faster than two on a shared machine
            for epoch in range(epochs or self.config.bc_epochs):
                rng.shuffle(order)
                total = 0.0
                size = self.config.bc_batch
                for b in range(0, len(order), size):
                    batch = order[b:b + size]
                    loss = sum(-self.policy.act(graphs[i], action=pairs[i][1]).log_prob for i in batch) / len(batch)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
                    opt.step()
                    total += float(loss.detach()) * len(batch)
                losses.append(total / len(pairs))
                entry: dict[str, Any] = {"kind": "bc", "epoch": epoch, "loss": losses[-1], "pairs": len(pairs)}
                if epoch + 1 == (epochs or self.config.bc_epochs):
                    entry["train_op_accuracy"] = _op_agreement(self.policy, graphs, pairs)[0]
                if test:
                    acc, confusion = _op_agreement(self.policy, test_graphs, test)
                    entry.update(held_out_pairs=len(test), held_out_runs=len(held), held_out_op_accuracy=acc,
                                 held_out_confusion=confusion)
                self.log.append(entry)
        self.save()
        return losses

    def ppo(self, specs: list[EpisodeSpec], deadline: float | None = None) -> list[dict[str, Any]]:
        """PPO on ``specs``, ``episodes_per_update`` episodes per update; checkpoints every
        ``checkpoint_every`` episodes and skips the episodes a resumed trainer has done. With ``deadline``
        (a ``time.monotonic()`` value), no update starts after it (a rerun resumes from the checkpoint).
        Returns the log of the episodes run."""
        if self.policy is None:
            raise ValueError("no policy yet: run behaviour_clone first (the warm start)")
        c = self.config
        done: list[dict[str, Any]] = []
        remaining = specs[self.episodes:]
        bar = _bar(len(specs), self.quiet or not remaining)
        bar.update(min(self.episodes, len(specs)))
        try:
            for start in range(0, len(remaining), c.episodes_per_update):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                batch = remaining[start:start + c.episodes_per_update]
                done.extend(self._ppo_batch(batch, bar))
        finally:
            bar.close()
        self.save()
        return done

    def _ppo_batch(self, batch: list[EpisodeSpec], bar: Any) -> list[dict[str, Any]]:
        """One PPO update: the batch's policy runs and (uncached) heuristic baselines on the workers
        together, the rewards, the update, a checkpoint when one is due, and an evaluation when one is due."""
        c = self.config
        done: list[dict[str, Any]] = []
        assert self.policy is not None
        checkpoint = {"episodes": self.episodes, "weights_sha256": weights_sha256(self.policy)}
        missing = [s for s in batch if self._cached(s, labels=False) is None]
        jobs = [(s, "baseline") for s in missing] + [(s, "policy") for s in batch]
        results = self._run(jobs)
        for run in results[:len(missing)]:
            self._heuristic[json.dumps(run["spec"])] = run
        runs = results[len(missing):]
        heuristic = [self._heuristic[json.dumps(asdict(s))] for s in batch]
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
            self.store().put_experience(policy_record(self.trainer_run, self.episodes, run, base, terms, checkpoint))
        if samples:
            from ..demo.jobs import one_thread

            with one_thread():
                self.log.append({"kind": "update", "episode": self.episodes, **self._update(samples)})
        rewards = [e["reward"]["total"] for e in self.log if e["kind"] == "episode"][-c.episodes_per_update * 8:]
        bar.set_description(f"episode {self.episodes}: reward {done[-1]['reward']['total']:+.3f} "
                            f"(recent mean {sum(rewards) / len(rewards):+.3f})")
        bar.update(len(batch))
        previous = self.episodes - len(batch)
        if self.episodes // c.checkpoint_every > previous // c.checkpoint_every:
            self.save()
        ev = self.evaluate
        if ev is not None and ev.every > 0 and self.episodes // ev.every > previous // ev.every:
            self.held_out_eval()
        return done

    def held_out_eval(self) -> dict[str, Any]:
        """Export the policy to ``<out_dir>/model``, judge it against the heuristic on held-out families
        through Go (``self.evaluate``'s families, tasks and seeds; the trainer's workers), log an ``"eval"``
        entry and write the checkpoint and curves. Returns the entry."""
        from .ppo_eval import evaluate

        ev = self.evaluate or HeldOutEval()
        model_dir = os.path.join(self.out_dir, "model")
        self.export(model_dir, command="(held-out evaluation during training)", bc_episodes=0, onnx=False)
        report = evaluate(model_dir, families=ev.families, tasks=ev.tasks, seeds=ev.seeds, quick=ev.quick,
                          epochs=self.config.epochs, out_dir=os.path.join(self.out_dir, "eval"),
                          against=("heuristic",), workers=self._pool, quiet=True)
        vs = report["against"]["heuristic"]["overall"]
        entry = {"kind": "eval", "episode": self.episodes, "pairs": vs["pairs"], "diff_mean": vs["diff_mean"],
                 "diff_se": vs["diff_se"], "explained_variance": report["critic"]["explained_variance"],
                 "decision_quality": report["arms"]["ppo"]["decision_quality"]}
        self.log.append(entry)
        self.save()
        return entry

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
        warmup = self.episodes <= c.critic_warmup
        value_params = {id(p) for p in self.policy.value_head.parameters()}
        frozen = [p for p in self.policy.parameters() if id(p) not in value_params]
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
                if warmup:
                    loss = c.value_coef * vl
                else:
                    loss = pl + c.value_coef * vl - c.entropy_coef * step.entropy.sum()
                self.opt.zero_grad()
                loss.backward()
                if warmup:  # the value head alone learns: the shared layers (and so the policy) stay as they are
                    for p in frozen:
                        p.grad = None
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
        out["critic_only"] = warmup
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
                  "bc_op_accuracy": {k: bc[-1][k] for k in ("train_op_accuracy", "held_out_op_accuracy",
                                                              "held_out_pairs", "held_out_confusion")
                                     if bc and k in bc[-1]},
                  "ppo_updates": len(updates), "config": json.loads(json.dumps(asdict(self.config)))}
        init = [e for e in self.log if e["kind"] == "init"]
        if init:
            record["init_model"] = {"model": init[0]["model"], "command": init[0]["command"]}
        return save_model(self.policy, model_dir, record, onnx=onnx)

    def save(self) -> None:
        """Write the checkpoint (atomically)."""
        if self.policy is None or self.opt is None:
            return
        state = {"config": json.dumps(asdict(self.config)), "policy": json.dumps(self.policy.config()),
                 "weights": self.policy.state_dict(), "optimizer": self.opt.state_dict(), "episodes": self.episodes,
                 "log": json.dumps(self.log), "heuristic": json.dumps(self._heuristic),
                 "trainer_run": self.trainer_run}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        from .curves import write_curves

        write_curves(self.out_dir, self.log, self.curve_every)

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
        self.trainer_run = str(state.get("trainer_run") or self.trainer_run)  # older checkpoints: a new run


def _job(job: tuple[EpisodeSpec, str], policy_state: dict[str, Any] | None, moves_per_epoch: int,
         urza: str = "") -> dict[str, Any]:
    """A worker's job: one run; mode "heuristic", "baseline" (a heuristic run without BC's labels) or
    "policy"; its outcome records go to ``urza``."""
    spec, mode = job
    if mode == "baseline":
        return run_episode(spec, "heuristic", None, moves_per_epoch, labels=False, urza=urza)
    return run_episode(spec, mode, policy_state if mode == "policy" else None, moves_per_epoch, urza=urza)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(f"want a number >= 1, got {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    """``esper simic ppo train|eval`` (or ``python -m esper.simic.ppo``).

    train: behaviour cloning on heuristic runs, then PPO, on the suite's training families, with a progress
    bar; prints the BC loss per epoch, each episode's reward terms and the rate in episodes per hour (a PPO
    episode is a policy run and its paired heuristic run). Resumes from ``--out``'s checkpoint; writes
    curves.json and curves.png there at each checkpoint, and the model folder at the end. Every episode (and each
    behaviour-cloning heuristic run) is written to Urza (``--urza``) as an experience record.

    eval: the policy (run by Go, ``policy="ppo"``) against the heuristic (and the value model) on the same
    held-out tasks, seeds and initialisations; writes eval.json and prints a table.
    """
    import argparse

    from ..demo.jobs import default_workers

    p = argparse.ArgumentParser(prog="esper simic ppo", description="The graph policy: train it with behaviour "
                                "cloning then PPO on training families; judge it on held-out families.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="behaviour cloning, then PPO")
    t.add_argument("--out", default="simic-ppo", help="checkpoint folder (resumed when it holds one)")
    t.add_argument("--bc-episodes", type=int, default=8, help="heuristic runs to imitate")
    t.add_argument("--episodes", type=int, default=8, help="PPO episodes in all (a resumed run goes on to this many)")
    t.add_argument("--epochs", type=int, default=15, help="training epochs of every run")
    t.add_argument("--bc-epochs", type=_positive, default=PPOConfig.bc_epochs,
                   help="passes of behaviour cloning over the heuristic's pairs (a new run only)")
    t.add_argument("--critic-warmup", type=int, default=0,
                   help="the first N PPO episodes train the value head only (default 0)")
    t.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model", default="", help="model folder to write for policy=\"ppo\" (model.safetensors, "
                                                "manifest.json, model.onnx; default OUT/model)")
    t.add_argument("--hidden", type=int, default=PPOConfig.hidden, help="width of the network (a new run only)")
    t.add_argument("--init-model", default="", help="start from this model folder's weights instead of behaviour "
                                                     "cloning (a new run only; e.g. the shipped esper/models/ppo)")
    t.add_argument("--episodes-per-update", type=int, default=0,
                   help="episodes per PPO update (a new run only; default 0: the workers, at least 2)")
    t.add_argument("--max-minutes", type=float, default=0.0,
                   help="start no PPO update after this many minutes, then write the model (default 0: no limit)")
    t.add_argument("--checkpoint-every", type=_positive, default=PPOConfig.checkpoint_every,
                   help="episodes between checkpoints and curve updates (a new run only)")
    t.add_argument("--curve-every", type=_positive, default=100,
                   help="episodes per point of the curves (every episode while there are fewer; default 100)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="episodes between held-out evaluations against the heuristic (default 0: none)")
    t.add_argument("--eval-seeds", type=_positive, default=2, help="seeds per held-out task in those (default 2)")
    t.add_argument("--eval-tasks", type=_positive, default=1, help="tasks per held-out family in those (default 1)")
    t.add_argument("--eval-families", default="held-out",
                   help="held-out families of those, comma-separated (default held-out: every held-out growth family)")
    t.add_argument("--urza", default="", help="Urza store (folder or s3:// URL) of the experience records (one per "
                                             "episode) and of the runs' outcome records (default: $ESPER_URZA_URL, "
                                             "else $ESPER_HOME/urza)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="the policy against the heuristic on held-out families (writes eval.json)")
    from .ppo_eval import add_arguments

    add_arguments(e)
    args = p.parse_args(argv)
    if args.command == "eval":
        from .ppo_eval import main as eval_main

        return eval_main(args)
    workers = args.workers or default_workers("cpu")
    per_update = args.episodes_per_update or max(2, workers)
    config = PPOConfig(epochs=args.epochs, quick=False, seed=args.seed, episodes_per_update=per_update,
                       hidden=args.hidden, checkpoint_every=args.checkpoint_every, bc_epochs=args.bc_epochs,
                       critic_warmup=args.critic_warmup)
    names = None if args.eval_families == "held-out" else tuple(n.strip() for n in args.eval_families.split(","))
    held = HeldOutEval(every=args.eval_every, families=names, tasks=args.eval_tasks, seeds=args.eval_seeds)
    with Trainer(args.out, config, workers=workers, curve_every=args.curve_every, quiet=args.quiet,
                 evaluate=held, urza=args.urza) as trainer:
        bc = training_specs(args.bc_episodes, seed=args.seed, epochs=args.epochs, quick=False)
        start = time.perf_counter()
        if args.init_model and not any(e["kind"] in ("bc", "init") for e in trainer.log):
            trainer.start_from(args.init_model)
            print(f"starting from {args.init_model} (no behaviour cloning)")
        elif not any(e["kind"] in ("bc", "init") for e in trainer.log):
            trainer.heuristic_runs(bc)
            runs_wall = time.perf_counter() - start
            print(f"heuristic runs: {len(bc)} in {runs_wall:.0f} s ({3600 * len(bc) / runs_wall:.0f} runs/hour, "
                  f"{workers} workers)")
            losses = trainer.behaviour_clone(bc)
            print("bc loss per epoch: " + " ".join(f"{x:.3f}" for x in losses))
            last = [e for e in trainer.log if e["kind"] == "bc"][-1]
            if "held_out_op_accuracy" in last:
                print(f"bc op accuracy: {last['train_op_accuracy']:.3f} on the training pairs, "
                      f"{last['held_out_op_accuracy']:.3f} on {last['held_out_pairs']} pairs of "
                      f"{last['held_out_runs']} held-out runs (label>policy: {last['held_out_confusion']})")
            trainer.store_heuristic_runs(bc)
        elif trainer.episodes:
            print(f"resuming {trainer.path} at episode {trainer.episodes}")
        specs = training_specs(args.episodes, seed=args.seed + 1, epochs=args.epochs, quick=False)
        start = time.perf_counter()
        cpu = time.process_time()
        deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes > 0 else None
        done = trainer.ppo(specs, deadline=deadline)
        wall = time.perf_counter() - start
        for e in done:
            r = e["reward"]
            print(f"episode {e['episode']} {e['spec']['family']}/{e['spec']['index']} seed {e['spec']['seed']}: "
                  f"reward {r['total']:+.3f} (accuracy {r['accuracy']:+.3f}, compute {r['compute']:+.3f}, "
                  f"params {r['params']:+.3f}, stability {r['stability']:+.3f}); {e['moves']} moves, "
                  f"{e['germinations']} germinations (heuristic {e['heuristic_germinations']}), {e['refused']} "
                  f"refused")
        for u in (e for e in trainer.log if e["kind"] == "update" and e["episode"] > trainer.episodes - len(done)):
            print(f"update at episode {u['episode']}: policy loss {u['policy_loss']:+.4f}, value loss "
                  f"{u['value_loss']:.3f}, explained variance {u['explained_variance']:.3f}, entropy op "
                  f"{u['entropy_op']:.3f}")
        for v in (e for e in trainer.log if e["kind"] == "eval" and e["episode"] > trainer.episodes - len(done)):
            se = "-" if v["diff_se"] is None else f"{v['diff_se']:.2f}"
            print(f"held-out at episode {v['episode']}: {v['diff_mean']:+.2f} +- {se} points against the "
                  f"heuristic over {v['pairs']} pairs")
        print(f"experience: trainer run {trainer.trainer_run} in {trainer.store().root} (esper urza experience --run "
              f"{trainer.trainer_run})")
        if done:
            print(f"ppo: {len(done)} episodes in {wall:.0f} s: {3600 * len(done) / wall:.0f} episodes/hour "
                  f"({workers} workers; each a policy run plus its paired heuristic run; this process's CPU "
                  f"{time.process_time() - cpu:.0f} s)")
        model_dir = args.model or os.path.join(args.out, "model")
        command = "esper simic ppo " + " ".join(argv if argv is not None else sys.argv[1:])
        for path in trainer.export(model_dir, command=command, bc_episodes=args.bc_episodes):
            print(f"wrote {path}")
        for name in ("curves.json", "curves.png"):
            print(f"wrote {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy: its classes (Workers, Trainer) are the ones
    # esper.simic.ppo_eval and pickled jobs refer to.
    from esper.simic.ppo import main as _main

    raise SystemExit(_main())
