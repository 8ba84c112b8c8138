"""Channel propagation over a captured graph: the engine behind :func:`slimtune.compressors.trace`.

Every channel that a layer produces becomes an *element* (an integer id). Each tensor of the graph
gets a value (see :mod:`slimtune.compressors._values`): a :class:`Chan` when it carries tracked
channels, ``None`` when it carries none. A conv output holds fresh elements, a ReLU or a batch
norm passes its input's elements through, a concatenation concatenates them, a flatten repeats
each of them over the spatial positions, a residual add *unites* the elements at equal positions
(they must be removed together), a reshape into heads unites each head's elements (a head is
removed whole). What cannot be followed (the model output, a reshape that mixes channels, an op
without a rule) *pins* the elements it touches: the groups holding them are not prunable, and the
reason names the op, the node and, where known, the module.

The graph is the one a frontend captured (see ``frontends.py``): ``torch.fx`` graphs (torch
functions, tensor methods, ``call_module`` nodes) or ``torch.export`` graphs (ATen ops, with every
layer that has a handler collapsed into one ``call_module`` node). Layers are handed to their
handler (``handlers/``); every other op is looked up in the rule tables at the end of this module,
by torch function, tensor method or ATen op. An ATen op without a rule that is tagged
*pointwise* broadcasts like an addition; any other op without a rule is tried as a channel-wise op
(its output permutes with its input's channels) and pins what it touches otherwise, so an unknown op
can make pruning more conservative but never wrong.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimtune.compressors._values import Chan, LayerCall, ParamRef
from slimtune.compressors.handlers import handler_for

if TYPE_CHECKING:
    from slimtune.compressors.frontends import Capture

aten = torch.ops.aten
_BIG = 2**62  # ATen encodes an open slice end as sys.maxsize


@dataclass
class Source:
    """Where elements come from: a producing layer, or something that pins them."""

    layer: str | None
    order: int
    first: int  # first element id
    size: int
    reason: str | None = None  # set when the source's elements are pinned from birth


@dataclass
class MemberRecord:
    layer: str
    role: str
    labels: np.ndarray


@dataclass
class TapRecord:
    node: str
    cdim: int
    labels: np.ndarray
    activation: bool


@dataclass
class BlockRecord:
    layer: str
    labels: np.ndarray
    blocks: int


@dataclass
class BindingRecord:
    """An attribute of a module that the forward reads as a channel count.

    After pruning it is set to ``(kept positions among labels) // unit``; ``index`` selects an
    entry of a list/tuple attribute (split sizes); ``offset`` is added (slice bounds).
    """

    layer: str
    attr: str
    labels: np.ndarray
    unit: int = 1
    index: int | None = None


@dataclass
class ComputeRecord:
    """MACs done by an op outside any handled layer (attention matmuls) that scale with channels."""

    layer: str  # the module running the op
    node: str
    macs: float  # per forward pass (whole batch)
    labels: np.ndarray  # the elements whose count the MACs are proportional to
    kind: str = "matmul"  # "matmul" | "sdpa"
    operands: list[tuple[tuple[int, ...], int | None]] = field(default_factory=list)  # (shape, heads dim)


@dataclass
class Propagation:
    """State of one propagation pass: elements, unions, pins, members, taps, bindings."""

    capture: Capture
    parent: list[int] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)
    members: list[MemberRecord] = field(default_factory=list)
    taps: list[TapRecord] = field(default_factory=list)
    blocks: list[BlockRecord] = field(default_factory=list)
    bindings: list[BindingRecord] = field(default_factory=list)
    computes: list[ComputeRecord] = field(default_factory=list)
    out_labels: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> its produced elements
    env: dict[fx.Node, Any] = field(default_factory=dict)
    call_counts: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, fx.Node]] = field(default_factory=list)  # every handled layer call

    @property
    def gm(self) -> fx.Graph:
        return self.capture.graph

    # ------------------------------------------------------------------ elements
    def new_source(self, layer: str | None, size: int, reason: str | None = None) -> np.ndarray:
        first = len(self.parent)
        self.sources.append(Source(layer, len(self.sources), first, size, reason))
        self.parent.extend(range(first, first + size))
        labels = np.arange(first, first + size, dtype=np.int64)
        if reason is not None:
            self.pin(labels, reason)
        return labels

    def layer_source(self, layer: str, size: int) -> np.ndarray:
        """The elements produced by ``layer`` (the same ones at every call: shared weights)."""
        out = self.out_labels.get(layer)
        if out is None or len(out) != size:
            out = self.out_labels[layer] = self.new_source(layer, size)
        return out

    def find(self, e: int) -> int:
        parent = self.parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                # keep the older element as root so classes are keyed by their first producer
                if rx < ry:
                    self.parent[ry] = rx
                else:
                    self.parent[rx] = ry

    def union_all(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) > 1:
            self.union(np.repeat(labels[:1], len(labels) - 1), labels[1:])

    def pin(self, labels: np.ndarray, reason: str) -> None:
        for e in np.unique(labels).tolist():
            self.pinned.setdefault(e, reason)

    def pin_value(self, value: Any, reason: str) -> None:
        for c in chans(value):
            self.pin(c.labels, reason)

    # ------------------------------------------------------------------ records for handlers
    def member(self, layer: str, role: str, labels: np.ndarray) -> None:
        self.members.append(MemberRecord(layer, role, np.asarray(labels, dtype=np.int64)))

    def tap(self, node: fx.Node, chan: Chan | None, activation: bool) -> None:
        if isinstance(chan, Chan):
            self.taps.append(TapRecord(node.name, chan.cdim, chan.labels, activation))

    def block(self, layer: str, labels: np.ndarray, blocks: int) -> None:
        self.blocks.append(BlockRecord(layer, np.asarray(labels, dtype=np.int64), blocks))

    def bind(self, layer: str, attr: str, labels: np.ndarray, unit: int = 1, index: int | None = None) -> None:
        self.bindings.append(BindingRecord(layer, attr, np.asarray(labels, dtype=np.int64), unit, index))

    def where(self, node: fx.Node) -> str:
        """``node 'x'`` plus the module running it, for messages."""
        mod = module_of(node)
        return f"node {node.name!r}" + (f" in module {mod!r}" if mod else "")

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        live = _live_nodes(self.gm)
        for node in self.gm.nodes:
            if node not in live:
                continue  # computed but never used (e.g. read for its shape only): constrains nothing
            try:
                self.env[node] = self.visit(node)
            except _Pinned as e:  # a rule gave up: pin what goes in, nothing tracked comes out
                self.pin_value(self.arg_values((node.args, node.kwargs)), f"{e} at {self.where(node)}")
                self.env[node] = None

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return None  # model inputs: fixed, untracked
        if node.op == "get_attr":
            return self.get_attr(node)
        if node.op == "output":
            self.pin_value(self.arg_values(node.args), "reaches the model output")
            return None
        if node.op == "call_module":
            return self.call_module(node)
        if node.op == "call_method":
            rule = _METHOD_RULES.get(str(node.target))
            if rule is not None:
                return rule(self, node)
            return _fallback(self, node, f"method {node.target!r}")
        target = node.target
        rule = _FUNCTION_RULES.get(target)
        if rule is None and isinstance(target, torch._ops.OpOverload):
            rule = _ATEN_OVERLOAD_RULES.get(target) or _ATEN_RULES.get(target.overloadpacket)
            if rule is None and torch.Tag.pointwise in target.tags:
                rule = _pointwise
        if rule is None and isinstance(target, torch._ops.OpOverloadPacket):
            rule = _ATEN_RULES.get(target)
        if rule is not None:
            return rule(self, node)
        what = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
        return _fallback(self, node, f"function {what!r}")

    def get_attr(self, node: fx.Node) -> Any:
        shape = shape_of(node)
        if shape is None:
            return None
        owner, _, attr = str(node.target).rpartition(".")
        return ParamRef(self.capture.canonical(owner), attr, shape, tuple(range(len(shape))))

    def call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        module = self.capture.model.get_submodule(name)
        name = self.capture.canonical(name)
        handler = handler_for(module)
        if handler is not None:
            self.call_counts[name] = self.call_counts.get(name, 0) + 1
            self.calls.append((name, node))
            tensors = [a for a in flat_args((node.args, node.kwargs)) if isinstance(a, fx.Node)]
            out_shapes = shapes_of(node)
            tm = node.meta.get("tensor_meta")
            tm_multi = tm is not None and not hasattr(tm, "shape") and isinstance(tm, (list, tuple))
            multi = isinstance(node.meta.get("val"), (list, tuple)) or tm_multi
            n_out = max(len(out_shapes), 1) if multi else 1
            if tm_multi:
                n_out = len(tm)
            call = LayerCall(
                name,
                module,
                node,
                [self.value(a) for a in tensors],
                [shape_of(a) for a in tensors],
                out_shapes[0] if out_shapes else None,
                n_out,
            )
            value = handler.propagate(self, call)
            if multi and not isinstance(value, list):
                value = [value] + [None] * (n_out - 1)
            elif not multi and isinstance(value, list):
                value = value[0] if value else None
            return value
        for types, rule in MODULE_RULES:
            if isinstance(module, types):
                return rule(self, node, module)
        return _fallback(self, node, f"module {name!r} ({type(module).__name__})", module=module)

    # ------------------------------------------------------------------ helpers for rules
    def value(self, arg: Any) -> Any:
        return self.env.get(arg) if isinstance(arg, fx.Node) else None

    def arg_values(self, args: Any) -> list[Any]:
        return [self.env.get(a) for a in flat_args(args) if isinstance(a, fx.Node)]


def _live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that the outputs depend on, or that mutate in place (and what those depend on)."""
    roots = [
        n
        for n in graph.nodes
        if n.op == "output"
        or (n.op in ("call_function", "call_method") and _op_name(n).endswith("_") and not _op_name(n).startswith("_"))
    ]
    live: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(n.all_input_nodes)
    return live


