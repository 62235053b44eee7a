"""The graph policy (issue 16 item 1): Go's graph encoded as tensors, message passing with weights
shared over nodes (any model size), factored heads masked by Go's legal moves. Graphs come from real
sessions of the real library; every sampled move is proposed back to Go, which must carry it out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from esper.session import Session
from esper.simic.graph import encode
from esper.simic.policy import Action, GraphPolicy, legal


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def session(layers: int, max_params: int = 0, max_concurrent: int = 2) -> Session:
    """A manual session over a chain of 16-wide linear layers, 2 slots each."""
    return Session({"layers": [{"name": f"fc{i}", "kind": "linear", "in": 16, "out": 16, "params": 272}
                               for i in range(layers)],
                    "slots_per_layer": 2, "train_steps": 5, "blend_steps": 5, "policy": "manual",
                    "governor": {"max_params": max_params, "max_concurrent": max_concurrent}})


def states() -> list[tuple[str, Session]]:
    """Sessions in states that make every head's masks matter."""
    fresh = session(3)
    busy = session(3)
    busy.propose({"op": "germinate", "layer": 0, "slot": 0, "template": "lowrank", "size": 2})
    busy.propose({"op": "germinate", "layer": 2, "slot": 1, "template": "residual_mlp", "size": 1})
    for _ in range(3):
        busy.advance(0, 0)  # TRAINING, BLENDING, HOLDING: prune and fossilize legal there
    tight = session(4, max_params=300)  # only the small sizes of some templates fit
    return [("fresh", fresh), ("two seeds in flight", busy), ("tight budget", tight)]


def test_masked_sampling_never_proposes_an_illegal_move() -> None:
    torch.manual_seed(0)
    cases = states()
    policy = None
    for name, s in cases:
        doc: dict[str, Any] = s.graph()
        g = encode(doc)
        if policy is None:
            policy = GraphPolicy(g.templates, g.size_mask.shape[-1], hidden=16)
        seen = set()
        with torch.no_grad():
            for _ in range(400):
                a = policy.act(g).action
                assert legal(g, a), (name, a)
                seen.add(a)
        assert len(seen) > 3, name  # it explores: several legal moves were drawn
        # Go agrees: each distinct move sampled is carried out (on a copy of the state).
        snap = s.snapshot()
        for a in sorted(seen, key=lambda a: (a.op, a.target, a.template, a.size)):
            s.restore(snap)
            r = s.propose(a.proposal(g))
            assert r["applied"], (name, a, r["refused"])
        assert s.stats()["counters"]["refused"] == 0


def test_without_masks_illegal_moves_are_sampled_and_go_refuses_them() -> None:
    """Negative control: the same policy with the masks off draws illegal moves, and Go refuses each."""
    torch.manual_seed(0)
    _, s = states()[1]
    g = encode(s.graph())
    policy = GraphPolicy(g.templates, g.size_mask.shape[-1], hidden=16)
    snap = s.snapshot()
    illegal = []
    with torch.no_grad():
        for _ in range(400):
            a = policy.act(g, use_masks=False).action
            if not legal(g, a):
                illegal.append(a)
    assert len(illegal) > 100
    for a in illegal[:30]:
        s.restore(snap)
        r = s.propose(a.proposal(g))
        assert not r["applied"] and r["refused"], a
    s.restore(snap)


def test_one_policy_runs_on_any_model_size() -> None:
    torch.manual_seed(0)
    one = encode(session(1).graph())  # a block host: one node, no edges
    assert one.x.shape[0] == 1 and one.edges.shape == (2, 0)
    small, large = session(2), session(40)
    gs, gl = encode(small.graph()), encode(large.graph())
    policy = GraphPolicy(gs.templates, gs.size_mask.shape[-1], hidden=16)
    for g, n in ((gs, 2), (gl, 40)):
        h, summary = policy.encode(g)
        assert h.shape == (n, 16) and summary.shape == (48,)
        step = policy.act(g)
        assert step.log_prob.ndim == 0 and torch.isfinite(step.log_prob) and step.value.ndim == 0
    # Re-scoring a move gives the log-probability it was sampled with (PPO's ratio starts at 1).
    step = policy.act(gl)
    again = policy.act(gl, action=step.action)
    assert torch.allclose(step.log_prob, again.log_prob) and again.action == step.action
    # A forced germination uses all four heads.
    draws = [policy.act(gl).action for _ in range(200)]
    a = next(d for d in draws if d.op == 1)
    scored = policy.act(gl, action=a)
    assert a.template >= 0 and a.size >= 0 and bool((scored.entropy[:3] > 0).all()) and scored.entropy[3] >= 0


def test_a_graph_of_another_template_list_is_refused() -> None:
    g = encode(session(2).graph())
    policy = GraphPolicy(g.templates[:-1], g.size_mask.shape[-1], hidden=8)
    with pytest.raises(ValueError, match="another library"):
        policy.act(g)
    assert Action(0).proposal(g) == {"op": "wait"}
