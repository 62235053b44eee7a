"""One source of truth across the boundary (issue 14 items 1 and 3).

Go is the only validator and hasher of blueprints: Python builds each seed from the id, IR and
parameter count of Go's GERMINATED event, checks the module against them, and reports a seed it
cannot build (or that does not check) through ``esper_session_seed_failed``; Go then removes it
with the reason. Every batch of events is mirrored whole. A checkpoint keeps the seeds once, in
Go's snapshot; halves that disagree are refused before anything is written.

The randomized test drives random manual moves, random IRs and template parameters (valid and
not) and injected build failures (a builder of Tezzeret's own table that raises for some ops: a
fault in our Python code, never a mock of the Go library), and checks after every call that Go's
seeds and Python's agree. Negative controls show the check catches a disagreement.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
import torch
from torch import nn

import esper
from esper import tezzeret
from esper.errors import EsperError
from esper.session import LIVE_STATES
from esper.tolaria import Morphogenesis

torch.set_num_threads(1)

HOSTS = {0: (8, 16), 1: (16, 4)}  # layer -> (in, out) of its linear host
SLOTS = 2


def make(**overrides: Any) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["0", "2"],
                       seeds_per_layer=SLOTS)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    settings: dict[str, Any] = dict(policy="manual", train_steps=2, blend_steps=3, embargo_steps=2, signal_every=1,
                                    max_concurrent=4)
    settings.update(overrides)
    return model, opt, esper.Morphogenesis(model, opt, **settings)


def disagreements(morph: Morphogenesis) -> list[str]:
    """Where Go's seeds (state, blueprint id, parameter count, alpha) and Python's differ."""
    out = []
    for s in morph.seeds():
        i, slot = s["layer"], s["slot"]
        layer = morph.layers[i]
        module = layer.seed(slot)
        where = f"{i}/{slot}"
        if layer.state(slot).name != s["state"]:
            out.append(f"{where}: Go {s['state']}, Python {layer.state(slot).name}")
        if s["state"] in LIVE_STATES:
            if module is None:
                out.append(f"{where}: Go {s['state']} with blueprint {s['blueprint_id'][:12]}, Python holds no module")
                continue
            count = sum(p.numel() for p in module.parameters())
            if module.blueprint_id != s["blueprint_id"] or count != s["param_count"]:
                out.append(f"{where}: Go {s['blueprint_id'][:12]} ({s['param_count']} parameters), Python "
                           f"{module.blueprint_id[:12]} ({count})")
            if abs(layer.alpha(slot) - s["alpha"]) > 1e-6:
                out.append(f"{where}: Go alpha {s['alpha']}, Python {layer.alpha(slot)}")
        elif module is not None:
            out.append(f"{where}: Go {s['state']} (no seed), Python holds a module")
    return out


def assert_agree(morph: Morphogenesis, what: str) -> None:
    bad = disagreements(morph)
    assert not bad, f"after {what}: " + "; ".join(bad)


def faulty_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tezzeret's builder raises for layernorm ops and for linear ops 7 wide (an injected fault)."""
    real = tezzeret._build_module

    def build(node: Any, device: Any, dtype: Any) -> nn.Module | None:
        if node.op == "layernorm" or (node.op == "linear" and node.attrs.get("out") == 7):
            raise RuntimeError(f"injected build failure for op {node.id!r} ({node.op})")
        return real(node, device, dtype)

    monkeypatch.setattr(tezzeret, "_build_module", build)


def random_ir(rng: random.Random, layer: int) -> dict[str, Any]:
    """A hand-written IR for the layer's host: valid, or not (a width that does not chain, an output
    not zero at init), with op ids that clash with nn.Module attributes now and then."""
    n_in, n_out = HOSTS[layer]
    kind = rng.choice(["ok", "ok", "bad_width", "not_zero"])
    width = rng.randint(1, 9)
    first = rng.choice(["a", "hidden", "training", "forward"])
    last: dict[str, Any] = {"in": width + (kind == "bad_width"), "out": n_out, "bias": rng.random() < 0.5}
    if kind != "not_zero":
        last["init"] = "zero"
    return {
        "version": 1, "host": {"kind": "linear", "in": n_in, "out": n_out}, "output": "out",
        "ops": [
            {"id": first, "op": "linear", "inputs": ["x"], "attrs": {"in": n_in, "out": width, "bias": True}},
            {"id": "act", "op": rng.choice(["relu", "gelu", "tanh", "silu"]), "inputs": [first]},
            {"id": "out", "op": "linear", "inputs": ["act"], "attrs": last},
        ],
    }


