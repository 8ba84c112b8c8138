"""Resource budgets of the automatic strategies: which resource, what target, how a plan scores.

A budget is a resource (``flops``, ``params``, ``size`` or ``latency``) and a target relative to
the original model (``flops`` 0.25: a quarter of the MACs). A strategy takes it from its own
``resource``/``target`` parameters or, when they are not given, from the study's constraints
(``flops <= 0.25``), so a spec states the goal once.

:class:`ResourceModel` predicts a plan's relative resource without building the model:
MACs, parameters and size from channel counts
(:class:`~slimtune.compressors.measures.ResourcePredictor`, exact), latency from a NetAdapt-style
:class:`~slimtune.compressors.measures.LatencyTable` (interpolated) for channel pruning, or, for
bit-widths (``latency="bits"``), from a
:class:`~slimtune.compressors.measures.BitsLatencyTable` (per-layer fp32 and int8 times, HAQ's
hardware-in-the-loop table). Either table is measured once per study and kept in the study's
attributes (``slimtune.attributes.StrategyState``) so every worker and every resumed run uses the
same table. Latency is predicted in the runtime the study measures it in (its ``latency`` attribute,
:class:`~slimtune.compressors.measures.LatencySetting`: eager PyTorch, ``torch.compile`` or ONNX
Runtime), with one channel-pruning table per runtime, batch size and thread count; the bit-width
table times eager int8 kernels and serves eager PyTorch only.

:func:`scale_to_target` moves a sparsity vector along one line until it just meets the target: a
bisection with a fixed number of steps, so it always ends, also for targets that cannot be reached
(it then returns the most compressed vector and says so).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slimtune import attributes
from slimtune.compressors.plan import CompressionPlan, PruneSpec
from slimtune.errors import ArgumentError, StrategyError

if TYPE_CHECKING:
    import optuna

    from slimtune.search_spaces import SearchSpace

RESOURCES = ("flops", "params", "size", "latency")
_CONSTRAINT = re.compile(r"^\s*(flops|params|size|latency)\s*<=\s*([-+0-9.eE]+)\s*$")
_LUT_ATTR = attributes.StrategyState.LATENCY_TABLE
_BITS_LUT_ATTR = attributes.StrategyState.BITS_LATENCY_TABLE
LATENCY_MODELS = ("channels", "bits")
_BISECTION_STEPS = 40
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Budget:
    """A resource and its target relative to the original model (``target`` 0.5: half)."""

    resource: str
    target: float

    @property
    def text(self) -> str:
        return f"{self.resource} <= {self.target:g}"


def resource_constraints(constraints: Sequence[str]) -> dict[str, float]:
    """``{resource: bound}`` of the ``"<resource> <= bound"`` constraints (relative measures)."""
    out: dict[str, float] = {}
    for text in constraints:
        m = _CONSTRAINT.match(str(text))
        if m:
            out.setdefault(m.group(1), float(m.group(2)))
    return out


def resolve_budget(
    strategy: str,
    resource: str | None,
    target: float | None,
    constraints: Sequence[str],
    default_resource: str | None,
    default_target: float | None,
    allowed: Sequence[str] = RESOURCES,
) -> Budget | None:
    """The budget a strategy aims at: its parameters first, then the study's constraints, then defaults.

    Raises:
        ValueError: ``resource`` is not one of ``allowed`` or ``target`` is not in (0, 1];
            the message names ``strategy.resource`` / ``strategy.target``.
    """
    if resource is not None and resource not in allowed:
        raise StrategyError(
            f"strategy {strategy!r}: strategy.resource {resource!r} must be one of {', '.join(allowed)}",
            field="strategy.resource",
        )
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < float(target) <= 1.0
    ):
        raise StrategyError(
            f"strategy {strategy!r}: strategy.target {target!r} must be in (0, 1]: the resource to keep, "
            "relative to the original model (0.1 removes 90 %)",
            field="strategy.target",
        )
    found = {k: v for k, v in resource_constraints(constraints).items() if k in allowed}
    if resource is None:
        resource = next(iter(found), default_resource)
    if target is None:
        target = found.get(resource, default_target) if resource is not None else None
    if resource is None or target is None:
        return None
    return Budget(resource, float(target))


def check_budget_params(strategy: str, params: Mapping[str, Any], allowed: Sequence[str] = RESOURCES) -> None:
    """Validate ``resource``/``target`` parameters early (at construction)."""
    resolve_budget(strategy, params.get("resource"), params.get("target"), [], None, None, allowed)


class ResourceModel:
    """Relative resource of a plan (1.0 = the original model), predicted without building it.

    Args:
        space: The search space (its ``graph`` is the traced original model).
        resource: ``flops``, ``params``, ``size`` or ``latency``.
        study: For ``latency``: the study whose user attributes cache the lookup table (measured on
            first use, in the runtime, batch size and threads of the study's ``latency`` setting; by
            default eager PyTorch at batch 32 on a CPU, 64 on a GPU, and one thread).
        latency: What changes latency: ``"channels"`` (channel pruning: the NetAdapt-style
            :class:`~slimtune.compressors.measures.LatencyTable`; bit-widths are ignored) or
            ``"bits"`` (weight bit-widths of ``space.quant_layers``: the
            :class:`~slimtune.compressors.measures.BitsLatencyTable`, layers at 8 bits or fewer in
            int8, the others in fp32; sparsities are ignored).
    """

    def __init__(
        self, space: SearchSpace, resource: str, study: optuna.Study | None = None, latency: str = "channels"
    ) -> None:
        if resource not in RESOURCES:
            raise ArgumentError(f"resource {resource!r} must be one of {', '.join(RESOURCES)}", field="resource")
        if latency not in LATENCY_MODELS:
            raise ArgumentError(f"latency {latency!r} must be one of {', '.join(LATENCY_MODELS)}", field="latency")
        self.space = space
        self.resource = resource
        self._predictor = None
        self._table = None
        self._bits_table = None
        with _BUILD_LOCK:  # measuring runs the shared model with hooks: one thread at a time
            if resource == "latency" and latency == "bits":
                self._bits_table = _bits_latency_table(space, study)
            elif resource == "latency":
                self._table = _latency_table(space, study)
            else:
                from slimtune.compressors.measures import ResourcePredictor

                self._predictor = ResourcePredictor(space.graph)

    def relative(self, plan: CompressionPlan | Mapping[str, float]) -> float:
        """The plan's resource relative to the original model (a mapping: ``{group: sparsity}``,
        or ``{layer: weight bits}`` for the bit-width latency model)."""
        if self._bits_table is not None:
            return float(self._bits_table.relative(plan))
        if isinstance(plan, Mapping):  # as the space's plans: with its channel multiple, counted as compress counts
            multiple = getattr(self.space.options, "channel_multiple", None)
            plan = CompressionPlan({g: PruneSpec(float(s)) for g, s in plan.items()}, channel_multiple=multiple)
        if self._table is not None:
            return float(self._table.predict(plan, measure_missing=False) / self._table.dense_ms)
        assert self._predictor is not None
        return float(self._predictor.relative(plan)[self.resource])


def _latency_setting(study: optuna.Study | None) -> Any:
    """The study's latency setting (``attributes.Study.LATENCY``); eager PyTorch without a study or one."""
    from slimtune.compressors.measures import LatencySetting

    value = study.user_attrs.get(attributes.Study.LATENCY) if study is not None else None
    return LatencySetting.parse(value, field=attributes.Study.LATENCY)


