"""The kernel cache: verified artifacts kept in memory, and the seeds built from them.

Two levels, so that a repeated load costs neither a disk read nor a rebuild:

- a Go cache (``core/cache``, a byte-bounded LRU) holds verified artifact bytes (canonical manifest
  plus safetensors weights) with their metadata (input shape, dtype, device). A lookup states what
  the caller needs, and Go counts it as a hit only when the entry fits (same dtype, a compatible
  device, the input shape equal wherever neither side is -1); it also counts misses, compatibility
  misses and evictions;
- a Python dict holds the modules built from them, keyed by ``(artifact id, device, dtype)``: a hit
  there calls nothing in Go and builds nothing. Modules of an artifact that Go evicts are dropped
  with it, so the byte bound also bounds the modules kept.

::

    cache = KernelCache(64 << 20)
    seed = cache.get_or_load(store, artifact_id, device="cuda", dtype=torch.bfloat16)

A Python hit does not refresh the artifact's recency in Go's LRU (that would cost a call and a
copy of its bytes), so an artifact used only through built modules can age out and be rebuilt
later: the bound wins over the hit rate.
"""

from __future__ import annotations

import copy as _copy
import ctypes
import json
import struct
import threading
from ctypes import byref, c_int32, c_size_t, c_uint64, c_void_p
from typing import Any, Sequence

import torch
from torch import nn

from . import _lib
from .errors import BudgetError, InvalidArgumentError, NotFoundError
from .urza import Urza, seed_from_artifact

__all__ = ["KernelCache"]

_c_uint8_p = ctypes.POINTER(ctypes.c_uint8)
_LEN = struct.Struct("<Q")  # length prefix of the manifest in a cached entry


def _pack(manifest: bytes, weights: bytes) -> bytes:
    """One cache entry: the manifest's length (8 bytes, little-endian), the manifest, the weights."""
    return _LEN.pack(len(manifest)) + manifest + weights


def _unpack(data: bytes) -> tuple[bytes, bytes]:
    (n,) = _LEN.unpack_from(data)
    return data[_LEN.size:_LEN.size + n], data[_LEN.size + n:]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shape_fits(have: Sequence[int], want: Sequence[int]) -> bool:
    """Go's rule: same rank, and equal sizes wherever neither side is -1."""
    return len(have) == len(want) and all(h == -1 or w == -1 or h == w for h, w in zip(have, want))


def _check_shape(artifact_id: str, have: list[int], want: Sequence[int]) -> None:
    if not _shape_fits(have, want):
        raise InvalidArgumentError(f"artifact {artifact_id[:16]}: its input shape {have} does not fit the "
                                   f"input shape {list(want)} asked for")


