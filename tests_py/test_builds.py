"""Validated builds: the first germination of a blueprint on a host is validated and recorded in
Urza; later ones (this run, another run, another process) are served without validating again."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import esper
from esper import karn
from esper.builds import BUILD_TAG, clear_kernel_cache
from esper.tezzeret import SeedValidationError, build_seed
from esper.urza import Urza


@pytest.fixture(autouse=True)
def fresh_kernel_cache() -> None:
    """Each test starts as a new process would: nothing validated in memory."""
    clear_kernel_cache()


def grown(*widths: int) -> tuple[nn.Module, esper.Morphogenesis]:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(w, w), nn.ReLU()]
    model = esper.wrap(nn.Sequential(*layers), target_modules=[nn.Linear])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, esper.Morphogenesis(model, opt, policy="manual", max_concurrent=len(widths))


def test_second_germination_on_a_same_shaped_layer_is_a_cache_hit() -> None:
    _, morph = grown(16, 16, 8)
    morph.germinate(0, 0, "residual_mlp", width=4)
    assert morph.stats()["builds"] == {"hits": 0, "misses": 1, "store_hits": 0, "builds": 1}
    morph.germinate(1, 0, "residual_mlp", width=4)  # same blueprint, same host shape
    assert morph.stats()["builds"] == {"hits": 1, "misses": 1, "store_hits": 0, "builds": 1}
    # Negative control: another host shape is another blueprint, validated on its own.
    morph.germinate(2, 0, "residual_mlp", width=4)
    assert morph.stats()["builds"] == {"hits": 1, "misses": 2, "store_hits": 0, "builds": 2}
    seeds = {s["layer"]: s for s in morph.seeds()}
    assert seeds[0]["blueprint_id"] == seeds[1]["blueprint_id"] != seeds[2]["blueprint_id"]
    run_id = morph.run_id
    morph.close()
    with Urza() as store:
        builds = store.list(tag=BUILD_TAG)
        assert {b["blueprint_id"] for b in builds} == {seeds[0]["blueprint_id"], seeds[2]["blueprint_id"]}
        manifest = store.show(builds[0]["id"])["manifest"]
    report = manifest["validation"]
    assert report["ok"] and report["at_init"] and "zero_init" in report["checks"]
    assert report["param_count"] == manifest["param_count"]
    assert manifest["lineage"]["run"] == run_id


def test_another_run_is_served_from_the_cache_or_urza_without_validating() -> None:
    _, first = grown(16)
    first.germinate(0, 0, "lowrank", rank=2)
    assert first.stats()["builds"]["builds"] == 1
    first.close()
    _, second = grown(16, 16)  # the same process: the kernel cache serves it
    second.germinate(0, 0, "lowrank", rank=2)
    assert second.stats()["builds"] == {"hits": 1, "misses": 0, "store_hits": 0, "builds": 0}
    second.close()
    clear_kernel_cache()  # as in a new process: Urza serves it, then the cache
    _, third = grown(16, 16)
    third.germinate(0, 0, "lowrank", rank=2)
    third.germinate(1, 0, "lowrank", rank=2)
    assert third.stats()["builds"] == {"hits": 1, "misses": 1, "store_hits": 1, "builds": 0}
    third.close()
    with Urza() as store:
        assert len(store.list(tag=BUILD_TAG)) == 1


def test_a_build_that_fails_validation_is_refused_and_not_recorded() -> None:
    # Go refuses such blueprints before they reach Python; the check here is the one that catches a
    # module Tezzeret built wrong, so the blueprint is handed to the build cache directly.
    ir = karn.instantiate("residual_mlp", {"kind": "linear", "in": 16, "out": 16}, width=4)
    ir["ops"][-1]["attrs"].pop("init")  # the last layer initialised at random: the output changes
    seed = build_seed(ir)
    _, morph = grown(16)
    with pytest.raises(SeedValidationError, match="expected exactly 0") as e:
        morph._builds.admit(seed, seed.param_count, layer=0, slot=0, step=0)
    assert e.value.check == "zero_init"
    good = build_seed(karn.instantiate("residual_mlp", {"kind": "linear", "in": 16, "out": 16}, width=4))
    with pytest.raises(SeedValidationError, match="Go says 7") as e:
        morph._builds.admit(good, 7, layer=0, slot=0, step=0)
    assert e.value.check == "param_count"
    assert morph.stats()["builds"]["builds"] == 0
    morph.close()
    with Urza() as store:
        assert store.list(tag=BUILD_TAG) == []
