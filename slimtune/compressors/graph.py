"""Dependency graph of a model: prunable layers and the channel groups that must be pruned together.

:func:`trace` captures the model's forward with a frontend (``torch.fx`` where it traces,
``torch.export`` where it does not: see :mod:`slimtune.compressors.frontends`), and follows every
channel from the layer that produces it to every layer that uses it (see ``_propagate.py`` for the
rules and ``handlers/`` for the layers). The result is a :class:`ModelGraph`: the groups of coupled
channels (residual additions merge producers; concatenations give consumers channels of several
groups; depthwise and grouped convolutions pass channels through; flatten → linear maps a channel
to a block of features; attention heads go whole, with the heads of grouped-query attention shared
by their group of query heads; a transformer's residual stream is one group through its
embeddings, norms and residual adds), the shapes of every layer, and the attributes the forward
reads as channel counts (bound so the smaller model keeps them in step).

Nothing is dropped silently: :meth:`ModelGraph.summary` gives each group's reason when it cannot
be pruned, :meth:`ModelGraph.layer_report` each Conv/Linear/Embedding that sits in no prunable group
and why, and :meth:`ModelGraph.coverage` the share of Conv/Linear parameters that can be pruned.
A model no frontend can capture falls back to leaf layers only (unstructured pruning), with a
warning naming the module and op that failed.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> from slimtune.examples.models import resnet20
    >>> graph = trace(resnet20(), torch.randn(1, 3, 32, 32))
    >>> g = graph.groups["layer1.0.conv1"]
    >>> graph.frontend, g.size, g.layers
    ('fx', 16, ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.conv2'])
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from slimtune.compressors._inputs import positional_inputs
from slimtune.compressors._propagate import Propagation, shape_of
from slimtune.compressors._types import Group, LayerInfo, Member, Tap
from slimtune.compressors.frontends import FRONTENDS, ModelFailsError, capture
from slimtune.compressors.handlers import get_tensor, handler_for, member_handler
from slimtune.errors import ArgumentError, TraceError

if TYPE_CHECKING:
    import pandas as pd

    from slimtune.compressors.plan import CompressionPlan

_COUNTED_KINDS = ("conv", "convT", "linear", "attention")  # the layers coverage counts


@dataclass
class Binding:
    """An attribute the forward reads as a channel count (``num_heads``, split sizes, slice bounds).

    After pruning it is set to the kept positions among ``parts`` divided by ``unit`` (entry
    ``index`` of a list attribute when given).
    """

    layer: str
    attr: str
    unit: int = 1
    index: int | None = None
    total: int = 0
    parts: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (group, positions, channels)


class ModelGraph:
    """What :func:`trace` learned about a model.

    Attributes:
        model: The traced model.
        gm: A runnable ``torch.fx.GraphModule`` whose node names are the taps' (the fx graph, or the
            ``torch.export`` program as a module); None when tracing failed.
        groups: Every channel group by name, prunable or not (see :class:`Group`).
        layers: Every layer with a handler (Conv, Linear, Embedding, norms, attention) with its
            shapes (see :class:`LayerInfo`).
        frontend: ``fx`` or ``export`` (None when tracing failed).
        bindings: Attributes set from the kept channel counts when the model is resized.
        compute_macs: ``{node: (module, MACs per sample, heads)}`` of products outside any layer
            (attention's QKᵀ and AV) whose cost scales with a group's heads (see ``Group.computes``).
        trace_error: The reason tracing failed (names the module or op), or None.
        note: What the frontends reported (e.g. why fx was not used).
        example_inputs: The inputs the model was traced with.
        products: ``{node: {layer, kind, heads, operands}}`` of those products (``kind``
            ``matmul`` or ``sdpa``; each operand's traced shape and the dim of its heads), for the
            latency table.
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule | None,
        groups: dict[str, Group],
        layers: dict[str, LayerInfo],
        trace_error: str | None = None,
        frontend: str | None = None,
        bindings: list[Binding] | None = None,
        compute_macs: dict[str, tuple[str, float, int]] | None = None,
        note: str = "",
    ) -> None:
        self.model = model
        self.gm = gm
        self.groups = groups
        self.layers = layers
        self.trace_error = trace_error
        self.frontend = frontend
        self.bindings = bindings or []
        self.compute_macs = compute_macs or {}
        self.note = note
        self.example_inputs: tuple[Any, ...] | None = None
        self.products: dict[str, dict[str, Any]] = {}

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
        """One row per group: name, size, blocks, prunable, reason (op, node and module), member layers."""
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

    def layer_report(self) -> pd.DataFrame:
        """One row per Conv/Linear/Embedding/norm/attention layer of the model, reached or not.

        Columns: ``layer``, ``type``, ``calls`` (0: the forward never called it on the example
        inputs), ``params``, ``out`` and ``in`` (the prunable group its outputs / inputs belong to,
        empty when none), ``reason`` (why a dimension cannot be pruned).
        """
        import pandas as pd

        where: dict[tuple[str, str], list[Group]] = defaultdict(list)
        for g in self.groups.values():
            for m in g.members:
                where[(m.layer, m.role)].append(g)
        rows = []
        for name, module in self.model.named_modules():
            h = handler_for(module)
            if h is None:
                continue
            info = self.layers.get(name)
            row: dict[str, Any] = {
                "layer": name,
                "type": type(module).__name__,
                "calls": info.calls if info else 0,
                "params": sum(p.numel() for p in module.parameters()),
                "out": "",
                "in": "",
                "reason": "",
            }
            reasons = []
            for col, roles in (("out", ("out", "dw", "norm", "mha")), ("in", ("in",))):
                gs = [g for r in roles for g in where.get((name, r), [])]
                ok = [g.name for g in gs if g.prunable]
                row[col] = ", ".join(dict.fromkeys(ok))
                reasons += [g.reason for g in gs if not g.prunable and g.reason]
            if info is None:
                reasons.append("not called by the forward on the example inputs")
            row["reason"] = "; ".join(dict.fromkeys(reasons))
            rows.append(row)
        return pd.DataFrame(rows, columns=["layer", "type", "calls", "params", "out", "in", "reason"])

    def explain(self) -> list[str]:
        """Lines saying how the model was captured and what cannot be pruned, and why.

        One line for the frontend (and why fx was not used), one per unprunable group with its
        reason, one per Conv/Linear/Embedding layer that sits in no prunable group, and the coverage.
        """
        if not self.traced:
            return [f"the model could not be traced ({self.trace_error}): only unstructured pruning is possible"]
        lines = [
            f"traced with {self.frontend}"
            + (f" ({self.note})" if self.note else "")
            + f": {len(self.prunable_groups())} of {len(self.groups)} channel groups prunable, "
            f"coverage {self.coverage():.2f} of the Conv/Linear weights"
        ]
        for g in self.groups.values():
            if not g.prunable:
                lines.append(f"group {g.name!r} ({g.size} channels) cannot be pruned: {g.reason}")
        report = self.layer_report()
        for _, row in report.iterrows():
            kind = getattr(handler_for(self.model.get_submodule(row["layer"])), "kind", "")
            if not row["out"] and not row["in"] and kind in _COUNTED_KINDS + ("embedding",):
                why = row["reason"] or "its channels reach no prunable group"
                lines.append(f"layer {row['layer']!r} ({row['type']}) is in no prunable group: {why}")
        return lines

    def coverage(self) -> float:
        """Share of the Conv/Linear weights (Hugging Face ``Conv1D`` and attention projections included)
        in prunable groups: a layer counts when its outputs or its inputs are in a prunable group
        (it shrinks with it)."""
        total = covered = 0.0
        prunable_roles: dict[str, set[str]] = defaultdict(set)
        for g in self.prunable_groups():
            for m in g.members:
                prunable_roles[m.layer].add(m.role)
        inside: set[int] = set()
        for name, module in self.model.named_modules():
            h = handler_for(module)
            if h is None or h.kind not in _COUNTED_KINDS or id(module) in inside:
                continue
            if h.kind == "attention":
                inside.update(id(m) for m in module.modules())
            n = sum(p.numel() for p in module.parameters())
            total += n
            if prunable_roles.get(name):
                covered += n
        return covered / total if total else 1.0

    # ------------------------------------------------------------------ plan arithmetic
    def channels_removed(self, plan: CompressionPlan | dict[str, float]) -> dict[str, int]:
        """Number of channels each group loses under ``plan`` (or ``{group: sparsity}``); a plan's
        ``channel_multiple`` rounds the kept counts as :func:`~slimtune.compressors.compress` does."""
        sparsities = plan if isinstance(plan, dict) else plan.sparsities()
        out = {}
        for name, s in sparsities.items():
            g = self.groups.get(name)
            if g is not None and g.prunable:
                out[name] = g.n_prune(float(s)) if isinstance(plan, dict) else plan.n_prune(g)
        return out

    def lost_positions(self, plan: CompressionPlan | dict[str, float]) -> dict[tuple[str, str], float]:
        """``{(layer, role): positions removed}`` under the plan's channel pruning (counts only)."""
        if not isinstance(plan, dict) and plan.granularity != "channel":
            return {}
        lost: dict[tuple[str, str], float] = defaultdict(float)
        for name, n in self.channels_removed(plan).items():
            g = self.groups[name]
            for m in g.members:
                lost[(m.layer, m.role)] += g.lost(m, n)
        return dict(lost)

    def product_heads(self, plan: CompressionPlan | dict[str, float]) -> dict[str, int]:
        """Heads each product outside the layers (attention's QKᵀ, AV) keeps under the plan."""
        kept = {node: info["heads"] for node, info in self.products.items()}
        if not isinstance(plan, dict) and plan.granularity != "channel":
            return kept
        for name, n in self.channels_removed(plan).items():
            g = self.groups[name]
            for m in g.computes:
                node = m.role.split(":", 1)[1]
                if node in kept:
                    kept[node] -= round(g.lost(m, n))
        return kept

    def channel_counts(self, plan: CompressionPlan | dict[str, float]) -> dict[str, tuple[int, int]]:
        """(in, out) channels/features of every Conv/Linear-like layer after the plan's channel pruning.

        Counts only, no weights needed: a group losing ``n`` channels removes, in every member, the
        positions those channels occupy (``n`` times the member's positions per channel).
        """
        lost = self.lost_positions(plan)
        by_layer: dict[str, dict[str, float]] = defaultdict(dict)
        for (layer, role), n in lost.items():
            by_layer[layer][role] = n
        counts = {}
        for layer, info in self.layers.items():
            if not info.prunable:
                continue
            module = self.model.get_submodule(layer)
            h = handler_for(module)
            c = h.counts_after(module, by_layer.get(layer, {})) if h is not None else None
            if c is not None:
                counts[layer] = (int(c[0]), int(c[1]))
        return counts


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    strict: bool = False,
    frontend: str = "auto",
    check: bool = True,
) -> ModelGraph:
    """Trace ``model`` and find its prunable layers and channel dependency groups.

    Args:
        model: The model. It is not modified (its training flags are restored).
        example_inputs: One input tensor, or a tuple of positional inputs, with a batch dimension;
            moved to the model's device when elsewhere (``graph.example_inputs`` holds them moved).
        strict: Raise :class:`~slimtune.errors.TraceError` when no frontend can capture the model
            instead of falling back to leaf layers only (with a warning).
        frontend: ``auto`` (``torch.fx``, then ``torch.export``), ``fx`` or ``export``.
        check: For graphs captured by ``torch.export`` (whose sizes are literals), rebuild the model
            with every group half pruned and compare it with the masked model; a group whose
            rebuild fails or differs is made unprunable, with the error as its reason.

    Returns:
        A :class:`ModelGraph`.
    """
    if frontend not in FRONTENDS:
        raise ArgumentError(f"trace: frontend {frontend!r} is unknown; expected one of {FRONTENDS}", field="frontend")
    inputs = positional_inputs(model, example_inputs)
    with _eval_mode(model):
        try:
            cap = capture(model, inputs, frontend)
        except ModelFailsError:
            raise
        except TraceError as e:
            if strict:
                raise
            warnings.warn(
                f"{e}. Falling back to leaf layers: only unstructured pruning "
                "(granularity='unstructured') is possible for this model.",
                stacklevel=2,
            )
            return ModelGraph(model, None, {}, _layers_by_hooks(model, inputs), trace_error=str(e))
        prop = Propagation(cap)
        prop.run()
    _tie_shared_tensors(prop, model)
    groups, bindings = _build_groups(prop)
    layers = _layers_from_calls(prop)
    batch = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.ndim), 1) or 1
    compute_macs = {c.node: (c.layer, c.macs / batch, len(c.labels)) for c in prop.computes}
    products = {
        c.node: {
            "layer": c.layer,
            "kind": c.kind,
            "heads": len(c.labels),
            "operands": [[list(shape), axis] for shape, axis in c.operands],
        }
        for c in prop.computes
    }
    graph = ModelGraph(
        model,
        cap.gm,
        groups,
        layers,
        frontend=cap.frontend,
        bindings=bindings,
        compute_macs=compute_macs,
        note=cap.note,
    )
    graph.example_inputs = inputs
    graph.products = products
    if check and cap.frontend == "export" and graph.prunable_groups():
        _check(graph, inputs)
    return graph


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
    h = handler_for(module)
    prunable = h is not None and h.prunable_weights
    quantizable = prunable and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
    return LayerInfo(name=name, type=type(module).__name__, prunable=prunable, quantizable=quantizable, calls=0)


