"""Tezzeret: builds a blueprint IR into an ``nn.Module``, validates it, serialises its weights.

A blueprint IR (``docs/internals.md``, "Blueprint IR") is a small graph of typed ops. Go is the
only validator and hasher of blueprints: a seed is built with the id Go gave its blueprint (the
GERMINATED event's), or Go validates the IR and gives its id first. Tezzeret trusts a fixed table
of op builders and nothing else: what they cannot build (an unknown op, a missing attribute, an
unknown input, a cycle) is refused with a :class:`ValueError` naming the op, before any module is
built; in training that is a build failure reported to Go.

::

    seed = build_seed(ir, device=host.weight.device, dtype=host.weight.dtype)
    report = validate_seed(seed, example_input, expected_out_shape=host(example_input).shape)
    blob = save_weights(seed)            # safetensors bytes; load_weights(seed, blob) restores them

Weights cross as safetensors bytes only: nothing here pickles or calls ``torch.load``.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable, NamedTuple, Sequence

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, fx, nn

__all__ = [
    "OP_NAMES",
    "SeedModule",
    "SeedValidationError",
    "build_seed",
    "is_mergeable",
    "load_weights",
    "merged_delta",
    "save_weights",
    "validate_seed",
]

# Attribute kinds, worded as they appear in error messages (the same words as blueprint/ops.go).
_POS = "an integer >= 1"
_NONNEG = "an integer >= 0"
_BOOL = "true or false"
_INIT = '"default" or "zero"'
_MAX_ATTR = 1 << 24  # the bound Karn puts on every size

_CONV_ATTRS = {
    "in": _POS, "out": _POS, "kernel": _POS, "stride": _POS, "padding": _NONNEG, "groups": _POS, "bias": _BOOL,
    "init": _INIT,
}


class _OpSpec(NamedTuple):
    arity: int
    attrs: dict[str, str]  # name -> kind; every attr but those of _OPTIONAL is required


# Optional attributes and their values when absent (as blueprint/ops.go).
_OPTIONAL = {"init": "default", "causal": False}


_OPS: dict[str, _OpSpec] = {
    "linear": _OpSpec(1, {"in": _POS, "out": _POS, "bias": _BOOL, "init": _INIT}),
    "conv1d": _OpSpec(1, _CONV_ATTRS),
    "conv2d": _OpSpec(1, _CONV_ATTRS),
    "layernorm": _OpSpec(1, {"dim": _POS}),
    "groupnorm": _OpSpec(1, {"groups": _POS, "channels": _POS}),
    "relu": _OpSpec(1, {}),
    "gelu": _OpSpec(1, {}),
    "silu": _OpSpec(1, {}),
    "tanh": _OpSpec(1, {}),
    "sigmoid": _OpSpec(1, {}),
    "add": _OpSpec(2, {}),
    "mul": _OpSpec(2, {}),
    "avgpool_spatial": _OpSpec(1, {}),
    "attention": _OpSpec(1, {"dim": _POS, "heads": _POS, "causal": _BOOL, "init": _INIT}),
    "leaky_relu": _OpSpec(1, {}),
    "elu": _OpSpec(1, {}),
    "mish": _OpSpec(1, {}),
    "hardswish": _OpSpec(1, {}),
    "kron_linear": _OpSpec(1, {"in": _POS, "out": _POS, "in_factor": _POS, "out_factor": _POS, "init": _INIT}),
}

#: Every op Tezzeret builds, sorted (the fixed table of docs/internals.md).
OP_NAMES: tuple[str, ...] = tuple(sorted(_OPS))


def _spatial_mean(x: Tensor) -> Tensor:
    """Mean over every dim after 1, kept: (N, C, *) -> (N, C, 1, ...)."""
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


# Ops that are plain functions of their inputs (no parameters).
_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,  # negative slope 0.01, PyTorch's default
    "elu": F.elu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "add": operator.add,
    "mul": operator.mul,
    "avgpool_spatial": _spatial_mean,
}


class SeedValidationError(ValueError):
    """A built seed failed a validation check.

    Attributes:
        check: the name of the failed check ("forward", "output_shape", "finite", "zero_init",
            "backward", "param_count").
        expected: what the check wanted.
        actual: what it found.
    """

    def __init__(self, check: str, message: str, expected: Any = None, actual: Any = None) -> None:
        super().__init__(message)
        self.check = check
        self.expected = expected
        self.actual = actual


class _SelfAttention(nn.Module):
    """Multi-head self-attention over dim -2 of (B, T, C) with its own output projection.

    Four projections with bias (q, k, v packed in ``qkv``, and ``proj``), as ``nn.MultiheadAttention``:
    4 * dim * dim + 4 * dim parameters. ``init="zero"`` zeroes ``proj``. ``causal`` lets token t
    attend to tokens <= t only. Inputs need a sequence dim: a (B, C) input is refused.
    """

    def __init__(self, dim: int, heads: int, device: torch.device | None, dtype: torch.dtype | None,
                 causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        if x.ndim < 3:
            # Over dim -2 of a (B, C) input, attention would mix the samples of a batch.
            raise ValueError(f"attention expects tokens (batch, seq, dim), got a {x.ndim}-D input of shape "
                             f"{tuple(x.shape)}; attach attention seeds to sequence hosts")
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, C) each
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(-3, -2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D)
        return self.proj(y.transpose(-3, -2).flatten(-2))  # (B, T, C)


class _Kronecker(nn.Module):
    """A Kronecker-factorised linear map on the last dim, no bias: ``y = x @ kron(a, b).T``.

    ``a`` is (out_factor, in_factor), ``b`` is (out / out_factor, in / in_factor): ``a.numel() +
    b.numel()`` parameters instead of ``in * out``. Computed as ``a @ X @ b.T`` with ``X`` the last
    dim viewed as (in_factor, in / in_factor), never forming the product. Each factor starts like an
    ``nn.Linear`` weight of its shape; ``init="zero"`` zeroes ``a``, so the output is zero and ``a``
    still gets a gradient (``b`` does once ``a`` moves).
    """

    def __init__(self, n_in: int, n_out: int, in_factor: int, out_factor: int, device: torch.device | None,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.in_factor = in_factor
        self.a = nn.Parameter(torch.empty(out_factor, in_factor, device=device, dtype=dtype))
        self.b = nn.Parameter(torch.empty(n_out // out_factor, n_in // in_factor, device=device, dtype=dtype))
        for w in (self.a, self.b):
            nn.init.kaiming_uniform_(w, a=5 ** 0.5)  # nn.Linear's weight init

    def forward(self, x: Tensor) -> Tensor:  # (*, in)
        t = x.unflatten(-1, (self.in_factor, -1)) @ self.b.T  # (*, in_factor, out / out_factor)
        return (self.a @ t).flatten(-2)  # (*, out)


class _Node(NamedTuple):
    id: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_identifier(s: Any) -> bool:
    return (
        isinstance(s, str) and 0 < len(s) <= 64 and s.isascii() and (s[0].isalpha() or s[0] == "_")
        and all(c.isalnum() or c == "_" for c in s)
    )


def _check_attrs(op_id: str, op: str, attrs: Any) -> dict[str, Any]:
    where = f"op {op_id!r} ({op})"
    if attrs is None:
        attrs = {}
    if not isinstance(attrs, dict):
        raise ValueError(f"{where}: attrs must be an object, got {type(attrs).__name__}")
    spec = _OPS[op].attrs
    for name in sorted(attrs):
        if name not in spec:
            known = ", ".join(spec) or "none"
            raise ValueError(f"{where}: unknown attribute {name!r} (known: {known})")
        value, kind = attrs[name], spec[name]
        if kind == _POS:
            ok = _is_int(value) and 1 <= value <= _MAX_ATTR
        elif kind == _NONNEG:
            ok = _is_int(value) and 0 <= value <= _MAX_ATTR
        elif kind == _BOOL:
            ok = isinstance(value, bool)
        else:
            ok = value in ("default", "zero")
        if not ok:
            raise ValueError(f"{where}: attribute {name!r} must be {kind}, got {value!r}")
    for name, kind in spec.items():
        if name not in _OPTIONAL and name not in attrs:
            raise ValueError(f"{where}: missing attribute {name!r} ({kind})")
    return dict(attrs)


def _go_id(ir: Any) -> str:
    """Go's id of an IR, after Go validated it: Go is the only validator and hasher of blueprints.

    Raises:
        esper.InvalidArgumentError: (a ValueError) Go refused the IR; its message names the op.
    """
    from . import karn  # the Go library loads on first use, never at import

    return karn.blueprint_id(ir)


def _parse(ir: Any) -> tuple[list[_Node], str]:
    """The nodes of an IR in execution order and the output id: what the builders need (ops of the
    fixed table with the attributes they take, inputs that exist, no cycle). Whether the IR is a
    valid blueprint for its host (widths, zero output at init, counts) is Go's to decide.

    Raises:
        ValueError: naming the op and what the builders cannot build.
    """
    if not isinstance(ir, dict):
        raise ValueError(f"an IR must be a dict, got {type(ir).__name__}")
    ops = ir.get("ops")
    if not isinstance(ops, list) or not ops:
        raise ValueError("IR 'ops' must be a non-empty list")
    nodes: dict[str, _Node] = {}
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ValueError(f"op {i}: must be an object, got {type(op).__name__}")
        op_id, name, inputs = op.get("id"), op.get("op"), op.get("inputs")
        if not _is_identifier(op_id) or op_id == "x":
            raise ValueError(f"op {i}: id {op_id!r} must be an identifier of at most 64 characters other than 'x'")
        if op_id in nodes:
            raise ValueError(f"duplicate op id {op_id!r}")
        if not isinstance(name, str) or name not in _OPS:
            raise ValueError(f"op {op_id!r}: unknown op {name!r} (known: {', '.join(OP_NAMES)})")
        arity = _OPS[name].arity
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs) or len(inputs) != arity:
            raise ValueError(f"op {op_id!r} ({name}): 'inputs' must be a list of {arity} name(s), got {inputs!r}")
        nodes[op_id] = _Node(op_id, name, tuple(inputs), _check_attrs(op_id, name, op.get("attrs")))
    for node in nodes.values():
        for src in node.inputs:
            if src == node.id:
                raise ValueError(f"op {node.id!r} takes its own output as input (a cycle)")
            if src != "x" and src not in nodes:
                raise ValueError(f"op {node.id!r}: input {src!r} is neither 'x' nor an op id")
    output = ir.get("output")
    if not isinstance(output, str) or output not in nodes:
        raise ValueError(f"IR output {output!r} is not an op id")
    return _topological_order(nodes), output


def _topological_order(nodes: dict[str, _Node]) -> list[_Node]:
    """Kahn's order with declaration order breaking ties (as Karn's), refusing cycles."""
    order: list[_Node] = []
    done: set[str] = set()
    while len(order) < len(nodes):
        ready = [n for n in nodes.values() if n.id not in done and all(s == "x" or s in done for s in n.inputs)]
        if not ready:
            stuck = ", ".join(sorted(set(nodes) - done))
            raise ValueError(f"cycle among ops {stuck}")
        for node in ready:
            done.add(node.id)
            order.append(node)
    return order


def _build_module(node: _Node, device: torch.device | None, dtype: torch.dtype | None) -> nn.Module | None:
    """The module of one node, or None for function ops."""
    a = node.attrs
    if node.op == "linear":
        m: nn.Module = nn.Linear(a["in"], a["out"], bias=a["bias"], device=device, dtype=dtype)
    elif node.op in ("conv1d", "conv2d"):
        conv = nn.Conv1d if node.op == "conv1d" else nn.Conv2d
        m = conv(a["in"], a["out"], a["kernel"], stride=a["stride"], padding=a["padding"], groups=a["groups"],
                 bias=a["bias"], device=device, dtype=dtype)
    elif node.op == "layernorm":
        m = nn.LayerNorm(a["dim"], device=device, dtype=dtype)
    elif node.op == "groupnorm":
        m = nn.GroupNorm(a["groups"], a["channels"], device=device, dtype=dtype)
    elif node.op == "attention":
        if a["dim"] % a["heads"]:  # the module cannot split dim into heads (Go refuses such IRs too)
            raise ValueError(f"op {node.id!r} (attention): dim {a['dim']} is not divisible by heads {a['heads']}")
        m = _SelfAttention(a["dim"], a["heads"], device, dtype, causal=a.get("causal", False))
    elif node.op == "kron_linear":
        if a["in"] % a["in_factor"] or a["out"] % a["out_factor"]:  # no factor shapes (Go refuses these too)
            raise ValueError(f"op {node.id!r} (kron_linear): in {a['in']} and out {a['out']} must be divisible by "
                             f"in_factor {a['in_factor']} and out_factor {a['out_factor']}")
        m = _Kronecker(a["in"], a["out"], a["in_factor"], a["out_factor"], device, dtype)
    else:
        return None
    if a.get("init") == "zero":
        # The op's zero-init rule (docs/internals.md): attention zeroes its output projection, a
        # Kronecker map its first factor, any other op its weight and bias.
        target: nn.Module | nn.Parameter = m.proj if isinstance(m, _SelfAttention) else (
            m.a if isinstance(m, _Kronecker) else m)
        with torch.no_grad():
            for p in [target] if isinstance(target, nn.Parameter) else target.parameters():
                p.zero_()
    return m


class SeedModule(nn.Module):
    """A seed built from a blueprint IR: its op graph run in topological order from ``x`` to the output.

    Each op with parameters is a child module named by its op id (state_dict keys ``<op id>.weight``).
    Build one with :func:`build_seed`.

    Attributes:
        ir: a private copy of the IR the seed was built from.
        blueprint_id: the blueprint's id, Go's (the one its event carries; asked of Go, which
            validates the IR first, when not given).
    """

    def __init__(self, ir: dict[str, Any], *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, blueprint_id: str | None = None) -> None:
        super().__init__()
        ident = blueprint_id if blueprint_id is not None else _go_id(ir)  # Go validates first
        order, output = _parse(ir)
        device = torch.device(device) if device is not None else None
        self.ir = copy.deepcopy(ir)
        self.blueprint_id = ident
        self._output = output
        self._nodes = tuple(order)
        steps = []
        for node in order:
            module = _build_module(node, device, dtype)
            if module is not None:
                if hasattr(self, node.id):
                    raise ValueError(f"op id {node.id!r} clashes with an attribute of SeedModule; rename the op")
                self.add_module(node.id, module)
            steps.append((node.id, _FUNCTIONS.get(node.op), node.inputs))
        # (op id, function or None for a child module, input names), in execution order.
        self._steps: tuple[tuple[str, Callable[..., Tensor] | None, tuple[str, ...]], ...] = tuple(steps)
        # The steps as one straight-line function (see _straight_line): what forward runs.
        self._run = _straight_line(self._steps, self._output)

    @property
    def param_count(self) -> int:
        """The number of parameters the seed holds."""
        return sum(p.numel() for p in self.parameters())

    @property
    def template(self) -> str:
        """The template the IR came from ("" for a hand-written IR)."""
        return str(self.ir.get("template", ""))

    def forward(self, x: Tensor) -> Tensor:
        return self._run(self._modules, x)

    def __getstate__(self) -> dict[str, Any]:
        # The straight-line forward is made again by __setstate__ (a function made by exec does not
        # pickle); everything else is nn.Module's state.
        state = self.__dict__.copy()
        state.pop("_run", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Made here and in __init__, never in forward: torch.compile cannot trace its making.
        self._run = _straight_line(self._steps, self._output)

    def to_graph_module(self) -> fx.GraphModule:
        """The same computation as a ``torch.fx.GraphModule`` made only of PyTorch classes.

        Used by :func:`esper.export.export` so that no Esper class remains in an exported model. The
        graph module shares this seed's parameters (export works on a deep copy).

        Returns:
            A GraphModule whose forward computes exactly what this seed's forward computes.
        """
        graph = fx.Graph()
        values = {"x": graph.placeholder("x")}
        for node in self._nodes:
            args = [values[name] for name in node.inputs]
            if node.op == "attention":
                values[node.id] = _emit_attention(graph, node, args[0])
            elif node.op == "kron_linear":
                values[node.id] = _emit_kronecker(graph, node, args[0])
            elif node.op == "avgpool_spatial":
                dims = graph.call_function(tuple, (graph.call_function(range, (2, graph.call_function(
                    getattr, (args[0], "ndim"))),),))
                values[node.id] = graph.call_method("mean", (args[0],), {"dim": dims, "keepdim": True})
            elif node.op in _FUNCTIONS:
                values[node.id] = graph.call_function(_FUNCTIONS[node.op], tuple(args))
            else:
                values[node.id] = graph.call_module(node.id, tuple(args))
        graph.output(values[self._output])
        return fx.GraphModule(self, graph, class_name="SeedBranch")

    def extra_repr(self) -> str:
        return f"template={self.template!r}, blueprint_id={self.blueprint_id[:12]!r}"


def _straight_line(steps: Sequence[tuple[str, Callable[..., Tensor] | None, tuple[str, ...]]],
                   output: str) -> Callable[[dict[str, nn.Module], Tensor], Tensor]:
    """A seed's steps as one straight-line Python function ``run(modules, x)``: a local variable per
    op instead of a dict of values and a loop (the interpreter's per-op lookups cost a fifth of a small
    seed's forward). The source names only generated identifiers (``v3``, ``k3``, ``f3``); op ids and
    functions reach it as values of its globals, never as text."""
    env: dict[str, Any] = {}
    names = {"x": "x"}
    lines = ["def run(m, x):"]
    for k, (op_id, fn, inputs) in enumerate(steps):
        args = ", ".join(names[name] for name in inputs)
        if fn is None:
            env[f"k{k}"] = op_id
            lines.append(f"    v{k} = m[k{k}]({args})")
        else:
            env[f"f{k}"] = fn
            lines.append(f"    v{k} = f{k}({args})")
        names[op_id] = f"v{k}"
    lines.append(f"    return {names[output]}")
    exec(compile("\n".join(lines), "<esper seed forward>", "exec"), env)
    return env["run"]


def _emit_attention(graph: fx.Graph, node: _Node, x: fx.Node) -> fx.Node:
    """Emits :class:`_SelfAttention`'s forward, op for op, into graph."""
    heads = node.attrs["heads"]
    qkv = graph.call_module(f"{node.id}.qkv", (x,))
    chunks = graph.call_method("chunk", (qkv, 3), {"dim": -1})
    parts = []
    for i in range(3):
        t = graph.call_function(operator.getitem, (chunks, i))
        t = graph.call_method("unflatten", (t, -1, (heads, -1)))
        parts.append(graph.call_method("transpose", (t, -3, -2)))
    y = graph.call_function(F.scaled_dot_product_attention, tuple(parts),
                            {"is_causal": bool(node.attrs.get("causal", False))})
    y = graph.call_method("flatten", (graph.call_method("transpose", (y, -3, -2)), -2))
    return graph.call_module(f"{node.id}.proj", (y,))


def _emit_kronecker(graph: fx.Graph, node: _Node, x: fx.Node) -> fx.Node:
    """Emits :class:`_Kronecker`'s forward, op for op, into graph (its factors as attributes)."""
    a, b = graph.get_attr(f"{node.id}.a"), graph.get_attr(f"{node.id}.b")
    t = graph.call_method("unflatten", (x, -1, (node.attrs["in_factor"], -1)))
    t = graph.call_function(operator.matmul, (t, graph.call_method("t", (b,))))
    return graph.call_method("flatten", (graph.call_function(operator.matmul, (a, t)), -2))


def build_seed(ir: dict[str, Any], *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               blueprint_id: str | None = None) -> SeedModule:
    """Builds a blueprint IR into a :class:`SeedModule` from the fixed table of trusted ops.

    Args:
        ir: the blueprint IR (docs/internals.md); ops may come in any order.
        device: where the parameters are created (the host weight's device).
        dtype: their dtype (the host weight's dtype).
        blueprint_id: Go's id of the IR (a GERMINATED event's "blueprint_id"); when None, Go
            validates the IR and gives its id (:func:`esper.karn.blueprint_id`).

    Returns:
        The seed, with ``init: "zero"`` ops zeroed (weight and bias).

    Raises:
        ValueError: Go refused the IR (``esper.InvalidArgumentError``, when no id was given: a
            malformed IR, widths that do not chain, an output not zero at init, a wrong count), or
            the builders cannot build it (an op outside the table, a missing attribute, an unknown
            input, a cycle, an op id that clashes with a module attribute). The message names the
            op. In training, such a seed is reported to Go, which removes it.
    """
    return SeedModule(ir, device=device, dtype=dtype, blueprint_id=blueprint_id)


def validate_seed(seed: SeedModule, host_example_input: Tensor, expected_out_shape: Sequence[int]) -> dict[str, Any]:
    """Runs a seed once forward and backward and checks what a germinating seed must satisfy.

    The checks: the forward runs; the output has the host's output shape; it is finite and exactly
    zero (so germination changes nothing); the backward of a fixed random cotangent gives finite
    gradients for every parameter and the input; the parameter count equals ``ir["param_count"]``
    when the IR has one. Nothing of the seed changes (gradients are returned, not accumulated).

    Args:
        seed: the built seed.
        host_example_input: an input of the host, on the seed's device and dtype.
        expected_out_shape: the host's output shape for that input.

    Returns:
        A JSON-serialisable report: blueprint_id, template, input_shape, output_shape, dtype,
        device, param_count, and the checks passed.

    Raises:
        SeedValidationError: the first failed check, with what it expected and what it got.
    """
    bid = seed.blueprint_id[:12]
    expected = list(expected_out_shape)
    x = host_example_input.detach().requires_grad_(host_example_input.is_floating_point())
    with torch.enable_grad():
        try:
            out = seed(x)
        except Exception as e:  # a seed may fail in any way; the report says how
            raise SeedValidationError("forward", f"seed {bid}: forward raised {type(e).__name__}: {e}") from e
        if not isinstance(out, Tensor):
            raise SeedValidationError("output_shape", f"seed {bid}: forward returned {type(out).__name__}, "
                                      "not a tensor", expected, type(out).__name__)
        if list(out.shape) != expected:
            raise SeedValidationError("output_shape", f"seed {bid}: output shape: expected {expected}, "
                                      f"got {list(out.shape)}", expected, list(out.shape))
        if not bool(torch.isfinite(out).all()):
            raise SeedValidationError("finite", f"seed {bid}: forward output is not finite", "finite", "non-finite")
        max_abs = float(out.detach().abs().max()) if out.numel() else 0.0
        if max_abs != 0.0:
            raise SeedValidationError("zero_init", f"seed {bid}: output at initialisation: expected exactly 0, "
                                      f"got max |y| = {max_abs:.3g}", 0.0, max_abs)
        params = [p for p in seed.parameters() if p.requires_grad]
        inputs = ([x] if x.requires_grad else []) + params
        generator = torch.Generator(device=out.device).manual_seed(0)
        cotangent = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True) if inputs and out.requires_grad else ()
    bad = [i for i, g in enumerate(grads) if g is not None and not bool(torch.isfinite(g).all())]
    if bad:
        names = ["input" if x.requires_grad and i == 0 else "parameter" for i in bad]
        raise SeedValidationError("backward", f"seed {bid}: non-finite gradient of {len(bad)} tensor(s) "
                                  f"({', '.join(sorted(set(names)))})", "finite", "non-finite")
    count = seed.param_count
    declared = seed.ir.get("param_count")
    if declared and declared != count:  # Karn writes 0 for "not computed"
        raise SeedValidationError("param_count", f"seed {bid}: parameter count: expected {declared} "
                                  f"(ir['param_count']), got {count}", declared, count)
    return {
        "blueprint_id": seed.blueprint_id,
        "template": seed.template,
        "input_shape": list(x.shape),
        "output_shape": list(out.shape),
        "dtype": str(out.dtype).replace("torch.", ""),
        "device": str(out.device),
        "param_count": count,
        "checks": ["forward", "output_shape", "finite", "zero_init", "backward", "param_count"],
        "ok": True,
    }


