"""Width growth for conv nets: conv pairs (esper.convpair) widened by seeds of Karn's "widen" template.

Exact at germination, blended through the lifecycle by the heuristic policy in the README loop,
merged into plain convs by export, resumed from a checkpoint identically, traced by torch.compile;
refusals (a BatchNorm between the convs, a seed that is not a widening) name their reason.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import karn
from esper.convpair import find_conv_pairs

EXACT = 1e-6  # "the function is unchanged": outputs equal within this, before and after


def cnn2d(act: nn.Module | None = None, stride: int = 1) -> nn.Sequential:
    """A tiny CNN whose first two convs form a pair (conv, activation, conv)."""
    middle = [act] if act is not None else []
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *middle, nn.Conv2d(4, 6, 3, stride=stride, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def cnn1d() -> nn.Sequential:
    """A 1-D CNN with a pair of k5 and k1 convs and nothing between them."""
    return nn.Sequential(nn.Conv1d(2, 5, 5, padding=2), nn.Conv1d(5, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(4, 3))


class Named(nn.Module):
    """A model whose forward calls its submodules; the pair is a named nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 6, 3, padding=1))
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.body(x)).mean(dim=(2, 3)))


class SkipSequential(nn.Sequential):
    """A Sequential subclass whose forward is not a chain: cutting a pair out of it would change it."""

    def forward(self, x: Tensor) -> Tensor:
        return self[2](self[1](self[0](x))) + x[:, :1]


CASES: dict[str, tuple[Callable[[], nn.Module], Any, tuple[int, ...]]] = {
    "conv2d relu": (lambda: cnn2d(nn.ReLU()), [("0", "2")], (5, 3, 8, 8)),
    "conv2d tanh stride 2": (lambda: cnn2d(nn.Tanh(), stride=2), [("0", "2")], (5, 3, 9, 9)),
    "conv2d sigmoid": (lambda: cnn2d(nn.Sigmoid()), [("0", "2")], (5, 3, 8, 8)),
    "conv1d identity": (cnn1d, [("0", "1")], (5, 2, 12)),
    "named sequential gelu": (Named, ["body"], (5, 3, 8, 8)),
}


def build(case: str, slots: int = 1, **config: Any) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer,
                                                              esper.Morphogenesis, Tensor]:
    make, pairs, shape = CASES[case]
    torch.manual_seed(0)
    plain = make()
    model = esper.wrap(copy.deepcopy(plain), conv_pairs=pairs, seeds_per_layer=slots)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config.setdefault("policy", "manual")
    config.setdefault("rollback", False)
    morph = esper.Morphogenesis(model, opt, **config)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return plain, model, opt, morph, x


def max_change(model: nn.Module, x: Tensor, ref: Tensor) -> float:
    """The largest change of the model's output against ref, with autograd on (as in training: a
    TRAINING seed runs only then)."""
    return float((model(x).detach() - ref).abs().max())


def to_holding(morph: esper.Morphogenesis, layer: int, slot: int) -> None:
    """Moves a seed by hand to HOLDING, where it adds its whole output (alpha 1)."""
    while morph.layers[layer].state(slot).name != "HOLDING":
        morph.advance(layer, slot)


@pytest.mark.parametrize("case", list(CASES))
def test_germination_leaves_the_function_unchanged(case: str) -> None:
    plain, model, _, morph, x = build(case)
    ref = plain(x).detach()
    assert max_change(model, x, ref) == 0.0  # wrapped, dormant: the host's own forward
    morph.germinate(0, 0, "widen", width=3)
    seed = morph.layers[0].seed(0)
    assert seed.ir["template"] == "widen" and seed.ir["host"]["kind"].endswith("_pair")
    morph.advance(0, 0)  # TRAINING: the seed runs, straight-through, adding 0
    assert morph.layers[0].state(0).name == "TRAINING"
    assert max_change(model, x, ref) <= EXACT
    # At alpha 1 the fresh seed adds its whole output: it must be 0, in training and in evaluation.
    to_holding(morph, 0, 0)
    for train in (True, False):
        model.train(train)
        assert max_change(model, x, ref) <= EXACT
    morph.close()


