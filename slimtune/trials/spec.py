"""The YAML spec of a search: one file that says what to compress, how to search and where to store it.

A spec is what ``slimtune run SPEC`` reads; :func:`load_spec` loads and validates it and
:meth:`Spec.make_task` builds the :class:`~slimtune.trials.task.Task` it names. Every error is a
:class:`~slimtune.errors.SpecError` whose message names the file and the field as a dotted path::

    examples/digits.yaml: strategy.name: unknown strategy 'foo'; known: admm, autocompress, bitwidth,
    joint, netadapt, nsga2, random, simulated_annealing, tpe, uniform

Fields (only ``study`` and ``task`` are required, plus a budget: ``n_trials`` and/or ``timeout``):

.. code-block:: yaml

    study: digits-nsga2                 # the Optuna study's name; running again resumes it
    storage: sqlite:///slimtune.db      # an Optuna storage URL (default sqlite:///slimtune.db)
    task: slimtune.examples.digits:make_task   # "module:function" returning a slimtune Task
    task_args: {arch: cnn}              # keyword arguments for that function
    strategy: {name: nsga2, population_size: 8}   # or just: strategy: nsga2
    # strategies: uniform, random, tpe, nsga2, simulated_annealing, netadapt, bitwidth, joint, admm, autocompress
    # (parameters: slimtune.strategies and the README's "Strategies" section)
    space: {max_sparsity: 0.8, criterion: l1}     # search-space options (see SPACE_FIELDS)
    objectives: [accuracy, flops]       # any of accuracy, flops, params, latency, size, memory
    compressor: {name: admm, rho: 0.01} # how plans are applied (default oneshot): agp, admm, lottery, slimming
    finetune: {steps: 40, lr: 0.01, kd: {alpha: 0.5}}  # the task's fine-tune config, overridden here
    constraints: ["accuracy_drop <= 0.02", "flops <= 0.5"]
    n_trials: 24                        # finished trials of the study to reach
    timeout: 600                        # seconds (optional, alone or with n_trials)
    seed: 0
    save_models: all                    # "all" (every trial's model is kept) or "none"
    backend: local                      # "local" (trials in this process), "ray" or "tune" (Ray Tune trials)
    ray: {address: 127.0.0.1:6379, max_concurrent_trials: 4, resources_per_trial: {cpu: 1}}  # backend: ray only
    tune: {scheduler: asha, max_concurrent_trials: 2, callbacks: [csv, tensorboard]}  # backend: tune only
    device: auto                        # where trials run: auto (a CUDA GPU when there is one), cpu, cuda, cuda:N, mps
    measure_batch: 64                   # batch size of the latency and memory measures (default 32 CPU, 64 GPU)
    latency: {runtime: onnxruntime, batch: 1, threads: 1}  # where latency is measured: torch (default), compile,
                                        # onnxruntime; batch (default measure_batch) and threads (default 1)

**Storage URLs**: ``sqlite:///file.db``, ``postgresql://user@host/db`` (any SQLAlchemy URL: several
machines can share a study), ``journal:///path/file.log`` (an Optuna journal file) or ``memory``
(one process only; the study is lost when it ends).

**Relative paths in the storage URL** (``sqlite:///slimtune.db``, three slashes) are relative to the
*current working directory* of the process that opens the study, not to the spec file: this is how
Optuna and SQLAlchemy read the URL. Run ``slimtune`` from the same directory each time, or give an
absolute path (``sqlite:////home/me/studies/slimtune.db``, four slashes).

**Importing the task**: the module is imported with the normal ``sys.path``, to which
:meth:`Spec.make_task` appends the current directory and the spec file's directory, so a
``mytask.py`` next to the spec is found as ``task: mytask:make_task``.

Example:
    >>> from slimtune.trials.spec import Spec
    >>> spec = Spec.from_yaml('''
    ... study: demo
    ... task: slimtune.examples.digits:make_task
    ... strategy: {name: nsga2, population_size: 8}
    ... n_trials: 24
    ... ''')
    >>> spec.strategy_name, spec.strategy_params, spec.objectives
    ('nsga2', {'population_size': 8}, ['accuracy', 'flops'])
    >>> Spec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from slimtune.errors import SlimtuneError, SpecError, did_you_mean
from slimtune.trials.storage import parse_url

if TYPE_CHECKING:
    from slimtune.trials.config import SearchConfig
    from slimtune.trials.task import Task

__all__ = [
    "DEFAULT_STORAGE",
    "FIELDS",
    "SPACE_FIELDS",
    "Spec",
    "SpecError",
    "load_spec",
]

#: The storage a spec without ``storage`` uses (relative to the current working directory).
DEFAULT_STORAGE = "sqlite:///slimtune.db"
#: The strategy a spec without ``strategy`` uses.
DEFAULT_STRATEGY = "nsga2"
#: The objectives a spec without ``objectives`` uses.
DEFAULT_OBJECTIVES = ("accuracy", "flops")

#: Top-level fields of a spec and what each holds.
FIELDS: dict[str, str] = {
    "study": "the study's name (required)",
    "storage": "an Optuna storage URL (default sqlite:///slimtune.db, relative to the current directory)",
    "task": "'module:function' returning a slimtune Task (required)",
    "task_args": "keyword arguments for the task function",
    "strategy": "a strategy name, or a mapping with 'name' and the strategy's parameters",
    "space": "search-space options",
    "objectives": "objectives to optimise (default [accuracy, flops])",
    "constraints": "constraints such as 'flops <= 0.5' or 'accuracy_drop <= 0.02'",
    "n_trials": "number of finished trials of the study to reach",
    "timeout": "seconds to search",
    "seed": "random seed (default 0)",
    "save_models": "'all' (keep every trial's model) or 'none'",
    "backend": "'local' (trials run in this process), 'ray' (trials run on Ray workers) or 'tune' (Ray Tune trials)",
    "ray": "Ray options (backend: ray): address, max_concurrent_trials, resources_per_trial, max_retries",
    "tune": "Ray Tune options (backend: tune): scheduler, callbacks, max_concurrent_trials, resources_per_trial, "
    "max_failures, address, storage_path, name, reuse_actors",
    "compressor": "a compressor name (oneshot, agp, admm, lottery, slimming) or a mapping with 'name' and "
    "its parameters",
    "finetune": "fine-tune settings over the task's (epochs or steps, optimizer, lr, schedule, seed, kd, amp ...)",
    "device": "where the trials run: auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N, "
    "mps; overrides the task's device",
    "measure_batch": "batch size of the latency and memory measures (default 32 on the CPU, 64 on a GPU)",
    "latency": "where latency is measured: a runtime (torch, compile, onnxruntime) or {runtime, batch, threads}",
}

#: Options of the ``space`` mapping and what each holds.
SPACE_FIELDS: dict[str, str] = {
    "max_sparsity": "highest sparsity of a group, in (0, 1) (default 0.9)",
    "min_sparsity": "lowest sparsity of a group, in [0, max_sparsity) (default 0.0)",
    "tolerance": "one-shot metric drop allowed when deriving per-group bounds from sensitivity (default 0.05)",
    "headroom": "added to the sensitivity-derived bound, in [0, 1) (default 0.3)",
    "levels": "sparsity grid of the sensitivity analysis, each in (0, 1)",
    "criterion": "pruning criterion (default l1)",
    "sensitivity": "derive per-group bounds from a sensitivity analysis (default true)",
    "groups": "names of the groups to search (default: every prunable group)",
    "bits_w": "weight bit-widths to choose from per layer, e.g. [4, 8, 32] (32 = float; default: none)",
    "bits_a": "activation bit-widths to choose from per layer, e.g. [8, 32] (needs calibration data)",
    "quantize_layers": "layers whose bit-widths are searched (default: every Conv/Linear)",
    "channel_multiple": "round every group's kept channels to a multiple of this, e.g. 8 or 16 (SIMD and "
    "tensor-core widths; a group that small stays whole; default: none)",
    "quant_algorithm": "quantization algorithm of every plan (ste, ptq, pact, dorefa, bnn, slb ...), or a list of "
    "them searched as the parameter quant/algorithm (default: ste)",
    "kd_mode": "distillation of every plan's fine-tune (none, offline, online, born_again, self), or a list of them "
    "searched as the parameter finetune/kd_mode (default: the task's fine-tune settings)",
    "ranks": "low-rank factorization: rank ratios to choose from per layer, e.g. [0.25, 0.5, 1.0] (1.0 keeps the "
    "layer whole), searched as rank/<layer>",
    "factorize_layers": "restrict the rank choices to these layers (default: every Linear and ungrouped Conv2d)",
    "rank_method": "decomposition of the factorized layers: auto (default), svd or tucker2",
    "rank_energy": "the seed keeps this fraction of each layer's singular-value energy (default 0.95)",
}

_BACKENDS = ("local", "ray", "tune")
_SAVE_MODELS = ("all", "none")
# keyword arguments of ``search`` that a strategy parameter must not shadow
_SEARCH_ARGS = (
    "task",
    "strategy",
    "objectives",
    "constraints",
    "n_trials",
    "timeout",
    "storage",
    "study_name",
    "space",
    "seed",
    "save_models",
    "join",
    "progress",
    "weights",
    "backend",
    "ray",
    "tune_options",
    "device",
    "measure_batch",
    "latency",
)
_TASK_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class Spec:
    """A validated search spec (see the module docstring for the YAML form).

    Build one with :func:`load_spec` (from a file), :meth:`from_yaml` or :meth:`from_dict`; a
    directly constructed ``Spec`` is not validated.

    Args:
        study: The Optuna study's name.
        task: ``"module:function"``: a callable returning a :class:`~slimtune.trials.task.Task`.
        task_args: Keyword arguments for the task function.
        storage: An Optuna storage URL; ``None`` means :data:`DEFAULT_STORAGE`.
        strategy_name: A name from :data:`slimtune.strategies.STRATEGIES`.
        strategy_params: The strategy's parameters (e.g. ``{"population_size": 8}``).
        space: Search-space options (:data:`SPACE_FIELDS`), or ``None`` for the defaults.
        objectives: Names from :data:`slimtune.trials.cost.OBJECTIVES`.
        constraints: Constraint expressions (``"flops <= 0.5"``).
        n_trials: Number of finished trials of the study to reach (``None``: until ``timeout``).
        timeout: Seconds to search (``None``: until ``n_trials``).
        seed: Random seed.
        save_models: ``"all"`` or ``"none"``.
        backend: ``"local"``, ``"ray"`` or ``"tune"``.
        ray: Options of the Ray backend (:data:`slimtune.trials.ray_backend.RAY_FIELDS`), or ``None``.
        tune: Options of the Ray Tune backend (:data:`slimtune.trials.tune_options.TUNE_FIELDS`), or ``None``.
        device: Where the trials run (overrides the task's ``device``), or ``None``.
        measure_batch: Batch size of the latency and memory measures, or ``None`` (32 CPU, 64 GPU).
        latency: Where latency is measured (``{"runtime", "batch", "threads"}``), or ``None`` (eager, 1 thread).
        path: The file the spec was loaded from (``None`` when it came from data).
    """

    study: str
    task: str
    task_args: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    strategy_name: str = DEFAULT_STRATEGY
    strategy_params: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] | None = None
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    constraints: list[str] = field(default_factory=list)
    n_trials: int | None = None
    timeout: float | None = None
    seed: int = 0
    save_models: str = "all"
    backend: str = "local"
    ray: dict[str, Any] | None = None
    compressor: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    device: str | None = None
    measure_batch: int | None = None
    latency: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)

    # ---------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<string>") -> Spec:
        """Validate a parsed spec (the mapping a YAML file holds) and build a :class:`Spec`.

        Args:
            data: The spec's fields.
            source: Where the data came from, used in error messages (a file name).

        Raises:
            SpecError: A field is missing, unknown, of the wrong type or has a bad value; the
                message names ``source`` and the field.
        """
        return _Validator(source).spec(data)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> Spec:
        """Parse YAML text and validate it with :meth:`from_dict`.

        Raises:
            SpecError: Invalid YAML (the message gives the line and column), a duplicated key, or
                anything :meth:`from_dict` rejects.
        """
        return cls.from_dict(_parse_yaml(text, source), source)

    # ---------------------------------------------------------------------------------------------
    # views

    @property
    def source(self) -> str:
        """The name used in error messages: the file the spec came from, or ``"<string>"``."""
        return str(self.path) if self.path is not None else "<string>"

    @property
    def strategy(self) -> str | dict[str, Any]:
        """The strategy as a spec writes it: the name, or ``{"name": ..., **params}``."""
        if not self.strategy_params:
            return self.strategy_name
        return {"name": self.strategy_name, **self.strategy_params}

    @property
    def storage_url(self) -> str:
        """The storage URL to use: ``storage``, or :data:`DEFAULT_STORAGE` when it is not set."""
        return self.storage or DEFAULT_STORAGE

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (the YAML form); ``Spec.from_dict(spec.to_dict()) == spec``."""
        out: dict[str, Any] = {"study": self.study}
        if self.storage is not None:
            out["storage"] = self.storage
        out["task"] = self.task
        if self.task_args:
            out["task_args"] = dict(self.task_args)
        strategy = self.strategy
        out["strategy"] = dict(strategy) if isinstance(strategy, dict) else strategy
        if self.space is not None:
            out["space"] = dict(self.space)
        out["objectives"] = list(self.objectives)
        if self.constraints:
            out["constraints"] = list(self.constraints)
        if self.n_trials is not None:
            out["n_trials"] = self.n_trials
        if self.timeout is not None:
            out["timeout"] = self.timeout
        out["seed"] = self.seed
        out["save_models"] = self.save_models
        out["backend"] = self.backend
        if self.ray is not None:
            out["ray"] = dict(self.ray)
        if self.compressor is not None:
            out["compressor"] = dict(self.compressor)
        if self.finetune is not None:
            out["finetune"] = dict(self.finetune)
        if self.device is not None:
            out["device"] = self.device
        if self.measure_batch is not None:
            out["measure_batch"] = self.measure_batch
        if self.latency is not None:
            out["latency"] = dict(self.latency)
        if self.tune is not None:
            out["tune"] = dict(self.tune)
        return out

    def to_yaml(self) -> str:
        """The spec as YAML text (fields in the documented order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`slimtune.trials.search.search` (all but ``task``).

        Example:
            .. code-block:: python

                from slimtune.trials.search import search
                spec = load_spec("examples/digits.yaml")
                study = search(spec.make_task(), **spec.search_kwargs())
        """
        return {
            "strategy": self.strategy_name,
            "objectives": tuple(self.objectives),
            "constraints": list(self.constraints) or None,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "storage": self.storage,
            "study_name": self.study,
            "space": dict(self.space) if self.space is not None else None,
            "seed": self.seed,
            "save_models": self.save_models,
            "backend": self.backend,
            **({"ray": dict(self.ray or {})} if self.backend == "ray" else {}),
            **({"tune_options": dict(self.tune or {})} if self.backend == "tune" else {}),
            **({"device": self.device} if self.device is not None else {}),
            **({"measure_batch": self.measure_batch} if self.measure_batch is not None else {}),
            **({"latency": dict(self.latency)} if self.latency is not None else {}),
            **self.strategy_params,
        }

    def search_config(self, **changes: Any) -> SearchConfig:
        r"""The spec's search as a :class:`~slimtune.trials.config.SearchConfig` (``changes``
        override fields, e.g. ``join=True``); run it with :func:`slimtune.trials.search.run`.

        Example:
            >>> spec = Spec.from_yaml("study: s\ntask: m:f\nn_trials: 4\nstrategy: {name: nsga2, population_size: 4}")
            >>> config = spec.search_config(progress=False)
            >>> config.study, config.n_trials, config.strategy_params, config.progress
            ('s', 4, {'population_size': 4}, False)
        """
        from slimtune.trials.config import SearchConfig

        kwargs = self.search_kwargs()
        # "tune" is a strategy parameter here (admm's tune: [rho]); the spec's Tune options are tune_options
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in SearchConfig.__dataclass_fields__ and k != "tune"}
        if "tune_options" in kwargs:
            fields["tune"] = kwargs.pop("tune_options")
        return SearchConfig(
            **{**fields, "constraints": fields.get("constraints") or (), "strategy_params": kwargs, **changes}
        )

    # ---------------------------------------------------------------------------------------------
    # the task

    def make_task(self) -> Task:
        """Import the task function, call it with ``task_args`` and check it returned a ``Task``.

        The current directory and the spec file's directory are appended to ``sys.path`` first
        (when missing), so a task module next to the spec is found.

        Raises:
            SpecError: Naming ``task`` (or ``task_args``) when the module or the function cannot
                be found, the arguments do not fit, the function raises, or it returns something
                other than a :class:`~slimtune.trials.task.Task`. The original exception is
                chained (``__cause__``).
        """
        from slimtune.trials.task import Task

        module_name, _, attr_path = self.task.partition(":")
        _extend_sys_path(self.path)

        def fail(problem: str, fld: str = "task", cause: BaseException | None = None) -> NoReturn:
            raise SpecError(problem, source=self.source, field=fld) from cause

        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (module_name == missing or module_name.startswith(missing + ".")):
                fail(
                    f"cannot import module '{module_name}': no module named '{missing}' "
                    "(looked on sys.path, the current directory and the spec's directory; "
                    "set PYTHONPATH or install the package)",
                    cause=exc,
                )
            fail(f"importing module '{module_name}' failed: {type(exc).__name__}: {exc}", cause=exc)
        except Exception as exc:  # the user's module raised while being imported
            fail(f"importing module '{module_name}' failed: {type(exc).__name__}: {exc}", cause=exc)

        obj: Any = module
        parts = attr_path.split(".")
        for i, attr in enumerate(parts):
            if not hasattr(obj, attr):
                owner = f"module '{module_name}'" if i == 0 else f"'{module_name}:{'.'.join(parts[:i])}'"
                names = [n for n in dir(obj) if not n.startswith("_")]
                fail(f"{owner} has no attribute '{attr}'{did_you_mean(attr, names)}")
            obj = getattr(obj, attr)
        if not callable(obj):
            fail(f"'{self.task}' is not callable (it is {_describe(obj)}); name a function returning a Task")

        try:
            inspect.signature(obj).bind(**self.task_args)
        except TypeError as exc:
            fail(f"'{self.task}' does not accept these arguments: {exc}", "task_args", exc)
        except ValueError:  # no signature (some builtins): let the call decide
            pass

        try:
            result = obj(**self.task_args)
        except Exception as exc:
            fail(f"'{self.task}' raised {type(exc).__name__}: {exc}", cause=exc)
        if not isinstance(result, Task):
            fail(f"'{self.task}' returned {_describe(result)}, expected a slimtune Task (slimtune.trials.task.Task)")
        if self.finetune:  # the spec's fine-tune settings and compressor reach every trial through the task
            result.finetune_config = result.effective_finetune_config(self.finetune)
        if self.compressor:
            params = {k: v for k, v in self.compressor.items() if k != "name"}
            result.compressor, result.compressor_params = self.compressor["name"], params
        return result


