"""The search algorithm of ``backend: tune``: a Ray Tune ``Searcher`` that asks a slimtune study's strategy.

:class:`SlimtuneSearcher` (:class:`SearchLogic` on Tune's ``Searcher``, created when Ray is imported) lives in
the Tune driver. For each Tune trial it asks the study's own sampler on the study's storage
(``study.ask()``, then the strategy's ``suggest``: seeds and retries queued in the study come first, custom
samplers, constraints and budget repairs work as in the other backends) and returns the Optuna trial's number
and parameters as the Tune trial's config; the Tune worker runs that trial
(:func:`~slimtune.trials.tune_trial.slimtune_trial`). It counts the budget as the other backends do
(:func:`~slimtune.trials.driver.counts`: it asks while finished plus running trials are below ``n_trials``)
and ends the Tune run (``Searcher.FINISHED``) at the budget, the ``timeout`` or when the strategy has
finished. A trial Tune's scheduler stopped is told PRUNED here (``tune.stopped_by``), one whose Tune trial
errored beyond ``FailureConfig``'s retries FAIL. While Tune holds a trial the searcher sends its heartbeats,
so other workers of the study see it alive and a killed driver's trials go stale.

Tune saves the searcher with its experiment (which Optuna trial each Tune trial runs); after
``Tuner.restore`` the trials the interrupted run had asked for but Tune never recorded are failed and
queued again with the same parameters.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from slimtune import attributes as attrs
from slimtune import optuna_internals
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.trials.config import RayOptions, SearchConfig
from slimtune.trials.driver import adopt_orphans, counts, fail_stale, trial_line
from slimtune.trials.ray_backend import ray_driver_config
from slimtune.trials.storage import parse_url, url_of
from slimtune.trials.study import prepare
from slimtune.trials.tune_options import OBJECTIVE_METRIC, SCHEDULER_METRIC, TuneOptions
from slimtune.trials.tune_trial import PARAMS_KEY, TRIAL_KEY, ignore_stop

if TYPE_CHECKING:
    from slimtune.trials.study import PreparedStudy
    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")

#: The trial attribute recording the Tune run and trial a trial ran in (and who stopped it).
TUNE_ATTR = attrs.Trial.TUNE


class SearchLogic:
    """What :class:`SlimtuneSearcher` does (the Tune ``Searcher`` base is added when Ray is imported).

    Args:
        task: The task (kept to prepare the study again in a restored run).
        prepared: The study prepared in this process.
        experiment: The Tune experiment's folder (recorded on each trial).
        scheduler: The scheduler's name (recorded on the trials it stops).
    """

    def __init__(self, task: Task, prepared: PreparedStudy, experiment: str, scheduler: str = "fifo") -> None:
        super().__init__()  # ray.tune.search.Searcher: no metric of its own (the study's cost decides)
        self.task = task
        self.config = prepared.config
        self.run_id = uuid.uuid4().hex[:12]
        self.experiment = experiment
        self.scheduler = scheduler
        self.live: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._setup(prepared)

    def _setup(self, prepared: PreparedStudy | None) -> None:
        self._prepared = prepared
        if prepared is not None:
            ignore_stop(prepared.study)
        self._lock = threading.RLock()
        self._beater: threading.Thread | None = None
        self._ids: dict[int, Any] = {}
        self._adopted: set[int] = set()
        self._deadline: float | None = None
        self._ended: str | None = None
        self.broken = False  # a Tune trial failed before its objective ran: the workers cannot run trials

    # pickled into Tune's tuner.pkl: the recipe, not the open study, the lock or the heartbeat thread
    def __getstate__(self) -> dict[str, Any]:
        keep = {k: v for k, v in self.__dict__.items() if not k.startswith("_") or k in ("_metric", "_mode")}
        keep["config"] = self.config.to_dict()
        keep["live"] = dict(self.live)
        return keep

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.config = SearchConfig.from_dict(state["config"])
        self._setup(None)

    @property
    def prepared(self) -> PreparedStudy:
        """The prepared study (prepared again on first use in a restored run)."""
        if self._prepared is None:
            self._prepared = prepare(self.task, tune_driver_config(self.task, self.config))
            ignore_stop(self._prepared.study)
        return self._prepared

    # -- Tune's Searcher interface
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        return True  # the space is the study's; Tune's metric and mode are the scheduler's business

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        from ray.tune.search import Searcher

        prepared = self.prepared
        study = prepared.study
        with self._lock:
            if self._deadline is None and self.config.timeout is not None:
                self._deadline = time.monotonic() + self.config.timeout
            reason = self._end_reason(prepared)
            if reason is not None:
                if self._ended is None:
                    self._ended = reason
                    logger.info("study %s: no more Tune trials: %s", study.study_name, reason)
                return Searcher.FINISHED
            c = counts(study)
            if self.config.n_trials is not None and c["done"] + c["running"] >= self.config.n_trials:
                # the rest of the budget is running: wait for it (a dead worker's trial is failed and queued again)
                if not self.live:
                    adopt_orphans(study, self._adopted, self.config.heartbeat)
                    fail_stale(study)
                return None
            with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize": the driver sends them
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            try:
                params = prepared.strategy.suggest(trial, prepared.space)
            except optuna.TrialPruned:  # the strategy has nothing for this trial (e.g. NetAdapt's spare candidates)
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                return None
            except Exception as e:
                trial.set_user_attr(attrs.Trial.FAIL_REASON, f"{type(e).__name__}: {e}")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                logger.warning("study %s: trial %d failed when asked: %s", study.study_name, trial.number, e)
                return None
            trial.set_user_attr(TUNE_ATTR, {"experiment": self.experiment, "run": self.run_id, "trial_id": trial_id})
            self.live[trial_id] = trial.number
            self._ids[trial.number] = trial
            self._beat()
            return {TRIAL_KEY: trial.number, PARAMS_KEY: _jsonable(params)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        with self._lock:
            number = self.live.pop(trial_id, None)
            self._ids.pop(number, None)
        if number is None:
            return
        study = self.prepared.study
        frozen = optuna_internals.study_trial(study, number)
        if frozen.state == TrialState.RUNNING:
            info = dict(frozen.user_attrs.get(TUNE_ATTR) or {})
            if error:
                if attrs.worker(frozen) == {}:  # it failed before its objective started: the worker's set-up failed
                    self.broken = True
                reason = (
                    f"TuneTrialError: Tune trial {trial_id} failed (its worker raised or died) and its "
                    f"FailureConfig(max_failures={self.config.tune.max_failures if self.config.tune else '?'}) "
                    "retries were used up; error.txt in the Tune trial's folder says why"
                )
                optuna_internals.set_trial_user_attr(study, frozen, attrs.Trial.FAIL_REASON, reason)
                state = TrialState.FAIL
            else:  # stopped by Tune's scheduler (or a stopping condition) before its objective ended
                result = result or {}
                info.update(stopped_by=self.scheduler, iteration=result.get("training_iteration"))
                info.update({k: result[k] for k in (SCHEDULER_METRIC, OBJECTIVE_METRIC) if k in result})
                state = TrialState.PRUNED
            optuna_internals.set_trial_user_attr(study, frozen, TUNE_ATTR, info)
            frozen = study.tell(number, state=state, skip_if_finished=True)
        if self.config.progress:
            logger.info("%s (Tune trial %s)", trial_line(frozen), trial_id)

    def save(self, checkpoint_path: str) -> None:
        with self._lock:
            state = {"run_id": self.run_id, "experiment": self.experiment, "live": dict(self.live)}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        with self._lock:
            self.run_id, self.live = state["run_id"], {str(k): int(v) for k, v in state["live"].items()}
        self._resume()

    def get_state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "live": dict(self.live)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.run_id, self.live = state["run_id"], dict(state["live"])

    # -- helpers
    def _resume(self) -> None:
        """After ``Tuner.restore``: heartbeats for the trials Tune resumes; the trials the interrupted run had
        asked for but Tune never recorded are failed and queued again (same parameters)."""
        study = self.prepared.study
        known = set(self.live.values())
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tag = t.user_attrs.get(TUNE_ATTR) or {}
            if tag.get("run") == self.run_id and t.number not in known:
                optuna_internals.fail_and_retry(
                    study,
                    t,
                    attrs.Trial.FAIL_REASON,
                    "WorkerDied: its Tune run was interrupted before Tune recorded the trial; queued again",
                )
            elif t.number in known:
                self._ids[t.number] = t
        with self._lock:
            self._beat()

    def _end_reason(self, prepared: PreparedStudy) -> str | None:
        if self.broken:
            return "a Tune trial failed before its objective started (see the Tune trial's error.txt)"
        finished = prepared.strategy.finished(prepared.study)
        if finished is not None:
            return f"strategy {prepared.strategy.name} finished: {finished}"
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return f"timeout of {self.config.timeout:g} s"
        n = self.config.n_trials
        if n is not None and counts(prepared.study)["done"] >= n:
            return f"{n} trials finished"
        return None

    def _beat(self) -> None:
        """Heartbeats for the trials Tune holds, every ``heartbeat.interval`` seconds (under the lock)."""
        if self.live and (self._beater is None or not self._beater.is_alive()):
            self._beater = threading.Thread(target=self._beat_loop, name="slimtune-tune-heartbeat", daemon=True)
            self._beater.start()

    def _beat_loop(self) -> None:
        study = self.prepared.study
        while True:
            with self._lock:
                numbers = list(self.live.values())
                if not numbers:
                    self._beater = None
                    return
            for number in numbers:
                try:
                    trial = self._ids.get(number) or optuna_internals.study_trial(study, number)
                    self._ids[number] = trial
                    if not optuna_internals.record_heartbeat(study, trial):
                        return  # a storage without heartbeats
                except Exception:  # the storage busy or the trial gone: the next beat tries again
                    pass
            time.sleep(self.config.heartbeat.interval)


_SEARCHER_CLASS: type | None = None


def searcher_class() -> type:
    """:class:`SlimtuneSearcher`: :class:`SearchLogic` on Tune's ``Searcher`` (imports Ray when first asked)."""
    global _SEARCHER_CLASS
    if _SEARCHER_CLASS is None:
        from ray.tune.search import Searcher

        _SEARCHER_CLASS = type(
            "SlimtuneSearcher",
            (SearchLogic, Searcher),
            {"__module__": __name__, "__doc__": "A Ray Tune searcher over a slimtune study (see SearchLogic)."},
        )
    return _SEARCHER_CLASS