_MERGEABLE_OPS = ("linear", "kron_linear")


def is_mergeable(ir: dict[str, Any]) -> bool:
    """Whether a seed of this IR can merge into a linear host's weight: every op linear or kron_linear,
    in a chain.

    Args:
        ir: a blueprint IR (not validated here; build it first).

    Returns:
        True when the ops are all ``linear`` or ``kron_linear`` and form one chain from ``x`` to the output.
    """
    ops = ir.get("ops")
    if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) and o.get("op") in _MERGEABLE_OPS
                                                       for o in ops):
        return False
    by_input = {}
    for o in ops:
        inputs = o.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or inputs[0] in by_input:
            return False
        by_input[inputs[0]] = o.get("id")
    name, steps = "x", 0
    while name in by_input:
        name, steps = by_input[name], steps + 1
    return steps == len(ops) and name == ir.get("output")


def merged_delta(seed: SeedModule) -> tuple[Tensor, Tensor]:
    """The affine map of a mergeable seed, composed in float64: ``seed(x) == x @ dW.T + db``.

    Args:
        seed: a seed whose IR :func:`is_mergeable`.

    Returns:
        ``(dW, db)``: float64 tensors of shape (out, in) and (out,) on the seed's device.

    Raises:
        ValueError: the seed is not a chain of linear (or kron_linear) ops.
    """
    if not is_mergeable(seed.ir):
        raise ValueError(f"seed {seed.blueprint_id[:12]} ({seed.template or 'hand-written'}) is not a chain of "
                         "linear ops (linear, kron_linear) and cannot be merged")
    weight: Tensor | None = None
    bias: Tensor | None = None
    with torch.no_grad():
        for op_id, _, _ in seed._steps:
            layer = seed.get_submodule(op_id)
            if isinstance(layer, _Kronecker):
                w = torch.kron(layer.a.double(), layer.b.double())  # (out, in)
                b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
            else:
                w = layer.weight.double()  # (out, in)
                b = layer.bias.double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                                   device=w.device)
            weight = w if weight is None else w @ weight
            bias = b if bias is None else w @ bias + b
    assert weight is not None and bias is not None  # a mergeable IR has at least one op
    return weight, bias