def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Spec:
    """Load and validate a YAML spec file.

    Args:
        path: The spec file. Error messages name it as given.
        overrides: Top-level fields replacing the file's before validation (e.g. the CLI's
            ``--n-trials``); ``None`` values are ignored.

    Returns:
        The validated :class:`Spec`, with ``path`` set.

    Raises:
        SpecError: The file is missing or unreadable, is not valid YAML (the message gives the
            line), or a field is invalid (the message names the field).
    """
    source = str(path)
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file not found (looked for {p.resolve()})", source=source)
    if p.is_dir():
        raise SpecError("is a directory; expected a YAML spec file", source=source)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", source=source) from exc
    except OSError as exc:
        raise SpecError(f"cannot read the file: {exc.strerror or exc}", source=source) from exc
    data = _parse_yaml(text, source)
    if overrides and isinstance(data, Mapping):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    spec = Spec.from_dict(data, source)
    spec.path = p
    return spec


# -------------------------------------------------------------------------------------------------
# validation


class _Validator:
    """Checks one spec's fields; every error names ``source`` and the field's dotted path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, fld: str | None, problem: str) -> NoReturn:
        raise SpecError(problem, source=self.source, field=fld)

    def owner_error(self, exc: SlimtuneError, section: str) -> NoReturn:
        """Report an error a section's owner raised (its ``field`` names the option)."""
        fld = exc.field if exc.field and exc.field.split(".")[0].split("[")[0] == section else section
        problem = getattr(exc, "problem", None) or str(exc)
        if not getattr(exc, "problem", None) and exc.field and problem.startswith(f"{exc.field}: "):
            problem = problem[len(exc.field) + 2 :]
        self.fail(fld, problem)

    # -- the whole spec -------------------------------------------------------------------------

    def spec(self, data: Any) -> Spec:
        if data is None:
            self.fail(None, "the spec is empty; it needs at least 'study', 'task' and 'n_trials' or 'timeout'")
        if not isinstance(data, Mapping):
            self.fail(None, f"a spec must be a mapping of fields (study: ..., task: ...), got {_describe(data)}")
        self.unknown_keys(data, FIELDS, prefix="")
        for name in ("study", "task"):
            if data.get(name) is None:
                self.fail(name, f"missing required field ({FIELDS[name]})")

        study = self.string(data["study"], "study")
        task = self.string(data["task"], "task")
        if not _TASK_RE.match(task):
            self.fail("task", f"expected 'module:function' (e.g. slimtune.examples.digits:make_task), got {task!r}")
        task_args = self.mapping(data.get("task_args"), "task_args")
        storage = self.storage(data.get("storage"))
        strategy_name, strategy_params = self.strategy(data.get("strategy", DEFAULT_STRATEGY))
        space = self.space(data.get("space"))
        objectives = self.objectives(data.get("objectives", list(DEFAULT_OBJECTIVES)))
        constraints = self.constraints(data.get("constraints"))

        n_trials = data.get("n_trials")
        if n_trials is not None:
            n_trials = self.integer(n_trials, "n_trials", minimum=1)
        timeout = data.get("timeout")
        if timeout is not None:
            timeout = self.number(timeout, "timeout", low=0.0, low_open=True)
        if n_trials is None and timeout is None:
            self.fail("n_trials", "missing budget: give n_trials (number of trials) and/or timeout (seconds)")

        seed = self.integer(data.get("seed", 0), "seed")
        save_models = self.choice(data.get("save_models", "all"), "save_models", _SAVE_MODELS, "value")
        backend = self.choice(data.get("backend", "local"), "backend", _BACKENDS, "backend")
        ray = self.ray(data.get("ray"))
        compressor = self.compressor(data.get("compressor"))
        finetune = self.finetune(data.get("finetune"))
        device = self.device(data.get("device"))
        measure_batch = data.get("measure_batch")
        if measure_batch is not None:
            measure_batch = self.integer(measure_batch, "measure_batch", minimum=1)
        latency = self.latency(data.get("latency"))
        tune = self.tune(data.get("tune"))
        return Spec(
            study=study,
            task=task,
            task_args=task_args,
            storage=storage,
            strategy_name=strategy_name,
            strategy_params=strategy_params,
            space=space,
            objectives=objectives,
            constraints=constraints,
            n_trials=n_trials,
            timeout=timeout,
            seed=seed,
            save_models=save_models,
            backend=backend,
            ray=ray,
            compressor=compressor,
            finetune=finetune,
            device=device,
            measure_batch=measure_batch,
            latency=latency,
            tune=tune,
        )

    # -- fields ---------------------------------------------------------------------------------

    def compressor(self, value: Any) -> dict[str, Any] | None:
        from slimtune.compressors.training import COMPRESSORS, check_compressor_params

        if value is None:
            return None
        data = {"name": value} if isinstance(value, str) else self.mapping(value, "compressor")
        if "name" not in data:
            self.fail("compressor.name", "missing required field (the compressor's name, e.g. name: admm)")
        name = self.string(data["name"], "compressor.name")
        known = sorted(COMPRESSORS)
        if name not in COMPRESSORS:
            self.fail(
                "compressor.name", f"unknown compressor {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
            )
        params = {k: v for k, v in data.items() if k != "name"}
        accepted = sorted(COMPRESSORS[name].defaults)
        for key in params:
            if key not in accepted:
                self.fail(
                    f"compressor.{key}",
                    f"unknown parameter of compressor {name!r}{did_you_mean(str(key), accepted)}; "
                    f"known: {', '.join(accepted) or 'none'}",
                )
        check_compressor_params(name, params)
        return data

    def finetune(self, value: Any) -> dict[str, Any] | None:
        from slimtune.compressors.training import FinetuneConfig

        if value is None:
            return None
        data = self.mapping(value, "finetune")
        try:  # the fine-tune configuration checks its own fields
            FinetuneConfig().merged(data)
        except SlimtuneError as exc:
            self.owner_error(exc, "finetune")
        return data

    def device(self, value: Any) -> str | None:
        from slimtune import devices

        if value is None:
            return None
        try:  # the spelling only: the machine that runs the spec may not be this one
            return devices.check_name(value if isinstance(value, (str, int)) else repr(value))
        except SlimtuneError as exc:
            self.owner_error(exc, "device")

    def latency(self, value: Any) -> dict[str, Any] | None:
        from slimtune.compressors.measures.runtimes import LatencySetting

        if value is None:
            return None
        try:
            return LatencySetting.parse(value).to_dict()
        except SlimtuneError as exc:
            self.owner_error(exc, "latency")

    def ray(self, value: Any) -> dict[str, Any] | None:
        from slimtune.trials.config import RAY_FIELDS, RayOptions

        if value is None:
            return None
        data = self.mapping(value, "ray")
        self.unknown_keys(data, RAY_FIELDS, prefix="ray.")
        try:  # the Ray options check their own fields
            RayOptions.from_dict(data)
        except SlimtuneError as exc:
            self.owner_error(exc, "ray")
        return data

    def tune(self, value: Any) -> dict[str, Any] | None:
        from slimtune.trials.tune_options import TUNE_FIELDS, TuneOptions

        if value is None:
            return None
        data = self.mapping(value, "tune")
        self.unknown_keys(data, TUNE_FIELDS, prefix="tune.")
        try:  # the Tune options check their own fields
            TuneOptions.from_dict(data)
        except SlimtuneError as exc:
            self.owner_error(exc, "tune")
        return data

    def storage(self, value: Any) -> str | None:
        if value is None:
            return None
        url = self.string(value, "storage")
        if "://" not in url and url != "memory":
            hint = f" (for a SQLite file: sqlite:///{url})" if url.endswith((".db", ".sqlite", ".sqlite3")) else ""
            self.fail(
                "storage",
                "expected an Optuna storage URL such as sqlite:///slimtune.db, "
                f"postgresql://user@host/db or journal:///path/file.log, got {url!r}{hint}",
            )
        try:  # the storage module parses every URL slimtune opens
            parse_url(url)
        except SlimtuneError as exc:
            self.fail("storage", str(exc))
        return url

    def strategy(self, value: Any) -> tuple[str, dict[str, Any]]:
        from slimtune.strategies import STRATEGIES

        if isinstance(value, str):
            name, params, name_field = value, {}, "strategy"
        elif isinstance(value, Mapping):
            if value.get("name") is None:
                self.fail("strategy.name", "missing required field (the strategy's name, e.g. name: nsga2)")
            name = self.string(value["name"], "strategy.name")
            params = {}
            for key, param in value.items():
                if not isinstance(key, str):
                    self.fail("strategy", f"parameter names must be strings, got {_describe(key)}")
                if key != "name":
                    params[key] = param
            name_field = "strategy.name"
        else:
            self.fail(
                "strategy",
                "expected a strategy name or a mapping with 'name' and the strategy's parameters, "
                f"got {_describe(value)}",
            )
        if name not in STRATEGIES:
            known = sorted(STRATEGIES)
            self.fail(name_field, f"unknown strategy {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
        for key in params:
            if key in _SEARCH_ARGS:
                self.fail(
                    f"strategy.{key}", f"'{key}' is not a strategy parameter; set it at the top level of the spec"
                )
        accepted = _strategy_params(STRATEGIES[name])
        if accepted is not None:
            for key in params:
                if key not in accepted:
                    known = ", ".join(sorted(accepted)) or "none"
                    self.fail(
                        f"strategy.{key}",
                        f"unknown parameter of strategy {name!r}{did_you_mean(key, accepted)}; known: {known}",
                    )
        return name, params

    def space(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        space = dict(self.mapping(value, "space"))
        self.unknown_keys(space, SPACE_FIELDS, prefix="space.")
        for key in ("levels", "bits_w", "bits_a", "groups", "quantize_layers"):
            if key in space:  # YAML may give one value where a list is meant
                space[key] = self.as_list(space[key], f"space.{key}")
        from slimtune.search_spaces import SpaceOptions

        try:  # the search space checks its own options
            SpaceOptions.from_dict(space)
        except SlimtuneError as exc:
            self.owner_error(exc, "space")
        return space

    def objectives(self, value: Any) -> list[str]:
        from slimtune.trials.cost import check_objectives

        names = self.as_list(value, "objectives")
        for i, name in enumerate(names):
            self.string(name, f"objectives[{i}]")
        try:  # the cost checks its own objectives
            return check_objectives(names)
        except SlimtuneError as exc:
            self.owner_error(exc, "objectives")

    def constraints(self, value: Any) -> list[str]:
        from slimtune.trials.cost import parse_constraint

        if value is None:
            return []
        items = self.as_list(value, "constraints")
        for i, text in enumerate(items):
            self.string(text, f"constraints[{i}]")
            try:  # the cost parses its own constraints
                parse_constraint(text)
            except SlimtuneError as exc:
                self.fail(f"constraints[{i}]", getattr(exc, "problem", str(exc)))
        return list(items)

    # -- types ----------------------------------------------------------------------------------

    def unknown_keys(self, data: Mapping[Any, Any], known: Mapping[str, str], prefix: str) -> None:
        for key in data:
            if not isinstance(key, str):
                self.fail(prefix.rstrip(".") or None, f"field names must be strings, got {_describe(key)}")
            if key not in known:
                self.fail(
                    f"{prefix}{key}",
                    f"unknown field{did_you_mean(key, list(known))}; known fields: {', '.join(known)}",
                )

    def string(self, value: Any, fld: str) -> str:
        if not isinstance(value, str):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            hint = f' (quote it: "{value}")' if number else ""
            self.fail(fld, f"expected a string, got {_describe(value)}{hint}")
        if not value.strip():
            self.fail(fld, "must not be empty")
        return value

    def integer(self, value: Any, fld: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(fld, f"expected an integer, got {_describe(value)}")
        if minimum is not None and value < minimum:
            self.fail(fld, f"must be ≥ {minimum}, got {value}")
        return value

    def number(
        self,
        value: Any,
        fld: str,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(fld, f"expected a number, got {_describe(value)}")
        number = float(value)
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if math.isnan(number) or too_low or too_high:
            if high is None:
                bound = f"> {low:g}" if low_open else f"≥ {low:g}"
            else:
                bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            self.fail(fld, f"must be {bound}, got {value}")
        return number

    def as_list(self, value: Any, fld: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(fld, f"expected a list, got {_describe(value)}")
        return value

    def mapping(self, value: Any, fld: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(fld, f"expected a mapping (key: value), got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(fld, f"keys must be strings, got {_describe(key)}")
        return dict(value)

    def choice(self, value: Any, fld: str, choices: tuple[str, ...], what: str) -> str:
        text = self.string(value, fld)
        if text not in choices:
            suggestion = did_you_mean(text, list(choices))
            self.fail(fld, f"unknown {what} {text!r}{suggestion}; known: {', '.join(choices)}")
        return text


# -------------------------------------------------------------------------------------------------
# helpers


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key: the constructor reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"invalid YAML{where}: {problem}", source=source) from exc


def _strategy_params(cls: Any) -> set[str] | None:
    """Names of a strategy's parameters (its ``defaults``), or ``None`` when they cannot be known."""
    defaults = getattr(cls, "defaults", None)
    if isinstance(defaults, Mapping):
        return set(defaults)
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _describe(value: Any) -> str:
    """``an integer (3)``, ``a list``, ``null`` …: a value's YAML type for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    kind = type(value)
    return f"a {kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else f"a {kind.__name__}"


def _extend_sys_path(spec_path: Path | None) -> None:
    """Append the current directory and the spec's directory to ``sys.path`` when missing."""
    entries = {os.path.abspath(p or os.curdir) for p in sys.path}
    for directory in (os.getcwd(), str(spec_path.resolve().parent) if spec_path is not None else None):
        if directory and os.path.abspath(directory) not in entries:
            sys.path.append(directory)
            entries.add(os.path.abspath(directory))
