"""Posterior-collapse diagnostics computed from encoder outputs over a dataset."""

from __future__ import annotations

from torch import Tensor

# Burda et al. (2016): a latent dimension is active when Cov_x(E_q[z_d|x]) exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 1e-2


def posterior_mean_variance(posterior_means: Tensor) -> Tensor:
    """Variance over the data of each dimension of E_q[z|x]; ``posterior_means`` is (N, D)."""
    return posterior_means.float().var(dim=0, unbiased=True)


def active_units(posterior_means: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent dimensions the encoder uses (Burda et al.'s active units)."""
    return int((posterior_mean_variance(posterior_means) > threshold).sum())
