"""Device-correctness without a GPU: tensors slimtune creates without naming a device go to ``meta``.

On a GPU, the classic bug is a tensor created on the default device (the CPU) inside code whose
model and data are on ``cuda``: the first op mixing the two fails. These machines have no GPU, so
:func:`stray_tensors_on_meta` recreates the situation on the CPU: every tensor factory call
(``torch.zeros``, ``torch.tensor``, ``torch.arange`` ...) made *from slimtune's own code* without a
``device`` argument creates its tensor on the ``meta`` device instead, and the first op mixing it
with the model's real tensors, or reading its values, fails with the factory's caller in the
traceback. Code that creates its tensors on the device of the data it works with (``device=x.device``,
``x.new_zeros``, ``torch.zeros_like``) runs unchanged. Calls from PyTorch, Optuna or the user's
code are left alone, and so are factory calls given a tensor (``torch.as_tensor(t)`` keeps its device).

Each redirected call is also recorded (file, line), so a test can assert that none happened.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.tensor,
    torch.as_tensor,
    torch.randn,
    torch.rand,
    torch.randint,
    torch.randperm,
    torch.eye,
    torch.linspace,
    torch.logspace,
    torch.scalar_tensor,
    torch.empty_strided,
    torch.tril_indices,
    torch.triu_indices,
}


class _Redirect(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.strays: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        if func in FACTORIES and kwargs.get("device") is None and not _has_tensor(args):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module == "slimtune" or module.startswith("slimtune."):
                self.strays.append(f"{frame.f_code.co_filename}:{frame.f_lineno} ({func.__name__})")
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _has_tensor(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) for a in args) or any(
        isinstance(a, (list, tuple)) and a and all(isinstance(x, torch.Tensor) for x in a) for a in args
    )


@contextlib.contextmanager
def stray_tensors_on_meta() -> Iterator[list[str]]:
    """Inside, slimtune's device-less tensor factory calls create meta tensors; yields the list of
    such calls (``file:line (factory)``), filled as they happen."""
    mode = _Redirect()
    with mode:
        yield mode.strays
