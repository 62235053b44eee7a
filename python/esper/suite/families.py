"""The task suite's families: generators of tasks from data that ships in packages or is generated.

A *family* makes tasks: ``Family.task(index)`` draws the task's parameters (size, noise, classes,
separation, ...) from a generator seeded with the family's name and the index, so a task is the same
wherever and whenever it is made. Each family fixes its model (an MLP, or a small CNN for signals and
images), how the model is wrapped, where growth starts and the 5-size sweep it is judged against.

Families are split, in code, into **training families** (what any fitting may read: a value model, a
settings search) and **held-out families** (read only to judge). ``load`` refuses to make a held-out task
for a reader marked ``"train"``: that is the guard, not a convention. The split is documented in
docs/suite.md; changing it invalidates every result judged on held-out families.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Family", "FAMILIES", "TRAIN", "HELD_OUT", "READERS", "HeldOutError", "families", "load"]

#: Who reads a task: "train" (fitting: anything that learns or tunes from the result) or "eval" (judging).
READERS = ("train", "eval")
TRAIN = "train"
HELD_OUT = "held-out"

#: A family's maker: (rng, quick) -> (x, y, params). ``x`` is (N, *shape) float32, ``y`` int64 labels or
#: float32 targets; ``params`` are the drawn parameters (recorded in the results). ``quick`` asks for a tiny
#: task (a smoke run).
Maker = Callable[[np.random.Generator, bool], tuple[np.ndarray, np.ndarray, dict[str, Any]]]


class HeldOutError(ValueError):
    """Raised when a reader marked "train" asks for a task of a held-out family."""


@dataclass(frozen=True)
class Family:
    """A generator of tasks with its model and sweep.

    Attributes:
        name: the family's name (also the seed of its task parameters).
        split: TRAIN or HELD_OUT.
        doc: what the tasks are, in a line.
        make: the maker (see :data:`Maker`).
        arch: "mlp" or "cnn" (signals (C, L) or images (C, H, W)).
        targets: how the model is wrapped: "block" (the whole MLP is one host), "linear" (every Linear) or
            "conv" (every convolution).
        depth: hidden layers of the MLP.
        start_width: width (channels for a CNN) growth starts from, one of the sweep.
        sweep: the 5 fixed widths it is judged against.
        epochs: training epochs of every run.
        control: a negative control: a small model already solves it; judged on germinations (at most
            one, at 30 and at 60 epochs), with no sweep.
    """

    name: str
    split: str
    doc: str
    make: Maker
    arch: str = "mlp"
    targets: str = "block"
    depth: int = 1
    start_width: int = 8
    sweep: tuple[int, ...] = (8, 16, 32, 64, 128)
    epochs: int = 50
    control: bool = False

    def params_rng(self, index: int) -> np.random.Generator:
        """The generator a task's parameters and data are drawn from: seeded by the family's name and index."""
        return np.random.default_rng([zlib.crc32(self.name.encode()), index])


def _n(rng: np.random.Generator, lo: int, hi: int, quick: bool) -> int:
    """A sample count in [lo, hi]; a tenth of it (at least 120) for a quick task."""
    n = int(rng.integers(lo, hi + 1))
    return max(120, n // 10) if quick else n


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------- makers


def _blobs(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_blobs

    p = {"n_samples": _n(rng, 900, 2400, quick), "centers": int(rng.integers(3, 9)),
         "n_features": int(rng.integers(2, 11)), "cluster_std": round(float(rng.uniform(1.0, 3.0)), 2)}
    x, y = make_blobs(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.int64), p


def _classification(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_classification

    informative = int(rng.integers(4, 13))
    classes = int(rng.integers(2, 7))
    clusters = int(rng.integers(1, 3))
    while classes * clusters > 2**informative:
        clusters -= 1
    p = {"n_samples": _n(rng, 1000, 3000, quick), "n_features": informative + int(rng.integers(2, 16)),
         "n_informative": informative, "n_redundant": int(rng.integers(0, 3)), "n_classes": classes,
         "n_clusters_per_class": clusters, "class_sep": round(float(rng.uniform(0.6, 1.6)), 2),
         "flip_y": round(float(rng.uniform(0.0, 0.04)), 3)}
    x, y = make_classification(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.int64), p


def _spirals(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from ..demo.data import spirals

    arms = int(rng.integers(2, 6))
    p = {"arms": arms, "n_per_arm": max(40, _n(rng, 1200, 2000, quick) // arms),
         "noise": round(float(rng.uniform(0.1, 0.4)), 2)}
    x, y = spirals(seed=_seed(rng), **p)
    return x, y, p


def _digits_noise(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    classes = np.sort(rng.choice(10, size=int(rng.integers(5, 11)), replace=False))
    keep = np.isin(d.target, classes)
    x, y = d.data[keep].astype(np.float32), d.target[keep]
    if quick:
        pick = rng.choice(len(x), size=min(len(x), 240), replace=False)
        x, y = x[pick], y[pick]
    sigma = round(float(rng.uniform(0.0, 4.0)), 2)  # pixels run 0..16
    x = x + rng.normal(0.0, sigma, x.shape).astype(np.float32)
    relabel = {int(c): i for i, c in enumerate(classes)}
    p = {"classes": [int(c) for c in classes], "noise": sigma, "n_samples": len(x)}
    return x, np.array([relabel[int(v)] for v in y], dtype=np.int64), p


def _waveforms(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """1-D signals (1, L): each class a waveform shape (sine, square, sawtooth, triangle, pulse train, chirp)
    at a random frequency, phase and amplitude, plus Gaussian noise."""
    classes = int(rng.integers(3, 7))
    length = 32
    noise = round(float(rng.uniform(0.2, 1.0)), 2)
    n = _n(rng, 900, 1800, quick)
    y = rng.integers(0, classes, n)
    t = np.arange(length, dtype=np.float64)[None, :]
    freq = rng.uniform(0.03, 0.12, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    u = 2 * np.pi * freq * t + phase
    shapes = [np.sin(u), np.sign(np.sin(u)), 2 * ((u / (2 * np.pi)) % 1.0) - 1,
              2 * np.abs(2 * ((u / (2 * np.pi)) % 1.0) - 1) - 1, (np.sin(u) > 0.8).astype(np.float64),
              np.sin(2 * np.pi * freq * t * (1 + t / length) + phase)]
    x = np.zeros((n, length))
    for c in range(classes):
        x[y == c] = shapes[c][y == c]
    x = amp * x + rng.normal(0.0, noise, x.shape)
    return x[:, None, :].astype(np.float32), y.astype(np.int64), {"classes": classes, "length": length,
                                                                   "noise": noise, "n_samples": n}


def _friedman(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_friedman1

    p = {"n_samples": _n(rng, 900, 2400, quick), "n_features": int(rng.integers(5, 16)),
         "noise": round(float(rng.uniform(0.3, 2.0)), 2)}
    x, y = make_friedman1(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.float32), p


def _bars(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images (1, 10, 10): each class a pattern (horizontal bar, vertical bar, diagonal, cross, box, dot pair)
    at a random position and brightness, plus Gaussian noise."""
    size = 10
    classes = int(rng.integers(3, 7))
    noise = round(float(rng.uniform(0.3, 1.0)), 2)
    n = _n(rng, 800, 1400, quick)
    y = rng.integers(0, classes, n)
    x = np.zeros((n, size, size))
    for i in range(n):
        r, c = rng.integers(2, size - 2, 2)
        a = rng.uniform(0.7, 1.3)
        k = y[i]
        if k == 0:
            x[i, r, max(0, c - 2):c + 3] = a
        elif k == 1:
            x[i, max(0, r - 2):r + 3, c] = a
        elif k == 2:
            for d in range(-2, 3):
                x[i, r + d, c + d] = a
        elif k == 3:
            x[i, r, c - 1:c + 2] = a
            x[i, r - 1:r + 2, c] = a
        elif k == 4:
            x[i, r - 1:r + 2, c - 1] = x[i, r - 1:r + 2, c + 1] = a
            x[i, r - 1, c - 1:c + 2] = x[i, r + 1, c - 1:c + 2] = a
        else:
            x[i, r - 1, c - 1] = x[i, r + 1, c + 1] = a
    x = x + rng.normal(0.0, noise, x.shape)
    return x[:, None].astype(np.float32), y.astype(np.int64), {"classes": classes, "size": size, "noise": noise,
                                                                "n_samples": n}


