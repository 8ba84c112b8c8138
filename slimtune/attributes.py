"""Every study and trial attribute slimtune writes, by name, with typed accessors.

slimtune keeps what it knows in the study's Optuna storage as *user attributes* (JSON values):
the study's settings and the original model's measures on the study, and on each trial its plan,
measures, constraints, times, saved model, where it ran and, on failure, why. The search, the
strategies, the dashboard and the CLI read and write them through the names and accessors here,
so one name means one thing everywhere, and a newcomer finds them in one place.

Strategy attributes are namespaced by the strategy (``sa.step``, ``netadapt.iteration``); the
strategies define what they mean.

Example:
    >>> import optuna
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> trial.set_user_attr(Trial.MEASURES, {"accuracy": 0.9, "flops": 0.5})
    >>> study.tell(trial, 0.9)
    FrozenTrial(...)
    >>> measures(study.trials[0])["flops"]
    0.5
    >>> fail_reason(study.trials[0]) is None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


class Study:
    """Attributes of a study (written when it is created; ``n_trials`` on every run)."""

    #: slimtune's version; written last, so its presence marks a fully initialised study
    VERSION = "slimtune"
    STRATEGY = "strategy"
    STRATEGY_PARAMS = "strategy_params"
    OBJECTIVES = "objectives"
    DIRECTIONS = "directions"
    WEIGHTS = "weights"
    CONSTRAINTS = "constraints"
    #: the search-space options (``SpaceOptions.to_dict``)
    SPACE = "space"
    TASK = "task"
    METRIC_NAME = "metric_name"
    METRIC_DIRECTION = "metric_direction"
    #: the original model's metric and measures (``accuracy``, ``flops``, ``params``, ``size``, ``latency``,
    #: ``memory``)
    BASELINE = "baseline"
    #: the hardware the baseline's latency and memory were measured on (:func:`slimtune.devices.hardware`)
    BASELINE_DEVICE = "baseline_device"
    #: the batch size of the baseline's latency and memory
    MEASURE_BATCH = "measure_batch"
    #: where latency is measured: ``{"runtime", "batch", "threads"}`` (``LatencySetting.to_dict``)
    LATENCY = "latency"
    #: the budget of finished trials asked for by the latest run
    N_TRIALS = "n_trials"
    SEED = "seed"
    ARTIFACTS_DIR = "artifacts_dir"
    #: plausible range of the metric (from the original's value), for warnings
    METRIC_RANGE = "metric_range"


class Trial:
    """Attributes of a trial."""

    #: the compression plan (``CompressionPlan.to_dict``)
    PLAN = "plan"
    #: every measure, absolute (``*_abs``) and relative to the original, and the metric's drop
    MEASURES = "measures"
    #: why the trial failed (``Type: message``)
    FAIL_REASON = "fail_reason"
    #: seconds spent in each phase (compress, finetune, evaluate, measure, save, total)
    TIMES = "times"
    #: the id of the saved compressed model (an Optuna artifact)
    ARTIFACT = "model_artifact"
    HOSTNAME = "hostname"
    #: ``{constraint text: violation}`` (<= 0 is feasible)
    CONSTRAINTS = "constraints"
    #: a trial whose plan equals an earlier one's reuses its result
    DUPLICATE_OF = "duplicate_of"
    #: the trial whose saved model this trial compressed further (iterative strategies)
    INIT_FROM = "init_from"
    #: what a training compressor reports (rounds, final sparsity ...)
    COMPRESSOR_INFO = "compressor_info"
    #: why the latency of a quantized model was measured on the fake-quantized model
    LATENCY_NOTE = "latency_note"
    #: the runtime the trial's latency was measured in (``onnxruntime, batch 1, 1 thread``)
    LATENCY_RUNTIME = "latency_runtime"
    #: where the trial ran: backend, host, pid (and Ray node, node IP, actor)
    WORKER = "worker"
    #: the device the trial ran on, with its hardware (``cuda:0 (NVIDIA H100 80GB HBM3)``)
    DEVICE = "device"
    #: asked for when the budget was already used by other workers: PRUNED, not counted
    OVER_BUDGET = "over_budget"
    #: set by a strategy on the trial after which it has nothing more to propose
    STRATEGY_FINISHED = "strategy_finished"
    #: a trial run under Ray Tune: its run and Tune trial (``experiment``, ``run``, ``trial_id``) and, when
    #: Tune's scheduler stopped it (PRUNED), ``stopped_by``, ``iteration`` and the last ``finetune_metric``
    TUNE = "tune"


class SensitivityCache:
    """Attributes of a sensitivity cache study (``slimtune-sensitivity-<key>``)."""

    #: the finished table, one mapping per row (what the dashboard reads)
    TABLE = "table"
    #: the original model's metric the drops are measured against
    BASELINE = "baseline"
    DIRECTION = "direction"
    CRITERION = "criterion"
    #: on each stored evaluation (a trial of the cache study): its row, and the baseline it used
    ROW = "row"
    ROW_BASELINE = "baseline"


class StrategyState:
    """Study attributes a strategy keeps so that resumed runs and other workers share them."""

    #: the measured per-layer latency lookup table (``LatencyTable.to_dict``)
    LATENCY_TABLE = "slimtune:latency_table"
    #: the measured bit-width latency table (``BitsLatencyTable.to_dict``)
    BITS_LATENCY_TABLE = "slimtune:bits_latency_table"
    #: simulated annealing: the seed of the chain's random moves
    SA_SEED = "slimtune:sa.seed"
    #: NetAdapt: the first iteration's step chosen by ``step: auto``
    NETADAPT_STEP = "netadapt.step"


class SA:
    """Trial attributes of simulated annealing (``strategies/simulated_annealing.py``)."""

    STEP = "sa.step"
    TEMPERATURE = "sa.temperature"
    BASE = "sa.base"
    RESOURCE = "sa.resource"
    TARGET_MET = "sa.target_met"
    ACCEPTED = "sa.accepted"
    COST = "sa.cost"
    DECIDED = "sa.decided_at"
    CHAIN = "sa.chain"


class NetAdapt:
    """Trial attributes of NetAdapt (``strategies/netadapt.py``)."""

    ITERATION = "netadapt.iteration"
    CANDIDATE = "netadapt.candidate"
    BUDGET = "netadapt.budget"
    RESOURCE = "netadapt.resource"
    BASE = "netadapt.base"
    RESULT = "netadapt.result"
    SPARE = "netadapt.spare"


class ADMM:
    """Trial attributes of the ADMM strategy (``strategies/admm.py``)."""

    RESOURCE = "admm.resource"
    BUDGET_MET = "admm.budget_met"


class AutoCompress:
    """Trial attributes of AutoCompress (``strategies/autocompress.py``)."""

    ROUND = "autocompress.round"
    TARGET = "autocompress.target"
    BASE = "autocompress.base"
    OUTCOME = "autocompress.admm"
    PHASE = "autocompress.phase"
    RESULT = "autocompress.result"


# ---------------------------------------------------------------------- trial accessors
def plan(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's plan as stored (``CompressionPlan.from_dict`` rebuilds it)."""
    return trial.user_attrs.get(Trial.PLAN)


