"""How a fine-tune step runs on the model's device: mixed precision, the channels_last format of the
inputs, the random generators forked and seeded, the teacher's device checked.

:class:`Precision` gives ``torch.autocast(device_type, dtype=torch.bfloat16 | torch.float16)`` and, for
``fp16``, a ``torch.amp.GradScaler(device_type)``; :func:`fork_rng` restores the CPU generator and that of
the training GPU (``torch.random.fork_rng(devices=[index], device_type="cuda")``) and :func:`seed` seeds
those two only, so another worker's GPU is left alone.

Example:
    >>> import torch
    >>> from slimtune.compressors.training._device import Precision, channels_last_inputs
    >>> amp = Precision("bf16", torch.device("cpu"))
    >>> with amp.autocast():
    ...     y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> y.dtype, amp.scaler() is None
    (torch.bfloat16, True)
    >>> x = channels_last_inputs((torch.randn(2, 3, 4, 4), torch.randn(2, 3)))[0]
    >>> x.is_contiguous(memory_format=torch.channels_last)
    True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimtune import devices
from slimtune.errors import ArgumentError, PlanConfigError


def channels_last_inputs(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The 4-D tensors of ``inputs`` in ``torch.channels_last`` memory format (the rest unchanged)."""
    return tuple(
        x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x
        for x in inputs
    )


def check_teacher(teacher: nn.Module, device: torch.device) -> None:
    where = devices.model_device(teacher)
    if where != device:
        raise ArgumentError(
            f"finetune: the KD teacher is on {where} but the model (student) is on {device}; "
            f"put both on one device (teacher.to({str(device)!r}))",
            field="teacher",
        )


logger = logging.getLogger("slimtune")
_FP16_CPU_WARNED: list[bool] = []  # warn once per process


class Precision:
    """Autocast and the gradient scaler of ``config.amp`` on ``device``."""

    def __init__(self, amp: str | None, device: torch.device) -> None:
        self.amp, self.device_type = amp, device.type
        available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
        if amp is not None and available is not None and not available(device.type):
            raise PlanConfigError(
                f"{amp!r} needs torch.autocast, which PyTorch does not offer on the model's device {device}; "
                "use null (float32)",
                field="finetune.amp",
            )
        if amp == "fp16" and device.type == "cpu" and not _FP16_CPU_WARNED:
            _FP16_CPU_WARNED.append(True)
            logger.warning(
                "finetune.amp 'fp16' on the CPU: most CPUs have no fp16 kernels and PyTorch falls back to slow ones "
                "(convolutions 17x slower than fp32 on an AVX-512 EPYC, benchmarks/results/finetune_speed.md); "
                "'bf16' is the CPU's mixed precision"
            )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh ``torch.amp.GradScaler(device_type)`` for ``fp16`` (None otherwise)."""
        if self.amp != "fp16":
            return None
        try:
            return torch.amp.GradScaler(self.device_type)  # torch >= 2.3
        except (AttributeError, RuntimeError, ValueError, AssertionError) as e:
            raise PlanConfigError(
                f"'fp16' needs a gradient scaler, which PyTorch does not offer on {self.device_type} ({e}); "
                "use 'bf16' or null (float32)",
                field="finetune.amp",
            ) from None


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Restore the CPU generator, and the CUDA generator of ``device``, afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            yield


def seed(seed: int, device: torch.device) -> None:
    """Seed the CPU generator (batch order, DataLoader shuffling) and that of ``device`` only: other
    GPUs' generators are left alone (another worker may be training there)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
