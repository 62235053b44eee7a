"""MorphConfig's defaults are the Go session's (one copy of each): a session made from
``MorphConfig().session_config`` runs on exactly the settings Go fills in for a config that
leaves them out."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import esper
from esper.session import Session
from esper.tolaria import _GO_SETTINGS

LAYERS = [{"name": "fc", "kind": "linear", "in": 8, "out": 4}]


def _applied(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a Go session applies (its snapshot's), for config."""
    session = Session(config)
    try:
        return json.loads(session.snapshot())["config"]
    finally:
        session.close()


def _at(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if key not in doc:
            return None
        doc = doc[key]
    return doc


def test_every_go_setting_is_a_field() -> None:
    names = {f.name for f in fields(esper.MorphConfig)}
    assert set(_GO_SETTINGS) <= names


def test_defaults_are_what_go_applies_to_a_bare_config() -> None:
    applied = _applied({"layers": LAYERS})
    config = esper.MorphConfig()
    for name, path in _GO_SETTINGS.items():
        want = _at(applied, path)
        got = getattr(config, name)
        assert (want if want is not None else type(got)()) == got, (name, path, got, want)


def test_default_morphconfig_sends_go_defaults_unchanged() -> None:
    bare = _applied({"layers": LAYERS})
    sent = _applied(esper.MorphConfig().session_config(LAYERS, 1))
    assert sent == bare
    # Negative control: a changed setting reaches Go on its path, so the comparison can fail.
    changed = _applied(esper.MorphConfig(patience=7, cooldown_epochs=0).session_config(LAYERS, 1))
    assert changed != bare
    assert changed["controller"]["patience"] == 7 and changed["governor"]["cooldown_epochs"] == 0


def test_defaults_keep_their_types() -> None:
    config = esper.MorphConfig()
    assert isinstance(config.loss_factor, float) and isinstance(config.threshold, float)
    assert isinstance(config.patience, int) and isinstance(config.template, str)


def test_go_alone_refuses_a_predictor_without_the_search(tmp_path: Any) -> None:
    """MorphConfig sends karn_predictor as given; Go's config check refuses it without karn_search
    (Python keeps no copy of that rule, so it cannot drop the setting silently)."""
    import pytest

    from esper.errors import InvalidArgumentError

    folder = str(tmp_path / "pred")
    with pytest.raises(InvalidArgumentError, match="read by Karn's search only"):
        Session(esper.MorphConfig(karn_predictor=folder).session_config(LAYERS, 1))
    # Control: with the search on, the same setting passes that rule (and fails on the missing folder).
    with pytest.raises(InvalidArgumentError) as err:
        Session(esper.MorphConfig(karn_predictor=folder, karn_search=True).session_config(LAYERS, 1))
    assert "read by Karn's search only" not in str(err.value)
