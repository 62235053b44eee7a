"""Smoke test of `esper bench`: a quick run of a small subset writes every row with finite figures.

No timing is asserted here (figures are for `make bench`); only that the bench runs, and that what
it writes is complete and well-formed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from esper.bench import native, run, steps
from esper.bench.rows import Row, format_markdown, format_table


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_subset_writes_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny subset: one model per step section, the Python-side ABI rows, no Go toolchain needed.
    monkeypatch.setattr(steps, "MODELS", steps.MODELS[:1])
    monkeypatch.setattr(native, "go_benchmarks", lambda *a, **k: native.GoBench({}, "skipped in the smoke test"))
    threads = torch.get_num_threads()
    rows, report = run.run(quick=True, out_dir=str(tmp_path), sections=["abi", "dormant", "active"],
                           devices=["cpu"], echo=lambda line: None)
    assert torch.get_num_threads() == threads  # restored

    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc == json.loads(json.dumps(report))
    assert list(tmp_path.glob("*-*.json"))  # the dated copy
    assert "| section |" in (tmp_path / "latest.md").read_text()
    assert doc["summary"]["errors"] == []
    assert {m for m in ("cpu", "torch", "cores", "go_library", "cuda")} <= set(doc["machine"])

    names = [r["name"] for r in doc["rows"]]
    assert "train step, dormant: TinyMLP" in names
    assert "A/A control, plain vs plain: TinyMLP" in names
    assert "train step, 1 seed BLENDING: TinyMLP" in names
    assert "train step, 1 seed HOLDING: TinyMLP" in names
    assert "train step, dormant: PairCNN (conv pair)" in names
    assert "train step, widen seed HOLDING: PairCNN (conv pair)" in names
    assert "no-op call (Python -> Go)" in names
    assert "session step, 8 layers + signals (Session.step)" in names

    for r in doc["rows"]:
        if r["source"] == "Go benchmark":  # skipped here: the row says why
            assert r["value"] is None and "not measured" in r["note"]
            continue
        assert _finite(r["value"]) and r["value"] > 0, r
        assert r["rounds"] >= 5, r
        lo, hi = r["spread"]
        assert _finite(lo) and _finite(hi) and lo <= hi, r
        if r["baseline"] is not None:
            assert _finite(r["baseline"]) and _finite(r["ratio"]), r
        if r["name"].startswith("A/A control"):  # informative: no target, no verdict
            assert not r["target"] and r["ok"] is None, r
        elif r["section"] in ("dormant", "active"):
            assert r["target"] and r["ok"] in (True, False), r
            assert lo <= r["ratio"] <= hi, r


def test_recording_rows_time_a_run_that_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Urza on/off row times a demo run that germinates (so the "on" side has outcomes to write),
    restores ESPER_HOME and the thread count, and gives finite paired figures."""
    from esper.bench.recording import recording_rows

    monkeypatch.setenv("ESPER_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    rows = recording_rows(rounds=1, quick=True)
    assert torch.get_num_threads() == threads
    assert os.environ["ESPER_HOME"] == str(tmp_path)
    assert not any(tmp_path.iterdir())  # the runs recorded into their own temporary home
    assert [r.name for r in rows] == ["demo run, Urza recording on vs off (wall time)",
                                      "demo run, Urza recording on vs off (CPU time, every thread)"]
    assert rows[0].extra["germinations"] > 0
    for r in rows:
        assert _finite(r.value) and _finite(r.baseline) and _finite(r.ratio) and r.rounds == 1, r
    assert rows[0].ok in (True, False)


def test_a_cuda_table_of_another_commit_says_so() -> None:
    """The README's CUDA table names the older commit and ABI it measured when the CPU table is newer;
    the same commit on both gives no warning (the negative control)."""
    def doc(commit: str, abi: int) -> dict[str, object]:
        return {"machine": {"go_library": {"commit": commit, "abi_version": abi}}}

    note = run.stale_note(doc("3cfbc4a", 1), doc("abc1234", 3))
    assert "`3cfbc4a` (ABI 1)" in note and "`abc1234` (ABI 3)" in note and "Not re-measured" in note
    assert run.stale_note(doc("abc1234", 3), doc("abc1234", 3)) == ""
    assert run.stale_note(doc("abc1234", 3), None) == ""


def test_go_bench_output_is_parsed() -> None:
    text = (
        "goos: linux\n"
        "BenchmarkGetHit-2   \t 3801026\t        62.13 ns/op\t       0 B/op\t       0 allocs/op\n"
        "BenchmarkGet1MB-2   \t     180\t   1495518 ns/op\t 701.13 MB/s\n"
        "BenchmarkGetHit-2   \t 3801026\t        70.00 ns/op\n"
        "BenchmarkEndEpochGerminateABI-2 \t 1500\t 98778 ns/op\t 68427 cpu-ns/op\t 16835 B/op\t 121 allocs/op\n"
        "PASS\n"
    )
    assert native.parse_go_bench(text) == {"GetHit": [62.13, 70.0], "GetHit:B/op": [0.0], "GetHit:allocs/op": [0.0],
                                           "Get1MB": [1495518.0], "Get1MB:MB/s": [701.13],
                                           "EndEpochGerminateABI": [98778.0],
                                           "EndEpochGerminateABI:cpu-ns/op": [68427.0],
                                           "EndEpochGerminateABI:B/op": [16835.0],
                                           "EndEpochGerminateABI:allocs/op": [121.0]}


def test_table_formats_missing_figures() -> None:
    rows = [Row("cache", "cache hit (in Go)", "cpu", "us", None, target="<= 1 us", source="Go benchmark",
                note="not measured: no Go toolchain")]
    assert "n/a" in format_table(rows)
    assert "not measured" in format_markdown(rows)


def test_a_row_not_measured_writes_json() -> None:
    """A row whose figures are missing (an ONNX row without libonnxruntime) has a NaN spread: its
    dict must still encode as strict JSON (the report writer refused the whole run before)."""
    row = Row("decision", "value model forward (esper_nn_forward)", "cpu", "us", None, spread=(math.nan, math.nan),
              spread_of="value", note="not measured: no libonnxruntime")
    d = row.to_dict()
    assert d["spread"] is None
    json.dumps(d, allow_nan=False)
    measured = dataclasses.replace(row, value=2.0, spread=(1.0, 3.0)).to_dict()
    assert measured["spread"] == [1.0, 3.0]  # the control: a measured spread is kept


def test_readme_section_is_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Esper\n\n## Measured\n\n{run.BEGIN}\nold\n{run.END}\n\nmore\n")
    assert run.update_readme(readme, "new table")
    assert readme.read_text() == f"# Esper\n\n## Measured\n\n{run.BEGIN}\nnew table\n{run.END}\n\nmore\n"
    assert not run.update_readme(tmp_path / "absent.md", "x")


@pytest.mark.slow
def test_compile_rows_time_compiled_pairs() -> None:
    # The compile section (inductor): a compiled wrapped model against the compiled plain model and
    # the compiled hand-written one. Only that the rows are measured and well-formed, as above.
    from torch._dynamo.utils import counters

    counters.clear()
    settings = steps.StepSettings(rounds=5, block_s=0.002, warmup=2, max_inner=20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = steps.compile_rows(torch.device("cpu"), settings, labels=("TinyMLP",), states=("HOLDING",))
    finally:
        torch.set_num_threads(threads)
    assert [r.name for r in rows] == ["train step, dormant, torch.compile: TinyMLP",
                                      "train step, 1 seed HOLDING, torch.compile: TinyMLP"]
    for r in rows:
        assert r.section == "compile" and r.target and r.ok in (True, False), r
        assert _finite(r.value) and _finite(r.baseline) and _finite(r.ratio) and r.rounds == 5, r
    assert counters["frames"]["ok"] == counters["frames"]["total"]  # every frame compiled, none fell back


def test_only_times_the_rows_named() -> None:
    # `--only`: rows whose name holds none of the substrings are not timed (nor returned).
    settings = steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10, only=("Deep(1)",))
    assert settings.wants("dormant, 1 wrapped layers: Deep(1)") and not settings.wants("dormant: TinyMLP")
    assert steps.StepSettings().wants("anything")  # no filter: every row
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = steps.scaling_rows(torch.device("cpu"), settings, depths=(1, 10), slots=())
    finally:
        torch.set_num_threads(threads)
    assert [r.name for r in rows] == ["dormant, 1 wrapped layers: Deep(1)"]
    assert _finite(rows[0].ratio)


def test_only_leaves_the_conv_pair_rows_out() -> None:
    # A conv-pair row that `--only` leaves out is absent (it was None, and the report crashed on it).
    from esper.bench import widen

    settings = steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10, only=("Deep(1)",))
    assert widen.dormant_rows(torch.device("cpu"), settings) == []
    assert widen.active_rows(torch.device("cpu"), settings) == []


