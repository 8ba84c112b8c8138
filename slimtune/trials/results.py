"""A study's results: the trials table, the Pareto front, saved models, the studies of a storage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import torch
import torch.nn as nn
from optuna.trial import FrozenTrial, TrialState

from slimtune import attributes as attrs
from slimtune import optuna_internals
from slimtune.compressors.plan import CompressionPlan
from slimtune.errors import ArgumentError, SlimtuneError, StudyNotFoundError
from slimtune.trials.storage import make_storage, parse_url, study_names

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

_FRONT_COLUMNS = {
    "accuracy": "accuracy",
    "accuracy_drop": "accuracy_drop",
    "flops_abs": "flops",
    "flops": "flops_rel",
    "params_abs": "params",
    "params": "params_rel",
    "size_abs": "size_bytes",
    "size": "size_rel",
    "latency_abs": "latency_ms",
    "latency": "latency_rel",
}


def trials_table(study: optuna.Study, states: Sequence[TrialState] = (TrialState.COMPLETE,)) -> pd.DataFrame:
    """One row per trial in ``states``: number, state, objective values, measures and plan."""
    objectives = attrs.objectives(study)
    weighted = attrs.weights(study) is not None
    rows = []
    for t in study.get_trials(deepcopy=False, states=tuple(states)):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        if t.values is not None:
            if weighted:
                row["cost"] = t.values[0]
            else:
                row.update({f"objective:{o}": v for o, v in zip(objectives, t.values)})
        measures = attrs.measures(t)
        for key, col in _FRONT_COLUMNS.items():
            row[col] = measures.get(key)
        row["feasible"] = attrs.feasible(t)
        plan = attrs.plan(t)
        row["plan"] = CompressionPlan.from_dict(plan).summary() if plan else None
        row["plan_json"] = json.dumps(plan) if plan else None
        if t.state == TrialState.FAIL:
            row["fail_reason"] = attrs.fail_reason(t)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_front(study: optuna.Study) -> pd.DataFrame:
    """The study's best feasible trials: the Pareto front (one best trial if single-objective).

    One row per front trial with the objective values, every measure absolute and relative
    (``flops`` MACs per sample and ``flops_rel``, ``params``/``params_rel``, ``size_bytes``/
    ``size_rel``, ``latency_ms``/``latency_rel``), ``accuracy``/``accuracy_drop``, a plan summary
    and the plan as JSON; sorted by the first objective.
    """
    if len(study.directions) > 1:
        best = study.best_trials
    else:
        try:
            best = [study.best_trial]
        except ValueError:
            best = []
    numbers = {t.number for t in best}
    table = trials_table(study)
    if table.empty:
        return table
    front = table[table["trial"].isin(numbers)].drop(columns=["state"])
    first = next((c for c in front.columns if c.startswith("objective:") or c == "cost"), "trial")
    return front.sort_values(first, ascending=study.directions[0] == optuna.study.StudyDirection.MINIMIZE).reset_index(
        drop=True
    )


_BASE_MODELS: weakref.WeakValueDictionary[tuple[str, str], nn.Module] = weakref.WeakValueDictionary()


def remember_base_model(study: optuna.Study, model: nn.Module) -> None:
    """Remember (weakly) the model ``study`` compresses, so :func:`load_model` in this process can
    rebuild its trials' models without being given it (the search calls this)."""
    _BASE_MODELS[_base_key(study)] = model


def _base_key(study: optuna.Study) -> tuple[str, str]:
    url = optuna_internals.storage_url(study)
    where = parse_url(url).absolute() if url else f"storage {id(optuna_internals.storage(study))}"
    return (where, study.study_name)


