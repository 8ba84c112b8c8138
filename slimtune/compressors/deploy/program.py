"""The step every export format shares: a CPU eval copy of the model, captured by ``torch.export`` with a
dynamic batch dimension (or a static one, saying why), and the comparison of a deployed program's outputs
with the eager model's.

The batch dimension is dimension 0 of every tensor input whose first size is the batch size (that of the
first tensor input). ``torch.export`` specializes sizes 0 and 1, so example inputs of batch 1 are tiled to
batch 2 for the capture; a model whose code fixes the batch (``x.view(1, -1)``, a batch-sized buffer) cannot
be captured with a symbolic batch and is captured at the example batch instead, with the reason in the notes.

Example:
    >>> import torch
    >>> from slimtune.compressors.deploy.program import capture
    >>> cap = capture(torch.nn.Linear(4, 2), torch.randn(1, 4))
    >>> cap.dynamic, [str(s) for s in cap.input_specs()], [str(s) for s in cap.output_specs()]
    (True, ['input: float32[batch, 4]'], ['output: float32[batch, 2]'])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_flatten_with_path

from slimtune.compressors.deploy.qdq import check_exportable, has_quantized_inputs
from slimtune.compressors.deploy.result import TensorSpec
from slimtune.errors import ArgumentError, ArgumentTypeError, SlimtuneError

BATCH = "batch"
"""The name of the dynamic batch dimension in the exported programs and in the specs."""

QUANT_REL_L2 = 0.05
"""Largest relative L2 error ``‖deployed - eager‖ / ‖eager‖`` of an output accepted for a model with quantized
activations (the tolerance of slimtune's int8 export tests).

A quantized activation that lies on a rounding boundary can round to the neighbouring level in another runtime
(its input differs in the last bit, e.g. after onnxruntime folds a BatchNorm into the convolution before it); the
step it takes then spreads through the layers above. So such a model is not compared element by element but as a
whole: on random-weight ResNet-20s quantized with each algorithm the error was 1e-7 to 0.015; a wrong lowering
(a scale, a zero point, a missing clip) gives errors of order 1."""

_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.export", "torch._export", "torch.fx")


# ---------------------------------------------------------------------------------------------- input helpers
def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """Positional example inputs as a tuple (a single input becomes a 1-tuple, a list a tuple)."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _map(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every leaf of its tuples, lists and dicts (other values are leaves)."""
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map(fn, v) for v in obj)
    if isinstance(obj, list):
        return [_map(fn, v) for v in obj]
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return fn(obj)


def tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors of ``obj`` in ``torch.utils._pytree`` order (the order of an exported program's inputs and
    outputs; Hugging Face ``ModelOutput``\\ s flatten to their tensor fields)."""
    return [leaf for leaf in tree_flatten(obj)[0] if isinstance(leaf, torch.Tensor)]


def output_names(outputs: Any) -> list[str]:
    """A name for each tensor of a model's outputs, from where it sits: ``output`` for a lone tensor,
    ``logits`` / ``encoder_last_hidden_state`` for the fields of a ``ModelOutput`` or dict, ``output_0``,
    ``output_1`` for the items of a tuple (``output_0.1`` when nested).

    Example:
        >>> import torch
        >>> output_names({"logits": torch.zeros(1), "aux": (torch.zeros(1), None)})
        ['logits', 'aux.0']
    """
    names = []
    for path, leaf in tree_flatten_with_path(outputs)[0]:
        if not isinstance(leaf, torch.Tensor):
            continue
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if not parts:
            names.append("output")
        elif parts[0].isdigit():
            names.append(".".join([f"output_{parts[0]}", *parts[1:]]))
        else:
            names.append(".".join(parts))
    return names


def resize_batch(args: tuple[Any, ...], batch: int, new: int, seed: int = 0) -> tuple[Any, ...]:
    """``args`` with every tensor of first size ``batch`` cut or tiled to ``new`` rows. Rows beyond the given
    ones are copies, with floating-point ones perturbed by 10 % of the tensor's spread, so that a program that
    mixes rows of a batch shows it."""
    generator = torch.Generator().manual_seed(seed)

    def resize(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != batch:
            return t
        if new <= batch:
            return t[:new].clone()
        reps = -(-new // batch)
        out = t.repeat(reps, *([1] * (t.dim() - 1)))[:new].clone()
        if out.is_floating_point() and out.numel():
            spread = float(t.float().std()) if t.numel() > 1 else 1.0
            noise = torch.randn(out[batch:].shape, generator=generator).to(out.dtype)
            out[batch:] += 0.1 * (spread or 1.0) * noise
        return out

    return _map(resize, args)


def _batch_size(args: tuple[Any, ...]) -> int:
    for t in tensors(args):
        if t.dim() > 0:
            return int(t.shape[0])
    raise ArgumentTypeError(
        "example_inputs: no tensor with a batch dimension among the inputs; give the model's positional inputs "
        "(a tensor or a tuple of tensors, batch dimension first)",
        field="example_inputs",
    )


# ---------------------------------------------------------------------------------------------- the model copy
def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` on the CPU in eval mode. Each parameter and buffer is copied once, straight to
    host memory (tied weights stay tied, nothing is copied on a GPU); ``model`` is neither moved nor modified."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}", field="model")
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).to("cpu").eval()


def check_destination(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a :class:`Path` after checking that a file can be written there."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{what}: path must be a str or os.PathLike, got {type(path).__name__}", field="path")
    dest = Path(path)
    if dest.is_dir():
        raise ArgumentError(f"{what}: {dest} is a directory; give a file name such as {dest / 'model'}", field="path")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise ArgumentError(
            f"{what}: cannot write {dest}: directory {parent} does not exist; create it first", field="path"
        )
    return dest


def check_tolerance(rtol: float, atol: float) -> None:
    """Raise :class:`~slimtune.errors.ArgumentError` unless both tolerances are numbers >= 0."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ArgumentError(f"{name} must be a number >= 0, got {value!r}", field=name)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what the exporters print on success: progress lines, the torchvision registration warnings,
    deprecation and user warnings (errors still raise)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),  # torch.export prints a failed capture's partial graph there
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's message, cut to ``limit`` characters, with its type."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """A model captured by ``torch.export``: the program, the CPU eval copy it came from and its inputs.

    Attributes:
        program: The :class:`torch.export.ExportedProgram`.
        model: The CPU eval copy of the model (the reference the deployed program is checked against).
        args: The example inputs on the CPU, at the example batch.
        batch: The example batch size.
        dynamic: Whether the program takes any batch size.
        notes: What the capture had to do (a static batch and why) and what ``transform`` did.
        quant_kinds: ``{layer: kind}`` of the fake-quantized layers (see :mod:`.qdq`).
        quantized_inputs: Whether any layer quantizes its input (outputs are then compared as a whole).
    """

    program: torch.export.ExportedProgram
    model: nn.Module
    args: tuple[Any, ...]
    batch: int
    dynamic: bool
    notes: list[str] = field(default_factory=list)
    quant_kinds: dict[str, str] = field(default_factory=dict)
    quantized_inputs: bool = False
    reference: list[torch.Tensor] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def check_batches(self) -> tuple[int, ...]:
        """The batch sizes a check runs: the example batch, and for a dynamic program another one (1, or 3
        when the example batch is 1: the capture ran at 2, so both differ from it)."""
        if not self.dynamic:
            return (self.batch,)
        return (self.batch, 1 if self.batch > 1 else 3)

    def inputs_at(self, batch: int) -> tuple[Any, ...]:
        """The example inputs resized to ``batch`` rows."""
        return self.args if batch == self.batch else resize_batch(self.args, self.batch, batch)

    def expected_at(self, batch: int, args: tuple[Any, ...]) -> list[torch.Tensor]:
        """The eager model's output tensors on ``args`` (the inputs at ``batch``)."""
        if batch == self.batch and self.reference:
            return self.reference
        return eager_outputs(self.model, args)

    def _dim_names(self) -> dict[str, str]:
        names = {}
        for node in self.program.graph.nodes:
            if node.op != "placeholder":
                continue
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                for d in val.shape:
                    if isinstance(d, torch.SymInt):
                        names.setdefault(str(d), BATCH)
        return names

    def _spec(self, name: str, val: Any, names: dict[str, str]) -> TensorSpec:
        shape: list[int | str] = []
        for d in val.shape:
            if isinstance(d, torch.SymInt):
                text = str(d)
                for sym, label in names.items():
                    text = text.replace(sym, label)
                shape.append(text)
            else:
                shape.append(int(d))
        return TensorSpec(name, tuple(shape), str(val.dtype).removeprefix("torch."))

    def input_specs(self, names: Sequence[str] | None = None) -> list[TensorSpec]:
        """The program's tensor inputs: name, shape (``'batch'`` for the dynamic dimension), dtype."""
        sig, dims = self.program.graph_signature, self._dim_names()
        nodes = {n.name: n for n in self.program.graph.nodes if n.op == "placeholder"}
        vals = [(n, nodes[n].meta.get("val")) for n in sig.user_inputs if n in nodes]
        vals = [(n, v) for n, v in vals if isinstance(v, torch.Tensor)]
        names = list(names) if names is not None and len(names) == len(vals) else [n for n, _ in vals]
        return [self._spec(name, v, dims) for name, (_, v) in zip(names, vals)]

    def output_specs(self, names: Sequence[str] | None = None) -> list[TensorSpec]:
        """The program's tensor outputs, as :meth:`input_specs`; named after their place in the model's
        output (:func:`output_names`) unless ``names`` are given."""
        names = names if names is not None else self.output_names
        dims = self._dim_names()
        output = next(n for n in self.program.graph.nodes if n.op == "output")
        nodes = [a for a in tree_flatten(output.args[0])[0] if isinstance(a, torch.fx.Node)]
        user = set(self.program.graph_signature.user_outputs)
        nodes = [n for n in nodes if n.name in user and isinstance(n.meta.get("val"), torch.Tensor)]
        names = list(names) if names is not None and len(names) == len(nodes) else [n.name for n in nodes]
        return [self._spec(name, n.meta["val"], dims) for name, n in zip(names, nodes)]


