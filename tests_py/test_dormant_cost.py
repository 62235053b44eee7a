"""A dormant step costs what the plain model's step costs (issue 20 item 1): on a step that does not
sample, a wrapped model with no seed makes exactly the plain model's ATen ops, tensor allocations
and forward calls, and calls Go not at all; the sampling step (the negative control) shows the
taps' ops and the one call into Go. Counted, not timed: real PyTorch, the real library."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import Morphogenesis
from esper.bench.stepcost import StepCounter, StepCounts

EVERY = 4


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(device: str = "cpu") -> tuple[Callable[[], None], Callable[[], None], Callable[[], None], Callable[[], None],
                                      Morphogenesis]:
    """(Esper step, plain step, Esper forward, plain forward, morph) of a small MLP, both layers
    wrapped; build it inside ``StepCounter.counting`` (its session keeps the counted symbols)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)
    wrapped = esper.wrap(copy.deepcopy(plain), target_modules=[nn.Linear])
    opt_w = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.05)
    morph = Morphogenesis(wrapped, opt_w, policy="manual", signal_every=EVERY)
    _ = morph.session
    x, y = torch.randn(16, 8, device=device), torch.randint(0, 4, (16,), device=device)

    def step(model: nn.Module, opt: torch.optim.Optimizer, m: Morphogenesis | None) -> Callable[[], None]:
        def run() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if m is not None:
                m.step(loss)
        return run

    return step(wrapped, opt_w, morph), step(plain, opt_p, None), lambda: wrapped(x), lambda: plain(x), morph


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_dormant_step_that_does_not_sample_adds_no_op_and_no_go_call(device: str) -> None:
    """On CUDA too: no op between samples means no .item() and no copy to the host there either."""
    counter = StepCounter()
    with counter.counting():
        esper_step, plain_step, esper_fwd, plain_fwd, morph = pair(device)
        for _ in range(2 * EVERY):
            esper_step()
            plain_step()
        for ops in (True, False):
            counter.step(plain_step, ops)  # the counter's own first-time work
        rows: list[tuple[int, StepCounts, StepCounts, StepCounts, StepCounts]] = []
        for _ in range(3 * EVERY):
            phase = (morph.steps + 1) % EVERY  # 0: this step samples and flushes
            # The forward alone first, in the state the step's own forward will find.
            e_calls, p_calls = counter.step(esper_fwd, False), counter.step(plain_fwd, False)
            e_ops, p_ops = counter.step(esper_step, True), counter.step(plain_step, True)
            rows.append((phase, e_ops, p_ops, e_calls, p_calls))
        # Python calls and Go calls of whole steps, counted on the next interval (a dispatch mode
        # runs Python of its own).
        whole = []
        for _ in range(EVERY):
            phase = (morph.steps + 1) % EVERY
            whole.append((phase, counter.step(esper_step, False), counter.step(plain_step, False)))
        morph.close()
    ordinary = [r for r in rows if r[0] != 0]
    sampled = [r for r in rows if r[0] == 0]
    assert len(ordinary) == 9 and len(sampled) == 3
    for phase, e, p, _, _ in ordinary:
        assert (e.aten, e.allocs) == (p.aten, p.allocs), (phase, e, p)
    for phase, _, _, e, p in ordinary:
        # The wrapped model's forward between samples is the plain model's, call for call (each wrapped
        # layer runs its host's own forward); an eval-style forward here is not a sampling one.
        assert e.calls == p.calls, (phase, e, p)
    for phase, e, p in whole:
        if phase == 0:
            assert e.go == 1, e  # the flush: one call into Go
        else:
            assert e.go == 0, (phase, e)
            # morph.step alone: a counter and a modulo (the step before a sample turns the taps on).
            assert e.calls - p.calls <= (1 if phase != EVERY - 1 else 8), (phase, e, p)
    # The negative control: the sampling step's taps and flush are counted.
    for _, e, p, _, _ in sampled:
        assert e.aten > p.aten, (e, p)


def test_stepcost_per_step_counts_a_bench_pair() -> None:
    """The tool of docs/performance.md (``python -m esper.bench.stepcost --per-step``) on a bench pair:
    the same figures, per kind of step."""
    from esper.bench import stepcost

    got = stepcost.per_step("dormant:Deep1", cycles=2, every=EVERY)
    assert got["every"] == EVERY and got["sampling"] == [False] * (EVERY - 1) + [True] + [False] * (EVERY - 1) + [True]
    table = stepcost.per_step_table(got)
    assert table["aten"]["baseline"] > 0 and table["calls"]["baseline"] > 0
    assert table["aten"]["ordinary_max"] == 0 and table["allocs"]["ordinary_max"] == 0
    assert table["go"]["ordinary_max"] == 0 and table["go"]["sampling"] == 1
    assert table["aten"]["sampling"] > 0 and table["calls"]["sampling"] > table["calls"]["ordinary"]
    with pytest.raises(ValueError, match="dormant pairs only"):
        stepcost.build("active:TinyMLP:HOLDING:step", torch.device("cpu"), every=EVERY)


def test_layers_of_one_shape_are_reduced_together_to_their_definitions() -> None:
    """On CPU, layers whose output, input and gradient have the same shapes have their NumPy taps
    reduced together at the flush (kasmina._host_rows); each row equals its definition on that
    step's tensors, and the row each layer gives alone (_HostTaps.row, the other path)."""
    from esper.kasmina import SIGNALS, _host_rows

    torch.manual_seed(0)
    width = 12
    model = esper.wrap(nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(width, width), nn.Tanh())]),
                       target_modules=[nn.Linear])
    layers = [model[0], model[2], model[4]]
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def keep(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(layer: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            out.retain_grad()
            seen[index] = {"x": args[0].detach().clone(), "y": out}
        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_hook(keep(i))
    esper.kasmina.set_sampling(model, True)
    x = torch.randn(2, 5, width)  # rows in the leading dims
    (model(x) ** 2).sum().backward()
    hosted = [(i, layer, layer._host_taps) for i, layer in enumerate(layers)]
    assert all(taps is not None and taps.grad is not None for _, _, taps in hosted)
    grouped = np.full(3 * len(SIGNALS), np.nan, dtype=np.float32)
    _host_rows(grouped, len(SIGNALS), hosted)
    alone = np.concatenate([np.asarray(taps.row(layer), dtype=np.float32) for _, layer, taps in hosted])
    np.testing.assert_allclose(grouped, alone, rtol=1e-5, atol=1e-7, equal_nan=True)
    gen = torch.Generator().manual_seed(0x5EED)
    bound = width ** -0.5
    probe_w = (torch.rand(width, 32, generator=gen) * 2 - 1) * bound
    probe_b = (torch.rand(32, generator=gen) * 2 - 1) * bound
    for i, layer in enumerate(layers):
        h, grad = seen[i]["y"].detach(), seen[i]["y"].grad
        xs, gs = seen[i]["x"].reshape(-1, width), grad.reshape(-1, width)
        dead = (h.reshape(-1, width).amax(0) <= 0).float().mean()
        want = {"act_mean": h.mean(), "act_var": h.var(), "dead_frac": dead,
                "grad_norm": grad.norm(), "weight_norm": layer.base_layer.weight.detach().norm(),
                "seed_gain": torch.linalg.matrix_norm(gs.T @ torch.relu(xs @ probe_w + probe_b))}
        row = grouped[i * len(SIGNALS):(i + 1) * len(SIGNALS)]
        for name, value in want.items():
            assert row[SIGNALS.index(name)] == pytest.approx(float(value), rel=1e-4, abs=1e-6), (i, name)
