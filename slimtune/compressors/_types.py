"""Value types of the dependency graph: layers, groups, members and taps.

A *group* is a set of channels that must be removed together, wherever they appear: the output
channels of the layers that produce them, the batch-norm entries that follow, the input channels
of the layers that consume them, depthwise convolutions they pass through. Residual additions
merge the channels of several producers into one group; concatenation gives each consumer input
channels from several groups; a flatten repeats each channel over the spatial positions.

Each group channel ``c`` appears at one or more *positions* along a parameter dimension of a
member layer; a :class:`Member` lists those positions and, for each, the group channel it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

Role = str
"""How a member layer holds a group's channels; its handler (:mod:`slimtune.compressors.handlers`)
says which tensors and dims that is (:meth:`~slimtune.compressors.handlers.LayerHandler.axes`).

- ``out``: a layer producing them (Conv/Linear: ``weight`` dim 0 and ``bias``; Embedding: ``weight``
  dim 1; Hugging Face Conv1D and ConvTranspose: ``weight`` dim 1).
- ``in``: a layer consuming them (Conv/Linear: ``weight`` dim 1).
- ``norm``: a norm following them (its ``weight``, ``bias`` and running statistics).
- ``dw``: a grouped or depthwise Conv the channels pass through: ``weight`` dim 0, ``bias``
  and, for grouped convs, the matching input channels inside each group; ``groups`` changes.
- ``mha``: an ``nn.MultiheadAttention`` whose input, heads and output they are.
- ``param:<attr>:<dim>``: a parameter used directly by the forward (a class token, a layer scale).
"""


@dataclass
class Member:
    """One parameterised layer in which a group's channels appear.

    Args:
        layer: Qualified module name (as in ``model.named_modules()``).
        role: See :data:`Role`.
        positions: Indices along the role's parameter dimension (``out``, ``dw``: output channel;
            ``in``: input channel/feature; ``norm``: BN entry).
        channels: For each position, the group channel held there (same length as ``positions``).
    """

    layer: str
    role: Role
    positions: torch.Tensor
    channels: torch.Tensor

    def positions_of(self, group_channels: torch.Tensor) -> torch.Tensor:
        """Positions that hold any of ``group_channels`` (a 1-D long tensor)."""
        hit = torch.isin(self.channels, group_channels.to(self.channels.device))
        return self.positions[hit]


@dataclass
class Tap:
    """A tensor of the traced graph in which a group's channels appear (for activation criteria).

    Args:
        node: Name of the ``torch.fx`` node producing the tensor.
        cdim: The tensor dimension that holds the channels.
        positions: Indices along ``cdim``.
        channels: Group channel of each position.
        activation: True when the node is a non-linearity (ReLU-like) output.
    """

    node: str
    cdim: int
    positions: torch.Tensor
    channels: torch.Tensor
    activation: bool = False


@dataclass
class Group:
    """Channels that must be pruned together.

    Args:
        name: Stable, readable name: the first producing layer in execution order.
        size: Number of group channels.
        members: Every layer where the channels appear.
        taps: Graph tensors where the channels appear.
        blocks: The channels are split into ``blocks`` contiguous equal blocks and pruning removes
            the same number from each block (grouped convolutions). 1 means no constraint.
        prunable: False when some use of the channels cannot be resized (model output, reshape
            that mixes channels, layer norm ...); ``reason`` says which.
        reason: Why the group is not prunable.
        computes: Products outside any layer (attention's QKᵀ and AV) whose MACs scale with the
            group's channels: ``layer`` is the module running them, ``role`` ``macs:<node>``.
        parts: When the group's members each hold only some of its channels (the pieces of a
            split, the inputs of a concatenation), the channel ids of each part (channels held by
            the same members). Pruning takes from each part its share of the channels
            (:meth:`allocate`), so that the counts of every layer follow from the plan alone.
            Empty: one part.
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)
    blocks: int = 1
    prunable: bool = True
    reason: str | None = None
    computes: list[Member] = field(default_factory=list)
    parts: list[torch.Tensor] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """Names of the member layers, in order, without repeats."""
        seen: dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.layer, None)
        return list(seen)

    def members_with(self, role: Role) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def n_prune(self, sparsity: float) -> int:
        """Number of channels removed at ``sparsity``: ``sparsity × size`` rounded half up, the
        same number in every block; at least one channel per block always stays.
        """
        per_block = self.size // self.blocks
        n = math.floor(sparsity * per_block + 0.5)  # half rounds up (Python's round() goes to even)
        n = max(0, min(n, per_block - 1))
        return n * self.blocks

    def allocate(self, n: int) -> list[int]:
        """How many of ``n`` removed channels each part loses: its share, rounded by largest
        remainder (ties to the earlier part), never its last channel."""
        if len(self.parts) <= 1 or self.blocks > 1:
            return [n]
        sizes = [len(p) for p in self.parts]
        quotas = [n * s / self.size for s in sizes]
        alloc = [min(math.floor(q), s - 1) for q, s in zip(quotas, sizes)]
        order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
        left = n - sum(alloc)
        while left > 0:
            moved = False
            for i in order:
                if left and alloc[i] < sizes[i] - 1:
                    alloc[i] += 1
                    left -= 1
                    moved = True
            if not moved:
                break
        return alloc

    def weights(self, member: Member) -> list[float]:
        """Per part, the member's positions per channel of that part (its lost positions are
        ``sum(allocate(n)[i] * weights[i])``)."""
        if len(self.parts) <= 1 or self.blocks > 1:
            return [len(member.positions) / self.size]
        part_of = torch.empty(self.size, dtype=torch.long, device="cpu")
        for i, p in enumerate(self.parts):
            part_of[p] = i
        counts = torch.bincount(part_of[member.channels.long()], minlength=len(self.parts))
        return [c / len(p) for c, p in zip(counts.tolist(), self.parts)]

    def lost(self, member: Member, n: int) -> float:
        """Positions ``member`` loses when the group loses ``n`` channels."""
        return sum(a * w for a, w in zip(self.allocate(n), self.weights(member)))


@dataclass
class LayerInfo:
    """A leaf layer of the model with the shapes seen when tracing the example inputs.

    Args:
        name: Qualified module name.
        type: Module class name (``Conv2d``, ``Linear``, ``BatchNorm2d`` ...).
        in_shape: Shape of the layer's input for the example inputs (batch dim included).
        out_shape: Shape of the layer's output.
        prunable: Has a weight that pruning can act on (Conv/Linear).
        quantizable: Can carry a fake-quantizer (Conv/Linear).
        calls: How many times the module is called in one forward pass.
    """

    name: str
    type: str
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    prunable: bool = False
    quantizable: bool = False
    calls: int = 1
