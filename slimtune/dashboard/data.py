"""The studies of an Optuna storage as JSON-able data, for the dashboard and the static report.

A :class:`StorageReader` only reads the storage. Per study it keeps one ``optuna.Study`` (Optuna
caches finished trials, so reading again fetches only new and unfinished ones) and the data
derived from its trials, recomputed when the study changes (a new trial, a trial finishing, its
attributes). :meth:`StorageReader.version` is the cheap call a page polls to learn that.

The front is :func:`slimtune.trials.results.pareto_front`; measures, plans, constraints and failure
reasons are the user attributes each trial stores, objectives, directions, constraints and the
original model's measures (``baseline``) the study's, all read through :mod:`slimtune.attributes`.

Example:
    >>> import os, tempfile, optuna
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "doc.db")
    >>> study = optuna.create_study(study_name="doc", storage=url, directions=["maximize", "minimize"])
    >>> study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5]))
    >>> reader = StorageReader.open(url)
    >>> [s["name"] for s in reader.studies()["studies"]], reader.trials("doc")["trials"]["front"]
    (['doc'], [True])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune import attributes, optuna_internals
from slimtune.attributes import Study, Trial
from slimtune.dashboard.progress import History, objective_directions, reference_point
from slimtune.dashboard.sensitivity import sensitivity_matrix, uses_table
from slimtune.errors import NotFound, SlimtuneError
from slimtune.trials.results import pareto_front
from slimtune.trials.storage import CACHE_PREFIX as SENSITIVITY_PREFIX
from slimtune.trials.storage import check_exists, make_storage

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from slimtune.optuna_internals import FrozenStudy

__all__ = ["MEASURES", "NotFound", "StorageReader", "check_storage"]

MEASURES = (
    "accuracy",
    "accuracy_drop",
    "flops",
    "flops_abs",
    "params",
    "params_abs",
    "size",
    "size_abs",
    "latency",
    "latency_abs",
    "memory",
    "memory_abs",
)
"""The measures every trial stores (absolute ``*_abs``, relative to the original, the metric drop)."""

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def check_storage(url: str) -> None:
    """Fail clearly when a file storage does not exist, instead of creating an empty one."""
    check_exists(url)


class StorageReader:
    """Reads the studies of one storage (never writes to it).

    Args:
        storage: An Optuna storage object.
        url: Its URL (shown on the page and in export commands).
    """

    def __init__(self, storage: BaseStorage, url: str | None = None) -> None:
        self.storage = storage
        self.url = url or type(storage).__name__
        self._lock = threading.Lock()
        self._studies: dict[str, _StudyData] = {}

    @classmethod
    def open(cls, url: str) -> StorageReader:
        """Open the storage at ``url`` and read its list of studies once; clear errors otherwise."""
        check_storage(url)
        storage = make_storage(url)
        reader = cls(storage, url)
        try:
            reader._listing()
        except Exception as e:
            raise SlimtuneError(f"storage {url} cannot be read: {type(e).__name__}: {e}") from e
        return reader

    # ------------------------------------------------------------------ studies
    def _listing(self) -> list[FrozenStudy]:
        studies = self.storage.get_all_studies()
        return [s for s in studies if not s.study_name.startswith(SENSITIVITY_PREFIX)]

    def _data(self, name: str, frozen: FrozenStudy | None = None) -> _StudyData:
        with self._lock:
            data = self._studies.get(name)
        if data is not None and frozen is None:
            return data
        if frozen is None:
            listing = self._listing()
            frozen = next((s for s in listing if s.study_name == name), None)
            if frozen is None:
                names = [s.study_name for s in listing]
                raise NotFound(f"study {name!r} does not exist in {self.url}; studies there: {names or 'none'}")
        with self._lock:
            data = self._studies.get(name)
            if data is None or data.study_id != optuna_internals.frozen_study_id(frozen):
                data = _StudyData(self, frozen)
                self._studies[name] = data
            else:
                data.frozen = frozen
                data.attrs = dict(frozen.user_attrs)
            return data

    def _all(self) -> list[_StudyData]:
        listing = self._listing()
        names = {s.study_name for s in listing}
        with self._lock:
            for gone in set(self._studies) - names:
                del self._studies[gone]
        return [self._data(s.study_name, s) for s in listing]

    def version(self) -> dict[str, Any]:
        """A token per study that changes whenever what the page shows of it changes."""
        tokens = {d.name: d.token() for d in self._all()}
        digest = hashlib.sha1(json.dumps(tokens, sort_keys=True).encode()).hexdigest()[:16]
        return {"token": digest, "studies": tokens}

    def studies(self) -> dict[str, Any]:
        """One summary per study: strategy, objectives, trials by state, front, best, hypervolume."""
        sens = self._sensitivity_index()
        out = []
        for d in self._all():
            summary = dict(d.analysis().summary)
            summary["sensitivity"] = [t for t, matches in sens.items() if d.name in matches]
            out.append(summary)
        return {"storage": self.url, "studies": out}

    def study(self, name: str) -> dict[str, Any]:
        """The summary of one study."""
        return self._data(name).analysis().summary

    def trials(self, name: str) -> dict[str, Any]:
        """Every trial of a study, column by column: number, state, feasible, front, measures …"""
        return self._data(name).analysis().trials

    def front(self, name: str) -> list[dict[str, Any]]:
        """The study's Pareto front, the rows of :func:`~slimtune.trials.results.pareto_front`."""
        return self._data(name).analysis().front

    def progress(self, name: str) -> dict[str, Any]:
        """Hypervolume and best-so-far per objective after each completed trial."""
        return self._data(name).analysis().progress

    def trial(self, name: str, number: int | str) -> dict[str, Any]:
        """One trial: state, plan per layer, measures against the original, parameters, error.

        ``number`` may be the text of a URL: anything but an integer is a :class:`NotFound` naming it.
        """
        data = self._data(name)
        return data.trial_detail(data.get_trial(number), data.analysis())

    def artifact(self, name: str, number: int | str) -> tuple[Path, str]:
        """The file holding a trial's compressed model and a download name for it."""
        data = self._data(name)
        t = data.get_trial(number)
        number = t.number
        artifact_id = attributes.artifact_id(t)
        if not artifact_id:
            why = attributes.fail_reason(t) or (
                "saving was off (save_models: none)" if t.state == TrialState.COMPLETE else f"it is {t.state.name}"
            )
            raise NotFound(f"trial {number} of study {name!r} has no saved model: {why}")
        base = attributes.artifacts_dir(data.frozen) or ""
        path = Path(base) / str(artifact_id)
        if os.sep in str(artifact_id) or not base or not path.is_file():
            raise NotFound(
                f"the saved model of trial {number} of study {name!r} is missing from {base or '(no artifacts_dir)'}"
            )
        from slimtune.compressors import state

        if not state.is_state_file(path):
            raise NotFound(
                f"the saved model of trial {number} of study {name!r} is a pickle written by an older slimtune; the "
                "dashboard serves only safe state files (safetensors + plan): re-run the trial to save it safely"
            )
        return path, f"{name}-trial{number}.safetensors".replace("/", "_")

    # ------------------------------------------------------------------ sensitivity
    def sensitivity(self) -> dict[str, Any]:
        """The sensitivity tables cached in the storage, as matrices (rows × levels) of metric drops."""
        tables = []
        studies = [(s.study_name, dict(s.user_attrs)) for s in self._listing()]
        for frozen in self.storage.get_all_studies():
            if frozen.study_name.startswith(SENSITIVITY_PREFIX):
                table = sensitivity_matrix(frozen.study_name, frozen.user_attrs)
                if table is not None:
                    table["studies"] = [n for n, attrs in studies if uses_table(attrs, table)]
                    tables.append(table)
        return {"tables": tables}

    def _sensitivity_index(self) -> dict[str, list[str]]:
        return {t["name"]: t["studies"] for t in self.sensitivity()["tables"]}

    # ------------------------------------------------------------------ everything
    def snapshot(self, studies: Sequence[str] | None = None, details: str = "all") -> dict[str, Any]:
        """What the page reads, keyed by the API path that serves it (for the static report).

        Args:
            studies: Names of the studies to include (default: all).
            details: Trial views to include: ``"all"`` trials, ``"front"`` trials only, ``"none"``.
        """
        from urllib.parse import quote

        summary = self.studies()
        names = [s["name"] for s in summary["studies"]]
        if studies:
            unknown = [n for n in studies if n not in names]
            if unknown:
                raise NotFound(f"no study {unknown[0]!r} in {self.url}; studies there: {names or 'none'}")
            summary["studies"] = [s for s in summary["studies"] if s["name"] in studies]
        out: dict[str, Any] = {"/api/studies": summary, "/api/sensitivity": self.sensitivity()}
        for s in summary["studies"]:
            name = s["name"]
            base = "/api/studies/" + quote(name, safe="")
            data = self._data(name)
            analysis = data.analysis()
            out[base] = analysis.summary
            out[base + "/trials"] = analysis.trials
            out[base + "/front"] = analysis.front
            out[base + "/progress"] = analysis.progress
            if details == "none":
                continue
            front = set(analysis.front_numbers)
            for t in data.study.get_trials(deepcopy=False):
                if details == "all" or t.number in front:
                    out[f"{base}/trials/{t.number}"] = data.trial_detail(t, analysis, downloads=False)
        return out


