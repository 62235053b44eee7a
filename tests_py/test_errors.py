"""Errors that name their cause and what to do (issue 13, item 5), through the real library.

- ``evaluate`` returning something other than ``{"loss": float, "metric": float (optional)}``;
- a checkpoint of a model with other layer shapes (the layer and both hosts are named);
- ``model.load_state_dict`` before ``morph.load_state_dict`` (refused before any weight is written);
- a second live ``Morphogenesis`` on one model;
- a template that does not fit a host (the decision's reason says which template was used instead).
"""

from __future__ import annotations

import copy
import gc
import io
import math
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import esper
from esper import EsperError, Morphogenesis
from esper.kasmina import SeedState, refuse_seeds_not_built


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def wrapped(hidden: int = 16, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = esper.wrap(mlp(hidden), target_modules=[nn.Linear], seeds_per_layer=2)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, morph: Morphogenesis, steps: int) -> None:
    x, y = batch()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)


# ------------------------------------------------------------------------------------------------
# evaluate() and end_epoch's numbers
# ------------------------------------------------------------------------------------------------

BAD_RESULTS: list[tuple[Any, str]] = [
    ("0.5", "it returned '0.5' (of type str)"),
    (0.5, "it returned 0.5 (of type float)"),
    ({}, 'it returned a dict without "loss": {} (of type dict)'),
    ({"metric": 0.9}, "it returned a dict without \"loss\": {'metric': 0.9}"),
    ({"loss": "low"}, "evaluate(model)[\"loss\"] must be a number (a float, or a one-element tensor), got 'low'"),
    ({"loss": None}, 'its "loss" is None'),
    ({"loss": torch.ones(3)}, "got tensor([1., 1., 1.])"),
    ({"loss": 0.5, "metric": "90%"}, "evaluate(model)[\"metric\"] must be a number"),
]


@pytest.mark.parametrize("result,shown", BAD_RESULTS, ids=[repr(r)[:20] for r, _ in BAD_RESULTS])
def test_evaluate_returning_the_wrong_thing_says_what_it_must_return(result: Any, shown: str) -> None:
    model, opt = wrapped()
    with Morphogenesis(model, opt, policy="manual", evaluate=lambda m: result) as morph:
        with pytest.raises(TypeError) as info:
            morph.end_epoch()
        message = str(info.value)
        assert 'evaluate(model) must return {"loss": float, "metric": float (optional)}' in message
        assert shown in message
        assert morph.epoch == 0  # nothing reached Go


@pytest.mark.parametrize("loss,metric", [(0.5, 0.9), (torch.tensor(0.5), torch.tensor([0.9])), (np.float32(0.5), None)])
def test_evaluate_returning_numbers_or_scalar_tensors_is_accepted(loss: Any, metric: Any) -> None:
    """Positive control for the checks above: what the README shows, and one-element tensors."""
    model, opt = wrapped()
    result = {"loss": loss} if metric is None else {"loss": loss, "metric": metric}
    with Morphogenesis(model, opt, policy="manual", evaluate=lambda m: result) as morph:
        out = morph.end_epoch()
    assert out["epoch"] == 0 and morph.epoch == 1


@pytest.mark.parametrize("kwargs,shown", [({"val_loss": "0.3"}, "val_loss must be a number"),
                                          ({"val_loss": 0.3, "val_metric": [0.9]}, "val_metric must be a number")])
def test_end_epoch_numbers_that_are_not_numbers_are_named(kwargs: dict[str, Any], shown: str) -> None:
    model, opt = wrapped()
    with Morphogenesis(model, opt, policy="manual") as morph:
        with pytest.raises(TypeError, match=shown):
            morph.end_epoch(**kwargs)
        morph.end_epoch(val_loss=torch.tensor(0.3), val_metric=0.9)  # a scalar tensor is a number
        assert morph.epoch == 1


