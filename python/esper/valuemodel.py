"""The value model, seen from Python: training rows from Urza and predictions, both computed in Go.

The value model (``policy/value``, docs/simic.md) predicts a candidate germination's contribution
per unit of compute; ``MorphConfig(policy="learned")`` uses it to decide whether and where to grow.
Its features and target have one definition, in Go: :func:`dataset` turns a store's outcome records
into rows with it (the trainer, ``esper simic train``, fits on them), and Tamiyo computes the same
features for live candidates. Nothing here re-implements them::

    d = valuemodel.dataset("", runs=[morph.run_id])   # {"features", "target", "rows", "skipped"}
    xs = [r["x"] for r in d["rows"]]; ys = [r["y"] for r in d["rows"]]
    preds = valuemodel.predict(valuemodel.MODEL_DIR, xs)
"""

from __future__ import annotations

import json
from ctypes import byref, c_void_p
from pathlib import Path
from typing import Any, Sequence

from . import _lib

__all__ = ["MODEL_DIR", "dataset", "predict", "default_model_dir", "feature_names", "target"]

#: The shipped value model's folder (manifest.json + model.safetensors); it may be absent.
MODEL_DIR = Path(__file__).resolve().parent / "models" / "value"

def default_model_dir() -> str:
    """The folder ``policy="learned"`` loads when ``MorphConfig.value_model`` is not set: the shipped
    model's (``esper/models/value``), whether or not it exists (Go says what is missing)."""
    return str(MODEL_DIR)


def _features_doc() -> dict[str, Any]:
    out = c_void_p()
    _lib.check(_lib.lib().esper_value_features(byref(out)))
    return _lib.take_json(out)


def feature_names() -> list[str]:
    """The value model's input names, in order, as this library computes them (a model's manifest must
    list exactly these)."""
    return [str(n) for n in _features_doc()["features"]]


def target() -> str:
    """The name of the target definition Go computes (docs/simic.md, "The target"); a model's manifest
    names the target it was trained on."""
    return str(_features_doc()["target"])


def dataset(urza: str = "", *, runs: Sequence[str] | None = None, policies: Sequence[str] | None = None,
            in_flight: bool = False) -> dict[str, Any]:
    """The value model's training rows, built in Go from a store's outcome records.

    Args:
        urza: the store's folder ("" for ``$ESPER_HOME/urza``).
        runs: the run ids to read (None: every run).
        policies: keep only records of these policies ("heuristic", "random", "learned", "manual").
        in_flight: keep records of germinations still in flight when last written.

    Returns:
        ``{"features": [names], "target": "gain_per_compute_v1", "rows": [{"run", "seq", "layer",
        "template", "policy", "x", "y", "gain", "measured", "cost", "size_frac", "epochs",
        "final_state", "ended_by", "prediction"}], "skipped": {"in_flight", "policy", "no_scale"}}``.

    Raises:
        StorageError: the store cannot be read; CorruptError: a record does not decode.
    """
    opts: dict[str, Any] = {}
    if runs:
        opts["runs"] = [str(r) for r in runs]
    if policies:
        opts["policies"] = [str(p) for p in policies]
    if in_flight:
        opts["in_flight"] = True
    _lib.refresh_settings()  # ESPER_HOME as os.environ holds it now
    out = c_void_p()
    _lib.check(_lib.lib().esper_value_dataset(urza.encode(), json.dumps(opts).encode(), byref(out)))
    return _lib.take_json(out)


def predict(model_dir: str | Path, xs: Sequence[Sequence[float]]) -> list[float]:
    """Predictions of the value model in ``model_dir`` for feature rows (each in the model's order,
    as :func:`dataset` gives them), computed by Go's native forward pass.

    Raises:
        InvalidArgumentError: the folder holds no usable model (the message says why and how to train
            one), or a row has the wrong length.
    """
    doc = json.dumps({"x": [[float(v) for v in x] for x in xs]}, allow_nan=False)
    out = c_void_p()
    _lib.check(_lib.lib().esper_value_predict(str(model_dir).encode(), doc.encode(), byref(out)))
    return [float(v) for v in _lib.take_json(out)["predictions"]]
