"""Safe model files (:mod:`slimtune.compressors.state`): every reference model, pruned, quantized or both,
saves and reloads with identical outputs, without a pickle; a wrong base model is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import slimtune
from slimtune.compressors import CompressionPlan, compress, state, trace
from slimtune.compressors.plan import QuantSpec
from slimtune.errors import ArgumentError
from slimtune.examples.models import REFERENCE_MODELS

PACKAGE = Path(slimtune.__file__).resolve().parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _plans(graph, kind: str) -> CompressionPlan:
    pruned = CompressionPlan.uniform(graph, 0.5, "l1")
    layers = graph.quantizable_layers()[:2]
    quant = {name: QuantSpec(8, 8) for name in layers}
    if kind == "pruned":
        return pruned
    if kind == "quantized":
        return CompressionPlan(quantize=quant)
    if kind == "both":
        return dataclasses.replace(pruned, quantize=quant)
    return CompressionPlan.from_sparsities({n: 0.5 for n in graph.quantizable_layers()[:3]}, granularity="unstructured")


@pytest.mark.parametrize("kind", ["pruned", "quantized", "both", "unstructured"])
@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_every_reference_model_round_trips(name: str, kind: str, tmp_path: Path) -> None:
    factory, shape = REFERENCE_MODELS[name]
    torch.manual_seed(0)
    base = factory().eval()
    x = torch.randn(2, *shape)
    graph = trace(base, x[:1])
    plan = _plans(graph, kind)
    small = compress(base, plan, x[:1], data=[(x, None)])
    with torch.no_grad():  # change every weight, as fine-tuning would: the file must carry them
        for p in small.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    small.eval()
    path = state.save(small, plan, base, x[:1], tmp_path / f"{name}.safetensors")
    again = slimtune.load(path, base)
    with torch.no_grad():
        assert torch.equal(again(x), small(x)), (name, kind)
    assert again.state_dict().keys() == small.state_dict().keys()
    assert not again.training and next(again.parameters()).device.type == "cpu"


def test_training_plan_fields_do_not_matter_for_the_structure(tmp_path: Path) -> None:
    factory, shape = REFERENCE_MODELS["resnet20"]
    base, x = factory().eval(), torch.randn(1, *shape)
    graph = trace(base, x)
    plan = dataclasses.replace(
        CompressionPlan.uniform(graph, 0.5, "taylor"), compressor="admm", finetune={"steps": 3}, init_from_trial=4
    )
    small = compress(base, CompressionPlan.uniform(graph, 0.5, "l1"), x).eval()
    path = state.save(small, plan, base, x, tmp_path / "m.safetensors", extra={"trial": 7})
    assert state.read_metadata(path)["extra"] == {"trial": 7}
    assert torch.equal(state.load(path, base)(x), small(x))  # taylor needs data; the rebuild uses l1: same shapes


def test_a_wrong_base_model_is_refused_naming_the_mismatch(tmp_path: Path) -> None:
    factory, shape = REFERENCE_MODELS["vgg"]
    torch.manual_seed(0)
    base, x = factory().eval(), torch.randn(1, *shape)
    small = compress(base, CompressionPlan.uniform(trace(base, x), 0.5, "l1"), x).eval()
    path = state.save(small, CompressionPlan.uniform(trace(base, x), 0.5, "l1"), base, x, tmp_path / "v.safetensors")
    other_arch = REFERENCE_MODELS["resnet20"][0]()
    with pytest.raises(ArgumentError, match="whose architecture .* differs from the base model given") as info:
        state.load(path, other_arch)
    assert info.value.field == "base_model"
    torch.manual_seed(1)
    retrained = factory().eval()  # same architecture, other weights
    with pytest.raises(ArgumentError, match="with other weights"):
        state.load(path, retrained)
    assert torch.equal(state.load(path, retrained, check_weights=False)(x), small(x))


def test_pickles_and_other_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "old.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(ArgumentError, match="is a pickle .* slimtune does not load pickles"):
        state.load(pickled, torch.nn.Linear(2, 2))
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ArgumentError, match="is not a safetensors file"):
        state.read_metadata(text)
    assert not state.is_state_file(pickled) and not state.is_state_file(text)


def test_the_package_never_loads_a_pickle() -> None:
    offenders = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "weights_only=False" in line.replace(" ", "")
    ]
    assert offenders == []


@pytest.mark.parametrize("algorithm", ["ste", "ptq", "pact", "dorefa", "bnn", "slb"])
def test_every_quantization_algorithm_round_trips(algorithm: str, tmp_path: Path) -> None:
    factory, shape = REFERENCE_MODELS["mlp"]
    torch.manual_seed(0)
    base, x = factory().eval(), torch.randn(4, *shape)
    graph = trace(base, x[:1])
    bits_a = None if algorithm in ("bnn", "slb") else 8
    plan = dataclasses.replace(
        CompressionPlan.uniform(graph, 0.25, "l1"),
        quantize={n: QuantSpec({"bnn": 1, "slb": 2}.get(algorithm, 4), bits_a) for n in graph.quantizable_layers()},
        quant_algorithm=algorithm,
    )
    small = compress(base, plan, x[:1], data=[(x, None)]).eval()
    path = state.save(small, plan, base, x[:1], tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(state.load(path, base)(x), small(x))
