"""Compressed models as safe files: weights in safetensors, the plan as JSON, the base model's fingerprint.

A compressed model is its base model with a plan applied (channels removed, layers masked or
fake-quantized) and then trained. :func:`save` writes what is needed to rebuild it and nothing that
runs code when read: one ``.safetensors`` file holding the compressed model's state dict and, in the
file's metadata (JSON strings), the plan, a fingerprint of the base model (its architecture: class,
tensor names, shapes and dtypes; and its weights), the shapes and dtypes of the example inputs and the
slimtune version. :func:`load` rebuilds the structure by compressing the base model with the plan
(channel pruning with the ``l1`` criterion: only the shapes matter, the saved weights replace every
value) and loads the weights into it. So the file loads wherever slimtune and the base model's code
are, with no pickle; the base model must be the one the file was made from (its fingerprint is
checked, and a mismatch is refused with what differs).

Compared with ``torch.save(model)``, which pickles the module (loading it with pickles allowed runs
whatever code the file holds), nothing is trusted here: safetensors reads raw tensors and the
metadata is JSON.

Example:
    >>> import tempfile, os, torch
    >>> from slimtune.compressors import CompressionPlan, compress, trace
    >>> from slimtune.compressors import state
    >>> from slimtune.examples.models import mlp
    >>> base, x = mlp(16, (32, 24), 4).eval(), torch.randn(1, 16)
    >>> plan = CompressionPlan.from_sparsities({"features.0": 0.5})
    >>> small = compress(base, plan, x)
    >>> path = os.path.join(tempfile.mkdtemp(), "small.safetensors")
    >>> _ = state.save(small, plan, base, x, path)
    >>> again = state.load(path, base)
    >>> torch.equal(again(x), small(x)), state.read_metadata(path)["plan"]["prune"]["features.0"]["sparsity"]
    (True, 0.5)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune import devices
from slimtune.compressors.plan import CompressionPlan
from slimtune.errors import ArgumentError, PlanError

__all__ = ["FORMAT", "MIMETYPE", "fingerprint", "is_state_file", "load", "read_metadata", "save"]

#: The format name written in every file's metadata (``format``).
FORMAT = "slimtune-state/1"
#: The MIME type of a state file (the dashboard serves it with this type).
MIMETYPE = "application/vnd.slimtune.state+safetensors"
_MAGIC_LIMIT = 100_000_000  # a safetensors header larger than this is not one


def fingerprint(model: nn.Module) -> dict[str, str]:
    """``{"architecture", "weights"}``: hashes of a model's class and tensor names, shapes and dtypes, and
    of its tensors' values (what :func:`load` checks the base model against)."""
    arch, weights = hashlib.sha256(), hashlib.sha256()
    arch.update(type(model).__qualname__.encode())
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        arch.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
        weights.update(key.encode())
        t = value.detach().cpu()
        weights.update((t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes())
    return {"architecture": arch.hexdigest()[:16], "weights": weights.hexdigest()[:16]}


def input_spec(example_inputs: Any) -> list[dict[str, Any]]:
    """Shapes and dtypes of the example inputs (a tensor or a tuple of tensors)."""
    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    spec = []
    for i, x in enumerate(args):
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(
                f"example input {i} is a {type(x).__name__}: a saved model records tensor inputs only",
                field="example_inputs",
            )
        spec.append({"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")})
    return spec


