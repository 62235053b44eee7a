"""The cheaper sampling step (issue 20 item 1): the effective rank from the eigenvalues of the
smaller Gram matrix, dead units counted on the host, and the signals a training loop sends to Go
still equal to their definitions. Real PyTorch and the real library throughout."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper import Morphogenesis
from esper.kasmina import SIGNALS, _effective_rank, gather_signals, set_sampling
from esper.session import Session


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rank_by_svd(rows: Tensor) -> float:
    """The effective rank by its definition: exp(entropy) of the normalised singular values."""
    s = torch.linalg.svdvals(rows.double())
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


@pytest.mark.parametrize("shape", [(64, 10), (32, 64), (64, 64), (64, 1024), (3, 200)])
def test_effective_rank_equals_the_svd_definition(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    full = torch.randn(*shape, generator=g)
    # Rank-deficient: two directions only, plus rows of very different scales.
    low = torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)
    scaled = full * torch.logspace(-3, 3, shape[0]).unsqueeze(1)
    for rows in (full, low, scaled):
        want = rank_by_svd(rows)
        assert math.isclose(_effective_rank(rows), want, rel_tol=1e-5), (rows.shape, want)
    assert math.isclose(_effective_rank(low), 2.0, rel_tol=0.5)  # near its true rank, far from min(shape)


def test_effective_rank_of_zero_or_nonfinite_rows_is_nan() -> None:
    assert math.isnan(_effective_rank(torch.zeros(8, 5)))
    rows = torch.randn(8, 5)
    rows[3, 1] = math.inf
    assert math.isnan(_effective_rank(rows))


def test_dead_units_are_counted_like_the_device_count() -> None:
    # Units whose maximum over the batch is <= 0 are dead; a unit whose maximum is NaN is not
    # (NaN <= 0 is false on the device and on the host alike).
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(6, 12)), target_modules=["0"])
    layer = model[0]
    with torch.no_grad():
        layer.base_layer.weight[:4].zero_()
        layer.base_layer.bias[:4] = torch.tensor([-1.0, 0.0, -0.5, 2.0])  # 3 dead units, 1 alive
        layer.base_layer.bias[4] = math.nan
    x = torch.randn(16, 6)
    set_sampling(model, True)
    h = model(x).detach()
    got = gather_signals(model)[SIGNALS.index("dead_frac")].item()
    want = (h.amax(0) <= 0).float().mean().item()
    assert got == pytest.approx(want) and want > 0
    assert got == pytest.approx(3 / 12 + float((h[:, 5:].amax(0) <= 0).sum()) / 12)


def test_the_signals_sent_to_go_in_a_training_loop_equal_their_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffer Go ingests at a flush (the real call, recorded on its way in) holds, for each
    layer, the measurements of the sampling step computed by definition from that step's
    tensors; the steps between samples send nothing."""
    every = 5
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)),
                       target_modules=[nn.Linear])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=every)
    sent: list[tuple[int, np.ndarray | None]] = []
    real = Session.step

    def recorded(self: Session, steps: int = 1, signals: np.ndarray | None = None) -> int:
        sent.append((steps, None if signals is None else signals.copy()))
        return real(self, steps, signals)

    real_waiting = Session.step_waiting

    def recorded_waiting(self: Session, steps: int, signals: np.ndarray | None = None) -> tuple[int, int, int]:
        sent.append((steps, None if signals is None else signals.copy()))
        return real_waiting(self, steps, signals)

    monkeypatch.setattr(Session, "step", recorded)
    monkeypatch.setattr(Session, "step_waiting", recorded_waiting)
    seen: dict[int, dict[str, Tensor]] = {}

    def keep(index: int):
        def hook(layer: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            if out.requires_grad:
                out.retain_grad()
            seen[index] = {"x": args[0].detach().clone(), "y": out, "w": layer.base_layer.weight.detach().clone()}
        return hook

    wrapped = [model[0], model[2], model[4]]
    for i, layer in enumerate(wrapped):
        layer.register_forward_hook(keep(i))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    losses = []
    for step in range(1, 2 * every + 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sampled = {i: {k: (v.grad.detach().clone() if k == "y" else v) for k, v in d.items()} | {"h": d["y"].detach()}
                   for i, d in seen.items()}
        opt.step()
        losses.append(float(loss.detach()))
        morph.step(loss)
        if step % every == 0:
            steps, buf = sent[-1]
            assert steps == every and buf is not None
            assert buf[0] == pytest.approx(losses[-1], rel=1e-6)  # the sampled loss (one per interval)
            assert buf[1] == 0.0  # nothing non-finite
            rows = buf[2:].reshape(len(wrapped), len(SIGNALS))
            for i, row in enumerate(rows):
                h, grad, w = sampled[i]["h"], sampled[i]["y"], sampled[i]["w"]
                want = {"act_mean": h.mean(), "act_var": h.var(), "dead_frac": (h.amax(0) <= 0).float().mean(),
                        "grad_norm": grad.norm(), "weight_norm": w.norm()}
                for name, value in want.items():
                    assert row[SIGNALS.index(name)] == pytest.approx(float(value), rel=1e-4, abs=1e-6), (i, name)
                assert math.isfinite(row[SIGNALS.index("seed_gain")]) and row[SIGNALS.index("seed_gain")] >= 0
                if step == every:  # the first sample is one of the rank's (every rank_every-th)
                    assert row[SIGNALS.index("eff_rank")] == pytest.approx(rank_by_svd(h[:64]), rel=1e-5)
                else:
                    assert math.isnan(row[SIGNALS.index("eff_rank")])
    assert [s for s, buf in sent if buf is None] == []  # no call between flushes while nothing blends
    assert all(layer.is_dormant for layer in wrapped)  # the host's own forward between samples
    morph.close()


def test_the_fused_path_pre_hook_is_held_in_evaluation_mode_only() -> None:
    """A seed that adds to the output needs the no-op pre-hook (which keeps PyTorch's fused eval
    paths from skipping the seed) in evaluation mode only; in training mode, where PyTorch takes no
    fused path, the layer holds no hook and its forward skips nn.Module's hook-calling path. The
    outputs are the same either way."""
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["2"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = Morphogenesis(model, opt, policy="manual")
    morph.germinate("2", 0, "residual_mlp", width=4)
    layer = model[2]
    for _ in range(3):
        morph.advance("2", 0, "test")  # TRAINING, BLENDING, HOLDING
    with torch.no_grad():
        for p in layer.seed(0).parameters():
            p.add_(0.1)  # a seed that changes the output
    x = torch.randn(5, 8)
    assert model.training and not layer._forward_pre_hooks
    trained = model(x)
    model.eval()
    assert len(layer._forward_pre_hooks) == 1  # the control: evaluation mode holds it
    with torch.no_grad():
        evaluated = model(x)
        with morph.without_seeds():
            host = model(x)
            assert not layer._forward_pre_hooks  # no seed adds: the fused path is free
    assert len(layer._forward_pre_hooks) == 1
    model.train()
    assert not layer._forward_pre_hooks
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)
    assert (evaluated - host).abs().max() > 1e-3  # the seed's contribution is in both
    morph.close()


def test_stepcost_counts_an_interval_and_times_its_sampling_step() -> None:
    """The profile tool of docs/performance.md: deterministic counts over one signal interval (a
    wrapped dormant model makes at least the plain model's calls and ops, plus its sampling) and the
    sampling step's CPU time against an ordinary step's."""
    from esper.bench import stepcost

    esper_step, plain, morph = stepcost.build("dormant:Deep1", torch.device("cpu"))
    every = morph.config.signal_every
    c = stepcost.counts(esper_step, plain, every)
    assert c["calls_esper"] > c["calls_baseline"] > 0 and c["ops_esper"] > c["ops_baseline"] > 0, c
    t = stepcost.sampling_cost(esper_step, morph, 2, plain)
    assert t["sampling_min"] > 0 and t["ordinary_min"] > 0 and t["extra_min"] == t["sampling_min"] - t["ordinary_min"]
    assert t["baseline_min"] > 0 and t["baseline_p20"] >= t["baseline_min"]
    morph.close()
    with pytest.raises(ValueError, match="unknown pair"):
        stepcost.build("sleeping:TinyMLP", torch.device("cpu"))


def test_stepcost_guard_cost_times_both_guards_on_one_model_and_puts_the_default_back() -> None:
    """--guards: ordinary steps of the default guard, of guard "sampled" on the same model and of the
    hand-written model, with the per-round differences; only active pairs under the default guard."""
    from esper.bench import stepcost
    from esper.kasmina import KasminaLayer

    seen: list[bool] = []
    real = KasminaLayer._add_seeds

    def spy(self: KasminaLayer, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        seen.append(self.guard_every_step)
        return real(self, x, h)

    KasminaLayer._add_seeds = spy  # type: ignore[method-assign]
    try:
        g = stepcost.guard_cost("active:TinyMLP:HOLDING:step", 6)
    finally:
        KasminaLayer._add_seeds = real  # type: ignore[method-assign]
    assert True in seen and False in seen  # both guards ran
    for name in ("step", "sampled", "hand"):
        assert 0 < g[name]["min"] <= g[name]["p20"] <= g[name]["median"], g
    assert set(g) == {"step", "sampled", "hand", "step-sampled", "step-hand", "sampled-hand"}
    with pytest.raises(ValueError, match="active pairs under the default guard"):
        stepcost.guard_cost("active:TinyMLP:HOLDING:sampled", 2)


def test_stepcost_phases_time_the_parts_of_the_sampling_step() -> None:
    """--phases: only the sampling step flushes, reads the signals, calls Go (once) and runs the taps;
    the functions it wraps are put back afterwards."""
    from esper import kasmina, tolaria
    from esper.bench import stepcost

    before = (tolaria.gather_health, Session.step_waiting, kasmina.KasminaLayer._record_grad)
    got = stepcost.phases("dormant:Deep1", torch.device("cpu"), 2)
    assert (tolaria.gather_health, Session.step_waiting, kasmina.KasminaLayer._record_grad) == before
    for label in ("flush", "gather_health", "go_step_waiting", "forward_taps", "backward_taps"):
        sampling, ordinary = got[label]
        assert sampling > 0 and ordinary == 0, (label, got[label])
    assert got["go_step"] == (0, 0) and got["go_waiting"] == (0, 0)  # the flush's one call is step_waiting
    assert got["total"][0] > got["total"][1] > 0
    with pytest.raises(ValueError, match="dormant pairs"):
        stepcost.phases("active:TinyMLP:HOLDING:step", torch.device("cpu"), 1)


@pytest.mark.parametrize("state", ["TRAINING", "BLENDING", "HOLDING"])
def test_the_step_guard_gives_the_hand_written_outputs_and_gradients(state: str) -> None:
    """Guard "step" (on CPU: the seed added by hand when finite, left out of the graph when not; on
    CUDA: where(finite, seed term, 0)): outputs and gradients (input, host,
    seed) equal the hand-written h + a * s (TRAINING: h + (s - s.detach())) on a finite seed; a
    non-finite seed leaves the host's output and the host's and input's gradients of the model
    without the seed (and those are NaN when the seed is added by hand: the control)."""
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)), target_modules=["2"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = Morphogenesis(model, opt, policy="manual", blend_steps=10)
    morph.germinate("2", 0, "residual_mlp", width=4)
    layer = model[2]
    for _ in range(["TRAINING", "BLENDING", "HOLDING"].index(state) + 1):
        morph.advance("2", 0, "test")
    if state == "BLENDING":
        layer.set_alphas([0.3])
    seed, host = layer.seed(0), layer.base_layer
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(0.1)
    alpha = {"TRAINING": 0.0, "BLENDING": 0.3, "HOLDING": 1.0}[state]
    x = torch.randn(7, 8)

    def run(by_hand: bool) -> tuple[Tensor, list[Tensor]]:
        xi = x.clone().requires_grad_(True)
        if by_hand:
            s = seed(xi.detach() if state == "TRAINING" else xi)
            term = (s - s.detach()) if state == "TRAINING" else torch.add(torch.zeros_like(s), s, alpha=alpha)
            out = host(xi) + term
        else:
            out = layer(xi)
        out.square().sum().backward()
        grads = [xi.grad, *(p.grad for p in host.parameters()), *(p.grad for p in seed.parameters())]
        out = out.detach()
        for p in [*host.parameters(), *seed.parameters()]:
            p.grad = None
        return out, [None if g is None else g.clone() for g in grads]

    got, got_grads = run(False)
    want, want_grads = run(True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        next(seed.parameters()).fill_(math.nan)
    got, got_grads = run(False)
    xi = x.clone().requires_grad_(True)
    host_out = host(xi)
    host_out.square().sum().backward()
    host_grads = [xi.grad, *(p.grad for p in host.parameters())]
    for p in host.parameters():
        p.grad = None
    assert torch.equal(got, host_out.detach())
    for g, w in zip(got_grads[:3], host_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    # On CPU the failed seed is left out of the graph: no gradient at all reaches its weights.
    assert all(g is None for g in got_grads[3:]), got_grads[3:]
    _, hand_grads = run(True)
    if state != "TRAINING":  # by hand, the NaN seed poisons the input's and the host's gradients
        assert not torch.isfinite(hand_grads[0]).all()
    morph.close()


def test_taps_are_copied_in_one_piece_or_one_by_one_alike() -> None:
    """gather_health's copy: scalars and vectors of one device and dtype in one copy; otherwise
    (another dtype here) one by one, with the same values."""
    from esper.kasmina import _taps_to_host

    scalars = [torch.tensor(1.5), torch.tensor(-2.0)]
    vectors = [torch.tensor([0.5, -1.0]), torch.tensor([3.0])]
    host, maxima = _taps_to_host(scalars, vectors)
    assert host == [1.5, -2.0] and maxima.tolist() == [0.5, -1.0, 3.0]
    host, maxima = _taps_to_host(scalars, [vectors[0].double(), vectors[1]])
    assert host == [1.5, -2.0] and maxima.tolist() == [0.5, -1.0, 3.0]
    host, maxima = _taps_to_host(scalars, [])
    assert host == [1.5, -2.0] and maxima.size == 0
