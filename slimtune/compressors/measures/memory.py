"""Peak memory of one forward pass, measured on the device the model lives on.

:func:`measure_memory` runs one forward pass under :func:`torch.inference_mode` (eval mode) on a
batch of ``batch_size`` rows built from the example inputs (as
:func:`~slimtune.compressors.measures.measure_latency` builds it) and reports, in bytes:

* ``weights_bytes`` — the model's parameters and buffers (each storage once: tied weights once);
* ``inputs_bytes`` — the batch (its tensors' storages, on the model's device);
* ``activations_bytes`` — the most memory the pass's own tensors held at one time: intermediate
  activations, the output, and whatever the operators allocate for themselves;
* ``peak_bytes = weights_bytes + inputs_bytes + activations_bytes`` — what the device must hold
  to run the model at that batch size.

The definition is the same on every device; the way it is measured differs:

* **CUDA** — the caching allocator's statistics: after ``torch.cuda.synchronize``, the memory
  allocated before the pass (``torch.cuda.memory_allocated``) is the baseline, the peak is reset
  (``torch.cuda.reset_peak_memory_stats``), the pass runs and is waited for, and
  ``activations_bytes = torch.cuda.max_memory_allocated() - baseline``. This counts every block
  the pass allocates, the workspaces of cuDNN and cuBLAS kernels included, each rounded up to the
  allocator's 512-byte blocks. One untimed pass first lets the libraries allocate their persistent
  workspaces (these belong to the process, not to the pass). It resets the device's peak
  statistics, and counts memory that other threads allocate on the device meanwhile.
* **CPU** (and other devices) — a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees
  every operator of the pass and the tensors it returns: a tensor whose storage is new (neither a
  storage of the operator's arguments nor one seen before) adds the storage's bytes when it
  appears, and a :func:`weakref.finalize` on the storage takes them away when it is freed (PyTorch
  keeps a storage's Python object alive as long as the storage lives, so the callback fires when
  the memory is released, not before). Views and in-place results add nothing, and freed
  activations do not accumulate: a deep chain of layers holds about two activations at a time.
  Scratch memory that a kernel allocates and frees inside one operator is not seen (on the CPU,
  convolution kernels keep little of it).

Memory grows with the batch size (activations and inputs scale with it, weights do not), so
compare models at the same ``batch_size``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import measure_memory
    >>> model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> m = measure_memory(model, torch.randn(1, 256), batch_size=32)
    >>> m.weights_bytes == (256 * 256 + 256 + 256 * 10 + 10) * 4, m.inputs_bytes == 32 * 256 * 4
    (True, True)
    >>> m.peak_bytes == m.weights_bytes + m.inputs_bytes + m.activations_bytes, m.device
    (True, 'cpu')
    >>> measure_memory(model, torch.randn(1, 256), batch_size=64).peak_bytes > m.peak_bytes
    True
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from slimtune import devices
from slimtune.compressors.measures.latency import as_tuple, make_batch, run_device
from slimtune.errors import ArgumentTypeError

__all__ = ["MemoryResult", "measure_memory"]


@dataclass(frozen=True)
class MemoryResult:
    """Memory of one forward pass, in bytes (see :mod:`~slimtune.compressors.measures.memory`).

    Args:
        peak_bytes: ``weights_bytes + inputs_bytes + activations_bytes``: what the device holds at
            the pass's peak.
        weights_bytes: Parameters and buffers (each storage once).
        inputs_bytes: The batch.
        activations_bytes: The most the pass's own tensors held at one time.
        batch_size: Rows of the batch (``None``: the example inputs as given).
        device: Where the pass ran (``"cpu"``, ``"cuda:0"`` ...).
    """

    peak_bytes: int
    weights_bytes: int
    inputs_bytes: int
    activations_bytes: int
    batch_size: int | None
    device: str

    @property
    def peak_mib(self) -> float:
        """``peak_bytes`` in MiB."""
        return self.peak_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values."""
        return asdict(self)