def __getattr__(name: str) -> Any:  # ``SlimtuneSearcher`` exists once asked for (Ray is imported then)
    if name == "SlimtuneSearcher":
        return searcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tune_driver_config(task: Task, config: SearchConfig) -> SearchConfig:
    """The configuration the driver prepares a Tune study with, checked before any work: a storage every
    Tune worker can open; a GPU device needs ``gpu`` in ``tune.resources_per_trial`` (a driver without a
    GPU prepares on the CPU while its GPU workers run the trials)."""
    url = url_of(config.storage)
    if not isinstance(url, str) or not parse_url(url).shareable:
        raise SlimtuneError(
            "backend 'tune' needs a storage every Tune worker can open (sqlite:///file.db on one machine, "
            f"postgresql://... on a cluster), got {url if isinstance(url, str) else type(config.storage).__name__!r}",
            field="storage",
        )
    options = TuneOptions.from_value(config.tune)
    probe = config.replace(backend="ray", tune=None, ray=RayOptions(resources_per_trial=options.resources_per_trial))
    try:
        device = ray_driver_config(task, probe).device
    except ConfigError as e:
        problem = e.problem.replace("ray.resources_per_trial", "tune.resources_per_trial")
        raise ConfigError(problem, field=e.field) from None
    return config.replace(device=device)


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in params.items()}


__all__ = ["TUNE_ATTR", "SearchLogic", "searcher_class", "tune_driver_config"]