def test_negative_control_a_seed_not_zero_at_init_changes_the_function() -> None:
    plain, model, _, morph, x = build("conv2d relu")
    ref = plain(x).detach()
    morph.germinate(0, 0, "widen", width=3)
    with torch.no_grad():  # what a default-initialised consumer would hold
        nn.init.kaiming_uniform_(morph.layers[0].seed(0).consumer.weight)
    to_holding(morph, 0, 0)
    assert max_change(model, x, ref) > 1e-3  # the exactness check above catches it
    morph.close()


def test_go_refuses_a_seed_that_is_not_a_widening() -> None:
    _, model, _, morph, _ = build("conv2d relu")
    with pytest.raises(esper.EsperError, match='"conv3x3" supports conv2d, residual_2d hosts, not conv2d_pair'):
        morph.germinate(0, 0, "conv3x3")
    ir = karn.instantiate("widen", morph.layers[0].spec.host_ir(), width=2)
    for op in ir["ops"]:
        if op["id"] == "consumer":
            op["attrs"]["bias"] = True  # zero at init still, but a bias the consumer cannot take
    with pytest.raises(esper.InvalidArgumentError, match="takes only widening seeds"):
        morph.germinate(0, 0, ir)
    assert morph.layers[0].state(0).name == "DORMANT" and morph.layers[0].seed(0) is None
    morph.close()


@pytest.mark.parametrize(("between", "reason"), [
    (nn.BatchNorm2d(4), "BatchNorm2d '1' lies between the producer and the consumer. It normalises each channel"),
    (nn.MaxPool2d(2), "MaxPool2d '1' lies between the producer and the consumer; only one elementwise activation"),
    (nn.Dropout(0.1), "Dropout '1' lies between"),
])
def test_a_pair_with_a_module_other_than_an_activation_between_is_refused(between: nn.Module, reason: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), between, nn.Conv2d(4, 6, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=reason):
        esper.wrap(model, conv_pairs=[("0", "2")])
    assert list(model._modules) == ["0", "1", "2"] and model.state_dict().keys() == before.keys()
    assert find_conv_pairs(model) == []


