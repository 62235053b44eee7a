"""Oona: the run's events on the Go bus and in the run log ($ESPER_HOME/runs/<run>/events.jsonl),
written by the real ``esper.wrap`` + ``Morphogenesis`` loop and read back with ``esper.oona``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import oona

README = Path(__file__).resolve().parent.parent / "README.md"
IN, HIDDEN, OUT = 4, 8, 3
HEADER = {"v", "id", "seq", "run", "rank", "step", "epoch", "time", "kind", "actor", "data"}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, IN, generator=g), torch.randint(0, OUT, (n,), generator=g)


def check_events(events: list[dict[str, Any]], run: str) -> None:
    """Every event has the v1 header, the run's id, a unique id, and seq 1, 2, 3, ... in order."""
    assert events, "the run log is empty"
    assert all(set(e) == HEADER for e in events), [sorted(set(e) ^ HEADER) for e in events if set(e) != HEADER][:3]
    assert {e["v"] for e in events} == {oona.SCHEMA_VERSION}
    assert {e["run"] for e in events} == {run}
    assert len({e["id"] for e in events}) == len(events), "event ids repeat"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["kind"] in oona.KINDS and e["actor"] in oona.ACTORS for e in events)


def lifecycle(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(layer/slot, from, to, actor) of each lifecycle event."""
    return [(f"{e['data']['layer']}/{e['data']['slot']}", e["data"]["from"], e["data"]["to"], e["actor"])
            for e in events if e["kind"] == "lifecycle"]


def test_training_loop_logs_germination_fossilization_and_prune_in_order() -> None:
    model = esper.wrap(tiny(), target_modules=["0", "2"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # A constant validation loss: every held seed "contributes" 0, which min_gain = 0 accepts, so
    # Tamiyo fossilizes what it germinated; a second seed is germinated and pruned by hand.
    morph = esper.Morphogenesis(model, opt, policy="heuristic", patience=1, train_steps=2, blend_steps=2,
                                signal_every=1, template_params={"width": 2}, min_gain=0.0, cooldown_epochs=0,
                                max_concurrent=2, evaluate=lambda m: {"loss": 1.0, "metric": 0.5})
    run = morph.run_id
    x, y = data()
    for epoch in range(6):
        for _ in range(4):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        if epoch == 1:
            morph.germinate(1, 1, "residual_mlp", width=2)
        if epoch == 3:
            morph.prune(1, 1, reason="by hand")
        morph.end_epoch()
    mirrored = [(f"{e['layer']}/{e['slot']}", e["from"], e["to"]) for e in morph.log if e["kind"] == "event"]
    morph.close()

    events = oona.read_events(run, strict=True)
    check_events(events, run)
    assert events[0]["kind"] == "run" and events[0]["data"]["phase"] == "start"
    assert events[-1]["kind"] == "run" and events[-1]["data"]["phase"] == "end"
    assert events[-1]["data"]["bus"]["dropped"] == 0
    # The log's transitions are those Python mirrored, in the same order (plus any after the last).
    logged = lifecycle(events)
    assert [t[:3] for t in logged][: len(mirrored)] == mirrored
    # Tamiyo's germination and fossilization, each after its decision, by the policy.
    germinated = [t for t in logged if t[2] == "GERMINATED" and t[3] == "policy"]
    fossilized = [t for t in logged if t[2] == "FOSSILIZED" and t[3] == "policy"]
    assert germinated and fossilized, logged
    seed = fossilized[0][0]
    path = [t[2] for t in logged if t[0] == seed][:5]
    assert path == ["GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"], logged
    decisions = [(e["data"]["op"], e["actor"]) for e in events if e["kind"] == "decision"]
    assert ("germinate", "policy") in decisions and ("fossilize", "policy") in decisions
    first = next(i for i, e in enumerate(events) if e["kind"] == "decision" and e["data"]["op"] == "germinate")
    assert events[first + 1]["kind"] == "lifecycle" and events[first + 1]["data"]["to"] == "GERMINATED"
    # The manual germination and prune, by a manual actor, with their reason; the embargo by the schedule.
    manual = [t for t in logged if t[0] == "1/1"]
    assert manual[:3] == [("1/1", "DORMANT", "GERMINATED", "manual"), ("1/1", "GERMINATED", "TRAINING", "schedule"),
                          ("1/1", "TRAINING", "BLENDING", "schedule")], manual
    pruned = next(i for i, t in enumerate(manual) if t[2] == "PRUNED")
    assert manual[pruned][3] == "manual" and manual[pruned + 1] == ("1/1", "PRUNED", "EMBARGOED", "schedule")
    assert all(t[3] == "schedule" for t in manual[1:pruned]), manual
    prune = next(e for e in events if e["kind"] == "lifecycle" and e["data"]["to"] == "PRUNED")
    assert prune["data"]["reason"] == "by hand" and prune["data"]["layer_name"] == "2"
    # One epoch event and one health event per end_epoch, with the metrics handed to Go.
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(6))
    assert all(e["data"]["metrics"]["val_loss"] == 1.0 and e["data"]["metrics"]["val_metric"] == 0.5 for e in epochs)
    assert [e["epoch"] for e in events if e["kind"] == "health"] == list(range(6))
    # The fossilized seed was published to Urza as a trained kernel: an artifact event names it.
    artifacts = [e["data"] for e in events if e["kind"] == "artifact"]
    assert artifacts and artifacts[0]["type"] == "kernel" and re.fullmatch(r"[0-9a-f]{64}", artifacts[0]["id"])
    # Steps never go backwards.
    steps = [e["step"] for e in events]
    assert steps == sorted(steps)


def test_readme_loop_writes_its_run_log() -> None:
    from test_readme import MyModel

    code = re.search(r"## Use it in your training loop\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README lost its usage example"
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def my_validation(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(xs)
        return float(loss_fn(logits, ys)), float((logits.argmax(1) == ys).float().mean())

    scope: dict[str, Any] = {"MyModel": MyModel, "my_validation": my_validation, "loss_fn": loss_fn, "epochs": 3,
                             "loader": [(xs[i:i + 16], ys[i:i + 16]) for i in range(0, 64, 16)],
                             "print": lambda *a: None}
    exec(compile(code.group(1), str(README), "exec"), scope)  # noqa: S102 - our own README
    morph = scope["morph"]
    run = morph.run_id
    # The loop never closes morph: what each end_epoch published is in the log already.
    events = oona.read_events(run, strict=True)
    check_events(events, run)
    assert morph.oona.path == oona.run_dir(run) / "events.jsonl"
    assert Path(os.environ["ESPER_HOME"]) / "runs" / run / "events.jsonl" == morph.oona.path
    assert [e["epoch"] for e in events if e["kind"] == "epoch"] == [0, 1, 2]
    decisions = [e for e in events if e["kind"] == "decision"]
    assert len(decisions) >= 3 and all(e["actor"] == "policy" and e["data"]["reason"] for e in decisions)
    morph.close()
    assert oona.read_events(run)[-1]["data"]["phase"] == "end"


KILLED_RUN = textwrap.dedent("""
    import sys, torch, esper
    from torch import nn
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", train_steps=3, blend_steps=3, signal_every=1)
    print(morph.run_id, flush=True)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    epoch = 0
    while True:
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); morph.step(loss)
        if epoch % 3 == 0:
            if morph.layers[0].state(0).name == "DORMANT":
                morph.germinate(0, 0, "residual_mlp", width=2)
            elif morph.layers[0].state(0).name in ("TRAINING", "BLENDING", "HOLDING"):
                morph.prune(0, 0)
        morph.end_epoch(val_loss=float(loss))
        print("epoch", epoch, flush=True)
        epoch += 1
