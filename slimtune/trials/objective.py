"""One trial: parameters → plan → compress a copy → fine-tune → evaluate → measures → cost.

Everything a trial learns is stored on it (Optuna user attributes): the plan (so the model can be
rebuilt), every measure absolute and relative to the original model, the time spent in each
phase, and on failure the reason. The compressed model is saved as an Optuna artifact.

A plan with ``init_from_trial`` (iterative strategies: ``autocompress``) compresses that trial's
saved model instead of the original: its sparsities, relative to the original model's groups, are
converted for the smaller model (:func:`rebase_plan`), and the measures stay relative to the
original model, so every trial of a study is compared on one scale.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
import torch
import torch.nn as nn

from slimtune import devices, optuna_internals
from slimtune.attributes import Trial as T
from slimtune.compressors import trace
from slimtune.compressors.measures import measure_deployable
from slimtune.compressors.training import run_compressor
from slimtune.compressors.training.config import kd_mode_overrides
from slimtune.errors import SlimtuneError, TrialFailure
from slimtune.trials.cost import Cost, relative_measures
from slimtune.trials.results import load_model

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace
    from slimtune.strategies import Strategy
    from slimtune.trials.task import Task


logger = logging.getLogger("slimtune")


class Objective:
    """The Optuna objective of a slimtune study.

    Args:
        task: The user's :class:`~slimtune.trials.task.Task`.
        space: The :class:`~slimtune.search_spaces.SearchSpace`.
        strategy: The :class:`~slimtune.strategies.Strategy` (how a trial asks for parameters).
        cost: The :class:`~slimtune.trials.cost.Cost`.
        baseline: Measures of the original model (``accuracy``, ``flops``, ``params``, ``size``,
            ``latency``).
        artifact_store: Where compressed models are saved (None: not saved).
        latency_batch: Batch size of the latency and memory measures.
        graph: ``trace(task.model, task.example_inputs)``, traced once for every trial.
    """

    def __init__(
        self,
        task: Task,
        space: SearchSpace,
        strategy: Strategy,
        cost: Cost,
        baseline: Mapping[str, Any],
        artifact_store: ArtifactStore | None = None,
        latency_batch: int = 32,
        graph: ModelGraph | None = None,
    ) -> None:
        self.task = task
        self.space = space
        self.strategy = strategy
        self.cost = cost
        self.baseline = dict(baseline)
        self.artifact_store = artifact_store
        self.latency_batch = latency_batch
        self.single_objective = len(cost.directions) == 1
        # intermediate reports carry the task's metric: usable by pruners only when the study's
        # one value includes it (sign-flipped when the study minimises a maximised metric)
        self.report_sign = 0.0
        if self.single_objective and "accuracy" in cost.objectives:
            self.report_sign = 1.0 if cost.directions[0] == task.direction else -1.0
        self.graph = graph if graph is not None else trace(task.model, task.example_inputs)
        self.device_name = devices.describe(devices.model_device(task.model))
        self._base: tuple[Any, nn.Module, ModelGraph, str] | None = None  # the last init_from_trial model

    def __call__(self, trial: optuna.trial.Trial) -> float | list[float]:
        times: dict[str, float] = {}
        start = time.perf_counter()
        trial.set_user_attr(T.HOSTNAME, os.uname().nodename)
        trial.set_user_attr(T.DEVICE, self.device_name)
        try:
            params = self.strategy.suggest(trial, self.space)
            plan = self.task.default_compressor(with_finetune_params(self.strategy.plan(params, self.space), params))
            if plan.compressor == self.task.compressor and self.task.compressor_params:
                # a strategy naming the task's compressor (admm, autocompress) keeps the task's settings of it
                plan = dataclasses.replace(
                    plan, compressor_params={**self.task.compressor_params, **plan.compressor_params}
                )
            trial.set_user_attr(T.PLAN, plan.to_dict())
            twin = _completed_twin(trial, params)
            if twin is not None:
                # samplers (NSGA-II especially) re-propose points: reuse that trial's result
                return self._reuse(trial, twin, times, start)
            # the plan's compressor (oneshot, agp, admm ...), then the fine-tune; reports count steps on
            # across both, so a training compressor's run is reported too
            report = self._reporter(trial, self.report_sign) if self.report_sign else None
            t = time.perf_counter()
            start_model, start_plan, start_graph = self._start(trial, plan)
            context = self.task.training_context(plan.finetune, report, start_graph)
            model = run_compressor(start_model, start_plan, self.task.example_inputs, context)
            if context.info:
                trial.set_user_attr(T.COMPRESSOR_INFO, context.info)
            times["compress"] = time.perf_counter() - t

            t = time.perf_counter()
            offset = context.step_offset
            self.task.run_finetune(model, (lambda s, v: report(offset + s, v)) if report else None, plan.finetune)
            times["finetune"] = time.perf_counter() - t

            t = time.perf_counter()
            metric = self.task.evaluate(model)
            times["evaluate"] = time.perf_counter() - t
            try:
                metric = float(metric)
            except (TypeError, ValueError):
                raise TrialFailure(f"evaluate returned {metric!r}, not a number") from None
            if not math.isfinite(metric):
                raise TrialFailure(f"evaluate returned {metric}")

            t = time.perf_counter()
            raw = measure_deployable(
                model,
                self.task.example_inputs,
                self.cost.needs_latency,
                self.latency_batch,
                memory=self.cost.needs_memory,
                memory_batch=self.latency_batch,
                runtime=self.cost.latency,
            )
            raw["accuracy"] = metric
            if self.cost.needs_latency:
                trial.set_user_attr(T.LATENCY_RUNTIME, self.cost.latency.with_batch(self.latency_batch).describe())
            if raw.get("latency_note"):  # not the latency of the int8 export, or timed on the CPU
                trial.set_user_attr(T.LATENCY_NOTE, raw["latency_note"])
                failed = raw.get("latency_device") != "cpu" or devices.model_device(model).type == "cpu"
                logger.log(
                    logging.WARNING if failed else logging.DEBUG, "trial %d: %s", trial.number, raw["latency_note"]
                )
            measures = relative_measures(raw, self.baseline, self.task.direction)
            times["measure"] = time.perf_counter() - t
            trial.set_user_attr(T.MEASURES, measures)
            constraints = self.cost.constraint_values(measures)
            for name, value in constraints.items():
                trial.set_constraint(name, value)
            trial.set_user_attr(T.CONSTRAINTS, constraints)
            values = self.cost.values(measures)

            t = time.perf_counter()
            if self.artifact_store is not None:
                facts = {"study": trial.study.study_name, "trial": trial.number, **context.info}
                trial.set_user_attr(T.ARTIFACT, self._save_model(model, plan, trial, facts))
            times["save"] = time.perf_counter() - t
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr(T.FAIL_REASON, f"{type(e).__name__}: {e}")
            raise
        finally:
            times["total"] = time.perf_counter() - start
            try:
                trial.set_user_attr(T.TIMES, times)
            except Exception:  # the storage itself failing must not hide the first error
                pass
        return values[0] if self.single_objective else values

    def _start(self, trial: optuna.trial.Trial, plan: CompressionPlan) -> tuple[nn.Module, CompressionPlan, ModelGraph]:
        """The model a trial compresses, the plan for it and its graph: the original model, or the saved
        model of trial ``plan.init_from_trial`` (recorded as ``init_from``) with the plan rebased onto it."""
        number = plan.init_from_trial
        if number is None:
            return self.task.model, plan, self.graph
        study = trial.study
        base_trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        artifact = base_trial.user_attrs.get(T.ARTIFACT) if base_trial is not None else None
        key = (optuna_internals.study_key(study), number, artifact)
        if self._base is None or self._base[0] != key:
            try:
                base = load_model(study, number, self.task.model, devices.model_device(self.task.model)).eval()
            except SlimtuneError as e:
                raise TrialFailure(
                    f"plan.init_from_trial: {e}; a plan that starts from another trial's model needs it saved "
                    "(save_models='all')"
                ) from None
            self._base = (key, base, trace(base, self.task.example_inputs), model_digest(base))
        _, base, graph, digest = self._base
        rebased = rebase_plan(plan, self.graph, graph, f"the model of trial {number}")
        trial.set_user_attr(
            T.INIT_FROM, {"trial": number, "artifact": artifact, "digest": digest, "sparsities": rebased.sparsities()}
        )
        return base, rebased, graph

    def _reuse(
        self, trial: optuna.trial.Trial, twin: optuna.trial.FrozenTrial, times: dict[str, float], start: float
    ) -> Any:
        trial.set_user_attr(T.DUPLICATE_OF, twin.number)
        for key in (T.MEASURES, T.CONSTRAINTS, T.ARTIFACT):
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        for name, value in (twin.user_attrs.get(T.CONSTRAINTS) or {}).items():
            trial.set_constraint(name, value)
        values = list(twin.values)
        return values[0] if self.single_objective else values

    def _save_model(
        self, model: nn.Module, plan: CompressionPlan, trial: optuna.trial.Trial, facts: Mapping[str, Any]
    ) -> str:
        """Save a trial's model as an Optuna artifact in the safe state format (no pickle; the plan,
        relative to the original model, rebuilds it from ``task.model``)."""
        from optuna.artifacts import upload_artifact

        from slimtune.compressors import state

        fd, path = tempfile.mkstemp(prefix=f"slimtune-trial{trial.number}-", suffix=".safetensors")
        os.close(fd)
        try:
            state.save(model, plan, self.task.model, self.task.example_inputs, path, extra=_jsonable(facts))
            return upload_artifact(
                artifact_store=self.artifact_store,
                file_path=path,
                study_or_trial=trial,
                mimetype=state.MIMETYPE,
            )
        finally:
            os.unlink(path)

    @staticmethod
    def _reporter(trial: optuna.trial.Trial, sign: float) -> Any:
        def report(step: int, value: float) -> None:
            trial.report(sign * float(value), int(step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")

        return report


FINETUNE_PREFIX = "finetune/"


def with_finetune_params(plan: CompressionPlan, params: Mapping[str, Any]) -> CompressionPlan:
    """``plan`` with searched fine-tune knobs: a parameter ``finetune/<field>`` (``finetune/kd.alpha``
    for a KD setting) sets that field of ``plan.finetune`` unless the plan already sets it;
    ``finetune/kd_mode`` (``space.kd_mode``) sets ``kd`` to that mode, or to None for ``none``.

    Example:
        >>> from slimtune.compressors import CompressionPlan
        >>> with_finetune_params(CompressionPlan(), {"finetune/kd.alpha": 0.3, "finetune/steps": 20}).finetune
        {'kd': {'alpha': 0.3}, 'steps': 20}
        >>> with_finetune_params(CompressionPlan(), {"finetune/kd_mode": "online"}).finetune
        {'kd': {'mode': 'online'}}
    """
    knobs = {k[len(FINETUNE_PREFIX) :]: v for k, v in params.items() if k.startswith(FINETUNE_PREFIX)}
    if not knobs:
        return plan
    finetune = copy.deepcopy(dict(plan.finetune))
    if "kd_mode" in knobs:  # before the kd.<field> knobs, which then refine that mode's settings
        finetune.setdefault("kd", kd_mode_overrides(knobs.pop("kd_mode"))["kd"])
    for key, value in knobs.items():
        head, _, sub = key.partition(".")
        if sub:
            section = finetune.setdefault(head, {})
            if isinstance(section, dict):
                section.setdefault(sub, value)
        else:
            finetune.setdefault(head, value)
    return dataclasses.replace(plan, finetune=finetune)


def rebase_plan(
    plan: CompressionPlan, graph: ModelGraph, base_graph: ModelGraph, base: str = "the base model"
) -> CompressionPlan:
    """``plan``, whose sparsities are relative to the original model (``graph``), as a plan for a
    channel-pruned version of it (``base_graph``): every group keeps the channels the plan keeps of the
    original, so compressing the smaller model with the result gives the shapes the plan gives the
    original. Groups keep their names through speedup (a group is named after its first producing
    layer). Unstructured plans keep their sparsities (pruned weights are zeros, ranked lowest).

    Raises:
        PlanError: A group of the plan is not a prunable group of the smaller model, or the plan keeps
            more of a group's channels than the smaller model has (pruned channels cannot come back).

    Example:
        >>> import torch
        >>> from slimtune.compressors import CompressionPlan, compress, trace
        >>> from slimtune.examples.models import mlp
        >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(1, 16)
        >>> small = compress(model, CompressionPlan.from_sparsities({"features.0": 0.25}), x)   # 24 of 32 left
        >>> plan = CompressionPlan.from_sparsities({"features.0": 0.5, "features.2": 0.5})    # keep 16 and 12
        >>> rebase_plan(plan, trace(model, x), trace(small, x)).sparsities()                 # 8 of 24, 12 of 24
        {'features.0': 0.3333333333333333, 'features.2': 0.5}
    """
    from slimtune.compressors.plan import PruneSpec
    from slimtune.errors import PlanError

    if plan.granularity != "channel":
        return dataclasses.replace(plan, init_from_trial=None)
    prune = {}
    for name, spec in plan.prune.items():
        group, now = graph.groups.get(name), base_graph.groups.get(name)
        if group is None:
            raise PlanError(f"group {name!r} in plan.prune is not a group of the original model")
        if now is None or not now.prunable:
            raise PlanError(f"group {name!r} in plan.prune is not a prunable group of {base}; start from another model")
        keep = group.size - group.n_prune(spec.sparsity)
        if keep > now.size:
            raise PlanError(
                f"group {name!r}: the plan keeps {keep} of its {group.size} channels but {base} has {now.size} "
                "left (pruned channels cannot come back): give it a sparsity that keeps at most that many"
            )
        if keep % now.blocks:
            raise PlanError(
                f"group {name!r}: {keep} channels cannot be split evenly over its {now.blocks} blocks in {base}"
            )
        per_block = now.size // now.blocks
        remove = per_block - keep // now.blocks
        prune[name] = PruneSpec(remove / per_block, spec.criterion)
    return dataclasses.replace(plan, prune=prune, init_from_trial=None)


def model_digest(model: nn.Module) -> str:
    """A hash of a model's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(str(tuple(value.shape)).encode())
            h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _completed_twin(trial: optuna.trial.Trial, params: Mapping[str, Any]) -> optuna.trial.FrozenTrial | None:
    """A completed trial of the same study with exactly these parameters, if any."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == dict(params) and t.values is not None:
            return t
    return None


def _jsonable(facts: Mapping[str, Any]) -> dict[str, Any]:
    """``facts`` without what JSON cannot hold (a compressor's info is JSON already: trials store it)."""
    import json

    out = {}
    for key, value in facts.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out