@pytest.mark.parametrize(("model", "pairs", "reason"), [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(5, 6, 3)), [("0", "2")],
     "makes 4 channels and the consumer '2' reads 5"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3, groups=2)), [("0", "1")], "groups 2"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv1d(4, 6, 3)), [("0", "1")], "both must be the same kind"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)), [("2", "0")], "does not come after"),
    (Named(), [("body.0", "head")], "children of one plain nn.Sequential"),
    (SkipSequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)), [("0", "2")],
     "children of one plain nn.Sequential"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)), ["1"], "names ReLU"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
     [("0", "2"), ("2", "4")], "share '2'"),
])
def test_incompatible_pairs_are_refused_with_the_reason(model: nn.Module, pairs: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        esper.wrap(model, conv_pairs=pairs)
    assert not any(isinstance(m, esper.KasminaLayer) for m in model.modules())


@pytest.mark.parametrize("pairs", [("0", "2"), {"0": "2"}, [("0", "2")]])
def test_one_pair_alone_a_mapping_or_a_list(pairs: Any) -> None:
    model = esper.wrap(cnn2d(nn.ReLU()), conv_pairs=pairs)
    assert [(name, layer.spec.kind) for name, layer in esper.kasmina_layers(model)] == [("0", "conv2d_pair")]
    named = esper.wrap(Named(), conv_pairs="body")
    assert [name for name, _ in esper.kasmina_layers(named)] == ["body"]


def test_find_conv_pairs_and_types_skip_the_members() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    pairs = find_conv_pairs(model)
    assert pairs == [("0", "2")]  # "4" + BatchNorm + "6" is not a pair; "2" is taken
    esper.wrap(model, target_modules=[nn.Conv2d], conv_pairs=pairs)
    kinds = {name: layer.spec.kind for name, layer in esper.kasmina_layers(model)}
    assert kinds == {"0": "conv2d_pair", "4": "conv2d", "6": "conv2d"}
    assert list(model._modules) == ["0", "3", "4", "5", "6"]


def train(model: nn.Module, opt: torch.optim.Optimizer, morph: esper.Morphogenesis, x: Tensor, y: Tensor,
          steps: int) -> list[Tensor]:
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("case", ["conv2d relu", "conv1d identity", "named sequential gelu"])
def test_export_merges_the_grown_channels_into_plain_convs(case: str) -> None:
    plain, model, opt, morph, x = build(case, slots=2)
    y = torch.arange(x.shape[0]) % 3
    morph.germinate(0, 0, "widen", width=3)
    train(model, opt, morph, x, y, 3)
    to_holding(morph, 0, 0)
    train(model, opt, morph, x, y, 2)
    morph.fossilize(0, 0)
    morph.germinate(0, 1, "widen", width=2)
    train(model, opt, morph, x, y, 3)
    to_holding(morph, 0, 1)
    morph.fossilize(0, 1)
    train(model, opt, morph, x, y, 2)  # fossilized seeds go on training with the host
    out = esper.export(model)
    for train_mode in (True, False):
        model.train(train_mode)
        out.train(train_mode)
        with torch.no_grad():
            torch.testing.assert_close(out(x), model(x), rtol=0, atol=1e-5)
    keys = plain.state_dict().keys()
    assert out.state_dict().keys() == keys  # the unwrapped model's keys, nothing else
    convs = [m for m in out.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert all(type(m) in (nn.Conv1d, nn.Conv2d) for m in out.modules() if "Conv" in type(m).__name__)
    producer, consumer = convs[0], convs[1]
    mid = [m for m in plain.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))][0].out_channels
    assert producer.out_channels == producer.weight.shape[0] == producer.bias.shape[0] == mid + 5
    assert consumer.in_channels == consumer.weight.shape[1] == mid + 5
    # A plain model of the grown width loads the exported weights.
    grown = copy.deepcopy(plain)
    for name, m in grown.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            ref = out.get_submodule(name)
            m.weight, m.bias = nn.Parameter(torch.empty_like(ref.weight)), nn.Parameter(torch.empty_like(ref.bias))
    grown.load_state_dict(out.state_dict())
    morph.close()


def test_export_drops_seeds_that_are_not_fossilized() -> None:
    plain, model, opt, morph, x = build("conv2d relu")
    morph.germinate(0, 0, "widen", width=3)
    out = esper.export(model)
    assert out.state_dict().keys() == plain.state_dict().keys()
    assert out[0].weight.shape == plain[0].weight.shape
    morph.close()


def test_a_plain_checkpoint_loads_into_the_wrapped_pair() -> None:
    torch.manual_seed(0)
    plain = cnn2d(nn.ReLU())
    model = esper.wrap(cnn2d(nn.ReLU()), conv_pairs=[("0", "2")])
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    out = esper.export(model)
    assert not out._load_state_dict_pre_hooks  # the renaming hooks belong to the wrapped model
    out.load_state_dict(plain.state_dict())


def _resume_run(steps: int, stop: int | None) -> dict[str, Any]:
    settings = {"train_steps": 3, "blend_steps": 8, "signal_every": 2}

    def make() -> tuple[nn.Module, torch.optim.Optimizer, esper.Morphogenesis]:
        _, model, opt, morph, _ = build("conv2d relu", **settings)
        return model, opt, morph

    model, opt, morph = make()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    losses: list[Tensor] = []
    trace = []
    at_stop = None
    for n in range(steps):
        if n == 2:
            morph.germinate(0, 0, "widen", width=4)
        losses += train(model, opt, morph, x, y, 1)
        trace.append((model[0].state(0).name, model[0].alpha(0)))
        if stop is not None and n + 1 == stop:
            at_stop = trace[-1]
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "morph": morph.state_dict()},
                       buffer)
            morph.close()
            buffer.seek(0)
            ckpt = torch.load(buffer, weights_only=True)
            model, opt, morph = make()
            morph.load_state_dict(ckpt["morph"])
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
    result = {"losses": losses, "trace": trace, "at_stop": at_stop, "model": model.state_dict(),
              "export": esper.export(model).state_dict()}
    morph.close()
    return result


