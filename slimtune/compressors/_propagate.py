"""Channel propagation over a torch.fx graph: the engine behind :func:`slimtune.compressors.trace`.

Every channel that a layer produces becomes an *element* (an integer id). Each tensor of the graph
is described by the element held at each position of its channel dimension (``Chan``): a conv output
holds fresh elements, a ReLU or BatchNorm passes its input's elements through, a concatenation
concatenates them, a flatten repeats each of them over the spatial positions, a residual add
*unites* the elements at equal positions (they must be removed together). What cannot be followed
(the model output, a reshape that mixes channels, a layer norm, an unknown op) *pins* the elements
it touches: the groups holding them are not prunable, with the reason recorded.

The rules are looked up by module type or by function / method name in the tables at the end of
this module; an op without a rule pins its inputs, so an unknown op can make pruning more
conservative but never wrong.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Chan:
    """Channel labels of one tensor: element id at each position of dim ``cdim``."""

    labels: np.ndarray
    cdim: int
    ndim: int


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


class Propagation:
    """State of one propagation pass: elements, unions, pins, members, taps."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.parent: list[int] = []
        self.elem_source: list[int] = []
        self.elem_index: list[int] = []
        self.sources: list[Source] = []
        self.pinned: dict[int, str] = {}
        self.members: list[MemberRecord] = []
        self.taps: list[TapRecord] = []
        self.blocks: list[BlockRecord] = []
        self.out_labels: dict[str, np.ndarray] = {}  # layer -> its produced elements (weight sharing)
        self.env: dict[fx.Node, Any] = {}
        self.call_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ elements
    def new_source(self, layer: str | None, size: int, reason: str | None = None) -> np.ndarray:
        first = len(self.parent)
        src = len(self.sources)
        self.sources.append(Source(layer, src, first, size, reason))
        self.parent.extend(range(first, first + size))
        self.elem_source.extend([src] * size)
        self.elem_index.extend(range(size))
        labels = np.arange(first, first + size, dtype=np.int64)
        if reason is not None:
            self.pin(labels, reason)
        return labels

    def find(self, e: int) -> int:
        parent = self.parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                # keep the older element as root so classes are keyed by their first producer
                if rx < ry:
                    self.parent[ry] = rx
                else:
                    self.parent[rx] = ry

    def pin(self, labels: np.ndarray, reason: str) -> None:
        for e in np.unique(labels).tolist():
            self.pinned.setdefault(e, reason)

    def pin_chan(self, value: Any, reason: str) -> None:
        for c in _chans(value):
            self.pin(c.labels, reason)

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.env[node] = self.visit(node)

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is None:
                return None
            size = shape[1] if len(shape) >= 2 else (shape[0] if shape else 1)
            cdim = 1 if len(shape) >= 2 else 0
            return Chan(self.new_source(None, size, f"model input {node.name!r}"), cdim, len(shape))
        if node.op == "get_attr":
            shape = _shape(node)
            if shape is None or len(shape) == 0:
                return None
            cdim = 1 if len(shape) >= 2 else 0
            return Chan(self.new_source(None, shape[cdim], f"parameter/buffer {node.target!r} used directly"), cdim, len(shape))
        if node.op == "output":
            self.pin_chan(self.arg_values(node.args), "reaches the model output")
            return None
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            name = str(node.target)
            self.call_counts[name] = self.call_counts.get(name, 0) + 1
            for types, rule in _MODULE_RULES:
                if isinstance(module, types):
                    return rule(self, node, module)
            return _unknown(self, node, f"module {name!r} ({type(module).__name__})")
        # call_function / call_method
        key = node.target if node.op == "call_function" else str(node.target)
        rule = (_FUNCTION_RULES if node.op == "call_function" else _METHOD_RULES).get(key)
        if rule is None:
            what = getattr(node.target, "__name__", str(node.target))
            return _unknown(self, node, f"{node.op.replace('call_', '')} {what!r}")
        return rule(self, node)

    # ------------------------------------------------------------------ helpers for rules
    def value(self, arg: Any) -> Any:
        return self.env.get(arg) if isinstance(arg, fx.Node) else None

    def arg_values(self, args: Any) -> list[Any]:
        out: list[Any] = []
        fx.node.map_arg(args, lambda n: out.append(self.env.get(n)))
        return out

    def member(self, layer: str, role: str, labels: np.ndarray) -> None:
        self.members.append(MemberRecord(layer, role, labels))

    def tap(self, node: fx.Node, chan: Chan | None, activation: bool) -> None:
        if isinstance(chan, Chan):
            self.taps.append(TapRecord(node.name, chan.cdim, chan.labels, activation))


