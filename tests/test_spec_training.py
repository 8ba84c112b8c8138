"""Spec sections ``compressor`` and ``finetune``: validation errors name the field; values round-trip."""

from __future__ import annotations

import pytest

from slimtune.errors import SpecError
from slimtune.trials.spec import Spec

BASE = "study: s\ntask: m:f\nn_trials: 2\n"


@pytest.mark.parametrize(
    ("extra", "field", "problem"),
    [
        ("compressor: admmm\n", "compressor.name", "unknown compressor 'admmm' (did you mean 'admm'?)"),
        ("compressor: {rho: 1}\n", "compressor.name", "missing required field"),
        ("compressor: {name: admm, rhoo: 1}\n", "compressor.rhoo", "(did you mean 'rho'?); known: epochs,"),
        ("compressor: [admm]\n", "compressor", "expected a mapping"),
        ("finetune: {lrr: 1}\n", "finetune", "unknown field(s) ['lrr']"),
        ("finetune: {lr: -1}\n", "finetune.lr", "must be a number in [0, inf)"),
        ("finetune: {kd: {alpha: 2}}\n", "finetune.kd.alpha", "must be a number in [0, 1]"),
        ("finetune: {schedule: wavy}\n", "finetune.schedule", "unknown schedule 'wavy'"),
        ("finetune: 3\n", "finetune", "expected a mapping"),
    ],
)
def test_errors_name_the_field(extra: str, field: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(BASE + extra, source="t.yaml")
    assert info.value.field == field
    assert problem in info.value.problem


def test_round_trip_and_string_form() -> None:
    spec = Spec.from_yaml(BASE + "compressor: {name: agp, steps: 20, end: 0.5}\nfinetune: {epochs: 1, kd: {alpha: 0.3}}\n")
    assert spec.compressor == {"name": "agp", "steps": 20, "end": 0.5}
    assert spec.finetune == {"epochs": 1, "kd": {"alpha": 0.3}}
    assert Spec.from_dict(spec.to_dict()) == spec
    assert Spec.from_yaml(BASE + "compressor: lottery\n").compressor == {"name": "lottery"}
    assert "compressor" not in Spec.from_yaml(BASE).to_dict()
