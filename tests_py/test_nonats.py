"""The library built without the NATS client (``make nonats-lib``: go build -tags esper_nonats,
build/nonats/libesper.so): it loads, trains and writes its run log like the default build, and each
NATS call refuses with esper.UnavailableError saying the library was built without NATS. The default
build, given the same calls, accepts them (the negative control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run in a child so that the library under test is the one loaded (ESPER_LIBRARY); prints one JSON
# line: what each NATS call did, and how many events the run log holds after a short training run.
CHILD = r"""
import json, sys, tempfile
import torch
from torch import nn
import esper
from esper import _lib, oona

out = {"nats_built": _lib.build_info()["nats"], "library": _lib.library_path()}

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except esper.EsperError as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

with tempfile.TemporaryDirectory() as root:
    # An unreachable server: the default build connects in the background and accepts it.
    bus = []
    attempt("oona_nats", lambda: bus.append(oona.Oona("nonats-probe", root=root,
                                                      nats={"url": "nats://127.0.0.1:9"})))
    for b in bus:
        b.close()
    attempt("follow", lambda: oona.NatsFollower("nats://127.0.0.1:9", run="nonats-probe").close())
    attempt("measure", lambda: oona.measure_nats("nats://127.0.0.1:9", 1))
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    morph = esper.Morphogenesis(model, opt, policy="manual", runs=root)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for epoch in range(2):
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        morph.end_epoch(val_loss=float(loss))
    run = morph.run_id
    morph.close()
    out["events"] = [e["kind"] for e in oona.read_events(run, root=root)]
print(json.dumps(out))
"""


def _child(library: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_NATS_URL"}
    env["ESPER_LIBRARY"] = str(library)
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def nonats_library() -> Path:
    """build/nonats/libesper.so, built with `make nonats-lib` (a no-op when up to date)."""
    proc = subprocess.run(["make", "-s", "nonats-lib"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = REPO / "build" / "nonats" / "libesper.so"
    assert path.is_file()
    return path


def test_nonats_library_refuses_nats_and_still_logs(nonats_library: Path) -> None:
    got = _child(nonats_library)
    assert Path(got["library"]).resolve() == nonats_library.resolve()
    assert got["nats_built"] is False
    for call in ("oona_nats", "follow", "measure"):
        assert got[call].startswith("UnavailableError: "), (call, got[call])
        assert "built without the NATS client" in got[call], (call, got[call])
        assert "esper_nonats" in got[call] and "make lib" in got[call], (call, got[call])
    # The bus and the run log are there as in the default build.
    assert got["events"][0] == "run" and got["events"].count("epoch") == 2, got["events"]


def test_default_library_accepts_the_same_nats_calls() -> None:
    # Negative control: the same child on the default build; only the measurement (a real
    # connection to a closed port) fails, and for that reason, not for a missing client.
    from esper import _lib

    got = _child(Path(_lib.library_path()))
    assert got["nats_built"] is True
    assert got["oona_nats"] == "ok" and got["follow"] == "ok"
    assert "built without" not in got["measure"]
    assert got["events"][0] == "run" and got["events"].count("epoch") == 2, got["events"]
