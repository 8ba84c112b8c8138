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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from torch import nn

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
    kind: str  # conv | linear | norm
    cin: int = 0
    cout: int = 0
    groups: int = 1
    kernel: int = 1
    bias: bool = False
    macs: float = 0.0
    elem_bytes: int = 4  # bytes per weight element (dense)
    # norm: number of affine tensors and of per-channel running statistics
    affine: int = 0
    stats: int = 0

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin

    def ipg(self, cin: int) -> int:
        """Input channels per group once the layer has ``cin`` inputs."""
        if self.kind != "conv":
            return cin
        if self.depthwise:
            return 1
        return cin // self.groups


class ResourcePredictor:
    """Predicts :class:`Resources` of plans for one traced model (see the module docstring).

    Args:
        graph: ``trace(model, example_inputs)``.
        example_inputs: The inputs the graph was traced with (default: random inputs of the
            traced shapes). MACs are per sample, as :func:`count_flops` counts them.
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
        self.graph = graph
        self.dense = Resources(
            float(table["macs"].sum()), int(count_params(counted)[0]), int(model_size_bytes(counted).total_bytes)
        )
        self._layers: dict[str, _Layer] = {}
        for name in graph.layers:
            m = model.get_submodule(name)
            if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
                self._layers[name] = _Layer(
                    "conv", m.in_channels, m.out_channels, m.groups, math.prod(m.kernel_size), m.bias is not None,
                    float(macs.get(name, 0)), m.weight.element_size(),
                )
            elif isinstance(m, nn.Linear):
                self._layers[name] = _Layer(
                    "linear", m.in_features, m.out_features, 1, 1, m.bias is not None, float(macs.get(name, 0)),
                    m.weight.element_size(),
                )
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                self._layers[name] = _Layer(
                    "norm", m.num_features, m.num_features, affine=2 if m.affine else 0,
                    stats=2 if m.track_running_stats else 0,
                )
        # (layer, role) -> [(group, positions per group channel)]
        self._members: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        for g in graph.prunable_groups():
            for mem in g.members:
                self._members[g.name].append((mem.layer, mem.role, len(mem.positions) / g.size))

    # ------------------------------------------------------------------ prediction
    def counts(self, plan: CompressionPlan | Mapping[str, float]) -> dict[str, tuple[int, int]]:
        """``{layer: (in', out')}`` of every Conv/Linear/BatchNorm layer under the plan's channel
        pruning (the same rounding as :meth:`ModelGraph.channel_counts`)."""
        sparsities = plan if isinstance(plan, Mapping) else (plan.sparsities() if plan.granularity == "channel" else {})
        lost: dict[tuple[str, str], float] = defaultdict(float)
        for name, s in sparsities.items():
            g = self.graph.groups.get(name)
            if g is None or not g.prunable:
                continue
            n = g.n_prune(float(s))
            if n:
                for layer, role, per in self._members[name]:
                    lost[(layer, role)] += n * per
        out = {}
        for name, L in self._layers.items():
            if L.kind == "norm":
                c = L.cout - round(lost.get((name, "norm"), 0.0))
                out[name] = (c, c)
            elif (name, "dw") in lost:
                cout = L.cout - round(lost[(name, "dw")])
                out[name] = (cout * L.cin // L.cout, cout)
            else:
                out[name] = (L.cin - round(lost.get((name, "in"), 0.0)), L.cout - round(lost.get((name, "out"), 0.0)))
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
        counts = self.counts(plan)
        flops, params, size = self.dense.flops, self.dense.params, self.dense.size
        for name, L in self._layers.items():
            cin, cout = counts[name]
            if L.kind == "norm":
                params -= L.affine * (L.cout - cout)
                size -= 4 * (L.affine + L.stats) * (L.cout - cout)
                continue
            ipg0, ipg = L.ipg(L.cin), L.ipg(cin)
            numel0 = L.cout * ipg0 * L.kernel
            numel = cout * ipg * L.kernel
            if (cout, ipg) != (L.cout, ipg0):
                per = L.macs / (L.cout * ipg0)
                flops += per * cout * ipg - L.macs
                params += (numel - numel0) + (cout - L.cout if L.bias else 0)
            q = quantize.get(name)
            bits = q.bits_w if q is not None and q.bits_w is not None and q.bits_w < 16 else None
            nonzero = numel
            if name in unstructured:
                nonzero = numel - math.floor(unstructured[name] * numel + 0.5)
            weight = _stored_bytes(numel, nonzero, bits or 8 * L.elem_bytes)
            if bits is not None:
                weight += 4 * cout
            if q is not None and (q.bits_w is not None or q.bits_a is not None):
                weight += _WRAPPER_BYTES
            size += weight - numel0 * L.elem_bytes + (4 * (cout - L.cout) if L.bias else 0)
        if float(flops).is_integer():
            flops = float(int(flops))
        return Resources(float(flops), int(params), int(size))

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


def predict_resources(graph: ModelGraph, plan: CompressionPlan | Mapping[str, float], example_inputs: Any = None) -> Resources:
    """One-off :meth:`ResourcePredictor.predict` (build a :class:`ResourcePredictor` to predict many plans)."""
    return ResourcePredictor(graph, example_inputs).predict(plan)