def _layers_from_calls(prop: Propagation) -> dict[str, LayerInfo]:
    layers: dict[str, LayerInfo] = {}
    model = prop.capture.model
    for name, node in prop.calls:
        info = layers.get(name) or _layer_info(name, model.get_submodule(name))
        info.calls += 1
        if info.in_shape is None:
            args = [a for a in node.all_input_nodes if shape_of(a) is not None and a.op != "get_attr"]
            info.in_shape = shape_of(args[0]) if args else None
            out = shape_of(node)
            if out is None:
                from slimtune.compressors._propagate import shapes_of

                outs = shapes_of(node)
                out = outs[0] if outs else None
            info.out_shape = out
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
        if handler_for(module) is not None:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), _eval_mode(model):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return layers


# ---------------------------------------------------------------------- shared tensors
def _tie_shared_tensors(prop: Propagation, model: nn.Module) -> None:
    """Members that slice one tensor shared by several layers (tied embeddings) go together."""
    seen: dict[tuple[int, int], np.ndarray] = {}
    for rec in prop.members:
        module = model.get_submodule(rec.layer)
        h = member_handler(module, rec.role)
        if h is None:
            continue
        for ax in h.axes(module, rec.role):
            t = get_tensor(module, ax.tensor)
            if t is None or ax.offsets != (0,):
                continue
            key = (id(t), ax.dim)
            if key in seen:
                other = seen[key]
                if len(other) == len(rec.labels):
                    prop.union(other, rec.labels)
                else:
                    prop.pin(
                        np.concatenate([other, rec.labels]),
                        f"tensor {rec.layer}.{ax.tensor} is shared by layers that use it with different channels",
                    )
            else:
                seen[key] = rec.labels


