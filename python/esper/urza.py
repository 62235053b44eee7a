"""Urza, seen from Python: the content-addressed artifact store, and Tezzeret's publish/load path.

An artifact is a manifest (JSON: ``blueprint_id``, ``blueprint`` (the IR), ``input_shape``,
``output_shape``, ``dtype``, ``param_count``, ``device``, ``validation``, ``lineage``, ``tags``,
``weights_sha256``, ``weights_size``) plus safetensors weights. Its id is the SHA-256 of the
canonical manifest, which includes the weights' hash, so one id covers both files. The store
(``core/urza`` in Go) re-hashes both on every read and refuses a corrupted, truncated or forged
artifact with :class:`~esper.errors.CorruptError`: nothing is returned then::

    with Urza(tmp_dir) as store:
        aid = publish_seed(store, seed, tags=["digits"])      # validated, then stored
        seed2 = load_seed(store, aid, device="cuda")          # verified, rebuilt, weights loaded

Loading never runs code from the store: the module is built from the manifest's IR through
Tezzeret's fixed op table (on the ``meta`` device, so nothing is initialised or drawn from the
random generator), and its weights are read from safetensors bytes. Nothing here pickles or calls
``torch.load``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
from ctypes import byref, c_size_t, c_uint64, c_void_p
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import _lib, karn
from .errors import InvalidArgumentError
from .tezzeret import SeedModule, SeedValidationError, build_seed, load_weights, save_weights, validate_seed

__all__ = [
    "Urza",
    "DTYPES",
    "publish_seed",
    "load_seed",
    "seed_from_artifact",
    "seed_manifest",
    "example_input",
]

#: Manifest dtype names (torch names without "torch.") -> torch dtypes a seed can be built in.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

_c_uint8_p = ctypes.POINTER(ctypes.c_uint8)


def _bytes_arg(data: bytes | bytearray | memoryview) -> tuple[Any, bytes]:
    """A (uint8 pointer, keep-alive) pair that views data without copying it (bytes) or after one copy."""
    b = data if isinstance(data, bytes) else bytes(data)
    return ctypes.cast(ctypes.c_char_p(b), _c_uint8_p), b


def _nulled(obj: Any) -> Any:
    """obj with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nulled(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nulled(v) for v in obj]
    return obj


