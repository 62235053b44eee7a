"""Transformers through Esper (issue 13, item 1), with real PyTorch and the real Go library.

Wrapped layers look like their hosts to code that reads their attributes; nn.TransformerEncoderLayer's
fused eval path never drops a live seed (and would: see the negative controls); nn.MultiheadAttention's
out_proj, used through its parameters, is never wrapped; exported models keep their branches and
compute what the wrapped ones do, fused paths included. The models are defined here: PyTorch's
encoder and decoder layers, an attention block built on nn.MultiheadAttention, and a GPT (causal
self-attention + MLP, nanoGPT's shape). Seeds are driven through their states with
``Morphogenesis(..., policy="manual")``; the last test runs the README's training loop on a character
language model where the heuristic policy germinates by itself.
"""

from __future__ import annotations

import copy
import io
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis
from esper.kasmina import HostSpec, KasminaLayer, SeedState
from esper.wrap import PARAMETER_ONLY

D, HEADS, FF, T, B = 16, 2, 32, 6, 4


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- models


class Encoder(nn.Module):
    """(B, T, D) -> (B, T, D): nn.TransformerEncoder, batch first (so eval can take the fused path)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        return self.enc(x, src_key_padding_mask=padding)


class Decoder(nn.Module):
    """(B, T, D) -> (B, T, D): nn.TransformerDecoder, causal, over a memory made from the input."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
        self.dec = nn.TransformerDecoder(layer, 2)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.dec(x, x.flip(1), tgt_mask=mask, tgt_is_causal=True)


