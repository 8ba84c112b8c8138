"""Parameters used directly by the forward code: class tokens, learned position embeddings, layer scales.

Propagation makes such a parameter a member of the group whose channels it meets in an element-wise
op or a concatenation, with the role ``param:<attribute>:<dim>``; this handler slices and masks that
one tensor along that dim. It is looked up by role (:func:`member_handler`), not by module type.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> class Scaled(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    ...         self.gamma = torch.nn.Parameter(torch.ones(8))
    ...     def forward(self, x):
    ...         return self.fc2(self.fc1(x) * self.gamma)
    >>> g = trace(Scaled(), torch.randn(3, 4))
    >>> [(m.layer, m.role) for m in g.groups["fc1"].members]
    [('fc1', 'out'), ('', 'param:gamma:0'), ('fc2', 'in')]
"""

from __future__ import annotations

from torch import nn

from slimtune.compressors.handlers._base import Axis, LayerHandler, handler_for


class ParamHandler(LayerHandler):
    name = "param"
    kind = "param"

    def matches(self, module: nn.Module) -> bool:
        return False

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if not role.startswith("param:"):
            return []
        _, attr, dim = role.split(":")
        return [Axis(attr, int(dim))]

    def producer(self, role: str) -> bool:
        return False


PARAM_HANDLER = ParamHandler()


def member_handler(module: nn.Module, role: str) -> LayerHandler | None:
    """The handler of a group member: by its role for parameters, by its module's type otherwise."""
    if role.startswith("param:"):
        return PARAM_HANDLER
    return handler_for(module)
