"""`esper monitor --nats`: the live view follows a run from a real nats-server (build/bin/esper-nats,
built by `make nats-server`, started here on loopback) that a real wrapped training run publishes
to, and shows what the run log shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_oona_nats import Server, free_port
from torch import nn

import esper
from esper import cli, oona, report

SRC = str(Path(__file__).resolve().parent.parent / "python")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(free_port(), tmp_path / "jetstream")
    srv.start()
    yield srv
    srv.kill()


class Monitor:
    """`esper monitor ... --nats URL` in its own process; a thread collects its output lines."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, ESPER_GO_MAXPROCS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # SIGINT at its default, as a terminal starts commands (see test_report._monitor_proc).
        self.proc = subprocess.Popen([sys.executable, "-m", "esper", "monitor", *args, "--interval", "0.1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._guard = threading.Timer(120, self.proc.kill)  # never hang the test in a read
        self._guard.daemon = True
        self._guard.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            assert self.proc.poll() is None or text in self.out, \
                f"the monitor exited {self.proc.returncode}: {self.out[-2000:]} {self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.out[-2000:]!r}"
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def finish(self, timeout: float = 60) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._guard.cancel()
        self._reader.join(timeout=10)
        return rc


def frames(text: str) -> list[str]:
    return ["esper monitor  run " + f.rstrip("\n") for f in text.split("esper monitor  run ")[1:]]


def train(morph: esper.Morphogenesis, model: nn.Module, opt: torch.optim.Optimizer, epochs: range) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    for epoch in epochs:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss.detach())
        if epoch == 1:
            morph.germinate(0, 0, "residual_mlp", width=2)
        if epoch == 4:
            morph.prune(0, 0, reason="by hand")
        morph.end_epoch(val_loss=float(loss.detach()))


def make(url: str, root: Path) -> tuple[nn.Module, torch.optim.Optimizer, esper.Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, esper.Morphogenesis(model, opt, policy="manual", train_steps=2, blend_steps=2,
                                           signal_every=1, nats_url=url, runs=str(root))


@pytest.mark.slow
def test_monitor_follows_a_training_run_from_nats_live_to_its_end(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # Another run on the same server first: its events are in the stream too, and must not show.
    model, opt, other = make(server.url, root)
    train(other, model, opt, range(2))
    other_run = other.run_id
    other.close()

    model, opt, morph = make(server.url, root)
    train(morph, model, opt, range(2))  # started, a seed germinated
    run = morph.run_id
    mon = Monitor(run, "--nats", server.url)
    try:
        # The monitor read the stream from the run's start and shows the run going on.
        mon.wait_for("[running]")
        mon.wait_for("germinated 1 ")
        train(morph, model, opt, range(2, 6))  # then live: more epochs, the seed pruned by hand
        morph.close()  # the end event: the monitor exits by itself
        assert mon.finish() == 0, mon.stderr()
    finally:
        if mon.proc.poll() is None:
            mon.proc.kill()
    shown = frames(mon.out)
    assert len(shown) >= 2 and "[running]" in shown[0] and "[ended]" in shown[-1], mon.out
    # The same display as from the run log: the final frame is the run log's, line for line.
    from_log = report.render_frame(report.load(run, root=root))
    assert shown[-1] == from_log, (shown[-1], from_log)
    assert f"events {len(oona.read_events(run, root=root))}" in shown[-1]
    assert "pruned 1" in shown[-1] and "impact: 1 ended" in shown[-1] and other_run not in mon.out

    # --once and --replay read what the server holds until caught up; a wildcard subject works too.
    for args in (["--once"], ["--replay", "--speed", "0"], ["--once", "--subject", f"esper.v1.{run}.*.>"]):
        cmd = ["monitor", "--nats", server.url, *args] if "--subject" in args else ["monitor", run, "--nats",
                                                                                     server.url, *args]
        out = _cli(cmd)
        assert frames(out)[-1] == from_log, (args, out[-3000:])
        if "--replay" in args:
            assert len(frames(out)) == 6 + 1  # a frame per epoch, then the final one


def _cli(argv: list[str]) -> str:
    """`esper ARGV` in this process; returns its output."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(argv) == 0, argv
    return buf.getvalue()


@pytest.mark.slow
def test_monitor_from_nats_stops_on_ctrl_c_and_refuses_bad_arguments(server: Server,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    mon = Monitor("no-such-run-yet", "--nats", server.url)  # nothing published: it waits for the run
    try:
        mon.wait_for("alarms: none")
        time.sleep(0.5)
        assert mon.proc.poll() is None, "the monitor stopped before its run ended"
        mon.proc.send_signal(signal.SIGINT)
        assert mon.finish(timeout=30) == 130
    finally:
        if mon.proc.poll() is None:
            mon.proc.kill()
    assert "interrupted" in mon.stderr()
    for argv, why in ((["monitor", "r", "--subject", "esper.v1.>"], "go with --nats"),
                      (["monitor", "--nats", server.url], "name the run or give --subject"),
                      (["monitor", "r", "--nats", server.url, "--subject", "esper.v1.>"], "not both"),
                      (["monitor", "r", "--nats", "nats://192.0.2.1:4222"], "not loopback"),
                      (["monitor", "--nats", server.url, "--subject", "esper..x"], "not a NATS subject")):
        assert cli.main(argv) == 2, argv
        assert why in capsys.readouterr().err, argv


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["token", "user"])
def test_monitor_authenticates_to_a_server_that_requires_it(auth: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A real nats-server requiring a token or a user and password: the run publishes with its
    nats_options, `esper monitor --nats` follows it with the flags (the password from
    $ESPER_NATS_PASSWORD), and wrong credentials show nothing but Go's reason (negative control)."""
    if auth == "token":
        flags, opts = ("--auth", "t0ken"), {"token": "t0ken"}
        right, wrong = ["--nats-token", "t0ken"], ["--nats-token", "wrong"]
    else:
        flags, opts = ("--user", "esper", "--pass", "s3cret"), {"user": "esper", "password": "s3cret"}
        monkeypatch.setenv("ESPER_NATS_PASSWORD", "s3cret")
        right, wrong = ["--nats-user", "esper"], ["--nats-user", "esper", "--nats-password", "wrong"]
    srv = Server(free_port(), tmp_path / "jetstream", flags)
    srv.start()
    try:
        root = tmp_path / "runs"
        torch.manual_seed(0)
        model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1, nats_url=srv.url,
                                    nats_options=opts, runs=str(root))
        train(morph, model, opt, range(2))
        deadline = time.monotonic() + 20
        while morph.oona.stats()["nats"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert morph.oona.stats()["nats"]["sent"] > 0, morph.oona.stats()
        run = morph.run_id
        morph.close()
        from_log = report.render_frame(report.load(run, root=root))
        capsys.readouterr()

        out = _cli(["monitor", run, "--nats", srv.url, *right, "--once"])
        assert frames(out)[-1] == from_log, out[-3000:]
        for creds in (wrong, []):
            assert cli.main(["monitor", run, "--nats", srv.url, *creds, "--once", "--interval", "0.2"]) == 1
            got = capsys.readouterr()
            assert "authorization violation" in got.err.lower() and "esper monitor" not in got.out, got
        if auth == "token":  # the token from the environment, out of the process list
            monkeypatch.setenv("ESPER_NATS_TOKEN", "t0ken")
            assert frames(_cli(["monitor", run, "--nats", srv.url, "--once"]))[-1] == from_log
    finally:
        srv.kill()


def test_monitor_nats_options_are_checked_by_go(capsys: pytest.CaptureFixture[str]) -> None:
    """The flags reach Go's checks (core/oona/natsink): a password needs its user, a client
    certificate its key, one way to authenticate; plaintext off loopback needs the opt-in."""
    for argv, why in ((["--nats-password", "p"], "a password needs its user"),
                      (["--nats-cert", "/c.pem"], "needs its key"),
                      (["--nats-token", "t", "--nats-user", "u"], "one way to authenticate"),
                      (["--nats-token", "t"], None)):
        assert cli.main(["monitor", "r", "--nats", "nats://192.0.2.1:4222", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert (why or "not loopback") in err, (argv, err)
    assert cli.main(["monitor", "r", "--nats-token", "t"]) == 2
    assert "go with --nats URL" in capsys.readouterr().err
