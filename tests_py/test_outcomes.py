"""Outcome records: every germination of a training run leaves one complete record in Urza."""

from __future__ import annotations

import functools
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import esper
from esper import cli
from esper.builds import clear_kernel_cache
from esper.errors import InvalidArgumentError
from esper.urza import Urza

README = Path(__file__).resolve().parent.parent / "README.md"

# Every key a record must carry, and those of its observation (the training data of later policies).
RECORD_KEYS = {"schema", "run_id", "seq", "layer", "layer_name", "slot", "policy", "reason", "observation",
               "blueprint_id", "template", "template_params", "blueprint", "host", "param_count",
               "flops_per_sample", "train_flops", "contributions", "final_state", "ended_by", "final_reason",
               "germinated_step", "germinated_epoch", "ended_step", "ended_epoch", "states", "written"}
OBSERVATION_KEYS = {"epoch", "step", "epochs", "metrics", "layer_signals", "global_signals", "params_used",
                    "max_params", "host_params", "seeds_active", "cooldowns"}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(16, 32)
        self.mlp.act = nn.ReLU()
        self.mlp.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class MyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(4 * 4 * 4, 16)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 4, 4) -> (B, 3)
        h = self.proj(torch.relu(self.conv(x)).flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def run_readme_loop(monkeypatch: pytest.MonkeyPatch, epochs: int, **tempo: Any) -> dict[str, Any]:
    """Runs the README's training loop as written; ``tempo`` shortens the lifecycle so that a few
    epochs of a tiny model see germinations (the README's own settings are kept)."""
    code = re.search(r"## Use it in your training loop\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README lost its usage example"
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def my_validation(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(xs)
        return float(loss_fn(logits, ys)), float((logits.argmax(1) == ys).float().mean())

    # The README's `import esper` gets the package with Morphogenesis given the tempo settings too.
    shim = types.ModuleType("esper")
    shim.__dict__.update(vars(esper))
    shim.Morphogenesis = functools.partial(esper.Morphogenesis, **tempo)
    monkeypatch.setitem(sys.modules, "esper", shim)
    scope: dict[str, Any] = {"MyModel": MyModel, "my_validation": my_validation, "loss_fn": loss_fn,
                             "epochs": epochs, "print": lambda *a: None,
                             "loader": [(xs[i:i + 16], ys[i:i + 16]) for i in range(0, 64, 16)]}
    exec(compile(code.group(1), str(README), "exec"), scope)  # noqa: S102 - our own README
    monkeypatch.setitem(sys.modules, "esper", esper)
    return scope


TEMPO = {"train_steps": 4, "blend_steps": 4, "patience": 1, "threshold": 0.5, "cooldown_epochs": 1,
         "signal_every": 2, "holding_epochs": 1, "min_gain": 0.0}


def outcomes_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert cli.main(["urza", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_readme_loop_leaves_one_complete_record_per_germination(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], esper_home: Path) -> None:
    scope = run_readme_loop(monkeypatch, epochs=14, **TEMPO)
    morph = scope["morph"]
    germinations = [e for e in morph.log if e["kind"] == "event" and e["to"] == "GERMINATED"]
    assert len(germinations) >= 2, "the loop must germinate for this test to mean anything"
    records = outcomes_cli(capsys, "outcomes", "--run", morph.run_id, "--json")
    assert len(records) == len(germinations)
    go_seeds = {(s["layer"], s["slot"]): s for s in morph.seeds()}
    for rec, ev in zip(records, germinations):
        fossilized = rec["final_state"] == "FOSSILIZED"
        assert set(rec) == RECORD_KEYS | ({"kernel_id"} if fossilized else set()), set(rec) ^ RECORD_KEYS
        assert set(rec["observation"]) == OBSERVATION_KEYS
        assert rec["schema"] == 1 and rec["run_id"] == morph.run_id
        assert (rec["layer"], rec["slot"], rec["germinated_step"]) == (ev["layer"], ev["slot"], ev["step"])
        assert rec["blueprint_id"] == ev["blueprint_id"] and rec["param_count"] == ev["param_count"] > 0
        assert rec["policy"] == "heuristic" and rec["reason"]
        assert rec["template"] == rec["blueprint"]["template"] and rec["template_params"] == rec["blueprint"]["params"]
        assert rec["host"] == rec["blueprint"]["host"] and rec["host"]["kind"]
        assert set(rec["observation"]["layer_signals"]) >= {"act_mean", "grad_norm", "eff_rank"}
        assert rec["observation"]["metrics"]["val_loss"] is not None
        assert rec["observation"]["max_params"] == 50_000
        # Timings: contiguous spans from the germination to the end.
        spans = rec["states"]
        assert spans[0]["state"] == "GERMINATED" and spans[0]["from_step"] == rec["germinated_step"]
        for a, b in zip(spans, spans[1:]):
            assert a["to_step"] == b["from_step"]
        assert spans[-1]["to_step"] == rec["ended_step"]
        # FLOPs: 3 x forward FLOPs x samples, over the spans the seed trained in (16 samples a step:
        # an image for the conv host, a feature vector for the linear ones).
        trained = sum(s["steps"] for s in spans if s["state"] in ("TRAINING", "BLENDING", "HOLDING"))
        assert rec["train_flops"] == 3 * rec["flops_per_sample"] * 16 * trained
        assert trained > 0 and rec["train_flops"] > 0
        # The final state is Go's: an ended seed left its slot; a seed in flight is where Go has it.
        if rec["ended_by"] == "in_flight":
            assert go_seeds[(rec["layer"], rec["slot"])]["state"] == rec["final_state"]
        else:
            assert rec["final_state"] in ("FOSSILIZED", "PRUNED", "ROLLED_BACK", "CANCELLED")
        if any(s["state"] == "HOLDING" and s["epochs"] for s in spans):
            c = rec["contributions"][-1]
            assert c["delta_loss"] == pytest.approx(c["val_loss_without"] - c["val_loss"])
    assert any(r["ended_by"] != "in_flight" for r in records), "at least one germination must have ended"
    # The default store is $ESPER_HOME/urza (a tmp folder here), and `esper urza runs` lists the run.
    runs = outcomes_cli(capsys, "runs", "--json")
    assert [r["run_id"] for r in runs] == [morph.run_id] and runs[0]["outcomes"] == len(records)
    assert (esper_home / "urza" / "outcomes" / morph.run_id).is_dir()
    assert outcomes_cli(capsys, "ls", "--kind", "outcome", "--json") == records
    # close(): the seeds in flight are written as ended by the run's end.
    morph.close()
    final = outcomes_cli(capsys, "outcomes", "--run", morph.run_id, "--json")
    assert len(final) == len(records)
    assert {r["ended_by"] for r in final} <= {"fossilized", "pruned", "rolled_back", "cancelled", "run_end"}


def test_records_are_written_at_lifecycle_ends_never_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["0"],
                       seeds_per_layer=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 8), torch.randn(32, 4)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": float(((m(x) - y) ** 2).mean())}

    morph = esper.Morphogenesis(model, opt, policy="manual", max_concurrent=2, signal_every=2, train_steps=2,
                                blend_steps=2, evaluate=evaluate)

    def steps(n: int) -> None:
        for _ in range(n):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)

    steps(4)
    morph.germinate(0, 0, "residual_mlp", width=4)
    morph.germinate(0, 1, "lowrank", rank=2)
    steps(8)
    morph._outcomes.flush()
    assert morph._outcomes.written == [], "nothing is written while seeds train"
    morph.end_epoch()
    morph._outcomes.flush()  # the writes run on the recorder's writer thread
    assert len(morph._outcomes.written) == 2  # both in flight, as last seen
    before = list(morph._outcomes.written)
    steps(8)
    morph.end_epoch()  # still in HOLDING, as at the last write: nothing new to write
    morph._outcomes.flush()
    assert morph._outcomes.written == before
    assert morph.seeds()[0]["state"] == morph.seeds()[1]["state"] == "HOLDING"
    morph.prune(0, 1, reason="test prune")
    with Urza() as store:
        recs = {r["slot"]: r for r in store.outcomes(morph.run_id)}
    assert recs[1]["ended_by"] == "pruned" and recs[1]["final_reason"] == "test prune"
    assert recs[1]["policy"] == "manual" and recs[1]["template"] == "lowrank"
    assert recs[0]["ended_by"] == "in_flight"
    morph.close()


def test_resumed_run_keeps_its_id_and_finishes_its_records() -> None:
    torch.manual_seed(0)

    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["0"])
        return model, torch.optim.SGD(model.parameters(), lr=0.05)

    x, y = torch.randn(32, 8), torch.randn(32, 4)
    model, opt = make()
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1, train_steps=2, blend_steps=2)
    for _ in range(3):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    morph.germinate(0, 0, "residual_mlp", width=4)
    morph.end_epoch(val_loss=1.0)
    ckpt = {"model": model.state_dict(), "opt": opt.state_dict(), "morph": morph.state_dict()}
    run_id = morph.run_id
    morph.close()

    model2, opt2 = make()
    morph2 = esper.Morphogenesis(model2, opt2, policy="manual", signal_every=1, train_steps=2, blend_steps=2)
    assert morph2.run_id != run_id  # a new run until a checkpoint says otherwise
    morph2.load_state_dict(ckpt["morph"])
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert morph2.run_id == run_id
    for _ in range(6):
        loss = ((model2(x) - y) ** 2).mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        morph2.step(loss)
    morph2.end_epoch(val_loss=0.9)
    morph2.prune(0, 0)
    morph2.close()
    with Urza() as store:
        recs = store.outcomes(run_id)
    assert len(recs) == 1  # the first run's "run_end" record was replaced by the resumed run's end
    assert recs[0]["ended_by"] == "pruned" and recs[0]["seq"] == 0
    assert [s["state"] for s in recs[0]["states"]][:3] == ["GERMINATED", "TRAINING", "BLENDING"]