# ---------------------------------------------------------------------- groups
def _build_groups(prop: Propagation) -> tuple[dict[str, Group], list[Binding]]:
    n = len(prop.parent)

    # Members of a layer called several times hold the same parameters: unite them position-wise.
    by_member: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for rec in prop.members:
        by_member[(rec.layer, rec.role)].append(rec.labels)
    for labels_list in by_member.values():
        for other in labels_list[1:]:
            if len(other) == len(labels_list[0]):
                prop.union(labels_list[0], other)
            else:
                prop.pin(np.concatenate([labels_list[0], other]), "a layer called with different channel counts")
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
    group_of_class = {c: cfind(c) for c in np.unique(root).tolist()} if n else {}

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
    used_names: set[str] = set()
    for gid, name in group_name.items():
        unique = name if name not in used_names else f"{name}#{gid}"
        used_names.add(unique)
        groups[gid] = Group(name=unique, size=len(classes_of_group[gid]))
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
    for comp in prop.computes:
        for gid, (pos, ch) in split(comp.labels).items():
            groups[gid].computes.append(Member(comp.layer, f"macs:{comp.node}", pos, ch))  # type: ignore[arg-type]

    bindings: list[Binding] = []
    for b in prop.bindings:
        binding = Binding(b.layer, b.attr, b.unit, b.index, total=len(b.labels))
        for gid, (pos, ch) in split(b.labels).items():
            binding.parts.append((groups[gid].name, pos, ch))
        bindings.append(binding)

    _apply_blocks(prop, groups, split)
    for g in groups.values():
        _order_members(g)
        g.parts = _parts(g)
    return {g.name: g for g in groups.values()}, bindings


