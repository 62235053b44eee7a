"""Shared pytest configuration: the `cuda` marker runs only where a GPU is present."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
