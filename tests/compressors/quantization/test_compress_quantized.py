"""Plans that quantize: compress prunes (and speeds up) first, then fake-quantizes and calibrates."""

from __future__ import annotations

import pytest
import torch

from slimtune.compressors import CompressionPlan, QuantSpec, compress, count_flops, model_size_bytes, trace
from slimtune.compressors.quantization import QuantWrapper, quant_wrappers, weight_bits
from slimtune.errors import PlanError
from slimtune.examples.digits import evaluate_accuracy, load_digits_data, pretrained, train


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    train_set, val_set = load_digits_data()
    model = pretrained("cnn", cache_dir=tmp_path_factory.mktemp("cache"))
    x = train_set.tensors[0]
    batches = [(x[i : i + 128], train_set.tensors[1][i : i + 128]) for i in range(0, 512, 128)]
    return model, train_set, val_set, batches


def _all_layers(model, x, bits_w, bits_a):
    graph = trace(model, x)
    return {name: QuantSpec(bits_w, bits_a) for name in graph.quantizable_layers()}


def test_8bit_static_ptq_keeps_accuracy(digits):
    model, train_set, val_set, batches = digits
    x = train_set.tensors[0][:1]
    plan = CompressionPlan(quantize=_all_layers(model, x, 8, 8))
    q = compress(model, plan, x, data=batches, quant_algorithm="ptq")
    assert set(quant_wrappers(q)) == set(plan.quantize)
    base, quant = evaluate_accuracy(model, val_set), evaluate_accuracy(q, val_set)
    assert base - quant <= 0.005, (base, quant)


def test_4bit_weights_with_short_qat(digits):
    model, train_set, val_set, batches = digits
    x = train_set.tensors[0][:1]
    plan = CompressionPlan(quantize=_all_layers(model, x, 4, 8))
    q = compress(model, plan, x, data=batches, observer="percentile")
    train(q, train_set, epochs=2, lr=5e-4)
    base, quant = evaluate_accuracy(model, val_set), evaluate_accuracy(q, val_set)
    assert base - quant <= 0.015, (base, quant)
    # the weights the model computes with lie on the 4-bit grid of each output channel
    w = quant_wrappers(q)["features.0"].quantized_weight().detach()
    scale = w.flatten(1).abs().amax(1) / 7
    levels = w / scale.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_prune_then_quantize(digits):
    model, train_set, val_set, batches = digits
    x = train_set.tensors[0][:1]
    graph = trace(model, x)
    plan = CompressionPlan.uniform(graph, 0.5)
    pruned = compress(model, plan, x)
    plan.quantize = _all_layers(model, x, 8, 8)
    both = compress(model, plan, x, data=batches)
    wrappers = quant_wrappers(both)
    assert set(wrappers) == set(plan.quantize) and all(isinstance(w, QuantWrapper) for w in wrappers.values())
    # the wrapped layers are the pruned ones
    assert wrappers["features.0"].layer.out_channels == pruned.get_submodule("features.0").out_channels
    with torch.no_grad():
        ref, out = pruned.eval()(train_set.tensors[0][:64]), both.eval()(train_set.tensors[0][:64])
    assert (out - ref).norm() / ref.norm() < 0.05
    # FLOPs still counted through the wrappers; size counts 8-bit weights
    assert count_flops(both, x)["macs"].sum() == count_flops(pruned, x)["macs"].sum()
    bits = weight_bits(both)
    assert set(bits.values()) == {8} and len(bits) == len(plan.quantize)
    assert model_size_bytes(both, bits=bits).total_bytes < 0.4 * model_size_bytes(pruned).total_bytes


def test_activation_bits_need_data_and_bad_bits_name_the_layer(digits):
    model, train_set, _, _ = digits
    x = train_set.tensors[0][:1]
    with pytest.raises(PlanError, match=r"activation bits for layer\(s\) \['fc2'\].*data="):
        compress(model, CompressionPlan(quantize={"fc2": QuantSpec(8, 8)}), x)
    # weight-only quantization needs no data
    w_only = compress(model, CompressionPlan(quantize={"fc2": QuantSpec(4, None)}), x)
    assert weight_bits(w_only) == {"fc2.layer": 4}
    graph = trace(model, x)
    for bad in (0, 9, 3.5):
        with pytest.raises(PlanError, match=r"layer 'fc2': bits_w"):
            CompressionPlan(quantize={"fc2": QuantSpec(bits_w=bad)}).validate(graph)
    with pytest.raises(PlanError, match=r"unknown layer 'features.1'"):
        CompressionPlan(quantize={"features.1": QuantSpec(8, 8)}).validate(graph)
