"""Validated builds: the first germination of a blueprint on a host is validated once, then served.

A germination builds its seed from the blueprint Go sends (Tezzeret). The first time a
(blueprint id, dtype, device type) is seen, where the blueprint id covers the host signature
(the IR holds its host), the built module is validated by Tezzeret (exactly zero output at
initialisation, output of the host's shape, finite forward and backward, parameter count equal to
Go's) and the report is stored in Urza as a *build* artifact (tag ``kind:build``, the seed's
initial weights, the validation report, lineage: run, layer, slot, step). Later germinations of
the same key are served without validating again:

- from the kernel cache (``core/cache``, one per process, shared by every run in it): a *hit*;
- else from Urza (another process or an earlier run wrote the build), whose artifact is verified by
  Go and put into the kernel cache: a *store hit*.

Served or not, every seed gets its own initial weights from its per-seed generator: a build
artifact vouches for the blueprint's module on that host, its weights are not reused.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import EsperError
from .kernels import KernelCache
from .tezzeret import SeedModule, SeedValidationError, save_weights, validate_seed
from .urza import Urza, example_input, seed_from_artifact, seed_manifest

__all__ = ["BuildCache", "StoredKernel", "kernel_cache", "clear_kernel_cache", "BUILD_TAG", "KERNEL_TAG"]

#: The tag of build artifacts in Urza (``esper urza ls --kind build``).
BUILD_TAG = "kind:build"
#: The tag of trained kernels (fossilized seeds) in Urza (``esper urza ls --kind kernel``).
KERNEL_TAG = "kind:kernel"
#: Bytes the process's kernel cache may hold.
KERNEL_CACHE_BYTES = 64 << 20

_lock = threading.Lock()
_cache: KernelCache | None = None
# (blueprint id, dtype, device type) -> build artifact id held in the kernel cache.
_index: dict[tuple[str, str, str], str] = {}


def kernel_cache() -> KernelCache:
    """The process's kernel cache of validated builds (created on first use)."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = KernelCache(KERNEL_CACHE_BYTES)
        return _cache


def clear_kernel_cache() -> None:
    """Forget every validated build held in this process (Urza keeps them): the next germination
    of each is served from Urza, as in a new process."""
    global _cache
    with _lock:
        _index.clear()
        if _cache is not None:
            _cache.close()
            _cache = None


@dataclass(frozen=True)
class StoredKernel:
    """A trained kernel loaded from Urza (verified by Go) for a germination."""

    id: str
    manifest: dict[str, Any]
    weights: bytes