# ---------------------------------------------------------------------- shape helpers
def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(s) for s in meta.shape)


def _chans(value: Any) -> list[Chan]:
    if isinstance(value, Chan):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in _chans(v)]
    return []


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _first_chan(p: Propagation, node: fx.Node) -> Chan | None:
    v = p.value(node.args[0]) if node.args else p.value(node.kwargs.get("input"))
    return v if isinstance(v, Chan) else None


def _unknown(p: Propagation, node: fx.Node, what: str) -> Any:
    """No rule: pin every channel going in; anything coming out is a pinned source."""
    p.pin_chan(p.arg_values((node.args, node.kwargs)), f"used by {what} at node {node.name!r}")
    return _fresh_pinned(p, node, f"produced by {what} at node {node.name!r}")


def _fresh_pinned(p: Propagation, node: fx.Node, reason: str) -> Any:
    shape = _shape(node)
    if shape is None or len(shape) == 0:
        return None
    cdim = 1 if len(shape) >= 2 else 0
    return Chan(p.new_source(None, shape[cdim], reason), cdim, len(shape))


def _out_ndim(node: fx.Node, default: int) -> int:
    shape = _shape(node)
    return len(shape) if shape is not None else default


# ---------------------------------------------------------------------- module rules
def _conv(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    name = str(node.target)
    x = _first_chan(p, node)
    ndim = _out_ndim(node, 4)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        if x is not None:
            p.pin(x.labels, f"input of transposed conv {name!r} (not supported for pruning)")
        return _fresh_pinned(p, node, f"output of transposed conv {name!r} (not supported for pruning)")
    if x is None or x.cdim != 1 or len(x.labels) != m.in_channels:
        if x is not None:
            p.pin(x.labels, f"conv {name!r} sees channels on an unexpected dim")
        return _fresh_pinned(p, node, f"conv {name!r} input could not be followed")
    g = m.groups
    if g == 1:
        p.member(name, "in", x.labels)
        out = p.out_labels.get(name)
        if out is None:
            out = p.out_labels[name] = p.new_source(name, m.out_channels)
        p.member(name, "out", out)
        chan = Chan(out, 1, ndim)
        p.tap(node, chan, activation=False)
        return chan
    if g == m.in_channels:
        # depthwise (multiplier k): output channel o is computed from input channel o // k
        k = m.out_channels // m.in_channels
        labels = np.repeat(x.labels, k)
        p.member(name, "dw", labels)
        chan = Chan(labels, 1, ndim)
        p.tap(node, chan, activation=False)
        return chan
    if m.in_channels == m.out_channels:
        # grouped conv with as many outputs as inputs: channel i in, channel i out, pruned
        # by the same number in every group
        p.member(name, "dw", x.labels)
        p.blocks.append(BlockRecord(name, x.labels, g))
        chan = Chan(x.labels, 1, ndim)
        p.tap(node, chan, activation=False)
        return chan
    # grouped conv with in != out: inputs and outputs are each pruned by the same number in
    # every conv group (block constraints), so the groups stay equal
    p.member(name, "in", x.labels)
    p.blocks.append(BlockRecord(name, x.labels, g))
    out = p.out_labels.get(name)
    if out is None:
        out = p.out_labels[name] = p.new_source(name, m.out_channels)
        p.blocks.append(BlockRecord(name, out, g))
    p.member(name, "out", out)
    chan = Chan(out, 1, ndim)
    p.tap(node, chan, activation=False)
    return chan


def _linear(p: Propagation, node: fx.Node, m: nn.Linear) -> Any:
    name = str(node.target)
    x = _first_chan(p, node)
    ndim = _out_ndim(node, 2)
    if x is not None and x.cdim == x.ndim - 1 and len(x.labels) == m.in_features:
        p.member(name, "in", x.labels)
    elif x is not None:
        p.pin(x.labels, f"linear {name!r} is applied to a dim that does not hold the channels")
    out = p.out_labels.get(name)
    if out is None:
        out = p.out_labels[name] = p.new_source(name, m.out_features)
    p.member(name, "out", out)
    chan = Chan(out, ndim - 1, ndim)
    p.tap(node, chan, activation=False)
    return chan


def _batchnorm(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    name = str(node.target)
    x = _first_chan(p, node)
    if x is None or x.cdim != 1:
        if x is not None:
            p.pin(x.labels, f"norm {name!r} sees channels on an unexpected dim")
        return _fresh_pinned(p, node, f"norm {name!r} input could not be followed")
    has_params = getattr(m, "affine", False) or getattr(m, "track_running_stats", False)
    if has_params:
        p.member(name, "norm", x.labels)
    chan = Chan(x.labels, 1, x.ndim)
    p.tap(node, chan, activation=False)
    return chan


def _pin_module(reason: str) -> Callable[[Propagation, fx.Node, nn.Module], Any]:
    def rule(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
        x = _first_chan(p, node)
        what = f"{type(m).__name__} {str(node.target)!r}"
        if x is not None:
            p.pin(x.labels, f"{what} {reason}")
        return _fresh_pinned(p, node, f"output of {what}")

    return rule


def _passthrough_module(activation: bool) -> Callable[[Propagation, fx.Node, nn.Module], Any]:
    def rule(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
        return _passthrough(p, node, activation)

    return rule


def _pool_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _pool(p, node)


def _softmax_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _along_dim(p, node, m.dim)


def _flatten_module(p: Propagation, node: fx.Node, m: nn.Module) -> Any:
    return _reshape(p, node)


def _prelu_module(p: Propagation, node: fx.Node, m: nn.PReLU) -> Any:
    if m.num_parameters == 1:
        return _passthrough(p, node, True)
    return _pin_module("has a parameter per channel (not resized)")(p, node, m)


# ---------------------------------------------------------------------- function rules
def _passthrough(p: Propagation, node: fx.Node, activation: bool = False) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"unfollowed input at node {node.name!r}") if _shape(node) else None
    shape = _shape(node)
    chan = Chan(x.labels, x.cdim, len(shape) if shape is not None else x.ndim)
    if activation:
        p.tap(node, chan, activation=True)
    return chan


def _activation(p: Propagation, node: fx.Node) -> Any:
    return _passthrough(p, node, activation=True)


def _elementwise(p: Propagation, node: fx.Node) -> Any:
    return _passthrough(p, node, activation=False)


def _binary(p: Propagation, node: fx.Node) -> Any:
    """Broadcasting binary op (add, mul ...): equal channel positions are united."""
    out_shape = _shape(node)
    operands = [a for a in list(node.args[:2]) + [node.kwargs.get("other")] if a is not None]
    if out_shape is None:
        p.pin_chan([p.value(a) for a in operands], f"binary op at node {node.name!r} with unknown shape")
        return None
    nd = len(out_shape)
    chans: list[Chan] = []
    for a in operands:
        v = p.value(a)
        shape = _shape(a) if isinstance(a, fx.Node) else None
        if isinstance(v, Chan):
            chans.append(v)
        elif shape is not None and len(shape) > 0:
            # an unfollowed tensor: fine when it broadcasts over the channel dim (checked below)
            chans.append(Chan(np.zeros(0, dtype=np.int64), -1, len(shape)))
            chans[-1].shape = shape  # type: ignore[attr-defined]
    followed = [c for c in chans if c.cdim >= 0]
    if not followed:
        return _fresh_pinned(p, node, f"binary op at node {node.name!r} on unfollowed tensors")
    # position of the channel dim in the output (broadcasting aligns dims from the right)
    out_cdims = {nd - (c.ndim - c.cdim) for c in followed}
    full = [c for c in followed if len(c.labels) == out_shape[nd - (c.ndim - c.cdim)] and len(c.labels) > 1]
    if len(out_cdims) != 1:
        p.pin_chan(followed, f"binary op at node {node.name!r} combines tensors with channels on different dims")
        return _fresh_pinned(p, node, f"output of binary op at node {node.name!r}")
    cdim = out_cdims.pop()
    for c in chans:
        if c.cdim < 0:
            shape = c.shape  # type: ignore[attr-defined]
            d = cdim - (nd - len(shape))
            if 0 <= d < len(shape) and shape[d] > 1:
                p.pin_chan(followed, f"combined with a constant or unfollowed per-channel tensor at node {node.name!r}")
    if not full:
        # every operand broadcasts over channels (size 1): keep the first one's labels
        return Chan(followed[0].labels, cdim, nd)
    base = full[0]
    for other in full[1:]:
        p.union(base.labels, other.labels)
    return Chan(base.labels, cdim, nd)


def _pool(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"pooling at node {node.name!r} of an unfollowed tensor")
    if x.cdim != 1:
        p.pin(x.labels, f"pooling at node {node.name!r} over the channel dim")
        return _fresh_pinned(p, node, f"output of pooling at node {node.name!r}")
    shape = _shape(node)
    if shape is None:  # e.g. return_indices=True gives a tuple
        p.pin(x.labels, f"pooling at node {node.name!r} with an unexpected output")
        return None
    return Chan(x.labels, 1, len(shape))


def _along_dim(p: Propagation, node: fx.Node, dim: Any) -> Any:
    """Softmax-like op along ``dim``: mixes channels when ``dim`` is the channel dim."""
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"unfollowed input at node {node.name!r}")
    if dim is None or _norm_dim(int(dim), x.ndim) == x.cdim:
        p.pin(x.labels, f"softmax-like op at node {node.name!r} normalises across channels")
        return _fresh_pinned(p, node, f"output of node {node.name!r}")
    return Chan(x.labels, x.cdim, x.ndim)


def _softmax(p: Propagation, node: fx.Node) -> Any:
    return _along_dim(p, node, _arg(node, 1, "dim"))


def _reduce(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"reduction at node {node.name!r} of an unfollowed tensor")
    dim = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    if dim is None:
        p.pin(x.labels, f"full reduction at node {node.name!r}")
        return _fresh_pinned(p, node, f"output of node {node.name!r}")
    dims = [dim] if isinstance(dim, int) else list(dim)
    dims = [_norm_dim(int(d), x.ndim) for d in dims]
    if x.cdim in dims:
        p.pin(x.labels, f"reduction over the channel dim at node {node.name!r}")
        return _fresh_pinned(p, node, f"output of node {node.name!r}")
    cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
    return Chan(x.labels, cdim, _out_ndim(node, x.ndim - (0 if keepdim else len(dims))))


def _cat(p: Propagation, node: fx.Node) -> Any:
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    out_shape = _shape(node)
    values = [p.value(t) for t in tensors]
    if out_shape is None:
        p.pin_chan(values, f"concatenation at node {node.name!r} with unknown shape")
        return None
    nd = len(out_shape)
    dim = _norm_dim(int(dim), nd)
    chans: list[Chan] = []
    for t, v in zip(tensors, values):
        if isinstance(v, Chan):
            chans.append(v)
        else:
            shape = _shape(t)
            size = shape[dim] if shape is not None else 0
            chans.append(Chan(p.new_source(None, size, f"unfollowed tensor concatenated at node {node.name!r}"), dim, nd))
    cdims = {c.cdim for c in chans}
    if len(cdims) != 1:
        p.pin_chan(chans, f"concatenation at node {node.name!r} of tensors with channels on different dims")
        return _fresh_pinned(p, node, f"output of node {node.name!r}")
    cdim = cdims.pop()
    if dim == cdim:
        return Chan(np.concatenate([c.labels for c in chans]), cdim, nd)
    for c in chans[1:]:
        p.union(chans[0].labels, c.labels)
    return Chan(chans[0].labels, cdim, nd)


def _split(p: Propagation, node: fx.Node) -> Any:
    """torch.split / torch.chunk / tensor.split: a tuple of pieces along ``dim``."""
    x = _first_chan(p, node)
    meta = node.meta.get("tensor_meta")
    if x is None or not isinstance(meta, (list, tuple)):
        p.pin_chan(p.arg_values(node.args), f"split at node {node.name!r}")
        return None
    dim = _norm_dim(int(_arg(node, 2, "dim", 0)), x.ndim)
    if dim != x.cdim:
        return [Chan(x.labels, x.cdim, x.ndim) for _ in meta]
    # pieces of fixed sizes along the channel dim would cut elsewhere once channels are removed
    p.pin(x.labels, f"split/chunk along the channel dim at node {node.name!r} uses fixed sizes")
    return [_fresh_pinned_shape(p, tuple(m.shape), x.cdim, f"piece of split at node {node.name!r}") for m in meta]


def _fresh_pinned_shape(p: Propagation, shape: tuple[int, ...], cdim: int, reason: str) -> Chan:
    return Chan(p.new_source(None, int(shape[cdim]), reason), cdim, len(shape))


def _getitem(p: Propagation, node: fx.Node) -> Any:
    container, index = node.args[0], node.args[1]
    v = p.value(container)
    if isinstance(v, list):
        return v[index] if isinstance(index, int) and -len(v) <= index < len(v) else None
    if not isinstance(v, Chan):
        return None
    # tensor indexing: support basic indexing with ints, slices, None and Ellipsis
    idx = index if isinstance(index, tuple) else (index,)
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) for i in idx):
        p.pin(v.labels, f"advanced indexing at node {node.name!r}")
        return _fresh_pinned(p, node, f"output of indexing at node {node.name!r}")
    if any(isinstance(i, slice) and any(isinstance(b, fx.Node) for b in (i.start, i.stop, i.step)) for i in idx):
        p.pin(v.labels, f"indexing with computed bounds at node {node.name!r}")
        return _fresh_pinned(p, node, f"output of indexing at node {node.name!r}")
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
            if isinstance(i, int) or i != slice(None):
                # a fixed index or range would select other channels once channels are removed
                p.pin(v.labels, f"indexing selects channels by position at node {node.name!r}")
                return _fresh_pinned(p, node, f"output of indexing at node {node.name!r}")
            cdim = out_dim
        if not isinstance(i, int):
            out_dim += 1
        in_dim += 1
    if cdim is None:  # channel dim not indexed explicitly: it keeps its place after the indexed dims
        cdim = out_dim + (v.cdim - in_dim)
    return Chan(v.labels, cdim, _out_ndim(node, v.ndim))


