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
from .convpair import find_conv_pairs
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
from .export import export
from .kasmina import (
    FailureKind,
    KasminaLayer,
    SeedFailure,
    SeedState,
    collect_failures,
    gather_signals,
    kasmina_layers,
    set_sampling,
)
from .metrics import PrometheusCollector, serve_metrics
from .tezzeret import SeedModule, SeedValidationError, build_seed, load_weights, save_weights, validate_seed
from .tolaria import MorphConfig, Morphogenesis
from .version import __version__
from .wrap import host_specs, wrap

__all__ = [
    "__version__",
    "build_info",
    "wrap",
    "find_conv_pairs",
    "export",
    "Morphogenesis",
    "MorphConfig",
    "serve_metrics",
    "PrometheusCollector",
    "kasmina_layers",
    "host_specs",
    "KasminaLayer",
    "SeedState",
    "FailureKind",
    "SeedFailure",
    "collect_failures",
    "gather_signals",
    "set_sampling",
    "build_seed",
    "validate_seed",
    "SeedModule",
    "SeedValidationError",
    "save_weights",
    "load_weights",
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
