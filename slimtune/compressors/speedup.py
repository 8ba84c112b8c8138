"""Physical speedup: rebuild a channel-pruned model as smaller dense layers.

Every pruned channel is removed wherever it appears: output rows (and bias) of its producers,
entries of the batch-norms it passes, rows and group counts of depthwise / grouped convolutions,
and input columns of its consumers (a flatten → linear consumer loses the channel's whole block
of features; a consumer of a concatenation loses the channel's slice). The forward code of the
model is unchanged, so the smaller model computes what the masked model computes.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace, CompressionPlan, compress, speedup
    >>> from slimtune.examples.models import resnet20
    >>> model, x = resnet20(), torch.randn(2, 3, 32, 32)
    >>> plan = CompressionPlan.uniform(trace(model, x), 0.5)
    >>> masked = compress(model, plan, x, speedup=False)
    >>> small = speedup(masked, x)
    >>> bool(torch.allclose(small.eval()(x), masked.eval()(x), atol=1e-4))
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from slimtune.compressors.pruning import clone_model, make_permanent, removed_positions
from slimtune.errors import SlimtuneError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph


class SpeedupError(SlimtuneError):
    """The pruned model could not be rebuilt (names the layer or the failing forward pass)."""


def speedup(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    inplace: bool = False,
) -> nn.Module:
    """Rebuild a channel-masked model (from ``compress(..., speedup=False)``) as a smaller model.

    A channel counts as pruned when it is exactly zero in all its producers (weight rows and bias)
    and batch-norms (weight and bias): then it is zero everywhere, and removing it changes nothing.

    Args:
        model: The masked model. Not modified unless ``inplace``.
        example_inputs: Inputs with a batch dimension, used to trace the model.
        inplace: Modify ``model`` itself.

    Returns:
        The physically smaller model (masks folded into plain weights).
    """
    from slimtune.compressors.graph import trace

    model = model if inplace else clone_model(model)
    make_permanent(model)
    graph = trace(model, example_inputs, strict=True)
    pruned = _zero_channels(model, graph)
    apply_speedup(model, graph, pruned)
    check_forward(model, example_inputs)
    return model


def _zero_channels(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    pruned = {}
    for g in graph.prunable_groups():
        dead = torch.ones(g.size, dtype=torch.bool)
        for m in g.members:
            if m.role == "in":
                continue
            module = model.get_submodule(m.layer)
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if p is None:
                    continue
                rows = p.detach()[m.positions].reshape(len(m.positions), -1)
                nonzero = rows.abs().sum(dim=1) != 0
                alive = torch.zeros(g.size, dtype=torch.long).index_add_(0, m.channels, nonzero.long())
                dead &= alive == 0
        if not dead.any():
            continue
        per_block = g.size // g.blocks
        counts = dead.view(g.blocks, per_block).sum(dim=1)
        if (counts != counts[0]).any() or counts[0] >= per_block:
            raise SpeedupError(
                f"group {g.name!r}: zeroed channels {dead.nonzero().flatten().tolist()} do not leave "
                f"equal non-empty blocks of {per_block} (grouped conv constraint)"
            )
        pruned[g.name] = dead.nonzero().flatten()
    return pruned


def apply_speedup(model: nn.Module, graph: ModelGraph, pruned: dict[str, torch.Tensor]) -> nn.Module:
    """Remove the ``pruned`` channels (``{group: channel ids}``) from ``model``'s layers in place."""
    removed = removed_positions(graph, pruned)
    layers = {layer for layer, _ in removed}
    for layer in layers:
        module = model.get_submodule(layer)
        r = {role: removed.get((layer, role)) for role in ("out", "in", "norm", "dw")}
        try:
            if isinstance(module, nn.modules.conv._ConvNd):
                _slim_conv(module, r)
            elif isinstance(module, nn.Linear):
                _slim_linear(module, r)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
                _slim_norm(module, r["norm"])
            else:
                raise SpeedupError(f"layer {layer!r} ({type(module).__name__}) cannot be resized")
        except SpeedupError:
            raise
        except Exception as e:
            raise SpeedupError(f"layer {layer!r}: {type(e).__name__}: {e}") from e
    return model