class KernelCache(_lib.Handle):
    """A byte-bounded cache of verified artifacts and of the seeds built from them.

    Safe to use from several threads: Go's cache is thread-safe and the module dict is locked.
    Two threads missing on the same key at once may both build; one result is kept.

    Args:
        max_bytes: the bound, in bytes, on the artifacts Go keeps (manifest plus weights each).
        copy: the default of :meth:`get_or_load`'s ``copy`` flag: True hands out a deep copy of the
            cached module (safe to train or modify), False the cached module itself (shared:
            changing it changes what later calls get).

    Raises:
        InvalidArgumentError: ``max_bytes`` is not positive.
    """

    _free_symbol = "esper_cache_free"

    def __init__(self, max_bytes: int, *, copy: bool = True) -> None:
        out = c_uint64()
        _lib.check(_lib.lib().esper_cache_new(int(max_bytes), byref(out)))
        super().__init__(out.value)
        self.copy = copy
        # _lock guards _modules and the Python counters below.
        self._lock = threading.Lock()
        # (artifact id, device, dtype) -> (built module, the artifact's input shape).
        self._modules: dict[tuple[str, str, str], tuple[nn.Module, list[int]]] = {}
        self._build_hits = 0
        self._build_misses = 0
        self._builds = 0
        self._store_loads = 0

    def __enter__(self) -> KernelCache:
        return self

    def __repr__(self) -> str:
        if not self._handle:
            return "KernelCache(closed)"
        s = self.stats()
        return f"KernelCache({s['bytes']}/{s['max_bytes']} bytes, {s['entries']} artifacts, {s['modules']} modules)"

    # -- Go cache ------------------------------------------------------------------------------

    def _put(self, meta: dict[str, Any], data: bytes) -> list[str]:
        """Stores data under meta's id in Go's cache; returns the evicted ids (their modules dropped)."""
        h = self.handle
        out = c_void_p()
        ptr = ctypes.cast(ctypes.c_char_p(data), _c_uint8_p)
        _lib.check(_lib.lib().esper_cache_put(h, json.dumps(meta).encode(), ptr, len(data), byref(out)), h)
        evicted: list[str] = _lib.take_json(out)
        if evicted:
            gone = set(evicted)
            with self._lock:
                for key in [k for k in self._modules if k[0] in gone]:
                    del self._modules[key]
        return evicted

    def _get(self, artifact_id: str, want: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        """Go's lookup: (metadata, data) on a hit, None on a miss or a compatibility miss."""
        h = self.handle
        meta, data, n = c_void_p(), c_void_p(), c_size_t()
        rc = _lib.lib().esper_cache_get(h, artifact_id.encode(), json.dumps(want).encode(), byref(meta),
                                        byref(data), byref(n))
        if rc == NotFoundError.code:
            return None
        _lib.check(rc, h)
        blob = _lib.take_bytes(data, n.value)
        return _lib.take_json(meta), blob

    def put_artifact(self, artifact_id: str, manifest_bytes: bytes, weights: bytes) -> list[str]:
        """Caches a verified artifact's bytes (replacing an entry with that id).

        Args:
            artifact_id: the artifact id.
            manifest_bytes: its canonical manifest, as :meth:`Urza.get_bytes` returns it.
            weights: its safetensors bytes.

        Returns:
            The ids evicted to make room (least recently used first).

        Raises:
            BudgetError: the artifact alone is larger than the cache (nothing changes).
            InvalidArgumentError: the manifest lacks what the metadata needs.
        """
        manifest = json.loads(manifest_bytes)
        meta = {
            "id": artifact_id,
            "input_shape": manifest.get("input_shape") or [],
            "output_shape": manifest.get("output_shape") or [],
            "dtype": manifest.get("dtype", ""),
            "device": manifest.get("device", ""),
            "size": 0,
            "tags": manifest.get("tags") or [],
        }
        return self._put(meta, _pack(manifest_bytes, weights))

    def remove(self, artifact_id: str) -> bool:
        """Drops an artifact and every module built from it (not counted as an eviction).

        Args:
            artifact_id: the artifact id.

        Returns:
            True when Go's cache held it.
        """
        h = self.handle
        removed = c_int32()
        _lib.check(_lib.lib().esper_cache_remove(h, artifact_id.encode(), byref(removed)), h)
        with self._lock:
            for key in [k for k in self._modules if k[0] == artifact_id]:
                del self._modules[key]
        return bool(removed.value)

    # -- modules -------------------------------------------------------------------------------

    def get_or_load(
        self,
        store: Urza,
        artifact_id: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        input_shape: Sequence[int] | None = None,
        copy: bool | None = None,
    ) -> nn.Module:
        """The seed of an artifact on a device and dtype, from the cheapest level that has it.

        1. A module built earlier for ``(artifact_id, device, dtype)``: returned without a call into
           Go or a rebuild (a *build hit*).
        2. Else Go's cache, asked for an entry fitting ``dtype``, ``device`` and ``input_shape``: on a
           hit, the seed is built from the cached bytes (no disk read, no re-hash).
        3. Else (a miss, or a compatibility miss: an entry built for another dtype or device) the
           artifact is loaded from the store (Go verifies both hashes), cached, and its seed built
           and converted to ``device`` and ``dtype``. An artifact larger than the whole cache is
           served without being kept (Go counts it as rejected), and so is its module.

        Args:
            store: the artifact store to load from on a miss.
            artifact_id: the artifact id.
            device: where the seed runs.
            dtype: its floating dtype.
            input_shape: the input shape the caller will feed (-1 = any size), checked against the
                artifact's (e.g. ``[-1, 64]``); None skips the check.
            copy: True returns a deep copy of the cached module, False the cached module itself;
                None uses the cache's default (``copy`` of the constructor).

        Returns:
            The seed module.

        Raises:
            InvalidArgumentError: the artifact's input shape does not fit ``input_shape``, or it
                cannot be built on ``device`` / ``dtype``.
            NotFoundError, CorruptError: from the store, as :meth:`Urza.get`; nothing is cached then.
        """
        dev = torch.device(device)
        key = (artifact_id, str(dev), _dtype_name(dtype))
        with self._lock:
            entry = self._modules.get(key)
        if entry is not None and input_shape is not None:
            _check_shape(artifact_id, entry[1], input_shape)
        with self._lock:
            if entry is not None:
                self._build_hits += 1
            else:
                self._build_misses += 1
        if entry is None:
            module, have, cached = self._load(store, artifact_id, dev, dtype, input_shape)
            if not cached:
                return module  # not kept: Go's bound also bounds the modules kept
            with self._lock:
                entry = self._modules.setdefault(key, (module, have))
        module = entry[0]
        return _copy.deepcopy(module) if (self.copy if copy is None else copy) else module

    def _load(self, store: Urza, artifact_id: str, device: torch.device, dtype: torch.dtype,
              input_shape: Sequence[int] | None) -> tuple[nn.Module, list[int], bool]:
        """Builds the seed from Go's cache or the store; returns (module, input shape, cached in Go)."""
        want: dict[str, Any] = {"dtype": _dtype_name(dtype), "device": str(device)}
        if input_shape is not None:
            want["shape"] = [int(d) for d in input_shape]
        hit = self._get(artifact_id, want)
        cached = True
        if hit is not None:
            manifest_bytes, weights = _unpack(hit[1])
        else:
            manifest_bytes, weights = store.get_bytes(artifact_id)  # verified by Go
            with self._lock:
                self._store_loads += 1
            try:
                self.put_artifact(artifact_id, manifest_bytes, weights)
            except BudgetError:
                cached = False  # larger than the whole cache: served uncached (Go counts it as rejected)
        manifest = json.loads(manifest_bytes)
        have = [int(d) for d in manifest.get("input_shape") or []]
        if input_shape is not None:
            _check_shape(artifact_id, have, input_shape)
        module = seed_from_artifact(manifest, weights, device=device, dtype=dtype, artifact_id=artifact_id)
        with self._lock:
            self._builds += 1
        return module, have, cached

    def clear_modules(self) -> None:
        """Drops every built module (Go's cache keeps the artifacts' bytes)."""
        with self._lock:
            self._modules.clear()

    def stats(self) -> dict[str, Any]:
        """Counters of both levels.

        Returns:
            Go's ``hits``, ``misses``, ``compat_misses``, ``evictions``, ``rejected``, ``bytes``,
            ``entries``, ``max_bytes``, and Python's ``build_hits`` (modules served without a
            rebuild), ``build_misses``, ``builds`` (modules built), ``store_loads`` (artifacts read
            from a store) and ``modules`` (modules kept).
        """
        h = self.handle
        out = c_void_p()
        _lib.check(_lib.lib().esper_cache_stats(h, byref(out)), h)
        stats: dict[str, Any] = _lib.take_json(out)
        with self._lock:
            stats.update(build_hits=self._build_hits, build_misses=self._build_misses, builds=self._builds,
                         store_loads=self._store_loads, modules=len(self._modules))
        return stats