@pytest.mark.slow
def test_run_log_and_nats_footprint_rows() -> None:
    """The run log on/off rows time a session attached to its bus against one detached (the "on"
    side's log holds the epochs' events), and the footprint rows run their children against a real
    local nats-server (the sink's events acknowledged); --only keeps the rows named."""
    from esper.bench.runlog import footprint_rows, runlog_rows

    settings = steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = runlog_rows(torch.device("cpu"), settings)
    finally:
        torch.set_num_threads(threads)
    assert [r.name for r in rows] == ["train step, run log on vs off (dormant, no event per step): TinyMLP",
                                      "epoch of 20 steps + end_epoch, run log on vs off: TinyMLP",
                                      "A/A control, epoch, run log off on both sides: TinyMLP"]
    for r in rows:
        assert _finite(r.value) and _finite(r.baseline) and _finite(r.ratio) and r.rounds == 5, r
    # The "on" side wrote every epoch's events (epoch + health each), the "off" side none.
    assert rows[1].extra["run_log_lines"] >= 2 * 5 and rows[1].extra["run_log_syncs"] >= 1, rows[1].extra
    assert rows[0].ok in (True, False) and rows[2].target == ""

    only = dataclasses.replace(settings, only=("libesper.so size", "NATS sink attached", "without NATS vs with"))
    assert runlog_rows(torch.device("cpu"), only) == []
    foot = footprint_rows(1, only)
    assert [r.name for r in foot] == [
        "libesper.so size (NATS client linked in, no server)",
        "libesper.so size without the NATS client (-tags esper_nonats) vs with",
        "process RSS after a short run, NATS sink attached vs not: 2-layer MLP",
        "process RSS after a short run, library without NATS vs with (no sink): 2-layer MLP"]
    size, small, rss, small_rss = foot
    assert 1 < size.value < 100, size
    # The build without the NATS client (make test-py builds it) is smaller by the client's code.
    assert small.value is not None and small.value < size.value and small.baseline == size.value, small
    assert rss.value > 0 and rss.baseline and rss.baseline > 0 and min(rss.extra["events_sent"]) > 10, rss
    assert small_rss.value > 0 and small_rss.baseline == rss.baseline, small_rss


