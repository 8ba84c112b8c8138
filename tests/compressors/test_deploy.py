"""Deployable exports: ONNX (checked in onnxruntime) and torch.export programs (.pt2), of every reference model,
original and channel-pruned, of fake-quantized models (QDQ form) and of a Hugging Face model; clear errors.

Each ONNX file is also run here, independently of the library's own check, at a third batch size (5).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, compress, trace
from slimtune.compressors.deploy import QUANT_REL_L2, ExportResult, export_onnx, export_pt2, load_pt2, onnx_available
from slimtune.compressors.quantization import quantize_model
from slimtune.errors import ArgumentError, QuantExportError, SlimtuneError
from slimtune.examples.models import REFERENCE_MODELS

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]


def _reference(name: str, pruned: bool) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = REFERENCE_MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, *shape)
    if pruned:
        model = compress(model, CompressionPlan.uniform(trace(model, x), 0.5, "l1"), x)
    return model, x


def _run_onnx(path, *inputs: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(a) for a in session.run(None, feeds)]


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("pruned", [False, True], ids=["original", "pruned"])
@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_onnx_reproduces_reference_models_at_any_batch(name, pruned, tmp_path):
    model, x = _reference(name, pruned)
    # the pruned models are exported from an example of batch 1 (captured at batch 2, checked at 1 and 3)
    example = x[:1] if pruned else x
    result = export_onnx(model, example, tmp_path / f"{name}.onnx")
    assert result.dynamic_batch and result.notes == []
    assert result.checked_batches == ((1, 3) if pruned else (2, 1))
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert [str(s) for s in result.inputs] == [f"x: float32[batch, {', '.join(map(str, x.shape[1:]))}]"]
    assert [str(s) for s in result.outputs] == ["output: float32[batch, 10]"]
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size > 0
    x5 = torch.randn(5, *x.shape[1:])
    (out,) = _run_onnx(result.path, x5)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x5), rtol=1e-4, atol=1e-5)


def test_onnx_of_a_quantized_model_is_qdq_with_int8_weights(tmp_path):
    import onnx

    model, x = _reference("resnet20", pruned=True)
    graph = trace(model, x)
    plan = CompressionPlan(quantize={n: QuantSpec(4, 8) for n in graph.quantizable_layers()})
    data = [torch.randn(8, *x.shape[1:])]
    q = compress(model, plan, x, data=data, quant_algorithm="ste")
    result = export_onnx(q, x, tmp_path / "q.onnx")
    assert result.dynamic_batch
    assert any(f"{len(plan.quantize)} quantized layers in QDQ form" in note for note in result.notes), result.notes
    assert result.rel_l2 is not None and result.rel_l2 <= QUANT_REL_L2
    proto = onnx.load(str(result.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(name.endswith("weight_int8") for name in int8) == len(plan.quantize)  # every weight in int8
    # weights a quarter of the float ones; the graph (more nodes), scales, biases and BN stay: 0.43 here
    float_size = export_onnx(model, x, tmp_path / "f.onnx", check=False).size_bytes
    assert result.size_bytes < 0.5 * float_size
    x5 = torch.randn(5, *x.shape[1:])
    (out,) = _run_onnx(result.path, x5)
    with torch.no_grad():
        assert _rel_l2(out, q(x5)) <= QUANT_REL_L2


def test_bnn_binary_inputs_export_as_float_ops(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    q = quantize_model(model, {"0": (1, None), "2": (1, 1)}, algorithm="bnn").eval()
    x = torch.randn(4, 16)
    result = export_onnx(q, x, tmp_path / "bnn.onnx")
    assert any("floating-point ops" in n and "2" in n for n in result.notes), result.notes
    assert result.rel_l2 <= QUANT_REL_L2


def test_a_layer_still_calibrating_is_a_clear_error(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    q = quantize_model(model, {"2": (8, 8)})  # never calibrated nor frozen
    with pytest.raises(QuantExportError, match=r"layer '2' is still calibrating.*freeze\(model\)"):
        export_onnx(q, torch.randn(2, 8), tmp_path / "q.onnx")
    with pytest.raises(QuantExportError, match="layer '2' is still calibrating"):
        export_pt2(q, torch.randn(2, 8), tmp_path / "q.pt2")
    assert not (tmp_path / "q.onnx").exists()


class _FixedBatch(nn.Module):
    """A forward that fixes the batch size (``reshape(2, -1)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, -1))


