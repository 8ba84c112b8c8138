"""Any model: the zoo (convnet patterns, written-out attention, PyTorch's and Hugging Face's transformers)
traces, prunes exactly, and keeps heads whole."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.frontends import output_tensors
from slimtune.compressors.handlers import handler_for
from slimtune.examples.zoo import ZOO

SPARSITIES = (0.25, 0.5, 0.75)
CRITERIA = ("l1", "fpgm")
# what torch.fx traces; the others go through torch.export
FX = {"shufflenet_unit", "split_block", "ghostnet", "efficientnet_same_swish", "vit_timm_style"}


@pytest.fixture(scope="module")
def traced() -> dict[str, tuple[nn.Module, tuple, object]]:
    cache: dict[str, tuple[nn.Module, tuple, object]] = {}
    return cache


def _get(cache, name):
    if name not in cache:
        model, inputs = ZOO[name].build()
        cache[name] = (model, inputs, trace(model, inputs))
    return cache[name]


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    h = handler_for(module)
    return h.in_out(module) if h is not None else None


def _relative_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        if x.is_floating_point():
            worst = max(worst, ((x - y).abs().max() / x.abs().max().clamp_min(1e-6)).item())
    return worst


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_traces_with_full_coverage(traced, name):
    model, inputs, graph = _get(traced, name)
    assert graph.frontend == ("fx" if name in FX else "export"), graph.note
    assert graph.coverage() >= 0.9, graph.layer_report()
    assert graph.prunable_groups()
    for g in graph.groups.values():
        assert g.prunable or g.reason, g.name  # every unprunable group says why


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_smaller_equals_masked(traced, name, criterion):
    model, inputs, graph = _get(traced, name)
    fresh = ZOO[name].inputs(3)  # another batch size and other values than the traced ones
    with torch.no_grad():
        reference = model(*fresh)
    n_params = sum(p.numel() for p in model.parameters())
    previous = n_params
    for s in SPARSITIES:
        plan = CompressionPlan.uniform(graph, s, criterion)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masked = compress(model, plan, inputs, speedup=False, graph=graph).eval()
            small = compress(model, plan, inputs, graph=graph).eval()
        with torch.no_grad():
            y_masked, y_small = masked(*fresh), small(*fresh)
        assert type(y_small) is type(reference)  # the output type is the model's own
        diff = _relative_diff(output_tensors(y_masked), output_tensors(y_small))
        assert diff <= 1e-4, (name, criterion, s, diff)
        # the layers have the counts the graph predicts
        for layer, counts in graph.channel_counts(plan).items():
            assert _in_out(small.get_submodule(layer)) == counts, (layer, s)
        size = sum(p.numel() for p in small.parameters())
        assert size < previous, (name, s)
        previous = size
        _check_heads(name, small)


def _check_heads(name: str, small: nn.Module) -> None:
    """Heads are removed whole and the head counts the forward reads follow."""
    for mod_name, m in small.named_modules():
        if name == "hf_bert" and mod_name.endswith("attention.self"):
            q, k, v = m.query.out_features, m.key.out_features, m.value.out_features
            assert q == k == v and q % m.attention_head_size == 0, mod_name
        if name == "hf_llama_gqa" and mod_name.endswith("self_attn"):
            q, k, v = m.q_proj.out_features, m.k_proj.out_features, m.v_proj.out_features
            assert k == v and q % m.head_dim == 0 and k % m.head_dim == 0, mod_name
            assert q // k == m.num_key_value_groups == 2, mod_name  # grouped-query attention kept consistent
            assert m.o_proj.in_features == q
        if name == "hf_gpt2" and mod_name.endswith(".attn"):
            assert m.c_attn.nf == 3 * m.split_size and m.split_size % m.head_dim == 0, mod_name
            assert m.c_proj.weight.shape[0] == m.split_size
        if name == "torch_transformer" and isinstance(m, nn.MultiheadAttention):
            assert m.embed_dim == m.num_heads * m.head_dim and m.head_dim == 8, mod_name
        if name == "vit_timm_style" and mod_name.endswith(".attn"):
            assert m.qkv.out_features == 3 * m.num_heads * m.head_dim and m.head_dim == 8, mod_name


def test_heads_are_groups_of_whole_heads(traced):
    _, _, graph = _get(traced, "hf_llama_gqa")
    heads = graph.groups["model.layers.0.self_attn.q_proj"]
    # 4 query heads over 2 key/value heads: a unit is one kv head with its 2 query heads
    assert heads.size == 2
    roles = {(m.layer.rsplit(".", 1)[-1], m.role): len(m.positions) for m in heads.members}
    assert roles[("q_proj", "out")] == 32 and roles[("k_proj", "out")] == 16 and roles[("o_proj", "in")] == 32
    hidden = graph.groups["model.embed_tokens"]
    assert {m.role for m in hidden.members} == {"out", "norm", "in"}
    _, _, bert = _get(traced, "hf_bert")
    assert bert.groups["bert.encoder.layer.0.attention.self.query"].size == 4
    _, _, gpt2 = _get(traced, "hf_gpt2")
    # GPT-2's q, k and v come out of one Conv1D: its heads group holds all three
    c_attn = next(m for m in gpt2.groups["transformer.h.0.attn.c_attn"].members if m.layer.endswith("c_attn"))
    assert len(c_attn.positions) == 96 and gpt2.groups["transformer.h.0.attn.c_attn"].size == 4


def test_tied_embeddings_stay_tied(traced):
    model, inputs, graph = _get(traced, "hf_gpt2")
    small = compress(model, CompressionPlan.uniform(graph, 0.5), inputs, graph=graph)
    assert small.lm_head.weight is small.transformer.wte.weight
    assert small.transformer.wte.weight.shape == (100, 16)


def test_parameters_used_directly_are_sliced(traced):
    model, inputs, graph = _get(traced, "vit_timm_style")
    hidden = graph.groups["patch"]
    assert {m.role for m in hidden.members if m.layer == ""} == {"param:cls_token:2", "param:pos_embed:2"}
    small = compress(model, CompressionPlan.uniform(graph, 0.5), inputs, graph=graph)
    assert small.cls_token.shape == (1, 1, 16) and small.pos_embed.shape == (1, 17, 16)


def test_split_sizes_and_channel_ranges_follow(traced):
    model, inputs, graph = _get(traced, "mixnet")
    small = compress(model, CompressionPlan.uniform(graph, 0.5), inputs, graph=graph)
    assert small.mix.splits == [c.in_channels for c in small.mix.convs] and sum(small.mix.splits) == 12
    model, inputs, graph = _get(traced, "ghostnet")
    small = compress(model, CompressionPlan.uniform(graph, 0.5), inputs, graph=graph)
    # out[:, :self.oup] keeps the kept channels of the range: oup follows
    assert small.ghost1.oup == small.ghost2.primary[0].in_channels < 30
    assert small.ghost2.oup == small.fc.in_features < 32


def test_channel_shuffle_prunes_equally_per_group(traced):
    _, _, graph = _get(traced, "shufflenet_unit")
    stem = graph.groups["stem"]
    assert stem.prunable
    # the shuffle interleaves the halves: channel j of both halves is one unit
    head_in = next(m for m in stem.members if m.layer == "head")
    assert head_in.channels.tolist()[:4] == [head_in.channels[0].item(), head_in.channels[0].item(),
                                            head_in.channels[2].item(), head_in.channels[2].item()]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_resources_are_predicted_exactly(traced, name):
    import random

    from slimtune.compressors import count_flops, count_params, model_size_bytes
    from slimtune.compressors.measures import ResourcePredictor

    model, inputs, graph = _get(traced, name)
    predictor = ResourcePredictor(graph, inputs)
    rng = random.Random(name)
    plan = CompressionPlan.from_sparsities({g.name: rng.uniform(0.1, 0.8) for g in graph.prunable_groups()})
    small = compress(model, plan, inputs, graph=graph)
    p = predictor.predict(plan)
    measured = (float(count_flops(small, inputs)["macs"].sum()), count_params(small)[0], model_size_bytes(small).total_bytes)
    assert (p.flops, p.params, p.size) == measured
    assert p.flops < predictor.dense.flops


def test_attention_products_are_counted(traced):
    from slimtune.compressors import count_flops

    model, inputs, graph = _get(traced, "hf_bert")
    table = count_flops(model, inputs).set_index("layer")
    row = table.loc["bert.encoder.layer.0.attention.self"]
    # QK^T and AV per sample: 4 heads x 12 x 12 positions x (8 + 8) head dims
    assert row["macs"] == 4 * 12 * 12 * 16
    heads = graph.groups["bert.encoder.layer.0.attention.self.query"]
    assert heads.computes and heads.computes[0].layer == "bert.encoder.layer.0.attention.self"
    small = compress(model, CompressionPlan.from_sparsities({heads.name: 0.5}), inputs, graph=graph)
    assert count_flops(small, inputs).set_index("layer").loc["bert.encoder.layer.0.attention.self", "macs"] == 2 * 12 * 12 * 16


@pytest.mark.parametrize("name", ["hf_llama_gqa", "mixnet"])
def test_activation_criteria_on_exported_graphs(traced, name):
    """apoz records activations by running the captured program, on batches of other sizes too."""
    model, inputs, graph = _get(traced, name)
    data = [ZOO[name].inputs(4), ZOO[name].inputs(5)]
    plan = CompressionPlan.uniform(graph, 0.5, "apoz")
    masked = compress(model, plan, inputs, speedup=False, data=data, graph=graph).eval()
    small = compress(model, plan, inputs, data=data, graph=graph).eval()
    with torch.no_grad():
        assert _relative_diff(output_tensors(masked(*inputs)), output_tensors(small(*inputs))) <= 1e-4


def test_masks_applied_twice_keep_the_intersection_in_layer_norms(traced):
    """Gradual pruning masks a model again: its layer norms keep what both selections keep."""
    from slimtune.compressors import apply_channel_masks
    from slimtune.compressors.handlers.norms import KeptChannels

    model, inputs, graph = _get(traced, "hf_bert")
    masked = compress(model, CompressionPlan(), inputs, speedup=False, graph=graph)
    hidden = graph.groups["bert.embeddings.word_embeddings"]
    apply_channel_masks(masked, graph, {hidden.name: torch.tensor([0, 1])})
    apply_channel_masks(masked, graph, {hidden.name: torch.tensor([5])})
    hooks = [h for h in masked.bert.embeddings.LayerNorm._forward_hooks.values() if isinstance(h, KeptChannels)]
    assert len(hooks) == 1 and hooks[0].keep.tolist() == [c for c in range(32) if c not in (0, 1, 5)]
    small = compress(model, CompressionPlan.from_sparsities({hidden.name: 3 / 32}), inputs, graph=graph)
    assert small.bert.embeddings.LayerNorm.normalized_shape == (29,)
