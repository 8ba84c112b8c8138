"""``scop``: scientific control with knockoff features (SCOP).

Tang, Wang, Xu, Tao, Xu, Xu, Xu, "SCOP: Scientific Control for Reliable Neural Network Pruning",
NeurIPS 2020 (https://arxiv.org/abs/2010.10732). A filter is important when its *real* feature helps
the task more than a *knockoff* feature does: a control that looks like the real one but carries no
information about the label beyond it. The method, as implemented here:

1. Fit a knockoff generator to the inputs of the calibration batches (``ctx.data``):
   :class:`~slimtune.compressors.criteria.knockoff.GaussianKnockoff` (second-order model-X knockoffs,
   criterion ``scop``) or :class:`~slimtune.compressors.criteria.knockoff.VAEKnockoff` (``scop_vae``).
   The paper shows that knockoffs of the input give knockoff features at every layer.
2. For each batch, draw a knockoff batch and run it through the network unchanged; the output of every
   producing layer of every prunable group is its *knockoff feature* ``f̃``.
3. Run the real batch with every group's producers' outputs replaced by ``β ⊙ f + β̃ ⊙ f̃``, one pair
   of *control scaling factors* per group channel with ``β + β̃ = 1``, ``β, β̃ ∈ [0, 1]``
   (``β = sigmoid(a)``); all groups' factors are learned jointly on the task loss of these outputs
   (``ctx.loss_fn``, default cross-entropy) with Adam, the network's weights fixed, in eval mode, for
   ``epochs`` passes over the calibration batches at a learning rate that keeps ``β`` from saturating
   (:data:`TRAVEL`).
4. Score each channel by ``β − β̃``: channels whose real feature does not beat its knockoff
   (``β ≤ β̃``, score ``≤ 0``) go first; pruning takes the lowest scores to the plan's sparsity.

One run serves every group of a compression (``ctx.cache``): every prunable group of ``ctx.graph``
(and the scored group) is mixed and learned at once, as in the paper. Only producers whose output
holds the channels along a known dimension are mixed (convolutions: dim 1; ``Linear``, ``Embedding``,
Hugging Face ``Conv1D``: the last dim); a group with none of them is an error. The network sees the
first positional input's knockoff; further inputs are passed as they are.

Each scored group's factors are recorded in ``ctx.report[group]``: ``scores``, ``beta``,
``beta_knockoff``, ``beaten`` (the channels with ``β ≤ β̃``), the ``generator`` and its ``s`` (Gaussian);
:func:`~slimtune.compressors.pruning.select_channels` adds the channels it ``pruned`` and ``kept``.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, compress, trace
    >>> from slimtune.examples.digits import digits_cnn
    >>> torch.manual_seed(0) is not None
    True
    >>> model, x = digits_cnn(width=4), torch.randn(64, 1, 8, 8)
    >>> data = [(x, torch.randint(0, 10, (64,)))]
    >>> plan = CompressionPlan.uniform(trace(model, x[:1]), 0.5, "scop")
    >>> compress(model, plan, x[:1], data=data).features[0].out_channels
    2
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune import devices
from slimtune.compressors._outputs import default_loss
from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import eval_mode, iter_batches, split_batch
from slimtune.compressors.criteria.knockoff import KnockoffGenerator, make_knockoff
from slimtune.errors import CriterionError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group
    from slimtune.compressors.criteria._base import CriterionContext

EPOCHS = 25
"""Passes over the calibration batches while learning the control scales."""
TRAVEL = 1.0
"""Default Adam learning rate × steps: how far (about) each logit ``a`` of ``β = sigmoid(a)`` can move, so
``β`` stays within ``sigmoid(±1) = [0.27, 0.73]``. Adam moves every logit with a consistent gradient at
the same rate, so a longer run saturates every useful channel's ``β`` near 1 and the ranking loses the
evidence; on a small calibration set that happens well before the release's 20 epochs end (measured on
digits, see ``docs/algorithms.md``)."""
BETAS = (0.5, 0.9)
"""Adam's betas, those of the paper's release."""
SEED = 0
"""Seed of the knockoff draws (and of the VAE's fit): scores are reproducible."""

_OUT_DIM: dict[type, int] = {nn.modules.conv._ConvNd: 1, nn.Linear: -1, nn.Embedding: -1}
"""Output dimension holding the channels, by producing layer kind."""
_OUT_DIM_BY_NAME: dict[str, int] = {"Conv1D": -1}
"""The same for classes known by name only (Hugging Face ``Conv1D``, a transposed Linear)."""
_PRODUCERS = ("out", "dw")


def out_dim(module: nn.Module) -> int | None:
    """The dimension of ``module``'s output that holds its output channels (``None``: unknown kind)."""
    for kind, dim in _OUT_DIM.items():
        if isinstance(module, kind):
            return dim
    return _OUT_DIM_BY_NAME.get(type(module).__name__)


@register_criterion("scop")
def scop(
    group: Group,
    ctx: CriterionContext,
    *,
    generator: str = "gaussian",
    epochs: int = EPOCHS,
    lr: float | None = None,
    seed: int = SEED,
) -> torch.Tensor:
    """Per channel, ``β − β̃``: its real feature's control scale against its knockoff's.

    Args:
        group: The group to score.
        ctx: The context: ``ctx.model``, ``ctx.data`` with ``(inputs, targets)`` batches (floating-point
            inputs), ``ctx.loss_fn`` (default cross-entropy on the logits), ``ctx.max_batches``,
            ``ctx.graph`` (its prunable groups are learned together); ``ctx.cache`` keeps the factors of
            every group, ``ctx.report`` receives this group's.
        generator: ``"gaussian"`` or ``"vae"`` (:mod:`~slimtune.compressors.criteria.knockoff`).
        epochs: Passes over the calibration batches.
        lr: Adam learning rate of the logits of ``β``; None: :data:`TRAVEL` / (``epochs`` × batches).
        seed: Seed of the knockoff draws.

    Raises:
        CriterionError: No data, batches without targets, inputs that are not floating point, a loss that
            is not a scalar, or a group without a producer whose output can be mixed.
    """
    key = f"scop.{generator}.{epochs}.{lr}.{seed}"  # one learning per setting and compression
    betas: dict[str, torch.Tensor] = ctx.cache.setdefault(key, {})
    if group.name not in betas:
        groups = {g.name: g for g in _groups_to_learn(ctx) if g.name not in betas}
        groups[group.name] = group
        knockoff, learned = learn_control_scales(ctx, list(groups.values()), generator, epochs, lr, seed)
        betas.update(learned)
        ctx.cache[key + ".generator"] = knockoff
    beta = betas[group.name]
    scores = beta - (1.0 - beta)
    knockoff = ctx.cache.get(key + ".generator")
    ctx.report[group.name] = {
        "criterion": "scop",
        "generator": generator,
        **({"s": round(float(knockoff.s), 6)} if hasattr(knockoff, "s") else {}),
        "scores": _rounded(scores),
        "beta": _rounded(beta),
        "beta_knockoff": _rounded(1.0 - beta),
        "beaten": torch.nonzero(scores <= 0).flatten().tolist(),
    }
    return scores.float()


@register_criterion("scop_vae")
def scop_vae(group: Group, ctx: CriterionContext) -> torch.Tensor:
    """:func:`scop` with knockoffs from a small VAE (:class:`~slimtune.compressors.criteria.knockoff.VAEKnockoff`)."""
    return scop(group, ctx, generator="vae")


def _groups_to_learn(ctx: CriterionContext) -> list[Group]:
    """The prunable groups of ``ctx.graph`` that have a producer to mix (none without a graph)."""
    graph = ctx.graph
    if graph is None or not hasattr(graph, "prunable_groups"):
        return []
    return [g for g in graph.prunable_groups() if _sites(ctx.model, [g], strict=False)]


def _rounded(t: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in t.tolist()]


class ControlScales(nn.Module):
    """The logits ``a`` of the control scales of some groups: ``β = sigmoid(a)``, ``β̃ = 1 − β``.

    Args:
        sizes: ``{group name: number of channels}``; every logit starts at 0 (``β = β̃ = ½``).
        device: Where the logits live (the model's device).
    """

    def __init__(self, sizes: dict[str, int], device: torch.device) -> None:
        super().__init__()
        self.names = list(sizes)
        self.logits = nn.ParameterList(
            [nn.Parameter(torch.zeros(n, dtype=torch.float32, device=device)) for n in sizes.values()]
        )

    def beta(self) -> dict[str, torch.Tensor]:
        """``{group: β}`` (differentiable)."""
        return {name: torch.sigmoid(a) for name, a in zip(self.names, self.logits)}


_Site = tuple[str, torch.Tensor, torch.Tensor]  # (group, positions along the output dim, group channels)


def _sites(model: nn.Module, groups: Sequence[Group], strict: bool = True) -> dict[str, list[_Site]]:
    """``{layer: [(group, positions, channels), ...]}``: where each group's producers' outputs are mixed.

    With ``strict``, a member layer missing from ``model`` or a group without a producer to mix is an error.
    """
    sites: dict[str, list[_Site]] = {}
    for g in groups:
        found = False
        for m in g.members:
            if m.role not in _PRODUCERS or m.positions.numel() == 0:
                continue
            try:
                module = model.get_submodule(m.layer)
            except AttributeError:
                if strict:
                    raise CriterionError(
                        f"criterion 'scop': group member layer {m.layer!r} is not a submodule of the model"
                    ) from None
                continue
            if out_dim(module) is None:
                continue
            sites.setdefault(m.layer, []).append((g.name, m.positions.long(), m.channels.long()))
            found = True
        if strict and not found:
            roles = sorted({m.role for m in g.members})
            raise CriterionError(
                f"criterion 'scop': group {g.name!r} has no producing Conv, Linear or Embedding layer whose output "
                f"can be mixed with its knockoff (member roles {roles}); score this group with another criterion"
            )
    return sites


class _Mixer:
    """Forward hooks on the producers: record knockoff features, then mix them into the real ones."""

    def __init__(self, model: nn.Module, sites: dict[str, list[_Site]], scales: ControlScales) -> None:
        self.model = model
        self.sites = sites
        self.scales = scales
        self.mode = "off"
        self.recorded: dict[str, list[torch.Tensor]] = {}
        self.replay: dict[str, int] = {}
        self.beta: dict[str, torch.Tensor] = {}

    @contextmanager
    def hooked(self) -> Iterator[_Mixer]:
        handles = [self.model.get_submodule(layer).register_forward_hook(self._hook(layer)) for layer in self.sites]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def record(self) -> None:
        self.mode, self.recorded = "record", {layer: [] for layer in self.sites}

    def mix(self) -> None:
        self.mode, self.replay, self.beta = "mix", dict.fromkeys(self.sites, 0), self.scales.beta()

    def _hook(self, layer: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or self.mode == "off":
                return None
            if self.mode == "record":
                self.recorded[layer].append(out.detach().clone())  # a later in-place op must not change it
                return None
            i = self.replay[layer]
            self.replay[layer] = i + 1
            knock = self.recorded[layer][i]
            if knock.shape != out.shape:
                raise CriterionError(
                    f"criterion 'scop': layer {layer!r} gave outputs of shape {tuple(out.shape)} on the data and "
                    f"{tuple(knock.shape)} on its knockoff; the model's layers must not depend on input values' shape"
                )
            dim = out_dim(module) % out.ndim
            scale = torch.ones(out.shape[dim], dtype=out.dtype, device=out.device)
            for name, pos, ch in self.sites[layer]:
                scale = scale.index_put((pos.to(out.device),), self.beta[name][ch.to(out.device)].to(out.dtype))
            view = [1] * out.ndim
            view[dim] = -1
            scale = scale.view(view)
            return knock + scale * (out - knock)  # β ⊙ f + (1 − β) ⊙ f̃

        return hook


def learn_control_scales(
    ctx: CriterionContext,
    groups: Sequence[Group],
    generator: str = "gaussian",
    epochs: int = EPOCHS,
    lr: float | None = None,
    seed: int = SEED,
) -> tuple[KnockoffGenerator, dict[str, torch.Tensor]]:
    """Fit the knockoff generator and learn the control scales of ``groups`` jointly (SCOP's steps 1-3).

    The model's parameters are frozen (``requires_grad`` restored afterwards) and the model runs in eval
    mode (training flags restored), so its weights and BatchNorm statistics do not change.

    Returns:
        ``(fitted generator, {group: β on the CPU})``.
    """
    if epochs < 1:
        raise CriterionError(f"criterion 'scop': epochs must be at least 1, got {epochs}")
    model = ctx.model
    sites = _sites(model, groups)
    batches = list(iter_batches(ctx, "scop"))
    for i, batch in enumerate(batches):
        args, targets = split_batch(batch)
        if targets is None:
            raise CriterionError(
                f"criterion 'scop' needs batches of (inputs, targets) to compute the task loss; "
                f"batch {i} has no targets"
            )
        if not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            kind = args[0].dtype if isinstance(args[0], torch.Tensor) else type(args[0]).__name__
            raise CriterionError(
                f"criterion 'scop' draws knockoffs of the inputs, which must be floating point; the inputs of batch "
                f"{i} are {kind} (token ids or other discrete inputs have no knockoff here: use 'taylor' instead)"
            )
    knockoff = make_knockoff(generator, seed)
    knockoff.fit(torch.cat([split_batch(b)[0][0].detach().to("cpu", torch.float32) for b in batches]))
    device = devices.model_device(model)
    loss_fn = ctx.loss_fn or default_loss
    scales = ControlScales({g.name: g.size for g in groups}, device)
    lr = TRAVEL / (epochs * len(batches)) if lr is None else lr
    optimizer = torch.optim.Adam(scales.parameters(), lr=lr, betas=BETAS)
    draws = torch.Generator(device="cpu").manual_seed(seed)
    mixer = _Mixer(model, sites, scales)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with eval_mode(model), mixer.hooked(), torch.enable_grad():
            for _ in range(epochs):
                for batch in batches:
                    args, targets = split_batch(batch)
                    args = devices.move(args, device)
                    knock = knockoff.sample(args[0], draws)
                    mixer.record()
                    with torch.no_grad():
                        model(knock, *args[1:])
                    mixer.mix()
                    loss = loss_fn(model(*args), devices.move(targets, device))
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise CriterionError("criterion 'scop': loss_fn must return a scalar tensor")
                    if not loss.requires_grad:
                        raise CriterionError("criterion 'scop': the loss does not depend on the mixed features")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    mixer.mode = "off"
    finally:
        mixer.recorded = {}
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    with torch.no_grad():
        return knockoff, {name: b.detach().cpu() for name, b in scales.beta().items()}
