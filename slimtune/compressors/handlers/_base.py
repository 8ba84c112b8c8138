"""The layer-handler interface: what slimtune knows about one kind of layer, in one place.

A handler answers, for every module it :meth:`~LayerHandler.matches`:

- **channel flow** (:meth:`~LayerHandler.propagate`): given the tracked channels of the layer's
  inputs, which elements its output holds, which of its tensors hold which elements (*members*,
  one per *role*), and which constraints it adds (equal blocks, pins with a reason);
- **where a role's channels live** (:meth:`~LayerHandler.axes`): tensor, dimension and offsets,
  which masking, slicing and the weight criteria read;
- **slicing** (:meth:`~LayerHandler.resize`): remove positions from its tensors and update the
  attributes its ``forward`` reads (``in_features``, ``num_heads`` ...), so the smaller model is the
  user's own module, resized;
- **masked semantics** (:meth:`~LayerHandler.masked_forward`): for layers whose output depends on
  how many channels there are (layer norms), how the masked model computes what the smaller one
  does;
- **cost**: MACs of a call (:meth:`~LayerHandler.macs`), how they and the tensors shrink
  (:meth:`~LayerHandler.shapes_after`, :meth:`~LayerHandler.mac_ratio`), and, for Conv/Linear-like
  layers, the (in, out) counts and the standalone spec the latency table measures.

A new layer kind is one new module with a handler registered by :func:`register_handler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.errors import DuplicateNameError

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall

Removed = Mapping[str, torch.Tensor]
"""``{role: positions removed along that role}`` for one layer."""


@dataclass(frozen=True)
class Axis:
    """Where a role's channel positions live in one tensor of a layer.

    Args:
        tensor: Attribute path of the tensor, relative to the layer (``weight``, ``out_proj.bias``).
        dim: The tensor dimension that holds the positions.
        offsets: The positions repeat at each of these offsets along ``dim`` (packed q/k/v rows).
        score: Read by the weight criteria (the layer's main weight), not only sliced.
    """

    tensor: str
    dim: int
    offsets: tuple[int, ...] = (0,)
    score: bool = True

    def indices(self, positions: torch.Tensor) -> torch.Tensor:
        pos = positions.long()
        if self.offsets == (0,):
            return pos
        return torch.cat([pos + o for o in self.offsets])


def get_tensor(module: nn.Module, path: str) -> torch.Tensor | None:
    """The tensor at attribute ``path`` (``a.b.weight``) of ``module``, or None."""
    owner, _, attr = path.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    t = getattr(sub, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def set_tensor(module: nn.Module, path: str, value: torch.Tensor, cache: dict[int, torch.Tensor] | None = None) -> None:
    """Replace the tensor at ``path``, keeping it a Parameter (with its ``requires_grad``) or a buffer.

    ``cache`` maps ``id(old tensor)`` to its replacement so that a tensor shared by several layers
    (tied embeddings) is replaced by one shared tensor.
    """
    owner, _, attr = path.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    old = getattr(sub, attr)
    if cache is not None and id(old) in cache:
        new = cache[id(old)]
    elif isinstance(old, nn.Parameter):
        new = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
    else:
        new = value.contiguous()
    if cache is not None:
        cache[id(old)] = new
    setattr(sub, attr, new)


def is_parameter(module: nn.Module, path: str) -> bool:
    """Whether ``path`` names a parameter of ``module`` (also one re-parametrised by a prune mask)."""
    owner, _, attr = path.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    return attr in sub._parameters or f"{attr}_orig" in sub._parameters


def keep_indices(n: int, drop: torch.Tensor | None, device: torch.device | str | None = None) -> torch.Tensor:
    """Indices ``0..n-1`` without ``drop``, on ``device`` (the device of the tensor they will index;
    default the CPU, where the graph's positions live).

    Example:
        >>> keep_indices(5, torch.tensor([1, 3])).tolist()
        [0, 2, 4]
    """
    keep = torch.ones(n, dtype=torch.bool, device="cpu")
    if drop is not None and drop.numel():
        keep[drop.long().cpu()] = False
    kept = keep.nonzero().flatten()
    return kept if device is None else kept.to(device)


class LayerHandler:
    """Base class of the layer handlers; subclasses set :attr:`types` and override what differs.

    Attributes:
        name: Registry name.
        kind: Coarse kind shown in tables: ``conv``, ``convT``, ``linear``, ``embedding``, ``norm``,
            ``attention``.
        types: Module classes handled (``isinstance``); :meth:`matches` may duck-type instead.
        prunable_weights: The layer's ``weight`` can be pruned unstructured and quantized
            (Conv/Linear-like layers).
        roles: The roles this handler gives its members.
    """

    name: str = ""
    kind: str = ""
    types: tuple[type, ...] = ()
    prunable_weights: bool = False
    roles: tuple[str, ...] = ()

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    # ------------------------------------------------------------------ channel flow
    def propagate(self, p: Propagation, call: LayerCall) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ where channels live
    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        """The tensors and dimensions holding ``role``'s positions (missing tensors are skipped)."""
        return []

    def role_size(self, module: nn.Module, role: str) -> int:
        """Number of positions along ``role`` (the length of the first axis / its offsets)."""
        for ax in self.axes(module, role):
            t = get_tensor(module, ax.tensor)
            if t is not None:
                return t.shape[ax.dim] // len(ax.offsets)
        return 0

    def producer(self, role: str) -> bool:
        """Whether a member with ``role`` produces the channels (a weight criterion's default)."""
        return role in ("out", "dw")

    # ------------------------------------------------------------------ slicing
    def resize(self, module: nn.Module, removed: Removed, cache: dict[int, torch.Tensor]) -> None:
        """Remove the ``removed`` positions from the layer's tensors, then update its attributes."""
        drops: dict[str, dict[int, list[torch.Tensor]]] = {}
        for role, pos in removed.items():
            for ax in self.axes(module, role):
                if get_tensor(module, ax.tensor) is None:
                    continue
                drops.setdefault(ax.tensor, {}).setdefault(ax.dim, []).append(ax.indices(pos))
        for path, by_dim in drops.items():
            t = get_tensor(module, path)
            assert t is not None
            new = t.detach()
            for dim, parts in by_dim.items():
                new = new.index_select(dim, keep_indices(new.shape[dim], torch.cat(parts), device=new.device))
            set_tensor(module, path, new, cache)
        self.update_attrs(module)

    def update_attrs(self, module: nn.Module) -> None:
        """Set the attributes the forward reads (channel counts) from the resized tensors."""

    # ------------------------------------------------------------------ masking
    def mask(
        self, module: nn.Module, role: str, positions: torch.Tensor, mask_of: Callable[[str], torch.Tensor | None]
    ) -> None:
        """Clear ``positions`` of ``role`` in the boolean masks ``mask_of(tensor path)``."""
        for ax in self.axes(module, role):
            m = mask_of(ax.tensor)
            if m is not None:
                m.index_fill_(ax.dim, ax.indices(positions).to(m.device), False)

    def masked_forward(self, module: nn.Module, role: str, removed: torch.Tensor) -> Callable[..., Any] | None:
        """A forward hook making the masked layer compute what its resized self computes, or None
        when zeroed parameters suffice (``removed``: the positions of ``role`` that are pruned)."""
        return None

    # ------------------------------------------------------------------ cost
    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        """``(MACs, element-wise ops)`` of one call over the whole batch."""
        return 0.0, 0.0

    def tensors(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The layer's own tensors by path (parameters and persistent buffers; nested ones included)."""
        out: dict[str, torch.Tensor] = {}
        for n, t in module.named_parameters():
            out[n] = t
        for n, t in module.named_buffers():
            out.setdefault(n, t)
        return out

    def shapes_after(self, module: nn.Module, lost: Mapping[str, float]) -> dict[str, tuple[int, ...]]:
        """Shapes of the layer's tensors once ``lost[role]`` positions of each role are removed."""
        shapes = {n: list(t.shape) for n, t in self.tensors(module).items()}
        for role, n in lost.items():
            for ax in self.axes(module, role):
                if ax.tensor in shapes:
                    shapes[ax.tensor][ax.dim] -= round(n) * len(ax.offsets)
        return {k: tuple(v) for k, v in shapes.items()}

    def mac_ratio(self, module: nn.Module, lost: Mapping[str, float], in_shape: tuple[int, ...] | None = None) -> float:
        """How the layer's MACs scale once ``lost`` positions are removed (default: as its weight).

        ``in_shape`` is the shape of the layer's input in the measured pass (for layers whose MACs
        also depend on it, such as attention)."""
        w = get_tensor(module, "weight")
        if w is None or w.numel() == 0:
            return 1.0
        new = self.shapes_after(module, lost).get("weight", tuple(w.shape))
        return math.prod(new) / w.numel()

    def in_out(self, module: nn.Module) -> tuple[int, int] | None:
        """``(in, out)`` channel/feature counts of a Conv/Linear-like layer, else None."""
        return None

    def counts_after(self, module: nn.Module, lost: Mapping[str, float]) -> tuple[int, int] | None:
        """``(in, out)`` once ``lost`` positions are removed (Conv/Linear-like layers)."""
        io = self.in_out(module)
        if io is None:
            return None
        cin, cout = io
        return cin - round(lost.get("in", 0.0)), cout - round(lost.get("out", 0.0))

    def lut_spec(self, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
        """A :class:`~slimtune.compressors.measures._layer_spec.LayerSpec` for the latency table, or None."""
        return None


_HANDLERS: list[LayerHandler] = []


def register_handler(handler: LayerHandler) -> LayerHandler:
    """Register ``handler``; later registrations are asked first (a subclass before its base).

    Raises:
        ValueError: another handler is registered under the same name.
    """
    for h in _HANDLERS:
        if h.name == handler.name and type(h) is not type(handler):
            raise DuplicateNameError(
                f"a layer handler named {handler.name!r} is already registered ({type(h).__name__})"
            )
    _HANDLERS[:] = [h for h in _HANDLERS if h.name != handler.name]
    _HANDLERS.insert(0, handler)
    return handler


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler of ``module``, or None when no handler knows its kind."""
    for h in _HANDLERS:
        if h.matches(module):
            return h
    return None


def handlers() -> list[LayerHandler]:
    """Every registered handler, most specific first."""
    return list(_HANDLERS)
