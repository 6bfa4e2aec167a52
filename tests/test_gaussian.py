"""models/gaussian.py against hand-computed values and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.models import gaussian
from vae_lightning.models.iwae import standard_gaussian_latents


@pytest.fixture
def posterior():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)


def test_kl_matches_closed_form_by_hand():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) per dimension
    per_dim = torch.tensor([[0.0, 0.5 * (1 + 4 - 1 - math.log(4.0))], [0.5 * 4, 0.5 * 1]])
    torch.testing.assert_close(gaussian.kl_standard_normal_per_dim(mu, logvar), per_dim)
    torch.testing.assert_close(gaussian.kl_standard_normal(mu, logvar), per_dim.sum(dim=1))


def test_kl_matches_torch_distributions(posterior):
    mu, logvar = posterior
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros(8), torch.ones(8))
    torch.testing.assert_close(
        gaussian.kl_standard_normal_per_dim(mu, logvar), kl_divergence(q, p)
    )
    q_joint, p_joint = Independent(q, 1), Independent(p, 1)
    kl = gaussian.kl_standard_normal(mu, logvar)
    torch.testing.assert_close(kl, kl_divergence(q_joint, p_joint))
    assert (kl >= 0).all()
    collapsed = gaussian.kl_standard_normal_per_dim(torch.zeros(3, 4), torch.zeros(3, 4))
    assert torch.equal(collapsed, torch.zeros(3, 4))  # q = p exactly: no information


def test_kl_is_accumulated_in_at_least_float32(posterior):
    mu, logvar = posterior
    assert gaussian.kl_standard_normal(mu.bfloat16(), logvar.bfloat16()).dtype == torch.float32
    assert gaussian.kl_standard_normal(mu.double(), logvar.double()).dtype == torch.float64


def test_log_normal_matches_torch_distributions(posterior):
    mu, logvar = posterior
    z = torch.randn(5, 16, 8, generator=torch.Generator().manual_seed(1))  # (k, B, D)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian.log_normal(z, mu, logvar), expected)
    standard = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian.log_standard_normal(z), standard)
    torch.testing.assert_close(gaussian.log_normal(z, torch.zeros(8), torch.zeros(8)), standard)


def test_log_normal_integrates_to_one():
    """A 1-D density, integrated numerically on a grid covering +-12 sigma, gives 1."""
    mu, logvar = (
        torch.tensor([0.7], dtype=torch.float64),
        torch.tensor([-1.3], dtype=torch.float64),
    )
    sigma = math.exp(-0.65)
    z = torch.linspace(0.7 - 12 * sigma, 0.7 + 12 * sigma, 20001, dtype=torch.float64)[:, None]
    density = gaussian.log_normal(z, mu, logvar).exp()
    assert torch.trapezoid(density, z[:, 0]).item() == pytest.approx(1.0, abs=1e-10)


def test_sample_k_draws_from_the_posterior(posterior):
    mu, logvar = posterior[0][:2], posterior[1][:2]
    samples = gaussian.sample_k(mu, logvar, 50_000, torch.Generator().manual_seed(2))
    assert samples.z.shape == samples.eps.shape == (50_000, 2, 8)
    torch.testing.assert_close(samples.z, mu + torch.exp(0.5 * logvar) * samples.eps)
    std = torch.exp(0.5 * logvar)
    assert ((samples.z.mean(0) - mu).abs() < 5 * std / math.sqrt(50_000)).all()
    torch.testing.assert_close(samples.z.std(0), std, rtol=0.02, atol=0)


def test_sample_k_is_float32_and_reproducible_from_its_generator(posterior):
    mu, logvar = posterior
    first = gaussian.sample_k(
        mu.bfloat16(), logvar.bfloat16(), 3, torch.Generator().manual_seed(4)
    )
    again = gaussian.sample_k(
        mu.bfloat16(), logvar.bfloat16(), 3, torch.Generator().manual_seed(4)
    )
    assert first.z.dtype == torch.float32
    assert torch.equal(first.z, again.z)


def test_sample_keeps_the_dtype_and_is_differentiable(posterior):
    mu, logvar = (t.clone().requires_grad_() for t in posterior)
    z = gaussian.sample(mu, logvar, torch.Generator().manual_seed(5))
    z.sum().backward()
    assert z.dtype == mu.dtype and mu.grad is not None and logvar.grad is not None
    assert gaussian.sample(mu.detach().bfloat16(), logvar.detach().bfloat16()).dtype == (
        torch.bfloat16
    )


def test_standard_gaussian_latents_give_log_q_and_log_p(posterior):
    mu, logvar = posterior
    draws = standard_gaussian_latents(mu, logvar, 4, torch.Generator().manual_seed(6))
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    assert draws.log_q.shape == draws.log_p.shape == (4, 16)
    torch.testing.assert_close(draws.log_q, q.log_prob(draws.z), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(draws.log_p, Normal(0.0, 1.0).log_prob(draws.z).sum(-1))
    samples = gaussian.sample_k(mu, logvar, 4, torch.Generator().manual_seed(6))
    torch.testing.assert_close(samples.z, draws.z, rtol=0, atol=0)  # the same draws
    torch.testing.assert_close(
        gaussian.log_normal_from_noise(samples.eps, logvar),
        gaussian.log_normal(samples.z, mu, logvar),
        rtol=1e-5,
        atol=1e-4,
    )


def test_log_q_from_the_noise_keeps_its_digits_when_sigma_is_tiny():
    """z = mu + sigma * eps with |mu| >> sigma: recovering eps from z in float32 loses digits;
    the noise itself does not. Reference: the same draw in float64."""
    mu, logvar = torch.full((1, 16), 30.0), torch.full((1, 16), math.log(1e-8))
    samples = gaussian.sample_k(mu, logvar, 8, torch.Generator().manual_seed(7))
    exact = gaussian.log_normal_from_noise(samples.eps.double(), logvar.double())
    from_noise = gaussian.log_normal_from_noise(samples.eps, logvar)
    assert (from_noise.double() - exact).abs().max() < 1e-3
    recovered = gaussian.log_normal(samples.z, mu, logvar)
    assert (recovered.double() - exact).abs().max() > 1e-2  # why sample_k returns the noise
