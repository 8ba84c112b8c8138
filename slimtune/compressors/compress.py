"""``compress``: apply a :class:`CompressionPlan` to a copy of a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from slimtune.compressors.criteria import CriterionContext
from slimtune.compressors.graph import ModelGraph, apply_channel_selection, trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.compressors.pruning import (
    apply_unstructured_masks,
    clone_model,
    make_permanent,
    select_channels,
)
from slimtune.errors import PlanError


def compress(
    model: nn.Module,
    plan: CompressionPlan | Mapping[str, Any],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    speedup: bool = True,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    max_batches: int | None = None,
    graph: ModelGraph | None = None,
    observer: str = "minmax",
    quant_algorithm: str | None = None,
    report: dict[str, Any] | None = None,
) -> nn.Module:
    """Return a compressed copy of ``model``; the model itself is never modified.

    Args:
        model: The trained model.
        plan: A :class:`CompressionPlan` (or its dict form).
        example_inputs: Inputs with a batch dimension (a tensor or a tuple of tensors); moved to
            the model's device when they are elsewhere.
        speedup: With channel granularity, rebuild the model physically smaller (True) or keep
            its shapes and mask the pruned channels to zero (False). Unstructured plans always
            give a masked model (``torch.nn.utils.prune`` masks, kept in force during training).
        data: Batches for data-driven criteria (``taylor`` needs ``(inputs, targets)``;
            ``apoz`` and ``mean_activation`` need inputs); each batch, targets included, is moved to
            the model's device as it is used (:func:`slimtune.devices.move`), so a CPU
            ``DataLoader`` serves a model on a GPU.
        loss_fn: Loss for ``taylor`` (default cross-entropy).
        max_batches: Use at most this many batches of ``data``.
        graph: ``trace(model, example_inputs)`` when already at hand (a search traces once and
            compresses many times); groups refer to layers by name, so it serves every copy.
        observer: Activation-range observer for the plan's ``quantize`` layers (``minmax``,
            ``moving_average``, ``percentile``, ``kl``).
        quant_algorithm: Quantization algorithm (``ste``, ``ptq``, ``pact``, ``dorefa``, ``bnn``, ``slb``);
            None: the plan's ``quant_algorithm``, else ``ste``.
        report: A dict that receives what the criteria reported per group (``{group: {...}}``: e.g.
            ``scop``'s control scales, and the channels ``pruned`` and ``kept``); a trial stores it in its
            ``compressor_info`` under ``criteria``.

    Each group loses :meth:`plan.n_prune(group) <CompressionPlan.n_prune>` channels: with
    ``plan.channel_multiple`` (8, 16) its kept channels are a multiple of it
    (:func:`~slimtune.compressors.plan.round_kept` says what happens at the edges), the counts the
    resource predictor and the latency table predict.

    Pruning comes first (and speedup), then quantization: the plan's ``quantize`` layers are
    wrapped in fake-quantizers (weights per channel at ``bits_w``; inputs at ``bits_a`` with a
    range calibrated on ``data``, then frozen). The result trains with straight-through gradients
    and exports to real int8 kernels with :func:`~slimtune.compressors.quantization.export_int8`.

    Devices: the copy stays on the device of ``model`` (a model on ``cuda:1`` gives a compressed
    model on ``cuda:1``); masks, sliced weights and index tensors are made on the weights' device,
    and the channel scores are ranked on the CPU.

    ``compress`` is the ``oneshot`` compressor. A plan naming a training compressor (``agp``,
    ``admm``, ``lottery``, ``slimming``) is refused with a :class:`~slimtune.errors.PlanError`: such
    a plan is reached by training, with
    :func:`slimtune.compressors.training.run_compressor`.

    Returns:
        The compressed model, in the training mode of ``model``, on its device.

    Example:
        >>> import torch
        >>> from slimtune.compressors import CompressionPlan, compress, trace, measure
        >>> from slimtune.examples.models import vgg_small
        >>> model, x = vgg_small(), torch.randn(1, 3, 32, 32)
        >>> small = compress(model, CompressionPlan.uniform(trace(model, x), 0.5), x)
        >>> measure(small, x, latency=False).flops < 0.5 * measure(model, x, latency=False).flops
        True
    """
    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.from_dict(plan)
    if plan.compressor != "oneshot":
        raise PlanError(
            f"plan.compressor is {plan.compressor!r}, a compressor that trains the model to reach the plan: "
            "run it with slimtune.compressors.training.run_compressor(model, plan, example_inputs, "
            "TrainingContext(...)); "
            "compress() prunes in one shot (plan.compressor 'oneshot')"
        )
    compressed = clone_model(model)
    if graph is None:
        graph = trace(compressed, example_inputs)
    plan.validate(graph)
    pruned = None
    if plan.granularity == "channel":
        ctx = CriterionContext(compressed, graph, data, loss_fn, max_batches)
        pruned = select_channels(graph, plan, ctx)
        if report is not None:
            report.update(ctx.report)
    return finalize(
        compressed, plan, example_inputs, graph, pruned, speedup, data, max_batches, observer, quant_algorithm
    )


def finalize(
    model: nn.Module,
    plan: CompressionPlan,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    graph: ModelGraph,
    pruned: Mapping[str, torch.Tensor] | None,
    speedup: bool = True,
    data: Iterable[Any] | None = None,
    max_batches: int | None = None,
    observer: str = "minmax",
    quant_algorithm: str | None = None,
) -> nn.Module:
    """Prune ``model`` in place to a chosen selection, speed it up and quantize it as ``plan`` says.

    The last steps of :func:`compress`, for compressors that choose the channels themselves (training
    compressors). ``pruned`` is ``{group: channel ids}`` for channel plans; for unstructured plans it is
    ``{layer: boolean keep-mask of the weight}``, or None to select by the plan's criteria. Existing
    ``torch.nn.utils.prune`` masks are folded into the weights first.
    """
    make_permanent(model)
    if plan.granularity == "unstructured":
        if pruned is None:
            apply_unstructured_masks(model, plan)
        else:
            for layer, keep in pruned.items():
                module = model.get_submodule(layer)
                torch_prune.custom_from_mask(module, "weight", keep.to(module.weight.device))
    else:
        apply_channel_selection(model, graph, pruned or {}, example_inputs, speedup)
    if plan.factorize:
        from slimtune.compressors.lowrank import factorize

        factorize(model, plan.factorize)
    if plan.quantize:
        algorithm = quant_algorithm or plan.quant_algorithm or "ste"
        _quantize(model, plan, data, max_batches, observer, algorithm)
    return model


def _quantize(
    model: nn.Module,
    plan: CompressionPlan,
    data: Iterable[Any] | None,
    max_batches: int | None,
    observer: str,
    algorithm: str,
) -> None:
    from slimtune.compressors.quantization import calibrate, freeze, quantize_model

    needs_range = sorted(n for n, q in plan.quantize.items() if q.bits_a not in (None, 32))
    if needs_range and data is None:
        raise PlanError(
            f"plan.quantize sets activation bits for layer(s) {needs_range}: calibration batches are "
            "needed to set their ranges (pass data=...)"
        )
    was_training = model.training
    layers = dict(plan.quantize)
    for name in plan.factorize:  # a factorized layer is quantized as its factors
        if name in layers:
            spec = layers.pop(name)
            factors = model.get_submodule(name)
            layers.update({f"{name}.{i}": spec for i in range(len(factors))})
    quantize_model(model, layers, observer=observer, algorithm=algorithm, inplace=True)
    if needs_range:
        calibrate(model, data, max_batches=max_batches)
    freeze(model)
    model.train(was_training)