def _dynamic_shapes(args: tuple[Any, ...], batch: int, dim: Any) -> tuple[Any, ...]:
    return _map(lambda t: {0: dim} if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == batch else None, args)


def _export(model: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> torch.export.ExportedProgram:
    with quiet(), torch.no_grad():
        return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)


def _why_static(error: BaseException) -> str:
    """The useful line of a failed dynamic-batch capture (``torch.export``'s constraint violations put it in a
    bullet: "You marked batch as dynamic but your code specialized it to be a constant (2)")."""
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith("- "):
            text = line[2:].split(". ")[0].rstrip(".")
            return text.replace("You marked batch as dynamic but your code", "the forward")
    return first_line(error)


def capture(
    model: nn.Module,
    example_inputs: Any,
    dynamic_batch: bool = True,
    what: str = "export",
    transform: Callable[[nn.Module], tuple[nn.Module, list[str], bool]] | None = None,
) -> Capture:
    """Capture a CPU eval copy of ``model`` with ``torch.export`` (non-strict).

    Args:
        model: Any module, on any device (it is copied to the CPU; it is neither moved nor modified).
        example_inputs: Its positional inputs (a tensor or a tuple), batch dimension first; moved to the CPU.
        dynamic_batch: Give dimension 0 of every tensor input of the batch size a symbolic size ``batch``;
            when the model cannot run with one, capture it at the example batch and say why in ``notes``.
        what: The calling function's name, for error messages.
        transform: ``copy -> (model to export, notes, quantized_inputs)``, e.g.
            :func:`~slimtune.compressors.deploy.qdq.qdq_form`; the copy stays the reference of the check.

    Raises:
        ArgumentTypeError: ``model`` is not a module, or the inputs hold no batched tensor.
        SlimtuneError: The model fails on the example inputs, or ``torch.export`` cannot capture it (the
            message has the exporter's reason).
    """
    copy_ = cpu_eval_copy(model)
    args = as_args(example_inputs)
    args = _map(lambda t: t.detach().to("cpu") if isinstance(t, torch.Tensor) else t, args)
    batch = _batch_size(args)
    try:
        with torch.no_grad():
            eager = copy_(*args)
    except Exception as e:
        raise SlimtuneError(
            f"{what}: {type(model).__name__} fails on the example inputs in eval mode on the CPU ({first_line(e)}); "
            "give inputs it runs on (positional, batch dimension first)"
        ) from e
    reference, names = [t.detach() for t in tensors(eager)], output_names(eager)
    del eager
    notes: list[str] = []
    if model.training:
        notes.append("exported in eval mode (the model was in training mode)")
    kinds = check_exportable(copy_)
    target, more, quantized = transform(copy_) if transform else (copy_, [], has_quantized_inputs(copy_))
    notes.extend(more)
    if dynamic_batch:
        dim = torch.export.Dim(BATCH)
        traced_args = resize_batch(args, batch, 2) if batch == 1 else args
        try:
            program = _export(target, traced_args, _dynamic_shapes(traced_args, batch if batch != 1 else 2, dim))
            return Capture(program, copy_, args, batch, True, notes, kinds, quantized, reference, names)
        except Exception as e:  # fall back to a static batch below, saying why
            reason = _why_static(e)
        notes.append(f"static batch {batch}: the model cannot take a symbolic batch size ({reason})")
    else:
        notes.append(f"static batch {batch} (dynamic_batch=False)")
    try:
        program = _export(target, args, None)
    except Exception as e:
        raise SlimtuneError(
            f"{what}: torch.export cannot capture {type(model).__name__}: {first_line(e, 600)}. "
            "Fix or rewrite the part of the forward it names (data-dependent control flow, unsupported ops)"
        ) from e
    return Capture(program, copy_, args, batch, False, notes, kinds, quantized, reference, names)