class _Pinned(Exception):
    """Raised by a rule that cannot follow its node; the message is the reason."""


# ---------------------------------------------------------------------- shapes and args
def _int(s: Any) -> int:
    try:
        return int(s)
    except Exception:  # noqa: BLE001 - unbacked symbolic size: unknown
        return -1


def shapes_of(node: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors a node produces (one for a tensor, several for a tuple)."""
    if not isinstance(node, fx.Node):
        return []
    meta = node.meta.get("tensor_meta")
    if meta is not None:
        if hasattr(meta, "shape"):
            return [tuple(_int(s) for s in meta.shape)]
        if isinstance(meta, (list, tuple)):
            return [tuple(_int(s) for s in m.shape) for m in meta if hasattr(m, "shape")]
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return [tuple(_int(s) for s in val.shape)]
    if isinstance(val, (list, tuple)):
        return [tuple(_int(s) for s in v.shape) for v in val if isinstance(v, torch.Tensor)]
    return []


def shape_of(node: Any) -> tuple[int, ...] | None:
    """Shape of the tensor a node produces, None when it is not a single tensor."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(_int(s) for s in meta.shape)
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(_int(s) for s in val.shape)
    return None


def flat_args(args: Any) -> list[Any]:
    out: list[Any] = []

    def visit(a: Any) -> None:
        if isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)
        else:
            out.append(a)

    visit(args)
    return out


def module_of(node: fx.Node) -> str | None:
    """The innermost module running ``node`` (from ``nn_module_stack``), or None at the root."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


def chans(value: Any) -> list[Chan]:
    if isinstance(value, Chan):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in chans(v)]
    return []


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _input(node: fx.Node) -> Any:
    return node.args[0] if node.args else next(iter(node.kwargs.values()), None)


def _first_chan(p: Propagation, node: fx.Node) -> Chan | None:
    v = p.value(_input(node))
    return v if isinstance(v, Chan) else None


def _out_ndim(node: fx.Node, default: int) -> int:
    shape = shape_of(node)
    return len(shape) if shape is not None else default


# ---------------------------------------------------------------------- fallbacks
def _fallback(p: Propagation, node: fx.Node, what: str, module: nn.Module | None = None) -> Any:
    """No rule: a channel-wise op passes its input's channels through; anything else pins them."""
    values = p.arg_values((node.args, node.kwargs))
    tracked = [v for v in values if isinstance(v, (Chan, ParamRef))]
    if not tracked:
        return None  # works on untracked tensors only: its output is untracked too
    x = p.value(_input(node))
    if isinstance(x, Chan) and len(tracked) == 1 and shape_of(node) == shape_of(_input(node)):
        if _channelwise(node, x.cdim, module):
            return Chan(x.labels, x.cdim, x.ndim)
    p.pin_value(values, f"used by {what} at {p.where(node)} (no rule to follow channels through it)")
    return None


def _channelwise(node: fx.Node, cdim: int, module: nn.Module | None) -> bool:
    """Whether the op commutes with permuting its input's channels (tried on random inputs)."""
    shape = shape_of(_input(node))
    if shape is None or any(s <= 0 for s in shape) or shape[cdim] < 2:
        return False
    rest = [a for a in flat_args((node.args[1:], node.kwargs)) if isinstance(a, fx.Node)]
    if rest:
        return False
    if node.op == "call_module" and module is not None:
        fn: Callable[[torch.Tensor], Any] = module
    elif node.op == "call_method":
        fn = lambda t: getattr(t, str(node.target))(*node.args[1:], **node.kwargs)  # noqa: E731
    elif callable(node.target):
        fn = lambda t: node.target(t, *node.args[1:], **node.kwargs)  # noqa: E731
    else:
        return False
    device, dtype = _probe_device(node, module)
    gen = torch.Generator().manual_seed(0)  # a CPU generator: the same values on every device
    x = torch.randn(shape, generator=gen, device="cpu").to(device, dtype)
    perm = torch.randperm(shape[cdim], generator=gen, device="cpu").to(device)
    try:
        was = getattr(fn, "training", None)
        if isinstance(fn, nn.Module):
            fn.eval()
        with torch.no_grad():
            y = fn(x)
            y_perm = fn(x.index_select(cdim, perm))
        if isinstance(fn, nn.Module) and was is not None:
            fn.train(was)
        if not isinstance(y, torch.Tensor) or not isinstance(y_perm, torch.Tensor) or y.shape != x.shape:
            return False
        y, y_perm = y.index_select(cdim, perm.to(y.device)).cpu(), y_perm.cpu()
    except Exception:  # noqa: BLE001 - the op cannot run standalone: not known channel-wise
        return False
    return bool(torch.allclose(y.float(), y_perm.float(), atol=1e-5, rtol=1e-4))