def _latency_table(space: SearchSpace, study: optuna.Study | None) -> Any:
    """The study's latency table for the hardware this worker runs on and the study's runtime (measured
    and cached on first use).

    Each kind of hardware has its own table in the study (a CPU table under the plain attribute name,
    as before devices; a GPU's under ``<name>@<GPU model>``), measured at the batch size of the study's
    latency setting, else 32 on a CPU and 64 on a GPU, with its threads. Eager PyTorch at the default
    batch and one thread keeps that name; another runtime, batch or thread count adds
    ``/<runtime>,batch=<b>,threads=<t>`` (ONNX Runtime's tables are CPU tables, whatever the device).
    """
    from slimtune import devices
    from slimtune.compressors.measures import LatencyTable
    from slimtune.compressors.measures._lut_parts import measuring_device

    setting = _latency_setting(study)
    device = measuring_device(setting.runtime, devices.model_device(space.graph.model))
    default = 64 if device.type == "cuda" else 32
    batch = setting.batch or default
    key = _LUT_ATTR if device.type == "cpu" else f"{_LUT_ATTR}@{devices.hardware(device)}"
    if (setting.runtime, batch, setting.threads) != ("torch", default, 1):
        key += f"/{setting.runtime},batch={batch},threads={setting.threads}"
    cached = study.user_attrs.get(key) if study is not None else None
    table = LatencyTable.load_or_build(
        cached, space.graph, runtime=setting.runtime, batch_size=batch, threads=setting.threads
    )
    if study is not None and table.to_dict() != cached:
        study.set_user_attr(key, table.to_dict())
    return table