class Attention(nn.Module):
    """(B, T, D) -> (B, T, D): nn.MultiheadAttention, then a LayerNorm and a Linear, both residual."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(D)
        self.fc = nn.Linear(D, D)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return h + self.fc(self.norm(h))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.c_attn(x).split(c, dim=2))  # (B, H, T, C/H) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C/H)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """(B, T) token ids -> (B, T, vocab) logits."""

    def __init__(self, vocab: int = 12, dim: int = D, heads: int = HEADS, layers: int = 2, context: int = 32) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@dataclass
class Case:
    build: Callable[[], nn.Module]
    targets: list[Any]
    wrapped: list[str]  # the Kasmina layers wrap() must make, in session order
    batch: Callable[[torch.Generator], Tensor]


def features(g: torch.Generator) -> Tensor:
    return torch.randn(B, T, D, generator=g)


CASES = {
    "encoder": Case(Encoder, ["enc.layers.*.linear1", "enc.layers.*.linear2"],
                    [f"enc.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)], features),
    "decoder": Case(Decoder, ["dec.layers.*.linear1", "dec.layers.*.linear2"],
                    [f"dec.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)], features),
    "attention": Case(Attention, [nn.Linear], ["fc"], features),
    "gpt": Case(GPT, ["blocks.*.mlp.fc2"], ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"],
                lambda g: torch.randint(0, 12, (B, T), generator=g)),
}


def fresh(case: Case) -> tuple[nn.Module, nn.Module]:
    """(unwrapped copy, wrapped model) with the same initial weights."""
    torch.manual_seed(0)
    model = case.build()
    return copy.deepcopy(model), esper.wrap(model, target_modules=case.targets)


def grown(case: Case, state: SeedState) -> tuple[nn.Module, Morphogenesis, Tensor]:
    """A wrapped model whose first layer's seed is in `state` (alpha 1/2 in BLENDING), its seed
    weights drawn away from zero so that it changes the output; and an input batch."""
    _, model = fresh(case)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=1, train_steps=50, blend_steps=4)
    x = case.batch(torch.Generator().manual_seed(1))
    morph.germinate(0, 0, "residual_mlp", width=8)
    order = [SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING, SeedState.FOSSILIZED]
    for target in order[:order.index(state) + 1]:
        if target == SeedState.FOSSILIZED:
            morph.fossilize(0, 0)
        else:
            morph.advance(0, 0)
        if target == SeedState.BLENDING:
            for _ in range(2):  # alpha 0 -> 2/4, through Go's schedule
                loss = model(x).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                morph.step(loss)
    layer = morph.layers[0]
    assert layer.state(0) == state and (state != SeedState.BLENDING or layer.alpha(0) == 0.5)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in layer.seed(0).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, morph, x


def eval_out(model: nn.Module, *args: Any, fastpath: bool = True) -> Tensor:
    """The model's output in eval mode under no_grad, with PyTorch's fused fast paths allowed or not."""
    model.eval()
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        with torch.no_grad():
            return model(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


# ---------------------------------------------------------------------------------------- attributes


class Host(nn.Linear):
    """A Linear with an attribute of its own and a protocol method that must stay its own."""

    def __init__(self) -> None:
        super().__init__(3, 2)
        self.scale = 0.5

    def __deepcopy__(self, memo: dict[int, Any]) -> str:
        return "the host's own copy"


def test_a_wrapped_layer_exposes_its_hosts_attributes() -> None:
    model = esper.wrap(nn.Sequential(nn.Linear(3, 2), nn.Conv2d(2, 4, 3, stride=2, padding=1)),
                       target_modules=[nn.Linear, nn.Conv2d])
    linear, conv = model[0], model[1]
    assert isinstance(linear, KasminaLayer) and isinstance(conv, KasminaLayer)
    assert linear.weight is linear.base_layer.weight and linear.bias is linear.base_layer.bias
    assert (linear.in_features, linear.out_features) == (3, 2)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (2, 4, (3, 3), (2, 2),
                                                                                                  (1, 1))
    assert conv.weight is conv.base_layer.weight
    # The layer's own attributes come first; state_dict and parameters are unchanged by the forwarding.
    assert isinstance(linear.seeds, nn.ModuleDict) and linear.spec.kind == "linear"
    assert set(model.state_dict()) == {"0.base_layer.weight", "0.base_layer.bias", "1.base_layer.weight",
                                       "1.base_layer.bias"}
    with pytest.raises(AttributeError, match="'KasminaLayer' object has no attribute 'nope', nor has its "
                                             "base_layer \\(Linear\\)"):
        linear.nope  # noqa: B018
    # A dormant layer's forward is still the host's own bound forward.
    assert linear.is_dormant and linear.forward == linear.base_layer.forward

    host = esper.wrap(nn.Sequential(Host()), target_modules=["0"])[0]
    assert host.scale == 0.5
    # Protocol names stay the layer's: forwarding __deepcopy__ would copy the host instead of the layer.
    assert copy.deepcopy(host.base_layer) == "the host's own copy"
    assert isinstance(copy.deepcopy(host), KasminaLayer)


def test_weight_tying_after_wrapping_ties_the_hosts_weight() -> None:
    torch.manual_seed(0)
    model = esper.wrap(GPT(), target_modules=["head"])
    model.head.weight = model.wte.weight  # nanoGPT's tie, written after wrapping
    assert model.head.base_layer.weight is model.wte.weight and "weight" not in model.head._parameters
    assert len(list(model.parameters())) == len(list(GPT().parameters())) - 1  # one tensor fewer: tied
    idx = torch.randint(0, 12, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = model.ln_f(model.blocks[1](model.blocks[0](model.wte(idx) + model.wpe(torch.arange(T)))))
        torch.testing.assert_close(model(idx), x @ model.wte.weight.T, rtol=0, atol=0)
    model.head.tag = "mine"  # any other attribute is the layer's own
    assert model.head.__dict__["tag"] == "mine" and not hasattr(model.head.base_layer, "tag")


def test_attribute_lookup_before_base_layer_is_set_does_not_recurse() -> None:
    half_built = KasminaLayer.__new__(KasminaLayer)
    with pytest.raises(AttributeError):
        half_built.weight  # noqa: B018
    with pytest.raises(AttributeError):
        half_built.base_layer  # noqa: B018


# ---------------------------------------------------------------------------------------- parameter-only children


def test_multihead_attentions_out_proj_is_never_wrapped_by_type_and_refused_by_name() -> None:
    _, model = fresh(CASES["attention"])
    assert [n for n, _ in esper.kasmina_layers(model)] == ["fc"]
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    model(features(torch.Generator().manual_seed(0))).sum().backward()  # the training forward runs
    for pattern in ("attn.out_proj", "*proj"):
        with pytest.raises(ValueError, match="module 'attn.out_proj' .* cannot be wrapped: its parent "
                                             "MultiheadAttention uses it through its parameters and never calls"):
            esper.wrap(Attention(), target_modules=[pattern])
    with pytest.raises(ValueError, match=r"target Linear matches only modules their parent uses through their "
                                         r"parameters, which are never wrapped: \['0.out_proj'\]"):
        esper.wrap(nn.Sequential(nn.MultiheadAttention(D, HEADS)), target_modules=[nn.Linear])
    # PyTorch's marker class is skipped wherever it sits; a predicate skips like a type.
    marked = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4), nn.Linear(4, 4))
    assert [n for n, _ in esper.kasmina_layers(esper.wrap(marked, target_modules=[
        lambda name, m: isinstance(m, nn.Linear)]))] == ["1"]
    assert (nn.MultiheadAttention, "out_proj") in PARAMETER_ONLY
    # PyTorch's own encoder: every Linear but the attention output projections.
    encoder = esper.wrap(Encoder(), target_modules=[nn.Linear])
    assert [n for n, _ in esper.kasmina_layers(encoder)] == CASES["encoder"].wrapped


def test_a_seed_on_out_proj_would_never_run() -> None:
    """The reason for the refusal, shown: wrapped by hand, with a live seed that changes its output,
    out_proj leaves MultiheadAttention's output unchanged."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
    x = features(torch.Generator().manual_seed(0))
    before = attn(x, x, x, need_weights=False)[0]
    out_proj = attn.out_proj
    layer = KasminaLayer(out_proj, HostSpec("out_proj", "linear", D, D))
    attn.out_proj = layer
    seed = nn.Linear(D, D)
    layer.add_seed(0, seed)
    for state in ("TRAINING", "BLENDING", "HOLDING"):
        layer.set_state(0, state, 0.5 if state == "BLENDING" else None)
    assert not torch.allclose(layer(x), out_proj(x))  # the wrapped projection itself does change
    torch.testing.assert_close(attn(x, x, x, need_weights=False)[0], before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- dormant, live, fused


@pytest.mark.parametrize("name", CASES)
def test_a_dormant_wrapped_model_computes_what_the_unwrapped_one_does(name: str) -> None:
    case = CASES[name]
    plain, model = fresh(case)
    assert [n for n, _ in esper.kasmina_layers(model)] == case.wrapped
    x = case.batch(torch.Generator().manual_seed(1))
    assert torch.equal(model.train()(x), plain.train()(x))
    model(x).square().mean().backward()
    plain(x).square().mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n.replace(".base_layer", "")]), n
    assert torch.equal(eval_out(model, x), eval_out(plain, x))  # the fused path, where there is one, on both


