"""Oona over NATS: a training run's events published to a real nats-server (build/bin/esper-nats,
built by `make nats-server`, started here on loopback), stored in JetStream and replayed by a
Python subscriber (nats-py); the server absent at start, killed mid-run and restarted; Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import oona


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real nats-server with JetStream on 127.0.0.1:port, storing in store."""

    def __init__(self, port: int, store: Path, extra: tuple[str, ...] = ()) -> None:
        self.port, self.store, self.extra = port, store, extra  # extra: more nats-server flags (auth)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [*oona.serve_command("127.0.0.1", self.port, self.store), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert self.proc.poll() is None, f"nats-server exited with {self.proc.returncode}"
                time.sleep(0.05)
        raise AssertionError("nats-server did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(free_port(), tmp_path / "jetstream")
    yield srv
    srv.kill()


def replay(url: str, run: str, expected: int) -> list[dict[str, Any]]:
    """The run's events from the JetStream stream, from the start, with nats-py (another client
    than the one that published them)."""
    import json

    import nats
    from nats.js.api import DeliverPolicy

    async def go() -> list[dict[str, Any]]:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(f"esper.v1.{run}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
            out = []
            while len(out) < expected + 5:  # a few more than expected: duplicates would show
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                ev = json.loads(msg.data)
                assert msg.subject == f"esper.v1.{run}.{ev['rank']}.{ev['kind']}"
                assert msg.headers and msg.headers.get("Nats-Msg-Id") == ev["id"]
                out.append(ev)
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def train(morph: esper.Morphogenesis, model: nn.Module, opt: torch.optim.Optimizer, epochs: range,
          steps: int = 3) -> float:
    """Trains for these epochs; returns the slowest step (seconds)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    slowest = 0.0
    for epoch in epochs:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss.detach())
            slowest = max(slowest, time.perf_counter() - t0)
        if epoch == 1:
            morph.germinate(0, 0, "residual_mlp", width=2)
        t0 = time.perf_counter()
        morph.end_epoch(val_loss=float(loss.detach()))
        slowest = max(slowest, time.perf_counter() - t0)
    return slowest


def make(**settings: Any) -> tuple[nn.Module, torch.optim.Optimizer, esper.Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, esper.Morphogenesis(model, opt, policy="manual", train_steps=2, blend_steps=2,
                                           signal_every=1, **settings)


def test_python_subscriber_replays_a_run_from_jetstream(server: Server) -> None:
    server.start()
    model, opt, morph = make(nats_url=server.url)
    train(morph, model, opt, range(4))
    run = morph.run_id
    morph.close()
    logged = oona.read_events(run, strict=True)
    replayed = replay(server.url, run, len(logged))
    # The stream holds the run log's events, each once, in order.
    assert [e["id"] for e in replayed] == [e["id"] for e in logged]
    assert replayed == logged
    assert logged[-1]["data"]["phase"] == "end"


def test_environment_url_and_stats(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.start()
    monkeypatch.setenv("ESPER_NATS_URL", server.url)
    model, opt, morph = make()
    train(morph, model, opt, range(2))
    deadline = time.monotonic() + 10
    while morph.oona.stats()["nats"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    st = morph.oona.stats()
    assert st["nats"]["connected"] and st["nats"]["url"] == server.url and st["nats"]["dropped"] == 0
    assert st["nats"]["sent"] == st["published"]
    morph.close()


@pytest.mark.slow
def test_server_absent_killed_and_restarted_training_goes_on(server: Server) -> None:
    # Absent at start: the run starts and trains; its events wait in the backlog.
    model, opt, morph = make(nats_url=server.url)
    slowest = train(morph, model, opt, range(0, 3))
    assert morph.oona.stats()["nats"]["sent"] == 0
    server.start()
    slowest = max(slowest, train(morph, model, opt, range(3, 6)))
    # Killed mid-run (SIGKILL, no goodbye), training goes on; restarted on the same store.
    server.kill()
    slowest = max(slowest, train(morph, model, opt, range(6, 9)))
    server.start()
    slowest = max(slowest, train(morph, model, opt, range(9, 12)))
    run = morph.run_id
    deadline = time.monotonic() + 15
    while morph.oona.stats()["nats"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = morph.oona.stats()
    morph.close()
    assert slowest < 1.0, f"a training step or end_epoch took {slowest:.2f} s: it waited on NATS"
    logged = oona.read_events(run, strict=True)
    assert [e["epoch"] for e in logged if e["kind"] == "epoch"] == list(range(12))  # the run log is complete
    nats = stats["nats"]
    assert nats["dropped"] == 0 and nats["reconnects"] >= 1 and nats["retries"] >= 1, nats
    replayed = replay(server.url, run, len(logged))
    # Every event reached the stream once (re-sent after each outage, deduplicated by id), in order.
    assert [e["id"] for e in replayed] == [e["id"] for e in logged]


def test_full_backlog_counts_drops_and_close_does_not_hang(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nobody there
    model, opt, morph = make(nats_url=url, nats_options={"buffer": 4})
    train(morph, model, opt, range(3))
    st = morph.oona.stats()["nats"]
    assert not st["connected"] and st["sent"] == 0 and st["dropped"] > 0
    assert st["dropped"] + st["pending"] + 1 >= morph.oona.stats()["published"]
    t0 = time.perf_counter()
    morph.close()
    assert time.perf_counter() - t0 < 8.0


def test_plaintext_off_loopback_needs_an_opt_in() -> None:
    with pytest.raises(esper.InvalidArgumentError, match="not loopback"):
        oona.Oona("r1", nats={"url": "nats://192.0.2.1:4222"})
    bus = oona.Oona("r2", nats={"url": "nats://192.0.2.1:4222", "allow_plaintext": True})
    assert bus.stats()["nats"]["url"] == "nats://192.0.2.1:4222"
    bus.close()
    with pytest.raises(esper.InvalidArgumentError, match="pasword"):
        oona.Oona("r3", nats={"url": "nats://127.0.0.1:1", "pasword": "x"})
    with pytest.raises(ValueError, match="not loopback"):
        oona.serve_command("0.0.0.0", 4222)
    assert oona.serve_command("0.0.0.0", 4222, "/tmp/x", allow_remote=True)[1:] == [
        "-a", "0.0.0.0", "-p", "4222", "-js", "-sd", "/tmp/x"]


CTRL_C_RUN = textwrap.dedent("""
    import torch, esper
    from torch import nn
    model = esper.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    epoch = 0
    try:
        while True:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); morph.step(loss.detach())
            morph.end_epoch(val_loss=float(loss.detach()))
            if epoch == 2:
                print("training", morph.oona.stats()["nats"]["connected"], flush=True)
            epoch += 1
    except KeyboardInterrupt:
        morph.close()
        print("interrupted", flush=True)
        raise SystemExit(130)
""")


def test_ctrl_c_reaches_python_while_nats_is_unreachable() -> None:
    env = dict(os.environ, ESPER_NATS_URL=f"nats://127.0.0.1:{free_port()}", ESPER_GO_MAXPROCS="1")
    # Started with SIGINT at its default, as from a terminal.
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.strip() == "training False", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in out, (proc.returncode, out, err[-2000:])


def test_esper_oona_serve_runs_a_local_server(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, ESPER_GO_MAXPROCS="1")
    refused = subprocess.run([sys.executable, "-m", "esper", "oona", "serve", "--host", "0.0.0.0"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "not loopback" in refused.stderr
    proc = subprocess.Popen([sys.executable, "-m", "esper", "oona", "serve", "--port", str(port), "--store",
                             str(tmp_path / "js")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert f"nats://127.0.0.1:{port}" in proc.stdout.readline()
        bus = oona.Oona("served-run", nats={"url": f"nats://127.0.0.1:{port}"})
        bus.publish("run", "system", {"phase": "start"})
        deadline = time.monotonic() + 20
        while bus.stats()["nats"]["sent"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bus.stats()["nats"]["sent"] == 1, bus.stats()["nats"]
        bus.close()
        assert (tmp_path / "js" / "jetstream").is_dir()  # JetStream stores where it was told
        proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the server, which stops
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
