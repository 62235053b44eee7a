"""The op families of Karn's IR (factorised and low-rank linear maps, gated MLPs, attention heads,
depthwise-separable and low-rank convs, activations) through the library's real path.

Each family is germinated on a wrapped layer with ``morph.germinate(layer, slot, template, **params)``
(Go instantiates and validates the IR, Tezzeret builds it), and must leave the model's output
exactly unchanged up to alpha 1; a non-zero init of the op that ends the seed breaks that (the
negative control), the seed trains, and a fossilized seed exports to plain PyTorch computing the same.
A random walk over the op table checks that what Go accepts, Tezzeret builds with Go's counts.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis, karn
from esper.errors import InvalidArgumentError
from esper.kasmina import SeedState
from esper.tezzeret import OP_NAMES, SeedValidationError, build_seed, validate_seed

EXACT = 1e-6  # the bound the issue sets; the checks below find 0


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Block(nn.Module):
    """A residual-shaped MLP over tokens: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class SeqNet(nn.Module):
    """Tokens (B, T, 6) -> (B, T, 4) through a residual-shaped block of dim 8."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.block = Block(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.inp(x)))


class Model(NamedTuple):
    build: Callable[[], nn.Module]
    wrap: dict[str, Any]  # esper.wrap's keyword arguments
    layer: str
    input_shape: tuple[int, ...]


MODELS = {
    "linear": Model(lambda: nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8)),
                    {"target_modules": ["2"]}, "2", (12, 16)),
    "sequence": Model(SeqNet, {"residual_modules": ["block"]}, "block", (3, 5, 6)),
    "conv2d": Model(lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3, stride=2, padding=1)),
                    {"target_modules": ["2"]}, "2", (4, 3, 8, 8)),
    "conv1d": Model(lambda: nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 6, 5, padding=2)),
                    {"target_modules": ["2"]}, "2", (4, 3, 16)),
}

# (case id, template, params, model): every new family, and every activation choice.
CASES = [
    ("swiglu", "glu_mlp", {"width": 12}, "linear"),
    ("glu", "glu_mlp", {"width": 12, "gate": "sigmoid"}, "linear"),
    ("geglu", "glu_mlp", {"width": 12, "gate": "gelu"}, "linear"),
    ("kron", "kron_adapter", {"factor": 4}, "linear"),
    ("lowrank", "lowrank", {"rank": 3}, "linear"),
    ("attention", "attention_head", {"heads": 2}, "sequence"),
    ("causal_attention", "attention_head", {"heads": 2, "mask": "causal"}, "sequence"),
    ("depthwise_k5_x2", "depthwise", {"kernel": 5, "multiplier": 2, "activation": "hardswish"}, "conv2d"),
    ("depthwise_1d", "depthwise", {"activation": "mish"}, "conv1d"),
    ("lowrank_conv", "lowrank_conv", {"rank": 3}, "conv2d"),
    ("lowrank_conv_1d", "lowrank_conv", {"rank": 2}, "conv1d"),
] + [(f"mlp_{a}", "residual_mlp", {"width": 8, "activation": a}, "linear")
     for a in ("relu", "gelu", "silu", "tanh", "leaky_relu", "elu", "mish", "hardswish")]


def grown(model_key: str, device: str = "cpu") -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis, Tensor]:
    case = MODELS[model_key]
    torch.manual_seed(0)
    model = esper.wrap(case.build().to(device), **case.wrap)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=1, embargo_steps=2)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1)).to(device)
    return model, opt, morph, x


def zero_init_tensor(seed: nn.Module) -> Tensor:
    """The tensor the zero-init rule of the seed's output op zeroes (docs/internals.md)."""
    op = next(o for o in seed.ir["ops"] if o["id"] == seed.ir["output"])
    module = seed.get_submodule(op["id"])
    return {"attention": lambda: module.proj.weight, "kron_linear": lambda: module.a}.get(
        op["op"], lambda: module.weight)()


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize(("template", "params", "model_key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_germination_is_exact_training_moves_it_and_export_keeps_it(template: str, params: dict[str, Any],
                                                                    model_key: str) -> None:
    check_family(template, params, model_key, "cpu")


@pytest.mark.cuda
def test_every_family_on_cuda() -> None:
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        for _, template, params, model_key in CASES:
            check_family(template, params, model_key, "cuda")
    finally:
        torch.backends.cudnn.deterministic = deterministic


def check_family(template: str, params: dict[str, Any], model_key: str, device: str) -> None:
    """Germinates template on the model's layer through morph.germinate and checks: exact output up to
    alpha 1, a non-zero init of the last op breaking it, training moving the seed, and export."""
    model, opt, morph, x = grown(model_key, device)
    layer_name = MODELS[model_key].layer
    target = torch.randn_like(model(x))
    with torch.no_grad():
        before = model(x)
    events = morph.germinate(layer_name, 0, template, **params)
    assert [(e["from"], e["to"]) for e in events] == [("DORMANT", "GERMINATED")]
    layer = morph.layers[0]
    seed = layer.seed(0)
    assert seed.template == template and seed.ir["params"] == {**seed.ir["params"], **params}
    assert seed.param_count == events[0]["param_count"] == seed.ir["param_count"]  # Go's count is what torch built
    for state in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING):
        if state != SeedState.GERMINATED:
            morph.advance(layer_name, 0)
        assert layer.state(0) == state
        with torch.no_grad():
            assert max_diff(model(x), before) <= EXACT and torch.equal(model(x), before), state.name
    assert layer.alpha(0) == 1.0

    # Negative control: the same seed at alpha 1 with its zero-init op set to a small non-zero value.
    zeroed = zero_init_tensor(seed)
    assert not zeroed.any()
    with torch.no_grad():
        zeroed.fill_(1e-2)
        assert max_diff(model(x), before) > EXACT
        zeroed.zero_()
        assert torch.equal(model(x), before)

    start = {n: p.detach().clone() for n, p in seed.named_parameters()}
    losses = []
    for _ in range(6):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss.detach())
        losses.append(float(loss.detach()))
    assert layer.state(0) == SeedState.HOLDING and losses[-1] < losses[0]
    assert zeroed.any() and any(not torch.equal(p, start[n]) for n, p in seed.named_parameters())
    with torch.no_grad():
        assert float(seed(layer_input(model, layer_name, x)).abs().max()) > 0  # the trained branch contributes

    morph.fossilize(layer_name, 0)
    model.eval()
    plain = esper.export(model)
    assert not any(type(m).__module__.startswith("esper") for m in plain.modules())
    if template in ("lowrank", "kron_adapter"):  # merged into the host's weight: no branch is left
        assert type(plain.get_submodule(layer_name)) is nn.Linear
        assert not any(".seeds." in k for k in plain.state_dict())
    with torch.no_grad():
        tol = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-5}  # TF32 convs
        torch.testing.assert_close(plain(x), model(x), **tol)
    morph.close()


