"""Search strategies: each an Optuna sampler over the shared search space, registered by name.

=================== ===============================================================
name                algorithm
=================== ===============================================================
uniform             one sparsity for every group, swept over a grid (baseline)
random              random search (Optuna RandomSampler)
tpe                 TPE / MOTPE (Optuna TPESampler, constant liar)
nsga2               NSGA-II (Optuna NSGAIISampler), the default
simulated_annealing per-group sparsities annealed at a resource target (FLOPs,
                    params, size or latency); ends when cooled
netadapt            NetAdapt: iterations lowering the resource, one trial per
                    candidate group; ends at the target
bitwidth            HAQ-like per-layer bit-widths under a size or latency budget
joint               per-group sparsities and per-layer bit-widths (and ranks) together
lowrank             per-layer ranks of a low-rank factorization (SVD, Tucker-2),
                    alone or with the per-group sparsities
admm                ADMM pruning (compressor ``admm``) toward searched or fixed
                    per-group targets; tunes rho / iterations on request
autocompress        AutoCompress: rounds of simulated annealing at falling targets,
                    ADMM per proposal, each round from the previous best model
=================== ===============================================================

Iterative strategies end on their own (:meth:`Strategy.finished`); the runner then stops the
study. Strategies that aim at a resource target take it from their ``resource``/``target``
parameters or from the study's constraints (``flops <= 0.5``).

A new strategy is one module with a :class:`Strategy` subclass decorated with
:func:`register_strategy`, imported below.
"""

from __future__ import annotations

from slimtune.strategies import (  # noqa: F401  (registration)
    admm,
    autocompress,
    bitwidth,
    joint,
    lowrank,
    netadapt,
    nsga2,
    random_search,
    simulated_annealing,
    tpe,
    uniform,
)
from slimtune.strategies._base import STRATEGIES, Strategy, get_strategy, register_strategy

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register_strategy"]
