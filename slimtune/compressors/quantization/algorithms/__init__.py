"""Quantization algorithms, registered by name in :data:`ALGORITHMS`.

========= ===================================================================== ==================
name      what                                                                  paper
========= ===================================================================== ==================
``ptq``   static post-training quantization: calibrate, freeze, no training     Krishnamoorthi 2018
``ste``   QAT, straight-through fake quantization of weights and activations    Bengio 2013, Jacob 2018
``pact``  QAT with a learned activation clip ``α`` per layer                    Choi et al. 2018
``dorefa`` ``tanh``-normalised k-bit weights in [-1, 1]                         Zhou et al. 2016
``bnn``   binary weights ``sign(w)·α`` (and ``sign`` activations at 1 bit)      Courbariaux 2016, Rastegari 2016
``dynamic`` dynamic PTQ: per-channel weights only (Linear, Conv, LSTM, GRU),   Krishnamoorthi 2018
          float activations; exported with ``mode="dynamic"``
``slb``   learned softmax over the ``2^b`` candidate values of each weight,     Yang et al. 2020
          temperature annealed, argmax at eval
========= ===================================================================== ==================

A new algorithm is one module with a :class:`QuantAlgorithm` subclass decorated by
:func:`register_algorithm`, imported below.

Example:
    >>> sorted(ALGORITHMS)
    ['bnn', 'dorefa', 'dynamic', 'pact', 'ptq', 'slb', 'ste']
"""

from __future__ import annotations

from slimtune.compressors.quantization.algorithms._base import (
    ALGORITHMS,
    QuantAlgorithm,
    get_algorithm,
    register_algorithm,
)
from slimtune.compressors.quantization.algorithms.bnn import BNN, binarize_activation
from slimtune.compressors.quantization.algorithms.dorefa import DoReFa, dorefa_weight
from slimtune.compressors.quantization.algorithms.dynamic import DynamicPTQ
from slimtune.compressors.quantization.algorithms.pact import PACT

# Importing the algorithm modules registers them.
from slimtune.compressors.quantization.algorithms.ptq import PTQ, post_training_quantize
from slimtune.compressors.quantization.algorithms.slb import (
    SLB,
    anneal,
    set_temperature,
    slb_candidates,
    slb_probabilities,
)
from slimtune.compressors.quantization.algorithms.ste import STE

__all__ = [
    "ALGORITHMS",
    "BNN",
    "DoReFa",
    "DynamicPTQ",
    "PACT",
    "PTQ",
    "QuantAlgorithm",
    "SLB",
    "STE",
    "anneal",
    "binarize_activation",
    "dorefa_weight",
    "get_algorithm",
    "post_training_quantize",
    "register_algorithm",
    "set_temperature",
    "slb_candidates",
    "slb_probabilities",
]