def layer_input(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """What the wrapped layer `name` receives for the model input x."""
    seen: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_a_causal_head_ignores_later_tokens_and_a_plain_one_does_not() -> None:
    """After training, a causal head's output at token t depends on tokens <= t only."""
    outputs = {}
    for mask in ("causal", "none"):
        model, opt, morph, x = grown("sequence")
        morph.germinate("block", 0, "attention_head", heads=2, mask=mask)
        seed = morph.layers[0].seed(0)
        with torch.no_grad():
            for p in seed.parameters():  # as if trained: every weight non-zero
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
        h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))
        later = h.clone()
        later[:, -1] = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))  # only the last token changes
        with torch.no_grad():
            outputs[mask] = max_diff(seed(h)[:, :-1], seed(later)[:, :-1])
        morph.close()
    assert outputs["causal"] == 0.0 and outputs["none"] > 1e-3


@pytest.mark.parametrize(("template", "model_key"), [("glu_mlp", "linear"), ("kron_adapter", "linear"),
                                                     ("attention_head", "sequence"), ("depthwise", "conv1d"),
                                                     ("lowrank_conv", "conv2d")])
def test_an_ir_whose_last_op_is_not_zero_initialised_is_refused(template: str, model_key: str) -> None:
    """Negative control: the same IR with its output op's init at PyTorch's default. Go refuses it at
    germination, and Tezzeret's check refuses the module it would build."""
    model, _, morph, x = grown(model_key)
    layer_name = MODELS[model_key].layer
    host = morph.layers[0].spec.host_ir()
    ir = copy.deepcopy(karn.instantiate(template, host))
    out_op = next(o for o in ir["ops"] if o["id"] == ir["output"])
    assert out_op["attrs"]["init"] == "zero"
    out_op["attrs"]["init"] = "default"
    with pytest.raises(InvalidArgumentError, match="not zero at initialisation"):
        morph.germinate(layer_name, 0, ir)
    assert morph.layers[0].state(0) == SeedState.DORMANT
    seed = build_seed(ir, blueprint_id="not-validated")  # bypass Go to reach Tezzeret's own check
    h = layer_input(model, layer_name, x)
    with pytest.raises(SeedValidationError) as err:
        validate_seed(seed, h, model.get_submodule(layer_name)(h).shape)
    assert err.value.check == "zero_init"
    morph.close()


