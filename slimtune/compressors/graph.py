"""Dependency graph of a model: prunable layers and the channel groups that must be pruned together.

:func:`trace` runs the model symbolically with ``torch.fx``, propagates the example inputs' shapes
through it and follows every channel from the layer that produces it to every layer that uses it
(see ``_propagate.py`` for the rules). The result is a :class:`ModelGraph`: the groups of coupled
channels (residual additions merge producers; concatenations give consumers channels of several
groups; depthwise and grouped convolutions pass channels through; flatten → linear maps a channel
to a block of features) and the shapes of every layer.

Models that ``torch.fx`` cannot trace (data-dependent control flow, unsupported Python) fall back
to a graph without groups: the error names the module being traced, a warning says so, and only
unstructured pruning of the leaf layers is possible (``granularity="unstructured"``).

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> from slimtune.examples.models import resnet20
    >>> graph = trace(resnet20(), torch.randn(1, 3, 32, 32))
    >>> g = graph.groups["layer1.0.conv1"]
    >>> g.size, g.layers
    (16, ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.conv2'])
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from slimtune.compressors._propagate import Propagation
from slimtune.compressors._types import Group, LayerInfo, Member, Tap
from slimtune.errors import TraceError

if TYPE_CHECKING:
    import pandas as pd

    from slimtune.compressors.plan import CompressionPlan

_PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_RECORDED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


class ModelGraph:
    """What :func:`trace` learned about a model.

    Attributes:
        model: The traced model (the graph holds references to its modules).
        gm: The ``torch.fx.GraphModule`` (shares the model's submodules); None when tracing failed.
        groups: Every channel group by name, prunable or not (see :class:`Group`).
        layers: Every leaf Conv/Linear/BatchNorm layer with its shapes (see :class:`LayerInfo`).
        traced: False when fx tracing failed and the graph fell back to leaf layers only.
        trace_error: The reason tracing failed (names the module or op), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule | None,
        groups: dict[str, Group],
        layers: dict[str, LayerInfo],
        trace_error: str | None = None,
    ) -> None:
        self.model = model
        self.gm = gm
        self.groups = groups
        self.layers = layers
        self.trace_error = trace_error

    @property
    def traced(self) -> bool:
        return self.gm is not None

    # ------------------------------------------------------------------ queries
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def prunable_layers(self) -> list[str]:
        """Leaf Conv/Linear layers whose weights unstructured pruning can act on."""
        return [n for n, info in self.layers.items() if info.prunable]

    def quantizable_layers(self) -> list[str]:
        return [n for n, info in self.layers.items() if info.quantizable]

    def prunable_names(self, granularity: str = "channel") -> list[str]:
        """Names a plan may list: prunable groups (``channel``) or prunable layers (``unstructured``)."""
        if granularity == "unstructured":
            return self.prunable_layers()
        return [g.name for g in self.prunable_groups()]

    def summary(self) -> pd.DataFrame:
        """One row per group: name, size, blocks, prunable, reason, member layers."""
        import pandas as pd

        rows = [
            {
                "group": g.name,
                "channels": g.size,
                "blocks": g.blocks,
                "prunable": g.prunable,
                "layers": ", ".join(g.layers),
                "reason": g.reason or "",
            }
            for g in self.groups.values()
        ]
        return pd.DataFrame(rows, columns=["group", "channels", "blocks", "prunable", "layers", "reason"])

    # ------------------------------------------------------------------ plan arithmetic
    def channels_removed(self, plan: CompressionPlan | dict[str, float]) -> dict[str, int]:
        """Number of channels each group loses under ``plan`` (or ``{group: sparsity}``)."""
        sparsities = plan if isinstance(plan, dict) else plan.sparsities()
        out = {}
        for name, s in sparsities.items():
            g = self.groups.get(name)
            if g is not None and g.prunable:
                out[name] = g.n_prune(float(s))
        return out

    def channel_counts(self, plan: CompressionPlan | dict[str, float]) -> dict[str, tuple[int, int]]:
        """(in_channels, out_channels) of every Conv/Linear layer after the plan's channel pruning.

        Counts only, no weights needed: a group losing ``n`` channels removes, in every member, the
        positions those channels occupy (``n`` times the member's positions per channel).
        """
        if not isinstance(plan, dict) and plan.granularity != "channel":
            removed: dict[str, int] = {}
        else:
            removed = self.channels_removed(plan)
        lost: dict[tuple[str, str], float] = defaultdict(float)
        for name, n in removed.items():
            g = self.groups[name]
            for m in g.members:
                lost[(m.layer, m.role)] += n * len(m.positions) / g.size
        counts = {}
        for layer, info in self.layers.items():
            if not info.prunable:
                continue
            module = self.model.get_submodule(layer)
            if isinstance(module, nn.Linear):
                cin, cout = module.in_features, module.out_features
            else:
                cin, cout = module.in_channels, module.out_channels
            if (layer, "dw") in lost:
                cout_new = cout - round(lost[(layer, "dw")])
                cin_new = cout_new * cin // cout
            else:
                cin_new = cin - round(lost.get((layer, "in"), 0.0))
                cout_new = cout - round(lost.get((layer, "out"), 0.0))
            counts[layer] = (int(cin_new), int(cout_new))
        return counts


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    strict: bool = False,
) -> ModelGraph:
    """Trace ``model`` and find its prunable layers and channel dependency groups.

    Args:
        model: The model. It is not modified (its training flags are restored).
        example_inputs: One input tensor, or a tuple of them, with a batch dimension.
        strict: Raise :class:`~slimtune.errors.TraceError` when fx cannot trace the model instead
            of falling back to leaf layers only (with a warning).

    Returns:
        A :class:`ModelGraph`.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        gm = _symbolic_trace(model)
    except TraceError as e:
        if strict:
            raise
        warnings.warn(
            f"{e}. Falling back to leaf layers: only unstructured pruning "
            "(granularity='unstructured') is possible for this model.",
            stacklevel=2,
        )
        return ModelGraph(model, None, {}, _layers_by_hooks(model, inputs), trace_error=str(e))
    with torch.no_grad(), _eval_mode(model):
        try:
            ShapeProp(gm).propagate(*inputs)
        except Exception as e:  # the model itself failed on the example inputs
            raise TraceError(f"running the model on the example inputs failed: {type(e).__name__}: {e}") from e
    prop = Propagation(gm)
    prop.run()
    groups = _build_groups(prop)
    layers = _layers_from_graph(gm, prop)
    return ModelGraph(model, gm, groups, layers)


# ---------------------------------------------------------------------- tracing
class _NamingTracer(fx.Tracer):
    """An fx tracer that remembers which module it is inside, to name it when tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except NameError:
            name = type(m).__name__
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = tracer.stack[-1] if tracer.stack else "<root>"
        owner = model if where == "<root>" else None
        if owner is None:
            try:
                owner = model.get_submodule(where)
            except AttributeError:
                owner = None
        kind = type(owner).__name__ if owner is not None else "?"
        raise TraceError(
            f"torch.fx cannot trace module {where!r} ({kind}): {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _eval_mode:
    """Context manager: put every module in eval mode, restore each one's flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


# ---------------------------------------------------------------------- layers
def _layer_info(name: str, module: nn.Module) -> LayerInfo:
    prunable = isinstance(module, _PRUNABLE_TYPES) and not isinstance(module, nn.modules.conv._ConvTransposeNd)
    return LayerInfo(name=name, type=type(module).__name__, prunable=prunable, quantizable=prunable, calls=0)


def _layers_from_graph(gm: fx.GraphModule, prop: Propagation) -> dict[str, LayerInfo]:
    from slimtune.compressors._propagate import _shape

    layers: dict[str, LayerInfo] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = prop.modules[str(node.target)]
        if not isinstance(module, _RECORDED_TYPES):
            continue
        name = str(node.target)
        info = layers.get(name) or _layer_info(name, module)
        info.calls += 1
        if info.in_shape is None:
            info.in_shape = _shape(node.args[0]) if node.args else None
            info.out_shape = _shape(node)
        layers[name] = info
    return layers


def _layers_by_hooks(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, LayerInfo]:
    layers: dict[str, LayerInfo] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            info = layers.setdefault(name, _layer_info(name, module))
            info.calls += 1
            if info.in_shape is None and args and isinstance(args[0], torch.Tensor):
                info.in_shape = tuple(args[0].shape)
                info.out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        return fn

    for name, module in model.named_modules():
        if isinstance(module, _RECORDED_TYPES):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), _eval_mode(model):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return layers


# ---------------------------------------------------------------------- groups
def _build_groups(prop: Propagation) -> dict[str, Group]:
    n = len(prop.parent)
    root = np.fromiter((prop.find(e) for e in range(n)), dtype=np.int64, count=n)

    # Members of a layer called several times hold the same parameters: unite them position-wise.
    by_member: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for rec in prop.members:
        by_member[(rec.layer, rec.role)].append(rec.labels)
    for labels_list in by_member.values():
        for other in labels_list[1:]:
            if len(other) == len(labels_list[0]):
                prop.union(labels_list[0], other)
    root = np.fromiter((prop.find(e) for e in range(n)), dtype=np.int64, count=n)

    # Classes (union-find roots) are grouped when they come from one source: a group is what
    # one sparsity applies to.
    class_parent: dict[int, int] = {}

    def cfind(c: int) -> int:
        while class_parent.setdefault(c, c) != c:
            class_parent[c] = class_parent[class_parent[c]]
            c = class_parent[c]
        return c

    for src in prop.sources:
        roots = np.unique(root[src.first : src.first + src.size])
        r0 = cfind(int(roots[0])) if len(roots) else None
        for r in roots[1:].tolist():
            ra, rb = cfind(r0), cfind(r)
            if ra != rb:
                class_parent[max(ra, rb)] = min(ra, rb)
    group_of_class = {c: cfind(c) for c in np.unique(root).tolist()}

    # class order inside a group: by (source order, index) of its earliest element (= its root,
    # since union keeps the oldest element as root and sources are numbered in execution order)
    classes_of_group: dict[int, list[int]] = defaultdict(list)
    for c in sorted(group_of_class):
        classes_of_group[group_of_class[c]].append(c)
    channel_index = {}
    for classes in classes_of_group.values():
        for i, c in enumerate(classes):
            channel_index[c] = i

    pinned_reason: dict[int, str] = {}
    for e, reason in prop.pinned.items():
        pinned_reason.setdefault(group_of_class[int(root[e])], reason)

    # name each group after its first producing layer
    group_name: dict[int, str] = {}
    for src in prop.sources:
        if src.layer is None:
            continue
        gid = group_of_class[int(root[src.first])]
        group_name.setdefault(gid, src.layer)

    groups: dict[int, Group] = {}
    for gid, name in group_name.items():
        groups[gid] = Group(name=name, size=len(classes_of_group[gid]))
        if gid in pinned_reason:
            groups[gid].prunable = False
            groups[gid].reason = pinned_reason[gid]

    def split(labels: np.ndarray) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        roots = root[labels]
        gids = np.fromiter((group_of_class[int(r)] for r in roots), dtype=np.int64, count=len(roots))
        chans = np.fromiter((channel_index[int(r)] for r in roots), dtype=np.int64, count=len(roots))
        out = {}
        for gid in np.unique(gids).tolist():
            if gid not in groups:
                continue
            sel = np.nonzero(gids == gid)[0]
            out[gid] = (torch.from_numpy(sel.astype(np.int64)), torch.from_numpy(chans[sel]))
        return out

    for (layer, role), labels_list in by_member.items():
        for gid, (pos, ch) in split(labels_list[0]).items():
            groups[gid].members.append(Member(layer, role, pos, ch))  # type: ignore[arg-type]
    seen_taps = set()
    for tap in prop.taps:
        if tap.node in seen_taps:
            continue
        seen_taps.add(tap.node)
        for gid, (pos, ch) in split(tap.labels).items():
            groups[gid].taps.append(Tap(tap.node, tap.cdim, pos, ch, tap.activation))

    _apply_blocks(prop, groups, split)
    for g in groups.values():
        _order_members(g)
    return {g.name: g for g in groups.values()}


def _apply_blocks(prop: Propagation, groups: dict[int, Group], split: Callable[..., Any]) -> None:
    """Grouped convolutions: channels pruned by the same number in each of ``blocks`` blocks."""
    for rec in prop.blocks:
        parts = split(rec.labels)
        for gid, (pos, ch) in parts.items():
            g = groups[gid]
            if not g.prunable:
                continue
            contiguous = len(parts) == 1 and len(ch) == g.size and torch.equal(ch, torch.arange(g.size))
            blocks = math.lcm(g.blocks, rec.blocks)
            if not contiguous or g.size % blocks:
                g.prunable = False
                g.reason = (
                    f"grouped conv {rec.layer!r} ({rec.blocks} groups) needs equal channel blocks "
                    "that this group's channel order cannot keep"
                )
                continue
            g.blocks = blocks


def _order_members(g: Group) -> None:
    # members are in execution order; list the producers first (stable sort keeps the rest)
    g.members.sort(key=lambda m: 0 if m.role == "out" else 1)
