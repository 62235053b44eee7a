"""The value model: fitted on outcome records of training families, judged on held-out families.

``esper simic train`` reads the episodes of a collection (:mod:`esper.simic.collect`), asks Go for the
training set of their outcome records (``esper_value_dataset``: the features and the target of each
germination, one definition in ``policy/value``; nothing is computed here), fits a small MLP in PyTorch
(validation split by run or by family, early stopping, fixed seeds) and writes the model folder
(docs/simic.md): ``manifest.json`` with its training record, ``model.safetensors`` (float32) and
``model.onnx``. The shipped model is ``python/esper/models/value/``.

``esper simic eval`` collects episodes on held-out families (reader ``"eval"``, a store of its own), and
measures the model's error on their outcome records through Go's ``esper_value_predict``, the path Tamiyo
uses: the share of predictions within 20% of the measured target, the mean absolute error and the
correlation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import build_info
from .. import valuemodel as _valuemodel
from ..suite.families import FAMILIES, HELD_OUT, TRAIN, HeldOutError, families

__all__ = ["MODEL_DIR", "TrainConfig", "Dataset", "ValueMLP", "training_set", "fit", "save_model", "metrics",
           "train_main", "eval_main", "NoOutcomesError"]

#: The shipped value model's folder (``esper.valuemodel.MODEL_DIR``: the one ``policy="learned"`` loads).
MODEL_DIR = str(_valuemodel.MODEL_DIR)
#: A prediction is "within 20%" when ``|predicted - measured| <= WITHIN * |measured|`` (the mission's goal).
WITHIN = 0.2


class NoOutcomesError(ValueError):
    """Raised when a collection holds no outcome rows to fit or judge on."""


@dataclass
class TrainConfig:
    """How the value model is fitted.

    Attributes:
        hidden: widths of the hidden layers (ReLU).
        epochs: passes over the training rows at most.
        patience: epochs without a better validation error before stopping (the best weights are kept).
        lr, weight_decay: Adam's.
        batch_size: rows per step.
        val_fraction: share of the runs (or families) held for validation.
        val_by: "run" (whole runs held out) or "family" (whole families held out; needs two or more).
        seed: the split's, the initialisation's and the batches' seed.
    """

    hidden: tuple[int, ...] = (32, 32)
    epochs: int = 400
    patience: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    val_fraction: float = 0.25
    val_by: str = "run"
    seed: int = 0


@dataclass
class Dataset:
    """Rows of Go's training set, each labelled with its episode.

    Attributes:
        features: the feature names, in order (Go's definition).
        target: the target's name (Go's definition).
        x: (N, F) features.
        y: (N,) targets.
        runs, families: per row, its run id and family.
        episodes: the episode files the rows came from.
        skipped: records Go left out, by reason (in flight, no scale; docs/simic.md).
    """

    features: list[str]
    target: str
    x: np.ndarray
    y: np.ndarray
    runs: list[str]
    families: list[str]
    episodes: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- Go


def go_dataset(store: str, runs: Sequence[str]) -> dict[str, Any]:
    """Go's training set of these runs' outcome records in an Urza store (``esper_value_dataset``)."""
    from .. import valuemodel

    return valuemodel.dataset(store, runs=list(runs))


def go_predict(model_dir: str, x: np.ndarray) -> np.ndarray:
    """The model folder's predictions for rows of features, through Go (``esper_value_predict``)."""
    from .. import valuemodel

    return np.asarray(valuemodel.predict(model_dir, x.tolist()), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- data


def _episode_files(out_dir: str) -> list[dict[str, Any]]:
    root = os.path.join(out_dir, "episodes")
    docs = []
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            if name.endswith(".json"):
                with open(os.path.join(dirpath, name)) as f:
                    docs.append(json.load(f))
    return docs


def training_set(out_dir: str, split: str = TRAIN) -> Dataset:
    """The rows of a collection's finished episodes, from Go's training set of their stores.

    Args:
        out_dir: the collection folder (``esper simic collect --out``).
        split: TRAIN (fitting: every episode must come from a training family) or HELD_OUT (judging: every
            episode must come from a held-out family).

    Raises:
        NoOutcomesError: no finished episode, or no outcome rows in their stores.
        HeldOutError: fitting on a collection holding a held-out family's episode.
        ValueError: judging on a collection holding a training family's episode.
    """
    docs = _episode_files(out_dir)
    if not docs:
        raise NoOutcomesError(f"no finished episodes in {os.path.join(out_dir, 'episodes')}: run `esper simic "
                              f"collect --out {out_dir}` first")
    wrong = sorted({d["family"] for d in docs if FAMILIES[d["family"]].split != split})
    if wrong and split == TRAIN:
        raise HeldOutError(f"{out_dir} holds episodes of held-out families {wrong}: the value model is fitted on "
                           f"training families only")
    if wrong:
        raise ValueError(f"{out_dir} holds episodes of training families {wrong}: held-out figures come from "
                         f"held-out families only")
    by_run = {d["run_id"]: d for d in docs}
    features: list[str] | None = None
    target = ""
    xs, ys, runs, fams = [], [], [], []
    skipped: dict[str, int] = {}
    for store in sorted({d["urza"] for d in docs}):
        ds = go_dataset(store, sorted(r for r, d in by_run.items() if d["urza"] == store))
        if features is not None and ds["features"] != features:
            raise ValueError(f"stores of {out_dir} gave different feature lists")
        features, target = list(ds["features"]), str(ds.get("target", ""))
        for k, v in (ds.get("skipped") or {}).items():
            skipped[k] = skipped.get(k, 0) + int(v)
        for row in ds.get("rows") or []:
            ep = by_run[row["run"]]  # Go read only these runs
            xs.append([float(v) for v in row["x"]])
            ys.append(float(row["y"]))
            runs.append(row["run"])
            fams.append(ep["family"])
    if not ys or features is None:
        raise NoOutcomesError(f"no outcome rows in the stores of {out_dir} ({len(docs)} episodes, "
                              f"{sum(int(d['germinations']) for d in docs)} germinations): collect more episodes "
                              f"(`esper simic collect --out {out_dir} --seeds N`) or settings that grow")
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("Go's training set holds non-finite values")
    return Dataset(features, target, x, y, runs, fams, docs, skipped)


def _split(data: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Boolean masks (train, val) and the held groups: whole runs or whole families go to validation."""
    groups = data.runs if cfg.val_by == "run" else data.families
    names = sorted(set(groups))
    if len(names) < 2:
        raise NoOutcomesError(f"validation by {cfg.val_by} needs rows from 2 or more {cfg.val_by}s, got "
                              f"{len(names)}: collect more episodes")
    rng = np.random.default_rng(cfg.seed)
    order = [names[i] for i in rng.permutation(len(names))]
    k = min(len(names) - 1, max(1, round(cfg.val_fraction * len(names))))
    held = set(order[:k])
    val = np.array([g in held for g in groups])
    return ~val, val, sorted(held)


# ---------------------------------------------------------------------------------------------- model


class ValueMLP(nn.Module):
    """The value model: ``(x - x_mean) / x_std`` through dense ReLU layers to one output, times ``y_std``
    plus ``y_mean`` (the normalisation is held as buffers, so the ONNX export includes it)."""

    def __init__(self, inputs: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [inputs, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.register_buffer("x_mean", torch.zeros(inputs))
        self.register_buffer("x_std", torch.ones(inputs))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B,) standardised prediction
        h = (x - self.x_mean) / self.x_std
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, 1) prediction in target units
        return (self.normalized(x) * self.y_std + self.y_mean).unsqueeze(-1)


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Prediction error: rows, share within WITHIN of the measured value, MAE, Pearson and Spearman
    correlation (None when either side is constant)."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return {"n": 0}

    def corr(a: np.ndarray, b: np.ndarray) -> float | None:
        if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])

    def ranks(a: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)

    err = np.abs(pred - y)
    return {"n": int(len(y)), "within_20": float(np.mean(err <= WITHIN * np.abs(y))), "mae": float(np.mean(err)),
            "pearson": corr(pred, y), "spearman": corr(ranks(pred), ranks(y)),
            "y_mean": float(np.mean(y)), "y_std": float(np.std(y))}


def fit(data: Dataset, cfg: TrainConfig) -> tuple[ValueMLP, dict[str, Any]]:
    """Fit the value model on the training rows, stopping on the validation rows' error.

    Returns:
        The model with its best weights (lowest validation MAE), and the record: split, epochs, metrics
        on the training and validation rows, and the constant predictor's validation MAE for scale.
    """
    if cfg.val_by not in ("run", "family"):
        raise ValueError(f"val_by must be 'run' or 'family', got {cfg.val_by!r}")
    from ..demo.jobs import one_thread

    with one_thread():  # a net this small gains nothing from threads, and loses much on a busy machine
        return _fit(data, cfg)


def _fit(data: Dataset, cfg: TrainConfig) -> tuple[ValueMLP, dict[str, Any]]:
    train_m, val_m, held = _split(data, cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.tensor(data.x, dtype=torch.float32)
    y = torch.tensor(data.y, dtype=torch.float32)
    xt, yt, xv, yv = x[train_m], y[train_m], x[val_m], y[val_m]
    model = ValueMLP(x.shape[1], cfg.hidden)
    std = xt.std(0, unbiased=False)
    model.x_mean.copy_(xt.mean(0))
    model.x_std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))  # a constant feature reads as 0
    ystd = float(yt.std(unbiased=False))
    model.y_mean.fill_(float(yt.mean()))
    model.y_std.fill_(ystd if ystd > 1e-12 else 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.SmoothL1Loss()
    zt = (yt - model.y_mean) / model.y_std
    best = (math.inf, -1, {k: v.clone() for k, v in model.state_dict().items()})
    epoch = 0
    for epoch in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss_fn(model.normalized(xt[idx]), zt[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_mae = float((model(xv).squeeze(-1) - yv).abs().mean())
        if val_mae < best[0]:
            best = (val_mae, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad():
        pt, pv = model(xt).squeeze(-1).numpy(), model(xv).squeeze(-1).numpy()
    record = {
        "config": {**asdict(cfg), "hidden": list(cfg.hidden)},
        "split": {"by": cfg.val_by, "held": held, "train_rows": int(train_m.sum()), "val_rows": int(val_m.sum()),
                  "train_runs": len(set(np.asarray(data.runs)[train_m])),
                  "val_runs": len(set(np.asarray(data.runs)[val_m]))},
        "epochs_run": epoch + 1, "best_epoch": best[1] + 1,
        "metrics": {"train": metrics(pt, yt.numpy()), "val": metrics(pv, yv.numpy()),
                    "val_constant_mae": float(np.mean(np.abs(float(model.y_mean) - yv.numpy())))},
    }
    return model, record


def save_model(model: ValueMLP, features: list[str], target: str, training: dict[str, Any], model_dir: str,
               *, onnx: bool = True) -> list[str]:
    """Write the model folder (docs/simic.md): ``model.safetensors`` (float32), ``manifest.json`` and, when
    ``onnx`` and the ``onnx`` package is installed, ``model.onnx`` (input ``x`` (B, F), output ``y`` (B, 1),
    normalisation included). Returns the files written."""
    from safetensors.torch import save_file

    os.makedirs(model_dir, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for i, layer in enumerate(model.layers):
        tensors[f"l{i}.weight"] = layer.weight.detach().float().contiguous().clone()
        tensors[f"l{i}.bias"] = layer.bias.detach().float().contiguous().clone()
        layers.append({"weight": f"l{i}.weight", "bias": f"l{i}.bias",
                       "activation": "relu" if i < len(model.layers) - 1 else "identity"})
    for name in ("x_mean", "x_std", "y_mean", "y_std"):
        tensors[name] = getattr(model, name).detach().float().contiguous().clone()
    written = []
    path = os.path.join(model_dir, "model.safetensors")
    save_file(tensors, path)
    written.append(path)
    onnx_path = os.path.join(model_dir, "model.onnx")
    if onnx and _has_onnx():
        _export_onnx(model, len(features), onnx_path)
        written.append(onnx_path)
    elif os.path.exists(onnx_path):
        os.remove(onnx_path)  # a stale export of other weights must not ship beside these
    training = dict(training)
    if onnx_path in written:  # the schema is strict: what the export is goes in the free-form record
        training["onnx"] = {"file": "model.onnx", "input": "x", "output": "y", "opset": _ONNX_OPSET}
    manifest = {"kind": "value_mlp", "schema": 1, "features": features, "layers": layers,
                "x_mean": "x_mean", "x_std": "x_std", "y_mean": "y_mean", "y_std": "y_std",
                "target": target, "training": training}
    path = os.path.join(model_dir, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    written.append(path)
    return written


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


#: The ONNX opset of model.onnx.
_ONNX_OPSET = 17


def _export_onnx(model: ValueMLP, inputs: int, path: str) -> None:
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, inputs),), path, dynamo=False, opset_version=_ONNX_OPSET,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    onnx.checker.check_model(onnx.load(path))


# ---------------------------------------------------------------------------------------------- commands


def _commit() -> str:
    """The library's commit (the Go build's, ``esper.build_info()``)."""
    return str(build_info().get("commit", ""))


def train_main(*, out_dir: str | None = None, model_dir: str | None = None, cfg: TrainConfig | None = None,
               onnx: bool = True, quiet: bool = False) -> dict[str, Any]:
    """`esper simic train`: fit on a collection's outcome records and write the model folder.

    Returns:
        The training record written into ``manifest.json``.

    Raises:
        NoOutcomesError: the collection holds no outcome rows (or too few runs to validate on).
        HeldOutError: the collection holds a held-out family's episode.
    """
    from .collect import default_out

    cfg = cfg or TrainConfig()
    out_dir = out_dir or default_out()
    model_dir = model_dir or MODEL_DIR
    start = time.perf_counter()
    data = training_set(out_dir, TRAIN)
    model, record = fit(data, cfg)
    eps = data.episodes
    training = {
        "commit": _commit(), "esper": build_info().get("version"), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "collection": {"families": sorted({e["family"] for e in eps}), "tasks": sorted({e["index"] for e in eps}),
                       "seeds": sorted({e["seed"] for e in eps}), "policies": sorted({e["policy"] for e in eps}),
                       "quick": sorted({e["quick"] for e in eps}), "episodes": len(eps),
                       "germinations": sum(int(e["germinations"]) for e in eps),
                       "commits": sorted({str(e.get("esper")) for e in eps})},
        "samples": len(data.y), "skipped": data.skipped, **record,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    files = save_model(model, data.features, data.target, training, model_dir, onnx=onnx)
    if not quiet:
        v = record["metrics"]["val"]
        print(f"esper simic train: {len(data.y)} rows from {len(eps)} episodes "
              f"({', '.join(training['collection']['families'])}); {len(data.features)} features, target "
              f"{data.target or '-'}; stopped at epoch {record['epochs_run']} (best {record['best_epoch']})")
        print(f"validation ({record['split']['val_rows']} rows of {record['split']['val_runs']} held-out "
              f"{cfg.val_by}s): MAE {v['mae']:.4g} (constant predictor {record['metrics']['val_constant_mae']:.4g}), "
              f"within 20% {v['within_20']:.0%}, Pearson {_fmt(v['pearson'])}")
        print("wrote " + ", ".join(files))
    return training


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def eval_families(names: list[str] | None) -> list[str]:
    """The held-out growth families to judge on (default all of them).

    Raises:
        ValueError: a training family (fitting may have read it: it cannot judge), or an unknown one.
    """
    held = [f.name for f in families(HELD_OUT) if not f.control]
    if names is None:
        return held
    for n in names:
        if n not in FAMILIES:
            raise ValueError(f"unknown family {n!r}; held-out families: {', '.join(held)}")
        if FAMILIES[n].split == TRAIN:
            raise ValueError(f"{n!r} is a training family, not held out: the value model may have been fitted on "
                             f"it, so it cannot judge it (held-out families: {', '.join(held)})")
        if n not in held:
            raise ValueError(f"{n!r} is a negative control: it has no germinations to judge (held-out growth "
                             f"families: {', '.join(held)})")
    return list(names)


def eval_main(*, model_dir: str | None = None, family_names: list[str] | None = None, tasks: int = 1, seeds: int = 2,
              quick: bool = False, epochs: int | None = None, out_dir: str | None = None, workers: int | None = None,
              paired_seeds: int = 0, quiet: bool = False) -> dict[str, Any]:
    """`esper simic eval`: the model's prediction error on held-out families' outcome records, computed by
    Go (``esper_value_predict``); writes ``<out>/eval.json`` and ``<out>/eval.md``.

    Episodes run as in ``esper simic collect`` (both policies, drawn settings) on held-out families, with
    reader "eval", into ``<out>/episodes`` and ``<out>/urza`` (resumable).

    With ``paired_seeds`` > 0, also the paired comparison: per held-out task and seed, a grown run with
    ``policy="learned"`` (this model) and one with the heuristic, both at ``MorphConfig()`` defaults with the
    suite's protocol (cached under ``<out>/paired``): the mean paired difference of the test metric (learned
    minus heuristic), its standard error and the FLOPs ratio.

    Raises:
        ValueError: a training family named as held-out.
        NoOutcomesError: the episodes left no outcome rows.
    """
    from . import collect

    names = eval_families(family_names)
    model_dir = model_dir or MODEL_DIR
    out_dir = out_dir or os.path.join(collect.default_out(), "eval")
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    planned = collect.plan(HELD_OUT, tasks, seeds, quick, out_dir, epochs=epochs, family_names=names)
    if not quiet:
        print(f"esper simic eval: model {model_dir}; {len(planned)} episodes on held-out families "
              f"{', '.join(names)} into {out_dir}", flush=True)
    start = time.perf_counter()
    collect.collect(planned, workers=workers, quiet=quiet)
    data = training_set(out_dir, HELD_OUT)
    missing = [n for n in manifest["features"] if n not in data.features]
    if missing:
        raise ValueError(f"the model at {model_dir} reads features this library does not compute ({missing}): "
                         f"retrain it (`esper simic train`)")
    columns = [data.features.index(n) for n in manifest["features"]]  # the model's inputs, by name
    pred = go_predict(model_dir, data.x[:, columns])
    fams = np.asarray(data.families)
    report = {
        "model": {"dir": model_dir, "target": manifest.get("target"),
                  "trained_on": (manifest.get("training") or {}).get("collection", {}).get("families"),
                  "commit": (manifest.get("training") or {}).get("commit")},
        "command": {"families": names, "tasks": tasks, "seeds": seeds, "quick": quick, "epochs": epochs},
        "commit": _commit(), "episodes": len(data.episodes),
        "prediction": {"overall": metrics(pred, data.y),
                       "families": {n: metrics(pred[fams == n], data.y[fams == n]) for n in names},
                       "constant_mae": float(np.mean(np.abs(float(_y_mean(model_dir)) - data.y)))},
    }
    if paired_seeds > 0:
        from ..demo.jobs import default_workers, run_pool
        from ..suite.run import _progress

        runs = paired_plan(names, tasks, paired_seeds, quick, epochs, model_dir, out_dir)
        pending = [r for r in runs if not os.path.exists(r.cache)]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bar = _progress(len(runs), quiet)
        bar.update(len(runs) - len(pending))

        def done(i: int, doc: dict[str, Any]) -> None:
            r = pending[i]
            bar.set_description(f"paired {r.family}/{r.index} seed {r.seed}: {r.policy}")
            bar.update()

        try:
            run_pool(partial(paired_run, device=device), pending, workers or default_workers(device), done)
        finally:
            bar.close()
        docs = []
        for r in runs:
            with open(r.cache) as f:
                docs.append(json.load(f))
        report["paired"] = {"seeds": paired_seeds, "runs": docs, **paired_summary(docs)}
    report["wall_s"] = round(time.perf_counter() - start, 1)
    _write_report(out_dir, report)
    if not quiet:
        print(_markdown(report))
    return report


@dataclass(frozen=True)
class PairedRun:
    """One arm of the paired comparison: a held-out task's grown run at a seed under a policy, with the
    suite's protocol and ``MorphConfig()`` defaults (the learned arm reads ``value_model``)."""

    family: str
    index: int
    seed: int
    policy: str
    quick: bool
    epochs: int | None
    model_dir: str
    cache: str
    urza: str


