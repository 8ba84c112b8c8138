"""Per-group sparsity search space, with bounds and seed points derived from sensitivity.

Each prunable group gets one parameter ``sparsity/<group>`` (a float in ``[min_sparsity,
upper]``). The upper bound comes from the sensitivity table: the largest level whose one-shot
metric drop stays within ``tolerance``, plus ``headroom`` (fine-tuning recovers part of the
drop), capped at ``max_sparsity``. Without sensitivity every group gets ``max_sparsity``.

Seed points, enqueued as a study's first trials, give every strategy a sensible start:
a uniform allocation and the sensitivity-derived allocation (each group at its one-shot-safe
level). Strategies that aim at a resource target start from :meth:`SearchSpace.allocate`: the
sensitivity table read greedily, each step pruning where one-shot accuracy costs least per unit
of the resource saved, until the target is met.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> from slimtune.search_spaces import SearchSpace, SpaceOptions
    >>> from slimtune.examples.models import vgg_small
    >>> space = SearchSpace(trace(vgg_small(), torch.randn(1, 3, 32, 32)), SpaceOptions(max_sparsity=0.8))
    >>> sorted(space.distributions())[:2]
    ['sparsity/fc1', 'sparsity/features.0']
    >>> space.plan({"sparsity/fc1": 0.5}).prune["fc1"].sparsity
    0.5
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from slimtune.compressors.criteria import CRITERIA
from slimtune.compressors.plan import CompressionPlan, FactorSpec, PruneSpec, QuantSpec
from slimtune.compressors.sensitivity import DEFAULT_LEVELS, max_safe_level, min_safe_bits
from slimtune.compressors.training.config import KD_MODE_CHOICES, kd_mode_overrides
from slimtune.errors import ArgumentError, ConfigError, PlanError, UnknownNameError
from slimtune.registry import closest_name

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from slimtune.compressors.graph import ModelGraph

SPARSITY_PREFIX = "sparsity/"
BITS_W_PREFIX = "bits_w/"
BITS_A_PREFIX = "bits_a/"
QUANT_ALGORITHM_PARAM = "quant/algorithm"
"""The trial parameter choosing the quantization algorithm when ``space.quant_algorithm`` lists several."""
RANK_PREFIX = "rank/"
"""Trial parameters ``rank/<layer>``: the kept rank ratio of a factorized layer (1.0 keeps it whole)."""
KD_MODE_PARAM = "finetune/kd_mode"
"""The trial parameter choosing the fine-tune's distillation when ``space.kd_mode`` lists several."""


