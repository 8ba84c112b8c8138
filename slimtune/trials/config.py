"""What a search is asked to do: :class:`SearchConfig`, shared by the Python API, the spec and the
Ray workers, and :class:`RayOptions`, the options of ``backend: ray``.

Each part of the configuration is checked by its owner (the search-space options by
:class:`~slimtune.search_spaces.SpaceOptions`, the objectives and constraints by
:mod:`slimtune.trials.cost`, the storage URL by :mod:`slimtune.trials.storage`, the Ray options
by :class:`RayOptions`); every error is a :class:`~slimtune.errors.ConfigError` whose ``field``
names the option, so a spec can report it as ``file: space.levels: ...``.

Example:
    >>> config = SearchConfig(strategy="random", n_trials=4, space={"levels": [0.5]})
    >>> config.study, config.space.levels
    ('slimtune-random', (0.5,))
    >>> SearchConfig(n_trials=0)
    Traceback (most recent call last):
    ...
    slimtune.errors.ConfigError: n_trials: must be >= 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from slimtune import devices
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.search_spaces import SpaceOptions
from slimtune.trials.cost import check_objectives, check_weights, parse_constraint
from slimtune.trials.storage import Heartbeat, parse_url
from slimtune.trials.tune_options import TuneOptions

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

BACKENDS = ("local", "ray", "tune")
SAVE_MODELS = ("all", "none")
#: the longest study name (it names folders, URLs and log lines)
MAX_STUDY_NAME = 200


@dataclass(frozen=True)
class SearchConfig:
    """One search: the strategy, the cost, the budget, where the study lives and how trials run.

    Args:
        strategy: A registered strategy name (``nsga2``, ``tpe``, ``netadapt`` ...).
        strategy_params: The strategy's parameters (e.g. ``{"population_size": 8}``).
        objectives: From :data:`slimtune.trials.cost.OBJECTIVES`.
        constraints: ``"<measure> <= value"`` or ``">="`` strings.
        weights: ``{objective: weight}`` for one weighted scalar instead of a Pareto search.
        n_trials: Budget of finished trials of the study (all workers and earlier runs); None
            runs until ``timeout``.
        timeout: Seconds this call may run.
        storage: An Optuna storage URL (default ``sqlite:///slimtune.db``) or storage object.
        study_name: The study's name (default ``slimtune-<strategy>``); an existing study of that
            name is resumed.
        space: Search-space options (:class:`~slimtune.search_spaces.SpaceOptions` or a dict).
        seed: Seed of the sampler.
        save_models: ``"all"`` saves every completed trial's model, ``"none"`` none.
        join: Join an existing study as an extra worker (error if it does not exist).
        progress: Progress bar and per-trial log lines.
        backend: ``"local"``, ``"ray"`` or ``"tune"`` (:mod:`slimtune.tune`).
        ray: :class:`RayOptions` (or a dict of them) for ``backend="ray"``.
        tune: :class:`~slimtune.trials.tune_options.TuneOptions` (or a dict of them) for ``backend="tune"``.
        heartbeat: Heartbeat settings of the workers (default from ``SLIMTUNE_HEARTBEAT_INTERVAL``
            and ``SLIMTUNE_GRACE_PERIOD``).
        device: Where this process runs its trials (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``);
            None: the task's ``device``. ``slimtune worker --device cuda:1`` sets it per worker.
        measure_batch: Batch size of the latency and memory measures; None: 32 on the CPU, 64 on a GPU.
        latency: Where and how latency is measured (objectives and constraints alike): a runtime name
            (``torch``, ``compile``, ``onnxruntime``), a mapping ``{runtime, batch, threads}`` or a
            :class:`~slimtune.compressors.measures.runtimes.LatencySetting`; None: eager PyTorch, one thread,
            at ``measure_batch``.
    """

    strategy: str = "nsga2"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    objectives: Sequence[str] = ("accuracy", "flops")
    constraints: Sequence[str] = ()
    weights: Mapping[str, float] | None = None
    n_trials: int | None = 20
    timeout: float | None = None
    storage: str | BaseStorage | None = None
    study_name: str | None = None
    space: SpaceOptions | Mapping[str, Any] | None = None
    seed: int = 0
    save_models: str = "all"
    join: bool = False
    progress: bool = True
    backend: str = "local"
    ray: RayOptions | Mapping[str, Any] | None = None
    tune: TuneOptions | Mapping[str, Any] | None = None
    heartbeat: Heartbeat = field(default_factory=Heartbeat.from_env)
    device: str | None = None
    measure_batch: int | None = None
    latency: Any = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once here
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ConfigError(f"expected a strategy name, got {self.strategy!r}", field="strategy")
        set_(self, "strategy_params", dict(self.strategy_params or {}))
        set_(self, "objectives", tuple(check_objectives(self.objectives)))
        set_(self, "constraints", tuple(_constraints(self.constraints)))
        if self.weights is not None:
            set_(self, "weights", check_weights(self.weights, self.objectives))
        if self.n_trials is None and self.timeout is None:
            raise ConfigError("give n_trials or timeout (or both)", field="n_trials")
        if self.n_trials is not None and (
            isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1
        ):
            raise ConfigError(f"must be >= 1, got {self.n_trials!r}", field="n_trials")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or not self.timeout > 0):
            raise ConfigError(f"must be a number of seconds > 0, got {self.timeout!r}", field="timeout")
        if isinstance(self.storage, str):
            parse_url(self.storage)
        if self.study_name is not None:
            _study_name(self.study_name)
        set_(self, "space", self.space if isinstance(self.space, SpaceOptions) else SpaceOptions.from_dict(self.space))
        if self.save_models not in SAVE_MODELS:
            raise ConfigError(f"must be 'all' or 'none', got {self.save_models!r}", field="save_models")
        if self.backend not in BACKENDS:
            raise ConfigError(f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}", field="backend")
        if self.ray is not None and self.backend != "ray":
            raise ConfigError("Ray options are given but backend is 'local': pass backend='ray'", field="ray")
        if self.backend == "ray":
            set_(self, "ray", RayOptions.from_value(self.ray))
        if self.tune is not None and self.backend != "tune":
            raise ConfigError(
                f"Tune options are given but backend is {self.backend!r}: pass backend='tune'",
                field="tune",
            )
        if self.backend == "tune":
            set_(self, "tune", TuneOptions.from_value(self.tune))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"expected an integer, got {self.seed!r}", field="seed")
        if self.device is not None:
            set_(self, "device", devices.check_name(self.device))
        if self.measure_batch is not None and (
            isinstance(self.measure_batch, bool) or not isinstance(self.measure_batch, int) or self.measure_batch < 1
        ):
            raise ConfigError(f"must be an integer >= 1, got {self.measure_batch!r}", field="measure_batch")
        from slimtune.compressors.measures.runtimes import LatencySetting

        set_(self, "latency", LatencySetting.parse(self.latency))

    @property
    def study(self) -> str:
        """The study's name: ``study_name`` or ``slimtune-<strategy>``."""
        return self.study_name or f"slimtune-{self.strategy}"

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data (what a Ray worker receives); needs a storage URL."""
        if self.storage is not None and not isinstance(self.storage, str):
            raise SlimtuneError("a configuration with a storage object cannot be sent to another process; give its URL")
        return {
            "strategy": self.strategy,
            "strategy_params": dict(self.strategy_params),
            "objectives": list(self.objectives),
            "constraints": list(self.constraints),
            "weights": dict(self.weights) if self.weights is not None else None,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "storage": self.storage,
            "study_name": self.study_name,
            "space": self.space.to_dict(),
            "seed": self.seed,
            "save_models": self.save_models,
            "join": self.join,
            "progress": self.progress,
            "backend": self.backend,
            "ray": self.ray.to_dict() if isinstance(self.ray, RayOptions) else None,
            "tune": self.tune.to_dict() if isinstance(self.tune, TuneOptions) else None,
            "device": self.device,
            "measure_batch": self.measure_batch,
            "latency": self.latency.to_dict(),
            "heartbeat": {
                "interval": self.heartbeat.interval,
                "grace_period": self.heartbeat.grace_period,
                "max_retry": self.heartbeat.max_retry,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """The inverse of :meth:`to_dict`."""
        data = dict(data)
        hb = data.pop("heartbeat", None)
        return cls(**data, **({"heartbeat": Heartbeat(**hb)} if hb else {}))


def _constraints(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or ())
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise ConfigError(f"expected a string such as 'flops <= 0.5', got {text!r}", field=f"constraints[{i}]")
        try:
            parse_constraint(text)
        except ConfigError as e:
            raise ConfigError(e.problem, field=f"constraints[{i}]") from None
    return items


def _study_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected a non-empty name, got {name!r}", field="study_name")
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(
            f"{len(name)} characters; at most {MAX_STUDY_NAME} (it names folders, URLs and log lines)",
            field="study_name",
        )
    if any(ch in name for ch in "\n\r\t\x00"):
        raise ConfigError(f"must be one line of printable characters, got {name!r}", field="study_name")
    return name


#: Fields of the ``ray`` options (spec section ``ray:``, API argument ``ray=``) and what each holds.
RAY_FIELDS: dict[str, str] = {
    "address": "a running Ray cluster, e.g. 127.0.0.1:6379 (default: $RAY_ADDRESS, else one started with "
    "`ray start` on this machine, else a local Ray for the run)",
    "max_concurrent_trials": "trials running at once, one Ray worker each "
    "(default: as many as the cluster's resources hold)",
    "resources_per_trial": "Ray resources of one trial: cpu, gpu, memory (bytes) or custom resources "
    "(default {cpu: 1})",
    "max_retries": "times Ray restarts a worker whose process died (default 3)",
}


@dataclass(frozen=True)
class RayOptions:
    """How a study runs on Ray (see :data:`RAY_FIELDS`).

    Args:
        address: A running cluster (``host:port``, ``ray://host:port``, ``auto`` or ``local`` for a
            new local Ray); ``None`` uses ``$RAY_ADDRESS`` when set, else a cluster started with
            ``ray start`` on this machine, else a local Ray for the run (stopped after it).
        max_concurrent_trials: Trials at once (one worker each); ``None``: as many as fit the
            cluster's resources.
        resources_per_trial: ``cpu``, ``gpu``, ``memory`` (bytes) and custom resources of one trial.
        max_retries: Restarts of a worker whose process died.

    Example:
        >>> RayOptions.from_dict({"max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}}).max_concurrent_trials
        2
        >>> RayOptions.from_dict({"max_retries": -1})
        Traceback (most recent call last):
        ...
        slimtune.errors.ConfigError: ray.max_retries: must be ≥ 0, got -1
    """

    address: str | None = None
    max_concurrent_trials: int | None = None
    resources_per_trial: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    max_retries: int = 3

    @classmethod
    def from_value(cls, value: RayOptions | Mapping[str, Any] | None) -> RayOptions:
        """``value`` as options: a :class:`RayOptions`, a mapping (validated) or ``None`` (defaults)."""
        if isinstance(value, RayOptions):
            return value
        return cls.from_dict(value or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "ray.") -> RayOptions:
        """Validate a mapping of :data:`RAY_FIELDS`; a :class:`~slimtune.errors.ConfigError` names the bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"expected a mapping of {', '.join(RAY_FIELDS)}, got {type(data).__name__}",
                field=f"{prefix.rstrip('.')}",
            )
        for key in data:
            if key not in RAY_FIELDS:
                raise ConfigError(f"unknown field; known fields: {', '.join(RAY_FIELDS)}", field=f"{prefix}{key}")
        address = data.get("address")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(
                f"expected a cluster address such as 127.0.0.1:6379, got {address!r}", field=f"{prefix}address"
            )
        concurrent = data.get("max_concurrent_trials")
        if concurrent is not None:
            concurrent = _integer(concurrent, f"{prefix}max_concurrent_trials", 1)
        retries = _integer(data.get("max_retries", 3), f"{prefix}max_retries", 0)
        resources = data.get("resources_per_trial", {"cpu": 1.0})
        if not isinstance(resources, Mapping) or not resources:
            raise ConfigError(
                f"expected a mapping such as {{cpu: 1, gpu: 0}}, got {resources!r}",
                field=f"{prefix}resources_per_trial",
            )
        checked: dict[str, float] = {}
        for name, amount in resources.items():
            where = f"{prefix}resources_per_trial.{name}"
            if not isinstance(name, str) or not name:
                raise ConfigError(f"resource names must be strings, got {name!r}", field=f"{prefix}resources_per_trial")
            if (
                isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or not math.isfinite(amount)
                or amount < 0
            ):
                raise ConfigError(f"expected a number ≥ 0, got {amount!r}", field=f"{where}")
            checked[name.lower() if name.lower() in ("cpu", "gpu", "memory") else name] = float(amount)
        checked.setdefault("cpu", 1.0)
        if not any(v > 0 for v in checked.values()):
            raise ConfigError("a trial must need some resource (e.g. cpu: 1)", field=f"{prefix}resources_per_trial")
        return cls(address.strip() if address else None, concurrent, checked, retries)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data; ``RayOptions.from_dict(o.to_dict()) == o``."""
        out: dict[str, Any] = {}
        if self.address is not None:
            out["address"] = self.address
        if self.max_concurrent_trials is not None:
            out["max_concurrent_trials"] = self.max_concurrent_trials
        out["resources_per_trial"] = dict(self.resources_per_trial)
        out["max_retries"] = self.max_retries
        return out

    def actor_options(self) -> dict[str, Any]:
        """Options of ``ray.remote(...).options(...)`` for one worker."""
        res = dict(self.resources_per_trial)
        opts: dict[str, Any] = {"num_cpus": res.pop("cpu", 1.0), "num_gpus": res.pop("gpu", 0.0)}
        memory = res.pop("memory", 0.0)
        if memory:
            opts["memory"] = memory
        if res:
            opts["resources"] = res
        return opts


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", field=f"{where}")
    if value < minimum:
        raise ConfigError(f"must be ≥ {minimum}, got {value}", field=f"{where}")
    return value


__all__ = ["BACKENDS", "MAX_STUDY_NAME", "RAY_FIELDS", "RayOptions", "SearchConfig"]