def _model_digest(model_dir: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in ("manifest.json", "model.safetensors"):
        with open(os.path.join(model_dir, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def paired_plan(names: list[str], tasks: int, seeds: int, quick: bool, epochs: int | None, model_dir: str,
                out_dir: str) -> list[PairedRun]:
    """The paired runs: per task, seed and held-out family, the heuristic and the learned policy. The cache
    key holds the model's digest (a retrained model reruns the learned arm) and the library's version."""
    digest = _model_digest(model_dir)
    version = build_info().get("version")
    out = []
    for index in range(tasks):
        for seed in range(seeds):
            for name in names:
                for policy in ("heuristic", "learned"):
                    tag = f"{digest}-{version}" if policy == "learned" else str(version)
                    leaf = f"{policy}-{'quick-' if quick else ''}{epochs or 'default'}-{tag}.json"
                    path = os.path.join(out_dir, "paired", name, str(index), str(seed), leaf)
                    out.append(PairedRun(name, index, seed, policy, quick, epochs, model_dir, path,
                                         os.path.join(out_dir, "paired", "urza")))
    return out


def paired_run(run: PairedRun, device: str = "cpu") -> dict[str, Any]:
    """Make one paired arm (a worker's job, on one thread) through the suite's setup and the demo's grown run;
    writes and returns its figures."""
    from dataclasses import replace

    from ..demo.experiments import grown_run, setup_task
    from ..demo.jobs import one_thread
    from ..suite.run import setup_for
    from ..tolaria import MorphConfig

    with one_thread():
        setup = setup_for(FAMILIES[run.family], run.index, run.quick, "eval")
        morph = MorphConfig(urza=run.urza, value_model=run.model_dir if run.policy == "learned" else "")
        setup = replace(setup, morph=morph, epochs=run.epochs or setup.epochs)
        task = setup_task(setup, run.seed, torch.device(device))
        res = grown_run(task, setup, run.seed, policy=run.policy)
        doc = {"family": run.family, "index": run.index, "seed": run.seed, "policy": run.policy,
               "test_metric": res.test_acc, "flops": res.flops, "params": res.params,
               "germinations": res.germinations, "fossilizations": res.fossilizations, "prunes": res.prunes,
               "run_id": res.run_id, "wall_s": res.wall}
        os.makedirs(os.path.dirname(run.cache), exist_ok=True)
        tmp = f"{run.cache}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, run.cache)
        return doc


def paired_summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Learned minus heuristic, paired by task and seed: test metric and FLOPs, mean and standard error, per
    family and overall."""
    pairs: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for d in docs:
        pairs.setdefault((d["family"], d["index"], d["seed"]), {})[d["policy"]] = d

    def stats(keys: list[tuple[str, int, int]]) -> dict[str, Any]:
        diff = np.array([pairs[k]["learned"]["test_metric"] - pairs[k]["heuristic"]["test_metric"] for k in keys])
        flops = np.array([pairs[k]["learned"]["flops"] / pairs[k]["heuristic"]["flops"] for k in keys])
        n = len(diff)
        se = float(np.std(diff, ddof=1) / np.sqrt(n)) if n > 1 else None
        return {"pairs": n, "diff_mean": float(np.mean(diff)) if n else None, "diff_se": se,
                "flops_ratio_mean": float(np.mean(flops)) if n else None,
                "learned_germinations": sum(pairs[k]["learned"]["germinations"] for k in keys),
                "heuristic_germinations": sum(pairs[k]["heuristic"]["germinations"] for k in keys)}

    complete = sorted(k for k, v in pairs.items() if {"learned", "heuristic"} <= set(v))
    fams = sorted({k[0] for k in complete})
    return {"families": {f: stats([k for k in complete if k[0] == f]) for f in fams}, "overall": stats(complete)}


def _y_mean(model_dir: str) -> float:
    from safetensors.numpy import load_file

    return float(load_file(os.path.join(model_dir, "model.safetensors"))["y_mean"][0])


def _markdown(report: dict[str, Any]) -> str:
    p = report["prediction"]
    lines = [f"Value model {report['model']['dir']} (target {report['model']['target']}, trained on "
             f"{', '.join(report['model']['trained_on'] or [])}) on held-out outcome records, predicted by Go:",
             "", "| family | rows | within 20% | MAE | Pearson | Spearman |", "|---|---|---|---|---|---|"]
    for name, m in [*p["families"].items(), ("all", p["overall"])]:
        if not m.get("n"):
            lines.append(f"| {name} | 0 | - | - | - | - |")
            continue
        lines.append(f"| {name} | {m['n']} | {m['within_20']:.0%} | {m['mae']:.4g} | {_fmt(m['pearson'])} | "
                     f"{_fmt(m['spearman'])} |")
    lines.append("")
    lines.append(f"A constant prediction (the training rows' mean) has MAE {p['constant_mae']:.4g}.")
    paired = report.get("paired")
    if paired:
        lines += ["", f"Paired runs, policy=\"learned\" minus the heuristic (MorphConfig() defaults, the suite's "
                      f"protocol, {paired['seeds']} seed(s) per task):", "",
                  "| family | pairs | test metric difference | SE | FLOPs learned / heuristic | germinations "
                  "learned / heuristic |", "|---|---|---|---|---|---|"]
        for name, m in [*paired["families"].items(), ("all", paired["overall"])]:
            if not m["pairs"]:
                continue
            lines.append(f"| {name} | {m['pairs']} | {m['diff_mean']:+.2f} | {_fmt(m['diff_se'])} | "
                         f"{m['flops_ratio_mean']:.2f} | {m['learned_germinations']} / {m['heuristic_germinations']} |")
    return "\n".join(lines)


def _write_report(out_dir: str, report: dict[str, Any]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(_markdown(report) + "\n")
