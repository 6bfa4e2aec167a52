"""Priors p(z) over the latent code: the standard normal of the classic VAE, and the base every
learned prior (a mixture of Gaussians, the VampPrior) builds on.

A prior gives ``log_prob(z)`` summed over the latent dimensions, draws ``sample(n)`` for the
pictures, and, where one exists, the KL from a diagonal-Gaussian posterior in closed form
(``kl_per_dim``); the objectives fall back to a Monte-Carlo estimate where it is None.
"""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models import gaussian


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
