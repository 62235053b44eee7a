"""esper.export: merged and branched fossilized seeds, dropped live seeds, the original untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx, nn

from esper.export import export
from esper.kasmina import KasminaLayer
from esper.tezzeret import build_seed
from esper.wrap import wrap

HOST = {"kind": "linear", "in": 6, "out": 4}


def lin(op_id: str, src: str, i: int, o: int, bias: bool, zero: bool = False) -> dict:
    return {"id": op_id, "op": "linear", "inputs": [src],
            "attrs": {"in": i, "out": o, "bias": bias, **({"init": "zero"} if zero else {})}}


LOWRANK = {"version": 1, "host": HOST, "ops": [lin("down", "x", 6, 2, False), lin("up", "down", 2, 4, False, True)],
           "output": "up"}
BIASED = {"version": 1, "host": HOST, "ops": [lin("a", "x", 6, 3, True), lin("b", "a", 3, 4, True, True)],
          "output": "b"}
MLP = {"version": 1, "host": HOST, "ops": [lin("fc1", "x", 6, 5, True), {"id": "act", "op": "tanh", "inputs": ["fc1"]},
                                           lin("fc2", "act", 5, 4, True, True)], "output": "fc2"}


def model_with(irs: list[dict], states: list[str], bias: bool = True) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(6, 4, bias=bias), nn.Tanh()), target_modules=["0"],
                 seeds_per_layer=len(irs))
    layer = model[0]
    for slot, (ir, state) in enumerate(zip(irs, states)):
        seed = build_seed(ir)
        with torch.no_grad():
            for p in seed.parameters():
                p.normal_(0, 0.5)
        layer.add_seed(slot, seed)
        for s in ("TRAINING", "BLENDING", "HOLDING", "FOSSILIZED")[:("TRAINING", "BLENDING", "HOLDING",
                                                                    "FOSSILIZED").index(state) + 1]:
            layer.set_state(slot, s, 0.4 if s == "BLENDING" else None)
    return model.eval(), torch.randn(5, 6)


def test_mergeable_seeds_merge_into_the_host_weight() -> None:
    model, x = model_with([LOWRANK, BIASED], ["FOSSILIZED", "FOSSILIZED"])
    layer: KasminaLayer = model[0]
    expected = model(x)
    w, b = layer.base_layer.weight.detach().clone(), layer.base_layer.bias.detach().clone()
    plain = export(model)
    assert type(plain[0]) is nn.Linear
    dw = (layer.seed(0).up.weight @ layer.seed(0).down.weight + layer.seed(1).b.weight @ layer.seed(1).a.weight)
    torch.testing.assert_close(plain[0].weight, w + dw.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.equal(plain[0].bias, b)
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.base_layer.weight, w) and torch.equal(model(x), expected)  # original untouched
    assert set(plain.state_dict()) == {"0.weight", "0.bias"}


def test_a_host_without_bias_gains_one_when_the_seed_has_a_bias() -> None:
    model, x = model_with([BIASED], ["FOSSILIZED"], bias=False)
    plain = export(model)
    assert isinstance(plain[0].bias, nn.Parameter) and plain[0].bias.requires_grad
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)
    model, x = model_with([LOWRANK], ["FOSSILIZED"], bias=False)
    assert export(model)[0].bias is None


def test_other_seeds_become_branches_and_live_seeds_are_dropped() -> None:
    model, x = model_with([MLP, LOWRANK, MLP], ["FOSSILIZED", "BLENDING", "HOLDING"])
    layer = model[0]
    plain = export(model)
    # The host itself, holding the branch and adding it with a forward hook (a GraphModule).
    assert type(plain[0]) is nn.Linear and plain[0].in_features == 6
    (hook,) = plain[0]._forward_hooks.values()
    assert isinstance(hook, fx.GraphModule) and type(hook).__name__ == "SeedBranches"
    assert isinstance(plain[0].seeds["0"], fx.GraphModule) and hook.seeds.get_submodule("0") is plain[0].seeds["0"]
    with torch.no_grad():
        expected = torch.tanh(layer.base_layer(x) + layer.seed(0)(x))
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    assert not torch.allclose(plain(x), torch.tanh(nn.functional.linear(x, plain[0].weight, plain[0].bias)))
    assert sorted(plain.state_dict()) == [
        "0.bias", "0.seeds.0.fc1.bias", "0.seeds.0.fc1.weight", "0.seeds.0.fc2.bias", "0.seeds.0.fc2.weight",
        "0.weight"]
    assert not any(type(m).__module__.startswith("esper") for m in [*plain.modules(), *hook.modules()])
    again = copy.deepcopy(plain)
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again(x), plain(x))
    with torch.no_grad():
        again[0].seeds["0"].fc2.weight.zero_()
        again[0].seeds["0"].fc2.bias.zero_()
    # The copy's hook runs the copy's seed (shared, not a stale reference to the original's).
    host_only = torch.tanh(nn.functional.linear(x, again[0].weight, again[0].bias))
    assert torch.equal(again(x), host_only) and not torch.equal(again(x), plain(x))


def test_non_finite_merge_writes_nothing() -> None:
    model, x = model_with([LOWRANK], ["FOSSILIZED"])
    with torch.no_grad():
        model[0].seed(0).up.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite weights; nothing was written"):
        export(model)
    assert isinstance(model[0], KasminaLayer)


def test_export_of_a_model_without_kasmina_layers_is_a_copy() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    plain = export(model)
    assert plain is not model and torch.equal(plain[0].weight, model[0].weight)


def test_a_branch_on_a_host_with_submodules_becomes_a_residual_graph_module() -> None:
    """Adding a child to an nn.Sequential would add a step to its forward: such a host is kept whole
    as ``base_layer`` of a GraphModule that adds the branch."""
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)), nn.Tanh()),
                 block_modules=["0"])
    layer = model[0]
    seed = build_seed({**MLP, "host": {"kind": "block", "in": 6, "out": 4}})
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_(0, 0.5)
    layer.add_seed(0, seed)
    for state in ("TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"):
        layer.set_state(0, state, 0.4 if state == "BLENDING" else None)
    x = torch.randn(5, 6)
    plain = export(model.eval())
    assert isinstance(plain[0], fx.GraphModule) and type(plain[0]).__name__ == "Residual"
    assert type(plain[0].base_layer) is nn.Sequential and len(plain[0].base_layer) == 3
    assert torch.equal(plain(x), model(x))
    with torch.no_grad():
        assert not torch.allclose(plain(x), torch.tanh(layer.base_layer(x)))