def _reshape(p: Propagation, node: fx.Node) -> Any:
    """view / reshape / flatten / squeeze / unsqueeze, followed through the shapes."""
    x = _first_chan(p, node)
    src = node.args[0] if node.args else node.kwargs.get("input")
    in_shape, out_shape = _shape(src), _shape(node)
    if x is None or in_shape is None or out_shape is None:
        if x is not None:
            p.pin(x.labels, f"reshape at node {node.name!r} with unknown shapes")
        return _fresh_pinned(p, node, f"output of reshape at node {node.name!r}")
    c = x.cdim
    size = in_shape[c]
    prefix = math.prod(in_shape[:c])
    literal = _literal_sizes(node)
    # the prefix product can match at several dims when sizes are 1 (e.g. batch 1): try each
    for d in range(len(out_shape)):
        if math.prod(out_shape[:d]) != prefix or d in literal:
            continue
        if out_shape[d] == size and size > 0:
            return Chan(x.labels, d, len(out_shape))
        if out_shape[d] % size == 0 and out_shape[d] > size:
            repeat = out_shape[d] // size
            suffix = in_shape[c + 1 :]
            # the channel must be the major part of the merged dim: merged = channel x leading suffix dims
            acc, k = 1, 0
            while acc < repeat and k < len(suffix):
                acc *= suffix[k]
                k += 1
            if acc == repeat:
                return Chan(np.repeat(x.labels, repeat), d, len(out_shape))
    reason = f"reshape at node {node.name!r} mixes or splits the channel dim"
    if literal:
        reason += " (or fixes its size with a literal; write x.view(x.size(0), -1) or torch.flatten(x, 1))"
    p.pin(x.labels, reason)
    return _fresh_pinned(p, node, f"output of reshape at node {node.name!r}")


