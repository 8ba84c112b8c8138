"""The batches of a fine-tune run's optimizer steps: epoch and run length, passes over the data, accumulation.

The data is any re-iterable of batches: a list or tuple (shuffled here, every pass, by a generator seeded
with the config's seed), a ``torch.utils.data.DataLoader`` (which shuffles itself) or another iterable.
An epoch is ``len(data) // accumulate`` optimizer steps; a pass over data without a ``len`` ends when it
runs out. The last ``len % accumulate`` batches of every pass are left out. The data is never iterated
just to count it, and nothing is read ahead of the run's last step.

Example:
    >>> from slimtune.compressors.training import FinetuneConfig
    >>> from slimtune.compressors.training._data import step_batches
    >>> cfg = FinetuneConfig(steps=3, accumulate=2, shuffle=False)  # 5 batches: 2 steps a pass, 1 left out
    >>> [(batches, ends) for batches, ends in step_batches(range(5), cfg, total=3, per_epoch=None)]
    [([0, 1], False), ([2, 3], True), ([0, 1], True)]
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from typing import Any

from slimtune.compressors.training.config import FinetuneConfig
from slimtune.errors import ArgumentError, PlanConfigError


def steps_per_epoch(data: Iterable[Any], config: FinetuneConfig) -> int | None:
    """Optimizer steps in one pass over ``data`` (``len(data) // accumulate``), or None without ``len``.

    Raises:
        PlanConfigError: A pass holds fewer batches than one step accumulates.
    """
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
    if 0 < n < config.accumulate:
        raise PlanConfigError(
            f"{config.accumulate} batches per optimizer step, but the training data has only {n}",
            field="finetune.accumulate",
        )
    return n // config.accumulate


def run_length(config: FinetuneConfig, per_epoch: int | None) -> int:
    """Optimizer steps of the run (``config.steps``, else ``epochs × per_epoch``).

    Raises:
        PlanConfigError: ``epochs`` for data without a ``len`` (field ``finetune.epochs``).
    """
    if per_epoch == 0:  # an empty list of batches: nothing to train on
        return 0
    if config.steps is not None:
        return config.steps
    if per_epoch is None:
        if config.epochs == 0:
            return 0
        raise PlanConfigError(
            "an epoch's length is unknown: the training data has no len() (a DataLoader over an "
            "IterableDataset, a generator); set finetune.steps (optimizer steps) instead, or give the data "
            "a __len__",
            field="finetune.epochs",
        )
    return config.total_steps(per_epoch * config.accumulate)


def step_batches(
    data: Iterable[Any], config: FinetuneConfig, total: int, per_epoch: int | None
) -> Iterator[tuple[list[Any], bool]]:
    """The batches of ``total`` optimizer steps: ``(accumulate batches, whether a pass or the run ends with
    the step)``.

    Passes over ``data`` follow each other (lists and tuples reshuffled every pass by a generator seeded
    with the config's seed); a pass ends after ``per_epoch`` steps (when known) or when ``data`` runs out,
    and its last ``len % accumulate`` batches are left out. Nothing is read ahead of the run's last step.
    """
    rng = random.Random(config.seed)
    micro = config.accumulate
    done = 0
    passes = 0
    while done < total:
        if config.shuffle and isinstance(data, (list, tuple)):
            order = list(range(len(data)))
            rng.shuffle(order)
            it: Iterator[Any] = (data[i] for i in order)
        else:
            it = iter(data)
        passes += 1
        group = list(itertools.islice(it, micro))
        if len(group) < micro:
            raise _no_batches(len(group), micro, passes)
        taken = 0
        while group:
            taken += 1
            if done + 1 == total or (per_epoch is not None and taken == per_epoch):
                after: list[Any] = []
            else:
                after = list(itertools.islice(it, micro))
                if len(after) < micro:  # the pass ended: its remainder is left out
                    after = []
            yield group, not after
            done += 1
            group = after


def _no_batches(got: int, micro: int, passes: int) -> Exception:
    if got == 0:
        again = f" on pass {passes}: an iterator can be read only once;" if passes > 1 else ";"
        return ArgumentError(
            f"finetune: the training data yielded no batches{again} pass a list or a DataLoader", field="data"
        )
    return PlanConfigError(
        f"{micro} batches per optimizer step, but a pass over the training data gives only {got}",
        field="finetune.accumulate",
    )