class Urza(_lib.Handle):
    """A handle on an artifact store (``core/urza``): a local folder or an S3-compatible bucket.

    Writes are atomic (temp file, fsync, rename; on S3 one PUT per object, the manifest after the
    weights and the index last); an index answers queries by blueprint, template and tag, and is
    reconciled with the stored objects when the store is opened. Several processes and machines
    may use one store at once. Every read is verified by Go. Close the store with :meth:`close`
    or a ``with`` block.

    Args:
        root: the store's folder (created if needed) or an ``s3://bucket/prefix`` URL. None or ""
            opens the default store: ``$ESPER_URZA_URL`` when set, else ``$ESPER_HOME/urza`` with
            ``ESPER_HOME`` defaulting to ``~/.esper`` (decided by Go, from ``os.environ`` as it
            is when the store is opened). An S3 store reads its service and credentials from
            ``ESPER_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL``), ``AWS_REGION``,
            ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (docs/urza.md).

    Raises:
        StorageError: the folder cannot be created or read, or the S3 service cannot be reached
            (after retries with backoff; the message names the URL).
    """

    _free_symbol = "esper_urza_close"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        out = c_uint64()
        arg = os.fsencode(root) if root else None
        # ESPER_HOME, ESPER_URZA_URL and the S3 variables as os.environ holds them now, not as Go
        # copied them at load.
        _lib.refresh_settings()
        _lib.check(_lib.lib().esper_urza_open(arg, byref(out)))
        super().__init__(out.value)

    def __enter__(self) -> Urza:
        return self

    def __repr__(self) -> str:
        where = self.root if self._handle else "closed"
        return f"Urza({where!r})"

    def _call(self, symbol: str, *args: Any) -> None:
        h = self.handle
        _lib.check(getattr(_lib.lib(), symbol)(h, *args), h)

    def _json(self, symbol: str, *args: Any) -> Any:
        out = c_void_p()
        self._call(symbol, *args, byref(out))
        return _lib.take_json(out)

    @property
    def root(self) -> str:
        """The store's absolute root folder, or its ``s3://`` URL."""
        out = c_void_p()
        self._call("esper_urza_root", byref(out))
        return _lib.take_string(out)

    def put(self, manifest: dict[str, Any] | str | bytes, weights: bytes | bytearray | memoryview) -> str:
        """Stores an artifact atomically and returns its id.

        ``weights_sha256``, ``weights_size``, ``blueprint_id`` and ``param_count`` are filled in when
        absent and must match when given; tags are sorted and deduplicated. Storing an artifact that
        is already there intact changes nothing.

        Args:
            manifest: the manifest (a dict or its JSON text), see the module docstring.
            weights: the safetensors bytes.

        Returns:
            The artifact id (64 lowercase hex digits).

        Raises:
            InvalidArgumentError: a malformed manifest (the message names the field) or weights that
                are not well-formed safetensors.
            BudgetError: the weights are too large.
            StorageError: a file operation failed.
        """
        doc = manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest, allow_nan=False)
        text = doc.encode() if isinstance(doc, str) else doc
        ptr, keep = _bytes_arg(weights)
        out = c_void_p()
        self._call("esper_urza_put", text, ptr, len(keep), byref(out))
        return _lib.take_string(out)

    def get_bytes(self, artifact_id: str) -> tuple[bytes, bytes]:
        """Loads and verifies an artifact, as stored.

        Args:
            artifact_id: the artifact id.

        Returns:
            ``(manifest_bytes, weights)``: the canonical manifest (its SHA-256 is the id) and the
            safetensors bytes, both verified against their hashes by Go.

        Raises:
            InvalidArgumentError: a malformed id.
            NotFoundError: no such artifact.
            CorruptError: a hash or size mismatch, or missing weights; nothing is returned.
            UnavailableError: the artifact failed to load 3 times in a row (fenced for 30 s).
            StorageError: a file operation failed.
        """
        manifest, weights, n = c_void_p(), c_void_p(), c_size_t()
        self._call("esper_urza_get", artifact_id.encode(), byref(manifest), byref(weights), byref(n))
        data = _lib.take_bytes(weights, n.value)
        return _lib.take_string(manifest).encode(), data

    def get(self, artifact_id: str) -> tuple[dict[str, Any], bytes]:
        """Loads and verifies an artifact.

        Args:
            artifact_id: the artifact id.

        Returns:
            ``(manifest, weights)``: the decoded canonical manifest and the safetensors bytes.

        Raises:
            As :meth:`get_bytes`.
        """
        manifest, weights = self.get_bytes(artifact_id)
        return json.loads(manifest), weights

    def stat(self, artifact_id: str) -> dict[str, Any]:
        """An artifact's index entry; checks the manifest's hash and the weights' size only.

        Args:
            artifact_id: the artifact id.

        Returns:
            ``{"id", "blueprint_id", "template", "input_shape", "output_shape", "dtype", "device",
            "param_count", "tags", "weights_size", "created"}``.

        Raises:
            As :meth:`get_bytes`.
        """
        return self._json("esper_urza_stat", artifact_id.encode())

    def show(self, artifact_id: str) -> dict[str, Any]:
        """Everything about one artifact, fully verified: its index entry and its manifest.

        Args:
            artifact_id: the artifact id.

        Returns:
            ``{"id", "info": stat(id), "manifest": the verified manifest}``.

        Raises:
            As :meth:`get_bytes`.
        """
        manifest, _ = self.get(artifact_id)
        return {"id": artifact_id, "info": self.stat(artifact_id), "manifest": manifest}

    def list(
        self,
        blueprint_id: str | None = None,
        tag: str | None = None,
        *,
        tags: Iterable[str] = (),
        template: str | None = None,
        input_shape: Sequence[int] | None = None,
        output_shape: Sequence[int] | None = None,
        dtype: str | None = None,
        device: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Index entries matching every given criterion, newest first.

        Args:
            blueprint_id: artifacts of this blueprint.
            tag: artifacts carrying this tag.
            tags: artifacts carrying every one of these tags too.
            template: artifacts whose blueprint came from this template.
            input_shape: artifacts of this input shape; -1 on either side matches any size.
            output_shape: likewise for the output shape.
            dtype: artifacts of this dtype ("float32", ...).
            device: artifacts for this device ("cpu", "cuda", ...).
            limit: at most this many entries.

        Returns:
            Index entries as :meth:`stat` returns them.

        Raises:
            InvalidArgumentError: a malformed query (e.g. a negative limit).
        """
        query: dict[str, Any] = {}
        all_tags = ([tag] if tag is not None else []) + [str(t) for t in tags]
        for key, value in (
            ("blueprint_id", blueprint_id), ("template", template), ("dtype", dtype), ("device", device),
            ("limit", limit),
        ):
            if value is not None:
                query[key] = value
        if all_tags:
            query["tags"] = all_tags
        if input_shape is not None:
            query["input_shape"] = [int(d) for d in input_shape]
        if output_shape is not None:
            query["output_shape"] = [int(d) for d in output_shape]
        arg = json.dumps(query).encode() if query else None
        return self._json("esper_urza_list", arg)

    def verify(self) -> dict[str, Any]:
        """Re-hashes every artifact and reports what is wrong; changes nothing.

        Returns:
            ``{"checked", "ok", "bytes", "bad": [problem], "leftovers": [problem]}``; a problem is
            ``{"id", "path" (relative to the root), "kind", "detail"}`` with kind ``corrupt``,
            ``incomplete``, ``unreadable`` or ``index`` in ``bad``, and ``temp``, ``orphan`` or
            ``unexpected`` in ``leftovers``.

        Raises:
            CancelledError: :meth:`cancel` was called from another thread meanwhile.
        """
        return self._json("esper_urza_verify")

    def gc(self) -> dict[str, Any]:
        """Removes artifacts that fail verification, and temp files and orphan weights older than an hour.

        Files the store did not write are never removed.

        Returns:
            ``{"removed": [problem], "bytes"}`` (problems as in :meth:`verify`).

        Raises:
            CancelledError: :meth:`cancel` was called from another thread meanwhile.
        """
        return self._json("esper_urza_gc")

    def delete(self, artifact_id: str) -> None:
        """Deletes an artifact.

        Args:
            artifact_id: the artifact id.

        Raises:
            InvalidArgumentError: a malformed id.
            NotFoundError: no such artifact.
            StorageError: a file operation failed.
        """
        self._call("esper_urza_delete", artifact_id.encode())

    def put_outcome(self, record: dict[str, Any]) -> str:
        """Writes one germination's outcome record (schema 1) atomically; Go validates it strictly.

        Non-finite floats in ``record`` are written as ``null``. The record is stored as
        ``outcomes/<run_id>/<germinated_step>-<layer>-<slot>-<seq>.json`` under the root (the name
        is derived by Go from the record's fields); writing the same germination again replaces it.

        Args:
            record: the record (see docs/internals.md, "Outcome records").

        Returns:
            Its key, ``"<run_id>/<name>"``.

        Raises:
            InvalidArgumentError: a malformed record (the message names the field).
            StorageError: a file operation failed.
        """
        return self.put_outcome_json(json.dumps(_nulled(record), allow_nan=False).encode())

    def put_outcome_json(self, text: bytes) -> str:
        """:meth:`put_outcome` of a record already serialised (JSON without NaN or infinities)."""
        out = c_void_p()
        self._call("esper_urza_put_outcome", text, byref(out))
        return _lib.take_string(out)

    def outcomes(self, run: str | None = None) -> list[dict[str, Any]]:
        """Outcome records, of one run or of every run, ordered by run and germination step.

        Args:
            run: a run id (``Morphogenesis.run_id``); None for every run.

        Returns:
            The records as stored (schema, run_id, seq, layer, slot, observation, blueprint,
            train_flops, contributions, final_state, states, ...).

        Raises:
            InvalidArgumentError: a malformed run id.
            CorruptError: a stored record does not decode.
        """
        from .outcomes import flush_all

        flush_all()  # records this process queued are on disk first
        return self._json("esper_urza_outcomes", run.encode() if run else None)

    def runs(self) -> list[dict[str, Any]]:
        """One summary per run with outcome records, newest first: ``{"run_id", "outcomes", "ended"
        (count per ended_by), "params_fossilized", "first_step", "last_step", "updated"}``."""
        from .outcomes import flush_all

        flush_all()
        return self._json("esper_urza_runs")

    def put_experience(self, record: dict[str, Any]) -> str:
        """Writes one episode's experience record (schema 1) atomically; Go validates it strictly.

        The record is stored as ``experience/<trainer_run>/<mode>-<episode>.json`` under the root (the name
        is derived by Go from the record's fields, the episode in nine digits); writing the same trainer
        run, mode and episode again replaces it. ``esper simic ppo train`` writes one per episode (see
        docs/simic.md, "Experience in Urza", for the fields).

        Args:
            record: the record: ``trainer_run``, ``episode`` (from 1), ``mode`` ("policy" or "heuristic"),
                ``spec``, ``run`` (its ``run_id`` and figures), ``steps``, and in mode "policy"
                ``baseline``, ``reward`` and ``checkpoint``.

        Returns:
            Its key, ``"<trainer_run>/<mode>-<episode>"``.

        Raises:
            InvalidArgumentError: a malformed record (the message names the field), or one holding NaN or
                an infinity.
            StorageError: a file operation failed.
        """
        try:
            text = json.dumps(record, allow_nan=False, separators=(",", ":"))
        except ValueError as e:
            raise InvalidArgumentError(f"experience record of {record.get('trainer_run')!r} episode "
                                       f"{record.get('episode')!r}: {e} (a NaN or infinity: the run's figures "
                                       "are not finite)") from e
        out = c_void_p()
        self._call("esper_urza_put_experience", text.encode(), byref(out))
        return _lib.take_string(out)

    def experience(self, run: str) -> list[dict[str, Any]]:
        """One trainer run's experience records, in the order the trainer ran them: mode "heuristic"
        (behaviour cloning's runs) then "policy" (PPO's episodes), each by episode.

        Args:
            run: the trainer run id (``Trainer.trainer_run``; :meth:`experience_runs` lists them).

        Returns:
            The records as stored (schema and ``written`` stamped by Go); ``[]`` for a run with none.

        Raises:
            InvalidArgumentError: a malformed run id.
            CorruptError: a stored record does not decode as one of that run.
        """
        return self._json("esper_urza_experience", str(run).encode())

    def experience_runs(self) -> list[dict[str, Any]]:
        """One summary per trainer run with experience records, newest first: ``{"trainer_run", "episodes"
        (count per mode), "last_episode" (per mode), "updated"}`` (from the store's listing; no record is
        read)."""
        return self._json("esper_urza_experience_runs")

    def publish_model(self, name: str, model_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Publishes a value model folder (manifest.json + model.safetensors, as ``esper simic train``
        writes it) as a version of ``name``. Go checks that the folder loads first; the version is
        content-addressed (publishing the same folder again is the same version) and verified on every
        read. A run with ``MorphConfig(policy="learned", value_model="urza:<name>")`` switches to the
        newest version at its next end of epoch (docs/simic.md, "Rolling deployment").

        Returns:
            ``{"name", "id", "weights_sha256", "weights_size", "published"}``.

        Raises:
            InvalidArgumentError: a bad name, or a folder with no usable model (the message says why).
            StorageError: the store cannot be written.
        """
        return self._json("esper_value_publish", str(name).encode(), os.fspath(model_dir).encode())

    def publish_predictor(self, name: str, predictor_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Publishes a Karn predictor folder (as :func:`esper.karn.fit_predictor` writes it) as a
        version of ``name``, like :meth:`publish_model`. A run with ``MorphConfig(karn_search=True,
        karn_predictor="urza:<name>")`` ranks Karn's candidates with the newest version and switches
        to a newer one at its next end of epoch (docs/karn.md, "Rolling deployment").

        Returns:
            ``{"name", "id", "weights_sha256", "weights_size", "published"}``.

        Raises:
            InvalidArgumentError: a bad name, or a folder that does not load (the message says why).
            StorageError: the store cannot be written.
        """
        return self._json("esper_karn_publish", str(name).encode(), os.fspath(predictor_dir).encode())

    def models(self, name: str) -> list[dict[str, Any]]:
        """The published versions of model ``name``, oldest first, as :meth:`publish_model` returns
        them (``[]`` when none)."""
        return self._json("esper_urza_models", str(name).encode())

    def cancel(self) -> None:
        """Cancels a :meth:`verify` or :meth:`gc` in flight on this store (from another thread)."""
        h = self.handle
        _lib.check(_lib.lib().esper_cancel(h), h)


# ---------------------------------------------------------------------------------------------
# Tezzeret's publish / load path
# ---------------------------------------------------------------------------------------------


def _shape_of(shape: dict[str, Any]) -> list[int]:
    """A manifest shape from Karn's symbolic one: known sizes kept, symbols and leading dims -1."""
    dims = [int(d["size"]) if "size" in d else -1 for d in shape["dims"]]
    return ([-1] if shape.get("leading") else []) + dims


def example_input(host: dict[str, Any], *, batch: int = 2, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> tuple[Tensor, list[int]]:
    """A random input for a host and the output shape the host (and a seed on it) must produce.

    Sizes Karn leaves symbolic take the host's ``spatial`` extents when given, else 8 (at least the
    host's kernel); a residual host without ``spatial`` gets tokens ``(batch, 3, dim)``.

    Args:
        host: the host description.
        batch: the batch size.
        device: where the tensor is created.
        dtype: its dtype.

    Returns:
        ``(x, expected_output_shape)``.

    Raises:
        InvalidArgumentError: an unknown host kind.
    """
    kind = host.get("kind")
    g = torch.Generator().manual_seed(0)
    spatial = [int(s) for s in host.get("spatial") or []]
    if kind in ("linear", "block"):
        shape, out = [batch, int(host["in"])], [batch, int(host["out"])]
    elif kind == "residual":
        dim = int(host["dim"])
        shape = [batch, dim, *spatial] if spatial else [batch, 3, dim]
        out = list(shape)
    elif kind in ("conv1d", "conv2d"):
        nd = 1 if kind == "conv1d" else 2
        k, s, p = int(host["kernel"]), int(host["stride"]), int(host["padding"])
        extents = spatial or [max(8, k)] * nd
        shape = [batch, int(host["in"]), *extents]
        out = [batch, int(host["out"]), *[(e + 2 * p - k) // s + 1 for e in extents]]
    elif kind in ("conv1d_pair", "conv2d_pair"):
        nd = 1 if kind == "conv1d_pair" else 2
        k, s, p = int(host["kernel"]), int(host["stride"]), int(host.get("padding", 0))
        k2, s2, p2 = int(host["consumer_kernel"]), int(host["consumer_stride"]), int(host.get("consumer_padding", 0))
        extents = spatial or [max(8, k + s * k2)] * nd  # large enough for both kernels
        mid = [(e + 2 * p - k) // s + 1 for e in extents]
        shape = [batch, int(host["in"]), *extents]
        out = [batch, int(host["out"]), *[(m + 2 * p2 - k2) // s2 + 1 for m in mid]]
    else:
        raise InvalidArgumentError(f"host kind {kind!r} is not one of {', '.join(karn.HOST_KINDS)}")
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return x, out


def _validate(seed: SeedModule, x: Tensor, expected: list[int]) -> dict[str, Any]:
    """Tezzeret's validation of a seed that may have been trained since it germinated.

    A seed at initialisation must pass :func:`~esper.tezzeret.validate_seed` entirely. A trained
    seed's output is no longer zero: it must pass every other check (forward, output shape, finite,
    finite backward, parameter count), and the report says ``"at_init": false``.
    """
    try:
        report = validate_seed(seed, x, expected)
        report["at_init"] = True
        return report
    except SeedValidationError as exc:
        if exc.check != "zero_init":
            raise
    # validate_seed checked forward, output shape and finiteness before the zero check failed.
    xg = x.detach().requires_grad_(x.is_floating_point())
    params = [p for p in seed.parameters() if p.requires_grad]
    with torch.enable_grad():
        out = seed(xg)
        inputs = ([xg] if xg.requires_grad else []) + params
        cotangent = torch.randn(out.shape, generator=torch.Generator(device=out.device).manual_seed(0),
                                device=out.device, dtype=out.dtype)
        grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True) if inputs else ()
    if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
        raise SeedValidationError("backward", f"seed {seed.blueprint_id[:12]}: non-finite gradient",
                                  "finite", "non-finite")
    declared = seed.ir.get("param_count")
    if declared is not None and declared != seed.param_count:
        raise SeedValidationError("param_count", f"seed {seed.blueprint_id[:12]}: parameter count: expected "
                                  f"{declared}, got {seed.param_count}", declared, seed.param_count)
    return {
        "blueprint_id": seed.blueprint_id,
        "template": seed.template,
        "input_shape": list(x.shape),
        "output_shape": list(out.shape),
        "dtype": str(out.dtype).replace("torch.", ""),
        "device": str(out.device),
        "param_count": seed.param_count,
        "checks": ["forward", "output_shape", "finite", "backward", "param_count"],
        "ok": True,
        "at_init": False,
    }


def seed_manifest(seed: SeedModule, *, tags: Iterable[str] = (), lineage: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Validates a seed and returns its artifact manifest (without the weights fields, which Urza fills).

    Args:
        seed: a seed built by Tezzeret from a blueprint IR; it may have been trained.
        tags: free labels.
        lineage: where the seed came from (a JSON object: run, layer, parent artifact, ...).

    Returns:
        The manifest: ``blueprint`` (the seed's IR), ``input_shape`` / ``output_shape`` (Karn's
        symbolic shapes, -1 for any size, one leading -1 for "any leading dims"), ``dtype``,
        ``param_count``, ``device`` (the device type it was validated on), ``validation`` (the
        report), ``lineage`` and ``tags`` when given.

    Raises:
        InvalidArgumentError: the seed's IR is malformed for Karn, or its dtype cannot be stored.
        SeedValidationError: the seed failed a validation check.
    """
    if not isinstance(seed, SeedModule):
        raise InvalidArgumentError(f"publish needs a SeedModule built by esper.tezzeret, got {type(seed).__name__}")
    params = list(seed.parameters())
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    dtype_name = str(dtype).replace("torch.", "")
    if dtype_name not in DTYPES:
        raise InvalidArgumentError(f"seed dtype {dtype_name} cannot be stored (one of {', '.join(DTYPES)})")
    shapes = karn.analyze(seed.ir)  # Go validates the IR on its own host
    x, expected = example_input(seed.ir["host"], device=device, dtype=dtype)
    report = _validate(seed, x, expected)
    manifest: dict[str, Any] = {
        "blueprint": seed.ir,
        "input_shape": _shape_of(shapes["input"]),
        "output_shape": _shape_of(shapes["output"]),
        "dtype": dtype_name,
        "param_count": seed.param_count,
        "device": device.type,
        "validation": report,
    }
    if lineage:
        manifest["lineage"] = lineage
    tag_list = sorted({str(t) for t in tags})
    if tag_list:
        manifest["tags"] = tag_list
    return manifest


def publish_seed(store: Urza, seed: SeedModule, *, tags: Iterable[str] = (),
                 lineage: dict[str, Any] | None = None) -> str:
    """Validates a seed and stores it as an artifact: manifest plus safetensors weights.

    Args:
        store: the artifact store.
        seed: a seed built by Tezzeret (at initialisation or trained).
        tags: free labels, for queries.
        lineage: where the seed came from (a JSON object).

    Returns:
        The artifact id.

    Raises:
        SeedValidationError: the seed failed validation; nothing is stored.
        InvalidArgumentError: Karn or Urza refused the IR or the manifest (Go's message).
        StorageError: a file operation failed.
    """
    manifest = seed_manifest(seed, tags=tags, lineage=lineage)
    return store.put(manifest, save_weights(seed))


def seed_from_artifact(manifest: dict[str, Any], weights: bytes, *, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None, artifact_id: str = "") -> SeedModule:
    """Builds the seed of a verified artifact: IR through Tezzeret's op table, weights from safetensors.

    The module is built on the ``meta`` device (no initialisation, no random numbers drawn), moved to
    ``device`` uninitialised, and every tensor of its state is then copied from the weights.

    Args:
        manifest: the artifact's manifest, as :meth:`Urza.get` returns it.
        weights: its safetensors bytes.
        device: where to put the seed (default CPU).
        dtype: its dtype (default: the artifact's; another floating dtype converts).
        artifact_id: named in error messages.

    Returns:
        The seed, in training mode, parameters requiring gradients.

    Raises:
        InvalidArgumentError: the manifest's dtype cannot be built, its IR is refused by Tezzeret, or
            the weights do not match the IR (missing, unexpected or mis-shaped tensors).
    """
    name = artifact_id[:16] or "artifact"
    stored = DTYPES.get(str(manifest.get("dtype")))
    if stored is None:
        raise InvalidArgumentError(f"{name}: dtype {manifest.get('dtype')!r} cannot be built "
                                   f"(one of {', '.join(DTYPES)})")
    if dtype is not None and not dtype.is_floating_point:
        raise InvalidArgumentError(f"{name}: dtype {dtype} is not a floating dtype")
    try:
        seed = build_seed(manifest["blueprint"], device="meta", dtype=stored, blueprint_id=manifest.get("blueprint_id"))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{name}: its blueprint cannot be built: {exc}") from exc
    seed = seed.to_empty(device=torch.device(device) if device is not None else torch.device("cpu"))
    try:
        load_weights(seed, weights)
    except ValueError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from exc
    if seed.param_count != manifest.get("param_count"):
        raise InvalidArgumentError(f"{name}: built seed has {seed.param_count} parameters, the manifest says "
                                   f"{manifest.get('param_count')}")
    if dtype is not None and dtype != stored:
        seed = seed.to(dtype=dtype)
    return seed


def load_seed(store: Urza, artifact_id: str, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> SeedModule:
    """Loads an artifact from a store (Go verifies both hashes) and builds its seed.

    Args:
        store: the artifact store.
        artifact_id: the artifact id.
        device: where to put the seed (default CPU).
        dtype: its dtype (default: the artifact's).

    Returns:
        The seed with the stored weights.

    Raises:
        NotFoundError: no such artifact.
        CorruptError: the artifact failed verification; nothing is built.
        InvalidArgumentError: a malformed id, or an artifact whose IR or weights cannot be built.
    """
    manifest, weights = store.get(artifact_id)
    return seed_from_artifact(manifest, weights, device=device, dtype=dtype, artifact_id=artifact_id)
