"""The step path's calls into Go (issue 20): while a seed blends, its alphas between flushes come
from one table Go gives at each flush (``Session.alphas_ahead``), not from a call per step; the
table equals what a call per step gives. Real PyTorch and the real library throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper import Morphogenesis
from esper.kasmina import SeedState
from esper.session import Session


def blending_run(every: int) -> tuple[nn.Module, torch.optim.Optimizer, Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["2"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=every, train_steps=1, blend_steps=4 * every)
    morph.germinate("2", 0, "residual_mlp", width=4)
    morph.advance("2", 0, "test")
    morph.advance("2", 0, "test")  # BLENDING
    return model, opt, morph


def test_blending_steps_call_go_only_at_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    every = 5
    model, opt, morph = blending_run(every)
    calls: list[int] = []
    real = Session.step

    def counted(self: Session, steps: int = 1, signals: np.ndarray | None = None) -> int:
        calls.append(morph.steps)
        return real(self, steps, signals)

    real_waiting = Session.step_waiting

    def counted_waiting(self: Session, steps: int, signals: np.ndarray | None = None) -> tuple[int, int, int]:
        calls.append(morph.steps)
        return real_waiting(self, steps, signals)

    monkeypatch.setattr(Session, "step", counted)
    monkeypatch.setattr(Session, "step_waiting", counted_waiting)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    alphas = []
    for _ in range(3 * every):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
        alphas.append(morph.layers[0].alpha(0))
    assert morph.layers[0].state(0) == SeedState.BLENDING
    # The first blending step takes the table (the seed entered BLENDING outside a flush); then flushes only.
    assert calls == [1] + list(range(every, 3 * every + 1, every)), calls
    # The ramp, step by step (linear, 4 x every steps long; Go started it at step 0).
    assert alphas == pytest.approx([n / (4 * every) for n in range(1, 3 * every + 1)], abs=1e-7)
    go = morph.seeds()[0]
    assert go["alpha"] == pytest.approx(alphas[-1]) and morph.steps % every == 0  # Go agrees at a flush
    morph.close()


def test_a_flush_with_signals_calls_go_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dormant model's step calls Go only at a flush, and that flush makes one call (the step and
    the governor's alarm count together): every method of Session that enters Go is counted."""
    every = 4
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=[nn.Linear])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=every)
    _ = morph.session
    calls: list[tuple[str, int]] = []
    for name in ("step", "step_waiting", "waiting", "alarms", "events", "alphas_ahead", "reports"):
        real = getattr(Session, name)

        def counted(self: Session, *args: object, _real: object = real, _name: str = name) -> object:
            calls.append((_name, morph.steps))
            return _real(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(Session, name, counted)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    for _ in range(3 * every):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    assert calls == [("step_waiting", n) for n in range(every, 3 * every + 1, every)], calls
    morph.close()


def test_step_waiting_is_step_then_waiting() -> None:
    """esper_session_step_waiting gives what esper_session_step then esper_session_waiting give, on
    two sessions fed the same steps, one of which raises the governor's alarm (a non-finite loss);
    NULL outputs are refused before anything changes."""
    from ctypes import POINTER, byref, c_float, c_int32, c_int64

    from esper import _lib

    config = {"layers": [{"name": "fc", "kind": "linear", "in": 4, "out": 4}], "slots_per_layer": 1,
              "policy": "manual"}
    fine = np.array([0.5, 0.0] + [0.1] * 7, dtype=np.float32)
    bad = fine.copy()
    bad[1] = 1.0  # one non-finite measurement: the governor rolls back
    with Session(config) as one, Session(config) as two:
        for signals in (fine, bad, fine):
            n = one.step(3, signals)
            alarms, reports = one.waiting()
            assert two.step_waiting(3, signals) == (n, alarms, reports)
            assert np.array_equal(one.alphas, two.alphas)
        assert two.alarms() == 1 and one.alarms() == 1  # the alarm was raised, and counted alike
        one.step(2)
        assert two.step_waiting(2) == (0, 1, one.waiting()[1])  # no signals: a step, and the counts read
        lib = _lib.lib()
        alphas = np.zeros(1, dtype=np.float32)
        ptr = alphas.ctypes.data_as(POINTER(c_float))
        n_events, alarms_out, reports_out = c_int32(), c_int64(), c_int32()
        assert lib.esper_session_step_waiting(two.handle, 1, None, 0, ptr, 1, byref(n_events), None,
                                              byref(reports_out)) != 0
        assert lib.esper_session_step_waiting(two.handle, 1, None, 0, ptr, 1, byref(n_events), byref(alarms_out),
                                              None) != 0
        assert two.step_waiting(0) == (0, 1, one.waiting()[1])
        assert lib.esper_session_step_waiting(two.handle, 1, None, 0, ptr, 1, byref(n_events), byref(alarms_out),
                                              byref(reports_out)) == 0


def test_alphas_ahead_is_what_a_call_per_step_gives() -> None:
    _, _, morph = blending_run(10)
    session = morph.session
    session.step(morph._pending)
    morph._pending = 0
    table = session.alphas_ahead(6)
    assert table.shape == (6, 1) and table.dtype == np.float32
    for k in range(6):
        session.step(1)
        assert session.alphas[0] == table[k, 0]
    with pytest.raises(ValueError, match="n"):
        session.alphas_ahead(-1)
    with pytest.raises(esper.EsperError, match="must be in"):
        session.alphas_ahead(1 << 20)
    morph.close()


def test_the_rollback_copy_of_a_cpu_model_is_a_copy() -> None:
    # On the CPU the last good state is a plain copy: changing the weights leaves it as it was.
    model, _, morph = blending_run(5)
    saved = morph._last_good["model"]["0.weight"]
    assert not saved.is_cuda and saved.data_ptr() != model[0].weight.data_ptr()
    before = saved.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(saved, before)
    morph.close()


@pytest.mark.cuda
def test_the_rollback_copy_of_a_cuda_model_is_in_pinned_host_memory() -> None:
    # Issue 20 item 4: no GPU memory for the rollback copy; a rollback puts it back on the GPU.
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), target_modules=["2"]).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    morph = Morphogenesis(model, opt, policy="manual", signal_every=2)
    x, y = torch.randn(16, 8, device="cuda"), torch.randint(0, 4, (16,), device="cuda")
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        morph.step(loss)
    morph.end_epoch(val_loss=1.0)
    good = morph._last_good
    assert all(not t.is_cuda and t.is_pinned() for t in good["model"].values())
    assert all(not t.is_cuda for s in good["optim"].values() for t in s.values() if isinstance(t, torch.Tensor))
    want = {k: v.clone() for k, v in good["model"].items()}
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    morph.end_epoch(val_loss=1.0)  # non-finite weights: the governor rolls back
    for k, v in model.state_dict().items():
        assert v.is_cuda and torch.equal(v.cpu(), want[k]), k
    for p, state in opt.state.items():
        for key, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.device == p.device, key
    morph.close()
