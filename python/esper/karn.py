"""Karn, seen from Python: the blueprint template library, canonical ids, constraints, mutation, search.

Karn lives in Go (``blueprint/``); this module only translates. Documents cross as JSON
(``docs/internals.md``, "Blueprint IR"): a *host* describes the layer a seed attaches to, a
*blueprint IR* is the seed's op graph, and Go fills in ``param_count`` and ``flops_per_sample``::

    host = {"kind": "linear", "in": 64, "out": 10}
    ir = karn.instantiate("residual_mlp", host, width=16)    # canonical IR, counts filled in
    data, bid = karn.canonical(ir)                            # canonical bytes and SHA-256 id
    karn.check(ir, host, max_params=5_000)                    # raises BudgetError when over budget

Search (``blueprint/karn``, docs/karn.md): a request for a host within a budget is answered with
ranked candidate IRs, each valid and within the budget, with its predicted gain (or none, when too
few outcome records exist to fit the predictor and the documented prior ranks)::

    ans = karn.search({"kind": "linear", "in": 64, "out": 64}, max_params=5_000)
    best = ans["candidates"][0]        # template, params, param_count, flops_per_sample, predicted_gain, ir

Host kinds: ``linear`` and ``block`` (``in``, ``out``), ``conv1d`` / ``conv2d`` (``in``, ``out``,
``kernel``, ``stride``, ``padding``, optional ``spatial``), ``residual`` (``dim``, optional
``spatial``). Every function raises the :class:`~esper.errors.EsperError` subclass of Go's status
code with Go's message, which names the field, op or shape at fault.
"""

from __future__ import annotations

import ctypes
import json
import os
from ctypes import byref, c_void_p
from typing import Any, Union

from . import _lib
from .errors import EsperError

__all__ = [
    "HOST_KINDS",
    "templates",
    "template_names",
    "instantiate",
    "canonical",
    "blueprint_id",
    "check",
    "analyze",
    "mutate",
    "library_costs",
    "SIGNAL_NAMES",
    "search",
    "answer",
    "predictor_eval",
]

#: Host kinds Karn accepts (docs/internals.md).
HOST_KINDS = ("linear", "block", "conv1d", "conv2d", "residual", "conv1d_pair", "conv2d_pair")

#: An IR as a dict, or as its JSON text.
IRLike = Union[dict[str, Any], str, bytes]


def _encode(doc: Any) -> bytes:
    """JSON bytes of a document (text passes through); NaN is refused, as Go's decoder would."""
    if isinstance(doc, bytes):
        return doc
    if isinstance(doc, str):
        return doc.encode()
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()


def _optional(doc: Any) -> bytes | None:
    return None if doc is None else _encode(doc)


def _budget(max_params: int | None, max_flops: int | None) -> bytes | None:
    budget = {k: int(v) for k, v in (("max_params", max_params), ("max_flops", max_flops)) if v}
    return _encode(budget) if budget else None


def templates() -> list[dict[str, Any]]:
    """The template library, sorted by name.

    Returns:
        One dict per template: ``name``, ``description``, ``layouts`` (host layouts it supports),
        ``params`` (a list of ``{"name", "kind": "int"|"enum", "default", "min", "max", "choices",
        "doc"}``, empty for a template without parameters) and ``mergeable``.
    """
    out = c_void_p()
    _lib.check(_lib.lib().esper_blueprint_templates(byref(out)))
    rows: list[dict[str, Any]] = _lib.take_json(out)
    for row in rows:
        row["params"] = row.get("params") or []  # libraries before the fix wrote null for "no parameters"
    return rows


def template_names() -> list[str]:
    """The names of the library's templates, sorted."""
    return [t["name"] for t in templates()]


