"""``apoz`` and ``mean_activation``: channel statistics of the activations on calibration data.

- ``apoz``: Hu, Peng, Tai, Tang, "Network Trimming: A Data-Driven Neuron Pruning Approach towards
  Efficient Deep Architectures", 2016 (https://arxiv.org/abs/1607.03250). The Average Percentage
  of Zeros of a channel's post-ReLU activations; a channel that is mostly zero is unimportant.
  The score is ``1 - APoZ`` (higher = more important).
- ``mean_activation``: Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural
  Networks for Resource Efficient Inference", ICLR 2017 (https://arxiv.org/abs/1611.06440),
  the mean activation criterion: the mean ``|activation|`` of the channel.

Where the activations come from: each group lists *taps* (:class:`~slimtune.compressors._types.Tap`),
tensors of the traced graph that carry its channels along ``cdim``. A group's taps marked
``activation=True`` (ReLU-like outputs) score the channels they carry; channels that no
activation tap carries are scored from the group's other taps (for ``apoz`` exact zeros are then
counted, which before a non-linearity are rare). A channel at several positions of a tap pools
all of them; the per-tap scores are averaged over the taps used for the channel.

One pass serves every group: on the first call the taps of *all* groups of ``ctx.graph.groups``
are recorded by running the graph of ``ctx.graph.gm`` on ``ctx.model``'s own modules and weights
(:func:`bound_to`: the scores follow the model being compressed, also a working copy whose weights
moved away from the traced ones) through a :class:`torch.fx.Interpreter` that reduces each tapped tensor to
per-index counts of zeros, sums of ``|x|`` and element counts on the fly (full activations are
never kept). The statistics live in ``ctx.cache`` and serve both criteria; a tap seen later that
was not recorded triggers one more pass for the missing tensors only. The pass runs in eval mode
under ``torch.no_grad()`` and restores the training flags.

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from slimtune.compressors._types import Group, Member, Tap
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = model[0].weight.zero_(); _ = model[0].bias.copy_(torch.tensor([1.0, -1.0]))
    >>> gm = torch.fx.symbolic_trace(model)
    >>> tap = Tap("_1", 1, torch.arange(2), torch.arange(2), activation=True)
    >>> g = Group("0", 2, [Member("0", "out", torch.arange(2), torch.arange(2))], [tap])
    >>> ctx = CriterionContext(model, SimpleNamespace(gm=gm, groups={"0": g}), data=[torch.randn(4, 3)])
    >>> score_group(g, "apoz", ctx).tolist(), score_group(g, "mean_activation", ctx).tolist()
    ([1.0, 0.0], [1.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from slimtune import devices
from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import (
    eval_mode,
    iter_batches,
    mean_over_members,
    split_batch,
)
from slimtune.errors import CriterionError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group, Tap
    from slimtune.compressors.criteria._base import CriterionContext

_CACHE_KEY = "activation.stats"
_TapKey = tuple[str, int]  # (node name, cdim)


@dataclass
class _Stats:
    """Per index along a tapped tensor's channel dim: zeros, sum of |x| and element count."""

    zeros: torch.Tensor
    abs_sum: torch.Tensor
    count: torch.Tensor

    def add(self, x: torch.Tensor, cdim: int) -> None:
        x = x.detach().movedim(cdim % x.ndim, 0)
        x = x.reshape(x.shape[0], -1)
        self.zeros += (x == 0).sum(1).to("cpu", torch.float64)
        wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        self.abs_sum += x.abs().sum(1, dtype=wide).to("cpu", torch.float64)
        self.count += float(x.shape[1])

    @classmethod
    def empty(cls, n: int) -> _Stats:
        z = torch.zeros(n, dtype=torch.float64, device="cpu")
        return cls(z, z.clone(), z.clone())


