"""The Optuna internals slimtune relies on, in one place.

Optuna's public API covers asking, telling and attributes, but a few things slimtune needs are
only reachable through private attributes: the storage and the ids behind a study and a trial
(to write a sampled trial's attribute from inside a sampler, to fail and re-queue a dead
worker's trial, to send a heartbeat for a trial that never sent one) and the system attributes
Optuna's own callbacks write (``failed_trial`` of a retried trial, ``constraints`` given to a
constrained sampler). Everything else in slimtune uses the public API. When Optuna changes these,
this module is the one to change; ``tests/test_layering.py`` checks no other module reaches for
them.

Example:
    >>> import optuna
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> set_trial_user_attr(study, study_trial(study, trial.number), "k", 1)
    >>> study.trials[0].user_attrs["k"]
    1
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.study._frozen import FrozenStudy
    from optuna.trial import FrozenTrial

#: system attribute Optuna's RetryHeartbeatStaleTrialCallback sets on the copy of a stale trial
_RETRIED_FROM = "failed_trial"
#: system attribute holding the constraint values a constrained sampler reads
_CONSTRAINTS = "constraints"


def storage(study: optuna.Study) -> BaseStorage:
    """The storage behind ``study``."""
    return study._storage


def storage_url(study: optuna.Study) -> str | None:
    """The URL of the RDB storage behind ``study`` (through Optuna's cache wrapper), else None."""
    st = study._storage
    st = getattr(st, "_backend", st)
    return getattr(st, "url", None)


def study_key(study: optuna.Study) -> Hashable:
    """A key for per-study caches of a strategy (unique per storage and study)."""
    return (id(study._storage), study._study_id)


def frozen_study_id(study: FrozenStudy) -> int:
    """The storage's id of a study listed by ``storage.get_all_studies()`` (a new id means the
    study of that name was deleted and created again)."""
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.trial.Trial) -> int:
    """The storage's id of a trial (its ``number`` counts within the study)."""
    return trial._trial_id


def study_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """The stored trial ``number`` of ``study`` (KeyError when there is none)."""
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(number)


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Write a user attribute of a trial given as a :class:`FrozenTrial` (inside a sampler, where
    the running :class:`optuna.trial.Trial` is not at hand); the frozen copy sees it too."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)
    trial.user_attrs[key] = value


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (its worker died), or None."""
    return trial.system_attrs.get(_RETRIED_FROM)


def constraint_values(trial: FrozenTrial) -> list[float] | None:
    """The constraint values given to Optuna's constrained samplers for this trial."""
    values = trial.system_attrs.get(_CONSTRAINTS)
    return None if values is None else list(values)


def record_heartbeat(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Send one heartbeat on behalf of a running trial; False for storages without heartbeats."""
    st = study._storage
    if not hasattr(st, "record_heartbeat"):
        return False
    st.record_heartbeat(trial._trial_id)
    return True


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason_key: str, reason: str) -> bool:
    """Fail a RUNNING trial with ``reason`` (user attribute ``reason_key``) and queue it again
    through the storage's stale-trial callback (the same as a stale heartbeat does, at once).

    Returns False when the trial finished meanwhile (nothing changed).
    """
    st = study._storage
    try:  # (a finished trial's attributes are read-only: the reason first)
        st.set_trial_user_attr(trial._trial_id, reason_key, reason)
        if not st.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:  # finished (or failed as stale) meanwhile
        return False
    callback = getattr(st, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, copy.deepcopy(st.get_trial(trial._trial_id)))
    return True


def grace_period(study: optuna.Study) -> int | None:
    """Seconds after which the storage fails a trial without heartbeats (None: no heartbeats)."""
    getter = getattr(study._storage, "get_heartbeat_interval", None)
    if getter is None or getter() is None:
        return None
    return getattr(study._storage, "grace_period", None)


__all__ = [
    "constraint_values",
    "fail_and_retry",
    "frozen_study_id",
    "grace_period",
    "record_heartbeat",
    "retried_from",
    "set_trial_user_attr",
    "storage",
    "study_key",
    "study_trial",
    "trial_id",
]