def test_recording_off_writes_nothing_and_go_refuses_a_bad_record(esper_home: Path) -> None:
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = esper.Morphogenesis(model, opt, policy="manual", record_outcomes=False, signal_every=1)
    morph.germinate(0, 0, "residual_mlp", width=4)
    model(torch.randn(4, 8)).sum().backward()
    morph.step()
    morph.end_epoch(val_loss=1.0)
    morph.prune(0, 0)
    morph.close()
    assert not (esper_home / "urza" / "outcomes").exists()
    with Urza() as store:
        with pytest.raises(InvalidArgumentError, match="run_id"):
            store.put_outcome({"run_id": "../escape"})
        assert store.runs() == []


def test_a_store_that_cannot_be_opened_warns_and_training_goes_on(tmp_path: Path) -> None:
    clear_kernel_cache()  # as in a new process: the germination's build needs the store
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16)), target_modules=["0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=1, urza=str(blocker / "urza"))
    with pytest.warns(RuntimeWarning, match="no longer records to Urza"):
        morph.germinate(0, 0, "residual_mlp", width=4)
    assert morph.seeds()[0]["state"] == "GERMINATED" and model[0].seed(0) is not None
    assert morph.stats()["builds"]["builds"] == 1  # validated all the same, not recorded
    model(torch.randn(4, 8)).sum().backward()
    morph.step()
    morph.end_epoch(val_loss=1.0)
    morph.close()