def random_blueprint(rng: random.Random, layer: int) -> tuple[Any, dict[str, Any]]:
    """(blueprint, params) for Morphogenesis.germinate: a template with random (also invalid)
    parameters, an unknown template, or a hand-written IR."""
    pick = rng.random()
    if pick < 0.35:
        return random_ir(rng, layer), {}
    template = rng.choice(["residual_mlp", "norm_mlp", "bottleneck", "lowrank", "linear", "conv3x3", "nonesuch"])
    params: dict[str, Any] = {}
    if template in ("residual_mlp", "norm_mlp", "bottleneck"):
        params["width"] = rng.choice([0, 2, 5, 7, 12])
        if rng.random() < 0.3:
            params["activation"] = rng.choice(["gelu", "tanh", "softplus"])
    elif template == "lowrank":
        params["rank"] = rng.choice([0, 1, 3, 7])
    if rng.random() < 0.1:
        params["init"] = "default"  # not a template parameter: Go refuses it
    return template, params


def train_step(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, x: torch.Tensor) -> None:
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    morph.step(loss)


def walk(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, rng: random.Random, calls: int,
         x: torch.Tensor) -> None:
    """``calls`` random moves; Go's and Python's seeds are compared after every one."""
    for n in range(calls):
        layer, slot = rng.randrange(len(HOSTS)), rng.randrange(SLOTS)
        move = rng.choice(["germinate", "germinate", "advance", "prune", "fossilize", "step", "step", "epoch"])
        what = f"call {n}: {move} {layer}/{slot}"
        try:
            if move == "germinate":
                blueprint, params = random_blueprint(rng, layer)
                what += f" {blueprint if isinstance(blueprint, str) else 'IR'} {params}"
                morph.germinate(layer, slot, blueprint, **params)
            elif move == "advance":
                morph.advance(layer, slot)
            elif move == "prune":
                morph.prune(layer, slot)
            elif move == "fossilize":
                morph.fossilize(layer, slot)
            elif move == "step":
                for _ in range(rng.randint(1, 3)):
                    train_step(model, opt, morph, x)
            else:
                with torch.no_grad():
                    val_loss = float(model(x).pow(2).mean())
                morph.end_epoch(val_loss=val_loss)
        except EsperError:
            pass  # Go refused the move (state, budget, invalid blueprint): nothing changed on either side
        assert_agree(morph, what)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_moves_keep_go_and_python_in_agreement(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    faulty_builder(monkeypatch)
    model, opt, morph = make()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
    with morph:
        walk(model, opt, morph, random.Random(seed), 260, x)
        seen = {"germinated": 0, "build_failed": 0, "fossilized": 0, "pruned": 0}
        for entry in morph.log:
            if entry.get("kind") != "event":
                continue
            if entry["to"] == "GERMINATED":
                seen["germinated"] += 1
            elif entry["to"] == "FOSSILIZED":
                seen["fossilized"] += 1
            elif entry["to"] in ("CANCELLED", "PRUNED") and entry["reason"].startswith("seed failed to build"):
                seen["build_failed"] += 1
            elif entry["to"] == "PRUNED":
                seen["pruned"] += 1
        # The walk went through every path it is meant to test.
        assert all(v > 0 for v in seen.values()), seen
        # Every build failure reached Go's books too.
        assert morph.session.stats()["counters"]["failures"] >= seen["build_failed"]
        # The model still trains with whatever survived.
        train_step(model, opt, morph, x)
        assert_agree(morph, "the last step")


def test_negative_control_the_random_walk_catches_unreported_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same walk, with Python keeping its build failures to itself (Go is never told, as
    before the fix), fails its agreement check."""
    faulty_builder(monkeypatch)
    model, opt, morph = make()
    with morph:
        monkeypatch.setattr(morph.session, "seed_failed", lambda *args: [])
        with pytest.raises(AssertionError, match="Python holds no module"):
            walk(model, opt, morph, random.Random(0), 260, torch.randn(16, 8))


def clash_ir(layer: int = 0, op_id: str = "training") -> dict[str, Any]:
    """An IR Go accepts whose op id clashes with an nn.Module attribute: Tezzeret cannot build it."""
    n_in, n_out = HOSTS[layer]
    return {"version": 1, "host": {"kind": "linear", "in": n_in, "out": n_out}, "output": op_id,
            "ops": [{"id": op_id, "op": "linear", "inputs": ["x"],
                     "attrs": {"in": n_in, "out": n_out, "bias": True, "init": "zero"}}]}


def test_a_seed_python_cannot_build_is_removed_by_go_with_the_reason() -> None:
    model, opt, morph = make()
    with morph:
        events = morph.germinate(0, 0, clash_ir())
        assert events[0]["to"] == "GERMINATED" and events[0]["generation"] == 1
        assert events[1]["to"] == "CANCELLED" and events[1]["reason"].startswith("seed failed to build: ValueError")
        assert_agree(morph, "germinating an unbuildable seed")
        seed = morph.seeds()[0]
        assert seed["state"] in ("CANCELLED", "EMBARGOED", "RESETTING", "DORMANT")
        history = [h for h in seed["history"] if h["to"] == "CANCELLED"]
        assert history and "seed failed to build" in history[0]["reason"] and "'training'" in history[0]["reason"]
        failures = [e for e in morph.session.growth_log()["entries"] if e["kind"] == "failure"]
        assert failures and failures[-1]["failure"]["outcome"] == "seed failed to build: cancelled"
        # Training goes on (before the fix every step raised "slot 0 holds no seed").
        x = torch.randn(4, 8)
        for _ in range(5):
            train_step(model, opt, morph, x)
            assert_agree(morph, "a step")
        morph.germinate(0, 1, "residual_mlp", width=4)
        assert model[0].seed(1) is not None
        assert_agree(morph, "a good germination")


def test_negative_control_unreported_failure_is_a_disagreement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python keeping a build failure to itself (the old behaviour: Go GERMINATED, Python
    DORMANT) is what the agreement check catches."""
    _, _, morph = make()
    with morph:
        monkeypatch.setattr(morph.session, "seed_failed", lambda *args: [])
        morph.germinate(0, 0, clash_ir())
        bad = disagreements(morph)
        assert bad and "Go GERMINATED, Python DORMANT" in bad[0]


def test_negative_control_a_module_that_disagrees_with_go_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder that returns a module of another size is refused by the check against Go's
    parameter count and reported; without the check the two sides would disagree."""
    real = tezzeret._build_module

    def wider(node: Any, device: Any, dtype: Any) -> nn.Module | None:
        if node.op == "linear" and node.inputs == ("x",):
            node = node._replace(attrs={**node.attrs, "out": node.attrs["out"] + 1})
        return real(node, device, dtype)

    monkeypatch.setattr(tezzeret, "_build_module", wider)
    _, _, morph = make()
    with morph:
        morph.germinate(0, 0, "lowrank", rank=2)
        assert_agree(morph, "a germination whose module has another size")
        reason = [h for h in morph.seeds()[0]["history"] if h["to"] == "CANCELLED"][0]["reason"]
        assert "the module built has" in reason and "Go's blueprint" in reason
        monkeypatch.setattr(esper.tolaria, "_check_built", lambda module, ev: None)
        # Urza's first-build validation would refuse this module on its own (its forward fails).
        monkeypatch.setattr(morph._builds, "admit", lambda *args, **kwargs: "build")
        morph.germinate(0, 1, "lowrank", rank=2)
        bad = disagreements(morph)
        assert bad and "parameters" in bad[0]


def test_a_batch_is_mirrored_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch holding a seed that cannot be built, then a good germination and later steps'
    transitions of both: every event is mirrored, the failure reported, and the two sides agree."""
    model, opt, morph = make(train_steps=1)
    with morph:
        session = morph.session
        batch = session.germinate(0, 0, clash_ir())                 # Go: GERMINATED, not yet mirrored
        batch += session.germinate(1, 1, {"template": "residual_mlp", "params": {"width": 3}})
        session.step(2)
        batch += session.events()                                   # both seeds' GERMINATED -> TRAINING ...
        assert [e["to"] for e in batch][:2] == ["GERMINATED", "GERMINATED"] and len(batch) >= 4
        morph._apply(batch)
        assert model[2].seed(1) is not None and model[2].state(1).name != "GERMINATED"
        assert_agree(morph, "the batch")


def test_negative_control_a_batch_cut_short_loses_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mirroring that stops at the first failure (the old ``_apply``) loses the batch's later
    events: the agreement check sees it."""
    model, opt, morph = make(train_steps=1)

    def old_apply(events: list[dict[str, Any]]) -> None:
        for ev in events:
            if ev["to"] == "GERMINATED":
                morph._add_seed(int(ev["layer"]), int(ev["slot"]), ev)  # raises for the unbuildable seed
            else:
                morph._mirror(ev)

    with morph:
        session = morph.session
        batch = session.germinate(0, 0, clash_ir()) + session.germinate(1, 1, {"template": "residual_mlp"})
        monkeypatch.setattr(morph, "_apply", old_apply)
        with pytest.raises(ValueError, match="clashes"):
            morph._apply(batch)
        bad = disagreements(morph)
        assert any(b.startswith("0/0") for b in bad) and any(b.startswith("1/1") for b in bad)


# ----------------------------------------------------------------------------- checkpoints

def grown(width: int, advances: int) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    """A run with one seed of residual_mlp(width) in layer 0, slot 0: TRAINING after its first
    step, then advanced ``advances`` times (1: BLENDING, 2: HOLDING)."""
    model, opt, morph = make(train_steps=100, blend_steps=100)  # only the advances move the seed
    morph.germinate(0, 0, "residual_mlp", width=width)
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    train_step(model, opt, morph, x)
    for _ in range(advances):
        morph.advance(0, 0)
    train_step(model, opt, morph, x)
    return model, opt, morph


def v1(state: dict[str, Any], listed: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint in version 1's layout: a seed list beside Go's snapshot."""
    old = copy.copy(state)
    old["version"], old["seeds"] = 1, listed
    return old


def listed_seeds(morph: Morphogenesis) -> list[dict[str, Any]]:
    """What version 1 stored: Python's own list of the seeds."""
    return [{"layer": i, "slot": slot, "ir": layer.seed(slot).ir, "state": layer.state(slot).name,
             "alpha": layer.alpha(slot)}
            for i, layer in enumerate(morph.layers) for slot in range(morph.slots) if layer.seed(slot) is not None]


def fresh_is_untouched(morph: Morphogenesis, model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(s["state"] == "DORMANT" for s in morph.seeds()) and morph.steps == 0
    assert not any(len(layer.seeds) for layer in morph.layers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_checkpoint_keeps_the_seeds_once_and_resumes() -> None:
    model, opt, morph = grown(width=4, advances=1)  # BLENDING
    state = morph.state_dict()
    assert state["version"] == 2 and "seeds" not in state
    model2, opt2, morph2 = make()
    morph2.load_state_dict(state)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert_agree(morph2, "load_state_dict")
    assert [(s["state"], s.get("blueprint_id")) for s in morph2.seeds()] == [(s["state"], s.get("blueprint_id"))
                                                                             for s in morph.seeds()]
    x = torch.randn(8, 8)
    torch.testing.assert_close(model2(x), model(x), rtol=0, atol=0)
    morph.close()
    morph2.close()


def test_version_1_checkpoint_whose_halves_disagree_is_refused_naming_it() -> None:
    """The issue's case: a seed list that says HOLDING with a wider IR, Go's snapshot TRAINING."""
    _, _, training = grown(width=4, advances=0)     # TRAINING, residual_mlp width 4
    _, _, holding = grown(width=16, advances=2)     # HOLDING, width 16
    state = v1(training.state_dict(), listed_seeds(holding))
    ids = (training.seeds()[0]["blueprint_id"][:12], holding.seeds()[0]["blueprint_id"][:12])
    counts = (training.seeds()[0]["param_count"], holding.seeds()[0]["param_count"])
    model, _, fresh = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        fresh.load_state_dict(state)
    message = str(e.value)
    assert "halves disagree on seed 0/0" in message and "Nothing was loaded" in message
    assert f"says HOLDING with blueprint {ids[1]} ({counts[1]} parameters" in message
    assert f"Go's snapshot says TRAINING with blueprint {ids[0]} ({counts[0]} parameters" in message
    fresh_is_untouched(fresh, model, before)
    # Negative control: the same version 1 checkpoint with its own seed list loads.
    fresh.load_state_dict(v1(training.state_dict(), listed_seeds(training)))
    assert_agree(fresh, "a version 1 checkpoint that agrees")
    assert fresh.seeds()[0]["state"] == "TRAINING"
    for m in (training, holding, fresh):
        m.close()


def test_model_weights_of_other_seeds_are_refused_before_anything_is_written() -> None:
    narrow_model, _, narrow = grown(width=4, advances=0)
    wide_model, _, wide = grown(width=16, advances=0)
    model, _, fresh = make()
    fresh.load_state_dict(narrow.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError) as e:
        model.load_state_dict(wide_model.state_dict())
    message = str(e.value)
    assert "does not fit the seed rebuilt from the Morphogenesis checkpoint" in message
    assert "0.seeds.0" in message and narrow.seeds()[0]["blueprint_id"][:12] in message
    assert "Nothing was loaded" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing written
    model.load_state_dict(narrow_model.state_dict())  # negative control: the matching half loads
    for m in (narrow, wide, fresh):
        m.close()


def test_last_good_weights_of_another_seed_are_refused() -> None:
    _, _, narrow = grown(width=4, advances=0)
    _, _, wide = grown(width=16, advances=0)
    state = narrow.state_dict()
    state["last_good"] = wide.state_dict()["last_good"]
    model, _, fresh = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="last good weights hold '0.seeds.0.fc1.weight' with shape \\(16, 8\\)"):
        fresh.load_state_dict(state)
    fresh_is_untouched(fresh, model, before)
    for m in (narrow, wide, fresh):
        m.close()


def test_a_checkpoint_seed_that_cannot_be_rebuilt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, run = grown(width=7, advances=0)
    state = run.state_dict()
    faulty_builder(monkeypatch)  # linear ops 7 wide no longer build
    model, _, fresh = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="seed 0/0 \\(TRAINING, blueprint .* cannot be rebuilt: RuntimeError: "
                                         "injected build failure"):
        fresh.load_state_dict(state)
    fresh_is_untouched(fresh, model, before)
    run.close()
    fresh.close()


def test_seed_failed_through_the_abi_refuses_what_it_cannot_do() -> None:
    """esper_session_seed_failed: generation < 1 and bad indices are refused (INVALID), a
    fossilized seed is final (STATE), a report for a generation that is gone is ignored."""
    _, _, morph = make(train_steps=100, blend_steps=100)
    with morph:
        session = morph.session
        with pytest.raises(esper.InvalidArgumentError, match="generation 0 must be >= 1"):
            session.seed_failed(0, 0, 0, "x")
        with pytest.raises(esper.InvalidArgumentError, match="layer must be in"):
            session.seed_failed(5, 0, 1, "x")
        morph.germinate(0, 0, "linear")
        assert session.seed_failed(0, 0, 2, "another generation") == []
        assert morph.seeds()[0]["state"] == "GERMINATED"
        for _ in range(4):
            morph.advance(0, 0)
        assert morph.seeds()[0]["state"] == "FOSSILIZED"
        with pytest.raises(esper.StateError, match="fossilized seed is final"):
            session.seed_failed(0, 0, 1, "x")
        assert_agree(morph, "refused reports")