def _literal_sizes(node: fx.Node) -> set[int]:
    """Output dims whose size is a literal int (other than -1) in a view/reshape call."""
    name = getattr(node.target, "__name__", str(node.target))
    if name not in ("view", "reshape"):
        return set()
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    if not sizes and "shape" in node.kwargs:
        sizes = tuple(node.kwargs["shape"])
    return {i for i, s in enumerate(sizes) if isinstance(s, int) and s != -1 and i > 0}


def _permute(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"permute of an unfollowed tensor at node {node.name!r}")
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    if not dims:
        dims = tuple(node.kwargs.get("dims", ()))
    dims = [_norm_dim(int(d), x.ndim) for d in dims]
    return Chan(x.labels, dims.index(x.cdim), x.ndim)


def _transpose(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    if x is None:
        return _fresh_pinned(p, node, f"transpose of an unfollowed tensor at node {node.name!r}")
    d0 = _norm_dim(int(_arg(node, 1, "dim0")), x.ndim)
    d1 = _norm_dim(int(_arg(node, 2, "dim1")), x.ndim)
    cdim = d1 if x.cdim == d0 else d0 if x.cdim == d1 else x.cdim
    return Chan(x.labels, cdim, x.ndim)


def _pad(p: Propagation, node: fx.Node) -> Any:
    x = _first_chan(p, node)
    pad = _arg(node, 1, "pad", ())
    if x is None:
        return _fresh_pinned(p, node, f"pad of an unfollowed tensor at node {node.name!r}")
    n_dims = len(pad) // 2
    padded = {x.ndim - 1 - i for i in range(n_dims) if pad[2 * i] or pad[2 * i + 1]}
    if x.cdim in padded:
        p.pin(x.labels, f"padding of the channel dim at node {node.name!r}")
        return _fresh_pinned(p, node, f"output of node {node.name!r}")
    return Chan(x.labels, x.cdim, x.ndim)


def _no_tensor(p: Propagation, node: fx.Node) -> Any:
    """size(), dim(), shape ... : read shapes only, do not consume channel values."""
    return None


def _getattr(p: Propagation, node: fx.Node) -> Any:
    if len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return None
    return _unknown(p, node, f"attribute {node.args[1]!r}")


# ---------------------------------------------------------------------- rule tables
_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)
_PASS_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
_MODULE_RULES: list[tuple[Any, Callable[..., Any]]] = [
    (nn.modules.conv._ConvNd, _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _batchnorm),
    (nn.modules.instancenorm._InstanceNorm, _batchnorm),
    (nn.PReLU, _prelu_module),
    (_ACT_MODULES, _passthrough_module(activation=True)),
    (_PASS_MODULES, _passthrough_module(activation=False)),
    (_POOL_MODULES, _pool_module),
    ((nn.Flatten, nn.Unflatten), _flatten_module),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), _softmax_module),
    ((nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm), _pin_module("normalises across channels")),
]

