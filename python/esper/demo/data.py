"""Tasks for the demo: data that ships in packages, split 60/20/20 stratified.

Every task returns float32 features standardised on the training split and
int64 labels, as tensors on the requested device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Task", "load_task", "TASKS", "NEGATIVE_CONTROLS"]

#: Tasks where growth is expected to help.
TASKS = ("digits", "spirals", "classification")
#: Negative controls: a small model already solves them; the controller should not grow.
NEGATIVE_CONTROLS = ("moons", "breast_cancer")


@dataclass
class Task:
    """A classification task split into train / validation / test.

    Attributes:
        name: task name.
        x_train, y_train, x_val, y_val, x_test, y_test: tensors (N, F) float32 and (N,) int64.
        num_features: F.
        num_classes: number of classes.
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
    from sklearn.model_selection import train_test_split

    x, y = _raw(name, seed)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    mean, scale = standard_scale(x_train)

    def t(a: np.ndarray, label: bool = False) -> torch.Tensor:
        if label:
            return torch.from_numpy(a).to(device)
        return torch.from_numpy((a - mean) / scale).float().to(device)

    return Task(
        name=name,
        x_train=t(x_train), y_train=t(y_train, True),
        x_val=t(x_val), y_val=t(y_val, True),
        x_test=t(x_test), y_test=t(y_test, True),
        num_features=x.shape[1], num_classes=int(y.max()) + 1,
    )