@dataclass(frozen=True)
class SpaceOptions:
    """Options of the search space (the ``space`` section of a spec).

    Args:
        max_sparsity: Largest sparsity any group may get, in (0, 1).
        min_sparsity: Smallest sparsity, in [0, max_sparsity).
        tolerance: One-shot metric drop allowed when deriving a group's bound from sensitivity.
        headroom: Added to the one-shot-safe level to form the bound (fine-tuning recovers).
        levels: Sparsity grid of the sensitivity analysis.
        criterion: Pruning criterion of every group (a name in ``CRITERIA``).
        sensitivity: Derive bounds and seeds from a sensitivity analysis.
        groups: Restrict the search to these groups (default: every prunable group).
        bits_w: Weight bit-widths to choose from per quantizable layer (e.g. ``[4, 8, 32]``;
            32 = float); None searches no weight bit-widths.
        bits_a: Activation bit-widths to choose from per layer (needs calibration batches).
        quantize_layers: Restrict bit-width choices to these layers (default: every Conv/Linear).
        quant_algorithm: How the quantized layers are quantized and trained: a name of
            :data:`~slimtune.compressors.quantization.ALGORITHMS` (``ste``, ``ptq``, ``pact``,
            ``dorefa``, ``bnn``, ``slb`` ...) written into every plan, or a list of names searched
            as the trial parameter ``quant/algorithm``; None: ``ste``. Each must accept every
            searched weight bit-width (``slb`` 1-4 bits, ``bnn`` 1 bit).
        channel_multiple: Hardware-friendly widths: every plan of the space keeps a multiple of
            this many channels in each group (8 or 16, the SIMD and tensor-core widths; see
            :func:`~slimtune.compressors.plan.round_kept` for groups smaller than it). The plans
            carry it as ``plan.channel_multiple`` and their sparsities are the rounded ones, so
            compress, the resource predictor and the latency table agree. None: no rounding.
        kd_mode: How each plan's fine-tune distils: ``none`` (no KD) or a mode of
            :data:`~slimtune.compressors.training.config.KD_MODES` (``offline``, ``online``, ``born_again``,
            ``self``), written into every plan's ``finetune`` (``{"kd": {"mode": ...}}`` or ``{"kd": None}``),
            or a list of them searched as the trial parameter ``finetune/kd_mode``. None: the task's own
            fine-tune settings.
        ranks: Low-rank factorization: the rank ratios to choose from per factorizable layer (e.g.
            ``[0.25, 0.5, 1.0]``; 1.0 keeps the layer whole), searched as ``rank/<layer>``
            (:mod:`slimtune.compressors.lowrank`); None factorizes nothing.
        factorize_layers: Restrict the rank choices to these layers (default: every Linear and ungrouped Conv2d).
        rank_method: The decomposition of every factorized layer: ``auto``, ``svd`` or ``tucker2``.
        rank_energy: The seed allocation keeps this fraction of each layer's singular-value energy (the
            smallest rank ratio of ``ranks`` that does).
    """

    max_sparsity: float = 0.9
    min_sparsity: float = 0.0
    tolerance: float = 0.05
    headroom: float = 0.3
    levels: tuple[float, ...] = DEFAULT_LEVELS
    criterion: str = "l1"
    sensitivity: bool = True
    groups: tuple[str, ...] | None = None
    bits_w: tuple[int, ...] | None = None
    bits_a: tuple[int, ...] | None = None
    quantize_layers: tuple[str, ...] | None = None
    quant_algorithm: str | tuple[str, ...] | None = None
    channel_multiple: int | None = None
    kd_mode: str | tuple[str, ...] | None = None
    ranks: tuple[float, ...] | None = None
    factorize_layers: tuple[str, ...] | None = None
    rank_method: str = "auto"
    rank_energy: float = 0.95

    def __post_init__(self) -> None:
        """Check every option: a :class:`~slimtune.errors.ConfigError` whose ``field`` is ``space.<option>``."""
        for name in ("max_sparsity", "min_sparsity", "tolerance", "headroom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise _bad(name, f"expected a number, got {value!r}")
        if not 0.0 < self.max_sparsity < 1.0:
            raise _bad("max_sparsity", f"{self.max_sparsity!r} must be in (0, 1)")
        if not 0.0 <= self.min_sparsity < self.max_sparsity:
            raise _bad(
                "min_sparsity", f"{self.min_sparsity!r} must be in [0, 1) and below max_sparsity ({self.max_sparsity})"
            )
        if self.tolerance < 0:
            raise _bad("tolerance", f"{self.tolerance!r} must be ≥ 0")
        if not 0.0 <= self.headroom < 1.0:
            raise _bad("headroom", f"{self.headroom!r} must be in [0, 1)")
        if isinstance(self.levels, (str, bytes)) or not isinstance(self.levels, Iterable):
            raise _bad("levels", f"expected a list of sparsities in (0, 1), got {self.levels!r}")
        levels = tuple(self.levels)
        if not levels:
            raise _bad("levels", "must list at least one sparsity level, e.g. [0.25, 0.5, 0.75]")
        for i, v in enumerate(levels):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 < v < 1.0:
                raise _bad(f"levels[{i}]", f"{v!r} must be in (0, 1)")
        levels = tuple(float(v) for v in levels)
        if not isinstance(self.sensitivity, bool):
            raise _bad("sensitivity", f"expected true or false, got {self.sensitivity!r}")
        for name in ("groups", "quantize_layers", "factorize_layers"):
            names = getattr(self, name)
            if names is None:
                continue
            if isinstance(names, str) or not isinstance(names, Iterable) or not list(names):
                raise _bad(name, f"expected a non-empty list of names, got {names!r}")
            for i, n in enumerate(names):
                if not isinstance(n, str):
                    raise _bad(f"{name}[{i}]", f"expected a string, got {n!r}")
        try:
            CRITERIA.get(self.criterion)
        except UnknownNameError as e:
            raise _bad("criterion", str(e)) from None
        object.__setattr__(self, "levels", levels)
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))
        for name in ("bits_w", "bits_a"):
            choices = getattr(self, name)
            if choices is None:
                continue
            choices = tuple(choices)
            wrong = [
                b for b in choices if isinstance(b, bool) or not isinstance(b, int) or not (1 <= b <= 8 or b == 32)
            ]
            if not choices or wrong:
                raise _bad(name, f"{list(choices)!r} must be a non-empty list of bit-widths in 1-8 or 32")
            object.__setattr__(self, name, tuple(sorted(set(choices))))
        if self.quantize_layers is not None:
            object.__setattr__(self, "quantize_layers", tuple(self.quantize_layers))
        if self.quant_algorithm is not None:
            object.__setattr__(self, "quant_algorithm", self._check_algorithms())
        m = self.channel_multiple
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise _bad("channel_multiple", f"expected a positive integer such as 8 or 16 (or null), got {m!r}")
        if self.kd_mode is not None:
            object.__setattr__(self, "kd_mode", self._check_kd_modes())
        self._check_ranks()

    def _check_ranks(self) -> None:
        from slimtune.compressors.lowrank import METHODS

        if self.ranks is not None:
            choices = tuple(self.ranks) if isinstance(self.ranks, (list, tuple)) else ()
            wrong = [r for r in choices if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r <= 1]
            if not choices or wrong:
                raise _bad("ranks", f"{self.ranks!r} must be a non-empty list of rank ratios in (0, 1]")
            object.__setattr__(self, "ranks", tuple(sorted({float(r) for r in choices})))
        if self.factorize_layers is not None:
            object.__setattr__(self, "factorize_layers", tuple(self.factorize_layers))
        if self.rank_method not in METHODS:
            close = closest_name(str(self.rank_method), METHODS)
            hint = f" did you mean {close!r}?" if close else ""
            raise _bad("rank_method", f"unknown method {self.rank_method!r};{hint} known: {', '.join(METHODS)}")
        e = self.rank_energy
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not 0 < e <= 1:
            raise _bad("rank_energy", f"{e!r} must be in (0, 1]")

    def _check_kd_modes(self) -> str | tuple[str, ...]:
        value = self.kd_mode
        names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        if not names or any(not isinstance(n, str) for n in names):
            raise _bad("kd_mode", f"{value!r} must be a distillation mode or a non-empty list of them")
        unknown = [n for n in names if n not in KD_MODE_CHOICES]
        if unknown:
            close = closest_name(unknown[0], KD_MODE_CHOICES)
            hint = f" did you mean {close!r}?" if close else ""
            raise _bad("kd_mode", f"unknown mode(s) {unknown};{hint} known: {', '.join(KD_MODE_CHOICES)}")
        names = list(dict.fromkeys(names))
        return names[0] if len(names) == 1 else tuple(names)

    @property
    def kd_modes(self) -> tuple[str, ...]:
        """The distillation choices a plan may take (empty when the space leaves KD to the task)."""
        value = self.kd_mode
        return () if value is None else (value,) if isinstance(value, str) else tuple(value)

    def _check_algorithms(self) -> str | tuple[str, ...]:
        from slimtune.compressors.quantization.algorithms import ALGORITHMS

        value = self.quant_algorithm
        names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
        if not names or any(not isinstance(n, str) for n in names):
            raise _bad("quant_algorithm", f"{value!r} must be an algorithm name or a non-empty list of them")
        unknown = [n for n in names if n not in ALGORITHMS]
        if unknown:
            close = closest_name(unknown[0], ALGORITHMS)
            hint = f" did you mean {close!r}?" if close else ""
            known = ", ".join(ALGORITHMS.names())
            raise _bad("quant_algorithm", f"unknown algorithm(s) {unknown};{hint} known: {known}")
        if not self.bits_w and not self.bits_a:
            raise _bad("quant_algorithm", "quantizes nothing: the space searches no bit-widths (set bits_w or bits_a)")
        quantized = [b for b in self.bits_w or () if b != 32]
        for n in names:
            limit = ALGORITHMS[n].max_bits_w
            if any(b > limit for b in quantized):
                raise _bad(
                    "quant_algorithm",
                    f"{n!r} quantizes weights to at most {limit} bit(s) but space.bits_w has "
                    f"{[b for b in quantized if b > limit]}",
                )
        names = list(dict.fromkeys(names))
        return names[0] if len(names) == 1 else tuple(names)

    @property
    def quant_algorithms(self) -> tuple[str, ...]:
        """The algorithms a plan may use (``("ste",)`` when none is set)."""
        value = self.quant_algorithm
        return ("ste",) if value is None else (value,) if isinstance(value, str) else tuple(value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SpaceOptions:
        """Options from a mapping (the ``space`` section of a spec); an unknown option is a
        :class:`~slimtune.errors.ConfigError` naming it (``space.<option>``), with the closest known one."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            close = closest_name(unknown[0], known)
            hint = f" did you mean {close!r}?" if close else ""
            raise ConfigError(f"unknown option(s) {unknown};{hint} known: {sorted(known)}", field=f"space.{unknown[0]}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["levels"] = list(self.levels)
        for key in ("groups", "bits_w", "bits_a", "quantize_layers", "ranks", "factorize_layers"):
            d[key] = list(getattr(self, key)) if getattr(self, key) is not None else None
        if isinstance(self.quant_algorithm, tuple):
            d["quant_algorithm"] = list(self.quant_algorithm)
        if isinstance(self.kd_mode, tuple):
            d["kd_mode"] = list(self.kd_mode)
        return d


class SearchSpace:
    """Distributions over per-group sparsities, plans from parameters, seed points.

    Args:
        graph: The traced model.
        options: :class:`SpaceOptions`.
        sensitivity: The table of :func:`~slimtune.compressors.sensitivity.analyze_sensitivity`
            (used for bounds and seeds when ``options.sensitivity``).
        bit_sensitivity: The table of
            :func:`~slimtune.compressors.sensitivity.analyze_bit_sensitivity` (with
            ``options.sensitivity`` and searched weight bits: each layer's lowest bit-width within
            ``tolerance`` becomes :attr:`safe_bits`, used by the seeds and by strategies as a prior).
        rank_sensitivity: The table of :func:`~slimtune.compressors.sensitivity.analyze_rank_sensitivity`
            (with ``options.sensitivity`` and searched ranks: each layer's lowest rank ratio within ``tolerance``,
            snapped to ``ranks``, becomes :attr:`safe_ranks`, a seed).
    """

    def __init__(
        self,
        graph: ModelGraph,
        options: SpaceOptions | None = None,
        sensitivity: pd.DataFrame | None = None,
        bit_sensitivity: pd.DataFrame | None = None,
        rank_sensitivity: pd.DataFrame | None = None,
    ) -> None:
        self.options = options or SpaceOptions()
        self.graph = graph  # strategies predict resources of plans from it
        self.sensitivity = sensitivity
        self.bit_sensitivity = bit_sensitivity
        prunable = [g.name for g in graph.prunable_groups()]
        if self.options.groups is not None:
            unknown = [g for g in self.options.groups if g not in prunable]
            if unknown:
                raise _bad("groups", f"{unknown} are not prunable groups; prunable: {prunable}")
            prunable = [g for g in prunable if g in self.options.groups]
        if not prunable:
            raise ArgumentError(
                "the model has no prunable channel group to search over (see trace(model, x).summary())", field="graph"
            )
        self.groups: list[str] = prunable
        self.sizes = {g: graph.groups[g].size for g in prunable}
        self.quant_layers: list[str] = []
        if self.options.bits_w or self.options.bits_a:
            quantizable = graph.quantizable_layers()
            wanted = self.options.quantize_layers
            if wanted is not None:
                unknown = [n for n in wanted if n not in quantizable]
                if unknown:
                    raise _bad("quantize_layers", f"{unknown} are not quantizable layers; quantizable: {quantizable}")
            self.quant_layers = [n for n in quantizable if wanted is None or n in wanted]
        opt = self.options
        self.safe: dict[str, float] = {}
        if sensitivity is not None and opt.sensitivity:
            safe = max_safe_level(sensitivity, opt.tolerance)
            self.safe = {g: safe.get(g, 0.0) for g in prunable}
        # lowest safe weight bit-width per searched layer, snapped to the searched choices
        self.safe_bits: dict[str, int] = {}
        if bit_sensitivity is not None and opt.sensitivity and opt.bits_w and self.quant_layers:
            lowest = min_safe_bits(bit_sensitivity, opt.tolerance)
            for layer in self.quant_layers:
                if layer in lowest:
                    fits = [b for b in opt.bits_w if b >= lowest[layer]]
                    self.safe_bits[layer] = min(fits) if fits else max(opt.bits_w)
        self.rank_layers: list[str] = []
        if self.options.ranks:
            from slimtune.compressors.lowrank import factorizable_layers

            factorizable = factorizable_layers(graph.model)
            wanted = self.options.factorize_layers
            if wanted is not None:
                unknown = [n for n in wanted if n not in factorizable]
                if unknown:
                    raise _bad(
                        "factorize_layers",
                        f"{unknown} are not factorizable layers (Linear, ungrouped Conv2d); "
                        f"factorizable: {factorizable}",
                    )
            self.rank_layers = [n for n in factorizable if wanted is None or n in wanted]
        self.rank_sensitivity = rank_sensitivity
        self.safe_ranks: dict[str, float] = {}
        if rank_sensitivity is not None and self.options.sensitivity and self.rank_layers:
            from slimtune.compressors.sensitivity import min_safe_ranks

            lowest = min_safe_ranks(rank_sensitivity, self.options.tolerance)
            for layer in self.rank_layers:
                if layer in lowest:
                    fits = [r for r in self.options.ranks or () if r >= lowest[layer] - 1e-12]
                    self.safe_ranks[layer] = min(fits) if fits else max(self.options.ranks or (1.0,))
        self.upper: dict[str, float] = {}
        for g in prunable:
            if g in self.safe:
                ub = min(opt.max_sparsity, self.safe[g] + opt.headroom)
                self.upper[g] = max(ub, min(opt.max_sparsity, opt.min_sparsity + 0.05))
            else:
                self.upper[g] = opt.max_sparsity

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def param_name(group: str) -> str:
        return SPARSITY_PREFIX + group

    def distributions(self) -> dict[str, BaseDistribution]:
        lo = self.options.min_sparsity
        dists: dict[str, BaseDistribution] = {
            self.param_name(g): FloatDistribution(lo, self.upper[g]) for g in self.groups
        }
        for prefix, choices in ((BITS_W_PREFIX, self.options.bits_w), (BITS_A_PREFIX, self.options.bits_a)):
            if choices:
                for layer in self.quant_layers:
                    dists[prefix + layer] = CategoricalDistribution(list(choices))
        if len(self.options.quant_algorithms) > 1 and self.quant_layers:
            dists[QUANT_ALGORITHM_PARAM] = CategoricalDistribution(list(self.options.quant_algorithms))
        if len(self.options.kd_modes) > 1:
            dists[KD_MODE_PARAM] = CategoricalDistribution(list(self.options.kd_modes))
        if self.options.ranks:
            for layer in self.rank_layers:
                dists[RANK_PREFIX + layer] = CategoricalDistribution(list(self.options.ranks))
        return dists

    def suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """Ask ``trial`` for every group's sparsity (and every layer's bit-widths, if searched)."""
        params: dict[str, Any] = {}
        for name, d in self.distributions().items():
            if isinstance(d, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, d.choices)
            else:
                params[name] = trial.suggest_float(name, d.low, d.high)  # type: ignore[attr-defined]
        return params

    def plan(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan of a trial's parameters (``sparsity/<group>``, ``bits_w/<layer>``, ``bits_a/<layer>``
        and ``quant/algorithm`` keys; others are ignored). Without ``quant/algorithm`` the plan
        quantizes with the first of ``space.quant_algorithm``. With ``space.channel_multiple`` the
        plan carries it and its sparsities are rounded to it (:meth:`CompressionPlan.rounded
        <slimtune.compressors.CompressionPlan.rounded>`): a stored plan gives the same channels to
        any code that reads its sparsities. With ``space.kd_mode`` the plan's ``finetune`` distils as
        ``finetune/kd_mode`` says (the first of ``space.kd_mode`` without it)."""
        prune = {}
        bits: dict[str, dict[str, int | None]] = {}
        factorize = {}
        for key, value in params.items():
            if key.startswith(RANK_PREFIX):
                layer = key[len(RANK_PREFIX) :]
                if layer not in self.rank_layers:
                    raise PlanError(f"parameter {key!r} names no factorizable layer of this search space")
                if float(value) < 1.0:
                    factorize[layer] = FactorSpec(rank_ratio=float(value), method=self.options.rank_method)
            if key.startswith(SPARSITY_PREFIX):
                group = key[len(SPARSITY_PREFIX) :]
                if group not in self.sizes:
                    raise PlanError(f"parameter {key!r} names no group of this search space")
                prune[group] = PruneSpec(float(value), self.options.criterion)
            for prefix, attr in ((BITS_W_PREFIX, "bits_w"), (BITS_A_PREFIX, "bits_a")):
                if key.startswith(prefix):
                    layer = key[len(prefix) :]
                    if layer not in self.quant_layers:
                        raise PlanError(f"parameter {key!r} names no quantizable layer of this search space")
                    b = int(value)
                    bits.setdefault(layer, {})[attr] = None if b == 32 else b
        quantize = {layer: QuantSpec(**q) for layer, q in bits.items() if any(v is not None for v in q.values())}
        algorithm = None
        if self.options.quant_algorithm is not None and quantize:
            algorithm = str(params.get(QUANT_ALGORITHM_PARAM, self.options.quant_algorithms[0]))
            if algorithm not in self.options.quant_algorithms:
                raise PlanError(
                    f"parameter {QUANT_ALGORITHM_PARAM!r}: {algorithm!r} is not one of space.quant_algorithm "
                    f"{list(self.options.quant_algorithms)}"
                )
        plan = CompressionPlan(
            prune,
            quantize,
            quant_algorithm=algorithm,
            channel_multiple=self.options.channel_multiple,
            finetune=self._kd_overrides(params),
            factorize=factorize,
        )
        return plan.rounded(self.graph)

    def _kd_overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``plan.finetune`` for ``finetune/kd_mode`` (the first of ``space.kd_mode`` without it)."""
        modes = self.options.kd_modes
        if not modes:
            return {}
        mode = params.get(KD_MODE_PARAM, modes[0])
        if mode not in modes:
            raise PlanError(f"parameter {KD_MODE_PARAM!r}: {mode!r} is not one of space.kd_mode {list(modes)}")
        return kd_mode_overrides(mode)

    def uniform(self, sparsity: float, clip: bool = True) -> dict[str, Any]:
        """Parameters giving every group ``sparsity`` (clipped to each group's bounds); searched
        bit-widths at their highest choice."""
        lo = self.options.min_sparsity
        params: dict[str, Any] = {
            self.param_name(g): (min(max(sparsity, lo), self.upper[g]) if clip else sparsity) for g in self.groups
        }
        return {**params, **self._widest_bits()}

    def _widest_bits(self) -> dict[str, Any]:
        """Searched bit-widths at their highest choice, and searched ranks at theirs."""
        out: dict[str, Any] = {}
        for prefix, choices in ((BITS_W_PREFIX, self.options.bits_w), (BITS_A_PREFIX, self.options.bits_a)):
            if choices:
                out.update({prefix + layer: max(choices) for layer in self.quant_layers})
        if self.options.ranks:
            out.update({RANK_PREFIX + layer: max(self.options.ranks) for layer in self.rank_layers})
        return out

    def energy_ranks(self) -> dict[str, float]:
        """``rank/<layer>`` parameters keeping ``space.rank_energy`` of each layer's singular-value energy (the
        smallest choice of ``space.ranks`` that does; see
        :func:`~slimtune.compressors.lowrank.energy_rank_ratios`); empty when no rank is searched."""
        if not self.options.ranks or not self.rank_layers:
            return {}
        from slimtune.compressors.lowrank import energy_rank_ratios

        ratios = energy_rank_ratios(self.graph.model, self.options.rank_energy, self.rank_layers, self.options.ranks)
        return {RANK_PREFIX + layer: r for layer, r in ratios.items()}

    def safe_bits_params(self) -> dict[str, int]:
        """``bits_w/<layer>`` parameters at each layer's sensitivity-safe bit-width (the widest
        choice where unknown); activation bits, if searched, at their widest choice."""
        widest = self._widest_bits()
        return {**widest, **{BITS_W_PREFIX + layer: b for layer, b in self.safe_bits.items()}}

    def seeds(self) -> list[dict[str, float]]:
        """Seed points: a uniform allocation and, with sensitivity, the one-shot-safe allocation
        (each group at its safe level, each layer at its safe bit-width)."""
        seeds = [self.uniform(0.5 * (self.options.min_sparsity + self.options.max_sparsity))]
        if self.safe or self.safe_bits:
            lo = self.options.min_sparsity
            safe_sparsity = {self.param_name(g): min(max(self.safe.get(g, lo), lo), self.upper[g]) for g in self.groups}
            seeds.append({**safe_sparsity, **self.safe_bits_params()})
        energy = self.energy_ranks()
        if energy:  # the singular-value energy allocation, nothing pruned
            seeds.append({**self.uniform(self.options.min_sparsity), **energy})
        if self.safe_ranks:  # each layer at its one-shot-safe rank, nothing pruned
            safe = {RANK_PREFIX + layer: r for layer, r in self.safe_ranks.items()}
            seeds.append({**self.uniform(self.options.min_sparsity), **safe})
        return seeds

    def allocate(self, relative: Callable[[dict[str, float]], float], target: float) -> dict[str, float] | None:
        """A resource-aware allocation from the sensitivity table: ``{group: sparsity}``.

        Every group starts at ``min_sparsity``; each step moves one group to its next level of the
        table (within its upper bound), the one whose one-shot metric drop grows least per unit of
        resource saved (``relative(allocation)``: the predicted resource, 1.0 = the original), the
        larger saving among equals, until ``relative`` is within ``target`` or no group can move.
        A group's drop is read as non-decreasing in the level (the worst drop so far), so a noisy
        recovery at a higher level does not lure the allocation there. Sensitivity counts
        accuracy, and ``relative`` counts what each channel costs: a group in a wide, high-resolution
        layer saves more FLOPs per channel than a deep narrow one, so a FLOPs target prunes it
        first where its accuracy allows (NetAdapt's trade-off, read off the one-shot table).

        The last step may overshoot the target; strategies rescale the result to it
        (:func:`~slimtune.strategies._budget.scale_to_target`). Returns None without a sensitivity
        table (``space.sensitivity: false``).

        Example:
            >>> import pandas as pd, torch
            >>> from slimtune.compressors import trace
            >>> from slimtune.examples.models import mlp
            >>> graph = trace(mlp(8, (16, 16), 2), torch.randn(1, 8))
            >>> a, b = [g.name for g in graph.prunable_groups()]
            >>> table = pd.DataFrame({"group": [a, a, b, b], "level": [0.25, 0.5] * 2, "drop": [0.0, 0.01, 0.0, 0.2]})
            >>> space = SearchSpace(graph, SpaceOptions(headroom=0.5), sensitivity=table)
            >>> size = lambda x: 1.0 - 0.5 * x[a] - 0.5 * x[b]  # a toy resource model
            >>> space.allocate(size, 0.65)  # b loses 0.2 at 0.5: a goes there instead
            {'features.0': 0.5, 'features.2': 0.25}
        """
        table = self.sensitivity
        if table is None or not self.options.sensitivity or len(table) == 0:
            return None
        lo = self.options.min_sparsity
        steps: dict[str, list[tuple[float, float]]] = {}
        for g in self.groups:
            rows = table[table["group"] == g].sort_values("level")
            ladder, worst = [(lo, 0.0)], 0.0
            for level, drop in zip(rows["level"], rows["drop"]):
                level, drop = float(level), float(drop)
                worst = max(worst, drop if drop == drop else float("inf"))  # NaN: the level broke the model
                if level <= lo + 1e-9:
                    continue
                if level > self.upper[g] + 1e-9:
                    break
                ladder.append((level, worst))
            steps[g] = ladder
        x = {g: lo for g in self.groups}
        at = dict.fromkeys(self.groups, 0)
        r = relative(x)
        while r > target:
            best: tuple[tuple[float, float], str, float] | None = None
            for g in self.groups:
                if at[g] + 1 >= len(steps[g]):
                    continue
                level, drop = steps[g][at[g] + 1]
                r_new = relative({**x, g: level})
                saved = r - r_new
                if saved <= 0:
                    continue
                rank = ((drop - steps[g][at[g]][1]) / saved, -saved)
                if best is None or rank < best[0]:
                    best = (rank, g, r_new)
            if best is None:
                break
            _, g, r = best
            at[g] += 1
            x[g] = steps[g][at[g]][0]
        return x

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "groups": self.groups,
            "upper": self.upper,
            "safe": self.safe,
            "safe_bits": self.safe_bits,
            "quantize_layers": self.quant_layers,
        }

    def describe(self) -> pd.DataFrame:
        """One row per group: channels, one-shot-safe level, upper bound."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"group": g, "channels": self.sizes[g], "safe": self.safe.get(g), "upper": self.upper[g]}
                for g in self.groups
            ]
        )


def parameter_groups(params: Mapping[str, Any]) -> Sequence[str]:
    """Group names of ``sparsity/<group>`` parameters."""
    return [k[len(SPARSITY_PREFIX) :] for k in params if k.startswith(SPARSITY_PREFIX)]


__all__ = [
    "BITS_A_PREFIX",
    "BITS_W_PREFIX",
    "KD_MODE_PARAM",
    "QUANT_ALGORITHM_PARAM",
    "SPARSITY_PREFIX",
    "SearchSpace",
    "SpaceOptions",
    "parameter_groups",
]


def _bad(option: str, problem: str) -> ConfigError:
    """The error of a bad ``space`` option: ``space.<option>: <problem>``."""
    return ConfigError(problem, field=f"space.{option}")
