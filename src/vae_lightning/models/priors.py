"""Priors p(z) over the latent code: the standard normal of the classic VAE and two learned
priors, a mixture of Gaussians and the VampPrior (Tomczak & Welling, 2018).

A prior gives ``log_prob(z)`` summed over the latent dimensions, draws ``sample(n)`` for the
pictures, and, where one exists, the KL from a diagonal-Gaussian posterior in closed form
(``kl_per_dim``); the objectives fall back to a Monte-Carlo estimate where it is None.
"""

from __future__ import annotations

import math

import torch
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from vae_lightning.models import gaussian
from vae_lightning.param_types import ImageShape


class Prior(nn.Module):
    """Base class of p(z): ``log_prob``, ``sample`` and (optionally) a closed-form KL."""

    # Whether kl_per_dim has a closed form (else it returns None).
    has_closed_form_kl = False

    def __init__(self, latent_dim: PositiveInt) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, encoder: nn.Module) -> None:
        """Called once by the VAE with its encoder: a prior defined through the encoder (the
        VampPrior's pseudo-inputs) keeps a reference; others ignore it."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) of (..., D) codes, summed over D, in at least float32: (...,)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n codes drawn from p(z): (n, D)."""
        raise NotImplementedError

    def kl_per_dim(self, mu: Tensor, logvar: Tensor) -> Tensor | None:
        """KL(N(mu, diag exp(logvar)) || p) per dimension in closed form, (..., D); None when
        there is no closed form (then the objectives estimate it by Monte Carlo)."""
        return None


class StandardNormal(Prior):
    """p(z) = N(0, I): the classic VAE's prior (Kingma & Welling, 2014)."""

    has_closed_form_kl = True

    def log_prob(self, z: Tensor) -> Tensor:
        return gaussian.log_standard_normal(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = None if generator is None else generator.device
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def kl_per_dim(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return gaussian.kl_standard_normal_per_dim(mu, logvar)


def log_mixture_density(z: Tensor, mu: Tensor, logvar: Tensor, log_weights: Tensor) -> Tensor:
    """log sum_k pi_k N(z; mu_k, diag exp(logvar_k)) of (..., D) codes: (...,).

    ``mu`` and ``logvar`` are (K, D), ``log_weights`` (K,) normalised. Every component is
    evaluated at every code at once, through the expanded square
    sum_d (z_d^2 - 2 z_d mu_kd + mu_kd^2) / sigma_kd^2, two matrix products: memory is
    (codes x K), not (codes x K x D), which the VampPrior's 500 components need under the
    importance-weighted estimator's 16k-row chunks. The expansion cancels large terms, so it
    is done in float64 (exact to ~1e-10 nats even for sigma ~ 1e-2) and returned in float32
    (or float64 for float64 inputs).
    """
    out_dtype = torch.promote_types(z.dtype, torch.float32)
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    precision = torch.exp(-logvar)  # (K, D)
    square = (
        z.pow(2) @ precision.T - 2.0 * z @ (mu * precision).T + (mu.pow(2) * precision).sum(dim=-1)
    )  # (..., K): the Mahalanobis distance of each code to each component
    log_components = -0.5 * (square + logvar.sum(dim=-1) + z.shape[-1] * gaussian.LOG_2PI)
    return torch.logsumexp(log_components + log_weights.double(), dim=-1).to(out_dtype)


def sample_mixture(
    mu: Tensor, logvar: Tensor, log_weights: Tensor, n: int, generator: torch.Generator | None
) -> Tensor:
    """n draws from sum_k pi_k N(mu_k, diag exp(logvar_k)): a component each, then its
    Gaussian; (n, D) on the device of ``mu``, the randomness from ``generator``'s device."""
    device = None if generator is None else generator.device
    probs = log_weights.detach().float().softmax(dim=-1).to(device)
    index = torch.multinomial(probs, n, replacement=True, generator=generator).to(mu.device)
    eps = torch.randn(n, mu.shape[-1], generator=generator, device=device)
    eps = eps.to(mu.device, torch.promote_types(mu.dtype, torch.float32))
    return gaussian.at_least_float32(mu[index]) + torch.exp(0.5 * logvar[index]) * eps


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag exp(v_k)) with learned means m_k, log-variances v_k
    and mixture logits (pi = softmax of them): a multimodal prior the data can shape.

    Initialised with means drawn from N(0, I), unit variances and equal weights, so the
    prior starts spread over the region N(0, I) covers, its components apart from each other
    (equal means would get equal gradients and stay together). The KL to it has no closed
    form: the objectives estimate it by Monte Carlo.
    """

    def __init__(self, latent_dim: PositiveInt, num_components: PositiveInt = 10) -> None:
        super().__init__(latent_dim)
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_weights(self) -> Tensor:
        return gaussian.at_least_float32(self.logits).log_softmax(dim=-1)

    def log_prob(self, z: Tensor) -> Tensor:
        return log_mixture_density(z, self.means, self.logvars, self.log_weights())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return sample_mixture(self.means, self.logvars, self.log_weights(), n, generator)


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = 1/K sum_k q(z|u_k), the mixture of the
    encoder's own posteriors at K learned pseudo-inputs u_k shaped like the images.

    The pseudo-inputs are parameters, kept in [0, 1] (the data's range) by a hard tanh, as in
    the authors' code, and initialised from N(``init_mean``, ``init_std``^2) (their MNIST
    setting: 0.05, 0.01). The encoder comes from :meth:`bind` and is held by reference, not as
    a submodule: its parameters belong to the VAE, once.

    Cost: every ``log_prob``/``sample`` encodes the K pseudo-inputs once (one extra encoder
    pass over a batch of K images per training step) and evaluates K components per code. A
    BatchNorm encoder (model=conv) sees the pseudo-inputs as a batch of their own in training.
    """

    def __init__(
        self,
        latent_dim: PositiveInt,
        image_shape: ImageShape,
        num_components: PositiveInt = 500,
        init_mean: float = 0.05,
        init_std: NonNegativeFloat = 0.01,
    ) -> None:
        super().__init__(latent_dim)
        shape = (num_components, *image_shape)
        self.pseudo_inputs = nn.Parameter(torch.randn(shape) * init_std + init_mean)
        self._encoder: nn.Module | None = None

    def bind(self, encoder: nn.Module) -> None:
        # Not a registered submodule (that would duplicate the encoder's parameters and
        # state_dict keys under prior.*): a plain attribute, hence object.__setattr__.
        object.__setattr__(self, "_encoder", encoder)

    def components(self) -> tuple[Tensor, Tensor]:
        """The encoder's (mu, logvar) at every pseudo-input: (K, D) each."""
        if self._encoder is None:
            raise RuntimeError("VampPrior needs the VAE's encoder: the VAE calls bind().")
        pseudo_images = nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        return self._encoder(pseudo_images)

    def log_prob(self, z: Tensor) -> Tensor:
        mu, logvar = self.components()
        log_weights = torch.full(
            (len(mu),), -math.log(len(mu)), device=mu.device, dtype=torch.float64
        )
        return log_mixture_density(z, mu, logvar, log_weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, logvar = self.components()
        log_weights = torch.zeros(len(mu), device=mu.device)  # uniform
        return sample_mixture(mu, logvar, log_weights, n, generator)
