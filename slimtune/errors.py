"""Exception types of slimtune.

Every error names what is wrong (the field, the layer, the group or the file) and, where it can,
what to do about it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class SlimtuneError(Exception):
    """Base class of all errors raised by slimtune.

    Attributes:
        field: The option, spec field or argument at fault as a dotted path (``"space.levels"``,
            ``"storage"``), or ``None`` when the error is not about one.
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses take other arguments than the message: rebuild from args and attributes instead
        # of calling __init__ again (errors cross process boundaries: workers, Ray)
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[SlimtuneError], args: tuple[Any, ...], state: dict[str, Any]) -> SlimtuneError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(SlimtuneError, ValueError):
    """An option has a bad value; ``field`` names it as a dotted path and the message starts with it.

    Attributes:
        problem: What is wrong with the value (the message without the field).
    """

    def __init__(self, problem: str, *, field: str) -> None:
        self.problem = problem
        super().__init__(f"{field}: {problem}", field=field)


class DeviceError(ConfigError):
    """A device that is misspelled or that this machine does not have (names the field and the device)."""

    def __init__(self, problem: str, *, field: str = "device") -> None:
        super().__init__(problem, field=field)


class StorageError(SlimtuneError, ValueError):
    """A storage URL is invalid or its storage cannot be opened (names the URL and the file)."""


