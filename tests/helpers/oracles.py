"""Independent references for the maths under test: written from the papers' formulas or built
from torch.distributions, never from the code they check."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.models.objectives import ELBOTerms


def diagonal_normal(mu: Tensor, logvar: Tensor) -> Independent:
    """N(mu, diag exp(logvar)) over the last dimension, as torch.distributions builds it."""
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per latent vector, by torch.distributions."""
    mu, logvar = mu.float(), logvar.float()
    standard = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return kl_divergence(diagonal_normal(mu, logvar), standard)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) of a Bernoulli decoder with logits, summed over all pixels of each image."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return bce.flatten(1).sum(dim=1)


def elbo_terms(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float) -> ELBOTerms:
    """Kingma & Welling's (beta-)VAE objective with a Bernoulli decoder: sum over pixels and
    latents, mean over the batch (the classic example's loss, per image)."""
    rec = bernoulli_nll(logits, x).mean()
    kl = gaussian_kl(mu, logvar).mean()
    return ELBOTerms(loss=rec + beta * kl, rec=rec, kl=kl, elbo=-(rec + kl), bound=-(rec + kl))