def save(
    model: nn.Module,
    plan: CompressionPlan | Mapping[str, Any],
    base_model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (``base_model`` compressed by ``plan``, then trained) to ``path`` as safetensors
    with the plan, the base model's fingerprint and the input spec in the file's metadata.

    Args:
        model: The compressed model (any device; the file holds CPU tensors).
        plan: The plan that made it from ``base_model`` (relative to ``base_model``).
        base_model: The model the plan was applied to.
        example_inputs: Inputs of the model (their shapes and dtypes are recorded; :func:`load`
            traces the base model with inputs of that shape).
        path: The file to write (``.safetensors``).
        extra: More JSON-able facts to record (e.g. a trial's number).

    Returns:
        The path written.
    """
    from safetensors.torch import save_model

    from slimtune.version import __version__

    plan = plan if isinstance(plan, CompressionPlan) else CompressionPlan.from_dict(plan)
    out = Path(path)
    if not out.parent.is_dir():
        raise ArgumentError(f"cannot write {out}: the directory {out.parent} does not exist", field="path")
    metadata = {
        "format": FORMAT,
        "plan": json.dumps(plan.to_dict()),
        "base": json.dumps(fingerprint(base_model)),
        "base_class": f"{type(base_model).__module__}.{type(base_model).__qualname__}",
        "inputs": json.dumps(input_spec(example_inputs)),
        "slimtune": __version__,
        "extra": json.dumps(dict(extra or {})),
    }
    save_model(model, str(out), metadata=metadata)
    return out


def is_state_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a safetensors file written by :func:`save` (read without trusting it)."""
    try:
        return read_metadata(path).get("format") == FORMAT
    except (ArgumentError, OSError):
        return False


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a file :func:`save` wrote: ``plan``, ``base`` (fingerprint), ``inputs``, ``extra``
    (decoded from JSON), ``format``, ``base_class`` and ``slimtune``.

    Raises:
        ArgumentError: The file is not a safetensors file (naming it; a ``torch.save`` pickle says so).
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if not (0 < size < _MAGIC_LIMIT and head[8:9] == b"{"):
        if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
            raise ArgumentError(
                f"{p} is a pickle (torch.save), not a slimtune state file; slimtune does not load pickles, which "
                "run code when read. If you trust the file, load it yourself (torch.load with pickles allowed) and "
                "write it safely with slimtune.save(model, plan, base_model, example_inputs, 'model.safetensors')",
                field="path",
            )
        raise ArgumentError(f"{p} is not a safetensors file", field="path")
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
    for key in ("plan", "base", "inputs", "extra"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def load(
    path: str | os.PathLike[str],
    base_model: nn.Module,
    device: str | torch.device | None = None,
    check_weights: bool = True,
) -> nn.Module:
    """Rebuild the model :func:`save` wrote to ``path`` from ``base_model`` and load its weights.

    Args:
        path: A file written by :func:`save` (or ``slimtune export --format state``).
        base_model: The model the file's plan was applied to (never modified).
        device: Where the result lives (None: ``base_model``'s device).
        check_weights: Refuse a base model whose weights differ from those the file was made from
            (the architecture is always checked). The saved weights replace every value, so a base
            model of the same architecture with other weights rebuilds the same model; turn the
            check off to load onto such a copy.

    Returns:
        The compressed model, in eval mode.

    Raises:
        ArgumentError: ``path`` is not a state file (a pickle is refused, with how to convert it), or
            ``base_model`` is not the model the file was made from (naming what differs).
        PlanError: The plan does not rebuild the saved shapes (naming the first tensor that differs).
    """
    from safetensors.torch import load_model

    from slimtune.compressors.compress import compress

    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ArgumentError(f"{path} is a safetensors file but not a slimtune state file (no plan)", field="path")
    mine = fingerprint(base_model)
    saved = meta.get("base") or {}
    if mine["architecture"] != saved.get("architecture"):
        raise ArgumentError(
            f"{path} was made from a {meta.get('base_class', 'different model')} whose architecture (tensor names, "
            f"shapes, dtypes) differs from the base model given ({type(base_model).__module__}."
            f"{type(base_model).__qualname__}): pass the model the plan was applied to",
            field="base_model",
        )
    if check_weights and mine["weights"] != saved.get("weights"):
        raise ArgumentError(
            f"{path} was made from a base model of this architecture with other weights (another checkpoint?); "
            "pass the original model, or check_weights=False to rebuild onto this one",
            field="base_model",
        )
    plan = _structure_plan(CompressionPlan.from_dict(meta["plan"]))
    on = devices.model_device(base_model)
    inputs = _synthetic_inputs(meta.get("inputs") or [], on)
    purified = (meta.get("extra") or {}).get("purified") or {}
    if purified:  # channels a training compressor removed beyond the plan's (ADMM's purification)
        plan = _with_removed(plan, purified, base_model, inputs)
    needs_data = any(q.bits_a not in (None, 32) for q in plan.quantize.values())
    data = [(inputs, None)] if needs_data else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = compress(base_model, plan, inputs, data=data)
    _check_shapes(model, path)
    load_model(model, str(path), strict=True, device=str(on))
    return model.to(device if device is not None else on).eval()


def _structure_plan(plan: CompressionPlan) -> CompressionPlan:
    """``plan`` as a one-shot, data-free plan with the same shapes: ``l1`` channel selection (the saved
    weights replace the values), no training compressor, no fine-tune, no starting trial."""
    prune = {name: dataclasses.replace(spec, criterion="l1") for name, spec in plan.prune.items()}
    return dataclasses.replace(
        plan, prune=prune, compressor="oneshot", compressor_params={}, finetune={}, init_from_trial=None
    )


def _with_removed(
    plan: CompressionPlan, removed: Mapping[str, int], base_model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> CompressionPlan:
    """``plan`` with ``removed[group]`` more channels pruned from each group (same number per block)."""
    from slimtune.compressors.graph import trace
    from slimtune.compressors.plan import PruneSpec

    groups = trace(base_model, inputs).groups
    prune = dict(plan.prune)
    for name, extra in removed.items():
        group = groups.get(name)
        if group is None or name not in prune:
            raise PlanError(f"the saved model removed channels of group {name!r}, which its plan does not prune")
        per_block = group.size // group.blocks
        count = (group.n_prune(prune[name].sparsity) + int(extra)) // group.blocks
        prune[name] = PruneSpec(count / per_block, prune[name].criterion)
    return dataclasses.replace(plan, prune=prune)


def _synthetic_inputs(spec: list[dict[str, Any]], device: torch.device) -> tuple[torch.Tensor, ...]:
    out = []
    g = torch.Generator().manual_seed(0)
    for item in spec:
        dtype = getattr(torch, item["dtype"])
        shape = tuple(item["shape"])
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=g, dtype=torch.float32, device="cpu").to(dtype)
        else:
            x = torch.zeros(shape, dtype=dtype, device="cpu")
        out.append(x.to(device))
    return tuple(out)


def _check_shapes(model: nn.Module, path: str | os.PathLike[str]) -> None:
    from safetensors import safe_open

    built = {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            shape = tuple(f.get_slice(key).get_shape())
            if key in built and built[key] != shape:
                raise PlanError(
                    f"{path}: the plan rebuilds {key} with shape {built[key]} but the file holds {shape} (a model "
                    "whose training compressor removed more than its plan, e.g. ADMM with purify, cannot be "
                    "rebuilt from the plan alone)"
                )