class StudyNotFoundError(SlimtuneError, KeyError):
    """A study (or a trial of it) that does not exist; lists what does."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PlanError(SlimtuneError, ValueError):
    """A :class:`~slimtune.compressors.CompressionPlan` is invalid for the model it is applied to."""


class TraceError(SlimtuneError):
    """A model could not be traced into a dependency graph (names the module or op that failed)."""


class CriterionError(SlimtuneError, ValueError):
    """A pruning criterion cannot be computed (unknown name, missing data or gradients)."""


class SpecError(SlimtuneError, ValueError):
    """A spec file is invalid or its task cannot be built.

    The message names the file and the field as a dotted path, e.g.
    ``examples/digits.yaml: strategy.name: unknown strategy 'foo'; known: nsga2, random, tpe, uniform``.

    Attributes:
        problem: What is wrong (and, where possible, what to do about it).
        source: The spec file (or ``"<string>"`` for a spec given as data).
        field: The dotted path of the offending field (``None`` for the whole file).
    """

    def __init__(self, problem: str, *, source: str | None = None, field: str | None = None) -> None:
        self.problem = problem
        self.source = source
        super().__init__(": ".join([part for part in (source, field) if part] + [problem]), field=field)


class TrialFailure(SlimtuneError):
    """A trial could not produce a valid result (e.g. the metric is NaN); recorded as FAILED."""


# ---------------------------------------------------------------------------------------- names
class UnknownNameError(SlimtuneError, KeyError, ValueError):
    """A name nothing is registered under (a criterion, strategy, compressor, observer ...).

    The message suggests the closest known name and lists the known ones, e.g.
    ``unknown criterion 'l11'; did you mean 'l1'? known: apoz, bn_scale, fpgm, l1, ...``
    (prefixed with ``field: `` when the name comes from an option). Both a ``KeyError`` (what a
    registry's ``REG[name]`` raises) and a ``ValueError`` (a bad argument).

    Attributes:
        kind: What was looked up (``"criterion"``, ``"strategy"``).
        name: The name given.
        known: The known names, sorted.
        suggestion: The closest known name, or ``None``.
    """

    def __init__(self, kind: str, name: object, known: Iterable[str], *, field: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        self.suggestion = closest_name(name, self.known)
        hint = f" did you mean {self.suggestion!r}?" if self.suggestion else ""
        problem = f"unknown {kind} {name!r};{hint} known: {', '.join(self.known) or 'none'}"
        super().__init__(f"{field}: {problem}" if field else problem, field=field)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(SlimtuneError, ValueError):
    """A name is registered already, by something else (pick another name, or pass ``overwrite=True``)."""


class UnknownCriterionError(UnknownNameError, CriterionError):
    """An unknown pruning-criterion name: an :class:`UnknownNameError` and a :class:`CriterionError`."""


# ---------------------------------------------------------------------------------------- compressors
class PlanConfigError(ConfigError, PlanError):
    """A plan option has a bad value (a ``finetune`` setting, a compressor parameter): a
    :class:`ConfigError` whose ``field`` names it (``finetune.lr``, ``plan.compressor_params.rho``)
    and a :class:`PlanError`."""


class UnknownCompressorError(UnknownNameError, PlanError):
    """An unknown compressor name (field ``plan.compressor``): an :class:`UnknownNameError` and a :class:`PlanError`."""


class CompressorError(SlimtuneError, ValueError):
    """A compressor cannot run (e.g. a training compressor without training data); names the compressor."""


class QuantizationError(SlimtuneError, ValueError):
    """Quantization cannot proceed: bad bit-width, unknown layer / observer / algorithm, or a layer
    that was never calibrated. The message names the value or the layer and says what to do."""


class QuantExportError(QuantizationError, RuntimeError):
    """A model could not be exported to int8 (names the layer or the reason); a :class:`QuantizationError`."""


class UnknownQuantizationNameError(UnknownNameError, QuantizationError):
    """An unknown observer or quantization-algorithm name: an :class:`UnknownNameError` and a
    :class:`QuantizationError`."""


class SlicingError(SlimtuneError, ValueError):
    """A layer cannot be sliced as asked (unequal channels kept per conv group ...)."""


class SpeedupError(SlimtuneError):
    """The pruned model could not be rebuilt (names the layer or the failing forward pass)."""


class ModelFailsError(TraceError):
    """The model itself fails on the example inputs (no frontend can help)."""


class MeasureError(SlimtuneError, ValueError):
    """A resource cannot be measured as asked (bad bit-widths, latency options), or a latency table
    cannot be built, is malformed or does not match the model; the message names the value."""


# ---------------------------------------------------------------------------------------- strategies
class StrategyError(SlimtuneError, ValueError):
    """A strategy cannot be built with the parameters given. The message names the strategy and the
    parameter (``strategy 'netadapt': strategy.ratio 2 must be in (0, 1]``); ``field`` is the
    parameter as ``strategy.<name>`` (``None`` when the error is not about one)."""


# ---------------------------------------------------------------------------------------- arguments
class ArgumentError(SlimtuneError, ValueError):
    """A function got an argument value it cannot use; the message names the argument and what it accepts."""


class ArgumentTypeError(SlimtuneError, TypeError):
    """A function got an argument of the wrong type; the message names the argument and the type given."""


# ---------------------------------------------------------------------------------------- dashboard
class NotFound(SlimtuneError):
    """An unknown study, trial or saved model (the dashboard answers 404 with the message)."""


def closest_name(name: object, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (:func:`difflib.get_close_matches`), or None: what a
    "did you mean" hint suggests.

    Example:
        >>> closest_name("nsga", ["nsga2", "random", "tpe"]), closest_name("xyz", ["nsga2"])
        ('nsga2', None)
    """
    close = difflib.get_close_matches(name, list(known), n=1) if isinstance(name, str) else []
    return close[0] if close else None


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``: the hint error messages append.

    Example:
        >>> "unknown objective 'flop'" + did_you_mean("flop", ["accuracy", "flops"])
        "unknown objective 'flop' (did you mean 'flops'?)"
    """
    close = closest_name(name, known)
    return f" (did you mean {close!r}?)" if close else ""


class ImageFolderError(ArgumentError):
    """A dataset directory or file that cannot be used: missing, empty, unreadable (names the path).

    Attributes:
        path: The directory or file at fault.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, field: str | None = "root") -> None:
        super().__init__(message, field=field)
        self.path = None if path is None else Path(path)
