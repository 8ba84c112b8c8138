"""Knockoff generators for :mod:`~slimtune.compressors.criteria.scop`: a Gaussian model-X knockoff and a small VAE.

A *knockoff* ``X̃`` of the data ``X`` mimics it (swapping any set of features between ``X`` and ``X̃``
leaves the joint distribution unchanged) while carrying no information about the label beyond ``X``
(``Y ⊥ X̃ | X``: it is drawn from ``X`` and noise only). SCOP feeds knockoffs through the network as a
control group. Both generators here are fitted to the inputs of the calibration batches and run on the
CPU (knockoff batches are moved to the model's device by the caller).

- :class:`GaussianKnockoff`: second-order model-X knockoffs (Candès, Fan, Janson, Lv, "Panning for
  gold: model-X knockoffs for high-dimensional controlled variable selection", JRSS-B 2018), the
  equicorrelated construction. On standardised features ``z`` with correlation ``R``::

      D = s·I,  s = min(2·λ_min(R), 1)
      z̃ = z − z R⁻¹ D + ε,   ε ~ N(0, 2D − D R⁻¹ D)

  so that ``Cov(z̃) = R`` and ``Cov(z, z̃) = R − D``. ``R`` is the sample correlation shrunk towards
  the identity (Ledoit-Wolf intensity unless ``shrinkage`` is given), which keeps ``λ_min`` and thus
  ``s`` away from 0. Constant features are their own knockoff (``s = 0`` for them). Inputs of more than
  ``max_features`` values (images larger than 1×32×32 or 3×16×16) are modelled at a lower resolution: the knockoff
  of the average-pooled image replaces the image's coarse part, its fine detail is kept.
- :class:`VAEKnockoff`: a small MLP variational auto-encoder (Kingma, Welling, ICLR 2014) with a
  Gaussian decoder; the knockoff of ``x`` decodes a sample of ``q(z|x)`` and adds the decoder's noise, so
  ``x`` and ``x̃`` are two draws given the same latent (exchangeable when the model fits). Trained for a
  fixed number of Adam steps, on the pooled images above ``max_features`` values as the Gaussian.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 5, generator=g).cumsum(1)  # correlated features
    >>> ko = GaussianKnockoff(shrinkage=0.0).fit(x)
    >>> xk = ko.sample(x, g)
    >>> xk.shape == x.shape, 0 < ko.s <= 1
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.errors import CriterionError

_CPU = torch.device("cpu")


class KnockoffGenerator(Protocol):
    """Fitted to a data set of inputs ``[N, ...]``, draws a knockoff of any batch of such inputs."""

    def fit(self, x: torch.Tensor) -> KnockoffGenerator: ...

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def _check_inputs(x: torch.Tensor, what: str, least: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a {x.dtype} tensor"
        raise CriterionError(
            f"{what}: inputs must be a floating-point tensor to draw knockoffs of, got {kind} "
            "(knockoffs of token ids or other discrete inputs are not defined: use another criterion, e.g. 'taylor')"
        )
    if x.ndim < 2 or x.shape[0] < least:
        raise CriterionError(
            f"{what}: inputs need a batch dimension and at least {least} sample(s), got shape {tuple(x.shape)}"
        )
    return x


class _Features:
    """What a generator models of a batch: the flattened inputs, or, for images of more than ``max_features``
    values, the flattened average-pooled images (the knockoff of the coarse image replaces it, the fine detail
    is kept: :meth:`_assemble`). Checks the inputs' shape against the fitted one."""

    max_features: int
    _shape: tuple[int, ...]
    _pooled: tuple[int, int] | None

    def _setup(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if self.max_features < 1:
            raise CriterionError(f"{what}: max_features must be positive, got {self.max_features}")
        x = _check_inputs(x, what, 2).detach().to(_CPU, torch.float32)
        self._shape = tuple(x.shape[1:])
        self._pooled = _pooled_size(self._shape, self.max_features, type(self).__name__)
        return self._features(x)

    def _batch(self, x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x on the CPU in float32, its features)``."""
        if not hasattr(self, "_shape"):
            raise CriterionError(f"{what}: call fit(data) first")
        x = _check_inputs(x, what)
        if tuple(x.shape[1:]) != self._shape:
            raise CriterionError(f"{what}: inputs of shape {tuple(x.shape[1:])} per sample, fitted on {self._shape}")
        xc = x.detach().to(_CPU, torch.float32)
        return xc, self._features(xc)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._pooled is not None:
            x = F.adaptive_avg_pool2d(x, self._pooled)
        return x.reshape(x.shape[0], -1)

    def _assemble(self, x: torch.Tensor, flat: torch.Tensor, knock: torch.Tensor) -> torch.Tensor:
        """The knockoff batch shaped as ``x``, from the features ``flat`` of ``x`` and their knockoff ``knock``."""
        if self._pooled is None:
            return knock.reshape(x.shape)
        delta = (knock - flat).reshape(x.shape[0], x.shape[1], *self._pooled)
        return x + F.interpolate(delta, size=x.shape[2:], mode="nearest")


@dataclass
class GaussianKnockoff(_Features):
    """Second-order (Gaussian) model-X knockoffs, equicorrelated construction.

    Args:
        shrinkage: Weight of the identity in the shrunk correlation ``(1 − δ)·S + δ·I``, in ``[0, 1]``;
            ``None``: the Ledoit-Wolf intensity estimated from the data.
        max_features: Above this many values per sample, images ``[N, C, H, W]`` are modelled at the
            largest average-pooled resolution within the limit (the covariance is ``p × p``).

    Attributes (after :meth:`fit`):
        mean, std: Per feature, of the modelled (possibly pooled) features.
        correlation: The shrunk correlation ``R`` of the non-constant features (float64).
        s: The equicorrelated ``s`` (``D = s·I`` on the standardised non-constant features).
        delta: The shrinkage intensity used.

    Example:
        >>> x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
        >>> GaussianKnockoff().fit(x).sample(x, torch.Generator().manual_seed(0)).shape
        torch.Size([500, 3])
    """

    shrinkage: float | None = None
    max_features: int = 1024
    mean: torch.Tensor = field(init=False, repr=False)
    std: torch.Tensor = field(init=False, repr=False)
    correlation: torch.Tensor = field(init=False, repr=False)
    s: float = field(init=False, default=0.0)
    delta: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise CriterionError(f"GaussianKnockoff: shrinkage must be in [0, 1] or None, got {self.shrinkage}")

    def fit(self, x: torch.Tensor) -> GaussianKnockoff:
        """Fit the mean, scale and shrunk correlation of ``x`` (``[N, ...]``); returns ``self``."""
        flat = self._setup(x, "GaussianKnockoff.fit").double()
        n = flat.shape[0]
        self.mean = flat.mean(0)
        self.std = flat.std(0, unbiased=False)
        self._live = self.std > 1e-8 * float(self.std.max().clamp_min(1e-300))
        z = (flat[:, self._live] - self.mean[self._live]) / self.std[self._live]
        q = z.shape[1]
        eye = torch.eye(q, dtype=torch.float64, device=_CPU)
        sample = z.T @ z / n  # a correlation matrix: unit diagonal by the standardisation
        self.delta = _ledoit_wolf(z, sample) if self.shrinkage is None else float(self.shrinkage)
        self.correlation = (1.0 - self.delta) * sample + self.delta * eye
        if q == 0:  # every feature constant: each is its own knockoff
            self.s = 0.0
            self._mean_map = self._noise_map = eye.float()
            return self
        lam, vec = torch.linalg.eigh(self.correlation)
        lam = lam.clamp_min(0.0)
        self.s = min(2.0 * float(lam.min()), 1.0)
        # z̃ = z A + ε B with A = I − s R⁻¹ and BᵀB = 2sI − s² R⁻¹, both diagonal in R's eigenbasis
        safe = lam.clamp_min(1e-300)
        shrink = torch.where(lam > 0, 1.0 - self.s / safe, torch.ones_like(lam))
        noise = torch.where(lam > 0, self.s * (2.0 - self.s / safe), torch.zeros_like(lam)).clamp_min(0.0)
        self._mean_map = ((vec * shrink) @ vec.T).float()
        self._noise_map = (noise.sqrt()[:, None] * vec.T).float()
        return self

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A knockoff of the batch ``x`` (same shape, dtype and device); ``generator`` is a CPU generator."""
        xc, flat = self._batch(x, "GaussianKnockoff.sample")
        live = self._live
        mean, std = self.mean[live].float(), self.std[live].float()
        z = (flat[:, live] - mean) / std
        eps = torch.randn(z.shape, generator=generator, device=_CPU, dtype=torch.float32)
        knock = flat.clone()
        knock[:, live] = mean + std * (z @ self._mean_map + eps @ self._noise_map)
        return self._assemble(xc, flat, knock).to(x.device, x.dtype)


def _pooled_size(shape: tuple[int, ...], max_features: int, who: str) -> tuple[int, int] | None:
    """``None`` when ``shape`` fits ``max_features``; else the ``(h, w)`` an image is average-pooled to."""
    p = math.prod(shape)
    if p <= max_features:
        return None
    if len(shape) != 3:
        raise CriterionError(
            f"{who}: {p} values per sample exceed max_features={max_features}, and only images "
            f"[C, H, W] can be pooled (got per-sample shape {shape}); raise max_features"
        )
    c, h, w = shape
    for k in range(2, max(h, w) + 1):
        hk, wk = math.ceil(h / k), math.ceil(w / k)
        if c * hk * wk <= max_features:
            return hk, wk
    raise CriterionError(f"{who}: {c} channels exceed max_features={max_features}; raise max_features")


def _ledoit_wolf(z: torch.Tensor, sample: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity towards the identity for standardised data ``z`` ``[n, p]``.

    Ledoit, Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", JMVA 2004:
    ``δ = min(b̄², d²) / d²`` with ``d² = ‖S − I‖²/p`` and ``b̄² = Σ_k ‖z_k z_kᵀ − S‖² / (n² p)``.
    """
    n, p = z.shape
    if p == 0:
        return 0.0
    d2 = float((sample - torch.eye(p, dtype=sample.dtype, device=_CPU)).square().sum()) / p
    if d2 <= 0.0:
        return 0.0
    # Σ_k ‖z_k z_kᵀ − S‖² = Σ_k ‖z_k‖⁴ − n ‖S‖²
    b2 = (float(z.square().sum(1).square().sum()) - n * float(sample.square().sum())) / (n * n * p)
    return min(max(b2, 0.0), d2) / d2


class _VAE(nn.Module):
    def __init__(self, p: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(p, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, p))
        self.log_var = nn.Parameter(torch.zeros(p, device=_CPU))  # the decoder's per-feature noise

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var.clamp(-10.0, 10.0)


@dataclass
class VAEKnockoff(_Features):
    """Knockoffs from a small MLP VAE with a Gaussian decoder, fitted on the standardised flattened inputs.

    Args:
        latent: Latent dimensions.
        hidden: Width of the encoder's and decoder's hidden layer.
        steps: Adam steps of the fit (mini-batches of ``batch_size``): a fixed budget, so the fit (and the
            scores made with it) do not depend on the machine's speed.
        lr: Adam learning rate.
        batch_size: Mini-batch size of the fit.
        max_features: As for :class:`GaussianKnockoff` (bounds the fit's cost: about 15 s on one CPU core at
            the defaults and 1024 features).
        seed: Seed of the initialisation, the mini-batch order and the reparametrisation noise (the global
            RNG is left as it was).

    Example:
        >>> x = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> VAEKnockoff(steps=20).fit(x).sample(x[:3], torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 4, 4])
    """

    latent: int = 16
    hidden: int = 128
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 128
    max_features: int = 1024
    seed: int = 0

    def fit(self, x: torch.Tensor) -> VAEKnockoff:
        """Train the VAE on ``x`` (``[N, ...]``); returns ``self``."""
        flat = self._setup(x, "VAEKnockoff.fit")
        self._mean = flat.mean(0)
        self._std = flat.std(0, unbiased=False).clamp_min(1e-3)
        z = (flat - self._mean) / self._std
        n = z.shape[0]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(self.seed)
            self._net = _VAE(z.shape[1], self.hidden, self.latent)
            opt = torch.optim.Adam(self._net.parameters(), lr=self.lr)
            order = torch.Generator(device=_CPU).manual_seed(self.seed)
            for _ in range(self.steps):
                idx = torch.randint(0, n, (min(self.batch_size, n),), generator=order, device=_CPU)
                loss = self._loss(z[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self._net.eval().requires_grad_(False)
        return self

    def _loss(self, z: torch.Tensor) -> torch.Tensor:
        net = self._net
        mu, log_var = net.encode(z)
        latent = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
        recon = net.decoder(latent)
        nll = 0.5 * (((z - recon).square() / net.log_var.exp()) + net.log_var).sum(1)
        kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(1)
        return (nll + kl).mean()

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A knockoff of the batch ``x`` (same shape, dtype and device); ``generator`` is a CPU generator."""
        xc, flat = self._batch(x, "VAEKnockoff.sample")
        z = (flat - self._mean) / self._std
        net = self._net
        with torch.no_grad():
            mu, log_var = net.encode(z)
            eps = torch.randn(mu.shape, generator=generator, device=_CPU)
            recon = net.decoder(mu + (0.5 * log_var).exp() * eps)
            noise = torch.randn(recon.shape, generator=generator, device=_CPU) * (0.5 * net.log_var).exp()
        knock = (recon + noise) * self._std + self._mean
        return self._assemble(xc, flat, knock).to(x.device, x.dtype)


KNOCKOFFS: dict[str, Callable[[int], KnockoffGenerator]] = {
    "gaussian": lambda seed: GaussianKnockoff(),
    "vae": lambda seed: VAEKnockoff(seed=seed),
}
"""Knockoff generators by the name SCOP's ``generator`` option takes: ``factory(seed)`` → an unfitted generator."""


def make_knockoff(name: str, seed: int = 0) -> KnockoffGenerator:
    """A new, unfitted generator named ``name`` (``gaussian`` or ``vae``) with its defaults; ``seed`` seeds the
    generators fitted by sampling (the VAE)."""
    try:
        factory = KNOCKOFFS[name]
    except KeyError:
        raise CriterionError(f"criterion 'scop': generator must be one of {sorted(KNOCKOFFS)}, got {name!r}") from None
    return factory(seed)
