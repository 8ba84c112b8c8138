"""Latency measured in the runtime a model ships on: a study's ``latency`` setting (torch, compile, onnxruntime).

A digits study whose latency objective is measured in ONNX Runtime at batch 1 on one thread: the original and
every trial are timed as ONNX files in an onnxruntime session (counted by wrapping ``OrtModel``), the trials and
the study record the runtime, and resuming the study with another runtime is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

import slimtune.compressors.measures.runtimes as runtimes
from slimtune.compressors.measures.runtimes import LatencySetting, measure_runtime_latency, runtime_model
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.trials import search
from slimtune.trials.config import SearchConfig
from slimtune.trials.spec import Spec, SpecError

NO_SENS = {"sensitivity": False}
ORT = {"runtime": "onnxruntime", "batch": 1, "threads": 1}


def test_settings_parse_and_errors_name_the_field() -> None:
    assert LatencySetting.parse(None) == LatencySetting("torch", None, 1)
    assert LatencySetting.parse("compile").runtime == "compile"
    s = LatencySetting.parse(ORT)
    assert s.to_dict() == ORT and LatencySetting.parse(s.to_dict()) == s
    assert s.describe() == "onnxruntime, batch 1, 1 thread"
    assert LatencySetting.parse("torch").with_batch(32).describe() == "torch, batch 32, 1 thread"
    with pytest.raises(ConfigError, match=r"^latency\.runtime: unknown runtime 'onnxrutime'.*did you mean 'onnxruntime'"):
        LatencySetting.parse({"runtime": "onnxrutime"})
    with pytest.raises(ConfigError, match=r"^latency\.threads: must be an integer >= 1, got 0"):
        LatencySetting.parse({"runtime": "torch", "threads": 0})
    with pytest.raises(ConfigError, match=r"^latency: unknown key 'thread'.*did you mean 'threads'"):
        LatencySetting.parse({"thread": 2})
    with pytest.raises(ConfigError, match=r"^latency\.batch: must be an integer >= 1"):
        SearchConfig(latency={"batch": -1})
    assert SearchConfig.from_dict(SearchConfig(latency=ORT).to_dict()).latency == s


def test_spec_field_is_checked_and_carried() -> None:
    base = {"study": "s", "task": "slimtune.examples.digits:make_task", "n_trials": 2}
    spec = Spec.from_dict({**base, "latency": ORT})
    assert spec.latency == ORT and spec.search_kwargs()["latency"] == ORT
    assert spec.search_config().latency == LatencySetting.parse(ORT)
    assert Spec.from_dict(spec.to_dict()).latency == ORT
    with pytest.raises(SpecError, match=r"latency\.runtime: unknown runtime 'ort'"):
        Spec.from_dict({**base, "latency": {"runtime": "ort"}})


def test_each_runtime_runs_the_model_it_says() -> None:
    from slimtune.examples.models import mlp

    torch.manual_seed(0)
    model, x = mlp().eval(), torch.randn(4, 64)
    with torch.no_grad():
        ref = model(x)
    eager, note = runtime_model(model, x, "torch")
    assert eager is model and note is None
    compiled, _ = runtime_model(model, x, "compile")
    ort_model, _ = runtime_model(model, x, {"runtime": "onnxruntime", "threads": 1})
    assert isinstance(ort_model, runtimes.OrtModel) and ort_model.threads == 1
    with torch.no_grad():
        assert torch.allclose(compiled(x), ref, atol=1e-5)
        assert torch.allclose(ort_model(x), ref, atol=1e-5)
        assert ort_model(x[:1]).shape == (1, 10)  # dynamic batch
    result, note = measure_runtime_latency(model, x[:1], ORT, repeats=3, min_time_s=0)
    assert result.batch_size == 1 and result.device == "cpu" and result.median_ms > 0 and note is None


def test_a_study_measures_latency_in_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimtune.examples.digits import make_task

    sessions: list[runtimes.OrtModel] = []

    class Counted(runtimes.OrtModel):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(runtimes, "OrtModel", Counted)
    task = make_task(finetune_epochs=0)
    url = f"sqlite:///{tmp_path / 'ort.db'}"
    study = search(
        task,
        strategy="random",
        objectives=("accuracy", "latency"),
        n_trials=2,
        storage=url,
        study_name="ort",
        space=NO_SENS,
        progress=False,
        save_models="none",
        latency=ORT,
    )
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["latency"] == ORT
    assert len(sessions) == 3  # the original and each trial, each timed as an ONNX file in onnxruntime
    assert all(s.threads == 1 for s in sessions)
    baseline = study.user_attrs["baseline"]["latency"]
    for t in trials:
        m = t.user_attrs["measures"]
        assert t.user_attrs["latency_runtime"] == "onnxruntime, batch 1, 1 thread"
        assert m["latency_abs"] > 0 and m["latency"] == pytest.approx(m["latency_abs"] / baseline)
        assert t.values[1] == m["latency"]

    # the same study with another runtime would compare latencies of different runtimes: refused
    with pytest.raises(SlimtuneError, match=r"latency \{'runtime': 'onnxruntime'.*asked: \{'runtime': 'torch'"):
        search(
            task,
            strategy="random",
            objectives=("accuracy", "latency"),
            n_trials=3,
            storage=url,
            study_name="ort",
            space=NO_SENS,
            progress=False,
            save_models="none",
        )