def _probe_device(node: fx.Node, module: nn.Module | None) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype :func:`_channelwise` runs an op: a module's own device and floating
    dtype; for a function, float32 on the device the traced input was on (``torch.export`` records
    it), else on the CPU."""
    if module is not None:
        ref = next(iter(module.parameters()), None)
        ref = ref if ref is not None else next(iter(module.buffers()), None)
        if ref is not None:
            return ref.device, ref.dtype if ref.is_floating_point() else torch.float32
    x = _input(node)
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    return (val.device if isinstance(val, torch.Tensor) else torch.device("cpu")), torch.float32


# ---------------------------------------------------------------------- module rules (fx leaves)
def _passthrough(p: Propagation, node: fx.Node, activation: bool = False) -> Any:
    x = p.value(_input(node))
    if isinstance(x, ParamRef):
        return x if shape_of(node) == x.shape else None
    if not isinstance(x, Chan):
        return None
    chan = Chan(x.labels, x.cdim, _out_ndim(node, x.ndim))
    if activation:
        p.tap(node, chan, activation=True)
    return chan


def _passthrough_module(activation: bool) -> Callable[[Propagation, fx.Node, nn.Module], Any]:
    def rule(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
        return _passthrough(p, node, activation)

    return rule


def _pool_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _pool(p, node, m)


def _softmax_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _along_dim(p, node, m.dim)


def _flatten_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _reshape(p, node)


def _prelu_module(p: Propagation, node: fx.Node, m: nn.PReLU) -> Any:
    """PReLU: one slope, or one per channel (dim 1), sliced with them."""
    x = _first_chan(p, node)
    if m.num_parameters > 1 and x is not None:
        if x.cdim != min(1, x.ndim - 1) or len(x.labels) != m.num_parameters:
            p.pin(x.labels, f"PReLU {str(node.target)!r} has one slope per entry of a dim that is not the channels")
            return None
        p.member(p.capture.canonical(str(node.target)), "param:weight:0", x.labels)
    return _passthrough(p, node, True)


# ---------------------------------------------------------------------- element-wise
def _activation(p: Propagation, node: fx.Node) -> Any:
    return _passthrough(p, node, activation=True)


def _elementwise(p: Propagation, node: fx.Node) -> Any:
    return _passthrough(p, node, activation=False)


def _broadcast(p: Propagation, node: fx.Node, operands: Sequence[Any], activation: bool = False) -> Any:
    """An op broadcasting its tensor operands: channels at equal positions are united.

    Operands are graph nodes (their values) or constants. A parameter operand whose dimension
    lines up with the channels becomes a member of their group; an untracked operand that varies
    along the channel dimension pins the channels.
    """
    out_shape = shape_of(node)
    vals = [(a, p.value(a), shape_of(a)) for a in operands if isinstance(a, fx.Node)]
    tracked = [v for _, v, _ in vals if isinstance(v, Chan)]
    params = [(v, s) for _, v, s in vals if isinstance(v, ParamRef)]
    if out_shape is None:
        p.pin_value(tracked, f"op with an unknown output shape at {p.where(node)}")
        return None
    nd = len(out_shape)
    if not tracked:
        if len(params) == 1 and all(s is None or s == params[0][0].shape or math.prod(s) == 1 for _, _, s in vals):
            ref = params[0][0]
            if len(ref.shape) == nd:
                return ParamRef(ref.layer, ref.attr, out_shape, ref.dims)
        return None
    out_cdims = {nd - (c.ndim - c.cdim) for c in tracked}
    if len(out_cdims) != 1:
        p.pin_value(tracked, f"op combines tensors with channels on different dims at {p.where(node)}")
        return None
    cdim = out_cdims.pop()
    size = out_shape[cdim]
    full = [c for c in tracked if len(c.labels) == size and size > 1]
    base = full[0] if full else tracked[0]
    for other in full[1:]:
        p.union(base.labels, other.labels)
    for a, v, shape in vals:
        if isinstance(v, Chan) or shape is None:
            continue
        d = cdim - (nd - len(shape))
        if not (0 <= d < len(shape)) or shape[d] <= 1:
            continue
        if isinstance(v, ParamRef) and v.dims[d] is not None and v.shape[d] == len(base.labels):
            p.member(v.layer, f"param:{v.attr}:{v.dims[d]}", base.labels)
            continue
        p.pin(base.labels, f"combined with a fixed per-channel tensor ({a.name!r}) at {p.where(node)}")
    chan = Chan(base.labels, cdim, nd)
    if activation:
        p.tap(node, chan, activation=True)
    return chan


def _binary(p: Propagation, node: fx.Node) -> Any:
    operands = list(node.args[:2]) + [node.kwargs.get("other")]
    return _broadcast(p, node, [a for a in operands if a is not None])


_ACTIVATION_NAMES = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "selu",
    "celu",
    "gelu",
    "silu",
    "silu_",
    "mish",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardtanh",
    "hardtanh_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "softplus",
    "prelu",
}


def _pointwise(p: Propagation, node: fx.Node) -> Any:
    """ATen op tagged pointwise: broadcasts its tensor arguments."""
    name = node.target.overloadpacket.__name__ if hasattr(node.target, "overloadpacket") else ""
    return _broadcast(p, node, flat_args((node.args, node.kwargs)), activation=name in _ACTIVATION_NAMES)


def _where(p: Propagation, node: fx.Node) -> Any:
    return _broadcast(p, node, flat_args((node.args, node.kwargs)))


# ---------------------------------------------------------------------- reductions, softmax, pooling
def _pool(p: Propagation, node: fx.Node, module: nn.Module | None = None) -> Any:
    """Pooling / resampling over the last 1, 2 or 3 dims: the channel dim must be before them."""
    x = _first_chan(p, node)
    if x is None:
        return None
    name = type(module).__name__ if module is not None else _op_name(node)
    k = int(m.group(1)) if (m := re.search(r"(\d)d", name)) else 2
    if x.cdim >= x.ndim - k:
        p.pin(x.labels, f"pooling over the channel dim at {p.where(node)}")
        return None
    shapes = shapes_of(node)
    if not shapes:
        p.pin(x.labels, f"pooling with an unexpected output at {p.where(node)}")
        return None
    if shape_of(node) is None:  # return_indices=True gives a tuple: both hold the channels
        return [Chan(x.labels, x.cdim, len(s)) for s in shapes]
    return Chan(x.labels, x.cdim, len(shapes[0]))


def _along_dim(p: Propagation, node: fx.Node, dim: Any) -> Any:
    """Softmax-like op along ``dim``: mixes channels when ``dim`` is the channel dim."""
    x = _first_chan(p, node)
    if x is None:
        return None
    if dim is None or norm_dim(int(dim), x.ndim) == x.cdim:
        p.pin(x.labels, f"softmax-like op normalises across the channels at {p.where(node)}")
        return None
    return Chan(x.labels, x.cdim, x.ndim)


def _softmax(p: Propagation, node: fx.Node) -> Any:
    return _along_dim(p, node, _arg(node, 1, "dim"))


def _reduce(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return None
    dim = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        p.pin(x.labels, f"full reduction at {p.where(node)}")
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    dims = [norm_dim(int(d), x.ndim) for d in dims]
    if x.cdim in dims:
        p.pin(x.labels, f"reduction over the channel dim at {p.where(node)}")
        return None
    cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
    ndim = x.ndim - (0 if keepdim else len(dims))
    if shape_of(node) is None and (len(shapes_of(node)) >= 2 or _op_name(node) in ("max", "min")):
        return [Chan(x.labels, cdim, ndim), Chan(x.labels, cdim, ndim)]  # max / min with a dim: (values, indices)
    return Chan(x.labels, cdim, _out_ndim(node, ndim))


# ---------------------------------------------------------------------- cat, stack, split, indexing
def _cat(p: Propagation, node: fx.Node) -> Any:
    tensors = list(_arg(node, 0, "tensors"))
    dim = _arg(node, 1, "dim", 0)
    out_shape = shape_of(node)
    if out_shape is None:
        p.pin_value([p.value(t) for t in tensors], f"concatenation with unknown shape at {p.where(node)}")
        return None
    nd = len(out_shape)
    dim = norm_dim(int(dim), nd)
    values = [p.value(t) for t in tensors]
    tracked = [v for v in values if isinstance(v, Chan)]
    if not tracked:
        return None
    cdims = {c.cdim for c in tracked}
    if len(cdims) != 1:
        p.pin_value(tracked, f"concatenation of tensors with channels on different dims at {p.where(node)}")
        return None
    cdim = cdims.pop()
    if dim == cdim:
        parts = []
        for t, v in zip(tensors, values):
            if isinstance(v, Chan):
                parts.append(v.labels)
                continue
            shape = shape_of(t)
            size = shape[dim] if shape is not None else 0
            if isinstance(v, ParamRef) and v.dims[dim] is not None:
                labels = p.new_source(None, size, f"parameter {v.layer}.{v.attr} concatenated at {p.where(node)}")
            else:
                labels = p.new_source(
                    None, size, f"fixed tensor {getattr(t, 'name', t)!r} concatenated at {p.where(node)}"
                )
            parts.append(labels)
        return Chan(np.concatenate(parts), cdim, nd)
    # along another dim: every operand holds the same channels
    base = tracked[0]
    for c in tracked[1:]:
        if len(c.labels) == len(base.labels):
            p.union(base.labels, c.labels)
    for t, v in zip(tensors, values):
        if isinstance(v, ParamRef):
            d = v.dims[cdim] if cdim < len(v.dims) else None
            if d is not None and v.shape[cdim] == len(base.labels):
                p.member(v.layer, f"param:{v.attr}:{d}", base.labels)
            else:
                p.pin(base.labels, f"parameter {v.layer}.{v.attr} concatenated with the channels at {p.where(node)}")
        elif v is None:
            shape = shape_of(t)
            d = cdim - (nd - len(shape)) if shape is not None else -1
            if shape is not None and 0 <= d < len(shape) and shape[d] > 1:
                p.pin(
                    base.labels,
                    f"fixed tensor {getattr(t, 'name', t)!r} concatenated with the channels at {p.where(node)}",
                )
    return Chan(base.labels, cdim, nd)


def _stack(p: Propagation, node: fx.Node) -> Any:
    tensors = list(_arg(node, 0, "tensors"))
    dim = _arg(node, 1, "dim", 0)
    out_shape = shape_of(node)
    values = [p.value(t) for t in tensors]
    tracked = [v for v in values if isinstance(v, Chan)]
    if not tracked or out_shape is None:
        return None
    if len({c.cdim for c in tracked}) != 1 or len(tracked) != len(values):
        p.pin_value(values, f"stack of tensors that do not all carry the same channels at {p.where(node)}")
        return None
    base = tracked[0]
    for c in tracked[1:]:
        p.union(base.labels, c.labels)
    dim = norm_dim(int(dim), len(out_shape))
    cdim = base.cdim + (1 if dim <= base.cdim else 0)
    return Chan(base.labels, cdim, len(out_shape))


def _pieces(p: Propagation, node: fx.Node, x: Chan, dim: int, sizes: list[int], what: str, literal: Any) -> Any:
    """Pieces of ``x`` along ``dim``; along the channel dim each piece keeps its own channels.

    ``chunk(n)`` recomputes equal pieces from the pruned count, so the pieces must stay equal:
    channel ``j`` of every piece is removed together. ``split(size)`` likewise, and ``size`` must
    follow: it is bound to the module attribute that holds it. ``split([s0, s1, ...])`` keeps each
    piece's channels apart and binds the list attribute, entry by entry. Sizes that follow no
    attribute are fixed in an fx graph (the pieces are pinned); in an export graph they are taken as
    computed from the shapes, which the frontend checks on the rebuilt model.
    """
    shapes = shapes_of(node)
    if dim != x.cdim:
        return [Chan(x.labels, x.cdim, len(s)) for s in shapes]
    bounds = np.cumsum([0] + list(sizes))
    parts = [x.labels[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
    equal = len(set(sizes)) == 1
    if what == "chunk" or not isinstance(literal, (list, tuple)):
        if not equal:
            p.pin(x.labels, f"{what} into unequal pieces {list(sizes)} along the channel dim at {p.where(node)}")
            return [None for _ in parts]
        for other in parts[1:]:
            p.union(parts[0], other)
        if what != "chunk" and not _bind_or_trust(p, node, literal, parts[0], None):
            p.pin(x.labels, f"split along the channel dim uses a fixed size {literal} at {p.where(node)}")
            return [None for _ in parts]
        return [Chan(parts[0], x.cdim, x.ndim) for _ in parts]
    found = _find_binding(p, node, list(literal))
    if found is None and p.capture.frontend == "fx":
        p.pin(x.labels, f"split along the channel dim uses fixed sizes {list(sizes)} at {p.where(node)}")
        return [None for _ in parts]
    if found is not None:
        for i, part in enumerate(parts):
            p.bind(found[0], found[1], part, 1, index=i)
    return [Chan(part, x.cdim, x.ndim) for part in parts]


def _bind_or_trust(p: Propagation, node: fx.Node, value: Any, labels: np.ndarray, index: int | None) -> bool:
    """Bind ``value`` to the attribute holding it; without one, trust an export graph (see ``_pieces``)."""
    found = _find_binding(p, node, value)
    if found is not None:
        p.bind(found[0], found[1], labels, 1, index=index)
        return True
    return p.capture.frontend == "export"


def _split(p: Propagation, node: fx.Node) -> Any:
    """torch.split / torch.chunk / tensor.split / aten split, split_with_sizes, chunk, unbind."""
    x = _first_chan(p, node)
    shapes = shapes_of(node)
    if x is None:
        return [None for _ in shapes] if shapes else None
    name = _op_name(node)
    if name == "unbind":
        dim = norm_dim(int(_arg(node, 1, "dim", 0)), x.ndim)
        if dim == x.cdim:
            p.pin(x.labels, f"unbind along the channel dim at {p.where(node)}")
            return [None for _ in shapes]
        return [Chan(x.labels, x.cdim - (1 if dim < x.cdim else 0), x.ndim - 1) for _ in shapes]
    dim = norm_dim(int(_arg(node, 2, "dim", 0)), x.ndim)
    if not shapes:
        p.pin(x.labels, f"split with unknown pieces at {p.where(node)}")
        return None
    literal = (
        node.args[1]
        if len(node.args) > 1
        else next(
            (
                node.kwargs[k]
                for k in ("split_size_or_sections", "split_size", "split_sizes", "chunks", "sections")
                if k in node.kwargs
            ),
            None,
        )
    )
    if isinstance(literal, fx.Node) or (
        isinstance(literal, (list, tuple)) and any(isinstance(s, fx.Node) for s in literal)
    ):
        if dim == x.cdim:
            p.pin(x.labels, f"split with sizes computed in the forward at {p.where(node)}")
            return [None for _ in shapes]
    sizes = [s[dim] for s in shapes]
    kind = "chunk" if name == "chunk" else "split"
    return _pieces(p, node, x, dim, sizes, kind, literal)


def _op_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def _getitem(p: Propagation, node: fx.Node) -> Any:
    container, index = node.args[0], node.args[1]
    v = p.value(container)
    if isinstance(v, list):
        return v[index] if isinstance(index, int) and -len(v) <= index < len(v) else None
    if isinstance(v, ParamRef):
        return _index_param(v, node, index)
    if not isinstance(v, Chan):
        return None
    # tensor indexing: basic indexing with ints, slices, None and Ellipsis
    idx = index if isinstance(index, tuple) else (index,)
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) for i in idx):
        # advanced indexing: fine when the indices avoid the channel dim
        tensor_dims = [k for k, i in enumerate(idx) if isinstance(i, (fx.Node, list, torch.Tensor))]
        if tensor_dims and v.cdim not in tensor_dims and all(k < v.cdim for k in tensor_dims):
            shape = shape_of(node)
            if shape is not None:
                cdim = len(shape) - (v.ndim - v.cdim)
                if 0 <= cdim < len(shape) and shape[cdim] == len(v.labels):
                    return Chan(v.labels, cdim, len(shape))
        p.pin(v.labels, f"advanced indexing at {p.where(node)}")
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (v.ndim - n_real))
        else:
            expanded.append(i)
    in_dim, out_dim = 0, 0
    cdim = None
    for i in expanded:
        if i is None:
            out_dim += 1
            continue
        if in_dim == v.cdim:
            if isinstance(i, int):
                p.pin(v.labels, f"indexing selects one channel by position at {p.where(node)}")
                return None
            if i != slice(None):
                return _channel_slice(p, node, v, i.start, i.stop, i.step, out_dim)
            cdim = out_dim
        if not isinstance(i, int):
            out_dim += 1
        in_dim += 1
    if cdim is None:  # channel dim not indexed explicitly: it keeps its place after the indexed dims
        cdim = out_dim + (v.cdim - in_dim)
    return Chan(v.labels, cdim, _out_ndim(node, v.ndim))


def _index_param(v: ParamRef, node: fx.Node, index: Any) -> Any:
    shape = shape_of(node)
    if shape is None:
        return None
    idx = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or isinstance(i, (fx.Node, list)) for i in idx):
        return None
    dims: list[int | None] = []
    k = 0
    for i in idx:
        if i is None:
            dims.append(None)
        elif isinstance(i, int):
            k += 1
        else:  # a slice: the dim is kept only when it is whole
            full = i == slice(None) or (
                i.start in (None, 0) and (i.stop is None or (isinstance(i.stop, int) and i.stop >= v.shape[k]))
            )
            dims.append(v.dims[k] if full else None)
            k += 1
    dims.extend(v.dims[k:])
    return ParamRef(v.layer, v.attr, shape, tuple(dims)) if len(dims) == len(shape) else None


def _channel_slice(p: Propagation, node: fx.Node, v: Chan, start: Any, stop: Any, step: Any, out_dim: int) -> Any:
    """A range of channels: its bounds must follow the pruning (bound to module attributes)."""
    n = len(v.labels)
    if step not in (None, 1) or isinstance(start, fx.Node) or isinstance(stop, fx.Node):
        p.pin(v.labels, f"indexing selects channels by a computed or strided range at {p.where(node)}")
        return None
    lo = 0 if start is None else norm_dim(int(start), n)
    hi = n if stop is None or int(stop) >= n else norm_dim(int(stop), n)
    if lo == 0 and hi == n:
        if stop is not None and int(stop) == n:  # a written bound equal to the size: keep it in step
            found = _find_binding(p, node, n)
            if found is not None:
                p.bind(found[0], found[1], v.labels)
        return Chan(v.labels, out_dim, _out_ndim(node, v.ndim))
    ok = True
    for bound, value in (("start", lo), ("stop", hi)):
        if (bound == "start" and value == 0) or (bound == "stop" and value == n):
            continue
        found = _find_binding(p, node, value)
        if found is None:
            ok = False
            break
        p.bind(found[0], found[1], v.labels[:value])
    if not ok:
        p.pin(v.labels, f"indexing selects channels by position ({lo}:{hi} of {n}) at {p.where(node)}")
        return None
    return Chan(v.labels[lo:hi], out_dim, _out_ndim(node, v.ndim))


def _select(p: Propagation, node: fx.Node) -> Any:
    """aten.select(x, dim, index)."""
    v = p.value(_input(node))
    dim, index = int(_arg(node, 1, "dim")), _arg(node, 2, "index")
    if isinstance(v, ParamRef):
        d = norm_dim(dim, len(v.shape))
        return _index_param(v, node, tuple([slice(None)] * d + [index]))
    if not isinstance(v, Chan):
        return None
    d = norm_dim(dim, v.ndim)
    if d == v.cdim:
        p.pin(v.labels, f"indexing selects one channel by position at {p.where(node)}")
        return None
    return Chan(v.labels, v.cdim - (1 if d < v.cdim else 0), v.ndim - 1)


def _slice(p: Propagation, node: fx.Node) -> Any:
    """aten.slice(x, dim, start, end, step)."""
    v = p.value(_input(node))
    dim = int(_arg(node, 1, "dim", 0))
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
    if isinstance(v, ParamRef):
        d = norm_dim(dim, len(v.shape))
        return _index_param(v, node, tuple([slice(None)] * d + [slice(start, end, step)]))
    if not isinstance(v, Chan):
        return None
    d = norm_dim(dim, v.ndim)
    if d != v.cdim:
        return Chan(v.labels, v.cdim, v.ndim)
    if isinstance(end, int) and end >= _BIG:
        end = None
    return _channel_slice(p, node, v, start, end, step, v.cdim)


def _index(p: Propagation, node: fx.Node) -> Any:
    """aten.index(x, [idx or None per dim]): advanced indexing."""
    v = p.value(_input(node))
    indices = list(_arg(node, 1, "indices"))
    if not isinstance(v, Chan):
        return None
    used = [k for k, i in enumerate(indices) if i is not None]
    shape = shape_of(node)
    if used and v.cdim not in used and all(k < v.cdim for k in used) and shape is not None:
        cdim = len(shape) - (v.ndim - v.cdim)
        if 0 <= cdim < len(shape) and shape[cdim] == len(v.labels):
            return Chan(v.labels, cdim, len(shape))
    if used and v.cdim not in used and all(k > v.cdim for k in used) and shape is not None:
        if v.cdim < len(shape) and shape[v.cdim] == len(v.labels):
            return Chan(v.labels, v.cdim, len(shape))
    p.pin(v.labels, f"advanced indexing at {p.where(node)}")
    return None


# ---------------------------------------------------------------------- reshapes
def _view_sizes(node: fx.Node) -> list[Any] | None:
    """The size arguments of a view/reshape call as written (ints, -1 or graph nodes)."""
    name = _op_name(node)
    if name not in ("view", "reshape", "_unsafe_view", "expand"):
        return None
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple, torch.Size)):
        sizes = list(sizes[0])
    if not sizes:
        sizes = list(node.kwargs.get("shape") or node.kwargs.get("size") or ())
    return sizes


def _reshape(p: Propagation, node: fx.Node) -> Any:
    """view / reshape / flatten / unflatten / squeeze / unsqueeze / expand, followed through the shapes.

    The channel dim may stay whole (its size unchanged), be merged with neighbouring dims (each
    channel then covers a block or a stride of the merged dim), or be split into factors. A split
    needs one factor that follows the pruning (written ``-1`` or computed from a shape, or bound to
    a module attribute such as ``num_heads``): that factor holds the channels (heads), the factors
    after it stay whole inside each (the head dim) and those before it are blocks from which the
    same channels are removed (channel shuffle groups).
    """
    src = _input(node)
    v = p.value(src)
    in_shape, out_shape = shape_of(src), shape_of(node)
    if isinstance(v, ParamRef):
        return _reshape_param(v, in_shape, out_shape)
    if not isinstance(v, Chan):
        return None
    if in_shape is None or out_shape is None:
        p.pin(v.labels, f"reshape with unknown shapes at {p.where(node)}")
        return None
    c = v.cdim
    size = in_shape[c]
    if size != len(v.labels):
        p.pin(v.labels, f"reshape of a tensor whose channel dim does not match its channels at {p.where(node)}")
        return None
    sizes = _view_sizes(node)
    if _op_name(node) == "expand" and len(out_shape) == len(in_shape):
        if out_shape[c] != size:
            p.pin(v.labels, f"expand of the channel dim at {p.where(node)}")
            return None
        return Chan(v.labels, c, len(out_shape))
    prefix = math.prod(in_shape[:c])
    literal = _literal_dims(p, node, sizes, out_shape)
    # 1) the channel dim survives whole (possibly with size-1 dims added or removed around it)
    suffix = math.prod(in_shape[c + 1 :])
    candidates = [
        d
        for d in range(len(out_shape))
        if out_shape[d] == size
        and (
            (math.prod(out_shape[:d]) == prefix and min(in_shape[:c] + out_shape[:d], default=1) >= 0)
            or (
                math.prod(out_shape[d + 1 :]) == suffix
                and min(in_shape[c + 1 :] + out_shape[d + 1 :], default=1) >= 0
                and (-1 in in_shape[:c] or -1 in out_shape[:d])
            )
        )
    ]
    for d in candidates:
        if d in literal and size > 1:
            bound = _bind_literal(p, node, out_shape[d], v.labels, 1)
            if not bound:
                continue
        return Chan(v.labels, d, len(out_shape))
    # 2) merged with neighbouring dims: each channel covers a block (or a stride) of the merged dim
    for d in range(len(out_shape)):
        pre = math.prod(out_shape[:d])
        for a in range(c + 1):
            if math.prod(in_shape[:a]) != pre:
                continue
            b = next(
                (b for b in range(c + 1, len(in_shape) + 1) if math.prod(in_shape[a:b]) == out_shape[d] and b - a >= 2),
                None,
            )
            if b is None:
                continue
            if d in literal:
                unit = out_shape[d] // size
                if not _bind_literal(p, node, out_shape[d], np.repeat(v.labels, unit), 1):
                    continue
            block = list(in_shape[a:b])
            grid = np.broadcast_to(v.labels.reshape([1] * (c - a) + [size] + [1] * (b - c - 1)), block).reshape(-1)
            return Chan(np.ascontiguousarray(grid), d, len(out_shape))
    # 3) split into factors
    split = _split_factors(in_shape, out_shape, c)
    if split is not None:
        first, factors = split
        return _split_channels(p, node, v, first, factors, sizes, out_shape)
    reason = f"reshape mixes or splits the channel dim at {p.where(node)}"
    if literal:
        reason += " (or fixes its size with a literal; write x.view(x.size(0), -1) or torch.flatten(x, 1))"
    p.pin(v.labels, reason)
    return None


def _split_factors(in_shape: tuple[int, ...], out_shape: tuple[int, ...], c: int) -> tuple[int, list[int]] | None:
    """If output dims ``[first, first+k)`` factor the input's channel dim: ``(first, factors)``."""
    prefix = math.prod(in_shape[:c])
    suffix = math.prod(in_shape[c + 1 :])
    for first in range(len(out_shape)):
        if math.prod(out_shape[:first]) != prefix:
            continue
        for last in range(first + 2, len(out_shape) + 1):
            if math.prod(out_shape[first:last]) == in_shape[c] and math.prod(out_shape[last:]) == suffix:
                return first, list(out_shape[first:last])
    return None


