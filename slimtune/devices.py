"""Where a search runs: device names, the check that a device exists, and moving data there.

A device is named as PyTorch names it: ``cpu``, ``cuda`` (the current CUDA device), ``cuda:N``,
``mps``, or ``auto`` (the default: the current CUDA device when PyTorch sees one, else the CPU;
Apple's ``mps`` is used only when named, as its operator coverage is partial). An integer ``N``
means ``cuda:N`` (``slimtune run --devices 0,1``).

:func:`check_name` checks the spelling only (a spec or a task built on a machine without the GPU);
:func:`resolve` checks that the device exists on this machine and raises :class:`DeviceError` at
start, naming the device and why it is missing, instead of failing inside the first trial.

Example:
    >>> import torch
    >>> from slimtune import devices
    >>> devices.check_name("cuda:1"), devices.check_name(0), devices.check_name("auto")
    ('cuda:1', 'cuda:0', 'auto')
    >>> devices.resolve("cpu")
    device(type='cpu')
    >>> batch = {"x": torch.zeros(2), "y": [torch.ones(1), 3]}
    >>> moved = devices.move(batch, "cpu")
    >>> moved["y"][1], moved["x"].device.type
    (3, 'cpu')
    >>> devices.parse_list("0,1,cpu")
    ['cuda:0', 'cuda:1', 'cpu']
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from slimtune.errors import DeviceError

__all__ = [
    "DEFAULT",
    "DeviceError",
    "check_name",
    "describe",
    "hardware",
    "is_cuda",
    "model_device",
    "move",
    "parse_list",
    "resolve",
    "synchronize",
]

DEFAULT = "auto"
_NAME = re.compile(r"^(auto|cpu|mps|cuda|meta)(?::(\d+))?$")


def check_name(device: Any, field: str = "device") -> str:
    """The canonical name of ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); checks the
    spelling only, not that the device exists here (see :func:`resolve`).

    Raises:
        DeviceError: ``device`` is not a device name.
    """
    if isinstance(device, torch.device):
        return str(device)
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return f"cuda:{device}"
    text = device.strip().lower() if isinstance(device, str) else None
    if text is not None and text.isdigit():
        return f"cuda:{int(text)}"
    match = _NAME.match(text or "")
    if match is None or (match.group(2) is not None and match.group(1) in ("auto", "cpu", "meta")):
        raise DeviceError(
            f"unknown device {device!r}; use auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps, or a GPU index N",
            field=field,
        )
    return text  # type: ignore[return-value]


def resolve(device: Any = DEFAULT, field: str = "device") -> torch.device:
    """The :class:`torch.device` that ``device`` names on this machine.

    ``auto`` is the current CUDA device when PyTorch sees one, else the CPU.

    Raises:
        DeviceError: The name is misspelled, or names a GPU this machine does not have (the message
            says why: a PyTorch built without CUDA, no visible device, an index out of range).
    """
    name = check_name(device, field)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name in ("cpu", "meta"):  # meta: shapes without data (tests)
        return torch.device(name)
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("device 'mps' asks for Apple's Metal GPU, which this machine does not have", field=field)
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asks for a CUDA GPU, but {_why_no_cuda()}", field=field)
    dev = torch.device(name)
    count = torch.cuda.device_count()
    if dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if dev.index >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceError(
            f"device {name!r}: this process sees {count} CUDA device{'s' if count != 1 else ''} ({visible})"
            + _visible_note(),
            field=field,
        )
    return dev


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA; install a CUDA build of torch"
    return "PyTorch sees no CUDA device (no driver, or none visible" + _visible_note() + ")"


def _visible_note() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""


def parse_list(text: str, field: str = "--devices") -> list[str]:
    """Device names from a comma-separated list (``0,1`` → ``cuda:0, cuda:1``; ``cpu,cpu``)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise DeviceError(
            f"expected a comma-separated list of devices such as 0,1 or cpu,cpu, got {text!r}", field=field
        )
    return [check_name(p, field) for p in parts]


def is_cuda(device: Any) -> bool:
    """True for a CUDA device (a :class:`torch.device` or a name)."""
    return torch.device(device).type == "cuda" if not isinstance(device, str) or device != "auto" else False


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (else first buffer; the CPU for a model without either).

    A user's ``evaluate(model)`` moves its batches there: ``x.to(model_device(model))``.
    """
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def move(obj: Any, device: Any, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor in it on ``device``: tensors, and tensors inside tuples (named ones
    too), lists, mappings and objects with a ``to`` method (Hugging Face's ``BatchEncoding``); other
    values unchanged. ``non_blocking`` overlaps the copy from pinned memory with computation."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple):
        items = [move(x, device, non_blocking) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [move(x, device, non_blocking) for x in obj]
    if isinstance(obj, Mapping) and not hasattr(obj, "to"):
        return type(obj)({k: move(v, device, non_blocking) for k, v in obj.items()})  # type: ignore[call-arg]
    to = getattr(obj, "to", None)
    if callable(to) and not isinstance(obj, nn.Module):
        return to(device)
    return obj


def synchronize(device: Any) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously; the CPU does not)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def describe(device: Any) -> str:
    """A device with its hardware: ``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu (AMD EPYC 9B14, 2 threads)``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if dev.type == "cpu":
        return f"cpu ({_cpu_name()}, {torch.get_num_threads()} threads)"
    return str(dev)


def hardware(device: Any) -> str:
    """What a device is, without its index: measures taken on one ``cuda:N`` hold for another GPU of the
    same model (``NVIDIA H100 80GB HBM3``, ``cpu: AMD EPYC 9B14``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
    if dev.type == "cpu":
        return f"cpu: {_cpu_name()}"
    return dev.type


@functools.cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"
