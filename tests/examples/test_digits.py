"""The offline digits task: data split, training, accuracy of the pretrained models and their cache."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import torch

from slimtune.examples import digits
from slimtune.examples.digits import (
    cache_path,
    digits_cnn,
    digits_resnet,
    evaluate_accuracy,
    load_digits_data,
    pretrained,
    train,
)

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn


@pytest.fixture(scope="module")
def datasets() -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    return load_digits_data()


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory in which both architectures have been trained for real (once per module)."""
    cache_dir = tmp_path_factory.mktemp("slimtune_cache")
    for arch in ("cnn", "resnet"):
        pretrained(arch, cache_dir=cache_dir)
    return cache_dir


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_digits_data_split(datasets) -> None:
    train_set, val_set = datasets
    x_train, y_train = train_set.tensors
    x_val, y_val = val_set.tensors
    assert x_train.shape == (1437, 1, 8, 8) and x_val.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1.0) < 1e-3
    # stratified: every class has (almost) the same share in both parts
    share_train = torch.bincount(y_train, minlength=10) / len(y_train)
    share_val = torch.bincount(y_val, minlength=10) / len(y_val)
    assert (share_train - share_val).abs().max() < 0.01
    again, _ = load_digits_data()
    assert torch.equal(again.tensors[0], x_train)


def test_load_digits_data_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_digits_data(val_fraction=1.0)


@pytest.mark.parametrize("factory", [digits_cnn, digits_resnet])
def test_models_forward_and_trace(factory) -> None:
    model = factory()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), out, rtol=0, atol=0)
    assert out.shape == (2, 10)


def test_train_is_deterministic_and_leaves_global_state(datasets) -> None:
    train_set, _ = datasets
    subset = torch.utils.data.TensorDataset(*(t[:256] for t in train_set.tensors))
    threads = torch.get_num_threads()
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        model = digits_cnn(width=8)
        rng_state = torch.random.get_rng_state()
        models.append(train(model, subset, epochs=1, seed=3))
        assert torch.equal(torch.random.get_rng_state(), rng_state)  # train() restores the global generator
    assert _states_equal(*models)
    assert not models[0].training
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_pretrained_reaches_97_percent(trained_cache: Path, datasets, arch: str) -> None:
    _, val_set = datasets
    model = pretrained(arch, cache_dir=trained_cache)
    assert not model.training
    assert evaluate_accuracy(model, val_set) >= 0.97


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_pretrained_reuses_cache(trained_cache: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    path = cache_path(arch, cache_dir=trained_cache)
    assert path.is_file()
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained() trained although the cache is valid")

    monkeypatch.setattr(digits, "train", no_training)
    first = pretrained(arch, cache_dir=trained_cache)
    second = pretrained(arch, cache_dir=trained_cache)
    assert _states_equal(first, second)
    assert path.stat().st_mtime_ns == mtime


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path))
    path = cache_path("resnet", seed=4)
    assert path.parent == tmp_path
    assert "resnet" in path.name and "seed4" in path.name and digits.CACHE_VERSION in path.name
    assert cache_path("cnn", cache_dir=tmp_path / "x").parent == tmp_path / "x"


class _TrainSpy:
    """Stands in for :func:`train`: records the call and returns the model untrained (fast)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, *args, **kwargs) -> nn.Module:
        self.calls += 1
        return model.eval()


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint", b"", b"PK\x03\x04 truncated zip"],
    ids=["garbage", "empty", "truncated"],
)
def test_corrupt_cache_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = cache_path("cnn", cache_dir=tmp_path)
    path.write_bytes(content)
    spy = _TrainSpy()
    monkeypatch.setattr(digits, "train", spy)
    with caplog.at_level(logging.WARNING, logger="slimtune.examples.digits"):
        model = pretrained("cnn", cache_dir=tmp_path)
    assert spy.calls == 1
    assert "ignoring the cache file" in caplog.text and str(path) in caplog.text
    # the cache was overwritten with a checkpoint of the returned model, which the next call loads
    assert _states_equal(model, _with_state(digits_cnn(), torch.load(path, weights_only=True)))
    assert _states_equal(model, pretrained("cnn", cache_dir=tmp_path))
    assert spy.calls == 1


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model


def test_cache_of_other_shapes_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = cache_path("cnn", cache_dir=tmp_path)
    torch.save(digits_cnn(width=8).state_dict(), path)
    spy = _TrainSpy()
    monkeypatch.setattr(digits, "train", spy)
    with caplog.at_level(logging.WARNING, logger="slimtune.examples.digits"):
        model = pretrained("cnn", cache_dir=tmp_path)
    assert spy.calls == 1
    assert "size mismatch" in caplog.text
    assert model.features[0].out_channels == 32
    assert torch.load(path, weights_only=True)["features.0.weight"].shape[0] == 32


def test_pretrained_is_deterministic_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fresh, untrained model for the same seed starts from the same weights (the init is seeded)
    spy = _TrainSpy()
    monkeypatch.setattr(digits, "train", spy)
    a = pretrained("resnet", cache_dir=tmp_path / "a", seed=5)
    b = pretrained("resnet", cache_dir=tmp_path / "b", seed=5)
    c = pretrained("resnet", cache_dir=tmp_path / "c", seed=6)
    assert spy.calls == 3
    assert _states_equal(a, b) and not _states_equal(a, c)


def test_pretrained_rejects_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        pretrained("vit", cache_dir=tmp_path)
