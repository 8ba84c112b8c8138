"""Static int8 ONNX by onnxruntime's quantizer (export_onnx_int8): ResNet-20 and a channel-pruned VGG-small in
QDQ form with int8 weights, reproduced by onnxruntime within ORT_INT8_REL_L2 at any batch size, a quarter to a
third of the float file; the other calibration options; clear errors.

Each int8 file is also run here, independently of the library's own check, at a third batch size (5).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.deploy import ORT_INT8_REL_L2, export_onnx, export_onnx_int8
from slimtune.compressors.quantization import quantize_model
from slimtune.errors import ArgumentError, ArgumentTypeError, QuantExportError, SlimtuneError
from slimtune.examples.digits import digits_cnn
from slimtune.examples.models import mlp, resnet20, vgg_small

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _graph(path) -> tuple[Counter[str], dict[str, str]]:
    """The op counts of an ONNX file and the dtype of each initializer."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    inits = {t.name: tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}
    return ops, inits


def _assert_int8_qdq(path, n_weights: int) -> None:
    ops, inits = _graph(path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] >= ops["QuantizeLinear"] + n_weights, ops
    # every Conv / Gemm weight is stored as int8 behind a DequantizeLinear; activations get uint8 zero points
    assert sum(dtype == "int8" for dtype in inits.values()) >= n_weights, Counter(inits.values())
    assert "uint8" in inits.values()


def _check_independently(result, model: nn.Module, shape: tuple[int, ...]) -> None:
    x5 = torch.randn(5, *shape)
    with torch.no_grad():
        expected = model(x5)
    assert _rel_l2(_run_onnx(result.path, x5), expected) <= ORT_INT8_REL_L2