def test_evaluate_checked_when_measuring_a_held_seed() -> None:
    """The contribution of a HOLDING seed is measured with a second evaluate call: checked too."""
    model, opt = wrapped()
    calls: list[int] = []

    def evaluate(m: nn.Module) -> Any:
        calls.append(1)
        return {"loss": 1.0} if len(calls) == 1 else [1.0]

    with Morphogenesis(model, opt, policy="manual", evaluate=evaluate) as morph:
        morph.germinate(0, 0, "residual_mlp", width=4)
        for _ in range(3):
            morph.advance(0, 0)
        assert morph.layers[0].state(0) == SeedState.HOLDING
        with pytest.raises(TypeError, match=r"it returned \[1.0\] \(of type list\)"):
            morph.end_epoch()
        assert len(calls) == 2


# ------------------------------------------------------------------------------------------------
# A checkpoint of another model
# ------------------------------------------------------------------------------------------------


def test_checkpoint_of_another_width_names_the_layer_and_both_hosts() -> None:
    model, opt = wrapped(hidden=16)
    with Morphogenesis(model, opt, policy="manual") as morph:
        morph.germinate(0, 0, "residual_mlp", width=4)
        state = morph.state_dict()
    other, other_opt = wrapped(hidden=32)
    with Morphogenesis(other, other_opt, policy="manual") as morph2:
        with pytest.raises(EsperError) as info:
            morph2.load_state_dict(state)
        message = str(info.value)
        assert ("layer 0 (0) has host linear(in 4, out 16) in the snapshot, linear(in 4, out 32) in this session"
                in message)
        assert ("layer 1 (2) has host linear(in 16, out 3) in the snapshot, linear(in 32, out 3) in this session"
                in message)
        assert all(len(layer.seeds) == 0 for layer in morph2.layers)  # nothing was built
    # Positive control: the same shapes restore.
    same, same_opt = wrapped(hidden=16)
    with Morphogenesis(same, same_opt, policy="manual") as morph3:
        morph3.load_state_dict(state)
        assert morph3.layers[0].state(0) == SeedState.GERMINATED


# ------------------------------------------------------------------------------------------------
# Loading in the wrong order
# ------------------------------------------------------------------------------------------------


def _checkpoint() -> dict[str, Any]:
    model, opt = wrapped(seed=0)
    with Morphogenesis(model, opt, policy="manual", signal_every=1) as morph:
        train(model, opt, morph, 2)
        morph.germinate("2", 1, "residual_mlp", width=4)
        morph.advance("2", 1)
        train(model, opt, morph, 3)
        return copy.deepcopy({"model": model.state_dict(), "optim": opt.state_dict(), "morph": morph.state_dict()})


def test_model_state_before_morph_state_is_refused_before_anything_is_written() -> None:
    ckpt = _checkpoint()
    model, opt = wrapped(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with Morphogenesis(model, opt, policy="manual", signal_every=1) as morph:
        with pytest.raises(RuntimeError) as info:
            model.load_state_dict(ckpt["model"])
        message = str(info.value)
        assert "the weights of seeds this model does not have yet: 2.seeds.1 (" in message
        assert "e.g. '2.seeds.1." in message
        assert "call morph.load_state_dict(...) first" in message and "Nothing was loaded" in message
        after = model.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before)  # not one host weight moved
        # The README's order then works, strictly, and continues the run.
        morph.load_state_dict(ckpt["morph"])
        model.load_state_dict(ckpt["model"], strict=True)
        opt.load_state_dict(ckpt["optim"])
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
        train(model, opt, morph, 2)


def test_a_non_strict_load_is_refused_too_and_host_weights_alone_load() -> None:
    """PyTorch gives pre-hooks strict=True whatever the caller asked: strict=False is refused the
    same way (nothing written), and the message's way out, leaving out the seed keys, works."""
    ckpt = _checkpoint()
    model, _ = wrapped(seed=1)
    before = model.get_submodule("0.base_layer").weight.detach().clone()
    with pytest.raises(RuntimeError, match="leave out the keys of the seeds"):
        model.load_state_dict(ckpt["model"], strict=False)
    assert torch.equal(model.get_submodule("0.base_layer").weight, before)
    host_only = {k: v for k, v in ckpt["model"].items() if ".seeds." not in k}
    model.load_state_dict(host_only, strict=True)
    assert torch.equal(model.get_submodule("0.base_layer").weight, ckpt["model"]["0.base_layer.weight"])


