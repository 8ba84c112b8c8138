"""Weight-only int8 / int4 Linear layers with torchao (quantize_weight_only): a tiny BERT built from a config and
an MLP keep their outputs within the stated bounds, their Linear weights become torchao tensors, the model given
is untouched, layers that cannot be quantized are listed with the reason; clear errors.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from slimtune.compressors.quantization import (
    WeightOnlyInfo,
    exported_size_bytes,
    int4_available,
    quantize_model,
    quantize_weight_only,
    weight_only_info,
)
from slimtune.compressors.quantization.weight_only import (
    WEIGHT_ONLY_ATTR,
    WEIGHT_ONLY_INT4_REL_L2,
    WEIGHT_ONLY_INT8_REL_L2,
)
from slimtune.errors import ArgumentError, ArgumentTypeError, QuantExportError
from slimtune.examples.models import mlp

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

_BOUNDS = {8: WEIGHT_ONLY_INT8_REL_L2, 4: WEIGHT_ONLY_INT4_REL_L2}


def _tiny_bert() -> nn.Module:
    import transformers  # a dev dependency (the tests never skip)

    config = transformers.BertConfig(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, vocab_size=1000
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _quantized_type(bits: int) -> type:
    if bits == 8:
        from torchao.quantization import Int8Tensor

        return Int8Tensor
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    return Int4OpaqueTensor


def _quietly(*args, **kwargs) -> tuple[nn.Module, list[str]]:
    """quantize_weight_only(*args, **kwargs) and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_weight_only(*args, **kwargs)
    return q, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    return _tiny_bert()


@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_bert_linear_weights_become_torchao_tensors_and_outputs_stay_close(bits, bert):
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    q, messages = _quietly(bert, bits=bits)
    info = weight_only_info(q)
    assert isinstance(info, WeightOnlyInfo) and info is getattr(q, WEIGHT_ONLY_ATTR)
    linears = _linears(bert)
    if bits == 8:
        assert info.layers == tuple(linears) and info.skipped == {} and info.group_size is None
        assert messages == []
    else:
        # the 2-class head cannot be packed for the CPU int4 kernel (output channels in blocks of 16)
        assert info.group_size == 128 and info.layers == tuple(n for n in linears if n != "classifier")
        assert info.skipped == {"classifier": "out_features 2 is not a multiple of 16 (the CPU int4 kernel's packing)"}
        assert any("1 Linear layer(s) stay float (classifier: out_features 2" in m for m in messages), messages
        assert any("convert the model to bfloat16 first" in m for m in messages), messages
    modules = dict(q.named_modules())
    assert all(isinstance(modules[n].weight, _quantized_type(bits)) for n in info.layers)
    assert all(type(modules[n].weight) is nn.Parameter for n in info.skipped)
    assert not q.training and all(p.device.type == "cpu" for p in q.parameters())

    for batch in (1, 3):
        ids = torch.randint(0, 1000, (batch, 16))
        with torch.no_grad():
            expected, actual = bert(ids).logits, q(ids).logits
        assert _rel_l2(actual, expected) <= _BOUNDS[bits]
    # the weights shrink: int8 to about a quarter, int4 to about an eighth (plus scales); embeddings stay float
    linear_bytes = sum(exported_size_bytes(modules[n]) for n in linears)
    float_linear_bytes = sum(exported_size_bytes(m) for m in bert.modules() if isinstance(m, nn.Linear))
    assert linear_bytes < (0.3 if bits == 8 else 0.2) * float_linear_bytes
    assert exported_size_bytes(q) < 0.5 * exported_size_bytes(bert)
    # the model given is untouched
    assert all(type(m.weight) is nn.Parameter for m in bert.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(v, before[k]) for k, v in bert.state_dict().items())
    assert weight_only_info(bert) is None


@pytest.mark.parametrize("bits", [8, 4])
def test_mlp_int8_and_int4(bits):
    torch.manual_seed(0)
    model = mlp()
    q, _ = _quietly(model, bits=bits, group_size=32)
    info = weight_only_info(q)
    assert info.layers == (("features.0", "features.2", "fc") if bits == 8 else ("features.0", "features.2"))
    assert list(info.skipped) == ([] if bits == 8 else ["fc"])
    for batch in (1, 32):
        x = torch.randn(batch, 64)
        with torch.no_grad():
            assert _rel_l2(q(x), model(x)) <= _BOUNDS[bits]
    assert exported_size_bytes(q) < (0.4 if bits == 8 else 0.3) * exported_size_bytes(model)
    assert type(model.fc.weight) is nn.Parameter