@register_criterion("apoz")
def apoz(group: Group, ctx: CriterionContext) -> torch.Tensor:
    """``1 - APoZ`` per channel: the fraction of non-zero activations, mean over the group's taps.

    Args:
        group: The group to score; its ``taps`` name the tensors to watch.
        ctx: The context: ``ctx.graph`` (with ``gm``), ``ctx.data`` (calibration batches, targets
            ignored), ``ctx.max_batches``; ``ctx.cache`` keeps the statistics for the other groups.

    Raises:
        CriterionError: No data, no traced graph, or a group without taps.
    """
    return _tap_scores(group, ctx, "apoz", lambda s, pos: (s.count[pos] - s.zeros[pos], s.count[pos]))


@register_criterion("mean_activation")
def mean_activation(group: Group, ctx: CriterionContext) -> torch.Tensor:
    """Mean ``|activation|`` per channel, mean over the group's taps.

    Args:
        group: The group to score; its ``taps`` name the tensors to watch.
        ctx: As for :func:`apoz`.

    Raises:
        CriterionError: No data, no traced graph, or a group without taps.
    """
    return _tap_scores(group, ctx, "mean_activation", lambda s, pos: (s.abs_sum[pos], s.count[pos]))


def _tap_scores(
    group: Group,
    ctx: CriterionContext,
    criterion: str,
    ratio: Callable[[_Stats, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Per tap, ``sum(num) / sum(den)`` over each channel's positions; mean over taps.

    Channels seen by an activation tap are scored from activation taps only; the other taps
    score the remaining channels.
    """
    taps = _taps_of(group)
    if not taps:
        raise CriterionError(
            f"criterion {criterion!r}: group {group.name!r} has no taps (graph tensors carrying its channels); "
            f"activation criteria need a group from a torch.fx-traced graph"
        )
    stats = _ensure_stats(ctx, taps, criterion)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    covered = torch.zeros(group.size, dtype=torch.bool, device="cpu")
    for preferred in (True, False):
        new_cover = covered.clone()
        for tap in taps:
            if tap.activation != preferred or tap.positions.numel() == 0:
                continue
            scores, held = _one_tap(tap, stats[(tap.node, tap.cdim)], group, criterion, ratio)
            held &= ~covered
            if held.any():
                parts.append((scores, held))
                new_cover |= held
        covered = new_cover
    return mean_over_members(parts, group, criterion, what="taps with positions")


def _one_tap(
    tap: Tap,
    s: _Stats,
    group: Group,
    criterion: str,
    ratio: Callable[[_Stats, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores[size], held[size])`` of one tap."""
    pos = tap.positions.long()
    if int(pos.max()) >= s.count.numel():
        raise CriterionError(
            f"criterion {criterion!r}: tap {tap.node!r} of group {group.name!r} has position {int(pos.max())} "
            f"but the tensor has only {s.count.numel()} entries along dim {tap.cdim}"
        )
    num, den = ratio(s, pos)
    ch = tap.channels.long()
    num_c = torch.zeros(group.size, dtype=torch.float64, device="cpu").index_add_(0, ch, num)
    den_c = torch.zeros(group.size, dtype=torch.float64, device="cpu").index_add_(0, ch, den)
    held = den_c > 0
    return torch.where(held, num_c / den_c.clamp_min(1e-300), 0.0), held


def _taps_of(group: Group) -> list[Tap]:
    """The taps to record: the activation taps, plus the others when those miss some channels."""
    taps = list(group.taps or [])
    act = [t for t in taps if t.activation]
    if not act:
        return taps
    seen = torch.zeros(group.size, dtype=torch.bool, device="cpu")
    for t in act:
        seen[t.channels.long()] = True
    return taps if not bool(seen.all()) else act


def _ensure_stats(ctx: CriterionContext, taps: list[Tap], criterion: str) -> dict[_TapKey, _Stats]:
    """Statistics of every tap in ``taps`` (recording, in one pass, whatever is missing)."""
    stats: dict[_TapKey, _Stats] = ctx.cache.setdefault(_CACHE_KEY, {})
    needed = {(t.node, t.cdim) for t in taps}
    if needed <= stats.keys():
        return stats
    if ctx.data is None:
        raise CriterionError(
            f"criterion {criterion!r} needs calibration batches: pass data (an iterable of input batches) "
            f"to the compression"
        )
    gm = getattr(ctx.graph, "gm", None)
    if not isinstance(gm, torch.fx.GraphModule):
        raise CriterionError(
            f"criterion {criterion!r} needs the torch.fx-traced graph (ctx.graph.gm) to record activations; "
            f"the model could not be traced or no graph was given: use a weight criterion such as 'l1'"
        )
    wanted = set(needed)
    if not stats:  # first pass: record every group's taps at once
        groups = getattr(ctx.graph, "groups", None) or {}
        for g in groups.values() if isinstance(groups, Mapping) else groups:
            wanted |= {(t.node, t.cdim) for t in _taps_of(g)}
    wanted -= stats.keys()
    stats.update(_record(ctx, gm, wanted, criterion))
    return stats


class _Recorder(torch.fx.Interpreter):
    """Runs a GraphModule and folds the outputs of the wanted nodes into per-channel statistics."""

    def __init__(self, gm: torch.fx.GraphModule, wanted: dict[str, list[int]], criterion: str) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.criterion = criterion
        self.stats: dict[_TapKey, _Stats] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        dims = self.wanted.get(n.name)
        if dims:
            if not isinstance(out, torch.Tensor):
                raise CriterionError(
                    f"criterion {self.criterion!r}: tap node {n.name!r} produces {type(out).__name__}, not a Tensor"
                )
            for cdim in dims:
                key = (n.name, cdim)
                if key not in self.stats:
                    self.stats[key] = _Stats.empty(out.shape[cdim])
                self.stats[key].add(out, cdim)
        return out


def _record(
    ctx: CriterionContext, gm: torch.fx.GraphModule, wanted: set[_TapKey], criterion: str
) -> dict[_TapKey, _Stats]:
    """One pass over the calibration batches recording the statistics of ``wanted`` taps."""
    by_node: dict[str, list[int]] = {}
    for node, cdim in sorted(wanted):
        by_node.setdefault(node, []).append(cdim)
    names = {n.name for n in gm.graph.nodes}
    unknown = sorted(set(by_node) - names)
    if unknown:
        raise CriterionError(f"criterion {criterion!r}: tap node(s) {unknown} are not nodes of the traced graph")
    gm = bound_to(gm, ctx.model)
    rec = _Recorder(gm, by_node, criterion)
    device = devices.model_device(ctx.model)
    with eval_mode(ctx.model, gm), torch.no_grad():
        for batch in iter_batches(ctx, criterion):
            args, _ = split_batch(batch)
            rec.run(*devices.move(args, device))
    missing = sorted(set(wanted) - rec.stats.keys())
    if missing:
        raise CriterionError(f"criterion {criterion!r}: tap node(s) {missing} were not executed by the graph")
    return rec.stats


def bound_to(gm: torch.fx.GraphModule, model: torch.nn.Module) -> torch.fx.GraphModule:
    """The graph of ``gm`` running ``model``'s own modules and tensors.

    A graph is traced from one model; the training compressors score the channels of a working copy
    (AGP updates, ADMM's projections, lottery rounds), whose weights have moved. The graph's modules
    and parameters are looked up again in ``model`` by name (its masked weights, its hooks), so the
    activations are the copy's. Nodes that refer to nothing in ``model`` and feed nothing (the shape
    guards of an exported program) are dropped; when ``model`` lacks something the graph needs, the
    graph stays as it is.
    """
    graph = torch.fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    graph._codegen = gm.graph._codegen
    for node in list(graph.nodes):
        if node.op == "call_module" and not node.users:
            try:
                model.get_submodule(str(node.target))
            except AttributeError:
                graph.erase_node(node)
    try:
        return torch.fx.GraphModule(model, graph, type(gm).__name__)
    except (AttributeError, RuntimeError):
        return gm