_ACT_FUNCS = [
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, torch.relu, torch.sigmoid, torch.tanh,
    F.relu_, F.leaky_relu_, F.elu_, F.hardtanh_, torch.relu_,
]
_ELEMENTWISE_FUNCS = [
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.interpolate, F.upsample,
    torch.exp, torch.abs, torch.neg, torch.clamp, torch.clip, torch.sqrt, torch.square, operator.neg,
    operator.pos, torch.nn.functional.normalize,
]
_BINARY_FUNCS = [
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
]
_POOL_FUNCS = [
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d,
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
        torch.flatten: _reshape,
        torch.reshape: _reshape,
        torch.squeeze: _reshape,
        torch.unsqueeze: _reshape,
        torch.permute: _permute,
        torch.transpose: _transpose,
        torch.split: _split,
        torch.chunk: _split,
        torch.mean: _reduce,
        torch.sum: _reduce,
        torch.amax: _reduce,
        torch.amin: _reduce,
        F.softmax: _softmax,
        F.log_softmax: _softmax,
        F.pad: _pad,
        operator.getitem: _getitem,
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
            "contiguous", "clone", "detach", "float", "half", "double", "to", "type_as", "exp", "abs",
            "neg", "clamp", "clamp_", "clip", "sqrt", "square",
        )
    },
    **{m: _binary for m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum")},
    **{m: _reduce for m in ("mean", "sum", "amax", "amin")},
    **{m: _reshape for m in ("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")},
    "permute": _permute,
    "transpose": _transpose,
    "split": _split,
    "chunk": _split,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "size": _no_tensor,
    "dim": _no_tensor,
    "numel": _no_tensor,
}
