"""Importance-weighted bounds on log p(x) (Burda, Grosse & Salakhutdinov, 2016).

With z_1..z_k ~ q(z|x) and weights w_i = p(x, z_i) / q(z_i|x),

    IWAE_k(x) = log (1/k) sum_i w_i  <=  log p(x),

with IWAE_1 = the ELBO (single sample), IWAE_k increasing in k in expectation and tending to
log p(x). Everything is computed in log space with logsumexp. The evaluation estimator walks
through the k samples in chunks, so its memory is bounded whatever k is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vae_lightning.models import gaussian
from vae_lightning.models.posteriors import GaussianPosterior, LatentSample

# log p(x|z): z of shape (n, B, D) against x of shape (B, ...) -> (n, B).
LogLikelihoodFn = Callable[[Tensor, Tensor], Tensor]
# k draws from q(z|x) given the encoder's (mu, logvar), with log q and log p: VAE.draw_latents.
DrawLatentsFn = Callable[[Tensor, Tensor, int, "torch.Generator | None"], LatentSample]


def standard_gaussian_latents(
    mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None = None
) -> LatentSample:
    """Draws of the classic VAE: a Gaussian q(z|x) and p(z) = N(0, I)."""
    z, log_q = GaussianPosterior(mu.shape[-1]).sample(mu, logvar, k, generator)
    return LatentSample(z, log_q, gaussian.log_standard_normal(z))


def log_importance_weights(
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    log_px_given_z: LogLikelihoodFn,
    k: int,
    generator: torch.Generator | None = None,
    draw_latents: DrawLatentsFn = standard_gaussian_latents,
) -> tuple[Tensor, Tensor]:
    """log p(x|z_i) and log p(z_i) - log q(z_i|x) for k draws z_i ~ q(z|x); each (k, B).

    ``draw_latents`` is the model's (``VAE.draw_latents``): its prior, posterior and layers.
    """
    draws = draw_latents(mu, logvar, k, generator)
    log_px = gaussian.at_least_float32(log_px_given_z(draws.z, x))
    return log_px, draws.log_p - draws.log_q


def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_i exp(log_weights[i]) over the first dimension: (k, B) -> (B,)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@torch.no_grad()
def iwae_log_likelihood(
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    log_px_given_z: LogLikelihoodFn,
    k: int,
    chunk_rows: int = 16384,
    generator: torch.Generator | None = None,
    draw_latents: DrawLatentsFn = standard_gaussian_latents,
) -> Tensor:
    """The k-sample importance-weighted estimate of log p(x) per image, (B,), in nats.

    The k samples are drawn and decoded ``chunk_rows // B`` at a time (at least one), and the
    chunks' logsumexps are combined with ``logaddexp``, which is exact: memory is bounded by
    ``chunk_rows`` decoder rows whatever k is. Given a seeded ``generator``, the same batch and
    the same ``chunk_rows`` give the same numbers.
    """
    if k < 1 or chunk_rows < 1:
        raise ValueError(f"IWAE needs k >= 1 and chunk_rows >= 1, got k={k}, {chunk_rows=}.")
    per_chunk = max(1, chunk_rows // len(x))
    total = torch.full(
        (len(x),), -math.inf, device=x.device, dtype=gaussian.at_least_float32(mu).dtype
    )
    for start in range(0, k, per_chunk):
        n = min(per_chunk, k - start)
        log_px, log_prior_ratio = log_importance_weights(
            x, mu, logvar, log_px_given_z, n, generator, draw_latents
        )
        total = torch.logaddexp(total, torch.logsumexp(log_px + log_prior_ratio, dim=0))
    return total - math.log(k)


def bits_per_dim(nll: Tensor, num_dims: int) -> Tensor:
    """Nats per image -> bits per dimension: nll / (D ln 2), D the number of pixels."""
    return nll / (num_dims * math.log(2))