@pytest.mark.parametrize("state", [SeedState.BLENDING, SeedState.HOLDING], ids=lambda s: s.name)
@pytest.mark.parametrize("name", CASES)
def test_a_live_seed_runs_in_train_and_in_eval(name: str, state: SeedState) -> None:
    case = CASES[name]
    model, morph, x = grown(case, state)
    layer = morph.layers[0]
    with morph.without_seeds():
        host_only = eval_out(model, x)
    slow = eval_out(model, x, fastpath=False)  # every submodule called: the seed included
    assert (slow - host_only).abs().max() > 1e-3  # the seed changes the output
    torch.testing.assert_close(eval_out(model, x), slow, rtol=1e-5, atol=1e-5)
    model.eval()
    torch.testing.assert_close(model(x), slow, rtol=1e-5, atol=1e-5)  # eval with grad enabled
    model.train()
    out = model(x)
    torch.testing.assert_close(out, slow, rtol=1e-5, atol=1e-5)  # dropout 0: train computes the same
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.seed(0).parameters())
    assert layer.pop_failures() == []


def test_the_encoders_fused_path_would_drop_a_live_seed() -> None:
    """Negative control: without the layer's pre-hook, eval under no_grad takes PyTorch's fused
    encoder kernel on the host weights, and the seed's contribution is gone."""
    model, morph, x = grown(CASES["encoder"], SeedState.HOLDING)
    layer = morph.layers[0]
    slow = eval_out(model, x, fastpath=False)
    with morph.without_seeds():
        host_only = eval_out(model, x)
        assert not layer._forward_pre_hooks  # no live seed: the fused path is free to run
    torch.testing.assert_close(eval_out(model, x), slow, rtol=1e-5, atol=1e-5)
    (hook,) = layer._forward_pre_hooks.values()
    layer._unfused.remove()
    dropped = eval_out(model, x)
    torch.testing.assert_close(dropped, host_only, rtol=1e-5, atol=1e-5)
    assert (dropped - slow).abs().max() > 1e-3


