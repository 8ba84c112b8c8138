"""``bitwidth``: mixed-precision search of per-layer weight (and activation) bit-widths under a size or latency budget.

After HAQ (Wang, Liu, Lin, Lin and Han, "HAQ: Hardware-Aware Automated Quantization with Mixed
Precision", CVPR 2019): every quantizable layer gets its own bit-widths; the search maximises the
metric of the quantized, fine-tuned model while a resource constraint holds, and a proposal that
breaks the constraint is repaired by lowering bit-widths one step at a time until it holds
(:mod:`slimtune.strategies._repair`). HAQ's DDPG agent is replaced by an Optuna sampler (TPE by
default: ``sampler: nsga2`` or ``random`` also work; ``sampler_params`` go to it). HAQ's
hardware feedback is one of two resource models:

* ``size``, predicted exactly from the plan
  (:class:`~slimtune.compressors.measures.ResourcePredictor`): packed weights at their bit-width
  plus one fp32 scale per output channel;
* ``latency``, from a table measured on this machine
  (:class:`~slimtune.compressors.measures.BitsLatencyTable`, built once per study at batch 32 and
  one thread, and cached in the study): every searched layer timed in fp32 and as the int8 kernel
  of the model's int8 export, on the input it receives, plus both whole models; a plan's latency
  is the layers' times at their precision plus the remaining ops, interpolated between the two
  whole models. On the CPU a layer with at most 8 weight bits runs as an int8 kernel and there are
  no faster kernels below 8 bits, so 2- and 4-bit layers cost what 8-bit ones do (they still save
  size and cost accuracy), and 32-bit layers run in fp32. Trials measure the latency of
  the deployable model: the int8 export of their quantized layers
  (:func:`~slimtune.compressors.measures.measure_deployable`).

Sensitivity seeds the search: the first trials are each layer at its lowest one-shot-safe
bit-width (from the bit sensitivity table the runner caches when ``space.bits_w`` lists widths
below 32) and every layer at its widest width, both repaired to the budget; the repair lowers
first the layers whose metric drops least per unit of resource saved.

Only bit-widths are searched (``bits_w/<layer>``, and ``bits_a/<layer>`` when ``space.bits_a`` is
set); no channel is pruned (``joint`` searches both; its ``latency`` budget is the channel
pruning table, which ignores bit-widths). The budget is ``size`` or ``latency`` (bit-widths
change neither MACs nor parameters). The HAQ formulation is ``objectives: [accuracy]`` with
``constraints: [size <= 0.25]`` or ``[latency <= 0.6]``; ``objectives: [accuracy, size]`` gives a
Pareto front of feasible trials. A latency target below the all-int8 model's relative latency
(``BitsLatencyTable.relative``) cannot be met: the repair moves to int8 every layer where that
saves time and records ``bitwidth.budget_met: false``.

Parameters (spec ``strategy`` section):

================== ============================ =============================================
``resource``       the first ``size`` or        ``size`` or ``latency``
                   ``latency`` constraint
``target``         that constraint's bound      size or latency to keep, relative to the float
                                                model (None and no constraint: no repair)
``sampler``        ``tpe``                      ``tpe``, ``nsga2`` or ``random``
``sampler_params`` ``{}``                       parameters of that strategy's sampler
================== ============================ =============================================

Example:
    >>> import slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))
    >>> study = slimtune.search(task, strategy="bitwidth", n_trials=4, storage="memory", objectives=["accuracy"],
    ...                         constraints=["size <= 0.3"], space={"bits_w": [2, 4, 8, 32], "sensitivity": False},
    ...                         progress=False, save_models="none")
    >>> all(t.user_attrs["measures"]["size"] <= 0.3 for t in study.trials)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from slimtune.errors import StrategyError
from slimtune.search_spaces.space import BITS_A_PREFIX, BITS_W_PREFIX, QUANT_ALGORITHM_PARAM
from slimtune.strategies._base import Strategy, get_strategy, register_strategy
from slimtune.strategies._budget import check_budget_params
from slimtune.strategies._repair import BudgetRepairSampler

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace

INNER_SAMPLERS = ("tpe", "nsga2", "random")
RESOURCES = ("size", "latency")
"""The budgets of ``bitwidth``: bit-widths change neither MACs nor parameters."""


def check_inner(strategy: str, params: Mapping[str, Any]) -> None:
    """Validate ``sampler``/``sampler_params`` (errors name the field)."""
    if params["sampler"] not in INNER_SAMPLERS:
        raise StrategyError(
            f"strategy {strategy!r}: strategy.sampler {params['sampler']!r} must be one of {', '.join(INNER_SAMPLERS)}",
            field="strategy.sampler",
        )
    if not isinstance(params["sampler_params"], Mapping):
        raise StrategyError(
            f"strategy {strategy!r}: strategy.sampler_params must be a mapping, got {params['sampler_params']!r}",
            field="strategy.sampler_params",
        )
    try:
        get_strategy(params["sampler"], **params["sampler_params"])
    except ValueError as e:
        raise StrategyError(
            f"strategy {strategy!r}: strategy.sampler_params: {e}", field="strategy.sampler_params"
        ) from None


def bit_names(space: SearchSpace, strategy: str) -> list[str]:
    """The space's ``bits_w/`` and ``bits_a/`` parameters; an error naming ``space.bits_w`` without any."""
    names = [k for k in space.distributions() if k.startswith((BITS_W_PREFIX, BITS_A_PREFIX))]
    if not names:
        raise StrategyError(
            f"strategy {strategy!r} searches bit-widths but the space has none: set space.bits_w "
            "(e.g. bits_w: [2, 4, 8, 32]; 32 = float)",
            field="space.bits_w",
        )
    return names


@register_strategy
class Bitwidth(Strategy):
    """HAQ-like mixed-precision search (module docstring)."""

    name = "bitwidth"
    defaults = {"resource": None, "target": None, "sampler": "tpe", "sampler_params": {}}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_budget_params(self.name, self.params, allowed=RESOURCES)
        check_inner(self.name, self.params)

    def sampler(self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None) -> BudgetRepairSampler:
        names = bit_names(space, self.name)
        inner = get_strategy(self.params["sampler"], **self.params["sampler_params"]).sampler(
            space, n_objectives, seed, n_trials
        )
        dists = space.distributions()
        widest = {k: max(d.choices) for k, d in dists.items() if k in names}  # type: ignore[attr-defined]
        priors = []
        if getattr(space, "safe_bits", None):
            priors.append({**widest, **{BITS_W_PREFIX + layer: b for layer, b in space.safe_bits.items()}})
        priors.append(widest)
        return BudgetRepairSampler(
            inner,
            space,
            names,
            self.name,
            self.params["resource"],
            self.params["target"],
            RESOURCES,
            priors,
            latency="bits",
        )

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        return {
            k: trial.suggest_categorical(k, d.choices)  # type: ignore[attr-defined]
            for k, d in space.distributions().items()
            if k.startswith((BITS_W_PREFIX, BITS_A_PREFIX)) or k == QUANT_ALGORITHM_PARAM
        }

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # the sampler proposes the sensitivity priors first, repaired to the budget
