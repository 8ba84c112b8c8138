"""The options of ``backend: tune`` (:class:`TuneOptions`): Ray Tune's scheduler, callbacks, failures.

A spec's ``tune:`` section (or ``search(..., backend="tune", tune={...})``, or the keyword arguments
of :func:`slimtune.tune.tuner`) is checked here, without importing Ray; every error is a
:class:`~slimtune.errors.ConfigError` whose ``field`` names the option (``tune.scheduler.max_t``).

Schedulers (``scheduler``: a name, or a mapping with ``name`` and the scheduler's parameters):

- ``fifo`` (default): every trial runs to its end;
- ``asha`` (``async_hyperband``): Tune's ``ASHAScheduler`` (Li et al., 2020), Tune's defaults; its ``max_t``
  counts a trial's fine-tune reports (slimtune adds one for the report of its measures after them, so a trial
  that reaches ``max_t`` is evaluated, not stopped);
- ``median_stopping`` (``median``): Tune's ``MedianStoppingRule`` (Golovin et al., 2017), with
  ``time_attr: training_iteration`` and ``grace_period: 1`` by default (a trial's fine-tune reports are
  its iterations; Tune's defaults count seconds and wait a minute).

slimtune sets the scheduler's ``metric`` and ``mode``: in a study weighted over the metric and FLOPs, params
or size, :data:`OBJECTIVE_METRIC` (the weighted value with the metric reached so far, minimised), else
:data:`SCHEDULER_METRIC` (the task's metric a trial reports while it is fine-tuned, in the task's direction);
the scheduler's ``metric`` parameter picks one of the two. Schedulers that pause and resume trials
(HyperBand, BOHB, PBT) are not offered: a slimtune trial's plan is fixed and it keeps no checkpoint
halfway through its fine-tuning.

Callbacks (``callbacks``: a list of names, or mappings with ``name`` and the callback's parameters):
``csv``, ``json``, ``tensorboard`` (Tune's logger callbacks, one file per trial in its directory),
``mlflow`` and ``wandb`` (Ray's integrations; their packages and servers are the user's).

Example:
    >>> options = TuneOptions.from_dict({"scheduler": {"name": "asha", "reduction_factor": 2},
    ...                                  "callbacks": ["csv", "tensorboard"], "max_concurrent_trials": 2})
    >>> options.scheduler, [c["name"] for c in options.callbacks]
    ({'name': 'asha', 'reduction_factor': 2}, ['csv', 'tensorboard'])
    >>> TuneOptions.from_dict({"scheduler": {"name": "asha", "max_t": 0}})
    Traceback (most recent call last):
    ...
    slimtune.errors.ConfigError: tune.scheduler.max_t: must be an integer ≥ 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slimtune.errors import ConfigError

#: What a trial reports to Tune while it is fine-tuned (and at its end): the task's metric.
SCHEDULER_METRIC = "finetune_metric"
#: What a trial of a weighted study over accuracy and FLOPs, params or size also reports: the weighted value with
#: the metric so far and the plan's predicted FLOPs, params and size (exact, before the model is built).
OBJECTIVE_METRIC = "finetune_objective"
#: The objectives a plan's value can be predicted for without building the model (besides the metric).
PREDICTED = ("flops", "params", "size")

#: Fields of the ``tune`` options (spec section ``tune:``) and what each holds.
TUNE_FIELDS: dict[str, str] = {
    "scheduler": "fifo (default: trials run to their end), asha or median_stopping; or {name: asha, "
    "<its parameters>}: stops trials from the metric they report while fine-tuned (one objective or weights only)",
    "callbacks": "Tune callbacks, e.g. [csv, tensorboard]: csv, json, tensorboard, mlflow, wandb (a name, or "
    "{name: mlflow, <its parameters>})",
    "max_concurrent_trials": "trials running at once (default: as many as the cluster's resources hold)",
    "resources_per_trial": "Ray resources of one trial: cpu, gpu, memory (bytes) or custom resources "
    "(default {cpu: 1})",
    "max_failures": "times Tune retries a trial whose worker died (FailureConfig; default 1)",
    "address": "a running Ray cluster, e.g. 127.0.0.1:6379 (default: $RAY_ADDRESS, else a local Ray)",
    "storage_path": "the folder of Tune's experiments (default: <storage file stem>-tune beside a SQLite or journal "
    "file, else ~/ray_results)",
    "name": "the Tune experiment's name, a folder in storage_path (default: the study's name)",
    "reuse_actors": "a trial's Ray actor runs the next trial too (default true: start-up paid once per actor)",
}

#: Schedulers by name: their parameters and the defaults slimtune gives them (over Tune's).
SCHEDULERS: dict[str, dict[str, Any]] = {
    "fifo": {},
    "asha": {
        "metric": None,
        "time_attr": None,
        "max_t": None,
        "grace_period": None,
        "reduction_factor": None,
        "brackets": None,
        "stop_last_trials": None,
    },
    "median_stopping": {
        "metric": None,
        "time_attr": "training_iteration",
        "grace_period": 1,
        "min_samples_required": None,
        "min_time_slice": None,
        "hard_stop": None,
    },
}
_SCHEDULER_ALIASES = {"async_hyperband": "asha", "median": "median_stopping", "fifo": "fifo"}

#: Callbacks by name: which take parameters (passed to the callback's constructor).
CALLBACKS: dict[str, bool] = {"csv": False, "json": False, "tensorboard": False, "mlflow": True, "wandb": True}


def estimated(objectives: Any, weights: Any) -> bool:
    """Whether trials of a study with these objectives and weights report :data:`OBJECTIVE_METRIC`: weights over
    the metric and any of FLOPs, params and size (the others are measured on the built model only)."""
    return weights is not None and "accuracy" in objectives and set(objectives) <= {"accuracy", *PREDICTED}


@dataclass(frozen=True)
class TuneOptions:
    """How a study runs under Ray Tune (see :data:`TUNE_FIELDS`).

    Args:
        scheduler: ``{"name": ..., **parameters}`` (:data:`SCHEDULERS`).
        callbacks: ``({"name": ..., **parameters}, ...)`` (:data:`CALLBACKS`).
        max_concurrent_trials: Trials at once; None: as many as fit the cluster's resources.
        resources_per_trial: ``cpu``, ``gpu``, ``memory`` (bytes) and custom resources of one trial.
        max_failures: Retries of a trial whose worker died (Tune's ``FailureConfig``).
        address: A running Ray cluster; None: ``$RAY_ADDRESS``, else a local Ray.
        storage_path: The folder of Tune's experiments; None: beside a file storage, else ``~/ray_results``.
        name: The experiment's name; None: the study's.
        reuse_actors: One Ray actor runs several trials in a row.
    """

    scheduler: Mapping[str, Any] = field(default_factory=lambda: {"name": "fifo"})
    callbacks: tuple[Mapping[str, Any], ...] = ()
    max_concurrent_trials: int | None = None
    resources_per_trial: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    max_failures: int = 1
    address: str | None = None
    storage_path: str | None = None
    name: str | None = None
    reuse_actors: bool = True

    @property
    def scheduler_name(self) -> str:
        return str(self.scheduler["name"])

    @classmethod
    def from_value(cls, value: TuneOptions | Mapping[str, Any] | None) -> TuneOptions:
        """``value`` as options: a :class:`TuneOptions`, a mapping (validated) or ``None`` (defaults)."""
        if isinstance(value, TuneOptions):
            return value
        return cls.from_dict(value or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "tune.") -> TuneOptions:
        """Validate a mapping of :data:`TUNE_FIELDS`; a :class:`~slimtune.errors.ConfigError` names the bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"expected a mapping of {', '.join(TUNE_FIELDS)}, got {type(data).__name__}", field=prefix.rstrip(".")
            )
        for key in data:
            if key not in TUNE_FIELDS:
                raise ConfigError(f"unknown field; known fields: {', '.join(TUNE_FIELDS)}", field=f"{prefix}{key}")
        concurrent = data.get("max_concurrent_trials")
        if concurrent is not None:
            concurrent = _integer(concurrent, f"{prefix}max_concurrent_trials", 1)
        for key in ("address", "storage_path", "name"):
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"expected a non-empty string, got {value!r}", field=f"{prefix}{key}")
        reuse = data.get("reuse_actors", True)
        if not isinstance(reuse, bool):
            raise ConfigError(f"expected true or false, got {reuse!r}", field=f"{prefix}reuse_actors")
        return cls(
            scheduler=_scheduler(data.get("scheduler", "fifo"), f"{prefix}scheduler"),
            callbacks=tuple(_callbacks(data.get("callbacks", ()), f"{prefix}callbacks")),
            max_concurrent_trials=concurrent,
            resources_per_trial=_resources(
                data.get("resources_per_trial", {"cpu": 1.0}), f"{prefix}resources_per_trial"
            ),
            max_failures=_integer(data.get("max_failures", 1), f"{prefix}max_failures", 0),
            address=data["address"].strip() if data.get("address") else None,
            storage_path=data.get("storage_path"),
            name=data.get("name"),
            reuse_actors=reuse,
        )

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data; ``TuneOptions.from_dict(o.to_dict()) == o``."""
        out: dict[str, Any] = {"scheduler": dict(self.scheduler), "callbacks": [dict(c) for c in self.callbacks]}
        if self.max_concurrent_trials is not None:
            out["max_concurrent_trials"] = self.max_concurrent_trials
        out["resources_per_trial"] = dict(self.resources_per_trial)
        out["max_failures"] = self.max_failures
        for key in ("address", "storage_path", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["reuse_actors"] = self.reuse_actors
        return out

    def scheduler_params(self) -> dict[str, Any]:
        """The scheduler's parameters: slimtune's defaults (:data:`SCHEDULERS`) under the given ones."""
        defaults = {k: v for k, v in SCHEDULERS[self.scheduler_name].items() if v is not None}
        return {**defaults, **{k: v for k, v in self.scheduler.items() if k != "name"}}

    def trial_resources(self) -> dict[str, float]:
        """Resources of one trial as ``tune.with_resources`` takes them."""
        return {k: float(v) for k, v in self.resources_per_trial.items() if v}


def _scheduler(value: Any, where: str) -> dict[str, Any]:
    data = {"name": value} if isinstance(value, str) else value
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ConfigError(
            f"expected a scheduler name ({', '.join(SCHEDULERS)}) or a mapping with 'name' and its parameters, "
            f"got {value!r}",
            field=where,
        )
    name = _SCHEDULER_ALIASES.get(data["name"], data["name"])
    if name not in SCHEDULERS:
        raise ConfigError(
            f"unknown scheduler {data['name']!r}; known: {', '.join(SCHEDULERS)} (schedulers that pause and resume "
            "trials, such as HyperBand or PBT, do not fit slimtune trials: a plan is fixed and a trial keeps no "
            "checkpoint halfway through its fine-tuning)",
            field=f"{where}.name" if isinstance(value, Mapping) else where,
        )
    params = {k: v for k, v in data.items() if k != "name"}
    for key, param in params.items():
        if key not in SCHEDULERS[name]:
            known = ", ".join(SCHEDULERS[name]) or "none"
            raise ConfigError(f"unknown parameter of scheduler {name!r}; known: {known}", field=f"{where}.{key}")
        _check_param(key, param, f"{where}.{key}")
    return {"name": name, **params}


def _check_param(key: str, value: Any, where: str) -> None:
    if key == "metric":
        if value not in (SCHEDULER_METRIC, OBJECTIVE_METRIC):
            raise ConfigError(f"expected {SCHEDULER_METRIC} or {OBJECTIVE_METRIC}, got {value!r}", field=where)
    elif key == "time_attr":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"expected a result key such as training_iteration, got {value!r}", field=where)
    elif key in ("stop_last_trials", "hard_stop"):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", field=where)
    elif key in ("max_t", "brackets", "min_samples_required"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"must be an integer ≥ 1, got {value!r}", field=where)
    elif key == "reduction_factor":
        if not _number(value) or value <= 1:
            raise ConfigError(f"must be a number > 1, got {value!r}", field=where)
    elif not _number(value) or value < 0:  # grace_period, min_time_slice
        raise ConfigError(f"must be a number ≥ 0, got {value!r}", field=where)


def _callbacks(value: Any, where: str) -> list[dict[str, Any]]:
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"expected a list such as [csv, tensorboard], got {value!r}", field=where)
    out = []
    for i, item in enumerate(items):
        data = {"name": item} if isinstance(item, str) else item
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ConfigError(
                f"expected a callback name ({', '.join(CALLBACKS)}) or a mapping with 'name' and its parameters, "
                f"got {item!r}",
                field=f"{where}[{i}]",
            )
        if data["name"] not in CALLBACKS:
            raise ConfigError(
                f"unknown callback {data['name']!r}; known: {', '.join(CALLBACKS)} (other Tune callbacks: pass the "
                "objects to slimtune.tune.tuner(callbacks=[...]))",
                field=f"{where}[{i}]",
            )
        if len(data) > 1 and not CALLBACKS[data["name"]]:
            extra = sorted(k for k in data if k != "name")
            raise ConfigError(f"callback {data['name']!r} takes no parameters, got {extra}", field=f"{where}[{i}]")
        out.append(dict(data))
    return out


def _resources(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"expected a mapping such as {{cpu: 1, gpu: 0}}, got {value!r}", field=where)
    checked: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"resource names must be strings, got {name!r}", field=where)
        if not _number(amount) or not math.isfinite(amount) or amount < 0:
            raise ConfigError(f"expected a number ≥ 0, got {amount!r}", field=f"{where}.{name}")
        checked[name.lower() if name.lower() in ("cpu", "gpu", "memory") else name] = float(amount)
    checked.setdefault("cpu", 1.0)
    if not any(v > 0 for v in checked.values()):
        raise ConfigError("a trial must need some resource (e.g. cpu: 1)", field=where)
    return checked


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", field=where)
    if value < minimum:
        raise ConfigError(f"must be ≥ {minimum}, got {value}", field=where)
    return value


__all__ = [
    "CALLBACKS",
    "OBJECTIVE_METRIC",
    "PREDICTED",
    "SCHEDULERS",
    "SCHEDULER_METRIC",
    "TUNE_FIELDS",
    "TuneOptions",
    "estimated",
]