@pytest.mark.slow
def test_infrastructure_all_on_against_all_off_rows() -> None:
    """The all-on rows run the bus, run log, NATS sink (to a real local nats-server: its events
    acknowledged) and metrics endpoint with scrapes on one side and none of it on the other."""
    from esper.bench.runlog import INFRA, infra_rows

    settings = steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = infra_rows(torch.device("cpu"), settings, interval=0.005)
    finally:
        torch.set_num_threads(threads)
    assert [r.name for r in rows] == list(INFRA.values())
    for r in rows:
        assert _finite(r.value) and _finite(r.baseline) and _finite(r.ratio) and r.rounds == 5, r
    assert rows[3].unit == "ms" and len(rows[3].extra["off_ms"]) == 5, rows[3]
    on = rows[1].extra
    # Every event the run log wrote reached NATS; the scrapes ran on the timed side.
    assert on["run_log_lines"] >= 2 * 5 and on["nats_sent"] == on["run_log_lines"] and on["nats_dropped"] == 0, on
    assert on["scrape_every"] >= 1 and rows[0].target == "< 2%" and rows[2].target == ""
    # Each round holds exactly one scrape: rounds of as many steps (epochs of 20) as between two.
    assert rows[0].extra["calls_per_round"] == rows[0].extra["scrape_every"], rows[0].extra
    assert 20 * rows[1].extra["calls_per_round"] == on["scrape_every"], on


def test_session_scale_rows_measure_each_size() -> None:
    from esper.bench import scale

    rows = scale.session_scale_rows(2, quick=True, layers=(3,), slots=(1, 2))
    names = [r.name for r in rows]
    assert names == [f"{kind}, 3 layers x {k} slots" for k in (1, 2) for kind in (
        "Session.step with signals", "Session.step without signals", "Session.end_epoch, waiting",
        "Session.end_epoch -> germinate")]
    assert all(_finite(r.value) and r.value > 0 and r.rounds == 2 for r in rows)
    assert scale.session_scale_rows(2, layers=(3,), slots=(1,), wants=lambda name: "1000 layers" in name) == []


def test_go_memory_rows_read_the_benchmark_metric() -> None:
    from esper.bench import scale

    text = "BenchmarkSessionMemory-2 \t 1\t 2595848138 ns/op\t 11345 heapB/layer-L10-S1\t 9278 heapB/layer-L1000-S1\n"
    rows = scale.memory_rows(native.GoBench(native.parse_go_bench(text)), layers=(10, 1000), slots=(1,))
    assert [(r.name, r.value, r.unit) for r in rows] == [
        ("Go memory per wrapped layer, 10 layers x 1 slots (in Go)", 11345.0, "bytes"),
        ("Go memory per wrapped layer, 1000 layers x 1 slots (in Go)", 9278.0, "bytes")]
    missing = scale.memory_rows(native.GoBench({}, "no Go toolchain"), layers=(10,), slots=(4,))
    assert missing[0].value is None and "no Go toolchain" in missing[0].note


