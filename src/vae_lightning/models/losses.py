"""ELBO terms per image: reconstruction NLL summed over pixels, KL summed over latents.

Everything here returns one value per image; callers take the mean over the batch. Keeping
the reductions the same for both terms is what makes ``beta`` mean what the paper says.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form, summed over latent dims."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) of a Bernoulli decoder with logits, summed over all pixels of each image."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return bce.flatten(1).sum(dim=1)


class ELBOTerms(NamedTuple):
    """Batch means, in nats per image."""

    loss: Tensor  # what is optimised: rec + beta * kl
    rec: Tensor  # -E_q[log p(x|z)] (one sample)
    kl: Tensor  # KL(q(z|x) || p(z))
    elbo: Tensor  # -(rec + kl), whatever beta is


def elbo_terms(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float) -> ELBOTerms:
    """The (beta-)VAE objective: sum over pixels and latents, mean over the batch."""
    rec = bernoulli_nll(logits, x).mean()
    kl = gaussian_kl(mu.float(), logvar.float()).mean()
    return ELBOTerms(loss=rec + beta * kl, rec=rec, kl=kl, elbo=-(rec + kl))