def check_forward(model: nn.Module, example_inputs: Any) -> None:
    """Run the rebuilt model once; a failure names the problem instead of surfacing later."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:
        raise SpeedupError(
            f"the rebuilt model fails on the example inputs ({type(e).__name__}: {e}); "
            "the forward code may hard-code a channel count"
        ) from e
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- per-layer slicing
def _keep(n: int, drop: torch.Tensor | None) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    if drop is not None:
        keep[drop] = False
    return keep.nonzero().flatten()


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _slim_conv(m: nn.modules.conv._ConvNd, r: dict[str, torch.Tensor | None]) -> None:
    w = m.weight.detach()
    if r["dw"] is not None:
        keep = _keep(m.out_channels, r["dw"])
        g = m.groups
        if g == m.in_channels:  # depthwise, multiplier k
            k = m.out_channels // m.in_channels
            new_w = w[keep]
            m.in_channels = len(keep) // k
            m.groups = m.in_channels
        else:  # grouped conv with in == out: same local channels kept inside every group
            per = m.in_channels // g
            blocks = [keep[(keep >= b * per) & (keep < (b + 1) * per)] - b * per for b in range(g)]
            if len({len(b) for b in blocks}) != 1:
                raise SpeedupError(f"unequal channels kept per group: {[len(b) for b in blocks]}")
            rows = [w[b * per + local][:, local] for b, local in enumerate(blocks)]
            new_w = torch.cat(rows, dim=0)
            m.in_channels = len(keep)
        m.out_channels = len(keep)
        _set_param(m, "weight", new_w)
        if m.bias is not None:
            _set_param(m, "bias", m.bias.detach()[keep])
        return
    keep_out = _keep(m.out_channels, r["out"])
    keep_in = _keep(m.in_channels, r["in"])
    if m.groups == 1:
        new_w = w[keep_out][:, keep_in]
    else:  # grouped conv: each group keeps its own outputs and its own (local) inputs
        g = m.groups
        outs = _per_group(keep_out, m.out_channels // g, g, "output")
        ins = _per_group(keep_in, m.in_channels // g, g, "input")
        new_w = torch.cat([w[b * (m.out_channels // g) + o][:, i] for b, (o, i) in enumerate(zip(outs, ins))])
    m.in_channels = len(keep_in)
    m.out_channels = len(keep_out)
    _set_param(m, "weight", new_w)
    if m.bias is not None:
        _set_param(m, "bias", m.bias.detach()[keep_out])


def _per_group(keep: torch.Tensor, per: int, groups: int, what: str) -> list[torch.Tensor]:
    """Kept indices of each conv group, local to the group; every group must keep as many."""
    local = [keep[(keep >= b * per) & (keep < (b + 1) * per)] - b * per for b in range(groups)]
    if len({len(x) for x in local}) != 1:
        raise SpeedupError(f"unequal {what} channels kept per group: {[len(x) for x in local]}")
    return local


def _slim_linear(m: nn.Linear, r: dict[str, torch.Tensor | None]) -> None:
    keep_out = _keep(m.out_features, r["out"])
    keep_in = _keep(m.in_features, r["in"])
    _set_param(m, "weight", m.weight.detach()[keep_out][:, keep_in])
    if m.bias is not None:
        _set_param(m, "bias", m.bias.detach()[keep_out])
    m.in_features, m.out_features = len(keep_in), len(keep_out)


def _slim_norm(m: nn.Module, drop: torch.Tensor | None) -> None:
    keep = _keep(m.num_features, drop)
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if t is not None:
            _set_param(m, name, t.detach()[keep])
    m.num_features = len(keep)
