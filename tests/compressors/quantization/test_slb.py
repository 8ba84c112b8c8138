"""``slb`` (Searching for Low-Bit weights): candidates, initialisation, annealing, gradients, training, freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, compress
from slimtune.compressors.quantization import (
    QuantizationError,
    anneal,
    export_int8,
    quant_wrappers,
    quantize_model,
    set_temperature,
    slb_candidates,
    slb_probabilities,
    unwrap,
)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _distance_to_grid(w: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """|w - nearest candidate of its output channel| for every weight of a Linear weight ``[out, in]``."""
    return (w.unsqueeze(-1) - candidates.unsqueeze(1)).abs().amin(dim=-1)


def test_candidates_are_the_2_pow_b_symmetric_levels_and_init_favours_the_nearest() -> None:
    q = quantize_model(_mlp(), {"0": (2, None)}, algorithm="slb")
    wrapper, w = q[0], q[0].layer.weight.detach()
    cands = slb_candidates(wrapper)
    assert cands.shape == (16, 4)
    m = w.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(cands, m * torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    # the largest logit of every weight is its nearest candidate
    nearest = (w.unsqueeze(-1) - cands.unsqueeze(1)).abs().argmin(dim=-1)
    assert torch.equal(wrapper.slb_logits.argmax(dim=-1), nearest)
    # 1 bit: ±mean|w| per channel (XNOR-Net's α)
    one = quantize_model(_mlp(), {"0": (1, None)}, algorithm="slb")[0]
    alpha = one.layer.weight.detach().abs().mean(dim=1, keepdim=True)
    assert torch.allclose(slb_candidates(one), alpha * torch.tensor([-1.0, 1.0]))


def test_annealing_concentrates_each_distribution_on_one_candidate() -> None:
    q = quantize_model(_mlp(), {"0": (3, None), "2": (3, None)}, algorithm="slb").train()
    wrapper = q[0]
    cands = slb_candidates(wrapper)
    mean_max, min_max, grid_err = [], [], []
    for t in (1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4):
        set_temperature(q, t)
        p = slb_probabilities(wrapper).detach()
        assert torch.allclose(p.sum(-1), torch.ones(()))
        mean_max.append(float(p.amax(-1).mean()))
        min_max.append(float(p.amax(-1).min()))
        grid_err.append(float((_distance_to_grid(wrapper.quantized_weight().detach(), cands) / cands[:, -1:]).max()))
    assert all(a <= b + 1e-6 for a, b in zip(mean_max, mean_max[1:])), mean_max
    assert mean_max[0] < 0.9 and min_max[0] < 0.6  # soft at T = 1
    assert min_max[-1] > 0.99  # every weight's distribution is (almost) one-hot
    assert grid_err[0] > 1e-2 and grid_err[-1] < 1e-3  # the forward weight becomes a grid value
    # the low-temperature soft weight is the argmax candidate, which is what eval mode uses
    hard = wrapper.eval().quantized_weight().detach()
    assert float(_distance_to_grid(hard, cands).max()) < 1e-6
    assert torch.allclose(wrapper.train().quantized_weight(), hard, atol=1e-3 * float(cands.abs().max()))
    # T = 0 is the hard argmax in training mode too
    set_temperature(q, 0)
    assert torch.equal(wrapper.quantized_weight(), hard)


def test_gradients_reach_the_logits_not_the_float_weight() -> None:
    q = quantize_model(_mlp(), {"0": (2, None), "2": (2, None)}, algorithm="slb").train()
    q(torch.randn(32, 8)).pow(2).mean().backward()
    for name in ("0", "2"):
        assert q[int(name)].slb_logits.grad is not None and float(q[int(name)].slb_logits.grad.abs().sum()) > 0
        assert q[int(name)].layer.weight.grad is None


def test_short_training_with_annealing_reduces_the_loss_of_the_discrete_network() -> None:
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = teacher(x) + 0.5
    q = quantize_model(_mlp(), {"0": (2, None), "2": (2, None)}, algorithm="slb")
    loss = nn.functional.mse_loss

    def hard_loss() -> float:
        with torch.no_grad():
            return float(loss(q.eval()(x), y))

    before = hard_loss()
    opt = torch.optim.Adam(q.parameters(), lr=0.1)
    q.train()
    soft = []
    for step in range(40):
        opt.zero_grad()
        value = loss(q(x), y)
        value.backward()
        opt.step()
        soft.append(value.item())
        if step % 3 == 2:
            anneal(q, 0.7)  # every 3 steps: T = 1 → 0.7^13 ≈ 0.01
    assert soft[-1] < 0.5 * soft[0]
    assert hard_loss() < 0.5 * before  # the network of argmax candidates improved as well


def test_freeze_unwrap_and_export_use_the_argmax_candidates() -> None:
    q = quantize_model(_mlp(), {"0": (4, None), "2": (4, None)}, algorithm="slb")
    with torch.no_grad():
        q[0].slb_logits.add_(torch.randn_like(q[0].slb_logits))  # as if trained
    hard = q.eval()[0].quantized_weight().detach()
    expected = torch.gather(
        slb_candidates(q[0]).unsqueeze(1).expand(-1, 8, -1), -1, q[0].slb_logits.argmax(-1, keepdim=True)
    ).squeeze(-1)
    assert torch.equal(hard, expected)
    plain = unwrap(q)
    assert isinstance(plain[0], nn.Linear) and torch.equal(plain[0].weight, hard)
    x = torch.randn(16, 8)
    with torch.no_grad():
        assert torch.allclose(plain(x), q(x), atol=1e-6)
        # the dynamic int8 export stores the 4-bit candidates in int8 (error ≤ half an int8 step)
        int8 = export_int8(q, x, mode="dynamic")
        assert float((int8(x) - q(x)).norm() / q(x).norm()) < 0.02


def test_state_dict_round_trip_and_compress_with_a_plan() -> None:
    model = _mlp()
    q = set_temperature(quantize_model(model, {"0": (2, None)}, algorithm="slb"), 0.25)
    fresh = quantize_model(model, {"0": (2, None)}, algorithm="slb")
    fresh.load_state_dict(q.state_dict())
    assert float(fresh[0].slb_temperature) == 0.25 and torch.equal(fresh[0].slb_logits, q[0].slb_logits)

    x = torch.randn(64, 8)
    plan = CompressionPlan(quantize={"0": QuantSpec(2, 8), "2": QuantSpec(2, 8)})
    c = compress(model, plan, x[:1], data=[x], quant_algorithm="slb")
    assert {w.algorithm.name for w in quant_wrappers(c).values()} == {"slb"}
    assert anneal(c, 0.5) == pytest.approx(0.5)


def test_a_plan_names_slb_and_the_builtin_fine_tune_anneals_then_hardens_it() -> None:
    from slimtune.compressors.training import FinetuneConfig, finetune
    from slimtune.errors import PlanError

    model, x = _mlp(), torch.randn(64, 8)
    plan = CompressionPlan(quantize={"0": QuantSpec(2, None), "2": QuantSpec(3, None)}, quant_algorithm="slb")
    assert CompressionPlan.from_dict(plan.to_dict()) == plan
    q = compress(model, plan, x[:1])  # the plan's algorithm, no argument needed
    assert {w.algorithm.name for w in quant_wrappers(q).values()} == {"slb"}
    seen: list[float] = []

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(float(q[0].slb_temperature))  # the temperature this step trains at
        return nn.functional.mse_loss(out, y)

    total = 10
    finetune(q, [(x, x[:, :1])], FinetuneConfig(steps=total, lr=0.01, slb_final_temperature=0.01), loss_fn=loss)
    # geometric from 1 to 0.01 over the run: step k trains at 0.01 ** (k / total) ...
    assert seen == pytest.approx([0.01 ** (k / total) for k in range(total)])
    # ... and the run ends hard: training mode sees the argmax network that evaluation sees
    assert float(q[0].slb_temperature) == 0.0 and float(q[2].slb_temperature) == 0.0
    assert torch.equal(q[0].train().quantized_weight(), q[0].eval().quantized_weight())
    # slb_final_temperature None: the loop leaves the temperature to the caller
    other = set_temperature(compress(model, plan, x[:1]), 0.5)
    finetune(
        other, [(x, x[:, :1])], FinetuneConfig(steps=3, slb_final_temperature=None), loss_fn=nn.functional.mse_loss
    )
    assert float(other[0].slb_temperature) == 0.5
    with pytest.raises(PlanError, match=r"finetune.slb_final_temperature: must be a number in \(0, inf\), got 0"):
        FinetuneConfig(slb_final_temperature=0)
    with pytest.raises(
        PlanError, match=r"layer '0': bits_w 8 is above what quant_algorithm 'slb' supports \(at most 4\)"
    ):
        CompressionPlan(quantize={"0": QuantSpec(8, None)}, quant_algorithm="slb").validate()
    with pytest.raises(PlanError, match=r"plan.quant_algorithm: unknown algorithm 'nope'"):
        CompressionPlan(quantize={"0": QuantSpec(4, None)}, quant_algorithm="nope").validate()


def test_errors_name_the_layer_and_the_value() -> None:
    with pytest.raises(QuantizationError, match=r"layer '0': algorithm 'slb' keeps 2\^bits logits.*got 8"):
        quantize_model(_mlp(), {"0": (8, None)}, algorithm="slb")
    with pytest.raises(QuantizationError, match=r"layer 'rnn' is a LSTM: algorithm 'slb' supports Conv/Linear"):
        quantize_model(_rnn(), {"rnn": (2, None)}, algorithm="slb")
    q = quantize_model(_mlp(), {"0": (2, None)}, algorithm="slb")
    with pytest.raises(QuantizationError, match=r"temperature must be a number ≥ 0, got -1"):
        set_temperature(q, -1)
    with pytest.raises(QuantizationError, match=r"anneal factor must be in \(0, 1\], got 1.5"):
        anneal(q, 1.5)
    with pytest.raises(QuantizationError, match="no layer quantized with algorithm 'slb'"):
        anneal(quantize_model(_mlp(), {"0": (2, None)}, algorithm="ste"))


def _rnn() -> nn.Module:
    m = nn.Module()
    m.rnn = nn.LSTM(4, 4)
    return m
