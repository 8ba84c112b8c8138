"""The CompressionPlan: the one value that search produces and compressors consume.

A plan says, for each prunable *group* (channel granularity) or prunable *layer* (unstructured
granularity), how much to prune and by which criterion, and for each quantizable layer the weight
and activation bit-widths. It is plain data: it round-trips through JSON and is stored with every
trial so any trial's model can be rebuilt later.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace, CompressionPlan
    >>> from slimtune.examples.models import vgg_small
    >>> model = vgg_small()
    >>> graph = trace(model, torch.randn(1, 3, 32, 32))
    >>> plan = CompressionPlan.uniform(graph, 0.5, criterion="l1")
    >>> CompressionPlan.from_json(plan.to_json()) == plan
    True

*Hardware-friendly widths.* With ``channel_multiple`` set, every group keeps a multiple of it
(:func:`round_kept`): vector units and tensor cores work in lanes of 8 or 16 channels, so a
layer of 24 channels can run as fast as one of 32 and faster than one of 25.
:meth:`CompressionPlan.n_prune` is the one place where a plan's sparsity becomes a number of
channels; :func:`~slimtune.compressors.compress`, the
:class:`~slimtune.compressors.measures.ResourcePredictor` and the
:class:`~slimtune.compressors.measures.LatencyTable` all read it, and
:meth:`CompressionPlan.rounded` writes the rounded counts back as sparsities, so code that maps a
sparsity to channels with :meth:`Group.n_prune <slimtune.compressors.Group.n_prune>` agrees too:

    >>> plan = CompressionPlan.uniform(graph, 0.3, channel_multiple=8)
    >>> group = graph.groups["features.4"]                     # 64 channels
    >>> group.size - group.n_prune(0.3), group.size - plan.n_prune(group)
    (45, 48)
    >>> plan.rounded(graph).prune["features.4"].sparsity       # 16 of 64 removed
    0.25
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from slimtune.errors import PlanError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group
    from slimtune.compressors.graph import ModelGraph

Granularity = Literal["channel", "unstructured"]
_GRANULARITIES = ("channel", "unstructured")
_FLOAT_BITS = 32
_FIELDS = (
    "granularity",
    "prune",
    "quantize",
    "compressor",
    "compressor_params",
    "finetune",
    "init_from_trial",
    "quant_algorithm",
    "channel_multiple",
    "factorize",
)


@dataclass(frozen=True)
class PruneSpec:
    """How one group (or layer) is pruned.

    Args:
        sparsity: Fraction of channels (or weights) removed, in [0, 1).
        criterion: Name of a registered pruning criterion (``slimtune.compressors.criteria``).
    """

    sparsity: float
    criterion: str = "l1"


@dataclass(frozen=True)
class QuantSpec:
    """Bit-widths of one layer. ``None`` or 32 keeps floating point."""

    bits_w: int | None = None
    bits_a: int | None = None


@dataclass(frozen=True)
class FactorSpec:
    """How one layer is factorized (:mod:`slimtune.compressors.lowrank`): give ``rank`` or ``rank_ratio``.

    Args:
        rank: Kept rank (SVD: singular values; Tucker-2: both channel ranks, each at most its side).
        rank_ratio: Kept fraction of the layer's full rank, in (0, 1] (1: exact, no compression).
        method: ``"auto"`` (SVD for Linear and 1×1 convs; for a ``k×k`` conv the decomposition with fewer
            MACs), ``"svd"`` or ``"tucker2"``.
    """

    rank: int | None = None
    rank_ratio: float | None = None
    method: str = "auto"


@dataclass
class CompressionPlan:
    """Per-group pruning and per-layer quantization decisions.

    Args:
        prune: Group name (``granularity="channel"``) or layer name (``"unstructured"``) →
            :class:`PruneSpec`. Groups not listed are left alone.
        quantize: Layer name → :class:`QuantSpec`. Layers not listed stay in floating point.
        granularity: ``"channel"`` removes whole channels (and can be sped up physically);
            ``"unstructured"`` zeroes single weights.
        compressor: How the plan's targets are reached, a name from
            :data:`slimtune.compressors.training.COMPRESSORS`: ``"oneshot"`` (prune by criterion at
            once, then speed up and quantize), ``"agp"``, ``"admm"``, ``"lottery"``, ``"slimming"``.
        compressor_params: Parameters of that compressor (e.g. ADMM's ``{"rho": 0.01}``).
        finetune: Per-plan overrides of the fine-tune configuration
            (:class:`~slimtune.compressors.training.FinetuneConfig` fields, e.g. ``{"steps": 50}``
            or ``{"kd": {"alpha": 0.5, "temperature": 4}}``).
        init_from_trial: Start from the compressed model of this trial of the same study instead of
            the original model (iterative strategies such as ``autocompress``). The sparsities stay
            relative to the *original* model's groups; a study's objective converts them for the
            smaller model (:func:`slimtune.trials.objective.rebase_plan`) and loads that trial's saved model.
        quant_algorithm: The quantization algorithm of the ``quantize`` layers, a name from
            :data:`slimtune.compressors.quantization.ALGORITHMS` (``ste``, ``ptq``, ``pact``, ``dorefa``,
            ``bnn``, ``slb`` ...); None: ``ste`` (or what :func:`~slimtune.compressors.compress` is given).
        channel_multiple: Round every pruned group's kept channels to a multiple of this (8 or 16:
            the SIMD and tensor-core widths; :func:`round_kept` says what happens at the edges).
            None (or 1): no rounding. Channel granularity only.
        factorize: Layer name → :class:`FactorSpec`: after pruning, the layer is replaced by its low-rank
            factors (:mod:`slimtune.compressors.lowrank`; ratios apply to the pruned layer), before
            quantization (a quantized layer's factors get its bit-widths).

    The last seven are written by :meth:`to_dict` only when they differ from their defaults, so
    plans stored before they existed stay valid.
    """

    prune: dict[str, PruneSpec] = field(default_factory=dict)
    quantize: dict[str, QuantSpec] = field(default_factory=dict)
    granularity: Granularity = "channel"
    compressor: str = "oneshot"
    compressor_params: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    init_from_trial: int | None = None
    quant_algorithm: str | None = None
    channel_multiple: int | None = None
    factorize: dict[str, FactorSpec] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(
        cls,
        graph: ModelGraph,
        sparsity: float,
        criterion: str = "l1",
        granularity: Granularity = "channel",
        channel_multiple: int | None = None,
    ) -> CompressionPlan:
        """The same sparsity for every prunable group (or layer, when unstructured); with
        ``channel_multiple``, kept channels rounded to multiples of it (see :func:`round_kept`).

        Raises:
            PlanError: ``granularity="channel"`` on a graph without a prunable group (tracing failed,
                or every group is pinned): the message says why, instead of an empty plan.
        """
        names = graph.prunable_names(granularity)
        if not names and granularity == "channel" and sparsity > 0:
            if not graph.traced:
                raise PlanError(
                    f"channel pruning needs the model's dependency graph, but tracing failed: {graph.trace_error}; "
                    "use granularity='unstructured' for this model"
                )
            reasons = sorted({f"{g.name}: {g.reason}" for g in graph.groups.values() if g.reason})
            raise PlanError(
                "no channel group of this model can be pruned"
                + (
                    f" ({_preview(reasons, 5)})"
                    if reasons
                    else " (it has no Conv/Linear layer whose channels propagation reaches)"
                )
            )
        plan = cls(
            {n: PruneSpec(float(sparsity), criterion) for n in names},
            {},
            granularity,
            channel_multiple=channel_multiple,
        )
        plan.validate(graph)
        return plan

    @classmethod
    def from_sparsities(
        cls,
        sparsities: Mapping[str, float],
        criterion: str | Mapping[str, str] = "l1",
        granularity: Granularity = "channel",
        quantize: Mapping[str, QuantSpec | Mapping[str, Any]] | None = None,
        channel_multiple: int | None = None,
    ) -> CompressionPlan:
        """Build a plan from ``{group: sparsity}`` and one criterion (or one per group)."""
        prune = {}
        for name, s in sparsities.items():
            crit = criterion if isinstance(criterion, str) else criterion.get(name, "l1")
            prune[name] = PruneSpec(float(s), crit)
        quant = {k: v if isinstance(v, QuantSpec) else QuantSpec(**v) for k, v in (quantize or {}).items()}
        return cls(prune, quant, granularity, channel_multiple=channel_multiple)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "prune": {k: asdict(v) for k, v in self.prune.items()},
            "quantize": {k: asdict(v) for k, v in self.quantize.items()},
        }
        if self.compressor != "oneshot":
            out["compressor"] = self.compressor
        if self.compressor_params:
            out["compressor_params"] = copy.deepcopy(dict(self.compressor_params))
        if self.finetune:
            out["finetune"] = copy.deepcopy(dict(self.finetune))
        if self.init_from_trial is not None:
            out["init_from_trial"] = self.init_from_trial
        if self.quant_algorithm is not None:
            out["quant_algorithm"] = self.quant_algorithm
        if self.channel_multiple is not None:
            out["channel_multiple"] = self.channel_multiple
        if self.factorize:
            out["factorize"] = {
                k: {f: v for f, v in asdict(s).items() if v is not None} for k, s in self.factorize.items()
            }
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        if not isinstance(data, Mapping):
            raise PlanError(f"plan must be a mapping, got {type(data).__name__}")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise PlanError(f"plan has unknown field(s) {sorted(unknown)}; expected {', '.join(_FIELDS)}")
        prune = {}
        for name, spec in dict(data.get("prune") or {}).items():
            if not isinstance(spec, Mapping):
                raise PlanError(f"plan.prune[{name!r}] must be a mapping with 'sparsity' and 'criterion'")
            try:
                prune[name] = PruneSpec(**spec)
            except TypeError as e:
                raise PlanError(f"plan.prune[{name!r}]: {e}") from None
        quant = {}
        for name, spec in dict(data.get("quantize") or {}).items():
            if not isinstance(spec, Mapping):
                raise PlanError(f"plan.quantize[{name!r}] must be a mapping with 'bits_w' and 'bits_a'")
            try:
                quant[name] = QuantSpec(**spec)
            except TypeError as e:
                raise PlanError(f"plan.quantize[{name!r}]: {e}") from None
        compressor = data.get("compressor", "oneshot")
        if not isinstance(compressor, str):
            raise PlanError(f"plan.compressor must be a compressor name (a string), got {compressor!r}")
        extra = {}
        for key in ("compressor_params", "finetune"):
            value = data.get(key) or {}
            if not isinstance(value, Mapping):
                raise PlanError(f"plan.{key} must be a mapping, got {type(value).__name__}")
            extra[key] = copy.deepcopy(dict(value))
        init = data.get("init_from_trial")
        algorithm = data.get("quant_algorithm")
        multiple = data.get("channel_multiple")
        _check_multiple(multiple)
        factors = {}
        for name, spec in dict(data.get("factorize") or {}).items():
            if not isinstance(spec, Mapping):
                raise PlanError(f"plan.factorize[{name!r}] must be a mapping with 'rank' or 'rank_ratio' and 'method'")
            try:
                factors[name] = FactorSpec(**spec)
            except TypeError as e:
                raise PlanError(f"plan.factorize[{name!r}]: {e}") from None
        return cls(
            prune,
            quant,
            data.get("granularity", "channel"),
            compressor,
            **extra,
            init_from_trial=init,
            quant_algorithm=algorithm,
            channel_multiple=multiple,
            factorize=factors,
        )

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ checks
    def validate(self, graph: ModelGraph | None = None) -> CompressionPlan:
        """Check values, and names against ``graph`` when given. Raises :class:`PlanError`.

        The message names the offending group or layer and the value. Returns ``self``.
        """
        from slimtune.compressors.criteria import CRITERIA

        if self.granularity not in _GRANULARITIES:
            raise PlanError(f"plan.granularity is {self.granularity!r}; expected one of {_GRANULARITIES}")
        kind = "group" if self.granularity == "channel" else "layer"
        if graph is not None and not graph.traced and self.granularity == "channel" and self.prune:
            raise PlanError(
                f"channel pruning needs the model's dependency graph, but tracing failed: {graph.trace_error}; "
                "use granularity='unstructured' for this model"
            )
        names = set(graph.prunable_names(self.granularity)) if graph is not None else None
        for name, spec in self.prune.items():
            s = spec.sparsity
            if not isinstance(s, (int, float)) or isinstance(s, bool) or math.isnan(s) or not (0.0 <= s < 1.0):
                raise PlanError(f"{kind} {name!r}: sparsity {s!r} is outside [0, 1)")
            if spec.criterion not in CRITERIA:
                raise PlanError(f"{kind} {name!r}: unknown criterion {spec.criterion!r}; known: {sorted(CRITERIA)}")
            if names is not None and name not in names:
                why = ""
                if self.granularity == "channel" and name in graph.groups:
                    why = f" (it is not prunable: {graph.groups[name].reason})"
                raise PlanError(
                    f"unknown {kind} {name!r} in plan.prune{why}; prunable {kind}s are: {_preview(sorted(names))}"
                )
        _check_multiple(self.channel_multiple)
        if self.channel_multiple not in (None, 1) and self.granularity != "channel":
            raise PlanError(
                f"plan.channel_multiple: {self.channel_multiple} rounds kept channels, but a "
                f"{self.granularity!r} plan removes single weights: drop it or use granularity 'channel'",
                field="plan.channel_multiple",
            )
        self._validate_training()
        self._validate_factorize(graph)
        qnames = set(graph.quantizable_layers()) if graph is not None else None
        max_bits = 8
        if self.quant_algorithm is not None:
            from slimtune.compressors.quantization.algorithms import ALGORITHMS

            if not isinstance(self.quant_algorithm, str) or self.quant_algorithm not in ALGORITHMS:
                raise PlanError(
                    f"plan.quant_algorithm: unknown algorithm {self.quant_algorithm!r}; known: {sorted(ALGORITHMS)}"
                )
            max_bits = ALGORITHMS[self.quant_algorithm].max_bits_w
        for name, q in self.quantize.items():
            if q.bits_w is not None and q.bits_w != _FLOAT_BITS and isinstance(q.bits_w, int) and q.bits_w > max_bits:
                raise PlanError(
                    f"layer {name!r}: bits_w {q.bits_w} is above what quant_algorithm {self.quant_algorithm!r} "
                    f"supports (at most {max_bits}); use 'ste' for it"
                )
            for attr in ("bits_w", "bits_a"):
                b = getattr(q, attr)
                if b is not None and (
                    isinstance(b, bool) or not isinstance(b, int) or not (1 <= b <= 8 or b == _FLOAT_BITS)
                ):
                    raise PlanError(f"layer {name!r}: {attr} {b!r} must be 1-8, 32 or None")
            if qnames is not None and name not in qnames:
                raise PlanError(
                    f"unknown layer {name!r} in plan.quantize; quantizable layers are: {_preview(sorted(qnames))}"
                )
        return self

    def _validate_factorize(self, graph: ModelGraph | None) -> None:
        """Check ``factorize`` (errors name the layer and the field)."""
        from slimtune.compressors.lowrank import METHODS, why_not_factorizable

        modules = dict(graph.model.named_modules()) if graph is not None else None
        for name, spec in self.factorize.items():
            where = f"plan.factorize[{name!r}]"
            if not isinstance(spec, FactorSpec):
                raise PlanError(f"{where} must be a FactorSpec", field="plan.factorize")
            if (spec.rank is None) == (spec.rank_ratio is None):
                raise PlanError(f"{where}: give one of rank and rank_ratio", field="plan.factorize")
            r = spec.rank
            if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
                raise PlanError(f"{where}: rank must be an integer >= 1, got {r!r}", field="plan.factorize")
            q = spec.rank_ratio
            if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1):
                raise PlanError(f"{where}: rank_ratio must be in (0, 1], got {q!r}", field="plan.factorize")
            if spec.method not in METHODS:
                raise PlanError(
                    f"{where}: unknown method {spec.method!r}; known: {', '.join(METHODS)}", field="plan.factorize"
                )
            if modules is not None:
                if name not in modules or not name:
                    raise PlanError(f"{where}: {name!r} is not a layer of the model", field="plan.factorize")
                why = why_not_factorizable(modules[name])
                if why is not None:
                    raise PlanError(f"{where}: cannot factorize {why}", field="plan.factorize")
        if self.factorize and self.granularity != "channel":
            raise PlanError(
                "plan.factorize replaces layers by smaller ones, which a plan of granularity "
                f"{self.granularity!r} does not do: use granularity 'channel'",
                field="plan.factorize",
            )

    def _validate_training(self) -> None:
        """Check ``compressor``, ``compressor_params`` and ``finetune`` (errors name the field)."""
        from slimtune.compressors.training.config import check_finetune_overrides
        from slimtune.compressors.training.registry import COMPRESSORS, check_compressor_params

        if not isinstance(self.compressor, str) or self.compressor not in COMPRESSORS:
            raise PlanError(f"plan.compressor: unknown compressor {self.compressor!r}; known: {sorted(COMPRESSORS)}")
        for key in ("compressor_params", "finetune"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise PlanError(f"plan.{key} must be a mapping with string keys, got {value!r}")
            try:
                json.dumps(dict(value))
            except (TypeError, ValueError) as e:
                raise PlanError(f"plan.{key} must be JSON-serialisable: {e}") from None
        check_compressor_params(self.compressor, self.compressor_params)
        check_finetune_overrides(self.finetune)
        n = self.init_from_trial
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise PlanError(f"plan.init_from_trial must be a trial number (an integer >= 0) or null, got {n!r}")

    # ------------------------------------------------------------------ channel counts
    def n_prune(self, group: Group) -> int:
        """Channels the plan removes from ``group`` (0 when the plan does not list it).

        ``group.n_prune(sparsity)`` (half rounds up, equally many per block, one channel per block
        always stays), then, with :attr:`channel_multiple`, the kept count rounded by
        :func:`round_kept`. Compress, the resource predictor and the latency table all count this way.
        A group whose producers each hold part of its channels (a split, the inputs of a
        concatenation) keeps a multiple in all; its parts share the removals by their sizes
        (:meth:`Group.allocate <slimtune.compressors.Group.allocate>`), so a part's count need not be one.
        """
        spec = self.prune.get(group.name)
        if spec is None:
            return 0
        n = group.n_prune(float(spec.sparsity))
        if self.channel_multiple in (None, 1) or self.granularity != "channel":
            return n
        return group.size - round_kept(group.size - n, group.size, self.channel_multiple, group.blocks)

    def rounded(self, graph: ModelGraph) -> CompressionPlan:
        """The plan with :attr:`channel_multiple` applied to its sparsities: each group's sparsity
        becomes the exact fraction (removed channels per block / channels per block) that
        :meth:`Group.n_prune <slimtune.compressors.Group.n_prune>` maps back to :meth:`n_prune`'s count.

        Idempotent, and ``self`` when there is nothing to round (no multiple, unstructured plans).
        Groups ``graph`` lacks keep their sparsity (:meth:`validate` reports them). The rounded plan
        keeps ``channel_multiple``, so it documents what it was rounded to.
        """
        if self.channel_multiple in (None, 1) or self.granularity != "channel":
            return self
        prune = {}
        for name, spec in self.prune.items():
            group = graph.groups.get(name)
            if group is None:
                prune[name] = spec
                continue
            per_block = group.size // group.blocks
            prune[name] = PruneSpec(self.n_prune(group) // group.blocks / per_block, spec.criterion)
        return dataclasses.replace(self, prune=prune)

    # ------------------------------------------------------------------ summaries
    def sparsities(self) -> dict[str, float]:
        return {k: v.sparsity for k, v in self.prune.items()}

    def summary(self) -> str:
        """A one-line human summary (mean sparsity, bit-widths)."""
        parts = [self.granularity]
        if self.prune:
            sp = list(self.sparsities().values())
            unit = "groups" if self.granularity == "channel" else "layers"
            parts.append(f"sparsity mean {sum(sp) / len(sp):.2f} [{min(sp):.2f}-{max(sp):.2f}] over {len(sp)} {unit}")
        if self.quantize:
            bw = sorted({q.bits_w for q in self.quantize.values() if q.bits_w})
            parts.append(f"bits_w {bw}")
        if self.compressor != "oneshot":
            parts.append(f"compressor {self.compressor}")
        if self.init_from_trial is not None:
            parts.append(f"from trial {self.init_from_trial}")
        if self.quant_algorithm is not None and self.quantize:
            parts.append(f"quantized by {self.quant_algorithm}")
        if self.channel_multiple not in (None, 1):
            parts.append(f"channels in multiples of {self.channel_multiple}")
        return ", ".join(parts)


def round_kept(kept: int, size: int, multiple: int | None, blocks: int = 1) -> int:
    """``kept`` of a group's ``size`` channels rounded to a hardware-friendly width.

    The kept count moves to the nearest multiple of ``step = lcm(multiple, blocks)`` (a grouped
    convolution keeps equally many channels per block, so the step also divides into its
    blocks); a tie goes to the smaller count, as :meth:`Group.n_prune
    <slimtune.compressors.Group.n_prune>` rounds removals half up. At the edges:

    * never below one step: a plan keeping fewer channels keeps ``step``;
    * never above ``size``: when ``size`` is no multiple of the step, ``size`` itself (the group
      left whole) is the candidate above the largest multiple;
    * a group of at most ``step`` channels keeps them all (it has no smaller multiple);
    * ``multiple`` None or 1, or ``kept >= size``: ``kept`` unchanged.

    Example:
        >>> [round_kept(k, 64, 8) for k in (1, 11, 12, 13, 60, 61, 64)]
        [8, 8, 8, 16, 56, 64, 64]
        >>> round_kept(9, 20, 8), round_kept(19, 20, 8), round_kept(5, 12, 16)  # 20 is no multiple of 8
        (8, 20, 12)
        >>> round_kept(10, 48, 8, blocks=3)  # lcm(8, 3) = 24: 8 per block
        24
    """
    if multiple is None or multiple <= 1 or kept >= size:
        return kept
    step = math.lcm(int(multiple), int(blocks))
    if size <= step:
        return size
    lo = kept // step * step
    hi = min(lo + step, size)
    if lo < step:
        return hi
    return lo if kept - lo <= hi - kept else hi


def _check_multiple(value: Any) -> None:
    """``plan.channel_multiple`` must be None or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise PlanError(
            f"plan.channel_multiple must be a positive integer (8 or 16: the SIMD and tensor-core widths) "
            f"or null, got {value!r}",
            field="plan.channel_multiple",
        )


def _preview(names: list[str], n: int = 12) -> str:
    head = "; ".join(names[:n]) if any(", " in x for x in names[:n]) else ", ".join(names[:n])
    return head + (f", ... ({len(names)} in all)" if len(names) > n else "")
