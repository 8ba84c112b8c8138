"""Predict a plan's MACs, parameters and size from channel counts, without building the model.

Search strategies that aim at a resource target (simulated annealing rescales every proposal to
the target, NetAdapt prunes each candidate group "just enough" for the iteration's budget)
evaluate hundreds of plans per trial; compressing each one would take seconds. A
:class:`ResourcePredictor` measures the dense model once (:func:`count_flops`,
:func:`count_params`, :func:`model_size_bytes`) and then predicts any plan in microseconds:

* **MACs** — a Conv/Linear layer's MACs are ``positions × out × in_per_group × kernel``, so a
  layer whose counts become ``(in', out')`` (:meth:`ModelGraph.channel_counts`) does
  ``macs × out'/out × ipg'/ipg`` (a depthwise conv keeps one input per group). Other modules do
  no MACs. Exact: the same integers ``count_flops`` gives the compressed model.
* **Parameters** — Conv/Linear weights and biases and BatchNorm affine parameters shrink with
  their channels; every other parameter is unchanged (unstructured sparsity keeps the count,
  as :func:`count_params` does).
* **Channel counts** — a group loses :meth:`CompressionPlan.n_prune
  <slimtune.compressors.CompressionPlan.n_prune>` channels, the count ``compress`` removes
  (kept channels rounded to the plan's ``channel_multiple``, if any); a ``{group: sparsity}``
  mapping is not rounded.
* **Factorization** — a layer in the plan's ``factorize`` is counted as its low-rank factors at the pruned
  layer's counts (:mod:`slimtune.compressors.lowrank`): MACs, parameters and bytes, exactly as the built
  model counts them.
* **Size** — bytes as :func:`model_size_bytes` counts them in a trial (weights of layers with
  ``bits_w`` packed at that width plus one fp32 scale per output channel, the two fp32 range
  buffers of each fake-quantized layer, BatchNorm running statistics, unstructured sparsity in
  the cheaper of dense and bitmap format). Assumes the trained weights hold no exact zeros and
  the default (``ste``) quantizer.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, compress, count_flops, trace
    >>> from slimtune.compressors.measures import ResourcePredictor
    >>> from slimtune.examples.models import resnet20
    >>> model, x = resnet20(width=8), torch.randn(1, 3, 16, 16)
    >>> graph = trace(model, x)
    >>> predictor = ResourcePredictor(graph, x)
    >>> plan = CompressionPlan.uniform(graph, 0.5)
    >>> int(predictor.predict(plan).flops) == int(count_flops(compress(model, plan, x), x)["macs"].sum())
    True
    >>> round(predictor.relative(plan)["flops"], 2)
    0.26
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.handlers import handler_for, is_parameter
from slimtune.compressors.measures.flops import count_flops
from slimtune.compressors.measures.size import count_params, model_size_bytes

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

__all__ = ["RESOURCES", "ResourcePredictor", "Resources", "predict_resources"]

RESOURCES = ("flops", "params", "size")
"""Resources a :class:`ResourcePredictor` predicts (``latency``: see :class:`LatencyTable`)."""

_WRAPPER_BYTES = 8  # act_lo + act_hi, fp32 scalars of a QuantWrapper


@dataclass(frozen=True)
class Resources:
    """A model's MACs per sample (``flops``), parameter count and size in bytes."""

    flops: float
    params: int
    size: int

    def as_dict(self) -> dict[str, float]:
        return {"flops": float(self.flops), "params": float(self.params), "size": float(self.size)}


@dataclass
class _Layer:
    """A layer the predictor follows: its handler, dense MACs per sample and input shape."""

    module: nn.Module
    handler: Any
    macs: float
    in_shape: tuple[int, ...] | None