class BuildCache:
    """One run's view of validated builds: admits each built seed and counts how it was served.

    Args:
        store: returns the run's Urza store, or None when it cannot be opened (builds are then
            validated every time and not recorded).
        lineage: returns the run's lineage fields (``{"run": run_id}``).
    """

    def __init__(self, store: Callable[[], Urza | None], lineage: Callable[[], dict[str, Any]]) -> None:
        self._store = store
        self._lineage = lineage
        self.hits = 0  # served by the kernel cache
        self.store_hits = 0  # served by Urza (then cached)
        self.builds = 0  # validated and recorded

    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "store_hits", "builds"}``: misses are germinations the kernel cache
        did not serve (served by Urza, or validated: ``store_hits + builds``)."""
        return {"hits": self.hits, "misses": self.store_hits + self.builds, "store_hits": self.store_hits,
                "builds": self.builds}

    def load_state_dict(self, stats: dict[str, int]) -> None:
        """Continue a checkpointed run's counts (as :meth:`stats` returned them)."""
        self.hits = int(stats.get("hits", 0))
        self.store_hits = int(stats.get("store_hits", 0))
        self.builds = int(stats.get("builds", 0))

    def admit(self, seed: SeedModule, *, layer: int, slot: int, step: int) -> str:
        """Validates ``seed`` unless its build is already known; returns "hit", "store" or "build".

        The caller has checked the seed against Go's parameter count (``tolaria._check_built``).

        Args:
            seed: the seed just built for a germination (at initialisation).
            layer, slot, step: where and when it germinated (the build's lineage).

        Raises:
            SeedValidationError: the seed failed a check (the first germination of its blueprint);
                nothing is recorded.
        """
        first = next(seed.parameters(), None)
        dtype = first.dtype if first is not None else torch.float32
        device = first.device if first is not None else torch.device("cpu")
        dtype_name = str(dtype).replace("torch.", "")
        key = (seed.blueprint_id, dtype_name, device.type)
        cache = kernel_cache()
        want = {"dtype": dtype_name, "device": device.type}
        with _lock:
            aid = _index.get(key)
        if aid is not None and cache._get(aid, want) is not None:
            self.hits += 1
            return "hit"
        store = self._store()
        if store is not None:
            found = store.list(seed.blueprint_id, BUILD_TAG, dtype=dtype_name, device=device.type, limit=1)
            if found:
                aid = found[0]["id"]
                manifest_bytes, weights = store.get_bytes(aid)  # verified by Go
                self._remember(cache, key, aid, manifest_bytes, weights)
                self.store_hits += 1
                return "store"
        # Tezzeret's checks of a germinating seed (exactly zero output at init among them) first: the
        # manifest's validation (seed_manifest) accepts trained seeds too.
        x, expected = example_input(seed.ir["host"], device=device, dtype=dtype)
        validate_seed(seed, x, expected)
        manifest = seed_manifest(seed, tags=[BUILD_TAG],
                                 lineage={**self._lineage(), "layer": layer, "slot": slot, "step": step})
        self.builds += 1
        if store is not None:
            weights = save_weights(seed)
            try:
                aid = store.put(manifest, weights)
            except OSError as exc:
                warnings.warn(f"esper: the validated build of blueprint {seed.blueprint_id[:12]} was not recorded "
                              f"in Urza: {exc}", RuntimeWarning, stacklevel=3)
                return "build"
            manifest_bytes, _ = store.get_bytes(aid)
            self._remember(cache, key, aid, manifest_bytes, weights)
        return "build"

    @staticmethod
    def _remember(cache: KernelCache, key: tuple[str, str, str], aid: str, manifest_bytes: bytes,
                  weights: bytes) -> None:
        evicted = set(cache.put_artifact(aid, manifest_bytes, weights))
        with _lock:
            for k in [k for k, v in _index.items() if v in evicted]:
                del _index[k]
            _index[key] = aid

    # ------------------------------------------------------------------ trained kernels

    def kernel(self, artifact_id: str, host: dict[str, Any], layer_name: str) -> StoredKernel:
        """Loads a stored kernel for a germination on a layer whose host is ``host``.

        Raises:
            ValueError: the kernel was trained on a host of another shape (both are named).
            EsperError: the store cannot be opened; NotFoundError, CorruptError from Urza.
        """
        store = self._store()
        if store is None:
            raise EsperError(f"germinate from urza:{artifact_id}: the Urza store cannot be opened (see the "
                             "warning above); set ESPER_HOME or MorphConfig.urza to the store holding it")
        manifest, weights = store.get(artifact_id)  # both hashes verified by Go
        have = manifest["blueprint"].get("host")
        if have != host:
            raise ValueError(f"kernel {artifact_id[:16]} was trained on host {have}; layer {layer_name!r} is "
                             f"{host}: germinate it on a layer of that shape")
        return StoredKernel(artifact_id, manifest, weights)

    @staticmethod
    def load_kernel(seed: SeedModule, kernel: StoredKernel) -> None:
        """Copies a stored kernel's weights into a seed just built from its blueprint (on the seed's
        device and dtype; shapes checked)."""
        first = next(seed.parameters(), None)
        device, dtype = (first.device, first.dtype) if first is not None else (None, None)
        trained = seed_from_artifact(kernel.manifest, kernel.weights, device=device, dtype=dtype,
                                     artifact_id=kernel.id)
        seed.load_state_dict(trained.state_dict())

    def kernel_payload(self, seed: SeedModule, lineage: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        """A fossilized seed as a trained kernel to publish: its manifest (tags ``kind:kernel`` and
        ``template:<name>``, Tezzeret's validation of a trained seed, ``lineage``) and weights, made
        here; the put itself is queued by the run's recorder. None, with a warning, when the seed
        fails validation or no store is open."""
        if self._store() is None:
            return None
        try:
            manifest = seed_manifest(seed, tags=[KERNEL_TAG, f"template:{seed.template}"], lineage=lineage)
        except (SeedValidationError, EsperError) as exc:
            warnings.warn(f"esper: fossilized seed {lineage.get('layer_name')}/{lineage.get('slot')} is not "
                          f"published to Urza: {exc}", RuntimeWarning, stacklevel=4)
            return None
        return manifest, save_weights(seed)
