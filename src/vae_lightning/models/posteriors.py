"""Approximate posteriors q(z|x): the encoder's diagonal Gaussian, optionally pushed through a
normalizing flow (planar, IAF: models/flows.py).

A posterior draws k codes per image from the encoder's Gaussian N(mu, diag exp(logvar)) and
returns them with log q(z|x) (every flow step's log-determinant included). The VAE pairs the
draws with the prior's log p(z) into a :class:`LatentSample`, which is all the objectives and
the importance-weighted estimator need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from vae_lightning.models import gaussian


class LatentSample(NamedTuple):
    """k draws per image from q(z|x), with their log-densities under q and p; (k, B, ...)."""

    z: Tensor  # (k, B, D): what the decoder gets
    log_q: Tensor  # (k, B): log q(z|x), summed over the latent dimensions (and layers)
    log_p: Tensor  # (k, B): log p(z), likewise


class Posterior(nn.Module):
    """Base class: the encoder's Gaussian, through an invertible map (the identity here).

    ``transform(z0, context)`` maps base draws (k, B, D) to codes and returns the sum of the
    log |det dz/dz0| of its steps, (k, B); ``context`` is the encoder's (mu, logvar) of each
    image, concatenated, for flows amortised over x.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    # A Gaussian q: the KL to a Gaussian prior then has a closed form, and the free-bits and
    # beta-TC objectives (which need q's per-dimension form) apply.
    is_gaussian = True

    def transform(self, z0: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return z0, z0.new_zeros(z0.shape[:-1])

    def sample(
        self, mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """k codes per image and their log q(z|x): (k, B, D) and (k, B), in at least float32."""
        draws = gaussian.sample_k(mu, logvar, k, generator)
        log_q0 = gaussian.log_normal_from_noise(draws.eps, logvar)
        if self.is_gaussian:
            return draws.z, log_q0
        context = torch.cat([mu, logvar], dim=-1).to(draws.z.dtype)
        z, log_det = self.transform(draws.z, context.expand(k, *context.shape))
        return z, log_q0 - log_det

    def sample_one(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """One reparameterised code per image, (B, D), in the dtype of ``mu``: the forward pass.

        The Gaussian draws exactly as the classic VAE does (and as torch.compile traces it).
        """
        if self.is_gaussian:
            return gaussian.sample(mu, logvar)
        return self.sample(mu, logvar, 1)[0][0].to(mu.dtype)


class GaussianPosterior(Posterior):
    """q(z|x) = N(mu(x), diag exp(logvar(x))): the classic VAE's posterior, no flow."""