def test_a_training_seed_leaves_the_fused_path_free() -> None:
    """A TRAINING seed adds 0 outside training, so eval keeps PyTorch's fused path."""
    model, morph, x = grown(CASES["encoder"], SeedState.TRAINING)
    assert not morph.layers[0]._forward_pre_hooks
    with morph.without_seeds():
        host_only = eval_out(model, x)
    assert torch.equal(eval_out(model, x), host_only)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_the_encoders_nested_path_with_a_padding_mask_keeps_the_seed() -> None:
    """In eval with a padding mask, nn.TransformerEncoder hands its layers a nested tensor; a layer
    with a live seed runs each sequence on its own and matches the padded slow path where it is not padding."""
    model, morph, x = grown(CASES["encoder"], SeedState.HOLDING)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 3:] = True
    nested = eval_out(model, x, padding)
    slow = eval_out(model, x, padding, fastpath=False)
    with morph.without_seeds():
        host_only = eval_out(model, x, padding)
    keep = ~padding
    torch.testing.assert_close(nested[keep], slow[keep], rtol=1e-5, atol=1e-5)
    assert (nested[keep] - host_only[keep]).abs().max() > 1e-3
    assert morph.layers[0].pop_failures() == []


# ---------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", CASES)
def test_an_exported_model_computes_what_the_wrapped_one_does(name: str) -> None:
    case = CASES[name]
    model, morph, x = grown(case, SeedState.FOSSILIZED)
    plain_keys = set(fresh(case)[0].state_dict())
    host_name = case.wrapped[0]
    exported = esper.export(model)
    host = exported.get_submodule(host_name)
    assert type(host) is nn.Linear
    assert host.weight is dict(exported.named_parameters())[f"{host_name}.weight"]
    assert host.in_features == model.get_submodule(host_name).in_features
    seed_keys = {k for k in exported.state_dict() if ".seeds." in k}
    assert seed_keys and all(k.startswith(f"{host_name}.seeds.0.") for k in seed_keys)
    assert set(exported.state_dict()) == plain_keys | seed_keys  # the unwrapped keys, no duplicate
    assert len(exported.state_dict()) == len(plain_keys | seed_keys)
    hooks = [h for m in exported.modules() for h in m._forward_hooks.values()]
    assert not any(type(m).__module__.startswith("esper") for m in [*exported.modules(), *hooks])

    with morph.without_seeds():
        host_only = eval_out(model, x)
    wrapped_eval = eval_out(model, x)
    assert (wrapped_eval - host_only).abs().max() > 1e-3
    assert torch.equal(eval_out(exported, x), wrapped_eval)
    assert torch.equal(exported.train()(x), model.train()(x))
    for again in (copy.deepcopy(exported), pickled(exported)):
        assert torch.equal(eval_out(again, x), wrapped_eval)
        assert torch.equal(again.train()(x), model.train()(x))
    if name == "encoder":  # negative control: without its hook, the fused path drops the branch
        host._forward_hooks.clear()
        torch.testing.assert_close(eval_out(exported, x), host_only, rtol=1e-5, atol=1e-5)


