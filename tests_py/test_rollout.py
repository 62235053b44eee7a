"""Rolling deployment of a model published to Urza, in the user's loop: the learned policy's value
model and Karn's predictor. Versions published to Urza under a name, a run with
``value_model="urza:<name>"`` (or ``karn_predictor="urza:<name>"``) that switches to a newer version
at the next end of epoch, and goes back to the previous one when validation gets worse than before
the switch by more than the margin within K epochs; every switch and revert is in the run log (Oona)
of every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file
from test_value_model import MLP, TEMPO, feature_names, write_linear_model
from torch import nn

import esper
from esper import oona
from esper.cli import main
from esper.errors import CorruptError, InvalidArgumentError
from esper.urza import Urza


def models(tmp_path: Path) -> tuple[Path, Path]:
    """v1 never grows (every prediction -1, under the threshold); v2 grows a residual_mlp at once
    (value 1 + 0.01 log(1 + params) - 0.5 for residual_mlp, under 0 for the other templates)."""
    names = feature_names()
    v1 = write_linear_model(tmp_path / "v1", names, {}, -1.0)
    v2 = write_linear_model(tmp_path / "v2", names, {"tpl:residual_mlp": 1.0, "log_params": 0.01}, -0.5)
    return v1, v2


def write_predictor(folder: Path, per_log_param: float) -> Path:
    """A Karn predictor folder written by hand in Go's format (docs/karn.md): predicted gain =
    per_log_param * log(1 + params), clamped to [-100, 100]; +1 ranks the largest candidate first,
    -1 the smallest."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"mean": torch.zeros(1), "scale": torch.ones(1), "w": torch.tensor([per_log_param]),
               "b": torch.zeros(1)}, str(folder / "model.safetensors"))
    manifest = {"kind": "esper.karn.predictor", "schema": 1, "features": ["log_params"], "gain_lo": -100.0,
                "gain_hi": 100.0, "layouts": ["linear"], "records": 40, "runs": 4, "training": {"by": "hand"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def predictors(tmp_path: Path) -> tuple[Path, Path]:
    """v1 ranks the largest candidate first, v2 the smallest."""
    return write_predictor(tmp_path / "p1", 1.0), write_predictor(tmp_path / "p2", -1.0)


def active_of(snapshot: str, kind: str = "value_model") -> str:
    """The version in use of the rolling deployment of ``kind``, as Go's snapshot holds it."""
    (state,) = [r for r in json.loads(snapshot)["rollouts"] if r["kind"] == kind]
    return str(state["active"])


def run(epochs: int, val: list[float], between: Callable[[int], None] = lambda e: None,
        **config: Any) -> tuple[esper.Morphogenesis, list[dict[str, Any]], list[str]]:
    """The README's loop with the validation loss injected through ``evaluate`` (val[epoch]);
    ``between(e)`` runs after end_epoch of epoch e. Returns the (closed) Morphogenesis, every
    decision, and the active version after each end_epoch (Go's, from its snapshot)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 8, generator=g)
    ys = (xs[:, 0] > 0).long()
    model = MLP()
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    epoch = [0]

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"loss": val[epoch[0]]}

    morph = esper.Morphogenesis(model, opt, evaluate=evaluate, policy="learned", template="residual_mlp",
                                template_params={"width": 8}, max_params=5_000, epochs=epochs,
                                **{**TEMPO, "threshold": 0.0}, **config)
    decisions: list[dict[str, Any]] = []
    active: list[str] = []
    for e in range(epochs):
        epoch[0] = e
        for i in range(0, 64, 16):
            loss = loss_fn(model(xs[i:i + 16]), ys[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
        decisions += morph.end_epoch()["decisions"]
        active.append(active_of(morph.session.snapshot()))
        between(e)
    morph.close()
    return morph, decisions, active


def policy_events(morph: esper.Morphogenesis, esper_home: Path) -> list[dict[str, Any]]:
    return oona.read_events(morph.run_id, root=esper_home / "runs", kinds=["policy"], strict=True)


def test_publish_versions_content_addressed_and_verified(tmp_path: Path, esper_home: Path) -> None:
    v1, v2 = models(tmp_path)
    store = Urza()
    a = store.publish_model("value", v1)
    assert store.publish_model("value", v1) == a  # the same content is the same version
    b = store.publish_model("value", v2)
    assert a["id"] != b["id"] and len(a["id"]) == 64
    assert [v["id"] for v in store.models("value")] == [a["id"], b["id"]]
    assert store.models("other") == []
    with pytest.raises(InvalidArgumentError, match="model name"):
        store.publish_model("Bad Name", v1)
    with pytest.raises(InvalidArgumentError, match="value publish"):
        store.publish_model("value", tmp_path / "nothing-here")
    # A weights file changed in the store is refused when a run loads it.
    weights = Path(store.root) / "models" / "value" / f"{b['id']}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptError, match="weights hash to"):
        run(1, [1.0], value_model="urza:value")


def test_no_version_published_says_how_to_publish(esper_home: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="esper simic publish"):
        run(1, [1.0], value_model="urza:value")


def test_switch_at_the_next_epoch_boundary_then_revert_when_validation_worsens(tmp_path: Path,
                                                                               esper_home: Path) -> None:
    v1, v2 = models(tmp_path)
    store = Urza()
    a = store.publish_model("value", v1)["id"]
    published: dict[str, str] = {}

    def publish_v2(e: int) -> None:
        if e == 1:  # mid-run: between the end of epoch 1 and the end of epoch 2
            published["v2"] = store.publish_model("value", v2)["id"]

    # Epoch 2 (the switch) has validation 1.0; epoch 3 has 1.2, worse by 20% > the 5% margin.
    morph, decisions, active = run(6, [1.0, 1.0, 1.0, 1.2, 1.2, 1.2], publish_v2, value_model="urza:value",
                                   rollout_margin=0.05, rollout_epochs=2)
    b = published["v2"]
    assert active == [a, a, b, a, a, a]
    # v1 decides epochs 0-2 (waits), v2 epoch 3 (grows at once), v1 again after the revert.
    ops = [d["op"] for d in decisions]
    assert ops[:3] == ["wait"] * 3 and ops[3] == "germinate", ops
    assert decisions[3]["reason"].startswith("learned: ")
    changes = [e for e in morph.log if e["kind"] == "rollout"]
    assert [(c["action"], c["from"], c["to"], c["epoch"]) for c in changes] == \
        [("switch", a, b, 2), ("revert", b, a, 3)]
    assert changes[1]["baseline"] == 1.0 and changes[1]["val_loss"] == 1.2
    assert "worse than 1 before the switch at epoch 2" in changes[1]["reason"]
    # The run log (Oona) has both, with both versions' ids and the reason; v2 is never taken again.
    events = policy_events(morph, esper_home)
    assert [(e["data"]["action"], e["data"]["from"], e["data"]["to"], e["epoch"]) for e in events] == \
        [("switch", a, b, 2), ("revert", b, a, 3)]
    assert all(e["actor"] == "policy" and e["data"]["reason"] for e in events)


def test_negative_control_validation_not_worse_keeps_the_new_version(tmp_path: Path, esper_home: Path) -> None:
    v1, v2 = models(tmp_path)
    store = Urza()
    a = store.publish_model("value", v1)["id"]
    published: dict[str, str] = {}

    def publish_v2(e: int) -> None:
        if e == 1:
            published["v2"] = store.publish_model("value", v2)["id"]

    # Within the margin (1.04 <= 1.05), then better.
    morph, _, active = run(6, [1.0, 1.0, 1.0, 1.04, 0.9, 2.0], publish_v2, value_model="urza:value",
                           rollout_margin=0.05, rollout_epochs=2)
    b = published["v2"]
    # After K=2 epochs (3 and 4) the watch ends: the 2.0 of epoch 5 is no revert.
    assert active == [a, a, b, b, b, b]
    assert [(c["action"], c["to"]) for c in morph.log if c["kind"] == "rollout"] == [("switch", b)]
    assert [e["data"]["action"] for e in policy_events(morph, esper_home)] == ["switch"]


def test_rollout_state_survives_a_checkpoint(tmp_path: Path, esper_home: Path) -> None:
    """Go's snapshot carries the active version: a session restored from it uses that version even
    when a newer one is published (the switch waits for an end of epoch)."""
    v1, v2 = models(tmp_path)
    store = Urza()
    a = store.publish_model("value", v1)["id"]
    cfg = esper.MorphConfig(policy="learned", value_model="urza:value")
    layers = [{"name": "l", "kind": "linear", "in": 8, "out": 8}]
    s = esper.session.Session(cfg.session_config(layers, 1))
    snap = s.snapshot()
    b = store.publish_model("value", v2)["id"]
    t = esper.session.Session(cfg.session_config(layers, 1))
    assert active_of(t.snapshot()) == b  # a new session takes the newest
    t.restore(snap)
    assert active_of(t.snapshot()) == a
    assert rollout_part(t) == rollout_part(s)  # the state hash covers the active version
    t.end_epoch({"epoch": 0, "val_loss": 1.0})
    assert active_of(t.snapshot()) == b
    assert rollout_part(t) != rollout_part(s) and b[:12] in rollout_part(t)["summary"]


def rollout_part(s: esper.session.Session) -> dict[str, Any]:
    return next(p for p in s.state_hash()["parts"] if p["name"] == "rollout")


def test_cli_publish_and_versions(tmp_path: Path, esper_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1, _ = models(tmp_path)
    assert main(["simic", "publish", "--name", "value", str(v1)]) == 0
    (version,) = Urza().models("value")
    assert f"published value version {version['id']}" in capsys.readouterr().out
    assert main(["simic", "versions", "--name", "value"]) == 0
    assert version["id"] in capsys.readouterr().out
    assert main(["simic", "publish", "--name", "value", str(tmp_path / "nothing-here")]) != 0
    assert "value publish" in capsys.readouterr().err


def test_cli_karn_fit_publish_versions(tmp_path: Path, esper_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p1 = write_predictor(tmp_path / "p1", 1.0)
    assert main(["karn", "publish", "--name", "pred", str(p1)]) == 0
    (version,) = Urza().models("pred")
    assert f"published pred version {version['id']}" in capsys.readouterr().out
    assert main(["karn", "versions", "--name", "pred"]) == 0
    assert version["id"] in capsys.readouterr().out
    # A value model folder is no predictor: Go refuses it before anything is published.
    v1, _ = models(tmp_path)
    assert main(["karn", "publish", "--name", "pred", str(v1)]) != 0
    assert "esper.karn.predictor" in capsys.readouterr().err
    assert [v["id"] for v in Urza().models("pred")] == [version["id"]]
    # An empty store has nothing to fit on: the error says how many records there are.
    assert main(["karn", "fit", "--out", str(tmp_path / "fitted")]) != 0
    assert "0 measured records from 0 runs" in capsys.readouterr().err


def two_ranks(tmp_path: Path, esper_home: Path, val: str, *flags: str, kind: str = "value"
              ) -> tuple[list[int], list[str], dict[str, Any], dict[str, Any], str, str]:
    """2 gloo ranks of tests_py/rollout_worker.py sharing one store, v1 published first; returns their
    exit codes and output, each rank's result, and the ids of v1 and v2. ``kind`` is "value" (the
    value model "value") or "predictor" (Karn's predictor "pred")."""
    from test_distributed import _env, _free_port

    if kind == "value":
        (v1, v2), name = models(tmp_path), "value"
        a = Urza().publish_model(name, v1)["id"]
    else:
        (v1, v2), name = predictors(tmp_path), "pred"
        a = Urza().publish_predictor(name, v1)["id"]
    env = _env()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", ESPER_HOME=str(esper_home))
    worker = Path(__file__).resolve().parent / "rollout_worker.py"
    procs = [subprocess.Popen([sys.executable, str(worker), "--out", str(tmp_path / "r"), "--v2", str(v2),
                               "--val", val, "--kind", kind, *flags], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    codes = [p.returncode for p in procs]
    if codes != [0, 0]:
        return codes, outs, {}, {}, a, ""
    r0, r1 = (json.loads((tmp_path / f"r.rank{r}.json").read_text()) for r in range(2))
    (b,) = [v["id"] for v in Urza().models(name) if v["id"] != a]
    return codes, outs, r0, r1, a, b


def rank_events(esper_home: Path, result: dict[str, Any], rank: int, kinds: list[str]) -> list[tuple[Any, ...]]:
    """A rank's run log (Oona), less what only rank 0 records (the end of epoch's summary): each
    event as (kind, actor, epoch, what it says)."""
    fields = {"policy": ("artifact", "action", "from", "to"), "decision": ("op", "layer", "slot", "reason"),
              "lifecycle": ("layer", "slot", "from", "to"), "run": ("phase",)}
    events = oona.read_events(result["run"], rank=rank, root=esper_home / "runs", kinds=kinds, strict=True)
    return [(e["kind"], e["actor"], e["epoch"], tuple(e["data"][f] for f in fields[e["kind"]])) for e in events]


@pytest.mark.slow
def test_two_ranks_switch_and_revert_at_the_same_epoch(tmp_path: Path, esper_home: Path) -> None:
    """2 gloo ranks under DDP share one store; rank 0 alone publishes v2 after epoch 1 (rank 1 never
    looks at the store's versions: it takes rank 0's decision with its session state). Both ranks
    switch at the end of epoch 2 and revert at the end of epoch 3, with equal Go state digests."""
    codes, outs, r0, r1, a, b = two_ranks(tmp_path, esper_home, "1,1,1,1.2,1.2")
    assert codes == [0, 0], "\n".join(outs)
    assert r0["active"] == r1["active"] == [a, a, b, a, a]
    assert r0["hashes"] == r1["hashes"]
    for r in (r0, r1):
        assert [(c["action"], c["from"], c["to"], c["epoch"]) for c in r["rollout"]] == \
            [("switch", a, b, 2), ("revert", b, a, 3)]
    assert r0["counters"]["germinations"] >= 1  # v2 grew in epoch 3, on both ranks alike


@pytest.mark.slow
def test_two_ranks_opened_on_different_versions_take_rank_0s(tmp_path: Path, esper_home: Path) -> None:
    """v2 is published after rank 0's session opened (with v1) and before rank 1's (with v2): every
    rank takes rank 0's version when its session opens, then both switch to v2 at the end of epoch 0.
    Without that, the state-hash check at the end of epoch 0 stops the job."""
    codes, outs, r0, r1, a, b = two_ranks(tmp_path, esper_home, "1,1,1", "--v2-at-start")
    assert codes == [0, 0], "\n".join(outs)
    assert r0["active"] == r1["active"] == [b, b, b] and r0["hashes"] == r1["hashes"]
    assert [(c["action"], c["from"], c["to"], c["epoch"]) for c in r1["rollout"]] == [("switch", a, b, 0)]


@pytest.mark.slow
def test_two_ranks_run_logs_record_the_applied_decisions(tmp_path: Path, esper_home: Path) -> None:
    """Rank 1 takes rank 0's session state after every decision: its run log records what the
    decision did (the same decisions, transitions and switches as rank 0's, with the same actors),
    never a "resume". Rank 0's log is the reference, so a rank 1 that logged nothing would fail."""
    codes, outs, r0, r1, a, b = two_ranks(tmp_path, esper_home, "1,1,1,1.2,1.2")
    assert codes == [0, 0], "\n".join(outs)
    kinds = ["run", "decision", "lifecycle", "policy"]
    logs = [rank_events(esper_home, r, rank, kinds) for rank, r in ((0, r0), (1, r1))]
    assert logs[0] == logs[1]
    assert [e[1:] for e in logs[1] if e[0] == "policy"] == \
        [("policy", 2, ("value_model", "switch", a, b)), ("policy", 3, ("value_model", "revert", b, a))]
    assert [e[3] for e in logs[1] if e[0] == "run"] == [("start",), ("end",)]  # no resume at each decision
    assert any(e[0] == "decision" for e in logs[1]) and any(e[0] == "lifecycle" and e[1] == "policy" for e in logs[1])


def predictor_versions(decisions: list[dict[str, Any]]) -> set[str]:
    """The predictor versions (first 12 digits) that ranked Karn's candidates for an epoch's
    germinations, as their reasons name them."""
    mark = "predictor pred version "
    return {d["reason"].split(mark)[1][:12] for d in decisions if d["op"] == "germinate" and mark in d["reason"]}


@pytest.mark.slow
def test_two_ranks_predictor_switch_and_revert_at_the_same_epoch(tmp_path: Path, esper_home: Path) -> None:
    """Karn's predictor published to Urza (``karn_predictor="urza:pred"``), 2 gloo ranks under DDP: rank 0
    alone publishes v2 after epoch 1; both ranks rank Karn's candidates with v2 from the end of epoch
    2 and go back to v1 at the end of epoch 4 (validation 20% worse than before the switch), with
    equal Go state digests and decisions; both ranks' run logs record the switch and the revert."""
    codes, outs, r0, r1, a, b = two_ranks(tmp_path, esper_home, "1,1,1,1,1.2,1.2", kind="predictor")
    assert codes == [0, 0], "\n".join(outs)
    assert r0["active"] == r1["active"] == [a, a, b, b, a, a]
    assert r0["hashes"] == r1["hashes"] and r0["decisions"] == r1["decisions"]
    for r in (r0, r1):
        assert [(c["artifact"], c["action"], c["from"], c["to"], c["epoch"]) for c in r["rollout"]] == \
            [("karn_predictor", "switch", a, b, 2), ("karn_predictor", "revert", b, a, 4)]
    logs = [rank_events(esper_home, r, rank, ["policy", "run"]) for rank, r in ((0, r0), (1, r1))]
    assert logs[0] == logs[1]
    assert [e[1:] for e in logs[1] if e[0] == "policy"] == \
        [("policy", 2, ("karn_predictor", "switch", a, b)), ("policy", 4, ("karn_predictor", "revert", b, a))]
    assert [e[3] for e in logs[1] if e[0] == "run"] == [("start",), ("end",)]
    # Each germination's reason names the version in use when it was decided (the one active after
    # the previous end of epoch: a switch or revert comes after the epoch's decisions); both ranked.
    in_use = [a] + r0["active"][:-1]
    seen = set()
    for e, decided in enumerate(r0["decisions"]):
        versions = predictor_versions(decided)
        assert versions <= {in_use[e][:12]}, (e, versions)
        seen |= versions
    assert seen == {a[:12], b[:12]}, r0["decisions"]


@pytest.mark.slow
def test_two_ranks_predictor_negative_control_kept_within_the_margin(tmp_path: Path, esper_home: Path) -> None:
    """The same run with the validation within the margin after the switch (1.04 <= 1.05): both
    ranks keep v2, with no revert in either log; the watch ends after K=2 epochs, so the worse
    epoch 5 reverts nothing."""
    codes, outs, r0, r1, a, b = two_ranks(tmp_path, esper_home, "1,1,1,1.04,0.9,2.0", kind="predictor")
    assert codes == [0, 0], "\n".join(outs)
    assert r0["active"] == r1["active"] == [a, a, b, b, b, b]
    assert r0["hashes"] == r1["hashes"] and r0["decisions"] == r1["decisions"]
    for rank, r in ((0, r0), (1, r1)):
        assert [(c["action"], c["to"]) for c in r["rollout"]] == [("switch", b)]
        assert [e[3] for e in rank_events(esper_home, r, rank, ["policy"])] == [("karn_predictor", "switch", a, b)]


def test_checkpoint_resumes_on_the_version_in_use(tmp_path: Path, esper_home: Path) -> None:
    """``morph.state_dict()`` after the switch to v2 (end of epoch 1), then v3 published: a run resumed
    from it uses v2 (Go's snapshot says so), finishes v2's watch, then takes v3 up."""
    v1, v2 = models(tmp_path)
    v3 = write_linear_model(tmp_path / "v3", feature_names(), {}, -2.0)
    store = Urza()
    store.publish_model("value", v1)
    saved: dict[str, Any] = {}

    def between(e: int) -> None:
        if e == 0:
            saved["v2"] = store.publish_model("value", v2)["id"]
        if e == 1:
            saved["state"] = morphs[-1].state_dict()
            saved["v3"] = store.publish_model("value", v3)["id"]

    morphs: list[esper.Morphogenesis] = []
    orig = esper.Morphogenesis.__init__

    def keep(self: esper.Morphogenesis, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        morphs.append(self)

    esper.Morphogenesis.__init__ = keep  # type: ignore[method-assign]
    try:
        _, _, active = run(2, [1.0, 1.0], between, value_model="urza:value")
    finally:
        esper.Morphogenesis.__init__ = orig  # type: ignore[method-assign]
    assert active[1] == saved["v2"]
    model = MLP()
    esper.wrap(model, target_modules=["fc1", "fc2"], seeds_per_layer=1)
    morph = esper.Morphogenesis(model, torch.optim.SGD(model.parameters(), lr=1e-2), policy="learned",
                                value_model="urza:value")
    morph.load_state_dict(saved["state"])
    assert active_of(morph.session.snapshot()) == saved["v2"]
    morph.end_epoch(val_loss=1.0)  # epoch 2: v2's watch (switched at the end of epoch 1, K=2) goes on
    assert active_of(morph.session.snapshot()) == saved["v2"]
    morph.end_epoch(val_loss=1.0)  # epoch 3: the watch ends, v3 is taken up
    assert active_of(morph.session.snapshot()) == saved["v3"]
    last = [c for c in morph.log if c["kind"] == "rollout"][-1]
    assert (last["action"], last["from"], last["to"], last["epoch"]) == ("switch", saved["v2"], saved["v3"], 3)
    morph.close()
