"""Values that channel propagation attaches to the tensors of a captured graph.

Each tensor of the graph gets one of:

- :class:`Chan`: the tensor carries *tracked* channels along one dimension ``cdim``: ``labels[i]`` is
  the element (see ``_propagate.py``) held at position ``i`` of that dimension. Every other
  dimension is untracked: its size never changes when channels are removed.
- :class:`ParamRef`: the tensor is a parameter (or a view or broadcast of one) used directly by the
  forward code, e.g. a class token or a layer scale. When it meets tracked channels in an
  element-wise op its matching dimension becomes a member of their group and is sliced with them.
- ``None``: an untracked tensor (model inputs, masks, positions, constants): fixed. A tracked
  channel combined element-wise with an untracked tensor that varies along the channel dimension
  cannot be removed (the other tensor would not shrink), so it is pinned.
- a ``list`` of values for ops returning several tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch.fx as fx
    import torch.nn as nn


@dataclass
class Chan:
    """Tracked channels of one tensor: the element id at each position of dim ``cdim``."""

    labels: np.ndarray
    cdim: int
    ndim: int


@dataclass
class ParamRef:
    """A parameter used directly by the forward code.

    Args:
        layer: Qualified name of the module owning the parameter.
        attr: Attribute name of the parameter in that module.
        shape: Shape of the tensor this value stands for.
        dims: For each dim of that tensor, the parameter dim it indexes (None for a dim that was
            inserted by ``unsqueeze`` / broadcasting).
    """

    layer: str
    attr: str
    shape: tuple[int, ...]
    dims: tuple[int | None, ...]


@dataclass
class LayerCall:
    """One call of a layer that has a handler, as propagation hands it over.

    Args:
        name: Qualified (canonical) module name.
        module: The module.
        node: The graph node of the call (its name is the tap name of the output).
        inputs: Values of the call's tensor inputs, in order.
        in_shapes: Shapes of those inputs (None where unknown).
        out_shape: Shape of the (first) output, None when unknown.
        n_outputs: 1 for a tensor output, k for a tuple of k outputs.
    """

    name: str
    module: nn.Module
    node: fx.Node
    inputs: list[Any]
    in_shapes: list[tuple[int, ...] | None]
    out_shape: tuple[int, ...] | None
    n_outputs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def first(self) -> Any:
        return self.inputs[0] if self.inputs else None

    def first_chan(self) -> Chan | None:
        v = self.first()
        return v if isinstance(v, Chan) else None
