"""Urza on S3: with ``ESPER_URZA_URL=s3://bucket/prefix`` a training run's outcome records and
kernels, and every ``esper.urza.Urza()``, use a real S3-compatible server (versitygw, built by
``make s3-server`` into build/bin/esper-s3, serving a temporary folder on loopback) through Go's
store: the same verification on read; a server that is down is an error naming the URL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hosts import HOSTS
from test_outcomes import TEMPO, run_readme_loop

from esper import cli, karn
from esper.builds import clear_kernel_cache
from esper.errors import CorruptError, StorageError
from esper.tezzeret import build_seed
from esper.urza import Urza, load_seed, publish_seed

ROOT = Path(__file__).resolve().parent.parent
ACCESS, SECRET = "esper-test-access", "esper-test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """versitygw's posix backend serving ``data`` on 127.0.0.1:port (one folder per bucket)."""

    def __init__(self, data: Path) -> None:
        self.port, self.data = free_port(), data
        self.proc: subprocess.Popen[bytes] | None = None
        binary = os.environ.get("ESPER_S3_SERVER") or str(ROOT / "build" / "bin" / "esper-s3")
        assert Path(binary).exists(), f"{binary} is missing: run `make s3-server`"
        self.binary = binary

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.binary, "--access", ACCESS, "--secret", SECRET, "--port",
                                      f"127.0.0.1:{self.port}", "--quiet", "posix", str(self.data)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert self.proc.poll() is None, f"the S3 server exited with {self.proc.returncode}"
                time.sleep(0.05)
        raise AssertionError("the S3 server did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A running server, and the environment a user sets to put the default store on it."""
    srv = S3Server(tmp_path / "s3data")
    srv.start()
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ESPER_URZA_URL", "s3://esper/team/urza")
    monkeypatch.setenv("ESPER_S3_ENDPOINT", srv.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield srv
    srv.kill()


def test_default_store_is_the_s3_url_and_reads_verify(s3: S3Server, esper_home: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seed = build_seed(karn.instantiate("lowrank", HOSTS["linear"], rank=2))
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_()  # trained weights: a load that dropped them would not compare equal
    with Urza() as store:
        assert store.root == "s3://esper/team/urza"
        artifact_id = publish_seed(store, seed, tags=["kind:kernel"])
    # Another handle (another rank or machine) finds it through the index and loads it verified.
    with Urza("s3://esper/team/urza") as other:
        assert [row["id"] for row in other.list(tags=["kind:kernel"])] == [artifact_id]
        loaded = load_seed(other, artifact_id)
        for a, b in zip(seed.parameters(), loaded.parameters()):
            assert torch.equal(a, b)
    # The CLI reads the same store (the default, and by its URL).
    for argv in (["urza", "ls", "--json"], ["urza", "--root", "s3://esper/team/urza", "ls", "--json"]):
        capsys.readouterr()
        assert cli.main(argv) == 0
        assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [artifact_id]
    # Nothing went to the local default store, and the objects are where the server keeps them.
    assert not (esper_home / "urza").exists()
    weights = s3.data / "esper" / "team" / "urza" / "objects" / artifact_id[:2] / f"{artifact_id}.safetensors"
    assert weights.exists()
    # One flipped byte on the server: the read is refused with the verify error (negative control
    # of "reads verify": the same load passed above).
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with Urza() as store, pytest.raises(CorruptError, match="weights hash to"):
        store.get(artifact_id)


def test_server_down_is_an_error_naming_the_url(s3: S3Server) -> None:
    with Urza() as store:
        store.put_outcome(json.loads(json.dumps(OUTCOME)))
        s3.kill()
        start = time.monotonic()
        with pytest.raises(StorageError, match="s3://esper/team/urza/") as err:
            store.put_outcome(dict(OUTCOME, seq=1))
        took = time.monotonic() - start
    # S3's default policy: 6 attempts, 100 ms doubling, half of each delay jittered: >= 1.55 s.
    assert took > 1.5, f"gave up after {took:.2f} s: the store must retry with backoff"
    assert "attempts failed" in str(err.value) and "connection refused" in str(err.value).lower()
    # Back up: the first record is there, the failed one is not.
    s3.start()
    with Urza() as store:
        assert [r["seq"] for r in store.outcomes("run-s3")] == [0]


@pytest.mark.slow
def test_training_run_records_to_s3(s3: S3Server, monkeypatch: pytest.MonkeyPatch, esper_home: Path) -> None:
    """The README's loop, unchanged, with ESPER_URZA_URL set: its outcome records, builds and kernels
    of fossilized seeds land in the S3 store, readable by another handle; a second machine's run
    is served its builds from there."""
    scope = run_readme_loop(monkeypatch, epochs=10, **TEMPO)
    morph = scope["morph"]
    germinations = [e for e in morph.log if e["kind"] == "event" and e["to"] == "GERMINATED"]
    assert germinations, "the loop must germinate for this test to mean anything"
    first = morph.stats()["builds"]
    morph.close()
    with Urza() as store:
        records = store.outcomes(morph.run_id)
        assert len(records) == len(germinations)
        kernels = [r["kernel_id"] for r in records if r["final_state"] == "FOSSILIZED"]
        for kid in kernels:
            store.get(kid)  # verified
        assert store.verify()["bad"] == []
    assert not (esper_home / "urza").exists()
    assert (s3.data / "esper" / "team" / "urza" / "outcomes" / morph.run_id).is_dir()
    assert first["builds"] > 0 and first["store_hits"] == 0, first  # a fresh store: validated here
    # Another machine (its own ESPER_HOME, an empty kernel cache) runs the same job: its
    # germinations are served by the shared store, verified by Go, then by its kernel cache.
    clear_kernel_cache()
    monkeypatch.setenv("ESPER_HOME", str(esper_home / "other-machine"))
    again = run_readme_loop(monkeypatch, epochs=8, **TEMPO)["morph"]
    second = again.stats()["builds"]
    again.close()
    assert second["store_hits"] > 0 and second["builds"] == 0, second


OUTCOME = {
    "run_id": "run-s3", "seq": 0, "layer": 1, "layer_name": "fc1", "slot": 0, "policy": "heuristic",
    "reason": "plateau", "observation": {"epoch": 3}, "blueprint_id": "ab" * 32, "template": "lowrank",
    "template_params": {"rank": 4}, "blueprint": {"template": "lowrank"}, "host": {"kind": "linear", "in": 8, "out": 8},
    "param_count": 64, "flops_per_sample": 128, "train_flops": 3840, "contributions": [], "final_state": "FOSSILIZED",
    "ended_by": "fossilized", "final_reason": "contribution 0.1", "germinated_step": 5, "germinated_epoch": 3,
    "ended_step": 15, "ended_epoch": 5, "states": [{"state": "TRAINING", "from_step": 5, "to_step": 15, "steps": 10,
                                                    "from_epoch": 3, "to_epoch": 5, "epochs": 2, "reason": "",
                                                    "samples": 10, "train_flops": 3840}],
    "written": "0001-01-01T00:00:00Z",
}
