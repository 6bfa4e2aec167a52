"""Active units on constructed cases (the per-dimension KL is tested in test_gaussian.py)."""

import torch

from vae_lightning.models.diagnostics import active_units


def test_active_units_counts_dimensions_the_encoder_uses():
    torch.manual_seed(0)
    means = torch.zeros(1000, 6)
    means[:, 0] = torch.randn(1000)  # variance 1: active
    means[:, 2] = 0.2 * torch.randn(1000)  # variance 0.04: active
    means[:, 4] = 0.05 * torch.randn(1000)  # variance 0.0025: inactive
    means[:, 5] = 3.0  # constant: inactive whatever its value
    assert active_units(means) == 2
