"""Shared pytest configuration: the `cuda` marker runs only where a GPU is present, and every test
gets a temporary ESPER_HOME and no ESPER_URZA_URL (training runs write their outcome records to
$ESPER_HOME/urza: tests never touch the user's ~/.esper or shared store)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def esper_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ESPER_HOME for each test (Go is sent it when a store is opened)."""
    home = tmp_path_factory.mktemp("esper_home")
    monkeypatch.setenv("ESPER_HOME", str(home))
    monkeypatch.delenv("ESPER_URZA_URL", raising=False)  # a user's shared store never receives test runs
    return home