def test_resnet20_int8_is_qdq_smaller_and_reproduces_the_model_at_any_batch(tmp_path):
    torch.manual_seed(0)
    model = resnet20().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    calibration = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(4)]
    result = export_onnx_int8(model, x, tmp_path / "resnet20.int8.onnx", calibration)

    assert result.format == "onnx-int8" and result.dynamic_batch and result.checked_batches == (2, 1)
    assert result.rel_l2 is not None and result.rel_l2 <= ORT_INT8_REL_L2
    assert [str(s) for s in result.inputs] == ["x: float32[batch, 3, 32, 32]"]
    assert [str(s) for s in result.outputs] == ["output: float32[batch, 10]"]
    assert any("minmax calibration on 4 batches (64 samples)" in n and "per output channel" in n for n in result.notes)
    assert result.files == [result.path] and result.size_bytes == result.path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.int8.onnx"]  # the float file is gone
    n_weights = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    _assert_int8_qdq(result.path, n_weights)

    float_size = export_onnx(model, x, tmp_path / "resnet20.onnx", check=False).size_bytes
    assert result.size_bytes < 0.35 * float_size
    _check_independently(result, model, (3, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


def test_pruned_vgg_int8_from_one_calibration_tensor_and_an_example_of_batch_1(tmp_path):
    torch.manual_seed(0)
    model, x = vgg_small().eval(), torch.randn(2, 3, 32, 32)
    pruned = compress(model, CompressionPlan.uniform(trace(model, x), 0.5, "l1"), x)
    result = export_onnx_int8(pruned, x[:1], tmp_path / "vgg.onnx", torch.randn(32, 3, 32, 32))

    assert result.dynamic_batch and result.checked_batches == (1, 3)  # captured at 2, checked at 1 and 3
    assert result.rel_l2 is not None and result.rel_l2 <= ORT_INT8_REL_L2
    assert any("on 1 batch (32 samples)" in note for note in result.notes), result.notes
    _assert_int8_qdq(result.path, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in pruned.modules()))
    float_size = export_onnx(pruned, x, tmp_path / "vgg.float.onnx", check=False).size_bytes
    assert result.size_bytes < 0.35 * float_size
    _check_independently(result, pruned, (3, 32, 32))


@pytest.mark.parametrize(
    "options",
    [
        {"calibrate_method": "entropy"},
        {"calibrate_method": "Percentile", "activation_type": "int8"},
        {"per_channel": False},
    ],
    ids=["entropy", "percentile-int8", "per-tensor"],
)
def test_calibration_options_on_the_digits_cnn(options, tmp_path):
    torch.manual_seed(0)
    model = digits_cnn()
    x = torch.randn(4, 1, 8, 8)
    result = export_onnx_int8(
        model, x, tmp_path / "digits.onnx", [torch.randn(32, 1, 8, 8) for _ in range(2)], **options
    )
    assert result.rel_l2 is not None and result.rel_l2 <= ORT_INT8_REL_L2
    method = options.get("calibrate_method", "minmax").lower()
    weights = "per tensor" if options.get("per_channel") is False else "per output channel"
    activations = options.get("activation_type", "uint8")
    assert any(f"{weights}, activations {activations}, {method} calibration" in n for n in result.notes), result.notes
    _check_independently(result, model, (1, 8, 8))


def test_static_batch_takes_calibration_of_that_batch_only(tmp_path):
    model, x = mlp(), torch.randn(4, 64)
    result = export_onnx_int8(model, x, tmp_path / "mlp.onnx", [x, x + 0.1], dynamic_batch=False)
    assert not result.dynamic_batch and result.checked_batches == (4,)
    assert [str(s) for s in result.inputs] == ["x: float32[4, 64]"]
    with pytest.raises(ArgumentError, match=r"calibration batch 1: input 'x' has shape \(8, 64\).*\[4, 64\]") as e:
        export_onnx_int8(model, x, tmp_path / "mlp2.onnx", [x, torch.randn(8, 64)], dynamic_batch=False)
    assert e.value.field == "calibration" and "batch size is fixed" in str(e.value)


def test_a_check_that_fails_keeps_the_file_and_says_by_how_much(tmp_path):
    model, x = mlp(), torch.randn(8, 64)
    with pytest.raises(SlimtuneError, match=r"relative L2 error .* > max_rel_l2 0 at batch \d, output.*is kept"):
        export_onnx_int8(model, x, tmp_path / "mlp.onnx", [x], max_rel_l2=0.0)
    assert (tmp_path / "mlp.onnx").is_file()
    unchecked = export_onnx_int8(model, x, tmp_path / "mlp.onnx", [x], check=False)
    assert unchecked.rel_l2 is None and unchecked.checked_batches == ()


def test_a_fake_quantized_model_is_sent_to_export_onnx(tmp_path):
    q = quantize_model(nn.Sequential(nn.Linear(4, 3)), {"0": (8, 8)})
    with pytest.raises(QuantExportError, match=r"fake-quantized already \(QuantWrapper layers 0\).*export_onnx"):
        export_onnx_int8(q, torch.randn(2, 4), tmp_path / "q.onnx", [torch.randn(8, 4)])


def test_bad_arguments_name_the_field_or_file(tmp_path):
    model, x = mlp(), torch.randn(2, 64)
    with pytest.raises(ArgumentError, match="calibration is empty") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", [])
    assert e.value.field == "calibration"
    with pytest.raises(ArgumentError, match="calibration is empty"):
        export_onnx_int8(model, x, tmp_path / "m.onnx", iter(()))
    with pytest.raises(ArgumentTypeError, match="calibration must be an input tensor or an iterable") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", 3)
    assert e.value.field == "calibration"
    with pytest.raises(ArgumentTypeError, match="calibration batch 1 must be a tensor") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", [x, 3.0])
    with pytest.raises(ArgumentError, match=r"calibrate_method must be one of 'minmax', 'entropy', 'percentile'"):
        export_onnx_int8(model, x, tmp_path / "m.onnx", [x], calibrate_method="kl")
    with pytest.raises(ArgumentError, match=r"activation_type must be one of 'uint8', 'int8', got 'int4'") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", [x], activation_type="int4")
    assert e.value.field == "activation_type"
    with pytest.raises(ArgumentError, match="max_rel_l2 must be a number >= 0") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", [x], max_rel_l2=-1)
    assert e.value.field == "max_rel_l2"
    missing = tmp_path / "nowhere" / "m.onnx"
    with pytest.raises(ArgumentError, match=f"directory {tmp_path / 'nowhere'} does not exist") as e:
        export_onnx_int8(model, x, missing, [x])
    assert e.value.field == "path"
    with pytest.raises(ArgumentError, match=r"calibration batch 0: input 'x' has shape \(8, 32\)") as e:
        export_onnx_int8(model, x, tmp_path / "m.onnx", [torch.randn(8, 32)])
    assert e.value.field == "calibration"
    assert not (tmp_path / "m.onnx").exists() and list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_file_quant_pre_process_cannot_read_is_quantized_as_it_is_with_a_note(tmp_path):
    from slimtune.compressors.deploy.ort_int8 import _pre_process

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    source, notes = _pre_process(bad, tmp_path / "prepared.onnx")
    assert source == bad and len(notes) == 1 and notes[0].startswith("quant_pre_process failed (DecodeError")
