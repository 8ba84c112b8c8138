"""Quantization: fake-quantized layers, observers, algorithms, int8 export.

The algorithms: PTQ, dynamic, STE-QAT, PACT, DoReFa, BNN, SLB.

- :mod:`.functional`: per-channel symmetric weight and affine activation (fake) quantization
  with straight-through gradients;
- :mod:`.observers`: activation-range observers by name (``minmax``, ``moving_average``,
  ``percentile``, ``kl``);
- :mod:`.modules`: :class:`QuantWrapper` (Conv/Linear, and LSTM/GRU weight-only), :func:`quantize_model`,
  :func:`calibrate`, :func:`freeze`, :func:`unwrap`;
- :mod:`.algorithms`: the algorithms by name (``ptq``, ``dynamic``, ``ste``, ``pact``, ``dorefa``, ``bnn``,
  ``slb`` with its temperature helpers :func:`anneal` / :func:`set_temperature`);
- :mod:`.export`: :func:`export_int8`, a real int8 model: static (torch.ao FX by default, or torchao PT2E
  compiled — :mod:`.pt2e`; conv-bn-relu fused) or dynamic (Linear/LSTM/GRU);
- :mod:`.weight_only`: :func:`quantize_weight_only`, torchao weight-only int8 / int4 Linear layers (for
  Linear-heavy models: transformers, MLPs), with :func:`weight_only_info` and :func:`int4_available`.

Example:
    >>> import torch
    >>> from slimtune.compressors import QuantSpec
    >>> from slimtune.compressors.quantization import calibrate, freeze, quantize_model
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> q = quantize_model(model, {"0": QuantSpec(8, 8), "2": QuantSpec(4, 8)}, observer="percentile")
    >>> q = freeze(calibrate(q, [torch.randn(32, 4)]))
    >>> sorted(quant_wrappers(q))
    ['0', '2']
"""

from __future__ import annotations

from slimtune.compressors.quantization.algorithms import (
    ALGORITHMS,
    QuantAlgorithm,
    anneal,
    get_algorithm,
    post_training_quantize,
    register_algorithm,
    set_temperature,
    slb_candidates,
    slb_probabilities,
)
from slimtune.compressors.quantization.export import (
    PT2EInt8Model,
    export_int8,
    exported_size_bytes,
    load_int8,
    pt2e_available,
    save_int8,
)
from slimtune.compressors.quantization.functional import (
    affine_qparams,
    dequantize_per_channel,
    fake_quantize_activation,
    fake_quantize_weight,
    quantize_weight_per_channel,
)
from slimtune.compressors.quantization.modules import (
    QuantWrapper,
    calibrate,
    freeze,
    quant_wrappers,
    quantizable_layers,
    quantize_model,
    unwrap,
    weight_bits,
)
from slimtune.compressors.quantization.observers import OBSERVERS, Observer, make_observer, register_observer
from slimtune.compressors.quantization.weight_only import (
    WeightOnlyInfo,
    int4_available,
    quantize_weight_only,
    weight_only_info,
)
from slimtune.errors import QuantExportError, QuantizationError

__all__ = [
    "ALGORITHMS",
    "PT2EInt8Model",
    "QuantExportError",
    "export_int8",
    "exported_size_bytes",
    "load_int8",
    "pt2e_available",
    "save_int8",
    "OBSERVERS",
    "Observer",
    "QuantAlgorithm",
    "QuantWrapper",
    "QuantizationError",
    "affine_qparams",
    "anneal",
    "calibrate",
    "dequantize_per_channel",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "freeze",
    "get_algorithm",
    "make_observer",
    "post_training_quantize",
    "quant_wrappers",
    "quantizable_layers",
    "quantize_model",
    "weight_bits",
    "quantize_weight_per_channel",
    "register_algorithm",
    "register_observer",
    "set_temperature",
    "slb_candidates",
    "slb_probabilities",
    "unwrap",
    "WeightOnlyInfo",
    "int4_available",
    "quantize_weight_only",
    "weight_only_info",
]