# ------------------------------------------------------------------ random IRs over the op table

# (host, an input of it, the host's output shape for that input)
HOSTS = [
    ({"kind": "linear", "in": 12, "out": 6}, (2, 3, 12), (2, 3, 6)),
    ({"kind": "residual", "dim": 8}, (2, 4, 8), (2, 4, 8)),
    ({"kind": "conv2d", "in": 4, "out": 6, "kernel": 3, "stride": 2, "padding": 1}, (2, 4, 8, 8), (2, 6, 4, 4)),
    ({"kind": "conv1d", "in": 4, "out": 4, "kernel": 3, "stride": 1, "padding": 1}, (2, 4, 9), (2, 4, 9)),
]
ELEMENTWISE = ["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "mish", "hardswish"]


def random_ir(rng: random.Random, host: dict[str, Any]) -> dict[str, Any]:
    """A random op chain on host, with widths that chain most of the time and sometimes not, attrs
    sometimes out of range, and an output op that is usually, not always, zero-initialised."""
    conv = host["kind"].startswith("conv")
    nd = 2 if host["kind"] == "conv2d" else 1
    width = host.get("in", host.get("dim"))
    final = host.get("out", host.get("dim"))
    ops: list[dict[str, Any]] = []
    src = "x"

    def size() -> int:
        return rng.choice([1, 2, 3, 4, 6, 8, 12])

    for i in range(rng.randint(0, 3)):
        kind = rng.choice(ELEMENTWISE + (["conv", "groupnorm"] if conv else ["linear", "kron_linear", "layernorm",
                                                                             "attention"]))
        oid = f"op{i}"
        if kind in ELEMENTWISE:
            op = {"id": oid, "op": kind, "inputs": [src]}
        elif kind == "conv":
            out = size()
            groups = rng.choice([1, 1, width])
            op = {"id": oid, "op": f"conv{nd}d", "inputs": [src],
                  "attrs": {"in": width, "out": out * groups if groups > 1 else out, "kernel": rng.choice([1, 3, 5]),
                            "stride": 1, "padding": rng.choice([0, 1, 2]), "groups": groups,
                            "bias": rng.random() < 0.5}}
            width = op["attrs"]["out"]
        elif kind == "groupnorm":
            op = {"id": oid, "op": "groupnorm", "inputs": [src], "attrs": {"groups": rng.choice([1, 2]),
                                                                             "channels": width}}
        elif kind == "linear":
            out = size()
            op = {"id": oid, "op": "linear", "inputs": [src], "attrs": {"in": width, "out": out,
                                                                          "bias": rng.random() < 0.5}}
            width = out
        elif kind == "kron_linear":
            out = size()
            op = {"id": oid, "op": "kron_linear", "inputs": [src],
                  "attrs": {"in": width, "out": out, "in_factor": rng.choice([1, 2, 3]),
                            "out_factor": rng.choice([1, 2])}}
            width = out
        elif kind == "layernorm":
            op = {"id": oid, "op": "layernorm", "inputs": [src], "attrs": {"dim": width}}
        else:
            op = {"id": oid, "op": "attention", "inputs": [src],
                  "attrs": {"dim": width, "heads": rng.choice([1, 2, 3]), "causal": rng.random() < 0.5}}
        ops.append(op)
        src = oid
    last_kind = rng.choice(["conv"] if conv else ["linear", "kron_linear", "attention"])
    init = "zero" if rng.random() < 0.85 else "default"
    if last_kind == "conv":
        last = {"op": f"conv{nd}d", "attrs": {"in": width, "out": final, "kernel": host["kernel"],
                                              "stride": host["stride"], "padding": host["padding"], "groups": 1,
                                              "bias": rng.random() < 0.5, "init": init}}
    elif last_kind == "linear":
        last = {"op": "linear", "attrs": {"in": width, "out": final, "bias": rng.random() < 0.5, "init": init}}
    elif last_kind == "kron_linear":
        last = {"op": "kron_linear", "attrs": {"in": width, "out": final, "in_factor": rng.choice([1, 2, 4]),
                                               "out_factor": rng.choice([1, 2, 3]), "init": init}}
    else:
        last = {"op": "attention", "attrs": {"dim": width, "heads": rng.choice([1, 2]),
                                             "causal": rng.random() < 0.5, "init": init}}
    if rng.random() < 0.05:
        last["attrs"]["in" if "in" in last["attrs"] else "dim"] = 0  # out of range
    ops.append({"id": "out", "inputs": [src], **last})
    rng.shuffle(ops)
    return {"version": 1, "host": host, "ops": ops, "output": "out"}


def test_what_go_accepts_tezzeret_builds_with_gos_counts() -> None:
    """400 random IRs over the op table: every one Go accepts builds, runs forward and backward on an
    input of the host's shape with an output exactly zero, and has Go's parameter count; every one Go
    refuses is refused with its message (the count of each is printed)."""
    rng = random.Random(17)
    accepted, refused, ops_seen = 0, 0, set()
    for n in range(400):
        host, shape, out_shape = HOSTS[n % len(HOSTS)]
        ir = random_ir(rng, host)
        try:
            data, bid = karn.canonical(ir)
        except InvalidArgumentError as exc:
            assert "blueprint" in str(exc)
            refused += 1
            continue
        accepted += 1
        ops_seen |= {o["op"] for o in ir["ops"]}
        counted = karn.analyze(ir)
        seed = build_seed(ir, blueprint_id=bid)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(n))
        report = validate_seed(seed, x, out_shape)
        assert report["param_count"] == counted["param_count"], ir
    print(f"accepted {accepted}, refused {refused}")
    assert accepted >= 100 and refused >= 40
    assert {"kron_linear", "attention", "leaky_relu", "elu", "mish", "hardswish"} <= ops_seen <= set(OP_NAMES)