class _Analysis:
    """What is derived from a study's trials at one moment."""

    def __init__(
        self,
        summary: dict[str, Any],
        trials: dict[str, Any],
        front: list[dict[str, Any]],
        progress: dict[str, Any],
        front_numbers: list[int],
    ) -> None:
        self.summary = summary
        self.trials = trials
        self.front = front
        self.progress = progress
        self.front_numbers = front_numbers


class _StudyData:
    """One study of the storage and its analysis, recomputed when the study changes."""

    def __init__(self, reader: StorageReader, frozen: FrozenStudy) -> None:
        self.reader = reader
        self.name = frozen.study_name
        self.study_id = optuna_internals.frozen_study_id(frozen)
        self.frozen = frozen  # the study's attributes as last listed (attributes.* read them)
        self.attrs = dict(frozen.user_attrs)
        self.study = optuna.load_study(study_name=self.name, storage=reader.storage)
        self.lock = threading.Lock()
        self._token: str | None = None
        self._analysis: _Analysis | None = None

    def _trials(self) -> list[FrozenTrial]:
        try:
            return self.study.get_trials(deepcopy=False)
        except KeyError:
            raise NotFound(f"study {self.name!r} was deleted from {self.reader.url}") from None

    def token(self, trials: Sequence[FrozenTrial] | None = None) -> str:
        trials = self._trials() if trials is None else trials
        counts = [0] * len(TrialState)
        for t in trials:
            counts[t.state.value] += 1
        attrs = hashlib.sha1(json.dumps(self.attrs, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{len(trials)}-{'.'.join(map(str, counts))}-{attrs}"

    def analysis(self) -> _Analysis:
        with self.lock:
            trials = self._trials()
            token = self.token(trials)
            if token != self._token or self._analysis is None:
                self._analysis = self._analyse(trials, token)
                self._token = token
            return self._analysis

    def get_trial(self, number: int | str) -> FrozenTrial:
        """Trial ``number`` (an int, or the text of a URL); :class:`NotFound` naming it otherwise."""
        trials = self._trials()
        if isinstance(number, str):
            text = number.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                which = f"(0 to {len(trials) - 1})" if trials else "(it has no trials)"
                raise NotFound(f"study {self.name!r} has no trial {number!r}: a trial is named by its number {which}")
            number = int(text)
        if 0 <= number < len(trials) and trials[number].number == number:
            return trials[number]
        for t in trials:
            if t.number == number:
                return t
        raise NotFound(f"study {self.name!r} has no trial {number} (it has {len(trials)} trials, numbered from 0)")

    # ------------------------------------------------------------------ the analysis
    def meta(self) -> dict[str, Any]:
        s, a = self.frozen, self.attrs
        study_directions = [d.name.lower() for d in self.study.directions]
        objectives = attributes.objectives(s)
        metric_direction = attributes.metric_direction(s)
        return {
            "name": self.name,
            "id": self.study_id,
            "slimtune": attributes.initialised(s),
            "task": a.get(Study.TASK),
            "strategy": a.get(Study.STRATEGY),
            "strategy_params": a.get(Study.STRATEGY_PARAMS) or {},
            "objectives": objectives,
            "directions": objective_directions(objectives, metric_direction, study_directions),
            "study_directions": study_directions,
            "weights": attributes.weights(s),
            "constraints": attributes.study_constraints(s),
            "metric_name": attributes.metric_name(s),
            "metric_direction": metric_direction,
            "baseline": attributes.baseline(s),
            "n_trials": attributes.n_trials(s),
            "space": a.get(Study.SPACE),
        }

    def _analyse(self, trials: Sequence[FrozenTrial], token: str) -> _Analysis:
        meta = self.meta()
        objectives, directions = meta["objectives"], meta["directions"]
        front_table = pareto_front(self.study)
        front_numbers = [int(n) for n in front_table["trial"]] if not front_table.empty else []
        front_set = set(front_numbers)

        columns: dict[str, list[Any]] = {
            k: []
            for k in (
                "number",
                "state",
                "feasible",
                "front",
                "duplicate_of",
                "datetime_start",
                "datetime_complete",
                "values",
            )
        }
        measures: dict[str, list[Any]] = {k: [] for k in MEASURES}
        points: list[tuple[FrozenTrial, list[float | None] | None]] = []
        counts = dict.fromkeys(STATES, 0)
        finished = 0  # as the budget counts them (slimtune.trials.driver.counts): not retried, not over budget
        retried = {optuna_internals.retried_from(t) for t in trials} - {None}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
            if t.state.is_finished() and t.number not in retried and not attributes.over_budget(t):
                finished += 1
            m = _measures(t, objectives)
            feasible = _feasible(t)
            columns["number"].append(t.number)
            columns["state"].append(t.state.name)
            columns["feasible"].append(feasible)
            columns["front"].append(t.number in front_set)
            columns["duplicate_of"].append(attributes.duplicate_of(t))
            columns["datetime_start"].append(_iso(t.datetime_start))
            columns["datetime_complete"].append(_iso(t.datetime_complete))
            columns["values"].append(_clean(t.values) if t.values is not None else None)
            for k in measures:
                measures[k].append(_number(m.get(k)))
            for k in m:
                if k not in measures:  # objectives of a study slimtune did not create
                    measures[k] = [None] * (len(columns["number"]) - 1) + [_number(m[k])]
            if t.state == TrialState.COMPLETE:
                point = [_number(m.get(o)) for o in objectives] if feasible is not False else None
                points.append((t, point))
        for k in measures:
            measures[k] += [None] * (len(columns["number"]) - len(measures[k]))
        kept = {k: v for k, v in measures.items() if any(x is not None for x in v)}
        columns["measures"] = kept  # type: ignore[assignment]

        observed = [p for _, p in points if p is not None]
        ref = reference_point(objectives, directions, meta["baseline"], meta["constraints"], observed)
        progress = {"objectives": objectives, "directions": directions, "reference": ref}
        for order in ("number", "time"):
            key = (
                (lambda tp: tp[0].number)
                if order == "number"
                else (lambda tp: (_ts(tp[0].datetime_complete), tp[0].number))
            )
            hist = History(directions, ref)
            steps: dict[str, list[Any]] = {"number": [], "elapsed": [], "datetime": [], "hypervolume": []}
            best: dict[str, list[Any]] = {o: [] for o in objectives}
            start = min((_ts(t.datetime_start) for t, _ in points if t.datetime_start), default=0.0)
            for t, point in sorted(points, key=key):
                hist.add(point)
                steps["number"].append(t.number)
                steps["elapsed"].append(round(_ts(t.datetime_complete) - start, 3) if t.datetime_complete else None)
                steps["datetime"].append(_iso(t.datetime_complete))
                steps["hypervolume"].append(hist.value)
                for o, b in zip(objectives, hist.best):
                    best[o].append(b)
            progress["by_" + order] = {**steps, "best": best}
        by_number = progress["by_number"]
        hv = by_number["hypervolume"][-1] if by_number["hypervolume"] else 0.0
        best_now = {}
        for i, o in enumerate(objectives):
            b = by_number["best"][o][-1] if by_number["best"][o] else None
            trial = None
            if b is not None:
                trial = next(t.number for t, p in points if p is not None and p[i] == b)
            best_now[o] = {"value": b, "trial": trial}

        budget = meta["n_trials"]
        if counts["RUNNING"]:
            status = "running"
        elif budget is not None and finished >= budget:
            status = "finished"
        elif not trials:
            status = "empty"
        else:
            status = "stopped" if budget is not None else "idle"
        completes = [t.datetime_complete for t in trials if t.datetime_complete]
        summary = {
            **meta,
            "token": token,
            "counts": counts,
            "n_trials_total": len(trials),
            "finished": finished,
            "front_size": len(front_numbers),
            "front": front_numbers,
            "best": best_now,
            "hypervolume": hv,
            "reference": ref,
            "status": status,
            "datetime_start": _iso(min((t.datetime_start for t in trials if t.datetime_start), default=None)),
            "last_complete": _iso(max(completes, default=None)),
        }
        trials_payload = {"study": self.name, "token": token, "meta": meta, "front": front_numbers, "trials": columns}
        return _Analysis(summary, trials_payload, _front_records(front_table), progress, front_numbers)

    def trial_detail(self, t: FrozenTrial, analysis: _Analysis, downloads: bool = True) -> dict[str, Any]:
        meta = analysis.summary
        plan = attributes.plan(t) or {}
        baseline = meta.get("baseline") or {}
        m = _measures(t, meta["objectives"])
        rows = []
        if "accuracy" in m:
            orig = baseline.get("accuracy")
            rows.append(
                _measure_row(meta["metric_name"], m.get("accuracy"), orig, _ratio(m.get("accuracy"), orig), "accuracy")
            )
            rows.append(_measure_row(meta["metric_name"] + " drop", m.get("accuracy_drop"), 0.0, None, "accuracy_drop"))
        for key in ("flops", "params", "size", "latency", "memory"):
            if m.get(key) is not None or m.get(key + "_abs") is not None:
                rows.append(_measure_row(key, m.get(key + "_abs"), baseline.get(key), m.get(key), key))
        for key, value in m.items():
            if key not in MEASURES:
                rows.append(_measure_row(key, value, None, None, key))
        url = self.reader.url
        artifact_id = attributes.artifact_id(t)
        out_name = f"{self.name}-trial{t.number}.safetensors".replace("/", "_")
        export = (
            f"slimtune export --storage {shlex.quote(url)} --study {shlex.quote(self.name)} "
            f"--trial {t.number} --out {shlex.quote(out_name)}"
        )
        duration = None
        if t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        known = {
            Trial.PLAN,
            Trial.MEASURES,
            Trial.CONSTRAINTS,
            Trial.TIMES,
            Trial.FAIL_REASON,
            Trial.ARTIFACT,
            Trial.HOSTNAME,
            Trial.DEVICE,
            Trial.DUPLICATE_OF,
        }
        return {
            "study": self.name,
            "number": t.number,
            "state": t.state.name,
            "values": _clean(t.values) if t.values is not None else None,
            "objectives": meta["objectives"],
            "front": t.number in analysis.front_numbers,
            "feasible": _feasible(t),
            "params": {k: _jsonable(v) for k, v in t.params.items()},
            "plan": plan,
            "prune": [
                {"group": g, "sparsity": s.get("sparsity"), "criterion": s.get("criterion")}
                for g, s in (plan.get("prune") or {}).items()
            ],
            "quantize": [
                {"layer": n, "bits_w": q.get("bits_w"), "bits_a": q.get("bits_a")}
                for n, q in (plan.get("quantize") or {}).items()
            ],
            "measures": rows,
            "constraints": _clean_map(attributes.constraints(t) or {}),
            "times": _clean_map(attributes.times(t)),
            "hostname": attributes.hostname(t),
            "device": attributes.device(t),
            "duplicate_of": attributes.duplicate_of(t),
            "fail_reason": attributes.fail_reason(t),
            "datetime_start": _iso(t.datetime_start),
            "datetime_complete": _iso(t.datetime_complete),
            "duration": duration,
            "intermediate": {str(k): _number(v) for k, v in t.intermediate_values.items()},
            "user_attrs": {k: _jsonable(v) for k, v in t.user_attrs.items() if k not in known},
            "artifact": artifact_id,
            "download": (
                f"api/studies/{_quote(self.name)}/trials/{t.number}/model" if artifact_id and downloads else None
            ),
            "export_command": export if artifact_id else None,
        }


# ---------------------------------------------------------------------- helpers
def _measures(t: FrozenTrial, objectives: Sequence[str]) -> dict[str, Any]:
    m = t.user_attrs.get(Trial.MEASURES)  # (not attributes.measures: a malformed value is no mapping)
    if isinstance(m, Mapping):
        return dict(m)
    if t.values is not None and objectives and objectives[0].startswith("value_"):
        return dict(zip(objectives, t.values))  # a study slimtune did not create: its values
    return {}


def _feasible(t: FrozenTrial) -> bool | None:
    constraints = attributes.constraints(t)
    if isinstance(constraints, Mapping):
        return all(float(v) <= 0 for v in constraints.values())
    values = optuna_internals.constraint_values(t)  # a study slimtune did not create
    if values is not None:
        return all(float(v) <= 0 for v in values)
    return None


def _front_records(front: Any) -> list[dict[str, Any]]:
    if front.empty:
        return []
    records = json.loads(front.to_json(orient="records", double_precision=15))
    for r in records:
        if isinstance(r.get("plan_json"), str):
            r["plan_json"] = json.loads(r["plan_json"])
    return records


def _measure_row(name: str, value: Any, original: Any, ratio: Any, key: str) -> dict[str, Any]:
    return {"name": name, "key": key, "value": _number(value), "original": _number(original), "ratio": _number(ratio)}


def _ratio(value: Any, original: Any) -> float | None:
    if value is None or original in (None, 0):
        return None
    return float(value) / float(original)


def _number(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    return None


def _clean(values: Sequence[Any]) -> list[Any]:
    return [_number(v) for v in values]


def _clean_map(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _number(v) for k, v in values.items()}


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v, allow_nan=False)
        return v
    except (TypeError, ValueError):
        return _number(v) if isinstance(v, float) else str(v)


def _iso(d: Any) -> str | None:
    return d.isoformat(timespec="seconds") if d is not None else None


def _ts(d: Any) -> float:
    return d.timestamp() if d is not None else math.inf


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