def load_model(
    study: optuna.Study,
    trial_number: int,
    base_model: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The compressed model of a completed trial, rebuilt on ``device`` (default the CPU, whatever device
    the trial ran on).

    A trial's model is saved as a state file (:mod:`slimtune.compressors.state`: safetensors weights,
    the plan as JSON, the base model's fingerprint), never as a pickle: it is rebuilt by applying the
    trial's plan to ``base_model``, the model the study compressed (``task.model``), and loading the
    weights. In the process that ran the search, the task's model is remembered and ``base_model``
    may be left out; elsewhere pass it. A base model other than the study's is refused, naming what
    differs.

    Raises:
        SlimtuneError: The trial has no saved model, the file is missing, ``base_model`` was not given,
            or the model was saved by an older slimtune as a pickle (the message says how to convert it).
    """
    from slimtune.compressors import state

    with _artifact_file(study, trial_number) as path:
        _check_state_file(path, study, trial_number)
        if base_model is None:
            base_model = _BASE_MODELS.get(_base_key(study))
        if base_model is None:
            raise SlimtuneError(
                f"trial {trial_number} of study {study.study_name!r}: rebuilding its model needs the model the study "
                f"compressed: load_model(study, {trial_number}, task.model) (`slimtune export` needs no model)",
                field="base_model",
            )
        try:
            return state.load(path, base_model, device=device)
        except ArgumentError as e:
            raise SlimtuneError(f"trial {trial_number} of study {study.study_name!r}: {e}", field=e.field) from None


def export_model(study: optuna.Study, trial_number: int, path: str | os.PathLike[str]) -> Path:
    """Write the saved model of a trial to ``path`` as it is stored: a state file (``.safetensors`` with the
    plan and the base model's fingerprint; :func:`slimtune.load` rebuilds it from the base model)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _artifact_file(study, trial_number) as src:
        _check_state_file(src, study, trial_number)
        shutil.copyfile(src, out)
    return out


@contextlib.contextmanager
def _artifact_file(study: optuna.Study, trial_number: int) -> Iterator[str]:
    """A temporary copy of the file a trial saved its model in."""
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    trial = get_trial(study, trial_number)
    artifact_id = attrs.artifact_id(trial)
    if artifact_id is None:
        why = attrs.fail_reason(trial) or "saving was off (save_models='none')"
        raise SlimtuneError(f"trial {trial_number} of study {study.study_name!r} has no saved model: {why}")
    adir = attrs.artifacts_dir(study)
    store = FileSystemArtifactStore(adir)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        try:
            download_artifact(artifact_store=store, file_path=path, artifact_id=artifact_id)
        except Exception as e:
            raise SlimtuneError(f"the saved model of trial {trial_number} is missing from {adir}: {e}") from e
        yield path


def _check_state_file(path: str, study: optuna.Study, trial_number: int) -> None:
    from slimtune.compressors import state

    if not state.is_state_file(path):
        raise SlimtuneError(
            f"trial {trial_number} of study {study.study_name!r} was saved by an older slimtune as a pickle "
            "(torch.save), which slimtune does not load: it runs code when read. Run the trial's plan again "
            f"(slimtune.compressors.compress with the plan of `slimtune pareto`), or, if you trust the file in "
            f"{attrs.artifacts_dir(study)}, load it yourself with torch.load (pickles allowed) and write it "
            "safely with slimtune.save(model, plan, base_model, example_inputs, 'model.safetensors')"
        )


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study``; the error says how many trials the study has."""
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise StudyNotFoundError(
        f"study {study.study_name!r} has no trial {number!r} (it has {len(study.get_trials(deepcopy=False))} trials)",
        field="trial",
    )


def studies_summary(storage: str | BaseStorage | None = None) -> pd.DataFrame:
    """One row per study of the storage: strategy, objectives, trials by state, front size, best."""
    st = make_storage(storage)
    rows = []
    for name in study_names(st):
        study = optuna.load_study(study_name=name, storage=st)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
        try:
            front = pareto_front(study)
        except Exception:  # a foreign study without slimtune attributes
            front = pd.DataFrame()
        best = ""
        if not front.empty and "accuracy" in front:
            top = front.sort_values("accuracy", ascending=attrs.metric_direction(study) == "minimize").iloc[0]
            best = (
                f"accuracy {top['accuracy']:.4f} at flops_rel {top['flops_rel']:.3f}"
                if top["flops_rel"] is not None
                else ""
            )
        rows.append(
            {
                "study": name,
                "strategy": attrs.strategy(study),
                "objectives": ",".join(study.user_attrs.get(attrs.Study.OBJECTIVES, [])),
                "complete": count[TrialState.COMPLETE],
                "pruned": count[TrialState.PRUNED],
                "fail": count[TrialState.FAIL],
                "running": count[TrialState.RUNNING],
                "waiting": count[TrialState.WAITING],
                "n_trials": attrs.n_trials(study),
                "front_size": len(front),
                "best": best,
            }
        )
    return pd.DataFrame(rows)


__all__ = ["export_model", "get_trial", "load_model", "pareto_front", "studies_summary", "trials_table"]