def test_metrics_rows_give_a_scrapes_cost_beside_the_step_rows() -> None:
    """The metrics section times a scrape from Python (its expected share of a step beside the
    timed rows) and the scraped step against the step with metrics off, with its A/A control."""
    settings = steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = steps.metrics_rows(torch.device("cpu"), settings, ("TinyMLP",), interval=0.005)
    finally:
        torch.set_num_threads(threads)
    assert [r.name for r in rows] == ["one scrape from Python, morph.metrics_text(): TinyMLP",
                                      "train step, metrics served and scraped every 0.005 s: TinyMLP",
                                      "A/A control, no scrape on either side: TinyMLP"]
    scrape = rows[0]
    assert scrape.unit == "us" and 1 < scrape.value < 1e5 and scrape.rounds == 5, scrape
    assert scrape.extra["expected_ratio"] > 1, scrape.extra
    for r in rows[1:]:
        assert _finite(r.value) and _finite(r.baseline) and _finite(r.ratio) and r.rounds == 5, r
    # Each round holds exactly one scrape: rounds of as many steps as between two scrapes.
    every = rows[1].extra["calls_per_round"]
    assert f"one scrape (Go: read, gather, encode) every {every} steps" in rows[1].note, rows[1].note


def test_infrastructure_rows_say_why_without_a_nats_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NATS server that starts: the all-on rows are there, unmeasured, saying why."""
    from esper.bench.runlog import INFRA, infra_rows

    monkeypatch.setenv("ESPER_NATS_SERVER", "/bin/false")  # a binary that exits at once
    rows = infra_rows(torch.device("cpu"), steps.StepSettings(rounds=5, block_s=0.001, warmup=1, max_inner=10))
    assert [r.name for r in rows] == list(INFRA.values())
    for r in rows:
        assert r.value is None and r.note.startswith("not measured: no local NATS server"), r
        assert "did not start" in r.note, r.note


def test_footprint_rows_say_why_without_the_nonats_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from esper.bench import runlog

    monkeypatch.setattr(runlog, "nonats_library", lambda: tmp_path / "libesper.so")
    only = steps.StepSettings(only=("without the NATS client",))
    rows = runlog.footprint_rows(1, only)
    assert [r.name for r in rows] == [
        "libesper.so size without the NATS client (-tags esper_nonats) vs with",
        "RSS added by loading libesper.so without the NATS client (after import torch)"]
    for r in rows:
        assert r.value is None and "is absent; `make nonats-lib` builds it" in r.note, r


@pytest.mark.parametrize("side", ["off", "log"])
def test_epoch_cost_times_each_end_epoch(side: str) -> None:
    """The profiler's helper (esper.bench.epochcost) times every end_epoch after its warm-up."""
    from esper.bench.epochcost import epoch_cost

    got = epoch_cost(side, epochs=3)
    assert len(got) == 3 and all(math.isfinite(t) and t > 0 for t in got), got
    with pytest.raises(ValueError, match="side"):
        epoch_cost("on")


def test_epoch_cost_counts_one_nats_burst_per_epoch(tmp_path: Path) -> None:
    """With the NATS sink (a real local nats-server), epochcost's counts: every epoch's epoch and
    health events go to NATS as one burst (the session publishes them together: with one publish
    each, the sink could wake for the first alone and send two), and its Go threads' system calls
    are read back from ``perf trace -s`` output."""
    from esper.bench.epochcost import epoch_cost, go_syscalls

    counts: dict[str, float] = {}
    got = epoch_cost("nats", epochs=12, counts=counts)
    assert len(got) == 12, got
    assert counts["nats_sent"] == 2 and counts["nats_bursts"] == 1, counts
    assert counts["go_mallocs"] > 0 and counts["voluntary_switches"] >= 0, counts
    trace = tmp_path / "trace.txt"
    trace.write_text(
        "\n Summary of events:\n\n python (100), 50 events, 1.0%\n\n   syscall calls errors total\n"
        "   --------------- --------\n   read 40 0 1.0\n\n python (101), 30 events, 1.0%\n\n"
        "   futex 15 0 2.0\n   read 5 0 0.1\n\n esper-nats (102), 9 events, 0.1%\n\n   futex 99 0 1.0\n\n"
        " python (103), 10 events, 0.1%\n\n   futex 5 0 1.0\n")
    assert go_syscalls(str(trace), 5) == {"futex": 2.0, "read": 0.5}
