"""Growth under torch.distributed: 2 gloo ranks on CPU, each a separate process running the README's
loop (tests_py/dist_worker.py) with a scripted growth: two germinations... (see the worker).

Oracle: the 2-rank run (DDP, then FSDP2's fully_shard) equals one process on the union batch within
1e-6 in float64, and the ranks hold identical weights, seeds and Go session digests. Negative
control: the same run with Esper's synchronisation switched off (a test-only switch) diverges.
Faults: a rank whose session state drifts, a rank killed mid-run, a hung rank, and a killed rank
restarted by ``torchrun --max-restarts 1`` that resumes from the checkpoint and finishes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import esper

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests_py" / "dist_worker.py"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_ranks(tmp: Path, mode: str, *args: str, timeout: float = 120,
              after_first: float | None = None) -> tuple[list[int], list[str], float]:
    """Start 2 ranks of the worker; returns their exit codes, their output and the wall time until
    the first rank exited. With ``after_first``, a rank still running that many seconds after the
    first exit is killed (a hung rank)."""
    env = _env()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs, logs = [], []
    start = time.monotonic()
    for rank in range(2):
        log = open(tmp / f"{mode}.log{rank}", "w+")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "--mode", mode, "--out", str(tmp / mode), *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log, stderr=subprocess.STDOUT))
    deadline, first = start + timeout, None
    while first is None and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            first = time.monotonic()
        else:
            time.sleep(0.1)
    elapsed = (first or time.monotonic()) - start
    if first is not None and after_first is not None:
        deadline = min(deadline, first + after_first)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    out = []
    for log in logs:
        log.seek(0)
        out.append(log.read())
        log.close()
    return codes, out, elapsed


def load(tmp: Path, name: str, rank: int = 0) -> dict[str, Any]:
    return torch.load(tmp / f"{name}.rank{rank}.pt", weights_only=True)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), f"different tensors: {sorted(set(a) ^ set(b))}"
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same loop in one process on the union batch (the reference)."""
    tmp = tmp_path_factory.mktemp("single")
    env = _env()
    env["ESPER_HOME"] = str(tmp / "home")
    done = subprocess.run([sys.executable, str(WORKER), "--mode", "single", "--out", str(tmp / "single")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return load(tmp, "single")


def check_grown(result: dict[str, Any]) -> None:
    counters = result["counters"]
    assert counters["germinations"] >= 2 and counters["prunes"] >= 1 and counters["fossilizations"] >= 1, counters
    assert any(k.startswith("fc1.seeds.0.") for k in result["weights"])  # the fossilized seed is in the model


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_on_the_union_batch(tmp_path: Path, single: dict[str, Any], mode: str) -> None:
    codes, out, _ = run_ranks(tmp_path, mode)
    assert codes == [0, 0], "\n".join(out)
    r0, r1 = load(tmp_path, mode, 0), load(tmp_path, mode, 1)
    check_grown(r0)
    assert r0["seeds"] == r1["seeds"] == single["seeds"]
    assert r0["hash"] == r1["hash"]  # Go's digest of the whole session state
    assert r0["counters"] == r1["counters"] == single["counters"]
    assert max_diff(r0["weights"], r1["weights"]) == 0.0
    assert max_diff(r0["weights"], single["weights"]) < 1e-6
    dist0 = r0["distributed"]
    assert dist0["world"] == 2 and dist0["state_checks"] == 5 and dist0["decisions"] >= 10
    assert 0 < dist0["agreement_max_s"] < 5


def test_tamiyo_decides_once_for_both_ranks(tmp_path: Path) -> None:
    """The heuristic policy (settings that make it grow every epoch and prune every held seed on its
    measured contribution): rank 0's decisions, broadcast, give both ranks the run of one process."""
    env = _env()
    env["ESPER_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, str(WORKER), "--mode", "single", "--policy", "heuristic", "--out",
                           str(tmp_path / "single")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    alone = load(tmp_path, "single")
    codes, out, _ = run_ranks(tmp_path, "ddp", "--policy", "heuristic")
    assert codes == [0, 0], "\n".join(out)
    r0, r1 = load(tmp_path, "ddp", 0), load(tmp_path, "ddp", 1)
    counters = r0["counters"]
    assert counters["germinations"] >= 2 and counters["prunes"] >= 1 and counters["decisions"] >= 3, counters
    assert r0["seeds"] == r1["seeds"] == alone["seeds"] and r0["counters"] == alone["counters"]
    assert r0["hash"] == r1["hash"]
    assert max_diff(r0["weights"], r1["weights"]) == 0.0
    assert max_diff(r0["weights"], alone["weights"]) < 1e-6


def test_fsdp2_checkpoint_resumes_and_rolls_back_like_one_process(tmp_path: Path) -> None:
    """FSDP2: every rank takes the state (whole tensors: torch.distributed.checkpoint's full state
    dicts for the model and optimizer, Esper's last good state gathered by morph.state_dict()), rank
    0 writes it after epoch 2 and the run stops; a new run of 2 ranks loads it, and at epoch 3 a
    NaN loss on every rank makes the governor roll back to the checkpoint's last good state (each
    rank cutting its shards from the whole tensors). The result equals one process that ran
    through, with the same NaN, on the union batch."""
    env = _env()
    env["ESPER_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, str(WORKER), "--mode", "single", "--nan-at", "3", "--out",
                           str(tmp_path / "single")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    alone = load(tmp_path, "single")
    assert alone["counters"]["rollbacks"] == 1
    ckpt = tmp_path / "ckpt.pt"
    codes, out, _ = run_ranks(tmp_path, "fsdp", "--checkpoint", str(ckpt), "--stop-after", "2")
    assert codes == [0, 0] and "rank 0: stopping after epoch 2" in out[0], "\n".join(out)
    codes, out, _ = run_ranks(tmp_path, "fsdp", "--checkpoint", str(ckpt), "--nan-at", "3")
    assert codes == [0, 0], "\n".join(out)
    assert "rank 1: resumed after epoch 2" in out[1]
    r0, r1 = load(tmp_path, "fsdp", 0), load(tmp_path, "fsdp", 1)
    assert r0["start"] == 3 and r0["counters"] == alone["counters"]
    assert r0["seeds"] == r1["seeds"] == alone["seeds"] and r0["hash"] == r1["hash"]
    assert max_diff(r0["weights"], r1["weights"]) == 0.0
    assert max_diff(r0["weights"], alone["weights"]) < 1e-6


def test_without_esper_synchronisation_the_ranks_diverge(tmp_path: Path, single: dict[str, Any]) -> None:
    """Negative control: the same DDP run with the test-only switch off diverges, between the ranks
    and from the single process (the seeds' gradients are no longer averaged)."""
    codes, out, _ = run_ranks(tmp_path, "ddp", "--unsynced")
    assert codes == [0, 0], "\n".join(out)
    r0, r1 = load(tmp_path, "ddp", 0), load(tmp_path, "ddp", 1)
    check_grown(r0)
    assert r0["distributed"] is None
    assert max_diff(r0["weights"], r1["weights"]) > 1e-3
    assert max_diff(r0["weights"], single["weights"]) > 1e-3


def test_a_drifted_session_is_named_on_every_rank(tmp_path: Path) -> None:
    """Rank 1's Go session is stepped once behind Esper's back during epoch 1: at that epoch's end
    both ranks stop with RankDivergenceError naming the first part that differs (the step)."""
    codes, out, _ = run_ranks(tmp_path, "ddp", "--desync-at", "1")
    assert codes[0] != 0 and codes[1] != 0, "\n".join(out)
    for text in out:
        assert "RankDivergenceError: rank 1's session state differs from rank 0's at the end of epoch 1" in text, text
        assert "first difference in 'step': rank 0 has step 8, rank 1 has step 9" in text, text


def test_a_killed_rank_stops_the_other_and_leaves_the_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    codes, out, elapsed = run_ranks(tmp_path, "ddp", "--checkpoint", str(ckpt), "--die-at", "2",
                                    "--rank-timeout", "30", timeout=90)
    assert codes[1] == -9, out[1]
    assert codes[0] != 0, out[0]
    assert "esper.distributed.RankError: rank 0: wait for every rank at the end of epoch 2 failed" in out[0], out[0]
    assert "Another rank has died, hangs" in out[0]
    assert elapsed < 25  # a dead rank fails the barrier at once, well before the 30 s timeout
    state = torch.load(ckpt, weights_only=True)  # the last good checkpoint: epoch 1, complete
    assert state["epoch"] == 1 and state["morph"]["epoch"] == 2
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_a_hung_rank_stops_the_other_within_the_timeout(tmp_path: Path) -> None:
    codes, out, elapsed = run_ranks(tmp_path, "ddp", "--hang-at", "1", "--rank-timeout", "5", timeout=90,
                                    after_first=3)
    assert codes[0] not in (0, -9), out[0]  # rank 0 stopped by itself, with an error
    assert "RankError: rank 0: wait for every rank at the end of epoch 1 failed" in out[0], out[0]
    assert "Timed out waiting 5000ms" in out[0] and "the timeout is 5 s" in out[0]
    assert codes[1] == -9  # the hung rank was killed by the harness once rank 0 had stopped
    assert "rank 1: hanging at the end of epoch 1" in out[1]
    assert elapsed < 45  # start (about 10 s here), 2 epochs, then the 5 s timeout


def test_torchrun_restarts_a_killed_rank_and_the_job_resumes(tmp_path: Path) -> None:
    """Rank 1 kills itself after epoch 2 (on the first attempt only); torchrun --max-restarts 1
    restarts both ranks, which load rank 0's checkpoint of epoch 2 and finish: the result equals an
    uninterrupted run."""
    ckpt = tmp_path / "ckpt.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
           "--monitor-interval", "0.5", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(WORKER), "--mode", "ddp", "--out", str(tmp_path / "elastic"), "--checkpoint", str(ckpt),
           "--die-at", "2", "--rank-timeout", "30"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "rank 1: killing myself at the end of epoch 2" in log
    assert "rank 0: resumed after epoch 1 (restart 1)" in log and "rank 1: resumed after epoch 1 (restart 1)" in log
    r0, r1 = load(tmp_path, "elastic", 0), load(tmp_path, "elastic", 1)
    assert r0["start"] == r1["start"] == 2
    assert r0["hash"] == r1["hash"] and max_diff(r0["weights"], r1["weights"]) == 0.0
    codes, out, _ = run_ranks(tmp_path, "ddp")  # the same run, uninterrupted
    assert codes == [0, 0], "\n".join(out)
    plain = load(tmp_path, "ddp", 0)
    check_grown(plain)
    assert r0["seeds"] == plain["seeds"]
    assert max_diff(r0["weights"], plain["weights"]) < 1e-12


def test_distributed_setting_is_checked() -> None:
    model = esper.wrap(torch.nn.Sequential(torch.nn.Linear(4, 4)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match='distributed="on" needs torch.distributed.init_process_group'):
        esper.Morphogenesis(model, opt, distributed="on")
    with pytest.raises(ValueError, match='distributed must be "auto", "on" or "off"'):
        esper.Morphogenesis(model, opt, distributed="yes")
    morph = esper.Morphogenesis(model, opt)  # no process group: one process, nothing synchronised
    assert "distributed" not in morph.stats()
    morph.close()


def test_bench_section_measures_agreement_and_overhead(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make bench`'s distributed rows run end to end (figures are for the bench, not asserted)."""
    from esper.bench import ranks

    monkeypatch.setenv("PYTHONPATH", str(REPO / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = {r.name: r for r in ranks.distributed_rows(rounds=5, quick=True)}
    assert set(rows) == {"2-rank DDP train step, Esper dormant",
                         "2-rank DDP train step, Esper active (1 seed per layer, TRAINING)",
                         "decision agreement: rank 0 decides -> every rank applied (2 ranks)",
                         "plain DDP throughput, 2 ranks (samples/s)",
                         "Esper dormant under DDP throughput, 2 ranks (samples/s)"}
    for row in rows.values():
        assert row.value is not None and row.value > 0 and row.rounds >= 5, row
    agreement = rows["decision agreement: rank 0 decides -> every rank applied (2 ranks)"]
    assert agreement.rounds == 12 and agreement.target == "< 5 s" and agreement.ok is True
    assert rows["2-rank DDP train step, Esper dormant"].ratio is not None
