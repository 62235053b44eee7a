"""`esper report` and `esper monitor`: built only on the run log that the real ``esper.wrap`` +
``Morphogenesis`` loop writes ($ESPER_HOME/runs/<run>/events.jsonl), checked against what the
loop itself saw (``morph.log``, the seeds' states in the model)."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import cli, oona

PNG = b"\x89PNG\r\n\x1a\n"
IN, HIDDEN, OUT = 4, 8, 3
SRC = str(Path(__file__).resolve().parent.parent / "python")


def _loop(root: Path, germinate: bool) -> dict[str, Any]:
    """The README loop on a tiny model. With ``germinate``: Tamiyo germinates and fossilizes (a
    constant validation loss is a plateau, and contribution 0 reaches min_gain 0) and a second seed
    is germinated and pruned by hand. Without: the manual policy and no call, so nothing grows."""
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    model = esper.wrap(host, target_modules=["0", "2"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    policy = dict(policy="heuristic", patience=1, min_gain=0.0, cooldown_epochs=0, max_concurrent=2,
                  template_params={"width": 2}) if germinate else dict(policy="manual")
    morph = esper.Morphogenesis(model, opt, train_steps=2, blend_steps=2, signal_every=1, runs=str(root),
                                evaluate=lambda m: {"loss": 1.0, "metric": 0.5}, **policy)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, IN, generator=g), torch.randint(0, OUT, (32,), generator=g)
    epochs = 6
    for epoch in range(epochs):
        for _ in range(4):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        if germinate and epoch == 1:
            morph.germinate(1, 1, "residual_mlp", width=2)
        if germinate and epoch == 3:
            morph.prune(1, 1, reason="by hand")
        morph.end_epoch()
    states = {(i, s): layer.state(s).name for i, layer in enumerate(morph.layers) for s in range(2)}
    log = list(morph.log)
    run = morph.run_id
    morph.close()
    return {"root": root, "run": run, "log": log, "states": states, "epochs": epochs}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run with a germination, a fossilization and a prune (shared by the tests that read it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESPER_HOME", str(tmp_path_factory.mktemp("report_home")))
        yield _loop(tmp_path_factory.mktemp("runs"), germinate=True)


def _transitions(log: list[dict[str, Any]], to: str) -> int:
    return sum(1 for e in log if e["kind"] == "event" and e["to"] == to)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking its signature."""
    raw = path.read_bytes()
    assert raw[:8] == PNG, f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_report_writes_plots_and_a_summary_that_matches_the_run(grown: dict[str, Any], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert cli.main(["report", grown["run"], "--root", str(grown["root"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("losses", "params", "contributions"):
        path = out / f"{name}.png"
        assert f"{name}: {path}" in printed
        width, height = _png_size(path)
        assert width >= 600 and height >= 300, (name, width, height)
        assert path.stat().st_size > 10_000, (name, path.stat().st_size)
    md = (out / "report.md").read_text()
    assert md.startswith(f"# Run {grown['run']}\n")
    log = grown["log"]
    want = {"germinations": _transitions(log, "GERMINATED"), "fossilizations": _transitions(log, "FOSSILIZED"),
            "prunes": _transitions(log, "PRUNED"),
            "rollbacks": sum(1 for e in log if e["kind"] == "decision" and e.get("op") == "rollback"),
            "alarms": sum(1 for e in log if e["kind"] == "alarm")}
    assert want["germinations"] == 2 and want["fossilizations"] == 1 and want["prunes"] == 1, want
    got = {k: int(v) for k, v in re.findall(r"(germinations|fossilizations|prunes|rollbacks|alarms): (\d+)", md)}
    assert got == want, md
    assert f"- epochs: {grown['epochs']};" in md
    assert "plotted against optimizer steps and against training FLOPs" in md  # Go's count, in the epoch events
    # The seeds' table: one row per germination, with its fate, contribution and reason.
    rows = [r for r in md.splitlines() if re.match(r"\| 2 \| [01] \|", r)]
    assert len(rows) == 2, md
    pruned = next(r for r in rows if "PRUNED" in r)
    assert "by hand" in pruned and "manual" in pruned
    fossil = next(r for r in rows if "FOSSILIZED" in r)
    assert "residual_mlp {activation=relu width=2}" in fossil and "| 42 |" in fossil
    assert "| 0 |" in fossil  # its measured contribution (a constant validation loss: 0)
    # The last decisions, with the reason the policy gave for the fossilization.
    reason = next(e["reason"] for e in log if e["kind"] == "decision" and e.get("op") == "fossilize")
    assert f"| fossilize | 2/0 | {reason} |" in md


def _frames(text: str) -> list[str]:
    return text.split("esper monitor  run ")[1:]


def test_monitor_replay_ends_on_the_final_frame_with_the_seeds_final_states(
        grown: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["monitor", grown["run"], "--root", str(grown["root"]), "--replay", "--speed", "0"]) == 0
    frames = _frames(capsys.readouterr().out)
    assert len(frames) == grown["epochs"] + 1, len(frames)  # one per epoch, then the end
    last = frames[-1]
    assert "[ended]" in last and "[ended]" not in frames[0]
    for (layer, slot), state in grown["states"].items():
        block = last.split(f"layer {layer} (")[1]
        assert re.search(rf"^  slot {slot}: {state}\b", block, re.M), (layer, slot, state, last)
    assert {grown["states"][(1, 0)], grown["states"][(1, 1)]} == {"FOSSILIZED", "EMBARGOED"}
    assert "germinated 2  fossilized 1  pruned 1" in last
    assert "fossilize 2/0: contribution 0" in last


def test_unknown_run_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["report", "no-such-run"], ["monitor", "no-such-run", "--once"]):
        assert cli.main([*cmd, "--root", str(tmp_path)]) == 2, cmd
        err = capsys.readouterr().err
        assert "no run 'no-such-run'" in err and "esper runs" in err, err


def test_report_of_a_run_without_germinations_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = _loop(tmp_path / "runs", germinate=False)
    assert not any(e["kind"] == "event" for e in bare["log"])
    out = tmp_path / "rep"
    assert cli.main(["report", bare["run"], "--root", str(bare["root"]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "No seed was germinated in this run." in md
    assert "germinations: 0, fossilizations: 0, prunes: 0, rollbacks: 0, alarms: 0" in md
    assert _png_size(out / "contributions.png")[0] > 0
    assert cli.main(["monitor", bare["run"], "--root", str(bare["root"]), "--once"]) == 0
    assert "germinated 0" in capsys.readouterr().out


WRITER = textwrap.dedent("""
    import os, sys, time, torch, esper
    from torch import nn
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # A small run log bound: the log rotates several times while the monitor follows it.
    morph = esper.Morphogenesis(model, opt, policy="manual", train_steps=2, blend_steps=2, signal_every=1,
                                run_log_max_bytes=4096, run_log_keep=100)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step(); morph.step(loss)  # the session starts: its log opens
    print(morph.run_id, flush=True)
    go = sys.argv[1]
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
    for epoch in range(10):
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); morph.step(loss)
        if epoch == 1:
            morph.germinate(0, 0, "residual_mlp", width=2)
        morph.end_epoch(val_loss=float(loss))
        time.sleep(0.15)
    print(morph.layers[0].state(0).name, flush=True)
    morph.close()
""")


def _monitor_proc(run: str, *extra: str) -> subprocess.Popen[str]:
    """`esper monitor RUN` in its own process, killed after 120 s whatever happens (a monitor that
    never sees its run end would otherwise hang the test in a read)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # SIGINT at its default, as a terminal starts commands: a shell without job control (CI's background
    # run) starts them with SIGINT ignored, and Python keeps an inherited SIG_IGN.
    proc = subprocess.Popen([sys.executable, "-m", "esper", "monitor", run, "--interval", "0.1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    guard = threading.Timer(120, proc.kill)
    guard.daemon = True
    guard.start()
    return proc


def _first_frame(proc: subprocess.Popen[str]) -> None:
    """Wait until the monitor printed its first frame (it reads the log by then)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"the monitor exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
        if line.startswith("alarms"):
            return


@pytest.mark.slow
def test_monitor_follows_a_run_log_that_another_process_is_writing(tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = dict(os.environ, ESPER_GO_MAXPROCS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    mon = None
    try:
        assert writer.stdout is not None
        run = writer.stdout.readline().strip()
        assert run, writer.stderr.read() if writer.stderr else "no run id"
        mon = _monitor_proc(run)
        _first_frame(mon)  # the run has started, not trained: the monitor is following it
        go.touch()
        out, err = mon.communicate(timeout=90)
        assert mon.returncode == 0, err
        final_state = writer.stdout.readline().strip()
        assert writer.wait(timeout=30) == 0, writer.stderr.read() if writer.stderr else ""
    finally:
        for p in (writer, mon):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    frames = _frames(out)
    assert len(frames) >= 3, out  # redrawn as the log grew
    assert "[ended]" in frames[-1] and "epoch 10" in frames[-1]
    assert re.search(rf"^  slot 0: {final_state}\b", frames[-1], re.M), (final_state, frames[-1])
    # The log rotated while followed, and the monitor still saw every event of it.
    files = oona.log_files(run)
    assert len(files) >= 3, files
    assert f"events {len(oona.read_events(run))}" in frames[-1]


@pytest.mark.slow
def test_monitor_of_a_run_without_an_end_stops_on_ctrl_c(grown: dict[str, Any], tmp_path: Path) -> None:
    # A copy of the run's log without its end event: a run still going (or killed).
    run = "unended"
    (tmp_path / run).mkdir()
    lines = (grown["root"] / grown["run"] / "events.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / run / "events.jsonl").write_text("".join(lines[:-1]))
    mon = _monitor_proc(run, "--root", str(tmp_path))
    try:
        _first_frame(mon)
        time.sleep(0.5)
        assert mon.poll() is None, "the monitor stopped before its run ended"
        mon.send_signal(signal.SIGINT)
        out, err = mon.communicate(timeout=30)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    assert mon.returncode == 130, (mon.returncode, err)
    assert "interrupted" in err


def test_follower_reads_whole_lines_only_as_a_log_grows_in_pieces(grown: dict[str, Any], tmp_path: Path) -> None:
    from esper.report import LogFollower

    raw = (grown["root"] / grown["run"] / "events.jsonl").read_bytes()
    want = oona.read_events(grown["run"], root=grown["root"], strict=True)
    (tmp_path / "grow").mkdir()
    path = tmp_path / "grow" / "events.jsonl"
    path.write_bytes(b"")
    follower = LogFollower("grow", root=tmp_path)
    got: list[dict[str, Any]] = []
    # Cut the log at odd places (inside lines, inside UTF-8 and JSON tokens), polling after each piece.
    cuts = sorted({0, len(raw), *range(7, len(raw), 997), *range(3, len(raw), 1531)})
    with open(path, "ab") as f:
        for a, b in zip(cuts, cuts[1:]):
            f.write(raw[a:b])
            f.flush()
            got.extend(follower.poll())
            assert all(e["seq"] == i + 1 for i, e in enumerate(got))
        f.write(b'{"v": 1, "id": "cut-by-a-crash", "kind": "epo')  # a last line a crash cut
        f.flush()
    got.extend(follower.poll())
    follower.close()
    assert got == want


def test_report_counts_a_rollback_and_its_alarm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", train_steps=2, blend_steps=2, signal_every=1,
                                runs=str(tmp_path / "runs"))
    x, y = torch.randn(16, IN), torch.randint(0, OUT, (16,))
    for epoch in range(4):
        for i in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(float("nan") if epoch == 2 and i == 1 else loss)  # the governor rolls the seed back
        if epoch == 0:
            morph.germinate(0, 0, "residual_mlp", width=2)
        morph.end_epoch(val_loss=float(loss.detach()))
    run, log = morph.run_id, list(morph.log)
    morph.close()
    rollbacks = sum(1 for e in log if e["kind"] == "decision" and e.get("op") == "rollback")
    alarms = sum(1 for e in log if e["kind"] == "alarm" and e["alarm"] == "rollback")
    assert rollbacks == alarms == 1 and _transitions(log, "ROLLED_BACK") == 1, log
    root = tmp_path / "runs"
    assert cli.main(["report", run, "--root", str(root), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"germinations: 1, fossilizations: 0, prunes: 0, rollbacks: {rollbacks}, alarms: {alarms} " in md, md
    assert "ROLLED_BACK (step" in md and "non-finite" in md
    assert "counters at the last epoch or end event differ" not in md  # the events agree with Go's counters
    # Negative control: a log that lost an event no longer agrees with Go's counters, and says so.
    (root / "cut").mkdir()
    lines = (root / run / "events.jsonl").read_text().splitlines(keepends=True)
    (root / "cut" / "events.jsonl").write_text("".join(ln for ln in lines if '"to":"GERMINATED"' not in ln
                                                       and '"to": "GERMINATED"' not in ln))
    assert len((root / "cut" / "events.jsonl").read_text().splitlines()) == len(lines) - 1
    assert cli.main(["report", "cut", "--root", str(root), "--out", str(tmp_path / "cut")]) == 0
    cut = (tmp_path / "cut" / "report.md").read_text()
    assert "germinations: 0," in cut and "differ: germinations: 1," in cut, cut


def test_readme_loop_reports_and_replays_while_open_and_after_close(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from test_readme import MyModel

    readme = Path(__file__).resolve().parent.parent / "README.md"
    code = re.search(r"## Use it in your training loop\n\n```python\n(.*?)```", readme.read_text(), re.S)
    assert code, "README lost its usage example"
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def my_validation(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(xs)
        return float(loss_fn(logits, ys)), float((logits.argmax(1) == ys).float().mean())

    scope: dict[str, Any] = {"MyModel": MyModel, "my_validation": my_validation, "loss_fn": loss_fn, "epochs": 4,
                             "loader": [(xs[i:i + 16], ys[i:i + 16]) for i in range(0, 64, 16)],
                             "print": lambda *a: printed.append(a)}
    printed: list[tuple[Any, ...]] = []  # the loop prints each decision's op and reason
    exec(compile(code.group(1), str(readme), "exec"), scope)  # noqa: S102 - our own README
    morph = scope["morph"]
    run, log = morph.run_id, list(morph.log)
    # The loop never closes morph: the report is of a run without its end event yet.
    assert cli.main(["report", run, "--out", str(tmp_path / "open")]) == 0
    md = (tmp_path / "open" / "report.md").read_text()
    assert "- end: no end event" in md and "- epochs: 4;" in md
    assert f"germinations: {_transitions(log, 'GERMINATED')}, fossilizations: {_transitions(log, 'FOSSILIZED')}, " \
           f"prunes: {_transitions(log, 'PRUNED')}," in md, md
    assert printed and f"## Last decisions ({min(10, len(printed))} of {len(printed)})" in md
    table = md.split("## Last decisions")[1].split("\n\n")[1].splitlines()
    op, reason = printed[-1]
    assert f"| {op} |" in table[-1] and table[-1].endswith(f"| {reason} |"), (table[-1], printed[-1])
    assert "| validation metric" not in md and "validation metric " in md
    assert cli.main(["monitor", run, "--once"]) == 0
    assert "[running]" in capsys.readouterr().out
    morph.close()
    assert cli.main(["monitor", run, "--replay", "--speed", "0"]) == 0
    frames = _frames(capsys.readouterr().out)
    assert len(frames) == 5 and "[ended]" in frames[-1] and "[ended]" not in frames[-2]
    last = (tmp_path / "open").parent / "closed"
    assert cli.main(["report", run, "--out", str(last)]) == 0
    assert "- end: 20" in (last / "report.md").read_text()


def test_nissas_alarms_and_impact_records_reach_the_run_log_report_and_monitor(
        grown: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    root = tmp_path / "runs"
    # A flat validation loss for 5 epochs: Nissa's no-improvement check (2 epochs) raises an alarm.
    morph = esper.Morphogenesis(model, opt, policy="manual", train_steps=2, blend_steps=2, signal_every=1,
                                runs=str(root), alerts={"no_improvement_epochs": 2},
                                evaluate=lambda m: {"loss": 1.0, "metric": 0.5})
    x, y = torch.randn(16, IN), torch.randint(0, OUT, (16,))
    for epoch in range(5):
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        if epoch == 0:
            morph.germinate(0, 0, "residual_mlp", width=2)
        if epoch == 2:
            morph.prune(0, 0, reason="by hand")  # the adaptation ends: an impact record, with no prediction
        morph.end_epoch()
    run, log = morph.run_id, list(morph.log)
    morph.close()
    events = oona.read_events(run, root=root, strict=True)
    # What the loop mirrored from Go's reports (morph.log) is what the run log holds, by another path.
    alarms = [e for e in events if e["kind"] == "alarm"]
    mirrored = [e for e in log if e["kind"] == "alarm"]
    assert alarms and [a["data"]["alarm"] for a in alarms] == [m["alarm"] for m in mirrored] == \
        ["no_improvement"] * len(alarms), (alarms, mirrored)
    assert all(a["actor"] == "nissa" and a["data"]["source"] == "nissa" and a["data"]["threshold"] == 2
               for a in alarms), alarms
    impacts = [e for e in events if e["kind"] == "impact"]
    assert [(i["data"]["outcome"], i["data"]["note"]) for i in impacts] == \
        [(m["outcome"], m["note"]) for m in log if m["kind"] == "impact"] == [("PRUNED", "no prediction")]
    assert impacts[0]["actor"] == "nissa" and impacts[0]["data"]["running"]["ended"] == 1
    assert impacts[0]["data"]["running"]["mean_abs_error"] is None

    out = tmp_path / "rep"
    assert cli.main(["report", run, "--root", str(root), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert f"alarms: 0 (the governor's) and {len(alarms)} (Nissa's)" in md, md
    assert "nissa (no_improvement): " in md, md
    assert "## Impact: predicted against measured gain" in md
    assert "| 0/0 | 1 | PRUNED | - |" in md and "| no prediction |" in md, md
    assert "- impact: 1 ended, 0 with a prediction" in md and "no running error" in md, md
    assert cli.main(["monitor", run, "--root", str(root), "--once"]) == 0
    frame = capsys.readouterr().out
    assert f"alarms 0+{len(alarms)} (governor+nissa)" in frame and "impact: 1 ended, 0 with a prediction" in frame
    assert re.search(r"e\d+ s\d+ nissa: ", frame), frame

    # Negative control: the shared run configured no alerts and raised none; its impact records are
    # its ended adaptations, as its loop mirrored them.
    g_events = oona.read_events(grown["run"], root=grown["root"], strict=True)
    assert not [e for e in g_events if e["kind"] == "alarm"]
    g_impacts = [(e["data"]["layer"], e["data"]["slot"], e["data"]["outcome"]) for e in g_events
                 if e["kind"] == "impact"]
    assert g_impacts and g_impacts == [(m["layer"], m["slot"], m["outcome"]) for m in grown["log"]
                                       if m["kind"] == "impact"]
    assert cli.main(["report", grown["run"], "--root", str(grown["root"]), "--out", str(tmp_path / "g")]) == 0
    assert "alarms: 0 (the governor's) and 0 (Nissa's)" in (tmp_path / "g" / "report.md").read_text()
