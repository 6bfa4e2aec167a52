"""Latent-space walks against closed forms: lerp, slerp, traversals, Gaussian grid, PCA."""

import math
from statistics import NormalDist

import pytest
import torch

from vae_lightning.models.latent import gaussian_grid, lerp, pca_2d, slerp, traversal_latents


def test_lerp_is_the_straight_line():
    a, b = torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, -2.0]])
    path = lerp(a, b, torch.tensor([0.0, 0.25, 1.0]))
    expected = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [4.0, -2.0]]])
    torch.testing.assert_close(path, expected)


def test_slerp_follows_the_great_circle():
    # Two vectors of norm 2 at 90 degrees: slerp at t is at angle t*90 degrees from a.
    a, b = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = torch.tensor([0.0, 1 / 3, 0.5, 1.0])
    path = slerp(a, b, t)[0]
    angles = torch.tensor([0.0, math.pi / 6, math.pi / 4, math.pi / 2])
    expected = 2 * torch.stack([angles.cos(), angles.sin(), torch.zeros(4)], dim=1)
    torch.testing.assert_close(path, expected)
    torch.testing.assert_close(path.norm(dim=1), torch.full((4,), 2.0))  # lerp would dip to 1.41


def test_slerp_interpolates_norms_and_falls_back_to_lerp_for_parallel_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    mid = slerp(a, b, torch.tensor([0.5]))[0, 0]
    # sin(pi/4)/sin(pi/2) * (a + b)
    torch.testing.assert_close(mid, torch.tensor([1.0, 3.0]) / math.sqrt(2))
    parallel_a, parallel_b = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 3.0]])
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(slerp(parallel_a, parallel_b, t), lerp(parallel_a, parallel_b, t))


def test_traversal_latents_move_one_dimension_per_row():
    mu = torch.tensor([0.5, -1.0, 2.0])
    values = torch.tensor([-3.0, 0.0, 3.0])
    latents = traversal_latents(mu, [2, 0], values).reshape(2, 3, 3)
    torch.testing.assert_close(latents[0, :, 2], values)
    torch.testing.assert_close(latents[0, :, :2], mu[:2].expand(3, 2))
    torch.testing.assert_close(latents[1, :, 0], values)
    torch.testing.assert_close(latents[1, :, 1:], mu[1:].expand(3, 2))


def test_gaussian_grid_holds_normal_quantiles_laid_out_like_a_plot():
    grid = gaussian_grid(3, 0.05, 0.95).reshape(3, 3, 2)
    q = [NormalDist().inv_cdf(p) for p in (0.05, 0.5, 0.95)]  # -1.645, 0, 1.645
    torch.testing.assert_close(grid[0, :, 0], torch.tensor(q))  # z1 increases along a row
    torch.testing.assert_close(grid[:, 0, 1], torch.tensor(q[::-1]))  # z2 decreases downwards
    with pytest.raises(ValueError, match="0 < low < high < 1"):
        gaussian_grid(3, 0.0, 1.0)


def test_pca_recovers_known_axes_and_variance_shares():
    torch.manual_seed(0)
    # Variance 9 along u, 1 along v, 0 along the third axis: shares 0.9 and 0.1.
    u = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2)
    v = torch.tensor([0.0, 0.0, 1.0])
    a, b = 3 * torch.randn(5000), torch.randn(5000)
    a, b = (a - a.mean()) / a.std() * 3, (b - b.mean()) / b.std()
    b = b - (a @ b) / (a @ a) * a  # exactly uncorrelated with a
    points = a[:, None] * u + b[:, None] * v + torch.tensor([5.0, -2.0, 1.0])
    coords, explained = pca_2d(points)
    # Signs are fixed by the largest loading (positive along u and v), not left to the SVD.
    torch.testing.assert_close(coords[:, 0], a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(coords[:, 1], b, atol=1e-4, rtol=1e-4)
    shares = torch.stack([a.var(), b.var()]) / (a.var() + b.var())
    torch.testing.assert_close(explained, shares, atol=1e-5, rtol=0)
    assert explained[0] == pytest.approx(0.9, abs=2e-3)


def test_pca_of_a_one_dimensional_latent_space_pads_a_zero_axis():
    coords, explained = pca_2d(torch.arange(5.0)[:, None])
    torch.testing.assert_close(coords[:, 1], torch.zeros(5))
    torch.testing.assert_close(explained, torch.tensor([1.0, 0.0]))