def test_without_the_check_the_wrong_order_overwrites_host_weights_then_fails() -> None:
    """Negative control: what the check prevents (PyTorch copies every key it knows, then raises)."""
    ckpt = _checkpoint()
    model, _ = wrapped(seed=1)
    for key, hook in list(model._load_state_dict_pre_hooks.items()):
        if hook.hook is refuse_seeds_not_built:
            del model._load_state_dict_pre_hooks[key]
    before = model.get_submodule("0.base_layer").weight.detach().clone()
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "2.seeds.1.'):
        model.load_state_dict(ckpt["model"])
    assert not torch.equal(model.get_submodule("0.base_layer").weight, before)  # already overwritten


def test_the_check_ignores_state_dicts_without_seed_keys_and_seeds_present() -> None:
    model, opt = wrapped()
    with Morphogenesis(model, opt, policy="manual") as morph:
        morph.germinate(0, 1, "residual_mlp", width=4)
        model.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)  # its own seeds: loads
    plain = esper.export(model)
    hooks = plain._load_state_dict_pre_hooks.values()
    assert not any(getattr(h, "hook", None) is refuse_seeds_not_built for h in hooks)


# ------------------------------------------------------------------------------------------------
# One live Morphogenesis per model
# ------------------------------------------------------------------------------------------------


def test_a_second_live_morphogenesis_is_refused_until_the_first_is_closed() -> None:
    model, opt = wrapped()
    first = Morphogenesis(model, opt, policy="manual", max_concurrent=2)
    first.germinate(0, 0, "residual_mlp", width=4)
    with pytest.raises(ValueError, match=r"Kasmina layer '0' is already driven by a live Morphogenesis\(.*close\(\)"):
        Morphogenesis(model, opt, policy="manual")
    first.germinate(0, 1, "residual_mlp", width=4)  # the first one is unaffected
    first.close()
    second = Morphogenesis(model, opt, policy="manual")
    with pytest.raises(ValueError, match="already driven"):
        Morphogenesis(model, opt, policy="manual")
    second.close()
    second.close()  # idempotent
    Morphogenesis(model, opt, policy="manual").close()


def test_a_collected_morphogenesis_frees_the_model_and_copies_are_free() -> None:
    model, opt = wrapped()
    morph = Morphogenesis(model, opt, policy="manual")
    # A deep copy of the model (e.g. for a baseline run) and a pickled one are driven by none.
    twin = copy.deepcopy(model)
    Morphogenesis(twin, torch.optim.SGD(twin.parameters(), lr=0.1), policy="manual").close()
    buf = io.BytesIO()
    torch.save(model, buf)  # the mark does not stop pickling
    assert len(buf.getvalue()) > 0
    del morph
    gc.collect()
    Morphogenesis(model, opt, policy="manual").close()


# ------------------------------------------------------------------------------------------------
# A template that does not fit a host
# ------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 6, 6) -> (B, 2)
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_residual_mlp_on_a_conv2d_host_says_which_template_it_used_and_why() -> None:
    torch.manual_seed(0)
    model = esper.wrap(ConvNet(), target_modules=[nn.Conv2d])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 6, 6)
    with Morphogenesis(model, opt, template="residual_mlp", template_params={"width": 16}, patience=1,
                       cooldown_epochs=0, signal_every=1) as morph:
        germinations = []
        for _ in range(6):
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
            result = morph.end_epoch(val_loss=1.0)  # a plateau: Tamiyo grows
            germinations += [d for d in result["decisions"] if d["op"] == "germinate"]
            if germinations:
                break
        assert germinations, "Tamiyo never germinated on a plateau"
        d = germinations[0]
        assert d["template"] == "conv3x3"
        assert ("the configured template residual_mlp does not support conv2d hosts, so conv3x3 with its "
                "default parameters") in d["reason"]
        assert any(e.get("kind") == "decision" and e.get("reason") == d["reason"] for e in morph.log)
        assert morph.layers[0].seed(0) is not None and math.isfinite(float(model(x).detach().sum()))
