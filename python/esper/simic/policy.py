"""The graph policy: message passing over Tamiyo's layer graph with factored heads and a value head.

One set of weights is shared over every node, so the network runs on a model of any size. From the node
embeddings after ``rounds`` rounds of message passing (each node adds an MLP of itself, the mean of its
neighbours along Go's edges and the global features) and their pooled summary, the heads choose in turn:

1. the **op** (wait, germinate, prune, fossilize, advance);
2. the **target** slot of that op (scored from its layer's node, its seed's node if any and the summary);
3. for a germination, the **template** at the target's layer, then its **size**.

Every head's logits are masked with Go's legal moves before sampling (:func:`masked`): an illegal move
gets probability exactly 0, so it is never sampled. The **value** head estimates the return from the
summary (PPO's baseline). ``log_prob`` sums the log-probabilities of the heads that were used; entropy is
reported per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .graph import OPS, TARGET_OPS, EncodedGraph
from .graph import global_features as _global_features
from .graph import node_features as _node_features

__all__ = ["Action", "GraphPolicy", "Step", "legal", "masked"]


def masked(logits: Tensor, mask: Tensor) -> Tensor:
    """Logits with the illegal entries at -inf (probability 0). At least one entry must be legal.

    Raises:
        ValueError: no entry is legal (Go's masks always leave a legal choice: wait).
    """
    if not bool(mask.any()):
        raise ValueError("every choice of a head is masked: nothing is legal (the graph's masks are inconsistent)")
    return logits.masked_fill(~mask, float("-inf"))


def _entropy(logits: Tensor) -> Tensor:
    """Entropy of a categorical over masked logits (-inf entries contribute 0)."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return -(p * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


@dataclass(frozen=True)
class Action:
    """A move: the op, and for every op but wait the target slot; for a germination the template index
    (of the graph's templates) and size index (of its sizes). Unused fields are -1."""

    op: int
    target: int = -1
    template: int = -1
    size: int = -1

    def proposal(self, g: EncodedGraph, templates: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The move as keyword arguments of ``Morphogenesis.propose``."""
        out: dict[str, Any] = {"op": OPS[self.op]}
        if self.op > 0:
            out["layer"], out["slot"] = divmod(self.target, g.slots)
        if OPS[self.op] == "germinate":
            out["template"] = (templates or g.templates)[self.template]
            out["size"] = self.size
        return out


@dataclass
class Step:
    """What the policy did on one graph: the action, its log-probability (summed over the heads used), the
    value estimate and the entropy of each head used (op, target, template, size; 0 when unused)."""

    action: Action
    log_prob: Tensor
    value: Tensor
    entropy: Tensor


class GraphPolicy(nn.Module):
    """The graph policy and its value head (see the module's doc).

    Args:
        templates: the template names, in Go's order (``graph["templates"]``); the template head has one
            output each, and a graph with other templates is refused.
        sizes: the number of sizes (``len(graph["sizes"])``).
        hidden: width of the node embeddings and of every MLP.
        rounds: rounds of message passing.
        node_features, global_features: the input widths (default: Go's encoding, ``esper_graph_features``).
    """

    def __init__(self, templates: tuple[str, ...] | list[str], sizes: int, hidden: int = 64, rounds: int = 2,
                 node_features: int | None = None, global_features: int | None = None) -> None:
        super().__init__()
        self.templates = tuple(templates)
        self.sizes = sizes
        self.hidden = hidden
        self.rounds = rounds
        self.node_features = node_features or _node_features()
        self.global_features = global_features or _global_features()
        self.embed = _mlp(self.node_features, hidden, hidden)
        self.glob = _mlp(self.global_features, hidden, hidden)
        self.message = nn.ModuleList(_mlp(3 * hidden, hidden, hidden) for _ in range(rounds))
        self.norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(rounds))
        summary = 3 * hidden  # mean and max of the nodes, and the global features
        self.op_head = _mlp(summary, hidden, len(OPS))
        # Per target: its layer's node, its seed's node (zeros when none), a has-seed flag, the summary.
        self.target_head = _mlp(2 * hidden + 1 + summary, hidden, len(TARGET_OPS))
        self.template_head = _mlp(hidden + summary, hidden, len(self.templates))
        self.template_embed = nn.Embedding(len(self.templates), hidden)
        self.size_head = _mlp(2 * hidden + summary, hidden, sizes)
        self.value_head = _mlp(summary, hidden, 1)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (saved with a checkpoint)."""
        return {"templates": list(self.templates), "sizes": self.sizes, "hidden": self.hidden, "rounds": self.rounds,
                "node_features": self.node_features, "global_features": self.global_features}

    def encode(self, g: EncodedGraph) -> tuple[Tensor, Tensor]:
        """Node embeddings (N, hidden) after message passing, and the graph's summary (3 * hidden)."""
        if g.templates != self.templates or g.size_mask.shape[-1] != self.sizes:
            raise ValueError(f"the graph's templates/sizes ({len(g.templates)}, {g.size_mask.shape[-1]}) are not the "
                             f"policy's ({len(self.templates)}, {self.sizes}): it was trained with another library")
        h = self.embed(g.x)
        glob = self.glob(g.glob)
        n = h.shape[0]
        src, dst = g.edges
        degree = torch.zeros(n).index_add_(0, dst, torch.ones(dst.shape[0])).clamp(min=1).unsqueeze(1)
        for message, norm in zip(self.message, self.norm):
            agg = torch.zeros_like(h).index_add_(0, dst, h[src]) / degree
            h = norm(h + message(torch.cat([h, agg, glob.expand(n, -1)], dim=1)))
        summary = torch.cat([h.mean(0), h.max(0).values, glob])
        return h, summary

    def _target_logits(self, g: EncodedGraph, h: Tensor, summary: Tensor) -> Tensor:
        """(4, T) logits of every target slot for each op of TARGET_OPS."""
        t = g.target_layer.shape[0]
        has = (g.target_seed >= 0).float().unsqueeze(1)
        seed = torch.where(has.bool(), h[g.target_seed.clamp(min=0)], torch.zeros(t, self.hidden))
        feats = torch.cat([h[g.target_layer], seed, has, summary.expand(t, -1)], dim=1)
        return self.target_head(feats).T

    def act(self, g: EncodedGraph, action: Action | None = None, greedy: bool = False,
            use_masks: bool = True) -> Step:
        """Choose a move on ``g`` (or score ``action``, PPO's re-evaluation).

        Args:
            g: the encoded graph.
            action: the move to score instead of sampling one.
            greedy: take each head's most likely choice instead of sampling.
            use_masks: apply Go's masks (always, but in the negative control of the tests).
        """
        h, summary = self.encode(g)
        value = self.value_head(summary).squeeze(-1)

        def choose(logits: Tensor, mask: Tensor, given: int) -> tuple[int, Tensor, Tensor]:
            if use_masks:
                logits = masked(logits, mask)
            k = given if given >= 0 else int(logits.argmax())
            logps = torch.log_softmax(logits, dim=-1)
            if given < 0 and not greedy:
                k = int(torch.multinomial(logps.detach().exp(), 1))
            return k, logps[k], _entropy(logits)

        zero = summary.new_zeros(())
        ent = [zero, zero, zero, zero]
        op, logp, ent[0] = choose(self.op_head(summary), g.op_mask, action.op if action else -1)
        target = template = size = -1
        if op > 0:
            logits = self._target_logits(g, h, summary)[op - 1]
            target, lp, ent[1] = choose(logits, g.target_mask[op - 1], action.target if action else -1)
            logp = logp + lp
        if OPS[op] == "germinate":
            layer = int(g.target_layer[target])
            feats = torch.cat([h[layer], summary])
            template, lp, ent[2] = choose(self.template_head(feats), g.template_mask[layer],
                                          action.template if action else -1)
            logp = logp + lp
            feats = torch.cat([h[layer], self.template_embed.weight[template], summary])
            size, lp, ent[3] = choose(self.size_head(feats), g.size_mask[layer, template],
                                      action.size if action else -1)
            logp = logp + lp
        return Step(Action(op, target, template, size), logp, value, torch.stack(ent))


def legal(g: EncodedGraph, a: Action) -> bool:
    """Whether ``a`` is legal under ``g``'s masks (Go's legal moves)."""
    if not bool(g.op_mask[a.op]):
        return False
    if a.op == 0:
        return True
    if not 0 <= a.target < g.target_mask.shape[1] or not bool(g.target_mask[a.op - 1, a.target]):
        return False
    if OPS[a.op] != "germinate":
        return True
    layer = int(g.target_layer[a.target])
    return bool(g.template_mask[layer, a.template]) and bool(g.size_mask[layer, a.template, a.size])