def _split_channels(
    p: Propagation,
    node: fx.Node,
    v: Chan,
    first: int,
    factors: list[int],
    sizes: list[Any] | None,
    out_shape: tuple[int, ...],
) -> Any:
    """The channel dim split into ``factors`` (output dims ``first, first+1, ...``)."""
    written = sizes[first : first + len(factors)] if sizes is not None and len(sizes) == len(out_shape) else None
    unit = None
    if written is not None:
        follows = [k for k, s in enumerate(written) if isinstance(s, fx.Node) or (isinstance(s, int) and s == -1)]
        if len(follows) == 1:
            unit = follows[0]
    if unit is None:
        # a factor bound to a module attribute (num_heads ...): that one follows the pruning
        for k, f in enumerate(factors):
            if f > 1 and _find_binding(p, node, f, prefer=_HEAD_ATTRS) is not None:
                unit = k
                break
    if unit is None:
        p.pin(
            v.labels,
            f"reshape splits the channel dim into {factors} with fixed sizes at {p.where(node)}; "
            "write the number of heads as -1 or bind it to a module attribute",
        )
        return None
    grid = v.labels.reshape(factors)
    moved = np.moveaxis(grid, unit, 0).reshape(factors[unit], -1)
    for row in moved:
        p.union_all(row)  # the channel's elements in every block and within the kept-whole dims go together
    reps = moved[:, 0].copy()
    if written is not None and isinstance(written[unit], int) and written[unit] != -1:
        found = _find_binding(p, node, factors[unit], prefer=_HEAD_ATTRS)
        if found is not None:
            p.bind(found[0], found[1], reps)
    return Chan(reps, first + unit, len(out_shape))


