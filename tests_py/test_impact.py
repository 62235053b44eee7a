"""Impact analysis with a prediction in the user's loop: ``policy="learned"`` with the shipped value
model grows a seed, the trainer measures its contribution, and when the adaptation ends Go compares
the model's prediction (a gain per host-epoch, times the compute the seed cost) with the measured
relative gain. The record reaches ``morph.log``, the run log and ``esper report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

import esper
from esper import cli, oona


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _run(root: Path, by_hand: bool = False, **config: Any) -> tuple[str, list[dict[str, Any]], str]:
    """The README loop on a small task for 6 epochs (``by_hand``: a seed germinated by a call after
    the first epoch's steps); any seed still in HOLDING at the end is fossilized by hand so that its
    adaptation ends. Returns the run id, ``morph.log`` and the run's metrics text at the end."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(96, 8, generator=g)
    ys = (xs[:, 0] * xs[:, 1] > 0).long() + (xs[:, 2] > 0.5).long()
    model = MLP()
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = m(xs)
        return {"loss": float(loss_fn(logits, ys)), "metric": float((logits.argmax(1) == ys).float().mean())}

    morph = esper.Morphogenesis(model, opt, evaluate=evaluate, runs=str(root), train_steps=4, blend_steps=4,
                                holding_epochs=1, signal_every=2, cooldown_epochs=1, max_params=5_000, epochs=6,
                                **config)
    for epoch in range(6):
        for i in range(0, 96, 16):
            loss = loss_fn(model(xs[i:i + 16]), ys[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        if by_hand and epoch == 0:
            morph.germinate(0, 0, "residual_mlp", width=16)
        morph.end_epoch()
    for i, layer in enumerate(morph.layers):
        if layer.state(0).name == "HOLDING":
            morph.fossilize(i, 0, reason="kept by the test")
    run, log, text = morph.run_id, list(morph.log), morph.metrics_text()
    morph.close()
    return run, log, text


def test_learned_policy_prediction_reaches_the_impact_record_and_the_report(tmp_path: Path, esper_home: Path) -> None:
    # The shipped model (value_model unset); a threshold under any prediction so that it grows at once.
    run, log, text = _run(tmp_path / "runs", policy="learned", value_threshold=-10.0)
    grows = {(e["layer"], e["slot"]): e for e in log if e["kind"] == "decision" and e["op"] == "germinate"
             and e.get("applied", True)}
    impacts = [e for e in log if e["kind"] == "impact"]
    assert grows and impacts, log
    measured = [im for im in impacts if im["measured_gain"] is not None]
    assert measured, impacts
    for im in impacts:
        decision = grows[(im["layer"], im["slot"])]
        assert im["unit"] == "relative_gain" and im["predictor"] == "value", im
        assert im["predicted_value"] == pytest.approx(decision["predicted_value"]), (im, decision)
        assert im["compute"] > 0 and im["predicted_gain"] == pytest.approx(im["predicted_value"] * im["compute"])
    run_log = oona.read_events(run, root=tmp_path / "runs", strict=True)
    for im in measured:
        # The measured gain is the delta over the loss without the seed (with it plus the delta), at the
        # last epoch that measured the seed before it ended (the run log's epoch events).
        val, delta = _last_measurement(run_log, im)
        assert im["measured_delta_loss"] == pytest.approx(delta)
        assert im["measured_gain"] == pytest.approx(delta / (val + delta))
        assert im["error"] == pytest.approx(im["measured_gain"] - im["predicted_gain"]) and im["note"] == ""
    # The run log holds the same records, and esper report says how far the predictions were off.
    events = [e["data"] for e in run_log if e["kind"] == "impact"]
    assert [(e["predictor"], e["predicted_gain"], e["error"]) for e in events] == \
        [(im["predictor"], im["predicted_gain"], im["error"]) for im in impacts]
    mae = sum(abs(im["error"]) for im in measured) / len(measured)
    assert events[-1]["running"]["mean_abs_error"] == pytest.approx(mae)
    assert _metric(text, "esper_prediction_abs_error") == pytest.approx(mae)
    out = tmp_path / "rep"
    assert cli.main(["report", run, "--root", str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    line = f"- impact: {len(impacts)} ended, {len(impacts)} with a prediction, {len(measured)} measured; mean |error| "
    assert line in md and f"over {len(measured)} compared (relative gains)" in md, md
    assert "| value |" in md and "relative_gain" in md, md


def _last_measurement(run_log: list[dict[str, Any]], im: dict[str, Any]) -> tuple[float, float]:
    """The validation loss and the seed's delta_loss of the last epoch event that measured the impact
    record's seed before it ended."""
    found: list[tuple[float, float]] = []
    for e in run_log:
        if e["kind"] != "epoch" or e["step"] > im["step"]:
            continue
        m = e["data"]["metrics"]
        for c in m.get("contributions") or []:
            if c["layer"] == im["layer"] and c["slot"] == im["slot"]:
                found.append((float(m["val_loss"]), float(c["delta_loss"])))
    assert found, im
    return found[-1]


def test_heuristic_policy_impact_says_no_prediction(tmp_path: Path, esper_home: Path) -> None:
    """The control: the same loop under the heuristic (which judges a seed germinated by hand, the
    loss never plateaus here) predicts nothing."""
    run, log, text = _run(tmp_path / "runs", by_hand=True, policy="heuristic", min_gain=0.0)
    impacts = [e for e in log if e["kind"] == "impact"]
    assert impacts and all(im["predicted_gain"] is None and im["note"] == "no prediction" and im["predictor"] == ""
                           for im in impacts), impacts
    out = tmp_path / "rep"
    assert cli.main(["report", run, "--root", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "0 with a prediction" in (out / "report.md").read_text()
    assert _metric(text, "esper_prediction_abs_error") is None


def _metric(text: str, name: str) -> float | None:
    """A label-free sample's value in a Prometheus text exposition (None when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None
