"""Shared preparation of (codes, factors) for the disentanglement metrics.

Every metric takes the mean codes of a split, ``codes`` (N, D) float, and the ground-truth
factor classes of the same images, ``factors`` (N, K) int64, rows aligned. disentanglement_lib
draws fresh samples from the generative process for each metric; here the samples are drawn,
with a seeded generator, from the N encoded images of one split.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_pair(codes: Tensor, factors: Tensor) -> None:
    """Raise ValueError unless ``codes`` (N, D) and ``factors`` (N, K) are aligned 2-D arrays."""
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes (N, D) and factors (N, K) must be 2-D with one row per image, got "
            f"{tuple(codes.shape)} and {tuple(factors.shape)}"
        )
    if factors.is_floating_point():
        raise ValueError("factors must be integer class indices, one column per factor")


def varying_factors(factors: Tensor) -> Tensor:
    """The factor columns that take more than one value (dSprites' colour is constant).

    A constant factor has zero entropy (MIG divides by it) and nothing to predict, so every
    metric leaves it out, as disentanglement_lib's dSprites does (its factor indices 1..5).
    """
    keep = [k for k in range(factors.shape[1]) if factors[:, k].unique().numel() > 1]
    if not keep:
        raise ValueError("every factor is constant over these images: nothing to measure")
    return factors[:, keep]


def draw_rows(n: int, num: int, generator: torch.Generator) -> Tensor:
    """``num`` row indices out of ``n``: a random subset, or all ``n`` rows (shuffled) when
    ``num >= n``."""
    return torch.randperm(n, generator=generator)[: min(num, n)]


def train_test_rows(
    n: int, num_train: int, num_test: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Disjoint train and test row indices. With fewer than ``num_train + num_test`` rows the
    ``n`` rows are shared in the same proportion (disentanglement_lib samples both afresh)."""
    order = torch.randperm(n, generator=generator)
    if num_train + num_test > n:
        num_train = max(1, round(n * num_train / (num_train + num_test)))
        num_test = n - num_train
    return order[:num_train], order[num_train : num_train + num_test]


def histogram_bins(codes: Tensor, num_bins: int) -> Tensor:
    """Each code dimension cut into ``num_bins`` equal-width bins between its min and max
    (numpy.histogram's edges, as disentanglement_lib's histogram discretizer): (N, D) int64
    in 0..num_bins-1, the maximum in the last bin. A constant dimension is all in bin 0."""
    codes = codes.double()
    low, high = codes.min(dim=0).values, codes.max(dim=0).values
    width = (high - low) / num_bins
    scaled = (codes - low) / torch.where(width > 0, width, torch.ones_like(width))
    return scaled.floor().long().clamp_(0, num_bins - 1)