def instantiate(template: str, host: dict[str, Any], **params: Any) -> dict[str, Any]:
    """Builds a library template for a host.

    Args:
        template: the template's name (see :func:`templates`).
        host: the host description, e.g. ``{"kind": "linear", "in": 64, "out": 10}``.
        **params: template parameters (``width=16``, ``activation="gelu"``, ``rank=8``, ...);
            missing ones take their defaults.

    Returns:
        The validated, canonical IR with ``param_count`` and ``flops_per_sample`` filled in.

    Raises:
        NotFoundError: no template has that name (the message lists the library).
        InvalidArgumentError: a malformed host, an unknown or out-of-range parameter, or a template
            that does not support the host's layout.
    """
    out = c_void_p()
    rc = _lib.lib().esper_blueprint_instantiate(
        template.encode(), _encode(params) if params else None, _encode(host), byref(out)
    )
    _lib.check(rc)
    return _lib.take_json(out)


def canonical(ir: IRLike) -> tuple[bytes, str]:
    """The canonical bytes and id of an IR, after Go validated it against its own host.

    Canonical JSON is object keys sorted, no insignificant whitespace, numbers in shortest form;
    the id is the lowercase hex SHA-256 of those bytes, equal in every process and on every machine.

    Args:
        ir: the IR (a dict or its JSON text).

    Returns:
        ``(canonical_bytes, blueprint_id)``.

    Raises:
        InvalidArgumentError: a malformed IR, or a ``param_count`` / ``flops_per_sample`` that
            differs from Karn's count; the message names the op, attribute or shape at fault.
    """
    data, ident = c_void_p(), c_void_p()
    _lib.check(_lib.lib().esper_blueprint_canonical(_encode(ir), byref(data), byref(ident)))
    # Take both before anything can raise, so neither buffer leaks.
    text = _lib.take_string(data)
    return text.encode(), _lib.take_string(ident)


def blueprint_id(ir: IRLike) -> str:
    """The blueprint id of an IR (see :func:`canonical`).

    Args:
        ir: the IR (a dict or its JSON text).

    Returns:
        64 lowercase hex digits.

    Raises:
        InvalidArgumentError: as :func:`canonical`.
    """
    return canonical(ir)[1]


def check(ir: IRLike, host: dict[str, Any] | None = None, max_params: int | None = None,
          max_flops: int | None = None) -> None:
    """Checks that an IR fits a host within a budget.

    Args:
        ir: the IR (a dict or its JSON text).
        host: the host to check against; None checks against the IR's own host.
        max_params: the largest parameter count allowed (None or 0: no limit).
        max_flops: the largest FLOPs per sample allowed (None or 0: no limit).

    Raises:
        InvalidArgumentError: a malformed IR or host, or a shape mismatch (the message shows the
            expected and actual shapes).
        BudgetError: over budget, e.g. ``"param_count 420 > max_params 10"``.
    """
    _lib.check(_lib.lib().esper_blueprint_check(_encode(ir), _optional(host), _budget(max_params, max_flops)))


def analyze(ir: IRLike, host: dict[str, Any] | None = None) -> dict[str, Any]:
    """Shape analysis of an IR on a host.

    Args:
        ir: the IR (a dict or its JSON text).
        host: the host; None uses the IR's own.

    Returns:
        ``{"input", "output", "shapes": {op id: shape}, "order": [op ids], "param_count",
        "flops_per_sample", "mergeable"}``; a shape is ``{"leading": bool, "dims": [{"size": n} |
        {"sym": name, "off": int, "div": int}]}`` (``leading``: any number of leading dims).

    Raises:
        InvalidArgumentError: as :func:`check`.
    """
    out = c_void_p()
    _lib.check(_lib.lib().esper_blueprint_analyze(_encode(ir), _optional(host), byref(out)))
    return _lib.take_json(out)


