"""Representation metrics that need no ground-truth factors (any dataset).

Total correlation, as disentanglement_lib's ``unsupervised_metrics``
(``gaussian_total_correlation``): a Gaussian is fitted to the mean codes (their covariance
Sigma over up to 10,000 images) and TC = KL(N(0, Sigma) || prod_j N(0, Sigma_jj)) =
1/2 (sum_j log Sigma_jj - log det Sigma), in nats: 0 when the dimensions are uncorrelated,
growing as they become linearly dependent. It measures the aggregate of the posterior *means*
and only their second moments; it is not the minibatch-weighted-sampling estimate of
TC(q(z)) that beta-TC-VAE optimises (that one sees the posterior noise and non-Gaussian
dependence too). Dimensions with exactly zero variance (a constant code) are left out: their
log-variance is -inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.metrics.sampling import draw_rows

NUM_TRAIN = 10000  # disentanglement_lib: unsupervised_metrics.num_train


def gaussian_total_correlation(covariance: Tensor) -> float:
    """TC (nats) of a zero-mean Gaussian with this (D, D) covariance."""
    covariance = covariance.double()
    return float(
        0.5 * (covariance.diagonal().log().sum() - torch.linalg.slogdet(covariance).logabsdet)
    )


def total_correlation(
    codes: Tensor, num_train: int = NUM_TRAIN, generator: torch.Generator | None = None
) -> float:
    """Gaussian TC of the mean codes (N, D) of ``num_train`` images drawn from them."""
    rows = draw_rows(len(codes), num_train, generator or torch.Generator().manual_seed(0))
    codes = codes[rows].double().cpu()
    codes = codes[:, codes.var(dim=0) > 0]
    if codes.shape[1] < 2:
        return 0.0
    return gaussian_total_correlation(torch.cov(codes.T))
