"""Sensitivity table: one row per (group, level), drops against the unpruned model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from slimtune.compressors import trace
from slimtune.errors import PlanError
from slimtune.compressors.sensitivity import analyze_sensitivity, max_safe_level
from slimtune.examples.models import vgg_small


def test_table_shape_and_drops():
    model, x = vgg_small(), torch.randn(16, 3, 32, 32)
    ref = model(x).detach()
    calls = []

    def evaluate(m):
        calls.append(1)
        with torch.no_grad():  # an evaluation, as users write it
            return -float((m(x) - ref).square().mean())  # 0 for the unpruned model

    levels = (0.25, 0.5, 0.75)
    table = analyze_sensitivity(model, x[:1], evaluate, levels=levels, progress=False)
    groups = [g.name for g in trace(model, x[:1]).prunable_groups()]
    assert len(table) == len(groups) * len(levels) and len(calls) == len(table) + 1
    assert set(table["group"]) == set(groups)
    assert table.attrs["baseline"] == 0.0
    assert (table["drop"] > 0).all()  # every pruning moves the output away from the reference
    assert (table["drop"] == -table["metric"]).all()
    # more pruning of one group removes more MACs
    for _, rows in table.groupby("group"):
        rows = rows.sort_values("level")
        assert rows["flops_rel"].is_monotonic_decreasing and (rows["flops_rel"] < 1).all()
    assert table.loc[table.group == "features.0", "removed"].tolist() == [8, 16, 24]


def test_max_safe_level_stops_at_first_violation():
    table = pd.DataFrame(
        {"group": ["a"] * 4 + ["b"] * 2, "level": [0.2, 0.4, 0.6, 0.8, 0.2, 0.4], "drop": [0.0, 0.01, 0.05, 0.0, 0.2, 0.0]}
    )
    assert max_safe_level(table, 0.02) == {"a": 0.4, "b": 0.0}


def test_bad_levels_and_groups():
    model, x = vgg_small(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        analyze_sensitivity(model, x, lambda m: 0.0, levels=(0.5, 1.0), progress=False)
    with pytest.raises(ValueError, match="fc2"):
        analyze_sensitivity(model, x, lambda m: 0.0, groups=["fc2"], progress=False)


def test_bit_sensitivity_table():
    from slimtune.compressors.sensitivity import analyze_bit_sensitivity

    model, x = vgg_small(), torch.randn(16, 3, 32, 32)
    ref = model(x).detach()

    def evaluate(m):
        with torch.no_grad():
            return -float((m(x) - ref).square().mean())

    layers = ["features.0", "features.4", "fc1"]
    table = analyze_bit_sensitivity(model, x[:1], evaluate, bits=(2, 8), layers=layers, progress=False)
    assert len(table) == 6 and set(table["layer"]) == set(layers) and table.attrs["baseline"] == 0.0
    pivot = table.pivot(index="layer", columns="bits_w", values="drop")
    assert (pivot[2] > pivot[8]).all()  # 2-bit weights move the output more than 8-bit ones
    assert (pivot[8] >= 0).all()
    # with activation bits, calibration data is needed
    with pytest.raises(PlanError, match="calibration"):
        analyze_bit_sensitivity(model, x[:1], evaluate, bits=(8,), bits_a=8, layers=layers, progress=False)
    with pytest.raises(ValueError, match="1-8"):
        analyze_bit_sensitivity(model, x[:1], evaluate, bits=(0, 9), progress=False)
