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
    seed = build_seed(ir, blueprint_id="f" * 64)  # an id of our own: Go would refuse to hash this IR
    _, morph = grown(16)
    with pytest.raises(SeedValidationError, match="expected exactly 0") as e:
        morph._builds.admit(seed, layer=0, slot=0, step=0)
    assert e.value.check == "zero_init"
    assert morph.stats()["builds"]["builds"] == 0
    morph.close()
    with Urza() as store:
        assert store.list(tag=BUILD_TAG) == []


def chain() -> tuple[nn.Module, esper.Morphogenesis]:
    model = esper.wrap(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)), target_modules=[nn.Linear])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, esper.Morphogenesis(model, opt, policy="manual", signal_every=1, train_steps=2, blend_steps=2)


def test_fossilized_seeds_are_published_and_start_later_seeds() -> None:
    torch.manual_seed(0)
    model, morph = chain()
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    morph.germinate(0, 0, "residual_mlp", width=4)
    for _ in range(4):
        for _ in range(3):
            loss = ((model(x) - y) ** 2).mean()
            morph.optimizer.zero_grad()
            loss.backward()
            morph.optimizer.step()
            morph.step(loss)
        morph.end_epoch(val_loss=float(loss.detach()))
    assert morph.seeds()[0]["state"] == "HOLDING"
    morph.fossilize(0, 0)
    trained = {k: v.detach().clone() for k, v in model[0].seed(0).state_dict().items()}
    run_id = morph.run_id
    morph.close()
    with Urza() as store:
        (kernel,) = store.list(tag="kind:kernel")
        manifest = store.show(kernel["id"])["manifest"]
        (record,) = store.outcomes(run_id)
    lineage = manifest["lineage"]
    assert (lineage["run"], lineage["layer"], lineage["slot"], lineage["germinated_epoch"]) == (run_id, 0, 0, 0)
    assert lineage["epochs"] == lineage["fossilized_epoch"] == 4
    assert record["kernel_id"] == kernel["id"] and record["final_state"] == "FOSSILIZED"
    assert not manifest["validation"]["at_init"]  # trained: its output is no longer zero
    # A later run starts a seed from it, with its trained weights.
    model2, again = chain()
    again.germinate(0, 0, "urza:" + kernel["id"])
    assert all(torch.equal(trained[k], v) for k, v in model2[0].seed(0).state_dict().items())
    assert again.seeds()[0]["blueprint_id"] == kernel["blueprint_id"]
    # Negative controls: another host shape; template parameters with a stored kernel.
    with pytest.raises(ValueError, match="was trained on host .* layer '2'"):
        again.germinate(1, 0, "urza:" + kernel["id"])
    with pytest.raises(ValueError, match="takes no template parameters"):
        again.germinate(1, 0, "urza:" + kernel["id"], width=4)
    assert again.seeds()[1]["state"] == "DORMANT"
    again.close()
    with Urza() as store:
        (record2,) = store.outcomes(again.run_id)
    assert record2["source_kernel"] == kernel["id"] and record2["ended_by"] == "run_end"
