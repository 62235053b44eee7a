"""Training FLOPs in the run log and ``esper report``: Go counts the wrapped layers' and their live
seeds' forward x 3 x the samples each step passed (docs/events.md, "Training FLOPs"); the report
plots the losses and metric against them as well as against steps. Checked on the real ``esper.wrap``
+ ``Morphogenesis`` loop against hand counts, with a log stripped of the field (a log written before
it existed) as the negative control."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import cli, oona, report

BATCH = 32
# Hand counts, Karn's units (a multiply-add 2 FLOPs, a bias add 1), per sample (a feature vector):
# Linear(4, 8) with bias: 2*4*8 + 8 = 72; Linear(8, 8) with bias: 2*8*8 + 8 = 136;
# a lowrank rank-2 seed on the 8 -> 8 layer (no bias): 2*8*2 + 2*2*8 = 64.
HOSTS, SEED = 72 + 136, 64
STEPS = 4


def _run(root: Path) -> dict[str, Any]:
    """Three epochs of the README loop; a seed germinated by hand after the first epoch."""
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model = esper.wrap(host, target_modules=["0", "2"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    morph = esper.Morphogenesis(model, opt, policy="manual", train_steps=100, blend_steps=2, signal_every=1,
                                runs=str(root))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 4, generator=g), torch.randint(0, 3, (BATCH,), generator=g)
    for epoch in range(3):
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        morph.end_epoch(val_loss=loss.item(), val_metric=0.5 + 0.1 * epoch)
        if epoch == 0:
            morph.germinate(1, 0, "lowrank", rank=2)
    stats = morph.session.stats()
    run = morph.run_id
    morph.close()
    return {"root": root, "run": run, "stats": stats}


def _epochs(root: Path, run: str) -> list[dict[str, Any]]:
    lines = (oona.run_dir(run, root) / "events.jsonl").read_text().splitlines()
    return [ev for ev in map(json.loads, lines) if ev["kind"] == "epoch"]


def _colored_right(png: Path) -> int:
    """Coloured pixels (plotted lines and marks; text and axes are grey) in the right column."""
    img = matplotlib.image.imread(png)[..., :3]
    right = img[:, img.shape[1] // 2 + 20:]
    return int(((right.max(axis=2) - right.min(axis=2)) > 0.3).sum())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESPER_HOME", str(tmp_path_factory.mktemp("flops_home")))
        return _run(tmp_path_factory.mktemp("runs"))


def test_epoch_events_carry_the_hand_counted_training_flops(run: dict[str, Any]) -> None:
    got = [ev["data"]["train_flops"] for ev in _epochs(run["root"], run["run"])]
    per_epoch = [3 * BATCH * STEPS * HOSTS, 3 * BATCH * STEPS * (HOSTS + SEED), 3 * BATCH * STEPS * (HOSTS + SEED)]
    want = list(np.cumsum(per_epoch))
    assert got == want, (got, want)
    assert got == sorted(got) and got[0] > 0
    assert run["stats"]["train_flops"] == want[-1]


def test_report_plots_against_flops_and_says_so(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert cli.main(["report", run["run"], "--root", str(run["root"]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    total = 3 * BATCH * STEPS * (3 * HOSTS + 2 * SEED)
    assert f"against {report.FLOPS_LABEL}: {total:.4g} at step {3 * STEPS}" in md, md
    assert report.NO_FLOPS not in md
    assert _colored_right(out / "losses.png") > 500  # the curves against FLOPs are drawn
    frame = report.render_frame(report.load(run["run"], root=run["root"]))
    assert f"train FLOPs {total:.3g}" in frame, frame


def test_a_log_without_flops_renders_without_flops_plots(run: dict[str, Any], tmp_path: Path) -> None:
    """Negative control: the same log with train_flops removed from its epoch events."""
    src = oona.run_dir(run["run"], run["root"]) / "events.jsonl"
    root = tmp_path / "old"
    dest = oona.run_dir(run["run"], root)
    dest.mkdir(parents=True)
    lines = []
    for line in src.read_text().splitlines():
        ev = json.loads(line)
        if ev["kind"] == "epoch":
            del ev["data"]["train_flops"]
        lines.append(json.dumps(ev))
    (dest / "events.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rep"
    assert cli.main(["report", run["run"], "--root", str(root), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert f"plotted against optimizer steps only: {report.NO_FLOPS}" in md, md
    assert _colored_right(out / "losses.png") == 0  # the FLOPs column says there are none
    assert "train FLOPs -" in report.render_frame(report.load(run["run"], root=root))
