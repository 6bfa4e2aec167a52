"""Active units and per-dimension KL on constructed cases."""

import torch

from vae_lightning.models.diagnostics import active_units, kl_per_dimension
from vae_lightning.models.losses import gaussian_kl


def test_active_units_counts_dimensions_the_encoder_uses():
    torch.manual_seed(0)
    means = torch.zeros(1000, 6)
    means[:, 0] = torch.randn(1000)  # variance 1: active
    means[:, 2] = 0.2 * torch.randn(1000)  # variance 0.04: active
    means[:, 4] = 0.05 * torch.randn(1000)  # variance 0.0025: inactive
    means[:, 5] = 3.0  # constant: inactive whatever its value
    assert active_units(means) == 2


def test_kl_per_dimension_sums_to_the_total_kl():
    torch.manual_seed(0)
    mu, logvar = torch.randn(64, 5), torch.randn(64, 5)
    per_dim = kl_per_dimension(mu, logvar)
    assert per_dim.shape == (5,)
    torch.testing.assert_close(per_dim.sum(), gaussian_kl(mu, logvar).mean())
    collapsed = kl_per_dimension(torch.zeros(8, 3), torch.zeros(8, 3))
    assert torch.equal(collapsed, torch.zeros(3))