def test_kron_linear_is_the_kronecker_product_of_its_factors() -> None:
    """kron_linear computes x @ kron(a, b).T (torch.kron, formed here and never by the seed), with
    a.numel() + b.numel() parameters: Go's count."""
    ir = karn.instantiate("kron_adapter", {"kind": "linear", "in": 12, "out": 10}, factor=3)
    seed = build_seed(ir, dtype=torch.float64)
    kron = seed.get_submodule("kron")
    assert tuple(kron.a.shape) == (2, 3) and tuple(kron.b.shape) == (5, 4)  # in 12 = 3 x 4, out 10 = 2 x 5
    assert seed.param_count == ir["param_count"] == 2 * 3 + 5 * 4
    with torch.no_grad():
        kron.a.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 12, dtype=torch.float64)
    torch.testing.assert_close(seed(x), x @ torch.kron(kron.a, kron.b).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("template", "params", "model_key"), [
    ("glu_mlp", {"width": 8, "gate": "sigmoid"}, "linear"),
    ("kron_adapter", {"factor": 2}, "linear"),
    ("attention_head", {"heads": 2, "mask": "causal"}, "sequence"),
    ("depthwise", {"kernel": 5, "activation": "elu"}, "conv2d"),
], ids=["glu", "kron", "causal_attention", "depthwise"])
def test_tamiyo_germinates_the_configured_family_exactly(template: str, params: dict[str, Any],
                                                         model_key: str) -> None:
    """The heuristic policy, configured with a new family's template, germinates it on a plateau: the
    decision names it, Go's blueprint carries its parameters, and the model's output is unchanged."""
    case = MODELS[model_key]
    torch.manual_seed(0)
    model = esper.wrap(case.build(), **case.wrap)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1))
    with Morphogenesis(model, opt, template=template, template_params=params, patience=1, cooldown_epochs=0,
                       signal_every=1) as morph:
        decisions: list[dict[str, Any]] = []
        for _ in range(6):
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            morph.step(loss)
            with torch.no_grad():
                before = model(x)
            decisions = [d for d in morph.end_epoch(val_loss=1.0)["decisions"] if d["op"] == "germinate"]
            if decisions:
                break
        assert decisions, "Tamiyo never germinated on a plateau"
        assert decisions[0]["template"] == template
        seed = morph.layers[0].seed(0)
        assert seed.template == template and {k: seed.ir["params"][k] for k in params} == params
        with torch.no_grad():
            assert max_diff(model(x), before) <= EXACT and torch.equal(model(x), before)