def _reshape_param(v: ParamRef, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> Any:
    """A parameter reshaped by adding or removing size-1 dims keeps its dims; otherwise untracked."""
    if in_shape is None or out_shape is None:
        return None
    if [s for s in in_shape if s != 1] != [s for s in out_shape if s != 1]:
        if len(in_shape) == len(out_shape) and all(i == o or i == 1 for i, o in zip(in_shape, out_shape)):
            return ParamRef(v.layer, v.attr, out_shape, v.dims)  # expand of size-1 dims
        return None
    big = [d for d, s in zip(v.dims, in_shape) if s != 1]
    dims: list[int | None] = []
    k = 0
    for s in out_shape:
        if s == 1:
            dims.append(None)
        else:
            dims.append(big[k])
            k += 1
    return ParamRef(v.layer, v.attr, out_shape, tuple(dims))


def _literal_dims(p: Propagation, node: fx.Node, sizes: list[Any] | None, out_shape: tuple[int, ...]) -> set[int]:
    """Output dims whose size a view/reshape writes as a literal int (fx only: export graphs have
    literal ints everywhere, and the frontend checks the rebuilt model instead)."""
    if p.capture.frontend != "fx" or sizes is None or len(sizes) != len(out_shape):
        return set()
    return {i for i, s in enumerate(sizes) if isinstance(s, int) and s != -1 and i > 0}


def _bind_literal(p: Propagation, node: fx.Node, value: int, labels: np.ndarray, unit: int) -> bool:
    found = _find_binding(p, node, value)
    if found is None:
        return False
    p.bind(found[0], found[1], labels, unit)
    return True


_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "nhead", "heads", "num_head")
_KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_ATTR_TOKEN = re.compile(r"\b[A-Za-z_]\w*\.([A-Za-z_]\w*)")