def mutate(ir: IRLike, seed: int, max_params: int | None = None, max_flops: int | None = None) -> dict[str, Any]:
    """A variant of a template instance with one parameter changed, valid and within budget.

    Args:
        ir: an IR instantiated from a library template.
        seed: drives every random choice; the same seed gives the same variant.
        max_params: parameter budget of the variant (None or 0: no limit).
        max_flops: FLOP budget of the variant (None or 0: no limit).

    Returns:
        The variant's canonical IR.

    Raises:
        NotFoundError: the IR names no library template.
        InvalidArgumentError: the template has no parameter to vary, or no valid variant was found.
    """
    out = c_void_p()
    rc = _lib.lib().esper_blueprint_mutate(_encode(ir), _budget(max_params, max_flops),
                                           ctypes.c_uint64(seed & (2**64 - 1)), byref(out))
    _lib.check(rc)
    return _lib.take_json(out)


def _layout(host: dict[str, Any]) -> str:
    """The host's layout, the unit templates declare support for (as blueprint.Host.Layout)."""
    kind = host.get("kind")
    if kind in ("linear", "block"):
        return "linear"
    if kind == "residual":
        spatial = host.get("spatial") or []
        return {0: "residual", 1: "residual_1d", 2: "residual_2d"}.get(len(spatial), "")
    return str(kind)


def library_costs(host: dict[str, Any]) -> list[dict[str, Any]]:
    """Every template of the library instantiated with its defaults for a host, with its costs.

    Args:
        host: the host description.

    Returns:
        One row per template, sorted by name: ``template``, ``description``, ``mergeable``, and
        either ``param_count`` and ``flops_per_sample`` or, when the template does not fit the host,
        ``error`` (Go's reason, e.g. "template "conv3x3" supports conv2d, residual_2d hosts, not
        linear").

    Raises:
        InvalidArgumentError: the host itself is malformed (no template fits it); the message is Go's.
    """
    rows: list[dict[str, Any]] = []
    failures: list[tuple[bool, EsperError]] = []
    layout = _layout(host)
    for t in templates():
        row: dict[str, Any] = {"template": t["name"], "description": t["description"], "mergeable": t["mergeable"]}
        try:
            ir = instantiate(t["name"], host)
        except EsperError as exc:
            row["error"] = _strip_context(str(exc))
            failures.append((layout in t["layouts"], exc))
        else:
            row["param_count"] = ir["param_count"]
            row["flops_per_sample"] = ir["flops_per_sample"]
            row["mergeable"] = bool(t["mergeable"] and host.get("kind") in ("linear", "conv1d_pair", "conv2d_pair"))
        rows.append(row)
    if failures and len(failures) == len(rows):
        # Every layout has templates, so a host that no template accepts is malformed: report why,
        # preferring the error of a template that claims the host's layout.
        failures.sort(key=lambda f: not f[0])
        raise failures[0][1]
    return rows


