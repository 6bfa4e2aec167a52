"""Diagonal-Gaussian maths: the one home of every formula for q(z|x) = N(mu, diag exp(logvar)).

Latents carry their dimensions last: ``mu`` and ``logvar`` are (..., D), and every function
that returns one value per latent vector sums over that last dimension. The objectives, the
importance-weighted estimator, the diagnostics and the network's ``reparameterize`` all
compute with these functions, so a new prior or posterior has one place to plug into.

Log-densities and KLs are accumulated in at least float32 (:func:`at_least_float32`): they are
sums over many dimensions, and half precision (bf16 autocast) would lose the small terms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or kept in float64: never accumulate log-densities in half precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def kl_standard_normal_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu_d, exp(logvar_d)) || N(0, 1)) of each dimension, in closed form: (..., D).

    0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), Kingma & Welling (2014), appendix B.
    """
    mu, logvar = at_least_float32(mu), at_least_float32(logvar)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over latents: (...,)."""
    return kl_standard_normal_per_dim(mu, logvar).sum(dim=-1)


def sample(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One reparameterised draw z = mu + sigma * eps, eps ~ N(0, I), differentiable in both.

    z keeps the dtype of ``mu``: it goes straight into the decoder, in the autocast dtype.
    """
    if generator is None:
        eps = torch.randn_like(mu)  # what torch.compile traces with dynamic batch sizes
    else:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class Samples(NamedTuple):
    z: Tensor  # (k, ..., D) draws from N(mu, diag exp(logvar))
    eps: Tensor  # (k, ..., D) the standard-normal noise they were made from


def sample_k(
    mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None = None
) -> Samples:
    """k reparameterised draws z_i = mu + sigma * eps_i, in at least float32: (k, ..., D) each.

    The noise is returned too, so that :func:`log_normal_from_noise` gives log q(z_i|x)
    without recovering eps from z (which loses digits when sigma << |mu|).
    """
    mu, logvar = at_least_float32(mu), at_least_float32(logvar)
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return Samples(mu + torch.exp(0.5 * logvar) * eps, eps)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension: (...,)."""
    z = at_least_float32(z)
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def log_normal_from_noise(eps: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)) at z = mu + sigma * eps, from the noise eps: (...,).

    Change of variables: the density of z is that of eps divided by prod_d sigma_d, so
    log N(z; mu, sigma^2) = log N(eps; 0, I) - 0.5 * sum_d logvar_d.
    """
    return log_standard_normal(eps) - 0.5 * at_least_float32(logvar).sum(dim=-1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension; broadcasts: (...,)."""
    z, mu, logvar = at_least_float32(z), at_least_float32(mu), at_least_float32(logvar)
    return log_normal_from_noise((z - mu) * torch.exp(-0.5 * logvar), logvar)