def _find_binding(p: Propagation, node: fx.Node, value: Any, prefer: Sequence[str] = ()) -> tuple[str, str] | None:
    """The ``(module, attribute)`` holding ``value`` that the op at ``node`` reads, or None.

    Candidates are the attributes of the module running the op whose value equals ``value`` (an
    int or a list of ints). With a source line (``torch.export`` records it) only attributes named
    on that line count; otherwise a unique candidate, or one of the ``prefer`` names, is taken.
    """
    if isinstance(value, fx.Node) or value is None:
        return None
    mod_name = module_of(node) or ""
    try:
        module = p.capture.model.get_submodule(mod_name)
    except AttributeError:
        return None
    want = list(value) if isinstance(value, (list, tuple)) else value
    cands = []
    for attr, val in vars(module).items():
        if attr.startswith("_") or isinstance(val, bool):
            continue
        if isinstance(val, (list, tuple)) and isinstance(want, list) and list(val) == want:
            cands.append(attr)
        elif isinstance(val, int) and not isinstance(want, list) and val == want:
            cands.append(attr)
    if not cands:
        return None
    line = _source_line(node)
    if line is not None:
        named = set(_ATTR_TOKEN.findall(line))
        on_line = [a for a in cands if a in named]
        if len(on_line) == 1:
            return p.capture.canonical(mod_name), on_line[0]
        return None
    preferred = [a for a in cands if a in prefer]
    if len(preferred) == 1:
        return p.capture.canonical(mod_name), preferred[0]
    if len(cands) == 1 and not prefer:
        return p.capture.canonical(mod_name), cands[0]
    return None


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _source_line(node: fx.Node) -> str | None:
    """The source statement that ran the op (``torch.export`` records the stack), whole even when
    it spans several lines; None when the graph has no stack traces (fx)."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = _FRAME.findall(trace)
    if frames:
        path, line = frames[-1]
        text = _statement(path, int(line))
        if text:
            return text
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip() and not ln.strip().startswith("File ")]
    return lines[-1] if lines else None


def _statement(path: str, line: int, max_lines: int = 30) -> str:
    import linecache

    parts, depth = [], 0
    for k in range(line, line + max_lines):
        text = linecache.getline(path, k)
        if not text:
            break
        parts.append(text.strip())
        depth += sum(text.count(c) for c in "([{") - sum(text.count(c) for c in ")]}")
        if depth <= 0:
            break
    return " ".join(parts)


def _creation(p: Propagation, node: fx.Node) -> Any:
    """zeros / ones / full / empty (and ``new_*``): constant along every dim; a dim whose size the
    forward reads from a module attribute (``torch.zeros(1, self.n_heads, ...)``) follows that
    attribute, so it may carry channels (bound: the attribute is set after pruning)."""
    shape = shape_of(node)
    if shape is None:
        return None
    for d, size in enumerate(shape):
        if size <= 1:
            continue
        found = _find_binding(p, node, size)
        if found is not None:
            labels = p.new_source(None, size)
            p.bind(found[0], found[1], labels)
            return Chan(labels, d, len(shape))
    return None


def _flatten(p: Propagation, node: fx.Node) -> Any:
    return _reshape(p, node)


def _permute(p: Propagation, node: fx.Node) -> Any:
    v = p.value(_input(node))
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    if not dims:
        dims = tuple(node.kwargs.get("dims", ()))
    if isinstance(v, ParamRef):
        d = [norm_dim(int(k), len(v.dims)) for k in dims]
        shape = shape_of(node)
        return ParamRef(v.layer, v.attr, shape, tuple(v.dims[k] for k in d)) if shape is not None else None
    if not isinstance(v, Chan):
        return None
    d = [norm_dim(int(k), v.ndim) for k in dims]
    return Chan(v.labels, d.index(v.cdim), v.ndim)


def _transpose(p: Propagation, node: fx.Node) -> Any:
    v = p.value(_input(node))
    if _op_name(node) in ("t", "numpy_T"):
        d0, d1 = 0, 1
    else:
        d0, d1 = int(_arg(node, 1, "dim0")), int(_arg(node, 2, "dim1"))
    if isinstance(v, ParamRef):
        n = len(v.dims)
        a, b = norm_dim(d0, n), norm_dim(d1, n)
        dims = list(v.dims)
        dims[a], dims[b] = dims[b], dims[a]
        shape = shape_of(node)
        return ParamRef(v.layer, v.attr, shape, tuple(dims)) if shape is not None else None
    if not isinstance(v, Chan):
        return None
    a, b = norm_dim(d0, v.ndim), norm_dim(d1, v.ndim)
    cdim = b if v.cdim == a else a if v.cdim == b else v.cdim
    return Chan(v.labels, cdim, v.ndim)


def _pad(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    pad = _arg(node, 1, "pad", ())
    if x is None:
        return None
    n_dims = len(pad) // 2
    padded = {x.ndim - 1 - i for i in range(n_dims) if pad[2 * i] or pad[2 * i + 1]}
    if x.cdim in padded:
        p.pin(x.labels, f"padding of the channel dim at {p.where(node)}")
        return None
    return Chan(x.labels, x.cdim, x.ndim)


def _no_tensor(p: Propagation, node: fx.Node) -> Any:
    """size(), dim(), shape ... : read shapes only, do not consume channel values."""
    return None


def _getattr(p: Propagation, node: fx.Node) -> Any:
    if len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return None
    v = p.value(node.args[0])
    if isinstance(v, list) and len(node.args) > 1 and node.args[1] in ("values", "indices"):
        return v[0 if node.args[1] == "values" else 1]  # torch.max(x, dim).values
    return _fallback(p, node, f"attribute {node.args[1]!r}")


# ---------------------------------------------------------------------- matmul and attention
def _matmul(p: Propagation, node: fx.Node) -> Any:
    """matmul / bmm / mm: batch dims broadcast, the last dim of ``a`` meets the second-last of ``b``.

    Channels on a batch dim of both operands (attention heads) are united head by head; channels
    on the contracted dim of both are united pairwise (a sum of products loses only zero terms);
    channels on a free dim of one operand pass to the output when the other operand does not vary
    along them.
    """
    a_node, b_node = node.args[0], node.args[1]
    a, b = p.value(a_node), p.value(b_node)
    sa, sb, so = shape_of(a_node), shape_of(b_node), shape_of(node)
    if not (isinstance(a, Chan) or isinstance(b, Chan)):
        if isinstance(a, ParamRef) or isinstance(b, ParamRef):
            return None
        return None
    if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
        p.pin_value([a, b], f"matrix product with unknown or 1-D operands at {p.where(node)}")
        return None
    if isinstance(a, ParamRef) or isinstance(b, ParamRef):
        p.pin_value([a, b], f"parameter used as a matrix at {p.where(node)} (no layer handler owns it)")
        return None
    no = len(so)

    def kind(v: Chan, n: int, first: bool) -> tuple[str, int]:
        rel = v.cdim - n
        if rel < -2:
            return "batch", no + rel
        if (first and rel == -1) or (not first and rel == -2):
            return "contract", -1
        return "free", (no - 2 if first else no - 1)

    ka = kind(a, len(sa), True) if isinstance(a, Chan) else None
    kb = kind(b, len(sb), False) if isinstance(b, Chan) else None

    def other_varies(shape: tuple[int, ...], out_dim: int) -> bool:
        d = len(shape) - (no - out_dim)
        return 0 <= d < len(shape) and shape[d] > 1

    out: Chan | None
    if ka and kb and ka[0] == kb[0] == "batch" and ka[1] == kb[1]:
        _union_heads(p, a.labels, b.labels)
        out = Chan(a.labels if len(a.labels) >= len(b.labels) else b.labels, ka[1], no)
    elif ka and kb and ka[0] == kb[0] == "contract":
        p.union(a.labels, b.labels)  # a sum of products: removing a pair of zero terms is exact
        return None
    elif ka and not kb and ka[0] != "contract" and not (ka[0] == "batch" and other_varies(sb, ka[1])):
        out = Chan(a.labels, ka[1], no)
    elif kb and not ka and kb[0] != "contract" and not (kb[0] == "batch" and other_varies(sa, kb[1])):
        out = Chan(b.labels, kb[1], no)
    else:
        p.pin_value([a, b], f"matrix product mixing the channels with a fixed tensor at {p.where(node)}")
        return None
    if out.cdim < no - 2:  # heads: the product's MACs scale with them
        macs = math.prod(so) * sa[-1]
        operands = [(sa, a.cdim if isinstance(a, Chan) else None), (sb, b.cdim if isinstance(b, Chan) else None)]
        p.computes.append(ComputeRecord(_runner(p, node), node.name, float(macs), out.labels, "matmul", operands))
    return out


def _union_heads(p: Propagation, a: np.ndarray, b: np.ndarray) -> None:
    """Unite head ``h`` of ``a`` with head ``h // (len(a)/len(b))`` of ``b`` (grouped-query attention)."""
    if len(a) == len(b):
        p.union(a, b)
    elif len(b) and len(a) % len(b) == 0:
        p.union(a, np.repeat(b, len(a) // len(b)))
    elif len(a) and len(b) % len(a) == 0:
        p.union(np.repeat(a, len(b) // len(a)), b)
    else:
        p.pin(np.concatenate([a, b]), "attention with head counts that do not divide")


def _sdpa(p: Propagation, node: fx.Node) -> Any:
    """scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)."""
    q_node, k_node, v_node = node.args[0], node.args[1], node.args[2]
    mask_node = _arg(node, 3, "attn_mask")
    scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
    q, k, v = p.value(q_node), p.value(k_node), p.value(v_node)
    sq, so = shape_of(q_node), shape_of(node)
    if sq is None or so is None:
        p.pin_value([q, k, v], f"attention with unknown shapes at {p.where(node)}")
        return None
    nd = len(sq)
    head_dim = nd - 3
    vals = [x for x in (q, k, v) if x is not None]
    if not vals:
        return None
    if any(not isinstance(x, Chan) for x in vals) or len(vals) != 3:
        p.pin_value(vals, f"attention whose q, k and v do not all carry tracked channels at {p.where(node)}")
        return None
    if all(x.cdim == head_dim for x in (q, k, v)) and head_dim >= 0:
        _union_heads(p, q.labels, k.labels)
        _union_heads(p, q.labels, v.labels)
        mask = p.value(mask_node)
        sm = shape_of(mask_node)
        if isinstance(mask, Chan):
            if mask.cdim == len(sm) - 3 and len(mask.labels) == len(q.labels):
                p.union(q.labels, mask.labels)
            elif len(mask.labels) > 1:
                p.pin_value([q, mask], f"attention mask carries channels on another dim at {p.where(node)}")
        elif sm is not None and len(sm) >= 3 and sm[len(sm) - 3] > 1:
            p.pin(q.labels, f"attention mask fixes the number of heads ({sm[len(sm) - 3]}) at {p.where(node)}")
        out = Chan(q.labels, head_dim, len(so))
        sk = shape_of(k_node)
        sv = shape_of(v_node)
        if sk is not None and sv is not None:
            macs = math.prod(sq) * sk[-2] + math.prod(so) * sk[-2]  # QK^T and AV
            operands = [(sq, head_dim), (sk, len(sk) - 3), (sv, len(sv) - 3)]
            p.computes.append(ComputeRecord(_runner(p, node), node.name, float(macs), q.labels, "sdpa", operands))
        _bind_heads(p, node, q, k)
        return out
    if all(x.cdim == nd - 1 for x in (q, k)) and scale is not None:
        p.union(q.labels, k.labels)  # one head: q.k sums over the channels (the scale is fixed)
        if v.cdim == nd - 1:
            return Chan(v.labels, nd - 1, len(so))
    p.pin_value([q, k, v], f"attention over channels that are not whole heads at {p.where(node)}")
    return None


def _runner(p: Propagation, node: fx.Node) -> str:
    return p.capture.canonical(module_of(node) or "")


def _bind_heads(p: Propagation, node: fx.Node, q: Chan, k: Chan) -> None:
    """Keep the head counts of the attention module consistent with its pruned heads."""
    name = module_of(node)
    if not name:
        return
    try:
        module = p.capture.model.get_submodule(name)
    except AttributeError:
        return
    for attrs, labels in ((_HEAD_ATTRS, q.labels), (_KV_HEAD_ATTRS, k.labels)):
        for attr in attrs:
            val = getattr(module, attr, None)
            if isinstance(val, int) and not isinstance(val, bool) and val == len(labels):
                p.bind(p.capture.canonical(name), attr, labels)


# ---------------------------------------------------------------------- rule tables
_ACT_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
)
_PASS_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
)
MODULE_RULES: list[tuple[Any, Callable[..., Any]]] = [
    (nn.PReLU, _prelu_module),
    (_ACT_MODULES, _passthrough_module(activation=True)),
    (_PASS_MODULES, _passthrough_module(activation=False)),
    (_POOL_MODULES, _pool_module),
    ((nn.Flatten, nn.Unflatten), _flatten_module),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), _softmax_module),
]

