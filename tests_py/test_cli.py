"""The `esper` command's `blueprints` and `urza` subcommands, run as `python -m esper` in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper import cli, karn
from esper.tezzeret import build_seed
from esper.urza import Urza, publish_seed

ENV = dict(os.environ, ESPER_GO_MAXPROCS="1")


def esper(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Runs `python -m esper ARGS` for each command at once (each pays the interpreter's start-up)."""
    procs = [subprocess.Popen([sys.executable, "-m", "esper", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for args in commands]
    done = []
    for args, p in zip(commands, procs):
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess([sys.executable, "-m", "esper", *args], p.returncode, out, err))
    return done


def test_blueprints_lists_the_library_with_costs() -> None:
    specs = {
        "linear:64:10": {"kind": "linear", "in": 64, "out": 10},
        "conv2d:16:32:3:2:1": {"kind": "conv2d", "in": 16, "out": 32, "kernel": 3, "stride": 2, "padding": 1},
    }
    results = esper(*[["blueprints", "--host", spec] for spec in specs], ["blueprints", "--host", "foo:1"])
    for (spec, host), proc in zip(specs.items(), results):
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == f"blueprints for host {spec}"
        rows = {line.split()[0]: line for line in lines[2:]}
        costs = karn.library_costs(host)
        assert sorted(rows) == [r["template"] for r in costs]
        for r in costs:
            fields = rows[r["template"]].split()
            if "error" in r:
                assert fields[1:4] == ["-", "-", "-"] and "n/a: template" in rows[r["template"]]
            else:
                assert fields[1:4] == [str(r["param_count"]), str(r["flops_per_sample"]),
                                       "yes" if r["mergeable"] else "no"]
        fitting = [r for r in costs if "error" not in r]
        assert fitting and len(fitting) < len(costs)
    bad = results[-1]
    assert bad.returncode != 0 and bad.stdout == ""
    assert "--host 'foo:1' is not one of linear:IN:OUT" in bad.stderr and "Traceback" not in bad.stderr


def test_blueprints_json_and_host_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["blueprints", "--host", "residual:32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == karn.library_costs({"kind": "residual", "dim": 32})
    assert cli.main(["blueprints", "--host", "linear:0:10"]) == 2
    assert "invalid host: in = 0 must be in [1, 16777216]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="sizes must be integers"):
        cli.main(["blueprints", "--host", "linear:a:10"])
    with pytest.raises(SystemExit, match="is not one of"):
        cli.main(["blueprints", "--host", "conv2d:3:4"])


@pytest.fixture
def store_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "store"
    with Urza(root) as store, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        host = {"kind": "linear", "in": 8, "out": 4}
        ids = [publish_seed(store, build_seed(karn.instantiate(t, host)), tags=[t, "cli"])
               for t in ("residual_mlp", "lowrank")]
    return root, ids


def test_urza_commands_on_a_store(store_dir: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, ids = store_dir
    r = ["urza", "--root", str(root)]
    ls, show, verify = esper(r + ["ls"], r + ["show", ids[0]], r + ["verify"])
    for proc in (ls, show, verify):
        assert proc.returncode == 0, proc.stderr
    assert f"2 artifact(s) in {root}" in ls.stdout
    for aid in ids:
        assert aid[:16] in ls.stdout
    shown = json.loads(show.stdout)
    assert shown["id"] == ids[0] and shown["manifest"]["tags"] == ["cli", "residual_mlp"]
    assert shown["info"]["template"] == "residual_mlp"
    report = json.loads(verify.stdout)
    assert (report["checked"], report["ok"], report["bad"]) == (2, 2, [])
    assert cli.main(r + ["--json", "ls"]) == 0
    assert {e["id"] for e in json.loads(capsys.readouterr().out)} == set(ids)
    assert cli.main(r + ["show", "f" * 64]) == 2
    assert "artifact not found" in capsys.readouterr().err

    # Damage one artifact: verify exits 1 naming exactly it; gc removes it; the other stays.
    weights = root / "objects" / ids[1][:2] / f"{ids[1]}.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    (verify_bad,) = esper(r + ["verify"])
    assert verify_bad.returncode == 1
    assert [p["id"] for p in json.loads(verify_bad.stdout)["bad"]] == [ids[1]]
    (gc,) = esper(r + ["gc"])
    assert gc.returncode == 0, gc.stderr
    assert {p["id"] for p in json.loads(gc.stdout)["removed"]} == {ids[1]}
    with Urza(root) as store:
        assert [e["id"] for e in store.list()] == [ids[0]] and store.verify()["bad"] == []


def test_demo_refuses_bad_counts_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused by the parser, before any training or output folder.
    for flag, value, message in (("--seeds", "0", "must be >= 1, got 0"), ("--budget-seeds", "-3", "must be >= 1"),
                                 ("--jobs", "two", "'two' is not an integer"),
                                 ("--tasks", "digits,mnist",
                                  "'digits,mnist': esper demo: tasks must be some of digits, spirals, classification, "
                                  "got ['digits', 'mnist']"),
                                 ("--tasks", ",", "',': esper demo: tasks must be some of")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["demo", flag, value, "--out", "/nonexistent/never-written"])
        assert exc.value.code == 2
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    assert not Path("/nonexistent/never-written").exists()


def test_urza_kinds_outcomes_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import esper
    from esper.builds import clear_kernel_cache

    clear_kernel_cache()  # this run validates its build, and records it in this store
    root = tmp_path / "store"
    model = esper.wrap(torch.nn.Sequential(torch.nn.Linear(8, 8)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with esper.Morphogenesis(model, opt, policy="manual", urza=str(root), signal_every=1) as morph:
        morph.germinate(0, 0, "lowrank", rank=2)
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        morph.step()
        morph.prune(0, 0, reason="cli test")
    r = ["urza", "--root", str(root)]
    assert cli.main(r + ["ls", "--kind", "build", "--json"]) == 0
    builds = json.loads(capsys.readouterr().out)
    assert [b["tags"] for b in builds] == [["kind:build"]]
    assert cli.main(r + ["ls", "--kind", "kernel"]) == 0
    assert f"0 artifact(s) in {root}" in capsys.readouterr().out
    assert cli.main(r + ["outcomes", "--run", morph.run_id]) == 0
    text = capsys.readouterr().out
    assert morph.run_id in text and "pruned" in text and "1 outcome record(s)" in text
    assert cli.main(r + ["--json", "outcomes"]) == 0  # --json before the subcommand works too
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["final_reason"] == "cli test" and rec["template"] == "lowrank"
    assert cli.main(r + ["runs"]) == 0
    text = capsys.readouterr().out
    assert morph.run_id in text and "pruned 1" in text and "1 run(s)" in text
    assert cli.main(r + ["outcomes", "--run", "../x"]) == 2  # a malformed run id is refused by Go
    assert "run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(r + ["ls", "--kind", "weights"])
