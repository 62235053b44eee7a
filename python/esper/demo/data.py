"""Tasks for the demo: data that ships in packages, split 60/20/20 stratified.

Every task returns float32 features standardised on the training split and
int64 labels, as tensors on the requested device. :func:`split_task` makes a
Task of any data (the task suite, ``esper.suite``, uses it): inputs of any
per-sample shape (vectors, signals (C, L), images (C, H, W)) and float targets
(regression, standardised on the training split too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Task", "load_task", "split_task", "TASKS", "NEGATIVE_CONTROLS"]

#: Tasks where growth is expected to help.
TASKS = ("digits", "spirals", "classification")
#: Negative controls: a small model already solves them; the controller should not grow.
NEGATIVE_CONTROLS = ("moons", "breast_cancer")


@dataclass
class Task:
    """A classification or regression task split into train / validation / test.

    Attributes:
        name: task name.
        x_train, y_train, x_val, y_val, x_test, y_test: tensors (N, *shape) float32 and (N,) int64
            labels, or (N,) float32 targets for a regression.
        num_features: the features of one sample (the product of ``shape``).
        num_classes: number of classes (1 for a regression: one output).
        shape: one sample's input shape: (F,) for vectors, (C, L) for signals, (C, H, W) for images.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_features: int
    num_classes: int
    shape: tuple[int, ...] = ()

    @property
    def regression(self) -> bool:
        """Whether the targets are real numbers (mean squared error, R²) rather than class labels."""
        return self.y_train.is_floating_point()


def spirals(n_per_arm: int = 400, arms: int = 3, noise: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spirals generated with NumPy: (arms * n_per_arm, 2) points."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for arm in range(arms):
        t = np.sqrt(rng.uniform(0.0, 1.0, n_per_arm)) * 3.0 * np.pi
        angle = t + 2.0 * np.pi * arm / arms
        r = t
        pts = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
        pts += rng.normal(0.0, noise, pts.shape)
        xs.append(pts)
        ys.append(np.full(n_per_arm, arm))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _raw(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    if name == "spirals":
        return spirals(seed=1234)
    if name == "classification":
        x, y = datasets.make_classification(
            n_samples=2000, n_features=20, n_informative=12, n_redundant=4, n_classes=4,
            n_clusters_per_class=2, class_sep=1.0, random_state=1234,
        )
        return x.astype(np.float32), y.astype(np.int64)
    if name == "moons":
        x, y = datasets.make_moons(n_samples=1000, noise=0.1, random_state=1234)
        return x.astype(np.float32), y.astype(np.int64)
    if name == "breast_cancer":
        d = datasets.load_breast_cancer()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS + NEGATIVE_CONTROLS)}")


def standard_scale(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of the training split, for ``(x - mean) / scale``.

    A feature (nearly) constant in the training split keeps scale 1, as in
    scikit-learn's StandardScaler: dividing by its tiny deviation would blow up
    the validation and test values where it is not constant (some of digits'
    edge pixels are 0 on every training image of a split but not on all others).
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    scale = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, scale


def load_task(name: str, seed: int = 0, device: str | torch.device = "cpu") -> Task:
    """Load a task with a stratified 60/20/20 split that depends on seed.

    Args:
        name: one of TASKS or NEGATIVE_CONTROLS.
        seed: the split's random seed.
        device: where the tensors go.

    Returns:
        The Task, standardised with the training split's mean and deviation
        (see :func:`standard_scale`).
    """
    x, y = _raw(name, seed)
    return split_task(name, x, y, seed, device)


def split_task(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0,
               device: str | torch.device = "cpu") -> Task:
    """Split data 60/20/20 (stratified for class labels) with ``seed`` and standardise it on the training split.

    Args:
        name: the task's name.
        x: inputs (N, *shape), any per-sample shape; standardised per feature (each position of the shape).
        y: int64 class labels 0..C-1, or float targets (a regression: standardised too, so that losses of
            different tasks have one scale).
        seed: the split's random seed.
        device: where the tensors go.

    Raises:
        ValueError: x and y disagree in length, or y is neither integer labels nor real numbers.
    """
    from sklearn.model_selection import train_test_split

    if len(x) != len(y):
        raise ValueError(f"task {name!r}: {len(x)} inputs but {len(y)} targets")
    regression = np.issubdtype(y.dtype, np.floating)
    if not regression and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"task {name!r}: targets must be integer class labels or real numbers, got {y.dtype}")
    shape = tuple(x.shape[1:])
    flat = x.reshape(len(x), -1)
    strat = None if regression else y
    x_train, x_rest, y_train, y_rest = train_test_split(flat, y, test_size=0.4, stratify=strat, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=None if regression else y_rest, random_state=seed
    )
    mean, scale = standard_scale(x_train)
    y_mean, y_scale = (float(y_train.mean()), float(y_train.std()) or 1.0) if regression else (0.0, 1.0)

    def t(a: np.ndarray, label: bool = False) -> torch.Tensor:
        if label and not regression:
            return torch.from_numpy(a.astype(np.int64)).to(device)
        if label:
            return torch.from_numpy((a - y_mean) / y_scale).float().to(device)
        return torch.from_numpy((a - mean) / scale).float().reshape(len(a), *shape).to(device)

    return Task(
        name=name,
        x_train=t(x_train), y_train=t(y_train, True),
        x_val=t(x_val), y_val=t(y_val, True),
        x_test=t(x_test), y_test=t(y_test, True),
        num_features=flat.shape[1], num_classes=1 if regression else int(y.max()) + 1, shape=shape,
    )