_ACT_FUNCS = [
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.sigmoid,
    F.tanh,
    F.softplus,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.relu_,
    F.leaky_relu_,
    F.elu_,
    F.hardtanh_,
    torch.relu_,
]
_ELEMENTWISE_FUNCS = [
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.interpolate,
    F.upsample,
    torch.exp,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.sqrt,
    torch.square,
    operator.neg,
    operator.pos,
    torch.rsqrt,
    torch.log,
    torch.sin,
    torch.cos,
    torch.erf,
]
_BINARY_FUNCS = [
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    torch.pow,
    operator.pow,
]
_POOL_FUNCS = [
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.lp_pool1d,
    F.lp_pool2d,
]

_FUNCTION_RULES: dict[Any, Callable[[Propagation, fx.Node], Any]] = {}
_FUNCTION_RULES.update({f: _activation for f in _ACT_FUNCS})
_FUNCTION_RULES.update({f: _elementwise for f in _ELEMENTWISE_FUNCS})
_FUNCTION_RULES.update({f: _binary for f in _BINARY_FUNCS})
_FUNCTION_RULES.update({f: _pool for f in _POOL_FUNCS})
_FUNCTION_RULES.update(
    {
        torch.cat: _cat,
        torch.concat: _cat,
        torch.concatenate: _cat,
        torch.stack: _stack,
        torch.flatten: _reshape,
        torch.reshape: _reshape,
        torch.squeeze: _reshape,
        torch.unsqueeze: _reshape,
        torch.permute: _permute,
        torch.transpose: _transpose,
        torch.split: _split,
        torch.chunk: _split,
        torch.unbind: _split,
        torch.mean: _reduce,
        torch.sum: _reduce,
        torch.amax: _reduce,
        torch.amin: _reduce,
        torch.matmul: _matmul,
        torch.bmm: _matmul,
        torch.where: _where,
        F.softmax: _softmax,
        F.log_softmax: _softmax,
        F.pad: _pad,
        F.scaled_dot_product_attention: _sdpa,
        operator.getitem: _getitem,
        operator.matmul: _matmul,
        getattr: _getattr,
    }
)
# functional normalize(x, dim=1) normalises across channels by default
_FUNCTION_RULES[F.normalize] = lambda p, n: _along_dim(p, n, _arg(n, 2, "dim", 1))

