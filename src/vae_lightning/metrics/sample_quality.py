"""Distances between a set of real and a set of generated images, on their features.

- Frechet distance (FID on Inception features; here on any features) and the kernel distance
  (KID: the unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets),
  both by torchmetrics fed with precomputed features (an identity "extractor").
- Improved precision and recall (Kynkaenniemi et al. 2019): each set's manifold is the union
  of balls around its points reaching their k-th nearest neighbour in the set; precision is
  the fraction of generated points inside the real manifold, recall the fraction of real
  points inside the generated one.

Every function takes features (N, D) and returns plain floats.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from pydantic import PositiveInt
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from vae_lightning.seeding import forked_rng


class Precomputed(nn.Module):
    """The identity, posing as a torchmetrics feature extractor of ``num_features`` dims."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the two feature sets (float64)."""
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


class KernelDistance(NamedTuple):
    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    subsets: PositiveInt = 100,
    subset_size: PositiveInt = 1000,
    seed: int = 0,
) -> KernelDistance:
    """KID: mean and std over ``subsets`` random subsets (of min(subset_size, set sizes)
    points each) of the unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3.

    The subsets are drawn from torch's RNG seeded with ``seed`` inside a fork, so the
    value is reproducible and the caller's RNG is untouched.
    """
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": features are all
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = KernelInceptionDistance(
            feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with forked_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return KernelDistance(float(mean), float(std), subsets, size)


def kth_neighbour_radii(points: Tensor, k: int, chunk_rows: int) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set, (N,)."""
    if not 0 < k < len(points):
        raise ValueError(f"k={k} needs at least k + 1 = {k + 1} points; got {len(points)}")
    radii = []
    for start in range(0, len(points), chunk_rows):
        distances = torch.cdist(points[start : start + chunk_rows], points)
        # The k+1 smallest include the point itself (distance 0).
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def inside_manifold(queries: Tensor, points: Tensor, radii: Tensor, chunk_rows: int) -> Tensor:
    """Whether each query lies within radii[j] of some points[j], (Q,) bool."""
    inside = []
    for start in range(0, len(queries), chunk_rows):
        distances = torch.cdist(queries[start : start + chunk_rows], points)
        inside.append((distances <= radii).any(dim=1))
    return torch.cat(inside)


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def precision_recall(
    real: Tensor, fake: Tensor, k: PositiveInt = 3, chunk_rows: PositiveInt = 1024
) -> PrecisionRecall:
    """Improved precision and recall with k-NN manifolds; memory ~ chunk_rows * N distances."""
    real_radii = kth_neighbour_radii(real, k, chunk_rows)
    fake_radii = kth_neighbour_radii(fake, k, chunk_rows)
    precision = inside_manifold(fake, real, real_radii, chunk_rows).double().mean()
    recall = inside_manifold(real, fake, fake_radii, chunk_rows).double().mean()
    return PrecisionRecall(float(precision), float(recall))
