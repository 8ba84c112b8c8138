"""The error type of the quantization package."""

from __future__ import annotations

from slimtune.errors import SlimtuneError


class QuantizationError(SlimtuneError, ValueError):
    """Quantization cannot proceed: bad bit-width, unknown layer / observer / algorithm, or a layer
    that was never calibrated. The message names the value or the layer and says what to do."""


class QuantExportError(QuantizationError, RuntimeError):
    """A model could not be exported to int8 (names the layer or the reason); a :class:`QuantizationError`."""