_METHOD_RULES: dict[str, Callable[[Propagation, fx.Node], Any]] = {
    **{m: _activation for m in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_")},
    **{
        m: _elementwise
        for m in (
            "contiguous",
            "clone",
            "detach",
            "float",
            "half",
            "double",
            "to",
            "type_as",
            "exp",
            "abs",
            "neg",
            "clamp",
            "clamp_",
            "clip",
            "sqrt",
            "square",
            "rsqrt",
            "pow",
            "log",
            "sin",
            "cos",
        )
    },
    **{m: _binary for m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum")},
    **{m: _reduce for m in ("mean", "sum", "amax", "amin")},
    **{
        m: _reshape
        for m in (
            "view",
            "reshape",
            "flatten",
            "squeeze",
            "unsqueeze",
            "view_as",
            "reshape_as",
            "unflatten",
            "expand",
            "expand_as",
        )
    },
    "permute": _permute,
    "transpose": _transpose,
    "split": _split,
    "chunk": _split,
    "unbind": _split,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "matmul": _matmul,
    "size": _no_tensor,
    "dim": _no_tensor,
    "numel": _no_tensor,
}

_ATEN_RULES: dict[Any, Callable[[Propagation, fx.Node], Any]] = {
    aten.view: _reshape,
    aten.reshape: _reshape,
    aten._unsafe_view: _reshape,
    aten.flatten: _reshape,
    aten.unflatten: _reshape,
    aten.squeeze: _reshape,
    aten.unsqueeze: _reshape,
    aten.expand: _reshape,
    aten.permute: _permute,
    aten.transpose: _transpose,
    aten.t: _transpose,
    aten.cat: _cat,
    aten.stack: _stack,
    aten.split: _split,
    aten.split_with_sizes: _split,
    aten.chunk: _split,
    aten.unbind: _split,
    aten.select: _select,
    aten.slice: _slice,
    aten.index: _index,
    aten.mean: _reduce,
    aten.sum: _reduce,
    aten.amax: _reduce,
    aten.amin: _reduce,
    aten.softmax: _softmax,
    aten._softmax: _softmax,
    aten.log_softmax: _softmax,
    aten._log_softmax: _softmax,
    aten.matmul: _matmul,
    aten.bmm: _matmul,
    aten.mm: _matmul,
    aten.scaled_dot_product_attention: _sdpa,
    aten.pad: _pad,
    aten.constant_pad_nd: _pad,
    aten.max_pool1d: _pool,
    aten.max_pool2d: _pool,
    aten.max_pool3d: _pool,
    aten.max_pool2d_with_indices: _pool,
    aten.avg_pool1d: _pool,
    aten.avg_pool2d: _pool,
    aten.avg_pool3d: _pool,
    aten.adaptive_avg_pool1d: _pool,
    aten.adaptive_avg_pool2d: _pool,
    aten.adaptive_avg_pool3d: _pool,
    aten._adaptive_avg_pool2d: _pool,
    aten.adaptive_max_pool1d: _pool,
    aten.adaptive_max_pool2d: _pool,
    aten.upsample_nearest2d: _pool,
    aten.upsample_bilinear2d: _pool,
    aten.dropout: _elementwise,
    aten.feature_dropout: _elementwise,
    aten.alpha_dropout: _elementwise,
    aten.contiguous: _elementwise,
    aten.clone: _elementwise,
    aten.alias: _elementwise,
    aten.detach: _elementwise,
    aten.to: _elementwise,
    aten._to_copy: _elementwise,
    aten.type_as: _elementwise,
    aten.lift_fresh_copy: _elementwise,
    aten.where: _where,
    aten.zeros: _creation,
    aten.ones: _creation,
    aten.full: _creation,
    aten.empty: _creation,
    aten.new_zeros: _creation,
    aten.new_ones: _creation,
    aten.new_full: _creation,
    aten.new_empty: _creation,
    aten.zeros_like: _elementwise,
    aten.ones_like: _elementwise,
    aten.full_like: _elementwise,
    aten.empty_like: _elementwise,
    aten._assert_tensor_metadata: _no_tensor,
    aten._assert_scalar: _no_tensor,
    aten.sym_size: _no_tensor,
    aten.sym_numel: _no_tensor,
    aten.sym_stride: _no_tensor,
}
_FUNCTION_RULES[operator.getitem] = _getitem


def _max_min(p: Propagation, node: fx.Node) -> Any:
    """torch.max / torch.min: a reduction with a dim, element-wise with another tensor."""
    second = _arg(node, 1, "dim")
    if isinstance(second, int) or "dim" in node.kwargs:
        return _reduce(p, node)
    if isinstance(second, fx.Node):
        return _binary(p, node)
    p.pin_value(p.arg_values(node.args), f"full reduction at {p.where(node)}")
    return None


_FUNCTION_RULES.update({torch.max: _max_min, torch.min: _max_min})
_METHOD_RULES.update({"max": _max_min, "min": _max_min, "var": _reduce, "std": _reduce, "logsumexp": _reduce})
_FUNCTION_RULES.update({torch.var: _reduce, torch.std: _reduce, torch.logsumexp: _reduce})
_ATEN_OVERLOAD_RULES: dict[Any, Callable[[Propagation, fx.Node], Any]] = {
    aten.max.dim: _reduce,
    aten.min.dim: _reduce,
    aten.var.correction: _reduce,
    aten.std.correction: _reduce,
    aten.var.dim: _reduce,
    aten.std.dim: _reduce,
    aten.logsumexp.default: _reduce,
}