def test_a_model_that_fixes_its_batch_is_exported_static_saying_why(tmp_path):
    result = export_onnx(_FixedBatch().eval(), torch.randn(2, 2, 4), tmp_path / "fixed.onnx")
    assert not result.dynamic_batch and result.checked_batches == (2,)
    assert [str(s) for s in result.inputs] == ["x: float32[2, 2, 4]"]
    assert any("static batch 2" in n and "constant (2)" in n for n in result.notes), result.notes
    assert "static batch 2" in str(result)
    static = export_onnx(nn.Linear(4, 2), torch.randn(3, 4), tmp_path / "lin.onnx", dynamic_batch=False)
    assert not static.dynamic_batch and "static batch 3 (dynamic_batch=False)" in static.notes


def test_model_is_neither_moved_nor_modified_and_result_describes_itself(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    result = export_onnx(model, torch.randn(3, 4), tmp_path / "m.onnx")
    assert model.training and list(model.parameters()) == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any("eval mode" in n for n in result.notes)
    text = str(result)
    assert isinstance(result, ExportResult) and text == result.describe()
    assert str(tmp_path / "m.onnx") in text and "input: float32[batch, 4]" in text
    assert "checked with onnxruntime" in text and "at batch 3 and 1" in text


def test_hugging_face_bert_exports_with_named_outputs(tmp_path):
    pytest.importorskip("transformers")
    from slimtune.examples.zoo import ZOO

    model, (ids,) = ZOO["hf_bert"].build(2)
    small = compress(model, CompressionPlan.uniform(trace(model, ids), 0.5), ids)
    onnx_result = export_onnx(small, ids, tmp_path / "bert.onnx")
    assert [str(s) for s in onnx_result.inputs] == ["input_ids: int64[batch, 12]"]
    assert [str(s) for s in onnx_result.outputs] == ["logits: float32[batch, 3]"]
    pt2_result = export_pt2(small, ids, tmp_path / "bert.pt2")
    assert pt2_result.outputs == onnx_result.outputs and pt2_result.max_abs_diff <= 1e-5


# ------------------------------------------------------------------------------------------------ PT2
@pytest.mark.parametrize("name", ["mobilenetv2", "densenet"])
def test_pt2_save_load_reproduces_outputs(name, tmp_path):
    model, x = _reference(name, pruned=True)
    result = export_pt2(model, x, tmp_path / f"{name}.pt2")
    assert result.format == "pt2" and result.dynamic_batch and result.checked_batches == (2, 1)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    program = load_pt2(result.path)
    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x3), model(x3), rtol=1e-5, atol=1e-6)


def test_pt2_of_a_quantized_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(4, 3, 8, 8)
    q = compress(model, CompressionPlan(quantize={"0": QuantSpec(4, 8), "3": QuantSpec(8, 8)}), x, data=[x])
    result = export_pt2(q, x, tmp_path / "q.pt2")
    assert any("2 quantized layers in QDQ form" in n for n in result.notes), result.notes
    program = load_pt2(result.path)
    with torch.no_grad():
        assert _rel_l2(program.module()(x[:3]), q(x[:3])) <= QUANT_REL_L2


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("export", [export_onnx, export_pt2], ids=["onnx", "pt2"])
def test_a_path_in_a_missing_directory_is_a_clear_error(export, tmp_path):
    missing = tmp_path / "no" / "such" / "model.out"
    with pytest.raises(ArgumentError, match=rf"directory {tmp_path / 'no' / 'such'} does not exist") as info:
        export(nn.Linear(4, 2), torch.randn(2, 4), missing)
    assert info.value.field == "path" and str(missing) in str(info.value)
    with pytest.raises(ArgumentError, match="is a directory"):
        export(nn.Linear(4, 2), torch.randn(2, 4), tmp_path)


def test_bad_inputs_and_arguments_are_clear_errors(tmp_path):
    with pytest.raises(SlimtuneError, match=r"Linear fails on the example inputs"):
        export_pt2(nn.Linear(4, 2), torch.randn(2, 5), tmp_path / "m.pt2")
    with pytest.raises(SlimtuneError, match="no tensor with a batch dimension"):
        export_pt2(nn.Linear(4, 2), (3.0,), tmp_path / "m.pt2")
    with pytest.raises(ArgumentError, match="rtol must be a number >= 0"):
        export_pt2(nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "m.pt2", rtol=-1)
    with pytest.raises(ArgumentError, match="opset must be an int >= 13"):
        export_onnx(nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "m.onnx", opset=9)
    with pytest.raises(ArgumentError, match=r"load_pt2: no file .*missing\.pt2"):
        load_pt2(tmp_path / "missing.pt2")
    (tmp_path / "junk.pt2").write_text("not a program")
    with pytest.raises(SlimtuneError, match=r"load_pt2: torch.export.load cannot load .*junk\.pt2"):
        load_pt2(tmp_path / "junk.pt2")


def test_the_onnx_packages_are_installed() -> None:
    """The dev extra installs onnx, onnxscript and onnxruntime: the ONNX tests above run, never skip."""
    assert onnx_available()
