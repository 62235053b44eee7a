"""Kasmina: wrapped layers that hold seed slots and blend seeds into their host's output.

A :class:`KasminaLayer` keeps the wrapped module as ``self.base_layer`` (state_dict keys
``<name>.base_layer.weight``) and its seeds in ``self.seeds``, an ``nn.ModuleDict`` keyed by slot
index. Its forward is (ADD style, docs/internals.md)::

    y = h(x) + sum_i a_i * s_i(x)

- TRAINING: the seed sees ``x.detach()`` and enters as ``s - s.detach()``: 0 in value, the task
  gradient for the seed, nothing for the host.
- BLENDING: ``a`` is the float the driver sets from Go's schedule; HOLDING and FOSSILIZED: ``a = 1``
  (the seed sees ``x`` itself; a fossilized seed is frozen).
- GERMINATED and every non-live state: the seed does not run.

A layer with nothing to run and no sampling to do is *dormant*: its ``forward`` is then the base
layer's own bound ``forward`` (set as an instance attribute), so a dormant layer costs exactly what
the unwrapped module costs. While dormant, hooks registered on ``base_layer`` after the layer last
changed are bypassed (hooks present at that time are honoured by calling the base layer through
``__call__``); hooks on the KasminaLayer itself always run.

A wrapped layer looks like its host to code that inspects it, as PEFT's tuner layers do: an
attribute the layer lacks is looked up on ``base_layer`` (``weight``, ``bias``, ``in_features``,
``kernel_size``, ...; names of the form ``__x__`` are not forwarded), and setting one of the host's
parameters or buffers sets it on the host. The forward pays nothing for it: ``__getattr__`` serves
submodules (``base_layer``) first, before nn.Module's own lookup would, and a dormant layer's forward
is the host's.

Fused fast paths: ``nn.TransformerEncoderLayer`` in eval mode under ``no_grad`` reads
``linear1.weight``, ``norm1.weight``, ... and calls one fused kernel instead of its submodules, which
would drop every seed of a wrapped submodule. PyTorch skips that path when a submodule has forward
hooks, so a layer in evaluation mode registers a no-op forward pre-hook while a seed adds to its
output (BLENDING, HOLDING, FOSSILIZED; a TRAINING seed adds 0 outside training) and removes it
otherwise (and in training mode, where PyTorch takes no fused path and the hook would only cost every
forward nn.Module's slower hook-calling path; ``train()``/``eval()`` of the layer or a module above
it switch it): with no such seed the fast path runs on the host's weights and gives the host's
result; with one, the slow path runs and includes the seed. ``nn.TransformerEncoder`` may still
hand a layer a nested tensor (eval, ``src_key_padding_mask`` given): a layer with seeds then runs
each sequence of it on its own.

Execution is guarded: a seed that raises, returns the wrong shape or a non-finite value leaves the
layer's output equal to the host's for that step. With ``guard_every_step`` False
(``MorphConfig(guard="sampled")``) the finiteness check runs on sampling forwards only (and always
under torch.compile); the other forwards add the seed as plain PyTorch would, and a non-finite
output there reaches the loss, which the driver reads at the next flush (Go's governor rolls back).
Exceptions and wrong shapes are recorded at once in ``layer.failures``; non-finite outputs are
detected on the device (``torch.where`` picks the host output, no synchronisation) and counted in a
device tensor that :func:`collect_failures` reads every N steps. On CPU, where reading the flag
waits for nothing, a finite seed is added as a hand-written model adds it and a non-finite one is
left out of the output (and so out of the loss's graph: no gradient reaches it or through it).
Health signals are reduced on the device on sampling steps (eager: 0-d tensors per layer, or on
CPU for a small output NumPy copies of the output and of its gradient, reduced at the read, layers
of one shape together; compiled: a 7-float buffer per layer; :data:`SIGNALS` gives the layout) and
read by :func:`gather_signals`, which also estimates the
effective rank from rows kept on every ``rank_every``-th sampling step (an SVD synchronises, so it
waits for the read, which synchronises anyway). The forward never synchronises with the device.

Under ``torch.compile`` (of the whole model) the forward takes a graph-friendly path, chosen with
``torch.compiler.is_compiling()``: alphas and the TRAINING straight-through weight come from a
device tensor (so TRAINING, BLENDING, HOLDING and FOSSILIZED are one graph, and an alpha ramp does not
recompile; a TRAINING seed also runs in evaluation there, adding exactly 0), non-finite outputs and
forwards are counted on the device, and the output-gradient tap is an ``autograd.Function`` whose
backward leaves its two figures as the gradient of a small leaf tensor (no hook writing into the
layer's buffers). A layer's dormant forward, its running forward and their sampling variants are the
only graphs: a lifecycle transition compiles at most two new ones, and there is no graph break.

Python never checks lifecycle transitions: Go owns the table and the driver mirrors its events
with :meth:`KasminaLayer.add_seed`, :meth:`KasminaLayer.set_state`,
:meth:`KasminaLayer.set_alphas` and :meth:`KasminaLayer.remove_seed`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter, deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "FailureKind",
    "HostSpec",
    "KasminaLayer",
    "LIVE_STATES",
    "PAIR_KINDS",
    "SIGNALS",
    "SeedFailure",
    "SeedState",
    "collect_failures",
    "failures_recorded",
    "stamp_failures",
    "gather_health",
    "has_seeds_or_failures",
    "gather_signals",
    "kasmina_layers",
    "set_sampling",
]


class SeedState(IntEnum):
    """Seed lifecycle states; the values cross the C ABI (docs/internals.md)."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5
    PRUNED = 6
    EMBARGOED = 7
    RESETTING = 8
    CANCELLED = 9
    ROLLED_BACK = 10


#: Host kinds of conv pairs: a producer conv, an elementwise activation, and the conv consuming its
#: channels, widened together by their seeds (Karn's template "widen").
PAIR_KINDS = ("conv1d_pair", "conv2d_pair")

#: States in which the seed has a module in the model.
LIVE_STATES = frozenset({SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING,
                         SeedState.FOSSILIZED})
# Alpha of the states whose alpha is fixed; BLENDING takes Go's value; every other state is 0.
_FIXED_ALPHA = {SeedState.TRAINING: 0.0, SeedState.HOLDING: 1.0, SeedState.FOSSILIZED: 1.0}
# States whose seed runs in the forward.
_RUNNING = frozenset({SeedState.TRAINING, SeedState.BLENDING, SeedState.HOLDING, SeedState.FOSSILIZED})


class FailureKind(IntEnum):
    """Why a seed's output was not used for a step: the ``kind`` of esper_session_report_failure,
    with the values of ``capi/esper.h`` (0 exception, 1 non-finite output, 2 wrong shape, 3 other)."""

    EXCEPTION = 0
    NONFINITE = 1
    SHAPE = 2
    OTHER = 3


class SeedFailure(NamedTuple):
    """One recorded seed failure: the slot, the kind, a message for Go's breaker and logs, and when.

    ``step`` is the :class:`~esper.Morphogenesis` step it happened in (``None`` until
    :func:`stamp_failures` sets it, or when it is not known: a non-finite output counted on the
    device). ``every_step`` is set on a non-finite entry whose every forward pass since the last
    read failed: every step of that window failed.
    """

    slot: int
    kind: FailureKind
    message: str
    step: int | None = None
    every_step: bool = False


#: Layout of each layer's signal buffer (7 float32; NaN means "not measured").
SIGNALS = ("act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain")

_MAX_FAILURES = 1024  # recorded failures kept per layer between reads; older ones are dropped
# Failures recorded by any layer in this process: lets a driver see in O(1) per step whether there
# are failures to stamp with their step (stamp_failures).
_FAILURES_RECORDED = [0]
_MAX_MESSAGE = 500
_RANK_ROWS = 64  # rows of the output the effective rank is estimated on
_FOLD_EVERY = 256  # finiteness flags kept per slot before they are summed on the device
_PROBE_FEATURES = 32  # random ReLU features of the seed-gain probe
_PROBE_ROWS = 1024  # rows (samples x positions) the seed gain is estimated on
_PROBE_SEED = 0x5EED  # the probe's features are the same for every layer of a given input width
# A float32 CPU output of at most this many elements keeps NumPy copies of itself and of its gradient,
# reduced with NumPy at the flush (no tensor op: a NumPy reduction costs a third to a half of an eager
# ATen op's dispatch on this size; a copy of 32 KB at most); within one BLAS thread's size.
_HOST_NUMEL = 8192


@dataclass
class HostSpec:
    """What the Go session needs to know about a wrapped module.

    Attributes:
        name: the module's qualified name when it was wrapped.
        kind: "linear", "block", "conv1d", "conv2d", "residual", "conv1d_pair" or "conv2d_pair".
        in_features: input features (linear), input channels (conv, the producer's for a pair), or
            dim (residual).
        out_features: output features or channels (dim for residual; the consumer's for a pair).
        kernel: conv kernel size (square; the producer's for a pair), 0 otherwise.
        stride: conv stride, 0 otherwise.
        padding: conv padding, 0 otherwise.
        params: the number of parameters of the host.
        channel_first: residual only: (N, dim, *spatial) instead of (*, dim).
        spatial: residual channel-first only: the spatial extents, learned at the first forward.
        mid: conv pair only: the channels between producer and consumer.
        consumer_kernel: conv pair only: the consumer's kernel (square).
        consumer_stride: conv pair only: the consumer's stride.
        consumer_padding: conv pair only: the consumer's padding.
        activation: conv pair only: the elementwise op between the convs ("identity" for none).
        spliced: conv pair only: the pair was cut out of its parent ``nn.Sequential`` (the layer
            sits under the producer's name, and export puts the members back there).
    """

    name: str
    kind: str
    in_features: int
    out_features: int
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    params: int = 0
    channel_first: bool = False
    spatial: list[int] | None = None
    mid: int = 0
    consumer_kernel: int = 0
    consumer_stride: int = 0
    consumer_padding: int = 0
    activation: str = ""
    spliced: bool = False

    @property
    def is_pair(self) -> bool:
        """True for a conv pair host ("conv1d_pair", "conv2d_pair")."""
        return self.kind in PAIR_KINDS

    def host_ir(self) -> dict[str, Any]:
        """The host as it appears in a blueprint IR (``ir["host"]``, Karn's ``Host``).

        Raises:
            ValueError: a channel-first residual host that has not run a forward yet.
        """
        if self.kind == "residual":
            host: dict[str, Any] = {"kind": "residual", "dim": self.in_features}
            if self.channel_first:
                if self.spatial is None:
                    raise ValueError(f"residual host {self.name!r} is channel-first and its spatial extents are "
                                     "learned at the first forward: run one forward pass first")
                host["spatial"] = list(self.spatial)
            return host
        host = {"kind": self.kind, "in": self.in_features, "out": self.out_features}
        if self.kind in ("conv1d", "conv2d") or self.is_pair:
            host.update(kernel=self.kernel, stride=self.stride, padding=self.padding)
        if self.is_pair:
            host.update(mid=self.mid, consumer_kernel=self.consumer_kernel, consumer_stride=self.consumer_stride,
                        consumer_padding=self.consumer_padding, activation=self.activation)
        return host

    def to_dict(self) -> dict[str, Any]:
        """The layer entry of the Go session config: ``{"name", "params", **host_ir()}``."""
        return {"name": self.name, **self.host_ir(), "params": self.params}


