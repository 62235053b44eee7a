"""Esper: morphogenetic training for PyTorch.

Wrap chosen layers of a model, train as usual with one extra call per step, and
let a controller grow seeds (small modules) where they help::

    import esper
    model = esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=2)
    morph = esper.Morphogenesis(model, optimizer)
    ...
    plain = esper.export(model)

The control plane is a Go library (``libesper.so``) loaded lazily on first use;
importing this package starts nothing.
"""

from __future__ import annotations

from ._lib import build_info
from .errors import (
    BudgetError,
    CancelledError,
    CorruptError,
    EsperError,
    ForkError,
    HandleError,
    InternalError,
    InvalidArgumentError,
    LibraryError,
    NotFoundError,
    StateError,
    StorageError,
    UnavailableError,
)
from .version import __version__

__all__ = [
    "__version__",
    "build_info",
    "EsperError",
    "BudgetError",
    "CancelledError",
    "CorruptError",
    "ForkError",
    "HandleError",
    "InternalError",
    "InvalidArgumentError",
    "LibraryError",
    "NotFoundError",
    "StateError",
    "StorageError",
    "UnavailableError",
]
