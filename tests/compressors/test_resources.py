"""ResourcePredictor: a plan's MACs, parameters and size predicted from channel counts equal what
count_flops, count_params and model_size_bytes measure on the actually compressed model."""

from __future__ import annotations

import random

import pytest
import torch

from slimtune.compressors import (
    CompressionPlan,
    PruneSpec,
    QuantSpec,
    compress,
    count_flops,
    count_params,
    model_size_bytes,
    trace,
)
from slimtune.compressors.measures import ResourcePredictor, predict_resources
from slimtune.compressors.quantization import weight_bits
from slimtune.examples.models import REFERENCE_MODELS


def example(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A reference model and inputs (16×16 images where the model allows, to keep this fast)."""
    factory, shape = REFERENCE_MODELS[name]
    if len(shape) == 3 and name != "vgg":  # vgg's flatten -> linear needs 32×32
        shape = (shape[0], 16, 16)
    return factory().eval(), torch.randn(1, *shape)


def measured(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, int, int]:
    flops = float(count_flops(model, x)["macs"].sum())
    params = count_params(model)[0]
    size = model_size_bytes(model, bits=weight_bits(model) or None).total_bytes
    return flops, params, size


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_prediction_equals_the_compressed_model(name: str) -> None:
    model, x = example(name)
    graph = trace(model, x)
    predictor = ResourcePredictor(graph, x)
    assert (predictor.dense.flops, predictor.dense.params, predictor.dense.size) == measured(model, x)
    assert predictor.relative(None) == {"flops": 1.0, "params": 1.0, "size": 1.0}
    rng = random.Random(name)
    groups = [g.name for g in graph.prunable_groups()]
    layers = graph.quantizable_layers()
    # uneven channel sparsities and mixed weight bit-widths on about half the layers
    plan = CompressionPlan.from_sparsities(
        {g: rng.uniform(0.05, 0.85) for g in groups},
        quantize={layer: QuantSpec(rng.choice([2, 4, 8]), None) for layer in layers if rng.random() < 0.5},
    )
    assert plan.quantize
    small = compress(model, plan, x)
    p = predictor.predict(plan)
    assert (p.flops, p.params, p.size) == measured(small, x), plan.summary()
    assert p.flops < predictor.dense.flops


def test_unstructured_sparsity_changes_only_the_size() -> None:
    model, x = example("mlp")
    graph = trace(model, x)
    plan = CompressionPlan({layer: PruneSpec(0.7, "l1") for layer in graph.prunable_layers()}, {}, "unstructured")
    masked = compress(model, plan, x)
    p = predict_resources(graph, plan, x)
    assert (p.flops, p.params, p.size) == measured(masked, x)
    dense = ResourcePredictor(graph, x).dense
    assert p.flops == dense.flops and p.params == dense.params and p.size < 0.5 * dense.size


def test_mapping_of_sparsities_and_channel_counts() -> None:
    model, x = example("resnet20")
    graph = trace(model, x)
    predictor = ResourcePredictor(graph)  # random inputs of the traced shapes: MACs are per sample anyway
    sparsities = {g.name: 0.5 for g in graph.prunable_groups()}
    plan = CompressionPlan.from_sparsities(sparsities)
    assert predictor.predict(sparsities) == predictor.predict(plan)
    counts = predictor.counts(plan)
    # Conv/Linear counts agree with the graph's own arithmetic
    assert {k: v for k, v in counts.items() if k in graph.channel_counts(plan)} == graph.channel_counts(plan)
    # a BatchNorm follows its conv's output channels
    assert counts["bn1"] == (counts["conv1"][1], counts["conv1"][1])
    # more sparsity in one group, fewer MACs
    more = predictor.predict({**sparsities, "layer1.0.conv1": 0.75})
    assert more.flops < predictor.predict(plan).flops
