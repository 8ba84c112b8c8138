"""Layer handlers: one module per layer kind, each saying how channels flow through the layer, how to
slice it, how the masked layer behaves, and what it costs (see :mod:`._base`).

========================= ================================================== ============
handler                   layers                                             roles
========================= ================================================== ============
``conv``                  ``Conv1d/2d/3d`` (grouped, depthwise, subclasses)  out, in, dw
``conv_transpose``        ``ConvTranspose1d/2d/3d``                          out, in
``linear``                ``nn.Linear``                                      out, in
``hf_conv1d``             Hugging Face ``Conv1D`` (GPT-2)                    out, in
``embedding``             ``nn.Embedding``                                   out
``batchnorm``             ``BatchNorm*``, ``InstanceNorm*``                  norm
``layernorm``             ``LayerNorm``, ``RMSNorm``, zoo RMS/layer norms    norm
``groupnorm``             ``GroupNorm``                                      norm
``multihead_attention``   ``nn.MultiheadAttention``                          mha
``param``                 parameters used directly (class tokens ...)        param:<attr>:<dim>
========================= ================================================== ============

A new layer kind is one new module here: subclass :class:`LayerHandler`, register it with
:func:`register_handler` and import it below.
"""

from __future__ import annotations

# Importing the handler modules registers them (later ones are asked first).
from slimtune.compressors.handlers import conv, embedding, linear, mha, norms  # noqa: E402,F401
from slimtune.compressors.handlers._base import (
    Axis,
    LayerHandler,
    get_tensor,
    handler_for,
    handlers,
    is_parameter,
    keep_indices,
    register_handler,
    set_tensor,
)
from slimtune.compressors.handlers.param import PARAM_HANDLER, member_handler  # noqa: E402

__all__ = [
    "PARAM_HANDLER",
    "Axis",
    "LayerHandler",
    "get_tensor",
    "handler_for",
    "handlers",
    "is_parameter",
    "keep_indices",
    "member_handler",
    "register_handler",
    "set_tensor",
]