# ---------------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """The outputs of a deployed program against the eager model's, over one or more batches.

    Attributes:
        max_abs_diff: The largest absolute difference of any output element.
        worst: The largest ``|diff| / (atol + rtol * |expected|)`` (≤ 1: within tolerance).
        rel_l2: The largest relative L2 error ``‖deployed - eager‖ / ‖eager‖`` of one output.
        problems: What does not match (a shape, a dtype, a count of outputs).
    """

    rtol: float
    atol: float
    max_abs_diff: float = 0.0
    worst: float = 0.0
    rel_l2: float = 0.0
    where: str = ""
    problems: list[str] = field(default_factory=list)

    def add(self, actual: Sequence[Any], expected: Sequence[torch.Tensor], label: str, names: Sequence[str]) -> None:
        """Compare one run (``actual``: tensors or numpy arrays, in the order of ``expected``)."""
        if len(actual) != len(expected):
            self.problems.append(f"{label}: {len(actual)} outputs, the eager model gives {len(expected)}")
            return
        for i, (a, e) in enumerate(zip(actual, expected)):
            name = names[i] if i < len(names) else f"output {i}"
            a = torch.as_tensor(a)
            if tuple(a.shape) != tuple(e.shape):
                self.problems.append(f"{label}: {name} has shape {tuple(a.shape)}, eager {tuple(e.shape)}")
                continue
            if not e.is_floating_point():
                if not torch.equal(a.to(e.dtype), e):
                    self.problems.append(f"{label}: {name} ({e.dtype}) differs from the eager output")
                continue
            a, e = a.double(), e.double()
            diff = (a - e).abs()
            if diff.numel() == 0:
                continue
            if not torch.isfinite(diff).all():
                self.problems.append(f"{label}: {name} is not finite where the eager output is")
                continue
            top = float(diff.max())
            worst = float((diff / (self.atol + self.rtol * e.abs())).max())
            rel = float((a - e).norm() / e.norm().clamp_min(1e-30))
            if worst > self.worst:
                self.worst, self.where = worst, f"{label}, {name}"
            self.max_abs_diff = max(self.max_abs_diff, top)
            self.rel_l2 = max(self.rel_l2, rel)

    def passed(self, quantized: bool) -> bool:
        """Within tolerance: element by element, or for a model with quantized activations as a whole
        (relative L2 error ≤ :data:`QUANT_REL_L2`)."""
        if self.problems:
            return False
        return self.rel_l2 <= QUANT_REL_L2 if quantized else self.worst <= 1.0

    def summary(self, quantized: bool) -> str:
        """One line on what was found."""
        if self.problems:
            return "; ".join(self.problems)
        text = f"max |diff| {self.max_abs_diff:.3g} (rtol {self.rtol:g}, atol {self.atol:g}"
        if quantized:
            text += f"; relative L2 error {self.rel_l2:.3g}, at most {QUANT_REL_L2:g} for quantized activations"
        return text + (f"; worst at {self.where})" if self.worst > 1.0 else ")")


def quantized_note(comparison: Comparison, runtime: str) -> str:
    """The note of a check that compared a model with quantized inputs as a whole."""
    return (
        f"quantized inputs: compared as a whole, relative L2 error {comparison.rel_l2:.2g} (values on a "
        f"rounding boundary may round to the neighbouring level in {runtime})"
    )


def eager_outputs(model: nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
    """The tensors the eager model returns on ``args`` (no gradients)."""
    with torch.no_grad():
        return [t.detach() for t in tensors(model(*args))]
