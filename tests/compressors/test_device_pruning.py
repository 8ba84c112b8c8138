"""Pruning on any device: tracing, the eight criteria, channel and unstructured pruning, speedup and the
sensitivity analysis keep the model's device and create no tensor without one.

Without a GPU, two stand-ins for one:

- ``stray_tensors_on_meta`` (``tests/_devices.py``): slimtune's device-less tensor factory calls make
  ``meta`` tensors, which fail when they meet the model's tensors; the run must record none and give
  what it gives outside the harness (up to float rounding: ``nn.MultiheadAttention`` leaves its
  fused fast path while a torch-function mode is active).
- a model moved to ``meta`` and sliced / masked with the graph traced on the CPU: every index
  tensor made from the graph's CPU bookkeeping must be brought to the weights' device first, as on
  ``cuda`` (:class:`MixedDevices` records any torch call whose tensors sit on two devices).

On a machine with CUDA the same checks also run on ``cuda``.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimtune import devices
from slimtune.compressors import (
    CRITERIA,
    CompressionPlan,
    CriterionContext,
    apply_channel_masks,
    apply_unstructured_masks,
    compress,
    trace,
)
from slimtune.compressors.frontends import output_tensors
from slimtune.compressors.handlers import keep_indices
from slimtune.compressors.pruning import select_channels
from slimtune.compressors.resize import apply_speedup, check_forward
from slimtune.compressors.sensitivity import analyze_sensitivity
from slimtune.examples import models
from slimtune.examples.zoo import ZOO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _devices import stray_tensors_on_meta  # noqa: E402

DATA_DRIVEN = ("taylor", "apoz", "mean_activation")
KNOCKOFF = ("scop",)  # needs data too, and learns over many passes: kept out of the one-pass test below
ROUNDING = 1e-5  # relative; another channel chosen would change the outputs far more
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # the CUDA cases exist only where CUDA does


def _convnet(build: Callable[[], nn.Module], classes: int = 10) -> Callable[[], tuple[nn.Module, tuple, Any]]:
    def make() -> tuple[nn.Module, tuple, Any]:
        x = torch.randn(2, 3, 8, 8)
        return build(), (x,), torch.randint(0, classes, (2,))

    return make


def _zoo(name: str, classes: int) -> Callable[[], tuple[nn.Module, tuple, Any]]:
    def make() -> tuple[nn.Module, tuple, Any]:
        if ZOO[name].needs:
            pytest.importorskip(ZOO[name].needs)
        model, _ = ZOO[name].build()
        inputs = ZOO[name].inputs(2)
        return model, inputs, torch.randint(0, classes, (2,))

    return make


MODELS = {
    "resnet20": _convnet(lambda: models.resnet20(width=8)),  # residual additions
    "mobilenet_v2": _convnet(models.mobilenet_v2_small),  # depthwise convolutions
    "resnext": _convnet(lambda: models.resnext_small(width=8)),  # grouped convolutions
    "vit_timm_style": _zoo("vit_timm_style", 10),  # transformer, torch.fx, layer norms and class token
    "torch_transformer": _zoo("torch_transformer", 10),  # nn.MultiheadAttention, torch.export
    "hf_bert": _zoo("hf_bert", 3),  # Hugging Face, torch.export
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[nn.Module, tuple, Any, Any]]:
    return {}


def _get(cache: dict, name: str, device: str) -> tuple[nn.Module, tuple, torch.Tensor, Any]:
    """``(model, inputs, targets, graph)`` on ``device``; the graph traced outside the harness."""
    key = (name, device)
    if key not in cache:
        torch.manual_seed(0)
        model, inputs, targets = MODELS[name]()
        model = model.to(device).eval()
        inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
        cache[key] = (model, inputs, targets.to(device), trace(model, inputs))
    return cache[key]


def _outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        return output_tensors(model.eval()(*inputs))


def _devices_of(model: nn.Module) -> set[torch.device]:
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


def _relative_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    worst = 0.0
    for x, y in zip(a, b):
        if x.is_floating_point():
            worst = max(worst, ((x - y).abs().max() / x.abs().max().clamp_min(1e-6)).item())
    return worst


# ------------------------------------------------------------------------------------ trace
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_trace_makes_no_device_less_tensor(built, name, device):
    model, inputs, _, graph = _get(built, name, device)
    with stray_tensors_on_meta() as strays, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inside = trace(model, inputs)
    assert not strays, strays
    assert inside.frontend == graph.frontend
    assert [(g.name, g.size, g.prunable) for g in inside.groups.values()] == [
        (g.name, g.size, g.prunable) for g in graph.groups.values()
    ]
    assert inside.prunable_groups()


# ------------------------------------------------------------------------------------ every criterion
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "resnext", "vit_timm_style", "hf_bert"])
def test_every_criterion_compresses_on_the_model_device(built, name, device):
    model, inputs, targets, graph = _get(built, name, device)
    data = [(inputs, targets)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bn_scale falls back to l1 on the transformers, with a warning
        for criterion in sorted(CRITERIA):
            if criterion == "scop_vae" or (criterion in KNOCKOFF and not inputs[0].is_floating_point()):
                continue  # scop's VAE variant differs by its generator only (test_scop.py); knockoffs are drawn
                # of floating-point inputs (hf_bert takes token ids)
            plan = CompressionPlan.uniform(graph, 0.5, criterion)
            kwargs = {"data": data} if criterion in DATA_DRIVEN + KNOCKOFF else {}
            before = _outputs(compress(model, plan, inputs, graph=graph, **kwargs), inputs)
            with stray_tensors_on_meta() as strays:
                small = compress(model, plan, inputs, graph=graph, **kwargs)
                masked = compress(model, plan, inputs, speedup=False, graph=graph, **kwargs)
                y_small, y_masked = _outputs(small, inputs), _outputs(masked, inputs)
            assert not strays, (criterion, strays)
            assert _devices_of(small) == _devices_of(masked) == {inputs[0].device}, criterion
            assert all(y.device == inputs[0].device for y in y_small)
            assert _relative_diff(before, y_small) <= ROUNDING, (name, criterion)  # the harness changed nothing
            assert _relative_diff(y_masked, y_small) <= 1e-4, (name, criterion)  # smaller == masked
            assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["resnet20", "vit_timm_style"])
def test_unstructured_pruning_masks_on_the_model_device(built, name, device):
    model, inputs, _, graph = _get(built, name, device)
    for criterion in ("level", "l1", "l2"):
        plan = CompressionPlan.uniform(graph, 0.5, criterion, granularity="unstructured")
        before = _outputs(compress(model, plan, inputs, graph=graph), inputs)
        with stray_tensors_on_meta() as strays:
            pruned = compress(model, plan, inputs, graph=graph)
            after = _outputs(pruned, inputs)
        assert not strays, (criterion, strays)
        assert _devices_of(pruned) == {inputs[0].device}
        assert _relative_diff(before, after) <= ROUNDING, criterion
        layer = pruned.get_submodule(graph.prunable_layers()[0])
        assert layer.weight_mask.device == layer.weight_orig.device
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["resnext", "torch_transformer"])
def test_sensitivity_analysis_on_the_model_device(built, name, device):
    model, inputs, targets, graph = _get(built, name, device)
    seen: list[set[torch.device]] = []

    def evaluate(m: nn.Module) -> float:
        seen.append(_devices_of(m))
        return -float(_outputs(m, inputs)[0].float().square().mean())

    groups = [g.name for g in graph.prunable_groups()][:2]
    with stray_tensors_on_meta() as strays:
        table = analyze_sensitivity(
            model, inputs, evaluate, levels=(0.5,), criterion="taylor", groups=groups, data=[(inputs, targets)],
            progress=False,
        )  # fmt: skip
    assert not strays, strays
    assert table["group"].tolist() == groups
    assert (table["flops_rel"] < 1).all() and table["metric"].notna().all()
    assert seen and all(s == {inputs[0].device} for s in seen)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("criterion", DATA_DRIVEN)
def test_cpu_batches_calibrate_a_model_on_its_device(built, monkeypatch, device, criterion):
    """Calibration batches on the CPU (a DataLoader's) serve a model elsewhere: inputs, and targets
    for ``taylor``, go to the model's device through ``slimtune.devices.move``."""
    model, inputs, targets, graph = _get(built, "resnet20", device)
    real_move = devices.move
    moved: list[tuple[str, str]] = []

    def spy(obj: Any, to: Any, non_blocking: bool = False) -> Any:
        moved.append((type(obj).__name__, str(to)))
        return real_move(obj, to, non_blocking)

    monkeypatch.setattr(devices, "move", spy)
    seen: list[torch.device] = []
    handle = model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    try:
        batch = (tuple(t.cpu() for t in inputs), targets.cpu())
        ctx = CriterionContext(model, graph, [batch, batch])
        assert select_channels(graph, CompressionPlan.uniform(graph, 0.5, criterion), ctx)
    finally:
        handle.remove()
    assert seen == [inputs[0].device] * 2  # one pass over the two batches, on the model's device
    assert moved and all(to == str(inputs[0].device) for _, to in moved)
    if criterion == "taylor":
        assert ("Tensor", str(inputs[0].device)) in moved  # the targets


# ------------------------------------------------------------------------------------ another device
class MixedDevices(TorchFunctionMode):
    """Records every torch call whose tensor arguments lie on two devices (0-dim CPU tensors, which
    CUDA kernels take as scalars, excepted), with the slimtune line that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        found = {str(t.device) for t in _tensors((args, kwargs)) if not (t.device.type == "cpu" and t.ndim == 0)}
        if len(found) > 1:
            self.calls.append(f"{getattr(func, '__name__', func)} {sorted(found)} at {_slimtune_caller()}")
        return func(*args, **kwargs)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _slimtune_caller() -> str:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("slimtune."):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def test_the_mixed_device_check_finds_a_cpu_index_into_another_device():
    weight = torch.zeros(4, 3, device="meta")
    with MixedDevices() as mixed:
        weight.index_select(0, torch.tensor([0, 2]))
        weight.index_select(0, keep_indices(4, torch.tensor([1, 3]), device=weight.device))
    assert len(mixed.calls) == 1 and "index_select" in mixed.calls[0]


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "resnext", "vit_timm_style", "torch_transformer"])
def test_slicing_and_masking_put_every_index_on_the_weights_device(built, name):
    """The channels are chosen on the CPU; a copy of the model on another device (``meta``) is then
    resized, masked and run: no CPU index or mask meets its weights, and the shapes are the CPU's."""
    model, inputs, _, graph = _get(built, name, "cpu")
    plan = CompressionPlan.uniform(graph, 0.5)
    pruned = select_channels(graph, plan, CriterionContext(model, graph))
    reference = compress(model, plan, inputs, graph=graph)

    small = copy.deepcopy(model).to("meta")
    masked = copy.deepcopy(model).to("meta")
    sparse = copy.deepcopy(model).to("meta")
    with MixedDevices() as mixed, torch.no_grad():
        apply_speedup(small, graph, pruned)
        check_forward(small, inputs)  # CPU inputs: moved to the model's device
        apply_channel_masks(masked, graph, pruned)
        y = masked(*[t.to("meta") for t in inputs])
        apply_unstructured_masks(sparse, CompressionPlan.uniform(graph, 0.5, "l1", granularity="unstructured"))
        sparse(*[t.to("meta") for t in inputs])
    assert not mixed.calls, mixed.calls
    assert {k: tuple(v.shape) for k, v in small.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    assert _devices_of(small) == _devices_of(masked) == _devices_of(sparse) == {torch.device("meta")}
    assert output_tensors(y)[0].device.type == "meta"