class ResourcePredictor:
    """Predicts :class:`Resources` of plans for one traced model (see the module docstring).

    Every layer with a handler (:mod:`slimtune.compressors.handlers`) says how its tensors shrink
    when its roles lose positions; parameters used directly (class tokens) shrink along their
    channel dim; products outside any layer (attention's QKᵀ and AV) scale with the kept heads.

    Args:
        graph: ``trace(model, example_inputs)``; the model may be on any device (it runs once, on
            a copy, where it is).
        example_inputs: The inputs the graph was traced with, on any device (default: those kept
            by the graph, or random inputs of the traced shapes, on the model's device). MACs are
            per sample, as :func:`count_flops` counts them.
    """

    def __init__(self, graph: ModelGraph, example_inputs: Any = None) -> None:
        model = graph.model
        if example_inputs is None:
            from slimtune.compressors.measures._lut_parts import inputs_from_graph

            example_inputs = inputs_from_graph(graph)
        # measured on a copy: counting hooks on the user's model would also fire in other threads' passes
        counted = copy.deepcopy(model)
        table = count_flops(counted, example_inputs)
        macs = dict(zip(table["layer"], table["macs"]))
        shapes = dict(zip(table["layer"], table["in_shape"]))
        self.graph = graph
        self.dense = Resources(
            float(table["macs"].sum()), int(count_params(counted)[0]), int(model_size_bytes(counted).total_bytes)
        )
        self._layers: dict[str, _Layer] = {}
        for name in graph.layers:
            m = model.get_submodule(name)
            h = handler_for(m)
            if h is not None:
                self._layers[name] = _Layer(m, h, float(macs.get(name, 0)), shapes.get(name))
        # products outside layers: {runner row: [(node, dense MACs per sample, labels)]}
        root = type(model).__name__
        self._products: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
        for node, (layer, per_sample, n_labels) in graph.compute_macs.items():
            self._products[layer or root].append((node, per_sample, n_labels))
        self._product_rows = {row: float(macs.get(row, 0.0)) for row in self._products}
        # group -> [(layer, role, positions per channel of each part)] (members and products)
        self._members: dict[str, list[tuple[str, str, list[float]]]] = defaultdict(list)
        for g in graph.prunable_groups():
            for mem in list(g.members) + list(g.computes):
                self._members[g.name].append((mem.layer, mem.role, g.weights(mem)))

    # ------------------------------------------------------------------ prediction
    def _lost(self, plan: CompressionPlan | Mapping[str, float]) -> dict[str, dict[str, float]]:
        """``{layer: {role: positions removed}}`` under the plan's channel pruning."""
        lost: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        names = plan if isinstance(plan, Mapping) else (plan.prune if plan.granularity == "channel" else {})
        for name in names:
            g = self.graph.groups.get(name)
            if g is None or not g.prunable:
                continue
            # a plan counts its channels itself (its channel_multiple rounds them), as compress does
            n = g.n_prune(float(plan[name])) if isinstance(plan, Mapping) else plan.n_prune(g)
            if n:
                alloc = g.allocate(n)
                for layer, role, weights in self._members[name]:
                    lost[layer][role] += sum(a * w for a, w in zip(alloc, weights))
        return lost

    def counts(self, plan: CompressionPlan | Mapping[str, float]) -> dict[str, tuple[int, int]]:
        """``{layer: (in', out')}`` of every Conv/Linear-like layer and norm under the plan's channel
        pruning (the same rounding as :meth:`ModelGraph.channel_counts`)."""
        lost = self._lost(plan)
        out = {}
        for name, L in self._layers.items():
            c = L.handler.counts_after(L.module, lost.get(name, {}))
            if c is not None:
                out[name] = (int(c[0]), int(c[1]))
            elif L.handler.kind == "norm":
                n = L.handler.role_size(L.module, "norm") - round(lost.get(name, {}).get("norm", 0.0))
                out[name] = (n, n)
        return out

    def predict(self, plan: CompressionPlan | Mapping[str, float] | None = None) -> Resources:
        """Predicted MACs per sample, parameters and bytes of the plan's compressed model.

        Args:
            plan: A :class:`~slimtune.compressors.CompressionPlan` or ``{group: sparsity}``
                (channel pruning, no quantization); None for the dense model.
        """
        if plan is None:
            return self.dense
        channel = isinstance(plan, Mapping) or plan.granularity == "channel"
        quantize = {} if isinstance(plan, Mapping) else plan.quantize
        unstructured = {} if channel else {k: v.sparsity for k, v in plan.prune.items()}
        lost = self._lost(plan)
        flops, params, size = self.dense.flops, self.dense.params, self.dense.size
        done: set[int] = set()  # tensors counted (tied tensors shrink once)

        def shrink(t: torch.Tensor, new_shape: tuple[int, ...], is_param: bool) -> tuple[int, int]:
            if id(t) in done or tuple(t.shape) == tuple(new_shape):
                return 0, 0
            done.add(id(t))
            d = math.prod(new_shape) - t.numel()
            return (d if is_param else 0), d * t.element_size()

        for name, L in self._layers.items():
            roles = {r: n for r, n in lost.get(name, {}).items() if not r.startswith(("param:", "macs:"))}
            q = quantize.get(name)
            bits = q.bits_w if q is not None and q.bits_w is not None and q.bits_w < 16 else None
            if (
                not roles
                and bits is None
                and name not in unstructured
                and (q is None or (q.bits_w is None and q.bits_a is None))
            ):
                continue
            m, h = L.module, L.handler
            if roles:
                ratio = h.mac_ratio(m, roles, L.in_shape)
                flops += L.macs * ratio - L.macs
            new_shapes = h.shapes_after(m, roles)
            for tname, t in h.tensors(m).items():
                new_shape = new_shapes.get(tname, tuple(t.shape))
                is_param = is_parameter(m, tname)
                if tname == "weight" and h.prunable_weights:
                    numel0, numel = t.numel(), math.prod(new_shape)
                    if id(t) not in done:
                        done.add(id(t))
                        params += numel - numel0
                        nonzero = numel
                        if name in unstructured:
                            nonzero = numel - math.floor(unstructured[name] * numel + 0.5)
                        weight = _stored_bytes(numel, nonzero, bits or 8 * t.element_size())
                        if bits is not None:
                            weight += 4 * new_shape[h.axes(m, "out")[0].dim]
                        size += weight - numel0 * t.element_size()
                    continue
                dp, db = shrink(t, new_shape, is_param)
                params += dp
                size += db
            if q is not None and (q.bits_w is not None or q.bits_a is not None):
                size += _WRAPPER_BYTES
        if not isinstance(plan, Mapping) and plan.factorize:
            f, p, s = self._factorized(plan, lost, quantize)
            flops, params, size = flops + f, params + p, size + s
        # parameters used directly (class tokens, position embeddings, layer scales)
        for layer, roles in lost.items():
            for role, n in roles.items():
                if not role.startswith("param:"):
                    continue
                _, attr, dim = role.split(":")
                t = getattr(self.graph.model.get_submodule(layer), attr)
                shape = list(t.shape)
                shape[int(dim)] -= round(n)
                dp, db = shrink(t, tuple(shape), is_parameter(self.graph.model.get_submodule(layer), attr))
                params += dp
                size += db
        # products outside layers (attention's QK^T and AV) scale with the kept heads
        for row, products in self._products.items():
            row_lost = lost.get(row, {})
            for node, macs, n_labels in products:
                gone = row_lost.get(f"macs:{node}", 0.0)
                if gone and n_labels:
                    flops -= macs * gone / n_labels
        if abs(flops - round(flops)) < 1e-6 * max(1.0, abs(flops)):
            flops = float(round(flops))
        return Resources(float(flops), int(params), int(size))

    def _factorized(
        self, plan: CompressionPlan, lost: Mapping[str, Mapping[str, float]], quantize: Mapping[str, Any]
    ) -> tuple[float, int, int]:
        """The change in MACs, parameters and bytes from factorizing the plan's layers, once they are pruned:
        the pruned weight is replaced by its factors (the bias moves to the last one), their MACs are the
        factors' per output position times the layer's positions."""
        from slimtune.compressors.lowrank import factor_sizes, macs_for, shape_for

        counts = self.counts(plan)
        d_flops, d_params, d_size = 0.0, 0, 0
        for name, spec in plan.factorize.items():
            L = self._layers.get(name)
            if L is None or name not in counts:
                continue
            m = L.module
            inp, out = counts[name]
            kk = 1 if isinstance(m, nn.Linear) else math.prod(m.kernel_size)
            roles = {r: n for r, n in lost.get(name, {}).items() if not r.startswith(("param:", "macs:"))}
            macs = L.macs * (L.handler.mac_ratio(m, roles, L.in_shape) if roles else 1.0)
            positions = macs / (out * inp * kk)
            shape = shape_for(isinstance(m, nn.Linear), out, inp, kk, spec.rank, spec.rank_ratio, spec.method)
            d_flops += positions * macs_for(out, inp, kk, shape) - macs
            factors = factor_sizes(out, inp, kk, shape)
            d_params += sum(n for n, _ in factors) - out * inp * kk
            q = quantize.get(name)
            bits = q.bits_w if q is not None and q.bits_w is not None and q.bits_w < 16 else None
            element = m.weight.element_size()
            if bits is None:
                d_size += element * (sum(n for n, _ in factors) - out * inp * kk)
            else:  # each factor packed at the layer's bits with one fp32 scale per output channel
                before = math.ceil(out * inp * kk * bits / 8) + 4 * out
                after = sum(math.ceil(n * bits / 8) + 4 * c for n, c in factors)
                d_size += after - before + _WRAPPER_BYTES * (len(factors) - 1)
            if q is not None and bits is None and q.bits_a is not None:
                d_size += _WRAPPER_BYTES * (len(factors) - 1)
        return d_flops, d_params, d_size

    def relative(self, plan: CompressionPlan | Mapping[str, float] | None = None) -> dict[str, float]:
        """``{flops, params, size}`` of the plan relative to the dense model (1.0 = unchanged)."""
        p = self.predict(plan)
        d = self.dense
        return {
            "flops": p.flops / d.flops if d.flops else 1.0,
            "params": p.params / d.params if d.params else 1.0,
            "size": p.size / d.size if d.size else 1.0,
        }


def _stored_bytes(numel: int, nonzero: int, bits: int) -> int:
    """Bytes of one weight, the cheaper of dense and bitmap when it has zeros (as ``model_size_bytes``)."""
    dense = math.ceil(numel * bits / 8)
    if nonzero < numel:
        return min(dense, math.ceil(numel / 8) + math.ceil(nonzero * bits / 8))
    return dense


def predict_resources(
    graph: ModelGraph, plan: CompressionPlan | Mapping[str, float], example_inputs: Any = None
) -> Resources:
    """One-off :meth:`ResourcePredictor.predict` (build a :class:`ResourcePredictor` to predict many plans)."""
    return ResourcePredictor(graph, example_inputs).predict(plan)