def _apply_blocks(prop: Propagation, groups: dict[int, Group], split: Callable[..., Any]) -> None:
    """Grouped convolutions and norms: channels pruned by the same number in each of ``blocks`` blocks."""
    for rec in prop.blocks:
        parts = split(rec.labels)
        for gid, (_pos, ch) in parts.items():
            g = groups[gid]
            if not g.prunable:
                continue
            whole = torch.arange(g.size, device=ch.device)
            contiguous = len(parts) == 1 and len(ch) == g.size and torch.equal(ch, whole)
            blocks = math.lcm(g.blocks, rec.blocks)
            if not contiguous or g.size % blocks:
                g.prunable = False
                g.reason = (
                    f"grouped layer {rec.layer!r} ({rec.blocks} groups) needs equal channel blocks "
                    "that this group's channel order cannot keep"
                )
                continue
            g.blocks = blocks


def _parts(g: Group) -> list[torch.Tensor]:
    """Channels held by the same set of members; one part when every member holds them all."""
    holders = [set(torch.unique(m.channels).tolist()) for m in g.members]
    if all(len(h) == g.size for h in holders):
        return []
    key: dict[int, tuple[int, ...]] = {c: tuple(i for i, h in enumerate(holders) if c in h) for c in range(g.size)}
    parts: dict[tuple[int, ...], list[int]] = {}
    for c in range(g.size):
        parts.setdefault(key[c], []).append(c)
    return [torch.tensor(p, dtype=torch.long, device="cpu") for p in parts.values()] if len(parts) > 1 else []