def _bits_latency_table(space: SearchSpace, study: optuna.Study | None) -> Any:
    """The study's bit-width latency table of ``space.quant_layers`` (measured and cached on first use)."""
    from slimtune.compressors.measures import BitsLatencyTable
    from slimtune.compressors.measures._lut_parts import inputs_from_graph

    runtime = _latency_setting(study).runtime
    if runtime != "torch":
        raise StrategyError(
            "a bit-width latency budget is predicted from per-layer eager int8 kernel times (BitsLatencyTable), "
            f"which is only available with the torch runtime; this study measures latency in runtime {runtime!r}: "
            "measure latency in runtime 'torch', or budget size instead of latency",
            field="latency.runtime",
        )
    layers = list(space.quant_layers)
    if not layers:
        raise StrategyError(
            "a bit-width latency budget needs quantizable layers: set space.bits_w (e.g. [4, 8, 32])",
            field="space.bits_w",
        )
    if study is not None:
        cached = study.user_attrs.get(_BITS_LUT_ATTR)
        if cached is not None:
            table = BitsLatencyTable.from_dict(cached)
            if set(table.layers) == set(layers):
                return table
    if getattr(space.graph, "gm", None) is None:
        from slimtune.compressors.quantization import QuantExportError

        raise QuantExportError(
            "a bit-width latency budget times the model's int8 export, which needs a torch.fx-traceable model: "
            f"{space.graph.trace_error}"
        )
    table = BitsLatencyTable.build(space.graph.model, inputs_from_graph(space.graph), layers, batch_size=32, threads=1)
    if study is not None:
        study.set_user_attr(_BITS_LUT_ATTR, table.to_dict())
    return table


def scale_to_target(
    sparsities: Mapping[str, float],
    lower: Mapping[str, float],
    upper: Mapping[str, float],
    relative: Callable[[dict[str, float]], float],
    target: float,
) -> tuple[dict[str, float], float, bool]:
    """Move ``sparsities`` along one line until the predicted resource just meets ``target``.

    The line runs from every group at its lower bound (λ = 0) through ``sparsities`` (λ = 1) to
    every group at its upper bound (λ = 2): each coordinate is non-decreasing in λ, so the
    resource is non-increasing, and a bisection finds the smallest λ whose resource is within the
    target. The vector keeps its shape: groups the vector prunes more stay pruned more.

    Returns:
        ``(vector, relative resource, met)``; when even every group at its upper bound misses the
        target, that vector and ``met=False``.
    """
    keys = list(sparsities)

    def at(lam: float) -> dict[str, float]:
        out = {}
        for k in keys:
            lo, hi, x = lower[k], upper[k], min(max(float(sparsities[k]), lower[k]), upper[k])
            v = lo + lam * (x - lo) if lam <= 1.0 else x + (lam - 1.0) * (hi - x)
            out[k] = min(max(v, lo), hi)
        return out

    top = at(2.0)
    r_top = relative(top)
    if r_top > target:
        return top, r_top, False
    bottom = at(0.0)
    r_bottom = relative(bottom)
    if r_bottom <= target:
        return bottom, r_bottom, True
    lo_l, hi_l, r_hi = 0.0, 2.0, r_top
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo_l + hi_l)
        r = relative(at(mid))
        if r <= target:
            hi_l, r_hi = mid, r
        else:
            lo_l = mid
    return at(hi_l), r_hi, True
