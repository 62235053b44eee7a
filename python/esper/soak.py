"""`esper soak`: train a small model for N minutes under injected faults and watch memory.

The run germinates seeds, makes some of them fail (their breaker prunes them), prunes others by
hand, feeds NaN losses (the governor rolls back), ends epochs, and every few cycles checkpoints
through ``torch.save`` into memory and resumes from it in a freshly wrapped model (the old
``Morphogenesis`` is closed). It samples the process's resident memory (RSS) and the Go heap over
time. Memory must be flat after warm-up: every buffer Esper keeps is bounded (docs/internals.md,
"Memory bounds").
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _lib

__all__ = ["Sample", "SoakReport", "run_soak", "rss_bytes"]


def rss_bytes() -> int:
    """The resident set size of this process in bytes (Linux: /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (esper soak needs Linux)")


@dataclass
class Sample:
    """Memory and progress at one moment of the run."""

    seconds: float
    steps: int
    rss: int
    go_heap_alloc: int
    go_heap_sys: int
    go_handles: int
    go_goroutines: int


@dataclass
class SoakReport:
    """What a soak run did and the memory it used over time."""

    minutes: float
    seed: int
    steps: int = 0
    epochs: int = 0
    germinations: int = 0
    breaker_prunes: int = 0
    manual_prunes: int = 0
    nan_losses: int = 0
    rollbacks: int = 0
    checkpoints: int = 0
    samples: list[Sample] = field(default_factory=list)

    def growth_after_warmup(self) -> dict[str, int]:
        """RSS and Go heap at the end minus their maximum over the warm-up (the first third of
        the samples); negative or small when memory is flat."""
        n = len(self.samples)
        if n < 3:
            raise ValueError(f"{n} samples: too few to separate warm-up from the rest")
        warm = self.samples[: max(1, n // 3)]
        last = self.samples[-1]
        return {
            "rss": last.rss - max(s.rss for s in warm),
            "go_heap_alloc": last.go_heap_alloc - max(s.go_heap_alloc for s in warm),
            "go_heap_sys": last.go_heap_sys - max(s.go_heap_sys for s in warm),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data, with the growth after warm-up."""
        out = asdict(self)
        out["growth_after_warmup"] = self.growth_after_warmup() if len(self.samples) >= 3 else None
        return out


class _Net(nn.Module):
    """A small MLP: two hidden layers of 32, the host of two wrapped layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _raise(x: Tensor) -> Tensor:
    raise RuntimeError("esper soak: injected seed failure")


def _build(seed: int, state: bytes | None, log_max: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """A wrapped model, its optimizer and a Morphogenesis; resumed from a checkpoint if given."""
    import esper

    torch.manual_seed(seed)
    model = esper.wrap(_Net(), target_modules=["fc1", "fc2"], seeds_per_layer=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    morph = esper.Morphogenesis(model, opt, policy="manual", signal_every=5, train_steps=20, blend_steps=20,
                                embargo_steps=5, failures_before_prune=3, max_concurrent=4, seed=seed,
                                log_max=log_max)
    if state is not None:
        ckpt = torch.load(io.BytesIO(state), weights_only=True)
        morph.load_state_dict(ckpt["morph"])
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
    return model, opt, morph


def run_soak(minutes: float, seed: int = 0, samples: int = 20, cycle_steps: int = 40,
             checkpoint_every: int = 5, log_max: int = 500, log: Any = None) -> SoakReport:
    """Train under injected faults for ``minutes`` and sample memory ``samples`` times.

    Each cycle of ``cycle_steps`` steps: a seed germinates in every free slot; one seed (in turn)
    fails three steps in a row (its breaker prunes it); every other cycle one seed is pruned by
    hand; every third cycle a NaN loss makes the governor roll back; an epoch ends; every
    ``checkpoint_every`` cycles the run checkpoints and resumes in a fresh model.

    Args:
        minutes: wall time to run (> 0).
        seed: the random seed of data, model and policy.
        samples: memory samples over the run (>= 3; the first third is the warm-up).
        cycle_steps: optimizer steps per cycle (>= 10).
        checkpoint_every: cycles between checkpoint-and-resume (>= 1).
        log_max: the growth logs' bound (``MorphConfig.log_max``). The logs fill up to it during
            warm-up (a cycle adds about ten entries); a small bound makes the warm-up short.
        log: a callable taking a line of text per sample (e.g. ``print``), or None.

    Returns:
        The report: what was injected and done, and the samples.
    """
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes}")
    if samples < 3 or cycle_steps < 10 or checkpoint_every < 1:
        raise ValueError("samples must be >= 3, cycle_steps >= 10 and checkpoint_every >= 1")
    torch.set_num_threads(1)
    report = SoakReport(minutes=minutes, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 0).long()) % 4
    model, opt, morph = _build(seed, None, log_max)
    names = ["fc1", "fc2"]
    start = time.monotonic()
    duration = minutes * 60.0
    next_sample = 0.0
    cycle = 0

    def sample() -> None:
        go = _lib.runtime_stats()
        s = Sample(seconds=round(time.monotonic() - start, 2), steps=report.steps, rss=rss_bytes(),
                   go_heap_alloc=go["heap_alloc"], go_heap_sys=go["heap_sys"], go_handles=go["handles"],
                   go_goroutines=go["goroutines"])
        report.samples.append(s)
        if log is not None:
            log(f"{s.seconds:8.1f}s  steps {s.steps:7d}  rss {s.rss / 2**20:7.1f} MiB  "
                f"go heap {s.go_heap_alloc / 2**20:6.2f} MiB (sys {s.go_heap_sys / 2**20:6.1f})  "
                f"handles {s.go_handles}")

    while True:
        elapsed = time.monotonic() - start
        if elapsed >= next_sample:
            sample()
            next_sample += duration / (samples - 1)
        if elapsed >= duration:
            break
        cycle += 1
        layers = morph.layers
        for li, name in enumerate(names):
            for slot in range(layers[li].num_slots):
                if layers[li].seed(slot) is None and morph.seeds()[li * 2 + slot]["state"] == "DORMANT":
                    morph.germinate(name, slot)
                    report.germinations += 1
        live = [(li, slot) for li in range(len(names)) for slot in range(layers[li].num_slots)
                if layers[li].seed(slot) is not None]
        victim = live[cycle % len(live)] if live else None
        mark = len(morph.log) + morph.log_dropped
        nan_pending = cycle % 3 == 0
        for step in range(cycle_steps):
            idx = torch.randint(0, x.shape[0], (64,), generator=g)
            seed_module = layers[victim[0]].seed(victim[1]) if victim is not None else None
            if seed_module is not None:
                if 5 <= step < 8:  # three failing steps in a row: the breaker prunes it
                    seed_module.forward = _raise
                elif "forward" in seed_module.__dict__:
                    del seed_module.forward
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            # A NaN loss on a step whose loss is sampled (signal_every = 5): the governor rolls back.
            nan = nan_pending and step >= cycle_steps // 2 and (morph.steps + 1) % 5 == 0
            nan_pending &= not nan
            report.nan_losses += nan
            morph.step(loss.detach() * math.nan if nan else loss.detach())
            report.steps += 1
        new = morph.log[mark - morph.log_dropped:] if mark > morph.log_dropped else list(morph.log)
        report.breaker_prunes += sum(1 for e in new
                                     if e.get("to") == "PRUNED" and "circuit breaker" in e.get("reason", ""))
        report.rollbacks += sum(1 for e in new if e.get("kind") == "decision" and e.get("op") == "rollback")
        if cycle % 2 == 0:
            for li, name in enumerate(names):
                slot = next((s for s in range(layers[li].num_slots) if layers[li].seed(s) is not None), None)
                if slot is not None:
                    morph.prune(name, slot, "esper soak: manual prune")
                    report.manual_prunes += 1
                    break
        with torch.no_grad():
            val = F.cross_entropy(model(x), y).item()
        morph.end_epoch(val_loss=val)
        report.epochs += 1
        if cycle % checkpoint_every == 0:
            buf = io.BytesIO()
            torch.save({"morph": morph.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf)
            morph.close()
            model, opt, morph = _build(seed, buf.getvalue(), log_max)
            report.checkpoints += 1
    morph.close()
    return report
