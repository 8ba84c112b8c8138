"""The strategy interface and the registry of strategies by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from slimtune import attributes, optuna_internals
from slimtune.errors import StrategyError
from slimtune.registry import Registry, closest_name

if TYPE_CHECKING:
    import optuna

    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace


class Strategy:
    """A search strategy: an Optuna sampler over a :class:`SearchSpace`, plus how a trial asks.

    Subclasses set ``name``, ``defaults`` (their parameters with default values) and implement
    :meth:`sampler`. Parameters come from the spec's ``strategy`` section; unknown ones are an
    error naming the parameter.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    uses_sensitivity: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            close = closest_name(unknown[0], self.defaults)
            hint = f" did you mean {close!r}?" if close else ""
            raise StrategyError(
                f"strategy {self.name!r}: unknown parameter(s) {unknown};{hint} known: {known}",
                field=f"strategy.{unknown[0]}",
            )
        self.params = {**self.defaults, **params}

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, float]:
        """Ask the trial for its parameters (default: every group's sparsity)."""
        return space.suggest(trial)

    def plan(self, params: Mapping[str, Any], space: SearchSpace) -> CompressionPlan:
        return space.plan(params)

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        """Parameters enqueued as the first trials of a new study."""
        return space.seeds()

    def finished(self, study: optuna.Study) -> str | None:
        """Why the strategy has nothing more to propose (it reached its end), or None.

        Iterative strategies (simulated annealing cooled down, NetAdapt reached its target) end
        on their own; the runner checks this before asking for more trials and stops the study,
        whatever budget is left. Derived from the study's trials, so every worker agrees.
        """
        return None

    def _stop_if_finished(self, trial: optuna.trial.Trial) -> None:
        """In :meth:`suggest`: end a trial that starts after the strategy finished (PRUNED, marked
        :data:`ATTR_FINISHED`, not run) and stop the study."""
        import optuna

        reason = self.finished(trial.study)
        if reason is not None:
            trial.set_user_attr(ATTR_FINISHED, reason)
            trial.study.stop()
            raise optuna.TrialPruned(f"strategy {self.name!r} finished: {reason}")


ATTR_FINISHED = attributes.Trial.STRATEGY_FINISHED
"""User attribute of a trial that started after its strategy finished (it was not run)."""


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
"""Every strategy class by the name a spec's ``strategy`` field uses."""


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator registering a strategy under ``cls.name``.

    Raises:
        StrategyError: ``cls`` has no ``name``.
        DuplicateNameError: Another strategy is registered under that name.
    """
    if not cls.name:
        raise StrategyError(f"{cls.__name__} has no name")
    return STRATEGIES.register(cls.name, cls)


def get_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate the strategy registered as ``name`` with ``params``.

    Raises:
        UnknownNameError: ``name`` is not registered (the closest known name and the known ones in the message).
        StrategyError: A parameter is unknown or has a bad value (``field`` names it, ``strategy.<param>``).
    """
    return STRATEGIES.get(name)(**params)


def record(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """Store a sampler's bookkeeping on the trial being sampled (a user attribute), also on the
    trial object the running :class:`optuna.trial.Trial` holds, so the strategy's ``suggest`` sees it."""
    optuna_internals.set_trial_user_attr(study, trial, key, value)