@pytest.mark.slow
def test_resume_mid_blending_continues_identically() -> None:
    whole = _resume_run(20, None)
    resumed = _resume_run(20, stop=9)
    assert resumed["at_stop"][0] == "BLENDING" and 0 < resumed["at_stop"][1] < 1
    assert resumed["trace"] == whole["trace"]
    for n, (a, b) in enumerate(zip(whole["losses"], resumed["losses"])):
        assert torch.equal(a, b), f"step {n}: {a.item()} != {b.item()}"
    assert resumed["model"].keys() == whole["model"].keys()
    assert any(".seeds.0." in k for k in whole["model"])  # the seed's weights were in the checkpoint
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole["model"].items())
    assert {s for s, _ in whole["trace"]} >= {"TRAINING", "BLENDING", "HOLDING"}


def _blobs(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """Images whose class is which of three colour channels carries a bright square, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 8, 8, generator=g)
    rows, cols = torch.randint(0, 5, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)
    for i in range(n):
        x[i, y[i], rows[i]:rows[i] + 3, cols[i]:cols[i] + 3] += 1.5
    return x, y


@pytest.mark.slow
def test_the_heuristic_grows_a_cnn_wider_in_the_readme_loop_to_fossilization() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    esper.wrap(model, conv_pairs=esper.find_conv_pairs(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = _blobs(0, 96)
    xv, yv = _blobs(1, 96)
    loader = [(xt[i:i + 16], yt[i:i + 16]) for i in range(0, 96, 16)]

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            out = m(xv)
        return {"loss": float(F.cross_entropy(out, yv)), "metric": float((out.argmax(1) == yv).float().mean())}

    epochs = 8
    morph = esper.Morphogenesis(model, optimizer, evaluate=evaluate, patience=1, threshold=0.2, train_steps=6,
                                blend_steps=6, signal_every=2, min_gain=0.0, cooldown_epochs=0)
    decisions = []
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            morph.step(loss)
        decisions += morph.end_epoch()["decisions"]
    grown = [d for d in decisions if d["op"] == "germinate" and d["applied"]]
    assert grown and "widen" in grown[0]["reason"], decisions
    layer = model[0]
    fossils = [s for s in range(layer.num_slots) if layer.state(s).name == "FOSSILIZED"]
    assert fossils, [(d["op"], d["reason"]) for d in decisions]
    plain = esper.export(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(xv), model(xv), rtol=0, atol=1e-5)
    assert plain[0].out_channels > 2 and plain[2].in_channels == plain[0].out_channels
    morph.close()


@pytest.mark.slow
def test_torch_compile_traces_a_widened_pair_without_graph_breaks() -> None:
    torch._dynamo.reset()
    _, model, _, morph, x = build("conv2d relu")
    morph.germinate(0, 0, "widen", width=3)
    to_holding(morph, 0, 0)
    with torch.no_grad():
        morph.layers[0].seed(0).consumer.weight.normal_()  # a seed that adds something
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    morph.close()


def test_karn_lists_widen_as_the_mergeable_template_of_a_pair() -> None:
    host = {"kind": "conv2d_pair", "in": 3, "mid": 4, "out": 6, "kernel": 3, "stride": 1, "padding": 1,
            "consumer_kernel": 3, "consumer_stride": 1, "consumer_padding": 1, "activation": "relu"}
    rows = {r["template"]: r for r in karn.library_costs(host)}
    fits = {name for name, r in rows.items() if "error" not in r}
    assert fits == {"widen"} and rows["widen"]["mergeable"]
    # 16 channels (the default): 3*16*9 + 16 producer-side, 16*6*9 consumer-side, no bias.
    assert rows["widen"]["param_count"] == 3 * 16 * 9 + 16 + 16 * 6 * 9
    with pytest.raises(esper.InvalidArgumentError, match="activation \"softmax\" is not one of identity, relu"):
        karn.instantiate("widen", {**host, "activation": "softmax"})
