"""Walks through latent space for the visual diagnostics: traversals, interpolations, the 2-D
Gaussian-quantile grid and a PCA projection. Pure torch, no Lightning."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

# Below this sin(angle) two latent vectors count as parallel and slerp falls back to lerp.
_PARALLEL_EPS = 1e-6


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Linear interpolation: (N, D) endpoints, (T,) weights in [0, 1] -> (N, T, D)."""
    t = t.to(a)[None, :, None]
    return (1.0 - t) * a[:, None] + t * b[:, None]


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (White, 2016): (N, D) endpoints, (T,) weights -> (N, T, D).

    Follows the great circle between the directions of ``a`` and ``b``, which stays in the
    shell where a high-dimensional Gaussian keeps its mass; a straight line cuts through the
    low-density centre. Nearly parallel endpoints fall back to :func:`lerp`.
    """
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)[:, None, None]
    sin = torch.sin(omega)
    t = t.to(a)[None, :, None]
    safe = sin.abs() > _PARALLEL_EPS
    weight_a = torch.where(safe, torch.sin((1.0 - t) * omega) / sin.clamp_min(1e-12), 1.0 - t)
    weight_b = torch.where(safe, torch.sin(t * omega) / sin.clamp_min(1e-12), t)
    return weight_a * a[:, None] + weight_b * b[:, None]


INTERPOLATIONS = {"linear": lerp, "spherical": slerp}
Interpolation = Literal[tuple(INTERPOLATIONS)]  # the names above, as a type


def traversal_latents(mu: Tensor, dims: list[int], values: Tensor) -> Tensor:
    """Latents that move one dimension at a time: (D,) centre, K dims, (S,) values -> (K*S, D).

    Row k holds ``mu`` with dimension ``dims[k]`` replaced by each of ``values`` in turn.
    """
    latents = mu[None, None].repeat(len(dims), len(values), 1)
    for row, dim in enumerate(dims):
        latents[row, :, dim] = values.to(mu)
    return latents.flatten(0, 1)


def gaussian_grid(size: int, low: float = 0.05, high: float = 0.95) -> Tensor:
    """A (size*size, 2) grid of N(0, 1) quantiles, as in Kingma & Welling's 2-D manifolds.

    Evenly spaced probabilities in [low, high] go through the inverse Gaussian CDF, so equal
    steps in the picture are equal steps of prior mass. Row-major, z_2 decreasing down the
    rows and z_1 increasing along them, so the image reads like a plot with the y axis up.
    """
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"quantile range must satisfy 0 < low < high < 1, got [{low}, {high}]")
    probs = torch.linspace(low, high, size, dtype=torch.float64)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(probs).float()
    z2, z1 = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
    return torch.stack([z1, z2], dim=-1).reshape(-1, 2)


def pca_2d(points: Tensor) -> tuple[Tensor, Tensor]:
    """Project (N, D) points onto their first two principal components.

    Returns the (N, 2) coordinates and the fraction of variance each component explains.
    Signs are fixed (largest loading positive) so the picture does not flip between epochs;
    with D == 1 the second coordinate is zero.
    """
    centred = points.double() - points.double().mean(dim=0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    components = torch.where(largest < 0, -components, components)
    variance = singular.pow(2)
    explained = variance[:2] / variance.sum().clamp_min(1e-300)
    coords = centred @ components.T
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros_like(coords)], dim=1)
        explained = torch.cat([explained, torch.zeros(1, dtype=explained.dtype)])
    return coords.float(), explained.float()