def measures(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's measures (empty before it finished or when it failed before measuring)."""
    return dict(trial.user_attrs.get(Trial.MEASURES) or {})


def constraints(trial: FrozenTrial) -> dict[str, float] | None:
    """``{constraint: violation}``, or None for a study without constraints."""
    return trial.user_attrs.get(Trial.CONSTRAINTS)


def feasible(trial: FrozenTrial) -> bool | None:
    """Whether every constraint holds (None without constraints)."""
    values = constraints(trial)
    return None if values is None else all(v <= 0 for v in values.values())


def fail_reason(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(Trial.FAIL_REASON)


def compressor_info(trial: FrozenTrial) -> dict[str, Any]:
    """What the trial's training compressor reported (empty for one-shot pruning)."""
    return dict(trial.user_attrs.get(Trial.COMPRESSOR_INFO) or {})


def times(trial: FrozenTrial) -> dict[str, float]:
    return dict(trial.user_attrs.get(Trial.TIMES) or {})


def artifact_id(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(Trial.ARTIFACT)


def worker(trial: FrozenTrial) -> dict[str, Any]:
    """Where the trial ran (empty when not recorded)."""
    return dict(trial.user_attrs.get(Trial.WORKER) or {})


def over_budget(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(Trial.OVER_BUDGET))


def duplicate_of(trial: FrozenTrial) -> int | None:
    """The earlier trial whose result this one reuses (same plan), or None."""
    return trial.user_attrs.get(Trial.DUPLICATE_OF)


def hostname(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(Trial.HOSTNAME)


def device(trial: FrozenTrial) -> str | None:
    """The device the trial ran on (``cuda:1 (NVIDIA ...)``, ``cpu (...)``), or None for older trials."""
    return trial.user_attrs.get(Trial.DEVICE)


# ---------------------------------------------------------------------- study accessors
def initialised(study: optuna.Study) -> bool:
    """The study was created by slimtune and its set-up finished."""
    return Study.VERSION in study.user_attrs


def baseline(study: optuna.Study) -> dict[str, Any]:
    """The original model's metric (``accuracy``) and measures."""
    return dict(study.user_attrs.get(Study.BASELINE) or {})


def baseline_device(study: optuna.Study) -> tuple[str | None, int]:
    """The hardware and the batch size of the baseline's latency and memory (None, 32 for studies
    older than devices, which measured on the CPU at batch 32)."""
    return study.user_attrs.get(Study.BASELINE_DEVICE), int(study.user_attrs.get(Study.MEASURE_BATCH) or 32)


def objectives(study: optuna.Study) -> list[str]:
    """The objectives' names (``value_i`` for a study slimtune did not create)."""
    names = study.user_attrs.get(Study.OBJECTIVES)
    return list(names) if names else [f"value_{i}" for i in range(len(study.directions))]


def weights(study: optuna.Study) -> dict[str, float] | None:
    return study.user_attrs.get(Study.WEIGHTS)


def study_constraints(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get(Study.CONSTRAINTS) or [])


def n_trials(study: optuna.Study) -> int | None:
    """The budget the latest run asked for."""
    return study.user_attrs.get(Study.N_TRIALS)


def metric_direction(study: optuna.Study) -> str:
    return study.user_attrs.get(Study.METRIC_DIRECTION, "maximize")


def metric_name(study: optuna.Study) -> str:
    return study.user_attrs.get(Study.METRIC_NAME, "accuracy")


def strategy(study: optuna.Study) -> str:
    return study.user_attrs.get(Study.STRATEGY, "?")


def artifacts_dir(study: optuna.Study) -> str | None:
    return study.user_attrs.get(Study.ARTIFACTS_DIR)


__all__ = [
    "ADMM",
    "SA",
    "AutoCompress",
    "SensitivityCache",
    "NetAdapt",
    "StrategyState",
    "Study",
    "Trial",
    "artifact_id",
    "artifacts_dir",
    "baseline",
    "compressor_info",
    "constraints",
    "duplicate_of",
    "fail_reason",
    "feasible",
    "hostname",
    "initialised",
    "measures",
    "metric_direction",
    "metric_name",
    "n_trials",
    "objectives",
    "over_budget",
    "plan",
    "strategy",
    "study_constraints",
    "times",
    "weights",
    "worker",
]