def test_an_attention_seed_refuses_an_input_without_a_sequence_dim() -> None:
    """On (B, C) features, attention over dim -2 would mix the samples of a batch: Tezzeret's check
    refuses the seed (the forward check; in training, a build failure reported to Go)."""
    ir = {"version": 1, "host": {"kind": "linear", "in": 8, "out": 8}, "output": "attn",
          "ops": [{"id": "attn", "op": "attention", "inputs": ["x"], "attrs": {"dim": 8, "heads": 2, "init": "zero"}}]}
    seed = build_seed(ir)  # Go accepts it: a linear host's input is (*, 8)
    validate_seed(seed, torch.randn(2, 3, 8), (2, 3, 8))
    with pytest.raises(SeedValidationError, match="expects tokens") as err:
        validate_seed(seed, torch.randn(4, 8), (4, 8))
    assert err.value.check == "forward"


def test_tezzeret_refuses_mangled_irs_with_a_value_error() -> None:
    """Tezzeret's own parse, reached without Go (an id given): 600 random manglings of IRs of every
    template (an attr dropped, retyped or renamed, an op renamed, an input rewired) either build or
    raise ValueError naming the op, never another exception."""
    rng = random.Random(5)
    hosts = [h for h, _, _ in HOSTS]
    bases = []
    for t in karn.templates():
        for host in hosts:
            try:
                bases.append(karn.instantiate(t["name"], host))
            except InvalidArgumentError:
                continue  # the template does not fit this host
    assert {o["op"] for b in bases for o in b["ops"]} >= {"kron_linear", "attention", "mul", "conv1d", "conv2d"}
    values = [0, -1, 3, 1.5, True, "zero", "default", None, [1], {"a": 1}, 2**40]
    built = refused = 0
    for _ in range(600):
        ir = copy.deepcopy(rng.choice(bases))
        op = rng.choice(ir["ops"])
        how = rng.randrange(5)
        attrs = op.setdefault("attrs", {})
        if how == 0 and attrs:
            del attrs[rng.choice(sorted(attrs))]
        elif how == 1 and attrs:
            attrs[rng.choice(sorted(attrs))] = rng.choice(values)
        elif how == 2:
            attrs[rng.choice(["causal", "in_factor", "slope", "init"])] = rng.choice(values)
        elif how == 3:
            op["op"] = rng.choice([*OP_NAMES, "conv3d", "softmax", 7])
        else:
            op["inputs"] = [rng.choice(["x", "nope", op["id"], *[o["id"] for o in ir["ops"]]])] * rng.choice([1, 2])
        try:
            build_seed(ir, blueprint_id="mangled")
        except ValueError as exc:
            assert str(exc)
            refused += 1
        else:
            built += 1
    print(f"built {built}, refused {refused}")
    assert refused >= 200 and built >= 50