def _strip_context(message: str) -> str:
    """Go's message without the call's prefixes ("blueprint instantiate: blueprint: ...: ")."""
    for prefix in ("blueprint instantiate: ", "blueprint: template does not support host: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


#: The signals a search request may carry (Nissa's layer signal means and the epoch's losses).
SIGNAL_NAMES = ("act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain",
                "val_loss", "train_loss")


def answer(request: dict[str, Any], urza: str | None = None) -> dict[str, Any]:
    """Karn's answer to a request document (see :func:`search` for the fields).

    Args:
        request: ``{"host", "budget", "signals", "history", "prefer", "count", "time_budget_ms",
            "evaluations", "seed"}`` (docs/karn.md).
        urza: the Urza store whose outcome records give the history and fit the predictor: None
            for none, "" for ``$ESPER_HOME/urza``, else its folder.

    Returns:
        ``{"request", "candidates": [{"rank", "template", "params", "blueprint_id", "param_count",
        "flops_per_sample", "predicted_gain", "prior_gain", "origin", "ir"}], "ranked_by",
        "predictor", "evaluated", "valid", "history_seeds", "elapsed_us", "note"}``.

    Raises:
        InvalidArgumentError: a malformed request; the message names the field.
    """
    if urza is not None:
        _lib.refresh_settings()  # ESPER_HOME as os.environ holds it now
    out = c_void_p()
    _lib.check(_lib.lib().esper_karn_search(_encode(request), None if urza is None else urza.encode(), byref(out)))
    return _lib.take_json(out)


def search(host: dict[str, Any], *, max_params: int | None = None, max_flops: int | None = None,
           signals: dict[str, float] | None = None, prefer: list[str] | None = None, count: int = 5,
           time_budget_ms: int = 0, evaluations: int = 0, seed: int = 0, urza: str | None = None
           ) -> dict[str, Any]:
    """Asks Karn for the best blueprints for a host within a budget.

    Args:
        host: the host description, e.g. ``{"kind": "linear", "in": 64, "out": 64}``.
        max_params: the parameter budget of every candidate (None or 0: no limit).
        max_flops: the FLOPs-per-sample budget (None or 0: no limit).
        signals: the layer's signals, names of :data:`SIGNAL_NAMES` (e.g. ``{"grad_norm": 0.3}``).
        prefer: template names in order of preference (the prior's tie-break).
        count: how many candidates at most (1 to 64).
        time_budget_ms: the search's time budget (0: 20 ms; at most 100).
        evaluations: the most blueprints tried (0: 256); a search that stops on it is reproducible.
        seed: drives every random choice.
        urza: the store the history and the predictor come from (see :func:`answer`).

    Returns:
        Karn's answer (see :func:`answer`).

    Raises:
        InvalidArgumentError: a malformed host, an unknown signal, a value out of range.
    """
    request: dict[str, Any] = {"host": host, "count": count, "seed": seed & (2**64 - 1)}
    budget = {k: int(v) for k, v in (("max_params", max_params), ("max_flops", max_flops)) if v}
    if budget:
        request["budget"] = budget
    if signals:
        request["signals"] = {k: float(v) for k, v in signals.items()}
    if prefer:
        request["prefer"] = list(prefer)
    if time_budget_ms:
        request["time_budget_ms"] = int(time_budget_ms)
    if evaluations:
        request["evaluations"] = int(evaluations)
    return answer(request, urza)


def predictor_eval(urza: str = "") -> dict[str, Any]:
    """The predictor's error on a store's outcome records, measured on runs it was not fitted on.

    Args:
        urza: the store's folder ("" for ``$ESPER_HOME/urza``).

    Returns:
        ``{"records", "measured", "runs", "eval": {"records", "runs", "folds",
        "within_20pct_share", "median_relative_error", "mae", "baseline_mae"} or None when too few
        records, "note", "features", "min_records_runs"}``.

    Raises:
        StorageError: the store cannot be read; CorruptError: a record does not decode.
    """
    _lib.refresh_settings()
    out = c_void_p()
    _lib.check(_lib.lib().esper_karn_predictor_eval(urza.encode(), byref(out)))
    return _lib.take_json(out)



def fit_predictor(out_dir: str | os.PathLike[str], urza: str = "") -> dict[str, Any]:
    """Fit Karn's predictor on every measured outcome record of a store and write it as a predictor
    folder (manifest.json + model.safetensors) in ``out_dir``, for :meth:`esper.urza.Urza.publish_predictor`
    or ``MorphConfig(karn_predictor=out_dir)``.

    Args:
        out_dir: the folder to write (created if needed).
        urza: the store's folder ("" for ``$ESPER_HOME/urza``).

    Returns:
        ``{"dir", "records", "runs"}``: what it was fitted on.

    Raises:
        InvalidArgumentError: too few measured records (20 from 3 runs), saying how many there are.
        StorageError: the store or the folder cannot be read or written.
    """
    _lib.refresh_settings()
    out = c_void_p()
    _lib.check(_lib.lib().esper_karn_predictor_fit(urza.encode(), os.fspath(out_dir).encode(), byref(out)))
    return _lib.take_json(out)