def test_a_bfloat16_model_stays_bfloat16_with_int4_weights():
    torch.manual_seed(0)
    model = mlp()
    q, messages = _quietly(copy.deepcopy(model).to(torch.bfloat16), bits=4, group_size=64)
    assert q.features[0].weight.dtype == torch.bfloat16 and not any("bfloat16 first" in m for m in messages)
    assert weight_only_info(q).notes == ()
    x = torch.randn(8, 64)
    with torch.no_grad():
        out = q(x.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert _rel_l2(out.float(), model(x)) <= WEIGHT_ONLY_INT4_REL_L2


def test_named_layers_only_and_layers_int4_cannot_take(bert):
    names = ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.output.dense"]
    q, messages = _quietly(bert, bits=8, layers=names)
    assert weight_only_info(q).layers == tuple(names) and messages == []
    quantized = {n for n, m in q.named_modules() if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter}
    assert quantized == set(names)
    q1, _ = _quietly(bert, bits=8, layers="classifier")  # one name
    assert weight_only_info(q1).layers == ("classifier",)

    # int4 groups of 128 input features: MLP layers of 64 inputs stay float, with the reason
    torch.manual_seed(0)
    q4, messages = _quietly(mlp(), bits=4, group_size=128)
    info = weight_only_info(q4)
    assert info.layers == ("features.2",)
    assert info.skipped == {
        "features.0": "in_features 64 is not a multiple of group_size 128",
        "fc": "in_features 64 is not a multiple of group_size 128",
    }
    assert any("2 Linear layer(s) stay float" in m for m in messages)


def test_tied_and_attention_projection_weights_stay_float_with_the_reason():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32, 64)
            self.body = nn.Linear(64, 64)
            self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
            self.head = nn.Linear(64, 32, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.body(self.embed(ids))
            return self.head(self.attn(h, h, h, need_weights=False)[0])

    model = Tied().eval()
    q, messages = _quietly(model, bits=8)
    info = weight_only_info(q)
    assert info.layers == ("body",)
    assert "MultiheadAttention" in info.skipped["attn.out_proj"]
    assert info.skipped["head"] == "its weight is shared with embed.weight (quantizing it would untie them)"
    assert q.head.weight is q.embed.weight
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad():
        assert _rel_l2(q(ids), model(ids)) <= WEIGHT_ONLY_INT8_REL_L2


def test_int4_runs_where_its_kernels_do_and_says_so_where_they_do_not():
    model = nn.Sequential(nn.Linear(64, 32))
    if int4_available("cpu"):
        q, _ = _quietly(model, bits=4, group_size=32)
        assert isinstance(q[0].weight, _quantized_type(4))
    else:  # a torch build without the CPU int4 kernel
        with pytest.raises(QuantExportError, match="int4 weight-only kernels do not run on cpu"):
            quantize_weight_only(model, bits=4, group_size=32)


def test_bad_arguments_name_the_field_or_layer():
    torch.manual_seed(0)
    model = mlp()
    for bits in (3, 16, True, "8"):
        with pytest.raises(ArgumentError, match=r"bits must be 4 or 8") as e:
            quantize_weight_only(model, bits=bits)
        assert e.value.field == "bits"
    with pytest.raises(ArgumentError, match=r"group_size must be one of 32, 64, 128 for int4, got 100") as e:
        quantize_weight_only(model, bits=4, group_size=100)
    assert e.value.field == "group_size"
    with pytest.raises(QuantExportError, match=r"no layer 'fc1' in MLP \(did you mean 'fc'\?\); its Linear layers"):
        quantize_weight_only(model, layers=["fc1"])
    with pytest.raises(QuantExportError, match=r"layer 'features.1' is a ReLU, not an nn.Linear"):
        quantize_weight_only(model, layers=["features.0", "features.1"])
    with pytest.raises(QuantExportError, match="`layers` is empty"):
        quantize_weight_only(model, layers=[])
    with pytest.raises(ArgumentTypeError, match="layers must hold layer names"):
        quantize_weight_only(model, layers=[0])
    with pytest.raises(QuantExportError, match="Sequential has no nn.Linear layer"):
        quantize_weight_only(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    with pytest.raises(QuantExportError, match=r"no selected Linear layer can be .*int4 \(0: in_features 10"):
        quantize_weight_only(nn.Sequential(nn.Linear(10, 16)), bits=4, group_size=32)
    with pytest.raises(QuantExportError, match=r"fake-quantized \(QuantWrapper layers 0\).*export_int8"):
        quantize_weight_only(quantize_model(nn.Sequential(nn.Linear(4, 3)), {"0": (8, 8)}))
    with pytest.raises(ArgumentTypeError, match="model must be a torch.nn.Module"):
        quantize_weight_only("model")
