"""`esper soak`: a small model trained under injected faults, with RSS and the Go heap sampled over
time (the real library, real PyTorch). Memory must be flat after warm-up."""

from __future__ import annotations

import gc
import json

import pytest

from esper import _lib, cli
from esper.session import Session
from esper.soak import run_soak


def test_runtime_stats_count_live_handles() -> None:
    before = _lib.runtime_stats()
    assert before["heap_alloc"] > 0 and before["heap_sys"] >= before["heap_inuse"] > 0
    session = Session({"layers": [{"name": "fc", "kind": "linear", "in": 4, "out": 4}]})
    try:
        assert _lib.runtime_stats()["handles"] == before["handles"] + 1
    finally:
        session.close()
    assert _lib.runtime_stats()["handles"] == before["handles"]


def test_soak_cli_reports_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["soak", "--minutes", "0.05", "--samples", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["samples"]) == 3 and report["steps"] > 0
    assert set(report["growth_after_warmup"]) == {"rss", "go_heap_alloc", "go_heap_sys"}
    assert all(s["rss"] > 0 and s["go_heap_alloc"] > 0 for s in report["samples"])


def test_soak_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        cli.main(["soak", "--minutes", "0"])
    with pytest.raises(ValueError, match="samples must be >= 3"):
        run_soak(0.01, samples=2)


@pytest.mark.slow
def test_one_minute_soak_is_flat_after_warmup() -> None:
    gc.collect()
    before = _lib.runtime_stats()["handles"]  # what earlier tests of this process still hold
    report = run_soak(1.0, samples=12)
    # Every fault was injected and handled, many times over.
    assert report.germinations >= 20 and report.breaker_prunes >= 10 and report.manual_prunes >= 5
    assert report.nan_losses >= 5 and report.rollbacks >= report.nan_losses and report.checkpoints >= 3
    # One Morphogenesis alive at a time: every closed one released its Go handles. A live one holds its
    # session, its Oona bus (the run log) and its Urza store; the process holds the kernel cache. The
    # count never grows.
    # A leak would add one per resume (several per sample); a sample taken mid-resume sees one less.
    handles = [s.go_handles for s in report.samples]
    assert max(handles) <= 4 + before, (before, handles)
    growth = report.growth_after_warmup()
    assert growth["go_heap_alloc"] < 2 * 2**20, growth
    assert growth["go_heap_sys"] < 4 * 2**20, growth
    assert growth["rss"] < 8 * 2**20, growth
