"""CompressionPlan: JSON round-trip and validation errors that name the group or layer."""

from __future__ import annotations

import math

import pytest
import torch

from slimtune.compressors import CompressionPlan, PruneSpec, QuantSpec, trace
from slimtune.errors import PlanError
from slimtune.examples.models import resnet20


@pytest.fixture(scope="module")
def graph():
    return trace(resnet20(), torch.randn(1, 3, 32, 32))


def test_json_round_trip(graph):
    plan = CompressionPlan.uniform(graph, 0.3, "fpgm")
    plan.prune["layer1.0.conv1"] = PruneSpec(0.7, "taylor")
    plan.quantize["fc"] = QuantSpec(bits_w=4, bits_a=8)
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan
    assert again.prune["layer1.0.conv1"] == PruneSpec(0.7, "taylor")
    assert again.quantize["fc"].bits_w == 4
    assert set(again.prune) == {g.name for g in graph.prunable_groups()}


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan])
def test_bad_sparsity_names_group(graph, value):
    plan = CompressionPlan.from_sparsities({"layer2.1.conv1": value})
    with pytest.raises(PlanError, match=r"group 'layer2.1.conv1': sparsity"):
        plan.validate(graph)


def test_unknown_group_and_unprunable_group(graph):
    with pytest.raises(PlanError, match=r"unknown group 'layer9.conv'"):
        CompressionPlan.from_sparsities({"layer9.conv": 0.5}).validate(graph)
    with pytest.raises(PlanError, match=r"'fc'.*not prunable: reaches the model output"):
        CompressionPlan.from_sparsities({"fc": 0.5}).validate(graph)


def test_unknown_criterion_and_bits(graph):
    with pytest.raises(PlanError, match=r"group 'conv1': unknown criterion 'magic'"):
        CompressionPlan.from_sparsities({"conv1": 0.5}, criterion="magic").validate(graph)
    with pytest.raises(PlanError, match=r"layer 'fc': bits_w 12"):
        CompressionPlan(quantize={"fc": QuantSpec(bits_w=12)}).validate(graph)
    with pytest.raises(PlanError, match=r"unknown layer 'nope'"):
        CompressionPlan(quantize={"nope": QuantSpec(bits_w=8)}).validate(graph)


def test_malformed_json_and_fields():
    with pytest.raises(PlanError, match="not valid JSON"):
        CompressionPlan.from_json("{prune: ")
    with pytest.raises(PlanError, match=r"unknown field\(s\) \['sparsity'\]"):
        CompressionPlan.from_dict({"sparsity": 0.5})
    with pytest.raises(PlanError, match=r"plan.prune\['conv1'\]"):
        CompressionPlan.from_dict({"prune": {"conv1": {"sparsity": 0.5, "bogus": 1}}})
    with pytest.raises(PlanError, match="granularity"):
        CompressionPlan(granularity="block").validate()


def test_unstructured_plan_names_layers(graph):
    plan = CompressionPlan.uniform(graph, 0.5, "level", granularity="unstructured")
    assert set(plan.prune) == set(graph.prunable_layers())
    with pytest.raises(PlanError, match=r"unknown layer 'layer1'"):
        CompressionPlan.from_sparsities({"layer1": 0.5}, granularity="unstructured").validate(graph)


def test_training_fields_round_trip_and_stay_out_of_default_plans(graph):
    plan = CompressionPlan.uniform(graph, 0.5)
    assert set(plan.to_dict()) == {"granularity", "prune", "quantize"}  # plans stored before still match
    plan.compressor = "admm"
    plan.compressor_params = {"rho": 0.05, "iterations": 3}
    plan.finetune = {"steps": 40, "kd": {"alpha": 0.5, "temperature": 4}}
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and again.validate(graph) is again
    assert again.to_dict()["compressor"] == "admm"
    assert CompressionPlan.from_dict({"prune": {}}).compressor == "oneshot"
    assert "compressor admm" in plan.summary()


def test_training_field_errors_name_the_field(graph):
    with pytest.raises(PlanError, match=r"plan.compressor: unknown compressor 'adm'; known: \['admm', 'agp'"):
        CompressionPlan(compressor="adm").validate()
    with pytest.raises(
        PlanError, match=r"plan.compressor_params: unknown parameter\(s\) \['roh'\] of compressor 'admm'"
    ):
        CompressionPlan(compressor="admm", compressor_params={"roh": 1}).validate(graph)
    with pytest.raises(PlanError, match=r"plan.finetune.kd.alpha: must be a number in \[0, 1\]"):
        CompressionPlan(finetune={"kd": {"alpha": 1.5}}).validate()
    with pytest.raises(PlanError, match=r"plan.finetune: unknown field\(s\) \['epoch'\]"):
        CompressionPlan(finetune={"epoch": 1}).validate()
    with pytest.raises(PlanError, match=r"plan.compressor must be a compressor name"):
        CompressionPlan.from_dict({"compressor": 3})
    with pytest.raises(PlanError, match=r"plan.finetune must be a mapping"):
        CompressionPlan.from_dict({"finetune": [1]})


def test_channel_multiple_round_trips_and_bad_values_name_the_field(graph) -> None:
    plan = CompressionPlan.uniform(graph, 0.4, channel_multiple=8)
    assert plan.to_dict()["channel_multiple"] == 8
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert "channel_multiple" not in CompressionPlan.uniform(graph, 0.4).to_dict()  # stored plans stay as they were
    for bad in (0, -8, 8.0, "8", True):
        with pytest.raises(PlanError, match=r"plan.channel_multiple must be a positive integer") as e:
            CompressionPlan.from_dict({"prune": {}, "channel_multiple": bad})
        assert e.value.field == "plan.channel_multiple"
        with pytest.raises(PlanError, match=r"plan.channel_multiple"):
            CompressionPlan(channel_multiple=bad).validate(graph)
    unstructured = CompressionPlan({"fc": PruneSpec(0.5)}, granularity="unstructured", channel_multiple=8)
    with pytest.raises(PlanError, match=r"plan.channel_multiple: 8 rounds kept channels, but a 'unstructured'"):
        unstructured.validate(graph)
