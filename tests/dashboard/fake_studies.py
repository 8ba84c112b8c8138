"""Studies with known trials, written straight into an Optuna storage (no compression is run).

Each trial carries the user attributes a real trial of :class:`slimtune.trials.objective.Objective`
stores (plan, measures, constraints, times, hostname, model artifact or fail reason) and the study
those a real :func:`slimtune.search` run stores (strategy, objectives, directions, baseline,
constraints, space …), so the dashboard reads them as it reads real studies. Used by the dashboard
tests and by ``benchmarks/dashboard.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from slimtune.trials.cost import Cost, relative_measures
from slimtune.attributes import Trial
from slimtune.trials import make_storage
from slimtune.trials.sensitivity import SENSITIVITY_PREFIX

GROUPS = {"conv1": 16, "conv2": 32, "conv3": 64, "fc1": 128}
"""Prunable groups of the fake model and their share of its FLOPs."""
BASELINE = {"accuracy": 0.97, "flops": 1_000_000.0, "params": 50_000, "size": 200_000, "latency": None}
LEVELS = [0.25, 0.5, 0.75]
START = dt.datetime(2026, 1, 1, 12, 0, 0)


def fake_measures(sparsity: dict[str, float], rng: random.Random) -> dict[str, Any]:
    """Measures of a plan: resources shrink with the kept channels, accuracy drops with sparsity."""
    total = sum(GROUPS.values())
    flops_rel = sum(w * (1 - sparsity[g]) ** 2 for g, w in GROUPS.items()) / total
    params_rel = sum(w * (1 - sparsity[g]) for g, w in GROUPS.items()) / total
    penalty = sum(s**3 for s in sparsity.values()) / len(sparsity)
    raw = {
        "accuracy": round(BASELINE["accuracy"] - 0.12 * penalty - 0.01 * rng.random(), 6),
        "flops": BASELINE["flops"] * flops_rel,
        "params": round(BASELINE["params"] * params_rel),
        "size": round(BASELINE["size"] * params_rel),
        "latency": None,
    }
    return relative_measures(raw, BASELINE, "maximize")


def add_study(
    storage: Any,
    name: str,
    n_trials: int,
    strategy: str = "nsga2",
    seed: int = 0,
    objectives: Sequence[str] = ("accuracy", "flops"),
    constraints: Sequence[str] = ("accuracy_drop <= 0.02",),
    failed_every: int = 0,
    pruned_every: int = 0,
    running: int = 0,
    artifacts_dir: str | Path | None = None,
    artifact_trials: Sequence[int] = (),
    quantize: bool = False,
) -> optuna.Study:
    """Create study ``name`` holding ``n_trials`` finished trials (COMPLETE unless failed/pruned).

    Args:
        storage: A storage URL or object.
        failed_every: Every k-th trial fails (with a ``fail_reason``); 0: none.
        pruned_every: Every k-th trial is PRUNED; 0: none.
        running: How many RUNNING trials follow the finished ones.
        artifacts_dir: The study's artifact directory (needed for ``artifact_trials``).
        artifact_trials: Trials whose "compressed model" (a small saved torch module) is uploaded
            as an artifact and named in ``model_artifact``.
        quantize: Plans also carry per-layer bit-widths.
    """
    st = make_storage(storage) if isinstance(storage, str) else storage
    cost = Cost(objectives, "maximize", constraints=list(constraints))
    study = optuna.create_study(study_name=name, storage=st, directions=cost.directions)
    attrs = {
        "strategy": strategy,
        "strategy_params": {"population_size": 12} if strategy == "nsga2" else {},
        "objectives": cost.objectives,
        "directions": cost.directions,
        "weights": None,
        "constraints": [c.text for c in cost.constraints],
        "space": {"criterion": "l1", "levels": LEVELS, "max_sparsity": 0.9},
        "task": "fake-cnn",
        "metric_name": "accuracy",
        "metric_direction": "maximize",
        "baseline": BASELINE,
        "n_trials": n_trials,
        "seed": seed,
        "artifacts_dir": str(artifacts_dir) if artifacts_dir else "",
        "slimtune": "0.1.0",
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    store = None
    if artifact_trials:
        from optuna.artifacts import FileSystemArtifactStore

        Path(artifacts_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        store = FileSystemArtifactStore(str(artifacts_dir))
    rng = random.Random(seed)
    distributions = {f"sparsity/{g}": FloatDistribution(0.0, 0.9) for g in GROUPS}
    trials = []
    for number in range(n_trials + running):
        sparsity = {g: round(rng.uniform(0.0, 0.9), 4) for g in GROUPS}
        plan: dict[str, Any] = {
            "granularity": "channel",
            "prune": {g: {"sparsity": s, "criterion": "l1"} for g, s in sparsity.items()},
            "quantize": {},
        }
        if quantize:
            plan["quantize"] = {g: {"bits_w": rng.choice([4, 8]), "bits_a": 8} for g in GROUPS}
        start = START + dt.timedelta(seconds=2 * number)
        user_attrs: dict[str, Any] = {Trial.HOSTNAME: "fake-host", Trial.DEVICE: "cuda:1 (Fake GPU)", Trial.PLAN: plan}
        params = {f"sparsity/{g}": s for g, s in sparsity.items()}
        if number >= n_trials:
            trials.append(
                create_trial(
                    state=TrialState.RUNNING, params=params, distributions=distributions, user_attrs=user_attrs
                )
            )
            continue
        state = TrialState.COMPLETE
        if failed_every and number % failed_every == failed_every - 1:
            state = TrialState.FAIL
        elif pruned_every and number % pruned_every == pruned_every - 1:
            state = TrialState.PRUNED
        values = None
        system_attrs: dict[str, Any] = {}
        if state == TrialState.FAIL:
            user_attrs[Trial.FAIL_REASON] = f"RuntimeError: fake failure of trial {number}"
            user_attrs[Trial.TIMES] = {"compress": 0.01, "total": 0.02}
        elif state == TrialState.COMPLETE:
            measures = fake_measures(sparsity, rng)
            constraint_values = cost.constraint_values(measures)
            user_attrs[Trial.MEASURES] = measures
            user_attrs[Trial.CONSTRAINTS] = constraint_values
            user_attrs[Trial.TIMES] = {"compress": 0.05, "finetune": 1.2, "evaluate": 0.1, "measure": 0.02, "total": 1.4}
            system_attrs["constraints"] = list(constraint_values.values())
            values = cost.values(measures)
            if store is not None and number in artifact_trials:
                user_attrs[Trial.ARTIFACT] = _upload_model(store, study, number)
        trials.append(
            create_trial(
                state=state,
                values=values,
                params=params,
                distributions=distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )
        trials[-1].datetime_start = start
        trials[-1].datetime_complete = start + dt.timedelta(seconds=1.5)
    study.add_trials(trials)
    return study


def _upload_model(store: Any, study: optuna.Study, number: int) -> str:
    """Save a small torch module as the artifact of a trial, in the safe state format (as trials do);
    returns the artifact id. The base model is :func:`fake_base_model`, the plan an empty one."""
    import tempfile

    import torch
    from optuna.artifacts import upload_artifact

    from slimtune.compressors import CompressionPlan, state

    base = fake_base_model()
    torch.manual_seed(number)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial{number}.safetensors"
        state.save(model, CompressionPlan(), base, torch.zeros(1, 4), path)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)


def fake_base_model() -> Any:
    """The base model of the fake studies' saved models."""
    import torch

    torch.manual_seed(12345)
    return torch.nn.Sequential(torch.nn.Linear(4, 3))


def add_sensitivity_cache(storage: Any, key: str = "fake", baseline: float = BASELINE["accuracy"]) -> dict[str, Any]:
    """Store a sensitivity table the way ``sensitivity_table`` caches it; returns the records."""
    st = make_storage(storage) if isinstance(storage, str) else storage
    cache = optuna.create_study(study_name=SENSITIVITY_PREFIX + key, storage=st)
    rows = []
    for i, (group, share) in enumerate(GROUPS.items()):
        for level in LEVELS:
            drop = round(level**2 * (i + 1) / 10, 6)
            rows.append(
                {"group": group, "level": level, "channels": share, "removed": int(share * level),
                 "metric": baseline - drop, "drop": drop, "flops_rel": 1 - level / 4, "seconds": 0.01}
            )  # fmt: skip
    cache.set_user_attr("table", json.loads(json.dumps(rows)))
    cache.set_user_attr("baseline", baseline)
    cache.set_user_attr("criterion", "l1")
    cache.set_user_attr("direction", "maximize")
    return {"rows": rows, "name": SENSITIVITY_PREFIX + key}