def pickled(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# ---------------------------------------------------------------------------------------- the README's loop


def corpus(n_sentences: int, seed: int) -> str:
    """Sentences of a tiny grammar: '<subject> <verb> <object>.' with a plural agreement."""
    rng = random.Random(seed)
    subjects = [("the cat", "s"), ("a dog", "s"), ("birds", ""), ("we", "")]
    verbs = ["see", "like", "chase"]
    objects = ["the mat", "a ball", "two mice", "it"]
    out = []
    for _ in range(n_sentences):
        subject, ending = rng.choice(subjects)
        out.append(f"{subject} {rng.choice(verbs)}{ending} {rng.choice(objects)}. ")
    return "".join(out)


def test_the_readme_training_loop_on_a_gpt_character_model(tmp_path: Path) -> None:
    """The README's "Use it in your training loop", unchanged in shape, on a GPT over a generated corpus:
    the heuristic policy germinates by itself, a checkpoint resumes identically, export agrees."""
    text = corpus(200, seed=0)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    context = 16
    windows = ids.unfold(0, context + 1, context)  # (N, 17): inputs and next-character targets
    train_w, val_w = windows[:-24], windows[-24:]
    loader = [(w[:, :-1], w[:, 1:]) for w in train_w[: (len(train_w) // 24) * 24].split(24)]
    vocab, epochs = len(chars), 14

    def MyModel() -> nn.Module:  # noqa: N802 - the README's name
        return GPT(vocab=vocab, dim=16, heads=2, layers=2, context=context)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def my_validation(m: nn.Module) -> tuple[float, float]:
        was = m.training
        m.eval()
        with torch.no_grad():
            logits = m(val_w[:, :-1])
        m.train(was)
        return float(loss_fn(logits, val_w[:, 1:])), float((logits.argmax(-1) == val_w[:, 1:]).float().mean())

    # Small lifecycle settings so that growth happens within a few seconds; prune_below and
    # min_gain keep the held seed (the test is about the loop, not the judgement).
    settings = {"signal_every": 2, "train_steps": 6, "blend_steps": 6, "patience": 1, "threshold": 0.3,
                "prune_below": -1.0, "min_gain": 0.0, "cooldown_epochs": 1}

    def start() -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
        torch.manual_seed(0)
        model = MyModel()
        esper.wrap(model, target_modules=["blocks.*.mlp.fc2"], seeds_per_layer=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

        def evaluate(m: nn.Module) -> dict[str, float]:  # validation loss (and metric) of the model as it is
            loss, acc = my_validation(m)
            return {"loss": loss, "metric": acc}

        morph = esper.Morphogenesis(model, optimizer, evaluate=evaluate,
                                    template="residual_mlp", template_params={"width": 16},
                                    max_params=50_000, epochs=epochs, **settings)
        return model, optimizer, morph

    def run(model: nn.Module, optimizer: torch.optim.Optimizer, morph: Morphogenesis, first: int,
            last: int) -> list[float]:
        losses = []
        for epoch in range(first, last):
            for x, y in loader:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(); loss.backward(); optimizer.step()  # noqa: E702 - the README's line
                morph.step(loss)
                losses.append(float(loss.detach()))
            result = morph.end_epoch()
            for d in result["decisions"]:
                decisions.append((epoch, d["op"], d["reason"]))
        return losses

    decisions: list[tuple[int, str, str]] = []
    model, optimizer, morph = start()
    stop = 6
    before = run(model, optimizer, morph, 0, stop)
    germinations = [d for d in decisions if d[1] == "germinate"]
    assert germinations, decisions  # decided by Tamiyo at end_epoch: nothing here germinates by hand
    states = {morph.layers[i].state(s).name for i in range(2) for s in range(2)}
    assert states & {"TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"}, states  # a seed lives at the checkpoint

    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "morph": morph.state_dict()}, path)
    after = run(model, optimizer, morph, stop, epochs)
    decisions_after = [d for d in decisions if d[0] >= stop]

    ckpt = torch.load(path, weights_only=True)
    decisions.clear()
    model2, optimizer2, morph2 = start()
    morph2.load_state_dict(ckpt["morph"])
    model2.load_state_dict(ckpt["model"])
    optimizer2.load_state_dict(ckpt["optimizer"])
    resumed = run(model2, optimizer2, morph2, stop, epochs)
    assert resumed == after
    assert decisions == decisions_after
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert morph2.seeds() == morph.seeds()
    assert math.isfinite(after[-1]) and after[-1] < before[0]

    fossilized = [(i, s) for i in range(2) for s in range(2) if morph.layers[i].state(s) == SeedState.FOSSILIZED]
    assert fossilized, morph.seeds()
    plain = esper.export(model)
    assert not any(isinstance(m, KasminaLayer) for m in plain.modules())
    x = val_w[:, :-1]
    adding = [(i, s) for i in range(2) for s in range(2)
              if morph.layers[i].state(s) in (SeedState.BLENDING, SeedState.HOLDING)]
    assert not adding, morph.seeds()  # so the export keeps every seed that adds to the output
    assert torch.equal(eval_out(plain, x), eval_out(model, x))
    assert torch.equal(plain.train()(x), model.train()(x))
    morph.close()
    morph2.close()
