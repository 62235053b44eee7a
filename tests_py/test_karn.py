"""Karn through the real library: templates, canonical ids, constraints, mutation, library costs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from hosts import HOSTS, LAYOUT, PAIRS, TEMPLATES

from esper import karn
from esper.errors import BudgetError, InvalidArgumentError, NotFoundError
from esper.tezzeret import build_seed


def test_template_library() -> None:
    names = [t["name"] for t in TEMPLATES]
    assert names == sorted(names) == karn.template_names()
    for needed in ("residual_mlp", "lowrank", "bottleneck", "conv3x3", "depthwise", "se_gate", "norm_mlp",
                   "attention_head"):
        assert needed in names
    for t in TEMPLATES:
        assert t["description"] and t["layouts"] and isinstance(t["params"], list)
        for p in t["params"]:
            assert p["kind"] in ("int", "enum") and p["doc"]
    # Every template fits at least one host of the table above (a new template needs a host here).
    assert {name for name, _ in PAIRS} == set(names)


@pytest.mark.parametrize(("template", "host"), PAIRS)
def test_instantiate_counts_agree_with_tezzeret(template: str, host: str) -> None:
    ir = karn.instantiate(template, HOSTS[host])
    assert ir["template"] == template and ir["host"]["kind"] == HOSTS[host]["kind"]
    assert ir["param_count"] > 0 and ir["flops_per_sample"] > 0
    a = karn.analyze(ir)
    assert (a["param_count"], a["flops_per_sample"]) == (ir["param_count"], ir["flops_per_sample"])
    assert set(a["order"]) == {op["id"] for op in ir["ops"]}
    seed = build_seed(ir)
    assert seed.param_count == ir["param_count"]
    data, bid = karn.canonical(ir)
    assert bid == hashlib.sha256(data).hexdigest() == seed.blueprint_id == karn.blueprint_id(data)
    karn.check(ir)  # fits its own host


def test_canonical_ignores_key_order_and_whitespace() -> None:
    ir = karn.instantiate("residual_mlp", HOSTS["linear"], width=12, activation="gelu")
    data, bid = karn.canonical(ir)
    shuffled = json.dumps(dict(reversed(list(ir.items()))), indent=3)
    assert karn.canonical(shuffled) == (data, bid)
    assert karn.canonical(data) == (data, bid)  # canonical bytes are a fixed point
    assert json.loads(data) == ir
    assert b" " not in data and data.startswith(b'{"flops_per_sample"')


def test_canonical_ids_are_stable_across_processes() -> None:
    code = (
        "import json, sys\n"
        "from esper import karn\n"
        "pairs = json.loads(sys.argv[1])\n"
        "print(json.dumps({f'{t}/{h}': karn.canonical(karn.instantiate(t, host))[1] for t, h, host in pairs}))\n"
    )
    pairs = [(t, h, HOSTS[h]) for t, h in PAIRS]
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(pairs)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, ESPER_GO_MAXPROCS="1"))
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    ours = {f"{t}/{h}": karn.canonical(karn.instantiate(t, HOSTS[h]))[1] for t, h in PAIRS}
    assert theirs == ours
    assert len(set(ours.values())) == len(ours)  # distinct blueprints, distinct ids


def test_instantiate_errors_name_the_problem() -> None:
    with pytest.raises(NotFoundError, match=r'"nope" is not one of attention_head, .*residual_mlp'):
        karn.instantiate("nope", HOSTS["linear"])
    with pytest.raises(InvalidArgumentError, match=r'parameter "width" = 0 is out of range \[1, 8192\]'):
        karn.instantiate("residual_mlp", HOSTS["linear"], width=0)
    with pytest.raises(InvalidArgumentError, match=r'has no parameter "depth" \(known: width, activation\)'):
        karn.instantiate("residual_mlp", HOSTS["linear"], depth=2)
    with pytest.raises(InvalidArgumentError,
                       match=r"must be one of relu, gelu, silu, tanh, leaky_relu, elu, mish, hardswish, got"):
        karn.instantiate("residual_mlp", HOSTS["linear"], activation="swish")
    with pytest.raises(InvalidArgumentError, match=r'"conv3x3" supports conv2d, residual_2d hosts, not linear'):
        karn.instantiate("conv3x3", HOSTS["linear"])
    with pytest.raises(InvalidArgumentError, match=r"invalid host: in = 0 must be in \[1, 16777216\]"):
        karn.instantiate("linear", {"kind": "linear", "in": 0, "out": 4})
    with pytest.raises(InvalidArgumentError, match=r'unknown field "bogus"'):
        karn.instantiate("linear", {"kind": "linear", "in": 4, "out": 4, "bogus": 1})


def test_canonical_refuses_malformed_ir() -> None:
    ir = karn.instantiate("residual_mlp", HOSTS["linear"])
    bad_op = json.loads(json.dumps(ir))
    bad_op["ops"][1]["op"] = "softmax"
    with pytest.raises(InvalidArgumentError, match="softmax"):
        karn.canonical(bad_op)
    wrong_count = dict(ir, param_count=ir["param_count"] + 1)
    with pytest.raises(InvalidArgumentError, match="param_count"):
        karn.canonical(wrong_count)
    with pytest.raises(InvalidArgumentError):
        karn.canonical("{not json")


def test_check_shapes_and_budgets() -> None:
    ir = karn.instantiate("residual_mlp", HOSTS["linear"], width=32)
    n, flops = ir["param_count"], ir["flops_per_sample"]
    karn.check(ir, HOSTS["linear"], max_params=n, max_flops=flops)
    with pytest.raises(BudgetError, match=rf"param_count {n} > max_params {n - 1}"):
        karn.check(ir, HOSTS["linear"], max_params=n - 1)
    with pytest.raises(BudgetError, match=rf"flops_per_sample {flops} > max_flops 10"):
        karn.check(ir, None, max_flops=10)
    with pytest.raises(InvalidArgumentError, match=r"shape \(\*, 8\), the linear host's output is \(\*, 9\)"):
        karn.check(ir, {"kind": "linear", "in": 16, "out": 9})


def test_mutate_is_seeded_valid_and_within_budget() -> None:
    ir = karn.instantiate("residual_mlp", HOSTS["linear"], width=32)
    variants = [karn.mutate(ir, seed) for seed in range(6)]
    assert karn.mutate(ir, 3) == variants[3]  # same seed, same variant
    for v in variants:
        assert v != ir and v["template"] == ir["template"] and v["host"] == ir["host"]
        karn.check(v)
        assert build_seed(v).param_count == v["param_count"]
    small = karn.mutate(ir, 1, max_params=ir["param_count"])
    assert small["param_count"] <= ir["param_count"]
    with pytest.raises(InvalidArgumentError, match='"linear" has no parameters to vary'):
        karn.mutate(karn.instantiate("linear", HOSTS["linear"]), 0)


@pytest.mark.parametrize("host", ["linear", "conv2d", "residual"])
def test_library_costs(host: str) -> None:
    rows = karn.library_costs(HOSTS[host])
    assert [r["template"] for r in rows] == karn.template_names()
    for r, t in zip(rows, TEMPLATES):
        fits = LAYOUT[host] in t["layouts"]
        assert ("error" not in r) == fits, r
        if fits:
            ir = karn.instantiate(t["name"], HOSTS[host])
            assert (r["param_count"], r["flops_per_sample"]) == (ir["param_count"], ir["flops_per_sample"])
            assert r["mergeable"] == (t["mergeable"] and host == "linear")
        else:
            assert f'"{t["name"]}" supports' in r["error"]


def test_library_costs_refuses_a_malformed_host() -> None:
    with pytest.raises(InvalidArgumentError, match="kernel = 0 must be in"):
        karn.library_costs({"kind": "conv2d", "in": 3, "out": 4, "kernel": 0, "stride": 1, "padding": 0})
    with pytest.raises(InvalidArgumentError, match='kind "dense" is not one of'):
        karn.library_costs({"kind": "dense", "in": 3, "out": 4})
