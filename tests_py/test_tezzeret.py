"""Tezzeret: template-like IRs build, validate and round-trip their weights; bad IRs fail clearly."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from esper import karn
from esper.tezzeret import (
    OP_NAMES,
    SeedModule,
    SeedValidationError,
    build_seed,
    is_mergeable,
    load_weights,
    merged_delta,
    save_weights,
    validate_seed,
)

LIN = {"kind": "linear", "in": 8, "out": 6}
TOKENS = {"kind": "residual", "dim": 8}
CONV2 = {"kind": "conv2d", "in": 3, "out": 4, "kernel": 3, "stride": 2, "padding": 1}
CONV2_WIDE = {"kind": "conv2d", "in": 4, "out": 6, "kernel": 3, "stride": 2, "padding": 1}
CONV1 = {"kind": "conv1d", "in": 3, "out": 5, "kernel": 3, "stride": 1, "padding": 1}

# Host input shape and output shape for each host.
SHAPES = {
    "linear": ((4, 8), (4, 6)),
    "residual": ((2, 5, 8), (2, 5, 8)),
    "conv2d": ((2, 3, 8, 8), (2, 4, 4, 4)),
    "conv2d_wide": ((2, 4, 8, 8), (2, 6, 4, 4)),
    "conv1d": ((2, 3, 10), (2, 5, 10)),
}


def op(op_id: str, name: str, *inputs: str, **attrs) -> dict:
    return {"id": op_id, "op": name, "inputs": list(inputs), **({"attrs": attrs} if attrs else {})}


def lin(op_id: str, src: str, i: int, o: int, bias: bool = True, zero: bool = False) -> dict:
    return op(op_id, "linear", src, **{"in": i, "out": o, "bias": bias, **({"init": "zero"} if zero else {})})


def conv(nd: int, op_id: str, src: str, i: int, o: int, k: int, s: int, p: int, groups: int = 1,
         zero: bool = False) -> dict:
    attrs = {"in": i, "out": o, "kernel": k, "stride": s, "padding": p, "groups": groups, "bias": True}
    if zero:
        attrs["init"] = "zero"
    return op(op_id, f"conv{nd}d", src, **attrs)


def ir(template: str, host: dict, ops: list[dict], output: str, param_count: int) -> dict:
    return {"version": 1, "template": template, "host": host, "ops": ops, "output": output,
            "param_count": param_count}


# (name, IR, key of SHAPES): one per template of Karn's library, plus hand-written ones for add/groupnorm.
FIXTURES = [
    ("residual_mlp", ir("residual_mlp", LIN, [lin("fc1", "x", 8, 16), op("act", "relu", "fc1"),
                                             lin("fc2", "act", 16, 6, zero=True)], "fc2", 246), "linear"),
    ("lowrank", ir("lowrank", LIN, [lin("down", "x", 8, 2, bias=False),
                                   lin("up", "down", 2, 6, bias=False, zero=True)], "up", 28), "linear"),
    ("full_linear", ir("linear", LIN, [lin("proj", "x", 8, 6, bias=False, zero=True)], "proj", 48), "linear"),
    ("bottleneck", ir("bottleneck", LIN, [lin("reduce", "x", 8, 4), op("act1", "gelu", "reduce"),
                                         lin("mix", "act1", 4, 4), op("act2", "gelu", "mix"),
                                         lin("expand", "act2", 4, 6, zero=True)], "expand", 86), "linear"),
    ("norm_mlp", ir("norm_mlp", TOKENS, [op("norm", "layernorm", "x", dim=8), lin("fc1", "norm", 8, 16),
                                        op("act", "silu", "fc1"), lin("fc2", "act", 16, 8, zero=True)],
                    "fc2", 296), "residual"),
    ("conv3x3_stride", ir("conv3x3", CONV2, [conv(2, "conv1", "x", 3, 5, 3, 2, 1), op("act", "relu", "conv1"),
                                            conv(2, "conv2", "act", 5, 4, 3, 1, 1, zero=True)], "conv2", 324),
     "conv2d"),
    ("conv3x3_groupnorm", ir("", CONV2, [conv(2, "conv1", "x", 3, 6, 3, 2, 1),
                                        op("norm", "groupnorm", "conv1", groups=2, channels=6),
                                        op("act", "relu", "norm"), conv(2, "conv2", "act", 6, 4, 1, 1, 0, zero=True)],
                             "conv2", 168 + 12 + 28), "conv2d"),
    ("depthwise", ir("depthwise", CONV2_WIDE, [conv(2, "dw", "x", 4, 4, 3, 2, 1, groups=4), op("act", "silu", "dw"),
                                              conv(2, "pw", "act", 4, 6, 1, 1, 0, zero=True)], "pw", 70),
     "conv2d_wide"),
    ("se_gate", ir("se_gate", CONV2_WIDE, [conv(2, "branch", "x", 4, 6, 1, 2, 0, zero=True),
                                          op("pool", "avgpool_spatial", "x"),
                                          conv(2, "squeeze", "pool", 4, 1, 1, 1, 0),
                                          op("squeeze_act", "relu", "squeeze"),
                                          conv(2, "excite", "squeeze_act", 1, 6, 1, 1, 0),
                                          op("gate", "sigmoid", "excite"),
                                          op("out", "mul", "branch", "gate")], "out", 47), "conv2d_wide"),
    ("conv1d_block", ir("conv1d_block", CONV1, [conv(1, "conv1", "x", 3, 6, 3, 1, 1), op("act", "tanh", "conv1"),
                                               conv(1, "conv2", "act", 6, 5, 3, 1, 1, zero=True)], "conv2", 155),
     "conv1d"),
    ("attention_head", ir("attention_head", TOKENS, [op("norm", "layernorm", "x", dim=8),
                                                    op("attn", "attention", "norm", dim=8, heads=2, init="zero")],
                          "attn", 16 + 288), "residual"),
    # glu_mlp (gate sigmoid): value and gate 8->4 without bias (64), proj 4->6 (30).
    ("glu_mlp", ir("glu_mlp", LIN, [lin("value", "x", 8, 4, bias=False), lin("gate", "x", 8, 4, bias=False),
                                   op("gate_act", "sigmoid", "gate"), op("glu", "mul", "value", "gate_act"),
                                   lin("proj", "glu", 4, 6, zero=True)], "proj", 64 + 30), "linear"),
    # kron_adapter: A (3x2) zeroed, B (2x4).
    ("kron_adapter", ir("kron_adapter", LIN, [op("kron", "kron_linear", "x", **{"in": 8, "out": 6, "in_factor": 2,
                                                                              "out_factor": 3, "init": "zero"})],
                        "kron", 6 + 8), "linear"),
    ("lowrank_conv", ir("lowrank_conv", CONV2_WIDE, [op("down", "conv2d", "x", **{"in": 4, "out": 2, "kernel": 3,
                                                       "stride": 2, "padding": 1, "groups": 1, "bias": False}),
                                                    op("up", "conv2d", "down", **{"in": 2, "out": 6, "kernel": 1,
                                                       "stride": 1, "padding": 0, "groups": 1, "bias": False,
                                                       "init": "zero"})], "up", 72 + 12), "conv2d_wide"),
    # depthwise on conv1d, kernel 5, multiplier 2: dw 3->6 groups 3 (30 + 6), pw 6->5 (35).
    ("depthwise_1d", ir("depthwise", CONV1, [conv(1, "dw", "x", 3, 6, 5, 1, 2, groups=3), op("act", "mish", "dw"),
                                            conv(1, "pw", "act", 6, 5, 1, 1, 0, zero=True)], "pw", 36 + 35), "conv1d"),
    ("causal_attention", ir("attention_head", TOKENS, [op("norm", "layernorm", "x", dim=8),
                                                      op("attn", "attention", "norm", dim=8, heads=2, causal=True,
                                                         init="zero")], "attn", 16 + 288), "residual"),
    ("activations", ir("", LIN, [lin("a", "x", 8, 6, zero=True), op("b", "leaky_relu", "a"), op("c", "elu", "b"),
                                op("d", "hardswish", "c"), op("e", "mish", "d")], "e", 54), "linear"),
    ("two_paths", ir("", LIN, [lin("a", "x", 8, 6, zero=True), lin("b", "x", 8, 6, zero=True),
                              op("sum", "add", "a", "b")], "sum", 108), "linear"),
]
IDS = [f[0] for f in FIXTURES]


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def example(shape_key: str, seed: int = 1) -> tuple[torch.Tensor, tuple[int, ...]]:
    in_shape, out_shape = SHAPES[shape_key]
    return torch.randn(in_shape, generator=torch.Generator().manual_seed(seed)), out_shape


@pytest.mark.parametrize("name,blueprint,shapes", FIXTURES, ids=IDS)
def test_fixture_builds_validates_and_round_trips(name: str, blueprint: dict, shapes: str) -> None:
    seed = build_seed(blueprint, device="cpu", dtype=torch.float32)
    x, out_shape = example(shapes)
    report = validate_seed(seed, x, out_shape)
    assert report["ok"] and report["param_count"] == blueprint["param_count"] == seed.param_count
    assert report["output_shape"] == list(out_shape) and report["blueprint_id"] == karn.blueprint_id(blueprint)

    randomize(seed)
    blob = save_weights(seed)
    assert blob == save_weights(seed)  # deterministic bytes
    fresh = build_seed(blueprint)
    load_weights(fresh, blob)
    for (k, a), (k2, b) in zip(seed.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(seed(x), fresh(x))
    assert not torch.equal(seed(x), torch.zeros(out_shape))  # the random weights reach the output


@pytest.mark.parametrize("name,blueprint,shapes", FIXTURES, ids=IDS)
def test_graph_module_and_op_order(name: str, blueprint: dict, shapes: str) -> None:
    seed = build_seed(blueprint)
    randomize(seed)
    x, _ = example(shapes)
    graph_module = seed.to_graph_module()
    assert not any(type(m).__module__.startswith("esper") for m in graph_module.modules())
    assert torch.equal(graph_module(x), seed(x))

    shuffled = copy.deepcopy(blueprint)
    random.Random(0).shuffle(shuffled["ops"])  # Karn's ops come in any order
    other = build_seed(shuffled)
    load_weights(other, save_weights(seed))
    assert torch.equal(other(x), seed(x))


def test_init_zero_zeroes_weight_and_bias_and_ir_is_kept() -> None:
    blueprint = FIXTURES[0][1]
    seed = build_seed(blueprint, dtype=torch.float64)
    assert seed.fc2.weight.dtype == torch.float64
    assert not seed.fc2.weight.any() and not seed.fc2.bias.any() and seed.fc1.weight.any()
    assert seed.ir == blueprint and seed.ir is not blueprint
    assert seed.template == "residual_mlp" and len(seed.blueprint_id) == 64
    assert isinstance(seed, SeedModule) and set(OP_NAMES) >= {"linear", "attention", "avgpool_spatial"}


def test_blueprint_id_is_gos() -> None:
    """Go is the only hasher: a seed built without an id carries the id Go gives (equal for IRs that
    differ only in key order or a default "init"), and one built with an id keeps it unchecked."""
    blueprint = FIXTURES[0][1]
    reordered = dict(reversed(list(blueprint.items())))
    with_default = copy.deepcopy(blueprint)
    with_default["ops"][0]["attrs"]["init"] = "default"
    ids = {build_seed(b).blueprint_id for b in (blueprint, reordered, with_default)}
    assert ids == {karn.blueprint_id(blueprint)}
    changed = copy.deepcopy(blueprint)
    changed["ops"][0]["attrs"]["out"] = 17
    changed["ops"][2]["attrs"]["in"] = 17
    changed["param_count"] = 0
    assert build_seed(changed).blueprint_id not in ids
    assert build_seed(blueprint, blueprint_id="abc").blueprint_id == "abc"


def test_mergeable_and_merged_delta() -> None:
    by_name = {name: bp for name, bp, _ in FIXTURES}
    assert [n for n in IDS if is_mergeable(by_name[n])] == ["lowrank", "full_linear", "kron_adapter"]
    chain = ir("", LIN, [lin("a", "x", 8, 3), lin("b", "a", 3, 5), lin("c", "b", 5, 6, zero=True)], "c", 0)
    assert is_mergeable(chain)
    kron_chain = ir("", LIN, [op("k", "kron_linear", "x", **{"in": 8, "out": 4, "in_factor": 4, "out_factor": 2}),
                              lin("c", "k", 4, 6, zero=True)], "c", 0)
    assert is_mergeable(kron_chain)
    for blueprint in (by_name["lowrank"], chain, by_name["kron_adapter"], kron_chain):
        seed = build_seed(blueprint, dtype=torch.float64)
        randomize(seed)
        dw, db = merged_delta(seed)
        assert dw.shape == (6, 8) and db.shape == (6,) and dw.dtype == torch.float64
        x = torch.randn(4, 8, dtype=torch.float64)
        torch.testing.assert_close(seed(x), x @ dw.T + db, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not a chain of linear ops"):
        merged_delta(build_seed(by_name["residual_mlp"]))


def mutated(fn) -> dict:
    blueprint = copy.deepcopy(FIXTURES[0][1])
    fn(blueprint)
    return blueprint


def _set(path: list, value):
    def fn(b: dict) -> None:
        target = b
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return fn


# Refused by Go, the validator (build_seed without an id asks Go for it first); Go's words.
BAD = [
    ("unknown_op", _set(["ops", 1, "op"], "conv3d"), 'op "act": "conv3d" is not one of add, attention'),
    ("missing_attr", lambda b: b["ops"][0]["attrs"].pop("bias"), 'op "fc1" \\(linear\\): missing attribute "bias"'),
    ("bool_as_int", _set(["ops", 0, "attrs", "in"], True), 'attribute "in" must be an integer >= 1, got true'),
    ("zero_width", _set(["ops", 0, "attrs", "out"], 0), 'attribute "out" must be an integer >= 1, got 0'),
    ("float_width", _set(["ops", 0, "attrs", "out"], 2.5), 'op "fc1" attribute "out" must be an integer, got 2.5'),
    ("bad_init", _set(["ops", 2, "attrs", "init"], "ones"), 'attribute "init" must be "default" or "zero"'),
    ("unknown_attr", _set(["ops", 0, "attrs", "dropout"], 1), 'unknown attribute "dropout" \\(known: in, out'),
    ("wrong_width", _set(["ops", 2, "attrs", "in"], 17),
     'op "fc2" \\(linear\\): expects 17 features on the last dim, input is \\(\\*, 16\\)'),
    ("wrong_output", _set(["ops", 2, "attrs", "out"], 7),
     'output "fc2" has shape \\(\\*, 7\\), the linear host\'s output is \\(\\*, 6\\)'),
    ("unknown_input", _set(["ops", 1, "inputs"], ["nope"]), 'op "act": input "nope" is neither "x" nor an op id'),
    ("cycle", _set(["ops", 0, "inputs"], ["fc2"]), "cycle among ops act, fc1, fc2"),
    ("self_loop", _set(["ops", 1, "inputs"], ["act"]), 'op "act" takes its own output as input'),
    ("arity", _set(["ops", 1, "inputs"], ["fc1", "x"]), 'op "act" \\(relu\\) takes 1 input\\(s\\), got 2'),
    ("duplicate_id", _set(["ops", 1, "id"], "fc1"), 'duplicate op id "fc1"'),
    ("bad_id", _set(["ops", 1, "id"], "a.b"), 'id "a.b" must be an identifier'),
    ("dead_op", lambda b: b["ops"].append(op("extra", "relu", "x")), 'op "extra" does not reach the output "fc2"'),
    ("unknown_output", _set(["output"], "fc3"), 'output "fc3" is not an op id'),
    ("version", _set(["version"], 2), "version 2 is not supported"),
    ("host_kind", _set(["host", "kind"], "conv3d"), 'kind "conv3d" is not one of'),
    ("no_ops", _set(["ops"], []), "no ops"),
    ("heads", lambda b: b["ops"].insert(0, op("attn", "attention", "x", dim=8, heads=3)) or
     b["ops"][1]["inputs"].__setitem__(0, "attn"), "dim 8 must be divisible by heads 3"),
]


@pytest.mark.parametrize("name,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_ir_gives_a_clear_error(name: str, fn, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_seed(mutated(fn))


# What the builders themselves cannot build, given Go's id (the training path: Go accepted the IR,
# so Tezzeret's refusal is a build failure reported to Go, see test_truth.py).
UNBUILDABLE = [
    ("unknown_op", _set(["ops", 1, "op"], "conv3d"), "op 'act': unknown op 'conv3d'"),
    ("missing_attr", lambda b: b["ops"][0]["attrs"].pop("bias"), "op 'fc1' \\(linear\\): missing attribute 'bias'"),
    ("unknown_input", _set(["ops", 1, "inputs"], ["nope"]), "op 'act': input 'nope' is neither 'x' nor an op id"),
    ("cycle", _set(["ops", 0, "inputs"], ["fc2"]), "cycle among ops act, fc1, fc2"),
    ("clash", lambda b: [o.update(id="training") for o in b["ops"] if o["id"] == "fc1"] and
     b["ops"][1].update(inputs=["training"]), "op id 'training' clashes with an attribute of SeedModule"),
    ("kron_factor", lambda b: b["ops"].__setitem__(0, op("fc1", "kron_linear", "x", **{
        "in": 8, "out": 16, "in_factor": 3, "out_factor": 2})),
     "op 'fc1' \\(kron_linear\\): in 8 and out 16 must be divisible by in_factor 3 and out_factor 2"),
    ("heads", lambda b: b["ops"].insert(0, op("attn", "attention", "x", dim=8, heads=3)) or
     b["ops"][1]["inputs"].__setitem__(0, "attn"), "op 'attn' \\(attention\\): dim 8 is not divisible by heads 3"),
    ("causal_type", lambda b: b["ops"].insert(0, op("attn", "attention", "x", dim=8, heads=2, causal=1)) or
     b["ops"][1]["inputs"].__setitem__(0, "attn"), "attribute 'causal' must be true or false, got 1"),
]


@pytest.mark.parametrize("name,fn,message", UNBUILDABLE, ids=[b[0] for b in UNBUILDABLE])
def test_what_the_builders_cannot_build(name: str, fn, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_seed(mutated(fn), blueprint_id="0" * 64)


def test_bad_groups_and_broadcast() -> None:
    dw = ir("", CONV2_WIDE, [conv(2, "dw", "x", 4, 6, 3, 2, 1, groups=4, zero=True)], "dw", 0)
    with pytest.raises(ValueError, match="in 4 and out 6 must both be divisible by groups 4"):
        build_seed(dw)
    mix = ir("", LIN, [lin("a", "x", 8, 6, zero=True), lin("b", "x", 8, 3), op("m", "mul", "a", "b")], "m", 0)
    with pytest.raises(ValueError, match="op \"m\" \\(mul\\): cannot broadcast \\(\\*, 6\\) with \\(\\*, 3\\)"):
        build_seed(mix)


HAND = "0" * 64  # an id given by hand: the builders run on IRs that Go would refuse


def test_validation_errors_show_expected_and_actual() -> None:
    x, out_shape = example("linear")
    not_zero = mutated(lambda b: b["ops"][2]["attrs"].pop("init"))
    with pytest.raises(SeedValidationError, match="expected exactly 0") as e:
        validate_seed(build_seed(not_zero, blueprint_id=HAND), x, out_shape)
    assert e.value.check == "zero_init" and isinstance(e.value, ValueError)

    miscounted = mutated(_set(["param_count"], 245))
    with pytest.raises(SeedValidationError, match="parameter count: expected 245 .*got 246") as e:
        validate_seed(build_seed(miscounted, blueprint_id=HAND), x, out_shape)
    assert (e.value.check, e.value.expected, e.value.actual) == ("param_count", 245, 246)

    with pytest.raises(SeedValidationError, match=r"output shape: expected \[4, 7\], got \[4, 6\]"):
        validate_seed(build_seed(FIXTURES[0][1]), x, (4, 7))

    broken = build_seed(FIXTURES[0][1])
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
    with pytest.raises(SeedValidationError) as e:
        validate_seed(broken, x, out_shape)
    assert e.value.check == "finite"  # 0 * NaN is NaN: a zero last op does not hide it

    with pytest.raises(SeedValidationError, match="forward raised RuntimeError"):
        validate_seed(build_seed(FIXTURES[0][1]), torch.randn(4, 5), out_shape)


def test_load_weights_refuses_mismatches_and_garbage() -> None:
    seed = build_seed(FIXTURES[0][1])
    before = save_weights(seed)
    with pytest.raises(ValueError, match="not valid safetensors"):
        load_weights(seed, b"\x00" * 16)
    with pytest.raises(ValueError, match="missing \\['fc1.bias'"):
        load_weights(seed, save_weights(build_seed(FIXTURES[2][1])))
    wider = mutated(lambda b: (b["ops"][0]["attrs"].update(out=17), b["ops"][2]["attrs"].update({"in": 17})))
    with pytest.raises(ValueError, match=r"weight 'fc1.weight': expected \(16, 8\) torch.float32, got \(17, 8\)"):
        load_weights(seed, save_weights(build_seed(wider, blueprint_id=HAND)))
    assert save_weights(seed) == before  # nothing was written


@pytest.mark.parametrize("name,blueprint,shapes", FIXTURES, ids=IDS)
def test_the_straight_line_forward_survives_copy_and_pickle(name: str, blueprint: dict, shapes: str) -> None:
    """SeedModule's forward is one generated straight-line function (test_graph_module_and_op_order
    holds it to the fx graph, bitwise); a deep copy and a pickled copy make their own and agree, and
    gradients reach every parameter. test_compile holds the compiled forward to no graph break."""
    import pickle

    seed = build_seed(blueprint)
    randomize(seed)
    x, _ = example(shapes)
    out = seed(x)
    for other in (copy.deepcopy(seed), pickle.loads(pickle.dumps(seed))):
        assert other._run is not seed._run  # made again for the copy
        assert torch.equal(other(x), out)
    xi = x.clone().requires_grad_(True) if x.is_floating_point() else x
    seed(xi).float().square().sum().backward()
    assert all(p.grad is not None for p in seed.parameters() if p.requires_grad)