""")


@pytest.mark.slow
def test_killed_run_leaves_a_readable_log_and_a_resumed_one_appends() -> None:
    env = dict(os.environ, ESPER_GO_MAXPROCS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        run = proc.stdout.readline().strip()
        assert run, proc.stderr.read() if proc.poll() is not None else "no run id"
        done = -1
        deadline = time.monotonic() + 120
        while done < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            done = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)  # mid-run: no close, no atexit, no flush
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    events = oona.read_events(run, strict=True)  # every line parses: whole lines only
    check_events(events, run)
    epochs = [e["epoch"] for e in events if e["kind"] == "epoch"]
    # Every epoch that ended before the kill (end_epoch returned) is in the log.
    assert epochs[: done + 1] == list(range(done + 1)), epochs
    assert not any(e["kind"] == "run" and e["data"]["phase"] == "end" for e in events)
    assert any(t[2] == "PRUNED" for t in lifecycle(events))

    # A crash can cut the last line in the middle (written here by hand): a resumed run starts a new line,
    # the reader skips the cut one (and raises on it when strict).
    path = oona.run_dir(run) / "events.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"v":1,"id":"cut-by-a-crash","se')
    bus = oona.Oona(run)
    bus.publish("run", "system", {"phase": "resume"}, step=events[-1]["step"], epoch=events[-1]["epoch"])
    bus.close()
    with pytest.raises(ValueError, match="not an event"):
        oona.read_events(run, strict=True)
    after = oona.read_events(run)
    assert after[: len(events)] == events and len(after) == len(events) + 1
    assert after[-1]["data"] == {"phase": "resume"} and after[-1]["id"] not in {e["id"] for e in events}


def test_run_log_rotates_at_its_bound() -> None:
    model = esper.wrap(tiny(), target_modules=["0"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    limit = 4096
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1, run_log_max_bytes=limit, run_log_keep=2)
    run = morph.run_id
    x, y = data()
    for _ in range(12):  # an epoch writes about 2.5 KB (its summary, the health statistics of its layer)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
        morph.end_epoch(val_loss=float(loss.detach()))
    stats = morph.oona.stats()
    morph.close()
    files = oona.log_files(run)
    assert [p.name for p in files] == ["events.2.jsonl", "events.1.jsonl", "events.jsonl"]
    assert sorted(p.name for p in oona.run_dir(run).iterdir()) == ["events.1.jsonl", "events.2.jsonl", "events.jsonl"]
    assert all(p.stat().st_size <= limit for p in files), [p.stat().st_size for p in files]
    assert stats["log"]["rotations"] >= 3 and stats["log"]["dropped"] == 0
    events = oona.read_events(run, strict=True)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 1  # the oldest lines went, in order
    assert events[-1]["data"]["phase"] == "end"
    with pytest.raises(ValueError, match="run_log_max_bytes"):
        esper.Morphogenesis(esper.wrap(tiny(), target_modules=["0"]), opt, run_log_max_bytes=100)


def test_checkpoint_resume_continues_the_run_log() -> None:
    model = esper.wrap(tiny(), target_modules=["0"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1, train_steps=2)
    x, y = data()
    morph.germinate(0, 0, "residual_mlp", width=2)
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    morph.end_epoch(val_loss=float(loss.detach()))
    state = morph.state_dict()
    run = morph.run_id
    morph.close()

    model2 = esper.wrap(tiny(), target_modules=["0"], seeds_per_layer=1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    morph2 = esper.Morphogenesis(model2, opt2, policy="manual", signal_every=1, train_steps=2)
    fresh = morph2.run_id
    morph2.load_state_dict(state)
    assert morph2.run_id == run and morph2.oona.run == run
    morph2.end_epoch(val_loss=1.0)
    morph2.close()
    events = oona.read_events(run, strict=True)
    phases = [e["data"]["phase"] for e in events if e["kind"] == "run"]
    # The second process's session starts, then restores the checkpoint: "start" then "resume".
    assert phases == ["start", "end", "start", "resume", "end"], phases
    assert len({e["id"] for e in events}) == len(events)
    assert not oona.run_dir(fresh).exists(), "a run dir was made for the id the checkpoint replaced"


def test_publish_refuses_bad_events_and_counts_drops_nowhere() -> None:
    bus = oona.Oona("manual-run")
    with pytest.raises(esper.InvalidArgumentError, match="kind"):
        bus.publish("gossip", "manual", {})
    with pytest.raises(esper.InvalidArgumentError, match="actor"):
        bus.publish("alarm", "someone", {})
    bus.publish("alarm", "manual", {"reason": "a test", "value": float("nan")})
    bus.flush()
    st = bus.stats()
    assert st["published"] == 1 and st["dropped"] == 0 and st["log"]["lines"] == 1
    bus.close()
    bus.close()
    with pytest.raises(esper.EsperError, match="closed"):
        bus.stats()
    (ev,) = oona.read_events("manual-run")
    assert ev["data"] == {"reason": "a test", "value": "NaN"} and ev["actor"] == "manual"
    with pytest.raises(esper.InvalidArgumentError, match="run id"):
        oona.Oona("a.b")
    with pytest.raises(FileNotFoundError, match="no run"):
        oona.read_events("never-ran")


def test_cli_lists_runs_and_prints_events(capsys: pytest.CaptureFixture[str]) -> None:
    from esper import cli

    model = esper.wrap(tiny(), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with esper.Morphogenesis(model, opt, policy="manual", train_steps=1) as morph:
        morph.germinate(0, 0, "residual_mlp", width=2)
        morph.end_epoch(val_loss=1.0)
        run = morph.run_id
    capsys.readouterr()
    assert cli.main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run"] == run and row["ended"] and row["epochs"] == 1 and row["lifecycle"] == 1
    assert cli.main(["runs"]) == 0
    assert run in capsys.readouterr().out
    assert cli.main(["events", run, "--kind", "lifecycle,run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "DORMANT -> GERMINATED" in lines[1] and "manual" in lines[1], lines
    assert cli.main(["events", run, "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == oona.read_events(run)
    assert cli.main(["events", "nope"]) == 1
    assert "no run 'nope'" in capsys.readouterr().err


def test_bus_throughput_in_process() -> None:
    measured = oona.measure(20_000, 2)
    assert measured["delivered"] == 40_000 and measured["dropped"] == 0 and measured["events_per_s"] > 0


def test_unwritable_runs_root_warns_and_training_goes_on(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the runs root should be")
    model = esper.wrap(tiny(), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", runs=str(blocked))
    x, y = data()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    morph.step(loss.detach())
    with pytest.warns(RuntimeWarning, match="has no run log"):
        morph.end_epoch(val_loss=1.0)  # opens the session (and tries the run log)
    morph.germinate(0, 0, "residual_mlp", width=2)
    with pytest.raises(esper.EsperError, match="no run log"):
        morph.oona.stats()
    morph.close()