def _easy_blobs(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_blobs

    p = {"n_samples": _n(rng, 800, 1200, quick), "centers": 2, "n_features": int(rng.integers(2, 5)),
         "cluster_std": round(float(rng.uniform(0.5, 1.0)), 2)}
    x, y = make_blobs(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.int64), p


def _cancer_control(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """scikit-learn's breast_cancer (569 samples, 2 classes), a random 10-30 of its 30 features."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    features = int(rng.integers(10, 31))
    cols = np.sort(rng.choice(d.data.shape[1], size=features, replace=False))
    x, y = d.data[:, cols], d.target
    if quick:
        pick = rng.choice(len(x), size=240, replace=False)
        x, y = x[pick], y[pick]
    return x.astype(np.float32), y.astype(np.int64), {"n_features": features, "n_samples": len(x)}


# Held-out makers: never read by a reader marked "train".


def _rings(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Concentric rings in 2-D, one class per ring, radii 1..k, with radial noise."""
    classes = int(rng.integers(2, 5))
    noise = round(float(rng.uniform(0.08, 0.25)), 2)
    n = _n(rng, 1000, 2000, quick)
    y = rng.integers(0, classes, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = 1.0 + y + rng.normal(0, noise * 2, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return x.astype(np.float32), y.astype(np.int64), {"classes": classes, "noise": noise, "n_samples": n}


def _quantiles(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_gaussian_quantiles

    p = {"n_samples": _n(rng, 1000, 2400, quick), "n_features": int(rng.integers(2, 9)),
         "n_classes": int(rng.integers(2, 6))}
    x, y = make_gaussian_quantiles(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.int64), p


def _digits_images(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The digits as 1x8x8 images, each shifted by up to one pixel, with Gaussian pixel noise."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images.astype(np.float32), d.target.astype(np.int64)
    if quick:
        pick = rng.choice(len(x), size=240, replace=False)
        x, y = x[pick], y[pick]
    sigma = round(float(rng.uniform(0.0, 3.0)), 2)
    shifted = np.zeros_like(x)
    for i in range(len(x)):
        dr, dc = rng.integers(-1, 2, 2)
        shifted[i] = np.roll(np.roll(x[i], dr, axis=0), dc, axis=1)
    shifted += rng.normal(0.0, sigma, shifted.shape).astype(np.float32)
    return shifted[:, None], y, {"noise": sigma, "n_samples": len(x)}


def _motifs(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """1-D sequences (1, L) of noise, each holding its class's short motif at a random position."""
    classes = int(rng.integers(3, 6))
    length, width = 40, 7
    noise = round(float(rng.uniform(0.3, 0.9)), 2)
    motifs = rng.normal(0.0, 1.0, (classes, width))
    n = _n(rng, 1000, 1800, quick)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.0, noise, (n, length))
    start = rng.integers(0, length - width, n)
    for i in range(n):
        x[i, start[i]:start[i] + width] += motifs[y[i]]
    return x[:, None].astype(np.float32), y.astype(np.int64), {"classes": classes, "length": length,
                                                               "noise": noise, "n_samples": n}


def _tanh_regression(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """y = sum_k a_k tanh(w_k . x + b_k) + noise: a random smooth function of a few directions."""
    features = int(rng.integers(4, 13))
    units = int(rng.integers(3, 9))
    noise = round(float(rng.uniform(0.05, 0.3)), 2)
    n = _n(rng, 900, 2000, quick)
    x = rng.normal(0.0, 1.0, (n, features))
    w = rng.normal(0.0, 1.0, (features, units))
    b = rng.normal(0.0, 0.5, units)
    a = rng.normal(0.0, 1.0, units)
    f = np.tanh(x @ w + b) @ a
    y = f + rng.normal(0.0, noise * f.std(), n)
    return x.astype(np.float32), y.astype(np.float32), {"n_features": features, "units": units, "noise": noise,
                                                        "n_samples": n}


def _easy_moons(rng: np.random.Generator, quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import make_moons

    p = {"n_samples": _n(rng, 800, 1200, quick), "noise": round(float(rng.uniform(0.05, 0.15)), 2)}
    x, y = make_moons(**p, random_state=_seed(rng))
    return x.astype(np.float32), y.astype(np.int64), p


_CNN_SWEEP = (4, 8, 16, 32, 64)

#: Every family, by name. The split is fixed here; docs/suite.md lists it.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    # Training families.
    Family("blobs", TRAIN, "make_blobs: 3-8 centres in 2-10 dimensions, spread 1-3", _blobs),
    Family("classification", TRAIN, "make_classification: 2-6 classes, 4-12 informative features, separation "
           "0.6-1.6, up to 4% flipped labels", _classification),
    Family("spirals", TRAIN, "interleaved spirals: 2-5 arms, noise 0.1-0.4; a 2-hidden-layer MLP, every Linear a host",
           _spirals, targets="linear", depth=2, start_width=16),
    Family("digits_noise", TRAIN, "scikit-learn digits (8x8, flattened): a random 5-10 of the classes, Gaussian "
           "pixel noise 0-4", _digits_noise),
    Family("waveforms", TRAIN, "1-D signals (1, 32): 3-6 waveform shapes at random frequency, phase, amplitude, "
           "noise 0.2-1; a small 1-D CNN", _waveforms, arch="cnn", targets="conv", start_width=4,
           sweep=_CNN_SWEEP, epochs=40),
    Family("friedman", TRAIN, "regression, make_friedman1: 5-15 features, noise 0.3-2; metric R² in percent",
           _friedman),
    Family("bar_images", TRAIN, "images (1, 10, 10): 3-6 patterns (bars, diagonal, cross, box, dots) at random "
           "places, noise 0.3-1; a small 2-D CNN", _bars, arch="cnn", targets="conv", start_width=4,
           sweep=_CNN_SWEEP, epochs=40),
    Family("easy_blobs", TRAIN, "negative control: two well-separated blobs", _easy_blobs, start_width=32,
           sweep=(32,), control=True),
    Family("cancer_control", TRAIN, "negative control: breast_cancer on a random 10-30 of its 30 features; a "
           "2-hidden-layer MLP (16), every Linear a host", _cancer_control, targets="linear", depth=2,
           start_width=16, sweep=(16,), control=True),
    # Held-out families: judged on, never fitted on.
    Family("rings", HELD_OUT, "concentric rings in 2-D: 2-4 classes, radial noise; a 2-hidden-layer MLP, every "
           "Linear a host", _rings, targets="linear", depth=2, start_width=16),
    Family("quantiles", HELD_OUT, "make_gaussian_quantiles: 2-5 classes in 2-8 dimensions", _quantiles),
    Family("digits_images", HELD_OUT, "scikit-learn digits as images (1, 8, 8), shifted up to a pixel, noise 0-3; "
           "a small 2-D CNN", _digits_images, arch="cnn", targets="conv", start_width=4, sweep=_CNN_SWEEP,
           epochs=40),
    Family("motifs", HELD_OUT, "1-D sequences (1, 40) of noise holding one of 3-5 motifs at a random place; a small "
           "1-D CNN", _motifs, arch="cnn", targets="conv", start_width=4, sweep=_CNN_SWEEP, epochs=40),
    Family("tanh_regression", HELD_OUT, "regression: a random sum of 3-8 tanh ridges of 4-12 features, noise "
           "5-30%; metric R² in percent", _tanh_regression),
    Family("easy_moons", HELD_OUT, "negative control: make_moons with little noise", _easy_moons, start_width=32,
           sweep=(32,), control=True),
)}


def families(which: str = "all") -> list[Family]:
    """The families of a split: "train", "held-out" or "all" (training families first), in a fixed order.

    Raises:
        ValueError: ``which`` is none of those.
    """
    if which == "all":
        return [f for f in FAMILIES.values() if f.split == TRAIN] + [f for f in FAMILIES.values()
                                                                     if f.split == HELD_OUT]
    if which not in (TRAIN, HELD_OUT):
        raise ValueError(f"families must be 'train', 'held-out' or 'all', got {which!r}")
    return [f for f in FAMILIES.values() if f.split == which]


def load(name: str, index: int, quick: bool, reader: str) -> tuple[np.ndarray, np.ndarray]:
    """The data of task ``index`` of family ``name``: (x, y); the same on every call.

    Args:
        name: a family of FAMILIES.
        index: the task's index (>= 0): the seed of its parameters and data.
        quick: a tiny version of the task (smoke runs and tests).
        reader: "train" (fitting) or "eval" (judging).

    Raises:
        HeldOutError: a reader marked "train" asked for a held-out family.
        ValueError: an unknown family or reader, or a negative index.
    """
    x, y, _ = describe(name, index, quick, reader)
    return x, y


def describe(name: str, index: int, quick: bool, reader: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Like :func:`load`, with the task's drawn parameters."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if index < 0:
        raise ValueError(f"task index must be >= 0, got {index}")
    family = FAMILIES[name]
    if reader == "train" and family.split != TRAIN:
        raise HeldOutError(f"family {name!r} is held out: a reader marked 'train' may not read it (training "
                           f"families: {', '.join(f.name for f in families(TRAIN))})")
    return family.make(family.params_rng(index), quick)