def measure_memory(model: nn.Module, example_inputs: Any, batch_size: int | None = 32) -> MemoryResult:
    """Peak memory of one forward pass of ``model`` at ``batch_size``, weights and inputs included.

    Args:
        model: Any module, measured on the device its parameters are on (in eval mode; every
            submodule's training flag is restored afterwards).
        example_inputs: A tensor or a tuple of positional arguments, on any device (moved to the
            model's), tiled to ``batch_size`` rows.
        batch_size: Rows of the batch (``None``: the example inputs unchanged). Use the batch
            size the model will be served at; 32 on a CPU and 64 on a GPU are typical.

    Returns:
        A :class:`MemoryResult`.

    Raises:
        MeasureError: ``batch_size`` is not a positive int, or the model is spread over several
            devices.
        ArgumentTypeError: ``model`` is not a module.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        >>> small = measure_memory(net, torch.randn(1, 3, 32, 32), batch_size=1)
        >>> large = measure_memory(net, torch.randn(1, 3, 32, 32), batch_size=16)
        >>> large.activations_bytes > 10 * small.activations_bytes
        True
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}", field="model")
    device = run_device({"model": model}, example_inputs)
    args = make_batch(devices.move(as_tuple(example_inputs), device), batch_size)
    # compact copies: a tiled input may be a view of a larger storage
    args = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in args)
    weights = _storages(list(model.parameters()) + list(model.buffers()))
    inputs = _storages(tree_flatten(args)[0], exclude=weights)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if device.type == "cuda":
            activations = _cuda_activations(model, args, device)
        else:
            activations = _tracked_activations(model, args)
    finally:
        for m, flag in flags:
            m.training = flag
    w, i = sum(weights.values()), sum(inputs.values())
    return MemoryResult(
        peak_bytes=int(w + i + activations),
        weights_bytes=int(w),
        inputs_bytes=int(i),
        activations_bytes=int(activations),
        batch_size=batch_size,
        device=str(device),
    )


def _storages(values: list[Any], exclude: dict[int, int] | None = None) -> dict[int, int]:
    """``{storage data pointer: bytes}`` of the tensors among ``values``, each storage once."""
    out: dict[int, int] = {}
    for t in values:
        key = _storage_key(t)
        if key is not None and (exclude is None or key[0] not in exclude):
            out[key[0]] = key[1]
    return out


def _storage_key(t: Any) -> tuple[int, int] | None:
    """(data pointer, bytes) of a tensor's storage; None for a non-tensor or a tensor without one
    (sparse, nested, empty)."""
    if not isinstance(t, torch.Tensor):
        return None
    try:
        s = t.untyped_storage()
        ptr, nbytes = s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (ptr, nbytes) if ptr and nbytes else None


def _cuda_activations(model: nn.Module, args: tuple[Any, ...], device: torch.device) -> int:
    with torch.cuda.device(device), torch.inference_mode():
        out = model(*args)  # the libraries' persistent workspaces are allocated by the first pass
        del out
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = model(*args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
    return max(0, int(peak) - int(baseline))


def _tracked_activations(model: nn.Module, args: tuple[Any, ...]) -> int:
    tracker = _Allocations()
    with torch.inference_mode(), tracker:
        out = model(*args)
        devices.synchronize(devices.model_device(model))
    del out
    return tracker.peak


class _Allocations(TorchDispatchMode):
    """Bytes of the storages that the operators run under it create, while they live, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # data pointer -> bytes
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        known = {key[0] for key in map(_storage_key, tree_flatten((args, kwargs))[0]) if key is not None}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            key = _storage_key(t)
            if key is None:
                continue
            ptr, nbytes = key
            if ptr in self.live:  # an in-place op may have grown a storage it made earlier
                if nbytes > self.live[ptr]:
                    self.current += nbytes - self.live[ptr]
                    self.live[ptr] = nbytes
            elif ptr not in known:  # a new storage (views and in-place results share an argument's)
                self.live[ptr] = nbytes
                self.current += nbytes
                weakref.finalize(t.untyped_storage(), self._freed, ptr)
            self.peak = max(self.peak, self.current)
        return out

    def _freed(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)
