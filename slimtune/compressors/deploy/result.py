"""What an export returns: the file, its inputs and outputs, and how well it reproduces the model.

Example:
    >>> from pathlib import Path
    >>> r = ExportResult(Path("m.onnx"), "onnx", 2_345_678, 1.25, [TensorSpec("x", ("batch", 3, 32, 32), "float32")],
    ...                  [TensorSpec("output", ("batch", 10), "float32")], dynamic_batch=True, max_abs_diff=1.2e-6,
    ...                  checked_batches=(2, 1), checked_with="onnxruntime", tolerance=(1e-4, 1e-5), opset=20)
    >>> print(r)
    m.onnx: ONNX (opset 20), 2.3 MB, exported in 1.2 s
      inputs:  x: float32[batch, 3, 32, 32]
      outputs: output: float32[batch, 10]
      checked with onnxruntime at batch 2 and 1: max |diff| 1.2e-06 (rtol 0.0001, atol 1e-05)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

_FORMAT_NAMES = {"onnx": "ONNX", "pt2": "PT2 (torch.export)", "onnx-int8": "ONNX static int8 (QDQ, onnxruntime)"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported program.

    Attributes:
        name: Its name in the program (the forward's argument name for inputs).
        shape: Sizes, with ``"batch"`` (or an expression of it, ``"2*batch"``) for the dynamic dimension.
        dtype: ``"float32"``, ``"int64"`` ...
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class ExportResult:
    """What :func:`~slimtune.compressors.deploy.export_onnx` and :func:`~slimtune.compressors.deploy.export_pt2` return.

    Attributes:
        path: The file written.
        format: ``"onnx"`` or ``"pt2"``.
        size_bytes: Its size in bytes (with its external-data file, if any).
        export_seconds: Wall-clock seconds of capture and export (the check not included).
        inputs: The program's tensor inputs.
        outputs: Its tensor outputs.
        dynamic_batch: Whether the program takes any batch size (else only the example's, see ``notes``).
        max_abs_diff: The largest absolute difference between the exported program's outputs and the eager
            model's over the checked batches; ``None`` when not checked.
        checked_batches: The batch sizes the check ran at (empty when not checked).
        checked_with: What ran the exported file (``"onnxruntime"``, ``"torch.export.load"``).
        tolerance: ``(rtol, atol)`` of the check.
        rel_l2: The largest relative L2 error of one output (``None`` when not checked).
        opset: The ONNX opset (ONNX only).
        files: Every file written (the model and, for a model over 2 GB, its external data).
        notes: What the export had to do or could not do (a static batch and why, quantized layers ...).
    """

    path: Path
    format: str
    size_bytes: int
    export_seconds: float
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool
    max_abs_diff: float | None = None
    checked_batches: tuple[int, ...] = ()
    checked_with: str = ""
    tolerance: tuple[float, float] | None = None
    rel_l2: float | None = None
    opset: int | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for people: file, format, size, inputs, outputs, the check, notes."""
        fmt = _FORMAT_NAMES.get(self.format, self.format)
        if self.opset is not None:
            fmt += f" (opset {self.opset})"
        lines = [f"{self.path}: {fmt}, {_size(self.size_bytes)}, exported in {self.export_seconds:.1f} s"]
        lines.append("  inputs:  " + ", ".join(str(s) for s in self.inputs))
        lines.append("  outputs: " + ", ".join(str(s) for s in self.outputs))
        if self.max_abs_diff is None:
            lines.append("  not checked (check=False)")
        else:
            batches = " and ".join(str(b) for b in self.checked_batches)
            if self.tolerance:
                tol = f"rtol {self.tolerance[0]:g}, atol {self.tolerance[1]:g}"
            elif self.rel_l2 is not None:
                tol = f"relative L2 error {self.rel_l2:.2%}"
            else:
                tol = "not compared element-wise"
            lines.append(
                f"  checked with {self.checked_with} at batch {batches}: max |diff| {self.max_abs_diff:.2g} ({tol})"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()