def save_weights(module: nn.Module) -> bytes:
    """The module's state_dict as safetensors bytes (CPU, contiguous; equal weights give equal bytes).

    Args:
        module: a seed (its blueprint id goes into the safetensors metadata) or any module.

    Returns:
        The safetensors bytes.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    # One metadata key only: safetensors writes metadata in hash-map order, so two keys would make
    # the bytes (and the artifact's SHA-256) differ from one save to the next.
    metadata = {"blueprint_id": module.blueprint_id} if isinstance(module, SeedModule) else None
    return safetensors.torch.save(tensors, metadata=metadata)


def load_weights(module: nn.Module, data: bytes) -> None:
    """Copies weights saved by :func:`save_weights` into module, in place (parameter identities kept).

    Args:
        module: the module to fill; its state_dict keys, shapes and dtypes must match exactly.
        data: safetensors bytes.

    Raises:
        ValueError: the bytes are not safetensors, or a key, shape or dtype differs (nothing is
            written then).
    """
    try:
        tensors = safetensors.torch.load(bytes(data))
    except SafetensorError as e:
        raise ValueError(f"weights are not valid safetensors bytes: {e}") from e
    state = module.state_dict()
    missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise ValueError(f"weights do not match the module: missing {missing}, unexpected {unexpected}")
    for name, target in state.items():
        t = tensors[name]
        if t.shape != target.shape or t.dtype != target.dtype:
            raise ValueError(f"weight {name!r}: expected {tuple(target.shape)} {target.dtype}, "
                             f"got {tuple(t.shape)} {t.dtype}")
    with torch.no_grad():
        for name, target in state.items():
            target.copy_(tensors[name])