def _order_members(g: Group) -> None:
    # members are in execution order; list the producers first (stable sort keeps the rest)
    g.members.sort(key=lambda m: 0 if m.role == "out" else 1)


# ---------------------------------------------------------------------- check (export graphs)
def _check(graph: ModelGraph, inputs: tuple[Any, ...]) -> None:
    """Rebuild the model with the prunable groups half pruned; pin the groups that break it.

    An exported graph holds sizes as literals, so propagation assumes a size on a channel dim
    follows the tensor (as ``x.view(*x.shape[:-1], -1)`` does). Where the forward fixes it instead,
    the rebuilt model fails or differs from the masked one; this finds those groups and says why.
    """
    groups = graph.prunable_groups()
    error = _try_groups(graph, inputs, [g.name for g in groups])
    if error is None:
        return
    for g in groups:
        err = _try_groups(graph, inputs, [g.name])
        if err is not None:
            g.prunable = False
            g.reason = f"pruning it breaks the rebuilt model ({err}): the forward fixes a size it sets"


def _try_groups(graph: ModelGraph, inputs: tuple[Any, ...], names: list[str]) -> str | None:
    from slimtune.compressors.frontends import output_tensors
    from slimtune.compressors.plan import CompressionPlan, PruneSpec

    plan = CompressionPlan({n: PruneSpec(0.5, "l1") for n in names if graph.groups[n].n_prune(0.5) > 0})
    if not plan.prune:
        return None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masked = _pruned_copy(graph, plan, inputs, speedup=False).eval()
            small = _pruned_copy(graph, plan, inputs, speedup=True).eval()
            ym, ys = output_tensors(masked(*inputs)), output_tensors(small(*inputs))
    except Exception as e:  # noqa: BLE001 - the reason of the pin
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if len(ym) != len(ys) or any(a.shape != b.shape for a, b in zip(ym, ys)):
        return "the rebuilt model's outputs have other shapes"
    for a, b in zip(ym, ys):
        if a.is_floating_point():
            scale = a.abs().max().clamp_min(1e-6)
            if ((a - b).abs().max() / scale).item() > 1e-3:
                gap = ((a - b).abs().max() / scale).item()
                return f"the rebuilt model differs from the masked one by {gap:.2g} (relative)"
    return None


def _pruned_copy(graph: ModelGraph, plan: CompressionPlan, inputs: tuple[Any, ...], speedup: bool) -> nn.Module:
    """What ``compress(graph.model, plan, inputs, speedup=speedup, graph=graph)`` returns for a one-shot
    channel plan without quantization, from the steps below ``compress`` (which traces, so sits above)."""
    from slimtune.compressors.criteria import CriterionContext
    from slimtune.compressors.pruning import clone_model, make_permanent, select_channels

    model = clone_model(graph.model)
    plan.validate(graph)
    pruned = select_channels(graph, plan, CriterionContext(model, graph, None, None, None))
    make_permanent(model)
    apply_channel_selection(model, graph, pruned, inputs, speedup)
    return model


def apply_channel_selection(
    model: nn.Module, graph: ModelGraph, pruned: Mapping[str, torch.Tensor], inputs: Any, speedup: bool
) -> None:
    """Prune ``{group: channel ids}`` from ``model`` in place: rebuilt smaller (and checked on
    ``inputs``) with ``speedup``, else masked to zero at its full shapes."""
    from slimtune.compressors.pruning import apply_channel_masks
    from slimtune.compressors.resize import apply_speedup, check_forward

    if speedup:
        apply_speedup(model, graph, dict(pruned))
        check_forward(model, inputs)
    else:
        apply_channel_masks(model, graph, dict(pruned))