class _Branch(NamedTuple):
    slot: int
    seed: nn.Module
    straight_through: bool  # TRAINING: value 0, gradient to the seed only
    alpha: float


# Sets a plain attribute (never a parameter, buffer or submodule) of a layer without nn.Module's
# __setattr__ (about 3 us a call, measured): used on the sampling path, which runs on every layer.
_put = object.__setattr__


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


def _keep_unfused(module: nn.Module, args: tuple[Any, ...]) -> None:
    """A forward pre-hook that changes nothing: its presence makes PyTorch's fused fast paths
    (``nn.TransformerEncoderLayer`` in eval) call the submodules, seeds included."""
    return None


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _norm(t: Tensor) -> Tensor:
    """The 2-norm of t as a float32 0-d tensor, accumulated in float32 at least."""
    if t.dtype is torch.float32:
        return torch.linalg.vector_norm(t)
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(t, dtype=torch.float32)
    return torch.linalg.vector_norm(t).float()


def _gate_grad(ok: Tensor, grad: Tensor) -> Tensor:
    """Zeroes the gradient a failed seed sends to the host's input (0 * NaN would be NaN)."""
    return torch.where(ok, grad, 0.0)


class _GradTap(torch.autograd.Function):
    """The output-gradient tap of a compiled forward: identity on ``y``; its backward measures the
    output gradient (its norm and the seed gain) and returns the two figures as the gradient of
    ``sink``, a (2,) leaf of the layer, instead of writing them into the layer's buffers from a
    hook (dynamo cannot trace a hook that writes into a tensor it did not create)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, sink: Tensor,
                unit_dim: int) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.unit_dim = unit_dim
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        with torch.no_grad():
            gain = _seed_gain_of(x, grad, ctx.unit_dim, (weight, bias))
            measured = torch.stack([_norm(grad), gain.float()])
        return grad, None, None, None, measured, None


def _seed_gain_of(x: Tensor, grad: Tensor, unit_dim: int, probe: tuple[Tensor, Tensor]) -> Tensor:
    """:meth:`KasminaLayer._seed_gain` with the layer's unit dim and probe features given
    (NaN when the shapes of ``x`` and ``grad`` do not pair up)."""
    gain, scale = _seed_gain_parts(x, grad, unit_dim, probe)
    return gain * scale if scale != 1.0 else gain


def _seed_gain_parts(x: Tensor, grad: Tensor, unit_dim: int, probe: tuple[Tensor, Tensor]) -> tuple[Tensor, float]:
    """The seed gain on the rows used, and the factor that scales it to all rows (1.0 when every
    row is used): :func:`_seed_gain_of` without its last multiplication, which the eager path
    leaves to the host."""
    if unit_dim == 1 and x.ndim > 2:  # (N, C, *spatial): conv, channel-first residual
        if x.shape[2:] != grad.shape[2:]:
            # A strided conv: the input at the output's stride (a view; pooling costs a pass).
            index = tuple(slice(None, o * -(-i // o), -(-i // o)) if o else slice(0)
                          for i, o in zip(x.shape[2:], grad.shape[2:]))
            x = x[(slice(None), slice(None)) + index]
        xp, gp = x.flatten(2), grad.flatten(2)  # (N, C, P) views
        if xp.shape[2] != gp.shape[2]:
            return grad.new_full((), math.nan, dtype=torch.float32), 1.0
        rows = xp.shape[0] * xp.shape[2]
        # Thin the positions before the copy that puts channels last.
        every = min(xp.shape[2], max(1, rows // _PROBE_ROWS))
        xs = xp[:, :, ::every].movedim(1, -1).reshape(-1, xp.shape[1])
        gs = gp[:, :, ::every].movedim(1, -1).reshape(-1, gp.shape[1])
    else:  # (*, features): views for contiguous tensors
        xs, gs = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        rows = xs.shape[0]
    if rows == 0 or xs.shape[0] != gs.shape[0]:
        return grad.new_full((), math.nan, dtype=torch.float32), 1.0
    every = max(1, xs.shape[0] // _PROBE_ROWS)
    if every > 1:
        xs, gs = xs[::every], gs[::every]
    if xs.dtype != torch.float32:
        xs = xs.float()
    if gs.dtype != torch.float32:
        gs = gs.float()
    weight, bias = probe
    features = torch.relu_(torch.addmm(bias, xs, weight))  # (rows, k)
    return torch.linalg.matrix_norm(torch.mm(gs.t(), features)), rows / xs.shape[0]


@functools.lru_cache(maxsize=64)
def _other_dims(ndim: int, unit_dim: int) -> tuple[int, ...]:
    """Every dim of an ndim-dim tensor but unit_dim (a per-unit reduction's dims)."""
    return tuple(d for d in range(ndim) if d != unit_dim)


def _effective_rank(rows: Tensor) -> float:
    """exp(entropy) of the normalised singular values of rows (R, C).

    NaN ("not measured") when all are zero, when a row holds NaN or Inf (the SVD would raise
    ``LinAlgError``; :func:`gather_health` counts such rows as non-finite), or when the SVD does not
    converge on finite rows.
    """
    if not bool(torch.isfinite(rows).all()):
        return math.nan
    return _finite_rank(rows)


def _finite_rank(rows: Tensor) -> float:
    """:func:`_effective_rank` of rows already known to be finite."""
    s = _singular_values(rows)
    if s is None:
        return math.nan
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def _singular_values(rows: Tensor) -> Tensor | None:
    """The singular values of rows (R, C) (in no particular order), or None when the
    decomposition does not converge.

    Computed as the square roots of the eigenvalues of the smaller Gram matrix (R x R or C x C) in
    float64: on the rows the rank is estimated on (at most 64 x units), 6-8x cheaper than
    ``torch.linalg.svdvals`` for wide layers (64 x 1024: 1.2-1.6 ms against 9-12.5 ms on the bench
    VM), 2-4x for 32 x 64 and 32 x 10, about the same for square ones; equal to the SVD's values
    within 1e-6 of the largest (float64 keeps the squared values' rounding below float32's), and the
    effective rank, an entropy of their normalised values, within 1e-5 relative (tested).
    """
    r = rows.double()
    gram = r @ r.t() if r.shape[0] <= r.shape[1] else r.t() @ r
    try:
        eig = torch.linalg.eigvalsh(gram)
    except torch.linalg.LinAlgError:
        return None
    return eig.clamp_min_(0).sqrt_()



def _plus(y: Tensor, s: Tensor, straight_through: bool, alpha: float) -> Tensor:
    """y plus a running seed's output as a hand-written model adds it: ``y + alpha * s``, or for a
    straight-through seed (TRAINING) its gradient alone, 0 in value."""
    if straight_through:
        return y + (s - s.detach())
    if alpha == 1.0:
        return y + s
    return torch.add(y, s, alpha=alpha)

class _HostTaps:
    """What a sampled forward (and its backward) of a small float32 output on CPU keeps for
    :func:`gather_health`: NumPy copies, reduced there to the layer's row of :data:`SIGNALS` with
    the definitions of the device taps (:meth:`KasminaLayer._sample_eager`, :func:`_seed_gain_parts`)."""

    __slots__ = ("out", "unit_dim", "weight_norm", "x", "x_version", "grad")

    def __init__(self, out: np.ndarray, unit_dim: int, weight_norm: float) -> None:
        self.out = out  # the output, copied
        self.unit_dim = unit_dim
        self.weight_norm = weight_norm
        self.x: Tensor | None = None  # the input (detached), when a backward is to come
        self.x_version = 0  # its version then: an input changed in place since is not measured
        self.grad: np.ndarray | None = None  # the output gradient, copied by the backward

    def row(self, layer: KasminaLayer) -> list[float]:
        """The layer's row of SIGNALS (NaN: not measured; the effective rank is the caller's)."""
        a, nan = self.out, math.nan
        flat = a.reshape(-1)
        n = flat.size
        mean = float(_add(flat)) / n
        var = (float(_add(flat * flat)) - n * mean * mean) / max(n - 1, 1)  # unbiased, like torch.var's
        peak = _peak(a, axis=_other_dims(a.ndim, self.unit_dim))
        units = peak.size
        # A unit is dead when its maximum is <= 0 (a NaN maximum is not: NaN <= 0 is false).
        dead = int(_add(peak <= 0)) / units if units else nan
        grad_norm = gain = nan
        g, x = self.grad, self.x
        if g is not None and x is not None:
            flat = g.reshape(-1)
            grad_norm = math.sqrt(float(_add(flat * flat)))
            if x._version == self.x_version:
                gain = _seed_gain_host(x.numpy(), g, layer)
        return [mean, 0.0 if var < 0 else var, dead, grad_norm, self.weight_norm, nan, gain]


_add = np.add.reduce  # ufunc reductions: no Python-level wrapper (ndarray.sum and .max have one)
_peak = np.maximum.reduce


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through torch's matmul on the same memory. NumPy's ``@`` runs on its BLAS's own thread
    pool, whose idle threads spin after each call and bill the process for another core (measured: the
    dormant WideMLP bench row at 1.10-1.15x with it, 1.009x with OPENBLAS_NUM_THREADS=1); torch's runs on
    the threads the user gave torch. Dot products are ufunc reductions (``_add(v * v)``) for the same
    reason."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _seed_gain_host(x: np.ndarray, g: np.ndarray, layer: KasminaLayer) -> float:
    """:func:`_seed_gain_of` with NumPy, for rows in the leading dims: x (*, in), g (*, out)."""
    xs, gs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (rows, in), (rows, out)
    rows = xs.shape[0]
    if rows == 0 or rows != gs.shape[0]:
        return math.nan
    every = max(1, rows // _PROBE_ROWS)
    if every > 1:
        xs, gs = xs[::every], gs[::every]
    weight, bias = layer._probe_host(xs.shape[1])
    features = _mm(xs, weight)  # (rows, k)
    features += bias
    np.maximum(features, 0.0, out=features)  # relu (NaN stays NaN)
    spread = _mm(gs.T, features).reshape(-1)  # (out * k)
    return math.sqrt(float(_add(spread * spread))) * (rows / xs.shape[0])


class KasminaLayer(nn.Module):
    """A wrapped host module with ``num_slots`` seed slots (built by :func:`esper.wrap.wrap`).

    Args:
        base_layer: the host module; it is called with one tensor.
        spec: the host's description (:class:`HostSpec`).
        num_slots: the number of seed slots.
        rank_every: the effective rank is estimated on every ``rank_every``-th sampling step.

    The layer stands in for its host where code reads the host's attributes: any attribute it does
    not have itself (``weight``, ``bias``, ``in_features``, ``kernel_size``, ...) is the host's, as
    with PEFT's tuner layers (protocol names ``__x__`` excepted). Setting one of the host's
    parameters or buffers sets it on the host (``lm_head.weight = wte.weight`` ties weights as it
    did before wrapping); any other attribute set is the layer's own.

    Fused fast paths: while a seed adds to the output (BLENDING, HOLDING, FOSSILIZED) in evaluation
    mode, the layer holds a no-op forward pre-hook, so ``nn.TransformerEncoderLayer``'s eval path (eval mode under
    ``no_grad``, which would read ``linear1.weight`` etc. and skip the submodules' forwards, seeds
    included) falls back to calling them, as PyTorch does for any module with hooks; it costs one
    hook call per forward of that layer. With no such seed the hook is gone and the fast path runs
    on the host's weights, which is then the exact result. A nested input (``nn.TransformerEncoder``
    in eval with ``src_key_padding_mask``) runs sequence by sequence while seeds run.

    Attributes:
        base_layer: the host module.
        seeds: the live seeds, keyed by slot index as a string.
        spec: the host's description.
        failures: exceptions and wrong shapes recorded since the last read (non-finite outputs are
            counted on the device; :meth:`pop_failures` returns both).
    """

    def __init__(self, base_layer: nn.Module, spec: HostSpec, num_slots: int = 1, rank_every: int = 10) -> None:
        super().__init__()
        if num_slots < 1 or rank_every < 1:
            raise ValueError(f"num_slots and rank_every must be >= 1, got {num_slots} and {rank_every}")
        self.base_layer = base_layer
        self.seeds = nn.ModuleDict()
        self.spec = spec
        self.num_slots = num_slots
        self.rank_every = rank_every
        self.failures: deque[SeedFailure] = deque(maxlen=_MAX_FAILURES)
        self._states = [SeedState.DORMANT] * num_slots
        self._alphas = [0.0] * num_slots
        self._disabled: Counter[int] = Counter()
        self._branches: tuple[_Branch, ...] = ()
        self._sampling = False
        self._samples = 0  # forwards sampled eagerly
        self._sample_steps = 0  # set_sampling(True) calls (what a compiled forward's rank sampling counts)
        #: Samples in the last measured forward, as Karn's flops_per_sample counts them: the batch for a
        #: conv or channel-first host, else the feature vectors (tokens). 0 before the first measured forward.
        self.samples_per_step = 0
        self._per_image = spec.channel_first or spec.kind in ("conv1d", "conv2d") or spec.is_pair
        self._measured = False  # _sample ran since the last gather_health (its values are measurements)
        # An eager sampled forward leaves its reductions here as 0-d device tensors, not written into
        # _signals: (first, second, weight norm, per-unit maxima) with first, second the sum and the sum
        # of squares of the output on CPU (mean and variance on CUDA); gather_health reads every layer's
        # with one stack, one cat and one copy, and does the arithmetic (and the dead-unit count) on
        # the host.
        self._taps: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # (first, second, weight norm, peaks)
        self._tap_meta = (0, False)  # (elements, first and second are moments)
        self._grad_taps: tuple[Tensor, Tensor, float] | None = None  # (grad norm, seed gain unscaled, scale)
        # A small float32 output on CPU keeps its taps as NumPy arrays (no device to wait for): see
        # _HostTaps; gather_health reduces them.
        self._host_taps: _HostTaps | None = None
        self._probe: tuple[Tensor, Tensor] | None = None  # the seed gain's features, see _probe_features
        self._probe_np: tuple[Tensor, np.ndarray, np.ndarray] | None = None  # (its weight, NumPy views of both)
        self._rank_rows: Tensor | None = None  # (<= 64, units) output rows for the effective rank
        # A compiled forward keeps rows on every sampled step (a counter would be a guard that changes
        # every time); gather_signals uses them on the sampling steps whose turn it is.
        self._rank_rows_compiled: Tensor | None = None
        # Per slot: the device flags "output finite" of recent forwards, folded into _bad now and then.
        self._checks: list[list[Tensor]] = [[] for _ in range(num_slots)]
        self._runs = [0] * num_slots  # forwards folded into _bad since the last read (eager forwards)
        # A residual or block host's shapes are checked at its first forward.
        self._checked = spec.kind not in ("residual", "block")
        self._unit_dim = 1 if spec.kind in ("conv1d", "conv2d") or spec.channel_first or spec.is_pair else -1
        self._unfused: RemovableHandle | None = None  # the pre-hook that keeps fused fast paths away
        #: Check every running seed's output for finiteness on every forward (the default; the
        #: driver sets it from ``MorphConfig.guard``). False: only on sampling forwards (and always
        #: under torch.compile); other forwards add the seed as a hand-written model would.
        self.guard_every_step = True
        self._allocate(_device_of(base_layer))
        self._sync_forward()
        self.register_load_state_dict_pre_hook(_accept_unwrapped_keys)  # checkpoints saved before wrap

    def __setattr__(self, name: str, value: Any) -> None:
        # A parameter or buffer of the host (not of this layer) is set on the host, where the forward
        # reads it: ``lm_head.weight = wte.weight`` (weight tying) after wrapping still ties.
        base = self.__dict__.get("_modules", {}).get("base_layer")
        if isinstance(base, nn.Module) and (name in base._parameters or name in base._buffers) \
                and name not in self._parameters and name not in self._buffers:
            setattr(base, name, value)
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # Called only when the normal lookup failed: nn.Module's own (parameters, buffers and
        # submodules of this layer), then the host's attributes, as PEFT's tuner layers do.
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:  # base_layer and seeds, read by the forward
            return modules[name]
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer" or (name.startswith("__") and name.endswith("__")):
                raise  # not set yet (no recursion), or a protocol name (copy, pickle) that is the layer's own
            try:
                return getattr(self.base_layer, name)
            except AttributeError:
                raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}, nor has its "
                                     f"base_layer ({type(self.base_layer).__name__})") from None

    # ------------------------------------------------------------------ device-side state

    def _allocate(self, device: torch.device) -> None:
        signals = torch.full((len(SIGNALS),), math.nan, device=device)
        bad = torch.zeros(self.num_slots, dtype=torch.int64, device=device)
        seen = torch.zeros(self.num_slots, dtype=torch.int64, device=device)
        coefs = torch.tensor([self._alphas, [float(s == SeedState.TRAINING) for s in self._states]],
                             dtype=torch.float32, device=device)
        self._set_device_state(signals, bad, seen, coefs)

    def _set_device_state(self, signals: Tensor, bad: Tensor, seen: Tensor, coefs: Tensor) -> None:
        self._signals = signals  # (7,) float32: see SIGNALS
        views = signals.unbind(0)
        self._grad_norm_out = views[SIGNALS.index("grad_norm")]
        self._seed_gain_out = views[SIGNALS.index("seed_gain")]
        self._bad = bad  # (slots,) int64: non-finite outputs per slot since the last read
        # Under torch.compile the forward counts its runs here (a Python counter would be a guard
        # that changes every step) and its non-finite outputs straight into _bad.
        self._seen = seen  # (slots,) int64: compiled forwards per slot since the last read
        # Per slot, for the compiled forward: the alpha, and 1 while TRAINING (the straight-through
        # term's weight). As tensors, they change without a recompilation: a Python float in the
        # forward is a constant of the graph, and TRAINING, BLENDING, HOLDING and FOSSILIZED are one
        # graph.
        self._coefs = coefs  # (2, slots) float32, kept equal to _alphas and _states
        self._alpha_t = coefs[0]
        # On CPU, written through a NumPy view of the same memory (no tensor op on the step's path).
        self._coefs_host = coefs.numpy() if coefs.device.type == "cpu" else None
        # Where a compiled forward's gradient tap leaves (grad_norm, seed_gain): the gradient of this
        # leaf (see _GradTap), read by gather_signals.
        self._grad_sink = torch.zeros(2, device=signals.device, requires_grad=True)
        self._nan = torch.full((), math.nan, device=signals.device)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # A deep copy or unpickling copies the NumPy view apart from the tensor: view the copy's tensor.
        coefs = self.__dict__.get("_coefs")
        if isinstance(coefs, Tensor):
            self._coefs_host = coefs.numpy() if coefs.device.type == "cpu" else None

    def _fold(self, slot: int) -> None:
        """Adds the slot's pending finiteness flags into the device counter (one kernel, no sync)."""
        checks = self._checks[slot]
        if checks:
            self._bad[slot].add_(torch.stack(checks).logical_not().sum())
            self._runs[slot] += len(checks)
            checks.clear()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> KasminaLayer:
        super()._apply(fn, recurse)
        device = _device_of(self.base_layer)
        if self._signals.device != device:
            for slot in range(self.num_slots):
                self._fold(slot)
            self._set_device_state(self._signals.to(device), self._bad.to(device), self._seen.to(device),
                                   self._coefs.to(device))
        return self

    # ------------------------------------------------------------------ forward

    def _sync_forward(self) -> None:
        """Rebuilds the tuple of seeds to run and picks the forward: the host's own when dormant."""
        self._branches = tuple(
            _Branch(slot, self.seeds[str(slot)], state == SeedState.TRAINING, self._alphas[slot])
            for slot, state in enumerate(self._states)
            if state in _RUNNING and not self._disabled[slot] and str(slot) in self.seeds
        )
        if self._branches or self._sampling or not self._checked:
            self.__dict__.pop("forward", None)
        else:
            base = self.base_layer
            self.forward = base.__call__ if _has_hooks(base) else base.forward
        self._sync_unfused()

    def _sync_unfused(self) -> None:
        """Holds the no-op forward pre-hook while a seed adds to the output in evaluation mode, and
        only then: PyTorch's fused paths (``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``)
        run only on modules in evaluation mode, and a module with a hook takes nn.Module's slower
        hook-calling path on every forward (a cost on every training step otherwise)."""
        adds = not self.training and any(not b.straight_through for b in self._branches)
        if adds and self._unfused is None:
            self._unfused = self.register_forward_pre_hook(_keep_unfused)
        elif not adds and self._unfused is not None:
            self._unfused.remove()
            self._unfused = None

    def train(self, mode: bool = True) -> KasminaLayer:
        """nn.Module's ``train``; also takes or drops the pre-hook that keeps fused fast paths away
        (needed in evaluation mode only, see :meth:`_sync_unfused`)."""
        super().train(mode)
        self._sync_unfused()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.is_nested:
            return self._forward_nested(x)
        h = self._modules["base_layer"](x)  # not self.base_layer: that lookup is a call of __getattr__
        if not self._checked:
            self._check_host(x, h)
        y = self._add_seeds(x, h) if self._branches else h
        if self._sampling:
            y = self._sample(x, h, y)
        return y

    def _forward_nested(self, x: Tensor) -> Tensor:
        """A nested tensor (nn.TransformerEncoder's eval path with a padding mask): each sequence
        runs on its own, with the guards of a dense forward; the result is nested like x."""
        return torch.nested.as_nested_tensor([self.forward(t) for t in x.unbind()], layout=x.layout)

    def _run_seed(self, slot: int, seed: nn.Module, seed_in: Tensor, h: Tensor) -> Tensor | None:
        """The seed's output on ``seed_in`` in the host output's dtype, or None after recording its
        failure (an exception, or an output not shaped like the host's ``h``): the host alone then
        stands for this step."""
        try:
            s = seed(seed_in)
        except Exception as e:  # a seed may fail in any way: fall back to the host for this step
            self._fail(slot, FailureKind.EXCEPTION, f"{type(e).__name__}: {e}")
            return None
        if not isinstance(s, Tensor) or s.shape != h.shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            self._fail(slot, FailureKind.SHAPE, f"expected output shape {tuple(h.shape)}, got {got}")
            return None
        return s if s.dtype == h.dtype else s.to(h.dtype)  # e.g. a norm under autocast

    def _add_seeds_unguarded(self, x: Tensor, h: Tensor) -> Tensor:
        """:meth:`_add_seeds` without the finiteness guard (``guard_every_step`` False, a step that
        does not sample, eager): the sum a hand-written model computes, ``h + a * s``. A seed that
        raises or returns the wrong shape still falls back to the host; a non-finite output reaches
        the output (and the loss, which the driver reads at the next flush: Go's governor then rolls
        back)."""
        y = h
        for slot, seed, straight_through, alpha in self._branches:
            if straight_through:
                if not (self.training and torch.is_grad_enabled()):
                    continue  # 0 in value and nothing to learn
                seed_in = x.detach()
            else:
                seed_in = x
            s = self._run_seed(slot, seed, seed_in, h)
            if s is None:
                continue
            y = _plus(y, s, straight_through, alpha)
        return y

    def _add_seeds(self, x: Tensor, h: Tensor) -> Tensor:
        """The running seeds added to the host output ``h``: unguarded (:meth:`_add_seeds_unguarded`),
        on a device or under torch.compile (:meth:`_add_seeds_device`), or, here, on CPU, eager,
        where "finite" is known at once (no device to wait for): a finite seed is added as a
        hand-written model adds it (no where, no gradient gate); a non-finite one is left out of the
        output, so that its graph is not part of the loss: nothing of it reaches the output, the
        host's or the input's gradients (the device path's values) or any weight (its own
        parameters get no gradient).

        "Finite" is one sum over the whole output, read at once. It is exact, whatever the order the
        kernel adds in: NaN plus anything is NaN, an infinity plus a finite value is that infinity
        and +inf plus -inf is NaN, so one NaN, +inf or -inf element makes the sum non-finite.
        float32 and float64 are summed in their own dtype (no cast, no copy); narrower floats
        (float16's largest value is 65504) in float32. A sum of finite values beyond the
        accumulator's range (about 3.4e38 in float32) also reads as non-finite: the seed is then
        left out for that step, the safe side (values that large overflow the step's next float32
        ops)."""
        compiling = torch.compiler.is_compiling()
        if not (compiling or self.guard_every_step or self._sampling):
            return self._add_seeds_unguarded(x, h)
        if compiling or not h.is_cpu:  # not h.device.type: that builds a torch.device every forward
            return self._add_seeds_device(x, h, compiling)
        y = h
        for slot, seed, straight_through, alpha in self._branches:
            if straight_through:
                if not (self.training and torch.is_grad_enabled()):
                    continue  # 0 in value and nothing to learn
                seed_in = x.detach()
            else:
                seed_in = x
            s = self._run_seed(slot, seed, seed_in, h)
            if s is None:
                continue
            self._runs[slot] += 1
            d = s.detach()
            total = d.sum() if s.dtype is torch.float32 or s.dtype is torch.float64 else d.sum(dtype=torch.float32)
            if not math.isfinite(total.item()):
                self._bad[slot].add_(1)
                continue
            y = _plus(y, s, straight_through, alpha)
        return y

    def _add_seeds_device(self, x: Tensor, h: Tensor, compiling: bool) -> Tensor:
        """:meth:`_add_seeds` on a device, or under torch.compile (on any device): alphas from a
        device tensor, finiteness counted on the device, so that nothing the graph depends on
        changes from step to step (no recompilation), and no synchronisation."""
        grad_on = torch.is_grad_enabled()
        learning = self.training and grad_on
        gate = grad_on and x.requires_grad
        y = h
        for slot, seed, straight_through, alpha in self._branches:
            if compiling:
                # One graph for every running state: the gate below keeps a TRAINING seed's gradient
                # from the host's input (the eager forward gives it x.detach()).
                seed_in = x.view_as(x) if gate else x
            elif straight_through:
                if not learning:
                    continue  # 0 in value and nothing to learn
                seed_in = x.detach()
            else:
                # Its own autograd node, so the gate hook below sees only the seed's gradient.
                seed_in = x.view_as(x) if gate else x
            s = self._run_seed(slot, seed, seed_in, h)
            if s is None:
                continue
            # "finite" as a device flag, no synchronisation (one reduction; NaN and inf fail abs < inf).
            # Not torch.isfinite: a composite of four ops (eq, abs, ne, and) where this is two. On the
            # detached output, so that autograd records no node for the sum and the abs.
            ok = s.detach().sum(dtype=torch.float32).abs() < math.inf
            if compiling:
                self._bad[slot].add_(ok.logical_not())
                self._seen[slot].add_(1)
            else:
                checks = self._checks[slot]
                checks.append(ok)
                if len(checks) >= _FOLD_EVERY:
                    self._fold(slot)
            if compiling:
                # TRAINING: alpha 0 and straight-through weight 1; otherwise alpha and 0 (see below).
                alpha_t, training_t = self._coefs[0, slot], self._coefs[1, slot]
                y = torch.where(ok, y + alpha_t * s + training_t * (s - s.detach()), y)
                if gate:
                    seed_in.register_hook(functools.partial(_gate_grad, ok & (training_t == 0)))
            # The where picks the seed's term or 0 (not the sum or the host's output): the same values
            # (bitwise where the seed is finite), and a backward of one where for the seed's term
            # instead of two and a sum for both branches.
            elif straight_through:
                # s - s.detach() is 0 in value (NaN when s is not: the where drops it) and s in gradient.
                y = y + torch.where(ok, s - s.detach(), 0.0)
            else:
                y = torch.add(y, torch.where(ok, s, 0.0), alpha=alpha)
                if gate:
                    seed_in.register_hook(functools.partial(_gate_grad, ok))
        return y

    def _fail(self, slot: int, kind: FailureKind, message: str) -> None:
        self.failures.append(SeedFailure(slot, kind, message[:_MAX_MESSAGE]))
        _FAILURES_RECORDED[0] += 1

    def _check_host(self, x: Tensor, h: Tensor) -> None:
        """Checks once that a residual host keeps its input's shape (and learns its spatial
        extents), or that a block host maps (*, in) to (*, out)."""
        spec = self.spec
        if spec.kind == "block":
            if not isinstance(h, Tensor) or x.ndim < 1 or x.shape[-1] != spec.in_features or \
                    h.shape[:-1] != x.shape[:-1] or h.shape[-1] != spec.out_features:
                got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(f"block host {spec.name!r}: expected (*, {spec.in_features}) -> "
                                 f"(*, {spec.out_features}), got {tuple(x.shape)} -> {got}")
            self._checked = True
            self._sync_forward()
            return
        if not isinstance(h, Tensor) or h.shape != x.shape:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"residual host {spec.name!r}: output shape {got} differs from input shape "
                             f"{tuple(x.shape)}; only a module whose output has its input's shape can be residual")
        axis = 1 if spec.channel_first else -1
        if x.ndim < (3 if spec.channel_first else 1) or x.shape[axis] != spec.in_features:
            layout = "(N, dim, *spatial)" if spec.channel_first else "(*, dim)"
            raise ValueError(f"residual host {spec.name!r}: expected input {layout} with dim {spec.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if spec.channel_first:
            spec.spatial = list(x.shape[2:])
        self._checked = True
        self._sync_forward()

    # ------------------------------------------------------------------ health signals

    def _sample(self, x: Tensor, h: Tensor, y: Tensor) -> Tensor:
        """Records the forward's signals and arranges for the backward's; returns ``y`` (under
        torch.compile, ``y`` through the gradient tap)."""
        compiling = torch.compiler.is_compiling()
        if not compiling:
            return self._sample_eager(x, h, y)
        with torch.no_grad():
            hf = h.detach().float()
            unit_dim = self._unit_dim % hf.ndim
            if hf.is_cuda:
                var, mean = torch.var_mean(hf)
            else:
                # On CPU, var_mean is 10-50x slower than a sum and a dot product (measured by
                # `make bench`); the one-pass formula is exact enough for a health signal.
                flat = hf.reshape(-1)
                n = flat.numel()
                mean = flat.sum() / n
                # Unbiased, like torch.var_mean's default.
                var = ((torch.dot(flat, flat) - n * mean * mean) / max(n - 1, 1)).clamp_(min=0)
            # Per-unit maximum over every other dim: no transposed copy of the output.
            others = [d for d in range(hf.ndim) if d != unit_dim]
            peak = hf.amax(dim=others) if others else hf
            dead = (peak <= 0).float().mean()
            if compiling or self._samples % self.rank_every == 0:
                # The SVD synchronises on CUDA: keep a slice of rows, gather_signals estimates the rank.
                units = hf.movedim(unit_dim, -1).reshape(-1, hf.shape[unit_dim])  # (rows, units)
                rows = units[::max(1, units.shape[0] // _RANK_ROWS)][:_RANK_ROWS].clone()
                if compiling:
                    self._rank_rows_compiled = rows
                else:
                    self._rank_rows = rows
            stats = [mean, var, dead, self._nan, self._weight_norm(), self._nan, self._nan]
            if compiling:
                self._signals.copy_(torch.stack(stats))
            else:
                self._samples += 1
                self.samples_per_step = hf.shape[0] if self._per_image else hf.numel() // max(hf.shape[-1], 1)
                torch.stack(stats, out=self._signals)
            self._measured = True
        if not y.requires_grad:
            return y
        if compiling:
            probe = self._probe
            if probe is None:
                raise RuntimeError(f"{self.spec.name}: the seed-gain probe was not drawn; turn sampling on with "
                                   "set_sampling(True), which draws it, before a compiled forward samples")
            return _GradTap.apply(y, x.detach(), probe[0], probe[1], self._grad_sink, self._unit_dim)
        y.register_hook(functools.partial(self._record_grad, x.detach()))
        return y

    def _sample_eager(self, x: Tensor, h: Tensor, y: Tensor) -> Tensor:
        """:meth:`_sample` outside torch.compile: the fewest device ops that give the signals (a sum
        and a dot product, a per-unit maximum, the weight's norm; the divisions and the count of dead
        units are done on the host by :func:`gather_health`), kept as device tensors (no write, no
        synchronisation). Every op reads a detached tensor, so none is recorded by autograd and no
        ``no_grad`` block is needed."""
        hf = h.detach()
        if hf.dtype != torch.float32:
            hf = hf.float()
        unit_dim = self._unit_dim % hf.ndim
        if type(hf) is Tensor and hf.is_cpu and hf.layout is torch.strided and 1 < hf.ndim and \
                hf.numel() <= _HOST_NUMEL:
            return self._sample_host(x, hf, y, unit_dim)
        if hf.is_cuda:
            var, mean = torch.var_mean(hf)
            first, second, moments = mean, var, False
        else:
            # On CPU, var_mean is 10-50x slower than a sum and a dot product (measured by
            # `make bench`); the one-pass formula (in float64 on the host) is exact enough for a
            # health signal.
            flat = hf.reshape(-1)
            first, second, moments = flat.sum(), torch.dot(flat, flat), True
        # Per-unit maximum over every other dim: no transposed copy of the output. The units whose
        # maximum is <= 0 (dead) are counted on the host from these (gather_health copies them with
        # the other taps).
        peak = hf.amax(dim=_other_dims(hf.ndim, unit_dim)) if hf.ndim > 1 else hf
        if self._samples % self.rank_every == 0:
            # The SVD synchronises on CUDA: keep a slice of rows, gather_health estimates the rank.
            units = hf.movedim(unit_dim, -1).reshape(-1, hf.shape[unit_dim])  # (rows, units)
            _put(self, "_rank_rows", units[::max(1, units.shape[0] // _RANK_ROWS)][:_RANK_ROWS].clone())
        _put(self, "_taps", (first, second, self._weight_norm(), peak))
        _put(self, "_tap_meta", (hf.numel(), moments))
        _put(self, "_samples", self._samples + 1)
        _put(self, "samples_per_step",
             hf.shape[0] if self._per_image else hf.numel() // max(hf.shape[-1], 1))
        _put(self, "_measured", True)
        if y.requires_grad:
            y.register_hook(functools.partial(self._record_grad, x.detach()))
        return y

    def _sample_host(self, x: Tensor, hf: Tensor, y: Tensor, unit_dim: int) -> Tensor:
        """:meth:`_sample_eager` of a small float32 output on CPU: a copy of the output (a later
        in-place op, an in-place ReLU say, would change it), the input and the host weight's norm
        now, the output gradient's copy in the backward (:meth:`_record_grad_host`); the reductions
        are left to :func:`gather_health`, which runs them with NumPy layer after layer (its code
        then runs warm, where here it would run cold between PyTorch's ops, for each layer)."""
        taps = _HostTaps(hf.numpy().copy(), unit_dim, self._weight_norm_host())
        _put(self, "_host_taps", taps)
        if self._samples % self.rank_every == 0:
            units_view = hf.movedim(unit_dim, -1).reshape(-1, hf.shape[unit_dim])  # (rows, units)
            _put(self, "_rank_rows", units_view[::max(1, units_view.shape[0] // _RANK_ROWS)][:_RANK_ROWS].clone())
        _put(self, "_samples", self._samples + 1)
        _put(self, "samples_per_step", hf.shape[0] if self._per_image else hf.numel() // max(hf.shape[-1], 1))
        _put(self, "_measured", True)
        if y.requires_grad:
            xd = x.detach()
            taps.x, taps.x_version = xd, xd._version
            y.register_hook(functools.partial(self._record_grad_host, taps))
        return y

    def _record_grad_host(self, taps: _HostTaps, grad: Tensor) -> None:
        """:meth:`_record_grad` after :meth:`_sample_host`: a float32 gradient on CPU of a host whose
        rows are its leading dims (linear, channel-last) is copied for :func:`gather_health`; any
        other gradient takes :meth:`_record_grad`."""
        x = taps.x
        if type(grad) is not Tensor or type(x) is not Tensor or grad.dtype is not torch.float32 \
                or x.dtype is not torch.float32 or not grad.is_cpu or grad.layout is not torch.strided \
                or grad.requires_grad or (self._unit_dim == 1 and x.ndim > 2) or x.ndim < 1 or grad.ndim < 1:
            self._record_grad(x, grad)
            return
        taps.grad = grad.numpy().copy()

    def _weight_norm_host(self) -> float:
        """:meth:`_weight_norm` as a float: with NumPy for a small float32 CPU weight, else the tensor's."""
        if self.spec.kind in ("linear", "conv1d", "conv2d"):
            weight = self._modules["base_layer"]._parameters.get("weight")
            if isinstance(weight, Tensor) and weight.dtype is torch.float32 and weight.is_cpu \
                    and weight.layout is torch.strided and weight.numel() <= _HOST_NUMEL and weight.is_contiguous():
                w = weight.detach().numpy().reshape(-1)
                return math.sqrt(float(_add(w * w)))
        return float(self._weight_norm())

    def _record_grad(self, x: Tensor, grad: Tensor) -> None:
        # A hook runs in the backward, where grad mode is off unless the caller asked for a graph of
        # the backward (create_graph=True): only then is no_grad needed.
        with torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext():
            width = x.shape[1] if self._unit_dim == 1 and x.ndim > 2 else x.shape[-1]
            gain, scale = _seed_gain_parts(x, grad, self._unit_dim, self._probe_features(width, x.device))
            _put(self, "_grad_taps", (_norm(grad), gain, scale))

    def _seed_gain(self, x: Tensor, grad: Tensor) -> Tensor:
        """How fast a new seed here could lower the loss, to first order.

        A seed is a small branch ``s(x)`` added to the host's output. Take one with ``k`` ReLU
        features of the layer's input, ``s(x) = W2 relu(P x + b)``, with ``P, b`` drawn like a new
        ``nn.Linear``'s and ``W2 = 0``: adding it changes nothing, and the gradient of the loss
        with respect to ``W2`` is ``G = sum over rows of grad_y relu(P x + b)^T``. Its norm is the
        rate at which gradient descent on the new branch starts lowering the loss (GradMax,
        Evci et al. 2022, with random rather than optimised features). Unlike the output
        gradient's norm it counts what the layer's input could still explain: a layer whose
        gradient is large but uncorrelated with any feature of its input (noise, say) scores low.
        Conv hosts use 1x1 features of the input taken at the output's stride (every s-th
        position, s = ceil(in / out) per extent); at most about
        ``_PROBE_ROWS`` rows are used (positions thinned first, then samples), the sum scaled to
        all rows.
        """
        width = x.shape[1] if self._unit_dim == 1 and x.ndim > 2 else x.shape[-1]
        return _seed_gain_of(x, grad, self._unit_dim, self._probe_features(width, x.device))

    def _probe_features(self, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The seed-gain probe's random features, drawn like a new nn.Linear's (U(-1/sqrt(in),
        1/sqrt(in))) from a generator seeded with _PROBE_SEED on the device itself (no copy, no
        synchronisation; CUDA's generator draws other numbers than the CPU's). Kept once drawn:
        (in + 1) x 32 floats, 32/out of the host weight's size."""
        probe = self._probe
        if probe is None or probe[0].shape[0] != width or probe[0].device != device:
            gen = torch.Generator(device=device).manual_seed(_PROBE_SEED)
            bound = 1.0 / math.sqrt(width)
            # float32 like the rows it meets (_seed_gain_of), whatever torch's default dtype is.
            f32 = torch.float32
            weight = (torch.rand(width, _PROBE_FEATURES, generator=gen, device=device, dtype=f32) * 2 - 1) * bound
            bias = (torch.rand(_PROBE_FEATURES, generator=gen, device=device, dtype=f32) * 2 - 1) * bound
            probe = self._probe = (weight, bias)
        return probe

    def _probe_host(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_probe_features` on the CPU as NumPy views (kept with the probe)."""
        probe = self._probe
        if probe is None or probe[0].shape[0] != width or probe[0].device.type != "cpu":
            probe = self._probe_features(width, torch.device("cpu"))
        views = self._probe_np
        if views is None or views[0] is not probe[0]:
            views = self._probe_np = (probe[0], probe[0].numpy(), probe[1].numpy())
        return views[1], views[2]

    def _weight_norm(self) -> Tensor:
        """The host weight's norm (linear, conv), or the norm of all its parameters (residual)."""
        base = self.base_layer
        if self.spec.kind in ("linear", "conv1d", "conv2d"):
            weight = base._parameters.get("weight")  # nn.Module's own lookup, without its __getattr__
            if weight is None:
                weight = getattr(base, "weight", None)
            if isinstance(weight, Tensor):
                return _norm(weight.detach())
        params = list(base.parameters())
        if not params:
            return self._nan
        norms = [_norm(p.detach()) for p in params]
        return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))

    def set_sampling(self, sampling: bool) -> None:
        """Turns the health-signal taps on or off (the driver turns them on for sampling steps).

        Args:
            sampling: record signals on the following forwards (and the output gradient's norm on
                their backwards) until turned off.
        """
        _put(self, "_sampling", bool(sampling))
        if self._sampling:
            _put(self, "_sample_steps", self._sample_steps + 1)
            if self._probe is None or self._probe[0].device != self._signals.device:
                # Drawn here, not in a compiled forward: a generator cannot be created in a graph.
                self._probe_features(self.spec.in_features, self._signals.device)
        if self._branches or not self._checked:
            return  # the layer runs its own forward either way: nothing else changes
        # Dormant: only which forward runs changes (what _sync_forward would pick, without its
        # walk over the slots: this runs twice per signal interval on every layer).
        if self._sampling:
            self.__dict__.pop("forward", None)
        else:
            base = self._modules["base_layer"]
            self.__dict__["forward"] = base.__call__ if _has_hooks(base) else base.forward

    # ------------------------------------------------------------------ seeds

    def _check_slot(self, slot: int) -> str:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot must be an integer in [0, {self.num_slots}), got {slot!r}")
        return str(slot)

    def add_seed(self, slot: int, seed: nn.Module) -> None:
        """Attaches a seed to an empty slot, in state GERMINATED (it does not run yet).

        Args:
            slot: the slot index.
            seed: the seed module (a :class:`esper.tezzeret.SeedModule` or any module mapping the
                host's input to a tensor of the host's output shape), on the host weight's device
                and dtype.

        Raises:
            ValueError: the slot is taken or out of range, a parameter or buffer of the seed is on
                another device or dtype than the host's weight, or the seed's IR was built for
                another host. The message shows expected and actual values.
        """
        key = self._check_slot(slot)
        if key in self.seeds:
            raise ValueError(f"{self.spec.name}: slot {slot} already holds a seed; remove it first")
        device, dtype = _device_of(self.base_layer), _dtype_of(self.base_layer)
        for name, t in [*seed.named_parameters(), *seed.named_buffers()]:
            if t.is_floating_point() and (t.device != device or (dtype is not None and t.dtype != dtype)):
                raise ValueError(f"{self.spec.name}: seed tensor {name!r} is on {t.device} with dtype {t.dtype}; "
                                 f"expected {device} with dtype {dtype} (the host weight's)")
        ir = getattr(seed, "ir", None)
        if isinstance(ir, dict) and isinstance(ir.get("host"), dict) and _host_key(ir["host"]) != _spec_key(self.spec):
            raise ValueError(f"{self.spec.name}: the seed's IR was built for host {ir['host']}, expected a host "
                             f"like {self.spec}")
        self.seeds[key] = seed
        self._states[slot] = SeedState.GERMINATED
        self._set_alpha(slot, 0.0)
        self._set_training(slot)
        self._sync_forward()

    def remove_seed(self, slot: int) -> list[nn.Parameter]:
        """Removes a slot's seed from the module (PRUNED, CANCELLED, ROLLED_BACK, or by hand).

        A slot left in a live state goes back to DORMANT; a non-live state (PRUNED, ...) is kept.

        Args:
            slot: the slot index.

        The slot's failures not yet read are discarded with the seed: reported later, they would
        blame an empty slot or the slot's next seed.

        Returns:
            The removed seed's parameters, to drop from the optimizer.

        Raises:
            ValueError: the slot is out of range or empty.
        """
        key = self._check_slot(slot)
        if key not in self.seeds:
            raise ValueError(f"{self.spec.name}: slot {slot} holds no seed")
        seed = self.seeds.pop(key)
        self._checks[slot].clear()
        self._bad[slot].zero_()  # on the device: no synchronisation
        self._seen[slot].zero_()
        self._runs[slot] = 0
        if any(f.slot == slot for f in self.failures):
            kept = [f for f in self.failures if f.slot != slot]
            self.failures.clear()
            self.failures.extend(kept)
        if self._states[slot] in LIVE_STATES:
            self._states[slot] = SeedState.DORMANT
            self._set_alpha(slot, 0.0)
            self._set_training(slot)
        self._sync_forward()
        return list(seed.parameters())

    def set_state(self, slot: int, state: int | str, alpha: float | None = None) -> None:
        """Mirrors a lifecycle transition decided by Go.

        Args:
            slot: the slot index.
            state: the new state (a :class:`SeedState`, its value, or its name as in Go's events).
            alpha: BLENDING's alpha in [0, 1] (required there); other states have a fixed alpha
                (TRAINING 0, HOLDING and FOSSILIZED 1, others 0) and a given value must equal it.

        Raises:
            ValueError: an unknown state, a live state on an empty slot, a bad alpha, or leaving
                FOSSILIZED (terminal; only :meth:`remove_seed` clears it).
        """
        self._check_slot(slot)
        try:
            new = SeedState[state] if isinstance(state, str) else SeedState(state)
        except (KeyError, ValueError):
            raise ValueError(f"unknown seed state {state!r}") from None
        if new in LIVE_STATES and str(slot) not in self.seeds:
            raise ValueError(f"{self.spec.name}: slot {slot} holds no seed; {new.name} needs one (add_seed first)")
        if self._states[slot] == SeedState.FOSSILIZED and new != SeedState.FOSSILIZED:
            raise ValueError(f"{self.spec.name}: slot {slot} is FOSSILIZED (terminal), cannot become {new.name}")
        if new == SeedState.BLENDING:
            if alpha is None or not 0.0 <= alpha <= 1.0:
                raise ValueError(f"BLENDING needs an alpha in [0, 1], got {alpha!r}")
            value = float(alpha)
        else:
            value = _FIXED_ALPHA.get(new, 0.0)
            if alpha is not None and alpha != value:
                raise ValueError(f"{new.name} has alpha {value}, got {alpha!r}")
        if new == SeedState.FOSSILIZED:
            self.seeds[str(slot)].requires_grad_(False)
        self._states[slot] = new
        self._set_alpha(slot, value)
        self._set_training(slot)
        self._sync_forward()

    def set_alphas(self, alphas: Sequence[float]) -> None:
        """Takes this layer's slice of Go's ``alphas_out`` (one float per slot) after a step.

        Only BLENDING slots change; every other state's alpha is fixed by the state.

        Args:
            alphas: ``num_slots`` floats in [0, 1].
        """
        if len(alphas) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} alphas, got {len(alphas)}")
        changed = False
        for slot, state in enumerate(self._states):
            a = float(alphas[slot])
            if state == SeedState.BLENDING and a != self._alphas[slot]:
                if not 0.0 <= a <= 1.0:
                    raise ValueError(f"slot {slot}: alpha must be in [0, 1], got {a}")
                self._set_alpha(slot, a)
                changed = True
        if changed:
            # Only alphas moved: which seeds run, and the forward, are unchanged (per step while
            # blending). Set without nn.Module's __setattr__, and the branches built directly (not
            # _replace, which calls _make): this runs on every step of a blend.
            now = self._alphas
            _put(self, "_branches", tuple([_Branch(b.slot, b.seed, b.straight_through, now[b.slot])
                                           for b in self._branches]))

    def _set_alpha(self, slot: int, value: float) -> None:
        """Sets a slot's alpha, as a float for the eager forward and in the tensor a compiled one
        reads (no synchronisation)."""
        if self._alphas[slot] != value:
            self._alphas[slot] = value
            self._set_coef(0, slot, value)

    def _set_training(self, slot: int) -> None:
        """Mirrors the slot's state into the compiled forward's straight-through weight."""
        self._set_coef(1, slot, float(self._states[slot] == SeedState.TRAINING))

    def _set_coef(self, row: int, slot: int, value: float) -> None:
        if self._coefs_host is not None:
            self._coefs_host[row, slot] = value
        else:
            self._coefs[row, slot].fill_(value)

    @contextlib.contextmanager
    def disable_seeds(self, *slots: int) -> Iterator[KasminaLayer]:
        """Switches seeds off inside a ``with`` block: all of them when no slot is given.

        Used to measure a seed's contribution on validation (with and without it). Nests; the
        slots' states and alphas are untouched.

        Args:
            slots: the slots to switch off.
        """
        for slot in slots:
            self._check_slot(slot)
        chosen = list(slots) if slots else list(range(self.num_slots))
        self._disabled.update(chosen)
        self._sync_forward()
        try:
            yield self
        finally:
            self._disabled.subtract(chosen)
            self._sync_forward()

    def pop_failures(self) -> list[SeedFailure]:
        """Returns and clears the failures since the last read. Reads the device counters (one sync).

        Returns:
            Exceptions and wrong shapes in the order they happened, then one NONFINITE entry per
            slot whose output was not finite in some forward passes.
        """
        return _drain([self])[0]

    # ------------------------------------------------------------------ accessors

    def state(self, slot: int) -> SeedState:
        """The slot's state as last set."""
        self._check_slot(slot)
        return self._states[slot]

    def alpha(self, slot: int) -> float:
        """The slot's alpha as last set."""
        self._check_slot(slot)
        return self._alphas[slot]

    def seed(self, slot: int) -> nn.Module | None:
        """The slot's seed module, or None."""
        key = self._check_slot(slot)
        return self.seeds[key] if key in self.seeds else None

    def get_base_layer(self) -> nn.Module:
        """The wrapped host module."""
        return self.base_layer

    @property
    def is_dormant(self) -> bool:
        """True while the layer's forward is the host's own."""
        return "forward" in self.__dict__

    def extra_repr(self) -> str:
        states = ", ".join(s.name for s in self._states)
        return f"kind={self.spec.kind}, slots={self.num_slots}, states=[{states}]"


def _host_key(host: dict[str, Any]) -> tuple[Any, ...]:
    """The fields of an IR host that decide a seed's shapes (Karn omits zero fields: absent means 0)."""
    return tuple(host.get(k, 0) for k in ("kind", "in", "out", "kernel", "stride", "padding", "dim", "mid",
                                          "consumer_kernel", "consumer_stride", "consumer_padding")) + (
        host.get("activation", ""), bool(host.get("spatial")))


def _spec_key(spec: HostSpec) -> tuple[Any, ...]:
    """:func:`_host_key` of the host a spec describes (known before the spatial extents are)."""
    if spec.kind == "residual":
        return ("residual", 0, 0, 0, 0, 0, spec.in_features, 0, 0, 0, 0, "", spec.channel_first)
    return (spec.kind, spec.in_features, spec.out_features, spec.kernel, spec.stride, spec.padding, 0, spec.mid,
            spec.consumer_kernel, spec.consumer_stride, spec.consumer_padding, spec.activation, False)


def _accept_unwrapped_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of a :class:`KasminaLayer`: a checkpoint saved before the model was
    wrapped names the host's tensors ``<prefix>weight``; they are loaded as
    ``<prefix>base_layer.weight`` when the wrapped form is absent (PEFT does the same)."""
    base = module.get_submodule("base_layer")
    for key in base.state_dict(keep_vars=True):
        if key.startswith(("base_layer.", "seeds.")):
            continue  # a host child named like the wrapper's own: ambiguous, never renamed
        old, new = prefix + key, prefix + "base_layer." + key
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


def refuse_seeds_not_built(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of a wrapped model (registered by :func:`esper.wrap.wrap`): refuse,
    before any tensor is written, a state dict holding seed weights for slots that hold no seed.

    Seeds are rebuilt from the Morphogenesis checkpoint, so it must be loaded first. PyTorch hands
    pre-hooks ``strict=True`` whatever the caller asked, so ``strict=False`` is refused too: to
    load the host weights alone, leave out the seeds' keys.

    Raises:
        RuntimeError: naming the seeds missing and the order to load in.
    """
    seed_prefixes = {
        f"{prefix}{name}.seeds.": layer for name, layer in module.named_modules() if isinstance(layer, KasminaLayer)
    }
    if not seed_prefixes:
        return
    missing: dict[str, list[str]] = {}
    for key in state_dict:
        at = key.find("seeds.")
        while at >= 0:
            head = key[: at + len("seeds.")]
            layer = seed_prefixes.get(head)
            if layer is not None:
                slot, _, rest = key[len(head):].partition(".")
                if slot not in layer.seeds:
                    missing.setdefault(f"{head}{slot}", []).append(key)
                else:
                    _refuse_other_seed(layer.seeds[slot], f"{head}{slot}", rest, state_dict[key])
                break
            at = key.find("seeds.", at + 1)
    if missing:
        first = list(missing.items())[:4]
        shown = ", ".join(f"{where} ({len(keys)} tensors, e.g. {keys[0]!r})" for where, keys in first)
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise RuntimeError(
            f"load_state_dict: the state dict holds the weights of seeds this model does not have yet: {shown}{more}. "
            "Seeds are rebuilt from the Morphogenesis checkpoint: call morph.load_state_dict(...) first, then "
            "model.load_state_dict(...), then optimizer.load_state_dict(...) (to load the host weights alone, "
            "leave out the keys of the seeds). Nothing was loaded."
        )


def _refuse_other_seed(seed: nn.Module, where: str, name: str, value: Any) -> None:
    """Refuse (before anything is written) a state-dict tensor meant for the seed at ``where`` that
    the seed the Morphogenesis checkpoint rebuilt there does not have, or has with another shape:
    the model's weights and the checkpoint's seeds disagree.

    Raises:
        RuntimeError: naming the tensor, both shapes and the seed's blueprint.
    """
    own = seed.state_dict(keep_vars=True)
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
    if name in own and (shape is None or shape == tuple(own[name].shape)):
        return
    count = sum(p.numel() for p in seed.parameters())
    what = (f"has {name!r} with shape {tuple(own[name].shape)}" if name in own
            else f"has no tensor {name!r} (it has {sorted(own)[:6]})")
    raise RuntimeError(
        f"load_state_dict: the state dict's {where}.{name} (shape {shape}) does not fit the seed rebuilt from the "
        f"Morphogenesis checkpoint: {where} (blueprint {str(getattr(seed, 'blueprint_id', ''))[:12]}, {count} "
        f"parameters) {what}. The model's weights and the checkpoint's seeds come from different runs or steps: "
        "load the morph, model and optimizer states saved together. Nothing was loaded."
    )


LayersLike = Union[nn.Module, Sequence[KasminaLayer]]


def kasmina_layers(model: nn.Module) -> list[tuple[str, KasminaLayer]]:
    """The model's Kasmina layers in module order, with their qualified names.

    This order is the layer index of the Go session (signals, alphas, events).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, KasminaLayer)]


def _layers(layers: LayersLike) -> list[KasminaLayer]:
    if isinstance(layers, nn.Module):
        return [m for _, m in kasmina_layers(layers)]
    return list(layers)


def _to_host(tensors: list[Tensor]) -> list[list[Any]]:
    """Copies tensors to the host with one synchronisation when they share a device."""
    if not tensors:
        return []
    if all(t.device == tensors[0].device for t in tensors):
        flat = torch.cat(tensors).tolist()
        out, i = [], 0
        for t in tensors:
            out.append(flat[i:i + t.numel()])
            i += t.numel()
        return out
    return [t.tolist() for t in tensors]


def _taps_to_host(scalars: list[Tensor], vectors: list[Tensor]) -> tuple[list[float], np.ndarray]:
    """The values of 0-d float tensors as floats and of 1-d float tensors as one float32 array (the
    vectors end to end), with one copy (one synchronisation) when they share a device and dtype."""
    device = scalars[0].device
    if all(t.device == device and t.dtype == torch.float32 for t in (*scalars, *vectors)):
        flat = torch.cat([torch.stack(scalars), *vectors]).cpu().numpy() if vectors else \
            torch.stack(scalars).cpu().numpy()
        return flat[:len(scalars)].tolist(), flat[len(scalars):]
    host = [float(t) for t in scalars]
    return host, (np.concatenate([v.float().cpu().numpy() for v in vectors]) if vectors
                  else np.empty(0, dtype=np.float32))


def _drain(layers: list[KasminaLayer]) -> list[list[SeedFailure]]:
    for layer in layers:
        for slot in range(layer.num_slots):
            layer._fold(slot)
    counters = _to_host([t for layer in layers for t in (layer._bad, layer._seen)])
    out = []
    for layer, counts, seen in zip(layers, counters[0::2], counters[1::2]):
        found = list(layer.failures)
        layer.failures.clear()
        for slot, (runs, compiled, failed) in enumerate(zip(layer._runs, seen, counts)):
            if failed:
                # Every step of the window failed only if every forward was checked: an eager
                # forward is not checked between samples under guard "sampled" (a compiled one always is).
                checked_all = layer.guard_every_step or runs == 0
                found.append(SeedFailure(slot, FailureKind.NONFINITE,
                                         f"non-finite output in {failed} of {runs + compiled} forward passes"
                                         + ("" if checked_all else " checked (sampling steps only: guard 'sampled')"),
                                         every_step=checked_all and failed >= runs + compiled))
        layer._bad.zero_()
        layer._seen.zero_()
        layer._runs = [0] * layer.num_slots
        out.append(found)
    return out


def has_seeds_or_failures(layers: Sequence[KasminaLayer]) -> bool:
    """Whether any of the layers holds a seed or a recorded failure (what :func:`collect_failures`
    would drain), without a call per layer."""
    for layer in layers:
        if layer._modules["seeds"]._modules or layer.failures:
            return True
    return False


def failures_recorded() -> int:
    """How many exceptions and wrong shapes every Kasmina layer of this process has recorded so far
    (a cheap way to see whether :func:`stamp_failures` has anything to do)."""
    return _FAILURES_RECORDED[0]


def stamp_failures(layers: LayersLike, step: int) -> None:
    """Sets ``step`` on every recorded failure that has none: they happened in that step.

    A driver calls it at the end of a step in which :func:`failures_recorded` grew, so that each
    failure reaches Go's breaker at its own step (the breaker counts consecutive failing steps).
    """
    for layer in _layers(layers):
        if any(f.step is None for f in layer.failures):
            stamped = [f if f.step is not None else f._replace(step=step) for f in layer.failures]
            layer.failures.clear()
            layer.failures.extend(stamped)


def collect_failures(layers: LayersLike) -> list[tuple[int, SeedFailure]]:
    """Drains every layer's failures, reading all device counters with one synchronisation.

    Call it every N steps (and before acting on a seed); forward each entry to Go with
    ``Session.report_failure(layer_index, failure.slot, failure.kind, failure.message)``.

    Args:
        layers: a wrapped model, or its Kasmina layers in session order.

    Returns:
        ``(layer_index, failure)`` pairs.
    """
    drained = _drain(_layers(layers))
    return [(i, f) for i, found in enumerate(drained) for f in found]


# Signals whose non-finite measurement is damage to the model: the layer's output (activations) and
# its host's weights. A non-finite gradient is not counted here: a GradScaler produces one by design
# and skips the step; one that reaches the weights shows in these at the next sample.
_ACT_MEAN, _ACT_VAR, _DEAD_FRAC, _GRAD_NORM, _WEIGHT_NORM, _EFF_RANK, _SEED_GAIN = range(len(SIGNALS))
_DAMAGE = (_ACT_MEAN, _ACT_VAR, _WEIGHT_NORM)


def _host_rows(values: np.ndarray, width: int, hosted: list[tuple[int, KasminaLayer, _HostTaps]]) -> None:
    """Writes the rows of SIGNALS of the layers whose taps are NumPy copies (:class:`_HostTaps`).
    Layers whose output, input and gradient have the same shapes (``Deep(10)``'s ten layers, a
    transformer's blocks) are reduced together, one NumPy op per reduction for the group; a layer
    alone, or one whose gradient or input is missing or changed, by :meth:`_HostTaps.row`."""
    groups: dict[tuple[Any, ...], list[tuple[int, KasminaLayer, _HostTaps]]] = {}
    for entry in hosted:
        taps = entry[2]
        x, g = taps.x, taps.grad
        if g is None or x is None or x._version != taps.x_version or taps.unit_dim != taps.out.ndim - 1 \
                or taps.out.size == 0:
            values[entry[0] * width:(entry[0] + 1) * width] = taps.row(entry[1])
            continue
        groups.setdefault((taps.out.shape, g.shape, tuple(x.shape)), []).append(entry)
    for group in groups.values():
        if len(group) == 1:
            i, layer, taps = group[0]
            values[i * width:(i + 1) * width] = taps.row(layer)
            continue
        # Rows are the leading dims (units last): (L, rows, units), (L, rows, out), (L, rows, in).
        out = np.stack([taps.out.reshape(-1, taps.out.shape[-1]) for _, _, taps in group])
        n = out.shape[1] * out.shape[2]
        flat = out.reshape(len(group), n)
        means = _add(flat, axis=1).astype(np.float64) / n
        squares = np.einsum("ij,ij->i", flat, flat).astype(np.float64)
        variances = (squares - n * means * means) / max(n - 1, 1)  # unbiased, like torch.var's
        # A unit is dead when its maximum is <= 0 (a NaN maximum is not: NaN <= 0 is false).
        dead = _add(_peak(out, axis=1) <= 0, axis=1) / out.shape[2]
        grads = np.stack([taps.grad.reshape(-1, taps.grad.shape[-1]) for _, _, taps in group])
        grad_norms = np.sqrt(np.einsum("ijk,ijk->i", grads, grads).astype(np.float64))
        xs = np.stack([taps.x.numpy().reshape(-1, taps.x.shape[-1]) for _, _, taps in group])
        rows = xs.shape[1]
        if rows == 0 or rows != grads.shape[1]:
            for i, layer, taps in group:
                values[i * width:(i + 1) * width] = taps.row(layer)
            continue
        every = max(1, rows // _PROBE_ROWS)
        if every > 1:
            xs, grads = xs[:, ::every], grads[:, ::every]
        weight, bias = group[0][1]._probe_host(xs.shape[2])  # the same features for every layer of a width
        features = _mm(xs, weight)  # (L, rows, k)
        features += bias
        np.maximum(features, 0.0, out=features)  # relu (NaN stays NaN)
        spread = _mm(grads.transpose(0, 2, 1), features)  # (L, out, k)
        gains = np.sqrt(np.einsum("ijk,ijk->i", spread, spread).astype(np.float64)) * (rows / xs.shape[1])
        nan = math.nan
        for j, (i, _, taps) in enumerate(group):
            var = float(variances[j])
            values[i * width:(i + 1) * width] = [float(means[j]), 0.0 if var < 0 else var, float(dead[j]),
                                                 float(grad_norms[j]), taps.weight_norm, nan, float(gains[j])]


def gather_health(layers: LayersLike, reset: bool = True) -> tuple[Tensor, list[str]]:
    """Copies every layer's signal buffer to the host with one synchronisation, and names the
    measurements that were not finite.

    A measured ``act_mean``, ``act_var`` or ``weight_norm`` that is NaN or infinite, and output
    rows kept for the effective rank that hold NaN or Inf, are *non-finite signals*: the model's
    activations or weights are damaged. The driver adds their number to ``nonfinite_count``, which
    makes Go's governor roll back. Their effective rank is not computed (the SVD would raise).
    Non-finite gradient norms are left in the buffer (Go's statistics count them) but not named:
    a GradScaler makes them by design and skips the step; a gradient that reaches the weights is
    seen in the weights and activations at the next sample.

    Args:
        layers: a wrapped model, or its Kasmina layers in session order.
        reset: refill the device buffers with NaN ("not measured") after the read.

    Returns:
        ``(values, nonfinite)``: the values as :func:`gather_signals` returns them, and one
        ``"<layer name>.<signal>"`` per non-finite measurement.
    """
    chosen = _layers(layers)
    width = len(SIGNALS)
    values = np.empty(len(chosen) * width, dtype=np.float32)
    values.fill(math.nan)
    taps: list[Tensor] = []  # every eager layer's 0-d reductions, read with one stack and one copy
    peaks: list[Tensor] = []  # every eager layer's per-unit maxima (dead units counted here)
    eager: list[tuple[int, KasminaLayer]] = []
    buffered: list[tuple[int, KasminaLayer]] = []  # compiled forwards write the layer's _signals
    hosted: list[tuple[int, KasminaLayer, _HostTaps]] = []  # small outputs on CPU (NumPy taps)
    for i, layer in enumerate(chosen):
        measured = layer._grad_sink.grad  # what a compiled forward's gradient tap measured
        if measured is not None:
            layer._grad_norm_out.copy_(measured[0])
            layer._seed_gain_out.copy_(measured[1])
            if reset:
                layer._grad_sink.grad = None
        host = layer._host_taps
        if host is not None:  # a small output on CPU: its taps are NumPy arrays
            hosted.append((i, layer, host))
        forward, backward = layer._taps, layer._grad_taps
        if forward is not None or backward is not None:
            eager.append((i, layer))
            if forward is not None:
                taps += forward[:3]
                peaks.append(forward[3].reshape(-1))
            if backward is not None:
                taps += backward[:2]
        if (layer._measured and forward is None and host is None) or measured is not None:
            buffered.append((i, layer))
    if hosted:
        _host_rows(values, width, hosted)
    if buffered:
        for (i, _), row in zip(buffered, _to_host([layer._signals for _, layer in buffered])):
            values[i * width:(i + 1) * width] = row
    if taps:
        host, maxima = _taps_to_host(taps, peaks)
        at = unit = 0
        for i, layer in eager:
            row = values[i * width:(i + 1) * width]
            if layer._taps is not None:
                first, second, weight = host[at:at + 3]
                at += 3
                n, moments = layer._tap_meta
                if moments:  # sum and sum of squares: the unbiased variance, like torch.var's
                    mean = first / n
                    var = (second - n * mean * mean) / max(n - 1, 1)
                    first, second = mean, (0.0 if var < 0 else var)  # NaN stays NaN
                row[_ACT_MEAN], row[_ACT_VAR] = first, second
                units = layer._taps[3].numel()
                # A unit is dead when its maximum is <= 0 (a NaN maximum is not: NaN <= 0 is false).
                row[_DEAD_FRAC] = np.count_nonzero(maxima[unit:unit + units] <= 0) / units if units else math.nan
                unit += units
                row[_WEIGHT_NORM] = weight
            if layer._grad_taps is not None:
                grad_norm, gain = host[at:at + 2]
                at += 2
                row[_GRAD_NORM], row[_SEED_GAIN] = grad_norm, gain * layer._grad_taps[2]
    nonfinite: list[str] = []
    for i, layer in enumerate(chosen):
        row = values[i * width:(i + 1) * width]
        if layer._measured and not (math.isfinite(row[_ACT_MEAN]) and math.isfinite(row[_ACT_VAR])
                                    and math.isfinite(row[_WEIGHT_NORM])):  # _DAMAGE, without a generator's calls
            # A host without parameters has no weight norm to damage (NaN: not measured). Looked up
            # only here: a walk over the host's parameters costs more than the rest of a layer's read.
            weighted = next(layer.base_layer.parameters(), None) is not None
            nonfinite += [f"{layer.spec.name}.{SIGNALS[k]}" for k in _DAMAGE
                          if not math.isfinite(row[k]) and (weighted or SIGNALS[k] != "weight_norm")]
        rows = layer._rank_rows
        if rows is None and layer._rank_rows_compiled is not None and \
                (layer._sample_steps - 1) % layer.rank_every == 0:
            rows = layer._rank_rows_compiled  # the last sampling step was one of the rank's
        if rows is not None:
            if bool(torch.isfinite(rows).all()):
                row[_EFF_RANK] = _finite_rank(rows)
            else:
                nonfinite.append(f"{layer.spec.name}.eff_rank")
        if reset:
            for name in ("_taps", "_grad_taps", "_host_taps", "_rank_rows", "_rank_rows_compiled"):
                _put(layer, name, None)
            _put(layer, "_measured", False)
    if reset:
        for _, layer in buffered:
            layer._signals.fill_(math.nan)
    return torch.from_numpy(values), nonfinite


def gather_signals(layers: LayersLike, reset: bool = True) -> Tensor:
    """Copies every layer's signal buffer to the host with one synchronisation.

    Args:
        layers: a wrapped model, or its Kasmina layers in session order.
        reset: refill the device buffers with NaN ("not measured") after the read.

    Returns:
        A CPU float32 tensor of ``7 * len(layers)`` values, layer-major, each layer's 7 in the
        order of :data:`SIGNALS` (NaN: not measured since the last read; ``eff_rank`` is computed
        here, from the output rows kept at the last rank sample, and NaN when they are not
        finite). The driver prepends ``[train_loss_mean, nonfinite_count]`` to form the buffer of
        ``esper_session_step``; :func:`gather_health` also names the non-finite measurements.
    """
    return gather_health(layers, reset)[0]


def set_sampling(layers: LayersLike, sampling: bool) -> None:
    """Turns the health-signal taps of every layer on or off (see :meth:`KasminaLayer.set_sampling`)."""
    for layer in _layers(layers):
        layer.set_sampling(sampling)
