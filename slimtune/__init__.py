"""slimtune: AutoML compression of PyTorch models as hyperparameter search.

Find the best compressed versions of a trained model (pruned, sped up, quantized), trading the
task's metric against FLOPs, latency, memory and size, as an Optuna study, on the CPU or a GPU.
"""

from __future__ import annotations

from slimtune import devices
from slimtune.compressors import CompressionPlan, FinetuneConfig, KDConfig, compress, finetune, measure, speedup, trace
from slimtune.compressors.measures import MemoryResult, measure_memory
from slimtune.compressors.state import load, save
from slimtune.errors import CriterionError, DeviceError, PlanError, SlimtuneError, TraceError
from slimtune.trials import (
    SearchConfig,
    Task,
    bit_sensitivity_table,
    export_model,
    load_model,
    open_study,
    pareto_front,
    run_study,
    search,
    sensitivity_table,
    studies_summary,
)
from slimtune.version import __version__

__all__ = [
    "CompressionPlan",
    "FinetuneConfig",
    "KDConfig",
    "SearchConfig",
    "Task",
    "bit_sensitivity_table",
    "export_model",
    "load_model",
    "open_study",
    "pareto_front",
    "run_study",
    "search",
    "sensitivity_table",
    "studies_summary",
    "CriterionError",
    "DeviceError",
    "MemoryResult",
    "devices",
    "load",
    "save",
    "measure_memory",
    "PlanError",
    "SlimtuneError",
    "TraceError",
    "__version__",
    "compress",
    "finetune",
    "measure",
    "speedup",
    "trace",
]
